//! Fuzz target: the signed envelope (PROTOCOL.md §4), decoded as every receiver decodes
//! it (`wire::decode_canonical`), then verified under each tag, with its signer's key
//! read as a libp2p identity. Whatever decodes must re-encode to the same bytes, and an
//! envelope the signer's key signs again with the same fields must verify.
#![no_main]

use arbor::content::manifest::MAX_MANIFEST_BYTES;
use arbor::report::TAG_REPORT;
use arbor::rules::TAG_RULES;
use arbor::trust::member::TAG_MEMBER;
use arbor::trust::{Envelope, TAG_MANIFEST};
use arbor::wire;
use arbor_fuzz::{NOW, assert_canonical, root, show_key};
use libfuzzer_sys::fuzz_target;

/// Every tag an envelope may carry.
const TAGS: [&str; 4] = [TAG_MANIFEST, TAG_MEMBER, TAG_RULES, TAG_REPORT];

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) =
        wire::decode_canonical::<Envelope>(data, MAX_MANIFEST_BYTES + 256, "envelope")
    else {
        return;
    };
    assert_canonical(&envelope, data);
    show_key(&envelope.signer);
    for tag in TAGS {
        let _ = envelope.verify(tag, &envelope.signer, NOW);
    }
    // The same fields signed by a key we hold: the signature covers them all.
    let root = root();
    let signed = Envelope::sign(
        &root,
        &envelope.tag,
        envelope.seq,
        envelope.expires,
        envelope.body.clone(),
    );
    let bytes = wire::encode(&signed);
    let back: Envelope = match wire::decode_canonical(&bytes, bytes.len(), "envelope") {
        Ok(back) => back,
        Err(e) => panic!("a signed envelope does not decode: {e}"),
    };
    assert_eq!(back, signed);
    // At time 0 only an expiry of 0 has passed.
    for tag in TAGS {
        if envelope.tag == tag {
            let verdict = back.verify(tag, &root.public(), 0);
            assert!(
                verdict.is_ok() || envelope.expires == Some(0),
                "a fresh signature is refused: {verdict:?}"
            );
        }
    }
});
