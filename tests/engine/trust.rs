//! Who is believed and served: strangers and revoked children are refused, and
//! manifests signed by another root are not taken up.

use super::common::synthetic_update as update;
use super::harness::*;
use arbor::content::Hash;
use arbor::engine::{Control, Event, Role};
use arbor::trust::SecretKey;
use std::sync::Arc;

#[test]
fn strangers_are_refused() {
    let mut h = Harness::new(1, 2);
    let [root, stranger] = [key(1), key(9)];
    h.add(root, Role::Root, 1);
    h.add(stranger, Role::Member { parent: root }, 2);
    // The stranger dials, but the root never certified it.
    h.with(stranger, |e, now| e.handle_timeout(now));
    let m = update(10, &root_secret());
    h.publish_at_root(root, &m);
    h.run(10_000);
    assert!(
        h.node(root)
            .events
            .contains(&Event::Refused { peer: stranger })
    );
    assert!(h.node(stranger).store.is_empty());
    assert!(!serves(&mut h, root, stranger, &m.id));
}

#[test]
fn manifests_from_another_root_are_refused() {
    let mut h = Harness::new(1, 2);
    let [root, a] = chain(&mut h);
    h.run(100);
    let forged = update(10, &SecretKey::from_seed([201; 32]));
    let bytes: Arc<[u8]> = forged.bytes.clone();
    h.with(a, |e, now| {
        e.handle_message(root, Control::Offer { manifest: bytes }, now)
    });
    h.run(10_000);
    assert!(
        h.engine(a).progress().is_empty(),
        "a forged manifest was accepted"
    );
    assert!(
        h.node(a)
            .events
            .iter()
            .any(|e| matches!(e, Event::Misbehaved { peer, .. } if *peer == root))
    );
    // Announcements about unknown updates, and out-of-range ones, change nothing.
    let junk = Control::Have {
        update: Hash::of(b"nothing"),
        ranges: vec![(5, 1), (0, u32::MAX)],
    };
    h.with(a, |e, now| e.handle_message(root, junk, now));
    let misbehaved = h
        .node(a)
        .events
        .iter()
        .filter(|e| matches!(e, Event::Misbehaved { .. }))
        .count();
    assert_eq!(misbehaved, 2);
    assert!(h.engine(a).progress().is_empty());
}

#[test]
fn a_revoked_child_is_disconnected_and_no_longer_served() {
    let mut h = Harness::new(1, 2);
    let [root, a] = chain(&mut h);
    let m = update(10, &root_secret());
    h.publish_at_root(root, &m);
    h.run(10_000);
    assert!(serves(&mut h, root, a, &m.id));
    h.with(root, |e, now| e.remove_child(&a, now));
    assert!(
        !h.holds_connection(root, a),
        "the revoked child is still connected"
    );
    assert!(!serves(&mut h, root, a, &m.id));
    // When it dials again, it is refused.
    h.with(a, |e, now| e.handle_timeout(now + 60_000));
    h.run(200_000);
    assert!(h.node(root).events.contains(&Event::Refused { peer: a }));
}
