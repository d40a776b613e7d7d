//! Moving an update down a tree: every node gets every chunk once, bad bytes are
//! never kept, depth costs chunk times rather than file times, announcements come in
//! bursts, a lost parent is survived, a restart resumes, a closed WAN window holds
//! fetches back, and deltas draw only on a whole earlier version.

use super::common::synthetic_update as update;
use super::harness::*;
use arbor::content::Hash;
use arbor::engine::{Config, Engine, Event, Role};
use arbor::trust::SignedManifest;
use std::collections::HashSet;
use std::sync::Arc;

#[test]
fn every_node_of_a_two_level_tree_gets_every_chunk() {
    let mut h = Harness::new(1, 2);
    let ids = seven_node_tree(&mut h);
    let m = update(100, &root_secret());
    h.publish_at_root(ids[0], &m);
    h.run(60_000);
    let want: HashSet<Hash> = m.manifest.chunk_refs().map(|c| c.hash()).collect();
    for id in &ids[1..] {
        let node = h.node(*id);
        assert_eq!(node.store, want, "a node is missing chunks");
        let done = node
            .events
            .iter()
            .filter(|e| matches!(e, Event::UpdateComplete { .. }))
            .count();
        assert_eq!(done, 1, "completion reported {done} times");
        assert_eq!(
            node.chunks_requested, 100,
            "chunks were fetched more than once"
        );
        assert_eq!(
            h.engine(*id).stats().bytes_from_parent,
            100 * u64::from(CHUNK)
        );
    }
}

#[test]
fn depth_costs_chunk_times_not_file_times() {
    // root -> n1 -> n2 -> n3, 200 chunks at 10 ms each per hop.
    let mut h = Harness::new(1, 10);
    let [root, n1, _, n3] = chain(&mut h);
    h.run(100);
    let start = h.now();
    let m = update(200, &root_secret());
    h.publish_at_root(root, &m);
    h.run(600_000);
    let one_hop = h.completed(n1).expect("n1 completes") - start;
    let three_hops = h.completed(n3).expect("n3 completes") - start;
    assert!(
        one_hop >= 2000,
        "one hop took {one_hop} ms for 2000 ms of chunks"
    );
    // Store-and-forward would take three times as long; cut-through adds a few chunk
    // times per hop, and at most one pause between announcements of new chunks.
    let pause = Config::default().announce_interval;
    assert!(
        three_hops * 100 <= one_hop * 110 + 2 * pause * 100,
        "three hops {three_hops} ms vs one hop {one_hop} ms"
    );
}

#[test]
fn a_node_receiving_fast_announces_bursts_not_each_chunk() {
    // root -> n1 -> n2: n1 stores 200 chunks, one every 10 ms, for 2 s.
    let mut h = Harness::new(1, 10);
    let [root, _, n2] = chain(&mut h);
    h.run(100);
    let m = update(200, &root_secret());
    h.publish_at_root(root, &m);
    h.run(600_000);
    assert!(h.completed(n2).is_some(), "n2 completes");
    assert_eq!(h.node(n2).store.len(), 200);
    // One `Have` when it connected, then one per pause between announcements (and
    // the last chunk at once), not one per chunk.
    let pause = Config::default().announce_interval;
    let haves = h.node(n2).haves_received;
    let most = 2 + 2000 / pause + 2;
    assert!(
        (2..=most).contains(&haves),
        "n2 was sent {haves} Haves for 200 chunks (at most {most} expected)"
    );
}

#[test]
fn a_corrupting_parent_is_caught_and_the_chunks_fetched_again() {
    let mut h = Harness::new(1, 2);
    let [root, a, c] = chain(&mut h);
    h.node_mut(a).corrupt = 25;
    let m = update(40, &root_secret());
    h.publish_at_root(root, &m);
    h.run(600_000);
    let want: HashSet<Hash> = m.manifest.chunk_refs().map(|c| c.hash()).collect();
    let child = h.node(c);
    assert_eq!(child.store, want);
    assert_eq!(h.engine(c).stats().bad_chunks, 25);
    let bad_events = child
        .events
        .iter()
        .filter(|e| matches!(e, Event::BadChunk { peer, .. } if *peer == a))
        .count();
    assert_eq!(bad_events, 25);
    // Each bad chunk was asked again, and nothing else was.
    assert_eq!(child.chunks_requested, 40 + 25);
}

