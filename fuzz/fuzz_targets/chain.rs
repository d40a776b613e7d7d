//! Fuzz target: membership certificate chains (PROTOCOL.md §11), as stored and as a
//! `Hello` carries them, through `member::verify_chain` against the root key. Each
//! input is tried as the encoded chain and as the body of a certificate the root key
//! signed (so that the membership's decoding and checks are reached past the
//! signature). A membership that verifies must re-encode to its bytes, and issuing the
//! same certificate again must give the same envelope.
#![no_main]

use arbor::trust::Envelope;
use arbor::trust::member::{MAX_CHAIN_BYTES, TAG_MEMBER, issue, verify_chain};
use arbor::wire;
use arbor_fuzz::{EXPIRES, NOW, assert_canonical, root, show_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = root();
    if let Ok(chain) = wire::decode_canonical::<Vec<Envelope>>(data, MAX_CHAIN_BYTES, "chain") {
        assert_canonical(&chain, data);
        if let Ok(members) = verify_chain(&chain, &root.public(), NOW) {
            assert_eq!(members.len(), chain.len());
            for m in &members {
                show_key(&m.node);
            }
        }
    }
    let cert = Envelope::sign(&root, TAG_MEMBER, 1, Some(EXPIRES), data.to_vec());
    let Ok(members) = verify_chain(std::slice::from_ref(&cert), &root.public(), NOW) else {
        return;
    };
    let [m] = members.as_slice() else {
        panic!("one certificate verifies to {} memberships", members.len());
    };
    assert_canonical(m, data);
    let again = issue(
        &root,
        m.node,
        m.client,
        m.groups.clone(),
        m.site.clone(),
        m.issued,
        EXPIRES,
    );
    // `issue` signs with the membership's issue time as the sequence number.
    let expected = Envelope::sign(&root, TAG_MEMBER, m.issued, Some(EXPIRES), data.to_vec());
    assert_eq!(
        again, expected,
        "issuing a verified membership again gives other bytes"
    );
});
