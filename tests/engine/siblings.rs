//! Siblings at a site: each chunk crosses the site's uplink once, a sibling that sends
//! bad bytes is banned, one that cannot be reached or leaves costs bytes but never
//! completion, strangers cannot pose as siblings, and siblings share while the WAN
//! window is closed.

use super::common::synthetic_update as update;
use super::harness::*;
use arbor::engine::{Control, Event, PeerId, Role};
use arbor::trust::SignedManifest;
use std::sync::Arc;

/// A root and `n` leaves (keys 2..) under it, all placed at one site behind one
/// uplink, connected; the root publishes an update of `chunks` chunks.
fn site_of_leaves(
    h: &mut Harness,
    n: u8,
    chunks: u32,
) -> (PeerId, Vec<PeerId>, Arc<SignedManifest>) {
    let root = key(1);
    h.add(root, Role::Root, 1);
    let leaves: Vec<PeerId> = (0..n).map(|i| key(i + 2)).collect();
    for (i, leaf) in leaves.iter().enumerate() {
        h.add(*leaf, Role::Member { parent: root }, 10 + i as u64);
        h.attach(root, *leaf);
    }
    h.run(100);
    h.site(root, &leaves, "berlin");
    h.run(200);
    let m = update(chunks, &root_secret());
    h.publish_at_root(root, &m);
    (root, leaves, m)
}

/// Chunks the root sent across the site's uplink, to all of `leaves` together.
fn uplink_chunks(h: &Harness, root: PeerId, leaves: &[PeerId]) -> u64 {
    leaves
        .iter()
        .map(|l| h.node(root).chunks_sent.get(l).copied().unwrap_or(0))
        .sum()
}

#[test]
fn siblings_at_a_site_take_each_chunk_across_the_uplink_once() {
    let mut h = Harness::new(1, 10);
    let (root, leaves, m) = site_of_leaves(&mut h, 4, 200);
    h.run(600_000);
    for leaf in &leaves {
        assert!(holds_all(&h, *leaf, &m), "a leaf did not get everything");
        let stats = h.engine(*leaf).stats();
        assert!(
            stats.bytes_from_siblings > 0,
            "a leaf took nothing from its siblings"
        );
        assert_eq!(
            stats.bytes_from_parent + stats.bytes_from_siblings,
            200 * u64::from(CHUNK),
            "a leaf counted bytes twice or not at all"
        );
    }
    assert_eq!(
        uplink_chunks(&h, root, &leaves),
        200,
        "a chunk crossed the site's uplink more than once"
    );
    // The uplink was the bottleneck: the site took about one update's time, not four.
    let last = leaves
        .iter()
        .filter_map(|l| h.completed(*l))
        .max()
        .expect("done");
    assert!(
        last < 200 * 10 * 3 / 2,
        "the site took {last} ms for 200 chunk times of 10 ms"
    );
    // The reports say where the bytes came from.
    let report = h.engine(leaves[0]).report(last);
    let state = &report.own[0];
    assert!(
        state.from_siblings > 0 && state.from_parent > 0,
        "{state:?}"
    );
}

#[test]
fn without_a_site_every_leaf_takes_every_chunk_from_the_parent() {
    let mut h = Harness::new(1, 10);
    let root = key(1);
    h.add(root, Role::Root, 1);
    let leaves: Vec<PeerId> = (2..6).map(key).collect();
    for (i, leaf) in leaves.iter().enumerate() {
        h.add(*leaf, Role::Member { parent: root }, 10 + i as u64);
        h.attach(root, *leaf);
    }
    let m = update(50, &root_secret());
    h.publish_at_root(root, &m);
    h.run(600_000);
    assert!(leaves.iter().all(|l| holds_all(&h, *l, &m)));
    assert_eq!(uplink_chunks(&h, root, &leaves), 4 * 50);
    assert!(
        leaves
            .iter()
            .all(|l| h.engine(*l).stats().bytes_from_siblings == 0)
    );
}

#[test]
fn a_sibling_that_sends_bad_bytes_is_banned_and_its_chunks_come_from_the_parent() {
    let mut h = Harness::new(1, 10);
    let (root, leaves, m) = site_of_leaves(&mut h, 3, 120);
    h.node_mut(leaves[0]).corrupt = u32::MAX;
    h.run(600_000);
    for leaf in &leaves[1..] {
        assert!(holds_all(&h, *leaf, &m), "a leaf did not get everything");
        let n = h.node(*leaf);
        assert!(
            n.events
                .iter()
                .any(|e| matches!(e, Event::Misbehaved { peer, reason, .. }
                if *peer == leaves[0] && reason.contains("banned"))),
            "the corrupting sibling was not banned"
        );
        assert_eq!(h.engine(*leaf).stats().siblings_banned, 1);
        assert!(
            !h.engine(*leaf)
                .siblings()
                .iter()
                .any(|s| s.peer == leaves[0] && !s.banned),
            "the banned sibling is still in use"
        );
        // Only verified chunks were stored: the harness stores only good ones, and
        // every chunk of the update is held.
        assert_eq!(n.store.len(), 120);
    }
    // The corrupting leaf itself got everything from the parent or its siblings.
    assert!(holds_all(&h, leaves[0], &m));
    // Bytes were spent on the bad sibling's share, but not on every leaf's.
    let sent = uplink_chunks(&h, root, &leaves);
    assert!(sent < 3 * 120, "{sent} chunks crossed the uplink");
}

