//! Fuzz target: rule sets (PROTOCOL.md §14), received by the child of the vector's
//! issuer (the root node) through `RuleBook::receive`, which opens them with
//! `SignedRules::open` and applies them. Each input is tried as the envelope bytes and
//! as a body the issuer signed (so that the body's decoding and checks are reached past
//! the signature). What is applied must re-encode to its bytes and sign again to the
//! same bytes; then the book answers what the engine asks of it: availability to the
//! child and to a child of its own, offers, the next change, the subset proof
//! forwarded, and halts against extreme outcomes.
#![no_main]

use arbor::rules::{Outcomes, RuleBook, SignedRules, TAG_RULES, availability_from_proof};
use arbor::trust::{Envelope, PublicKey};
use arbor::wire;
use arbor_fuzz::{EXPIRES, NOW, assert_canonical, child, grandchild, root_node};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let issuer = root_node();
    let path = [issuer.public(), child().public()];
    let mut book = RuleBook::new();
    if book.receive(data, &path, NOW).is_ok() {
        use_book(&book, &path, data);
    }
    let envelope = Envelope::sign(&issuer, TAG_RULES, 3, Some(EXPIRES), data.to_vec());
    let bytes = wire::encode(&envelope);
    let Ok(opened) = SignedRules::open(&bytes, &path, NOW) else {
        return;
    };
    assert_canonical(&opened.rules, data);
    let again = match SignedRules::sign(&issuer, 3, EXPIRES, opened.rules.clone()) {
        Ok(again) => again,
        Err(e) => panic!("an opened rule set cannot be signed again: {e}"),
    };
    assert_eq!(
        again, opened,
        "signing an opened rule set gives other bytes"
    );
    let mut book = RuleBook::new();
    assert_eq!(book.apply(opened.clone()), Ok(true));
    assert_eq!(
        book.apply(opened),
        Ok(false),
        "the same rules again change nothing"
    );
    use_book(&book, &path, &bytes);
});

/// What the engine asks of a book holding one rule set from the first node of `path`.
fn use_book(book: &RuleBook, path: &[PublicKey], bytes: &[u8]) {
    let issuer = path[0];
    let Some(held) = book.get(&issuer) else {
        panic!("an applied rule set is not held");
    };
    assert_eq!(book.version(&issuer), Some(held.version));
    let avail = book.availability(path, NOW);
    let _ = book.child_availability(path, &grandchild().public(), NOW);
    let _ = book.next_change(path, NOW);
    assert_eq!(book.forward(path, NOW).len(), 1);
    let proof = availability_from_proof(&[bytes], path, NOW);
    assert_eq!(
        proof.as_ref().ok(),
        Some(&avail),
        "the proof gives what the book gives"
    );
    for (key, approval) in &held.rules.approvals {
        let offer = book.check_offer(path, &key.update, NOW);
        assert_eq!(offer.is_ok(), avail.is_available(&key.update));
        let _ = approval.reaches(&key.update, &path[1], NOW);
        for (failed, total) in [
            (0, 0),
            (1, 1),
            (u64::MAX, u64::MAX),
            (1, u64::MAX),
            (u64::MAX, 0),
        ] {
            let _ = approval.should_halt(Outcomes { failed, total });
        }
    }
}