#[test]
fn a_child_survives_losing_its_parent_and_finishes_when_it_returns() {
    let mut h = Harness::new(1, 10);
    let [root, a, c] = chain(&mut h);
    h.run(50);
    let m = update(300, &root_secret());
    h.publish_at_root(root, &m);
    h.run(1_000);
    // The root becomes unreachable for a while.
    h.cut.insert(pair(root, a));
    h.disconnect(root, a);
    let held_when_cut = h.node(a).store.len();
    assert!(
        held_when_cut > 0 && held_when_cut < 300,
        "cut at {held_when_cut} chunks"
    );
    h.run(20_000);
    assert_eq!(h.engine(a).parent_connected(), Some(false));
    assert_eq!(
        h.node(a).store.len(),
        held_when_cut,
        "fetched from a lost parent"
    );
    // Meanwhile a still serves its own child what it holds.
    assert_eq!(h.node(c).store.len(), held_when_cut);
    assert!(h.node(a).events.contains(&Event::ParentLost));

    h.cut.clear();
    h.run(200_000);
    assert_eq!(
        h.engine(a).parent_connected(),
        Some(true),
        "never reconnected"
    );
    assert_eq!(h.node(c).store.len(), 300);
    // What was in flight when the link broke is asked again; nothing arrives twice.
    assert_eq!(
        h.node(a).chunks_received,
        300,
        "chunks fetched twice after reconnecting"
    );
}

#[test]
fn a_restarted_node_fetches_only_what_it_lacks() {
    let mut h = Harness::new(1, 10);
    let [root, a] = chain(&mut h);
    h.run(50);
    let m = update(200, &root_secret());
    h.publish_at_root(root, &m);
    h.run(1_000);
    let held = h.node(a).store.len();
    assert!(held > 0 && held < 200);

    // Crash: the engine is gone, the store stays. A new engine starts from the store.
    h.disconnect(root, a);
    let saved = h.snapshot(a);
    h.restart(a, Role::Member { parent: root }, 3, &saved);
    h.run(600_000);
    assert_eq!(h.node(a).store.len(), 200);
    assert_eq!(h.node(a).chunks_requested, (200 - held) as u64);
}

#[test]
fn outside_its_wan_window_a_node_asks_its_parent_for_nothing_and_resumes_after() {
    let mut h = Harness::new(1, 2);
    let [root, leaf] = chain::<2>(&mut h);
    // The window is closed before anything is offered.
    h.with(leaf, |e, now| {
        assert!(e.set_parent_paused(true, now));
        assert!(
            !e.set_parent_paused(true, now),
            "a second pause changes nothing"
        );
    });
    let m = update(50, &root_secret());
    h.publish_at_root(root, &m);
    h.run(10_000);
    assert_eq!(h.node(leaf).chunks_requested, 0, "fetched while paused");
    assert!(h.completed(leaf).is_none());
    // It opens: the node fetches everything, once.
    h.with(leaf, |e, now| assert!(e.set_parent_paused(false, now)));
    h.run(60_000);
    assert!(h.completed(leaf).is_some(), "the transfer did not resume");
    assert_eq!(h.node(leaf).chunks_requested, 50);
}

/// An update like [`update`], as version `version` of module `id`, at publish counter `seq`.
fn version_of(id: &str, version: &str, seq: u64, chunks: u32) -> Arc<SignedManifest> {
    let mut m = update(chunks, &root_secret()).manifest.clone();
    m.id = id.into();
    m.version = version.into();
    Arc::new(SignedManifest::sign(&root_secret(), seq, m).expect("valid manifest"))
}

#[test]
fn deltas_draw_only_on_a_whole_earlier_version_of_the_same_module() {
    let root = key(1);
    let mut e = Engine::new(
        Role::Root,
        root_secret().public(),
        secret_of(root),
        vec![root],
        Config::default(),
        1,
    );
    let (v1, v2, v3) = (
        version_of("viewer", "1", 1, 8),
        version_of("viewer", "2", 2, 9),
        version_of("viewer", "3", 3, 10),
    );
    let other = version_of("editor", "1", 4, 11);
    e.add_local_update(v1.clone(), &[true; 8], 0);
    e.add_local_update(v2.clone(), &[true; 9], 0);
    // Version 3 is held in part only: no base for anything.
    e.add_local_update(
        v3.clone(),
        &[true, false, true, true, true, true, true, true, true, true],
        0,
    );
    e.add_local_update(other.clone(), &[true; 11], 0);
    // The newest whole other version of the same module.
    assert_eq!(e.delta_base(&v3.id).map(|(b, _)| b), Some(v2.id));
    assert_eq!(e.delta_base(&v1.id).map(|(b, _)| b), Some(v2.id));
    assert_eq!(e.delta_base(&other.id), None);
    // A server answers with deltas only against such a base, whatever a requester names.
    assert!(e.delta_pair(&v2.id, &v1.id).is_some());
    for (update, base) in [
        (v2.id, v3.id),                // held in part
        (v2.id, other.id),             // another module
        (v2.id, v2.id),                // itself
        (v2.id, Hash::of(b"unknown")), // never heard of
        (Hash::of(b"unknown"), v1.id),
    ] {
        assert!(
            e.delta_pair(&update, &base).is_none(),
            "{update} against {base}"
        );
    }
}