/// A root with `n` leaves at one site, the first two of which cannot reach each other;
/// the root has sent the site's lists.
fn site_with_a_cut(h: &mut Harness, n: u8) -> (PeerId, Vec<PeerId>) {
    let root = key(1);
    h.add(root, Role::Root, 1);
    let leaves: Vec<PeerId> = (2..2 + n).map(key).collect();
    h.cut.insert(pair(leaves[0], leaves[1]));
    for (i, leaf) in leaves.iter().enumerate() {
        h.add(*leaf, Role::Member { parent: root }, 10 + i as u64);
        h.attach(root, *leaf);
    }
    h.run(100);
    h.site(root, &leaves, "berlin");
    h.with(root, |_, _| {});
    (root, leaves)
}

#[test]
fn an_unreachable_sibling_costs_bytes_never_completion() {
    let mut h = Harness::new(1, 10);
    // Two of them cannot reach each other (a firewall between their LAN ports).
    let (root, leaves) = site_with_a_cut(&mut h, 3);
    let m = update(100, &root_secret());
    h.publish_at_root(root, &m);
    h.run(600_000);
    assert!(
        leaves.iter().all(|l| holds_all(&h, *l, &m)),
        "a leaf stalled"
    );
    let sent = uplink_chunks(&h, root, &leaves);
    assert!(
        (100..=2 * 100).contains(&sent),
        "{sent} chunks crossed the uplink"
    );
}

#[test]
fn a_sibling_that_could_not_be_reached_at_first_is_dialled_again() {
    let mut h = Harness::new(1, 10);
    // Their first dials fail (one of them was not listening yet)...
    let (root, leaves) = site_with_a_cut(&mut h, 2);
    h.run(h.now() + 2_000);
    // ...and later it would work: nothing else changes at the site.
    h.cut.remove(&pair(leaves[0], leaves[1]));
    h.run(h.now() + 60_000);
    for (leaf, other) in [(leaves[0], leaves[1]), (leaves[1], leaves[0])] {
        assert!(
            h.engine(leaf)
                .siblings()
                .iter()
                .any(|s| s.peer == other && s.connected),
            "the siblings never connected"
        );
    }
    let m = update(100, &root_secret());
    h.publish_at_root(root, &m);
    h.run(600_000);
    assert!(leaves.iter().all(|l| holds_all(&h, *l, &m)));
    let sent = uplink_chunks(&h, root, &leaves);
    assert!(
        sent < 2 * 100,
        "{sent} chunks crossed the uplink: no sibling fetch"
    );
}

#[test]
fn a_sibling_that_leaves_mid_transfer_stalls_nobody() {
    let mut h = Harness::new(1, 10);
    let (root, leaves, m) = site_of_leaves(&mut h, 3, 200);
    h.run(h.now() + 400);
    // leaves[0] goes away: from its siblings and from the root.
    for other in [root, leaves[1], leaves[2]] {
        h.disconnect(leaves[0], other);
    }
    h.cut.insert(pair(leaves[0], root));
    h.run(600_000);
    for leaf in &leaves[1..] {
        assert!(
            holds_all(&h, *leaf, &m),
            "a leaf stalled on a sibling that left"
        );
    }
}

#[test]
fn strangers_cannot_pose_as_siblings() {
    let mut h = Harness::new(1, 10);
    let (_, leaves, m) = site_of_leaves(&mut h, 2, 20);
    h.run(600_000);
    let stranger = key(40);
    // Not connected as a sibling: its announcements and requests are refused.
    h.with(leaves[0], |e, now| {
        e.handle_message(
            stranger,
            Control::Have {
                update: m.id,
                ranges: vec![(0, 20)],
            },
            now,
        )
    });
    assert!(
        h.node(leaves[0])
            .events
            .iter()
            .any(|e| matches!(e, Event::Misbehaved { peer, .. } if *peer == stranger))
    );
    assert!(!h.engine(leaves[0]).may_request(&stranger));
    assert!(!serves(&mut h, leaves[0], stranger, &m.id));
    // A connected sibling may ask, and is served.
    assert!(h.engine(leaves[0]).may_request(&leaves[1]));
    assert!(serves(&mut h, leaves[0], leaves[1], &m.id));
}

#[test]
fn siblings_share_while_the_wan_window_is_closed() {
    let mut h = Harness::new(1, 10);
    let (_, leaves, m) = site_of_leaves(&mut h, 2, 40);
    // leaves[1] may not use the WAN; leaves[0] may.
    h.with(leaves[1], |e, now| {
        e.set_parent_paused(true, now);
    });
    h.run(600_000);
    assert!(
        holds_all(&h, leaves[1], &m),
        "the paused leaf did not get it from its sibling"
    );
    assert_eq!(h.engine(leaves[1]).stats().bytes_from_parent, 0);
}
