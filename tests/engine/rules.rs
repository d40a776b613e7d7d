//! Rules decide what moves: they propagate down every level (to a node that was
//! offline too), forged ones are refused, a child cannot widen what its parent
//! approved, waves pick the same members every time, a branch fetches only what its
//! children may have, and failures past a threshold halt a rollout.

use super::common::synthetic_update as update;
use super::harness::*;
use arbor::engine::{Control, Event, Outcome, PeerId, Role};
use arbor::rules::{ALL, Approval, FULL_WAVE, Rules, SignedRules};
use std::collections::BTreeSet;
use std::sync::Arc;

#[test]
fn rules_propagate_through_three_levels_and_an_offline_node_catches_up() {
    let mut h = Harness::new(1, 2);
    let [root, a, b, c] = chain(&mut h);
    h.run(100);
    let (u1, u2) = (update(8, &root_secret()), update(9, &root_secret()));
    h.publish_only(root, &u1);
    h.publish_only(root, &u2);
    // Autonomous mode: each level's admin passes u1 on to its own children.
    for node in [root, a, b] {
        h.approve_for_children(node, u1.id);
        h.run(h.now() + 1_000);
    }
    let ids = [u1.id, u2.id];
    for node in [a, b, c] {
        assert_eq!(available(&h, node, &ids), vec![u1.id]);
    }
    assert!(
        holds_all(&h, c, &u1),
        "the leaf did not get the approved update"
    );
    assert!(
        h.node(c).store.len() == 8,
        "the leaf fetched an unapproved update"
    );

    // c goes offline; meanwhile every level changes its rules twice.
    h.cut.insert(pair(b, c));
    h.disconnect(b, c);
    for node in [root, a, b] {
        h.approve_for_children(node, u2.id);
        h.run(h.now() + 500);
        let mut rules = h.own_rules(node);
        assert!(rules.decline(&u1.id, ALL));
        h.set_rules(node, rules);
        h.run(h.now() + 500);
    }
    assert_eq!(available(&h, b, &ids), vec![u2.id]);
    assert_eq!(available(&h, c, &ids), vec![u1.id], "c heard while offline");
    let stored_before = h.node(c).rules_stored.len();

    h.cut.clear();
    h.run(h.now() + 120_000);
    // c holds the newest version of each issuer, took each once, and acts on it.
    for issuer in [root, a, b] {
        assert_eq!(
            h.engine(c).rules().version(&issuer),
            h.engine(b).rules().version(&issuer),
        );
    }
    assert_eq!(
        h.node(c).rules_stored.len() - stored_before,
        3,
        "catching up took some rule set more or less than once"
    );
    assert_eq!(available(&h, c, &ids), vec![u2.id]);
    assert!(holds_all(&h, c, &u2));
}

#[test]
fn forged_expired_and_replayed_rules_are_refused_and_change_nothing() {
    let mut h = Harness::new(1, 2);
    let [root, a, b] = chain(&mut h);
    let m = update(4, &root_secret());
    h.publish_at_root(root, &m);
    h.run(10_000);
    let held = h.engine(b).rules().get(&root).cloned().expect("held");
    let old = held.clone();
    // A newer version at the root, so that `old` is a replay.
    let mut rules = h.own_rules(root);
    rules.issued = 1;
    h.set_rules(root, rules.clone());
    h.run(h.now() + 1_000);
    let current = h.engine(b).rules().get(&root).cloned().expect("held");
    assert!(current.version > old.version);

    let mut bad_signature = current.bytes.clone();
    let last = bad_signature.len() - 1;
    // The signature is the envelope's last field: flipping its last byte breaks it.
    bad_signature[last] ^= 1;
    let wrong_signer = SignedRules::sign(
        &secret_of(a),
        99,
        RULES_EXPIRE,
        Rules {
            issuer: a,
            ..Rules::new(a, 0)
        },
    )
    .expect("signed");
    // Signed by a stranger who claims to be the root.
    let stranger = SignedRules::sign(&secret_of(key(9)), 99, RULES_EXPIRE, Rules::new(key(9), 0))
        .expect("signed");
    let expired = SignedRules::sign(&secret_of(root), 500, 2, Rules::new(root, 1)).expect("signed");
    // Past the expired set's expiry and the clock tolerance (the harness clock stops
    // when nothing happens: move it on).
    h.skip_to((3 + arbor::trust::CLOCK_TOLERANCE) * 1000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("signature", bad_signature),
        ("not an ancestor", stranger.bytes),
        ("rollback", old.bytes.clone()),
        ("expired", expired.bytes),
        ("not valid CBOR", b"\xa1garbage".to_vec()),
    ];
    for (what, bytes) in cases {
        let before = h.node(b).events.len();
        let sets: Vec<Arc<[u8]>> = vec![bytes.into()];
        h.with(b, |e, now| {
            e.handle_message(a, Control::Rules { sets }, now)
        });
        let refusals: Vec<String> = h.node(b).events[before..]
            .iter()
            .filter_map(|e| match e {
                Event::RulesRefused { peer, reason } if *peer == a => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(refusals.len(), 1, "{what}: {refusals:?}");
        assert!(
            refusals[0].contains(what),
            "{what}: refused for another reason: {}",
            refusals[0]
        );
        assert_eq!(
            h.engine(b).rules().get(&root),
            Some(&current),
            "{what}: changed what b holds"
        );
    }
    // The refusals go up: the root's roll-up names b and each reason.
    h.run(h.now() + 10_000);
    let refusals = h.engine(root).report(h.now()).refusals;
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    assert!(refusals.iter().all(|r| r.node == b));
    assert!(refusals.iter().any(|r| r.reason.contains("rollback")));
    // A rule set of b's own parent that b's grandparent never signed is fine on its
    // own (a signs for a), but a set signed by a that claims to be the root's is not.
    let before = h.node(b).events.len();
    let sets: Vec<Arc<[u8]>> = vec![wrong_signer.bytes.into()];
    h.with(b, |e, now| {
        e.handle_message(a, Control::Rules { sets }, now)
    });
    assert!(
        !h.node(b).events[before..]
            .iter()
            .any(|e| matches!(e, Event::RulesRefused { .. })),
        "a's own rules were refused"
    );
    assert!(available(&h, b, &[m.id]).contains(&m.id));
}

#[test]
fn a_child_cannot_widen_what_its_parent_approved() {
    let mut h = Harness::new(1, 2);
    let [root, a, b] = chain(&mut h);
    let (allowed, other) = (update(4, &root_secret()), update(5, &root_secret()));
    h.publish_only(root, &allowed);
    h.publish_only(root, &other);
    h.approve_for_children(root, allowed.id);
    h.run(10_000);
    // a approves for b both what it has and what it was never given.
    let mut rules = h.own_rules(a);
    for u in [allowed.id, other.id] {
        rules.approve(u, ALL, subtree(FULL_WAVE)).expect("valid");
    }
    h.set_rules(a, rules);
    // And offers the other one directly, as a rogue parent would.
    let offer: Arc<[u8]> = other.bytes.clone();
    h.with(b, |e, now| {
        e.handle_message(a, Control::Offer { manifest: offer }, now)
    });
    h.run(h.now() + 10_000);
    assert_eq!(available(&h, b, &[allowed.id, other.id]), vec![allowed.id]);
    assert!(holds_all(&h, b, &allowed));
    assert_eq!(h.node(b).store.len(), 4, "b fetched what a could not give");
    assert!(h.node(b).events.contains(&Event::OfferWithheld {
        peer: a,
        update: other.id
    }));
    assert!(!serves(&mut h, a, b, &other.id));
}

#[test]
fn wave_membership_is_deterministic_and_grows_with_the_wave() {
    let reached = |wave: u16| -> BTreeSet<PeerId> {
        let mut h = Harness::new(1, 2);
        let root = key(1);
        h.add(root, Role::Root, 1);
        let children: Vec<PeerId> = (10..50).map(key).collect();
        for (i, c) in children.iter().enumerate() {
            h.add(*c, Role::Member { parent: root }, 100 + i as u64);
            h.attach(root, *c);
        }
        let m = update(2, &root_secret());
        h.publish_only(root, &m);
        let mut rules = h.own_rules(root);
        rules
            .approve(m.id, ALL, Approval::wave(wave))
            .expect("valid");
        h.set_rules(root, rules);
        h.run(30_000);
        let got: BTreeSet<PeerId> = children
            .iter()
            .filter(|c| holds_all(&h, **c, &m))
            .copied()
            .collect();
        // Exactly the members whose bucket is under the wave (PROTOCOL.md §14.5).
        let expected: BTreeSet<PeerId> = children
            .iter()
            .filter(|c| arbor::rules::in_wave(&m.id, c, wave))
            .copied()
            .collect();
        assert_eq!(got, expected, "wave {wave}");
        // Those outside the wave are not even offered it, nor told of its chunks.
        for c in &children {
            let complaints: Vec<&Event> = h
                .node(*c)
                .events
                .iter()
                .filter(|e| matches!(e, Event::Misbehaved { .. }))
                .collect();
            assert!(complaints.is_empty(), "wave {wave}: {complaints:?}");
            if !expected.contains(c) {
                assert_never_told(&h, *c);
            }
        }
        got
    };
    let (w25, w25_again, w60) = (reached(2_500), reached(2_500), reached(6_000));
    assert_eq!(w25, w25_again);
    assert!(w25.is_subset(&w60));
    assert!(!w25.is_empty() && w25.len() < w60.len() && w60.len() < 40);
}

/// A branch that takes an update up while its children are connected offers it, and
/// announces the chunks it receives, to exactly the children its wave reaches.
#[test]
fn a_branch_tells_only_the_children_in_its_wave_of_an_update() {
    let mut h = Harness::new(1, 2);
    let (root, branch) = (key(1), key(2));
    h.add(root, Role::Root, 1);
    h.add(branch, Role::Member { parent: root }, 2);
    h.attach(root, branch);
    let children: Vec<PeerId> = (10..50).map(key).collect();
    for (i, c) in children.iter().enumerate() {
        h.add(*c, Role::Member { parent: branch }, 100 + i as u64);
        h.attach(branch, *c);
    }
    h.run(1_000);
    let m = update(8, &root_secret());
    let wave = 3_000;
    let mut rules = h.own_rules(branch);
    rules
        .approve(m.id, ALL, Approval::wave(wave))
        .expect("valid");
    h.set_rules(branch, rules);
    h.run(h.now() + 1_000);
    h.publish_only(root, &m);
    h.approve_for_children(root, m.id);
    h.run(h.now() + 30_000);
    let (inside, outside): (Vec<PeerId>, Vec<PeerId>) = children
        .iter()
        .partition(|c| arbor::rules::in_wave(&m.id, c, wave));
    assert!(!inside.is_empty() && !outside.is_empty());
    for c in &inside {
        assert!(
            holds_all(&h, *c, &m),
            "a child in the wave lacks the update"
        );
        assert!(h.node(*c).haves_received > 0);
    }
    for c in &outside {
        assert!(
            h.node(*c).store.is_empty(),
            "a child outside the wave got chunks"
        );
        assert_never_told(&h, *c);
    }
}

/// `node`, outside a wave, was neither offered the update nor told of its chunks.
fn assert_never_told(h: &Harness, node: PeerId) {
    let n = h.node(node);
    let offered = n
        .events
        .iter()
        .any(|e| matches!(e, Event::OfferWithheld { .. }));
    assert!(!offered, "{node} outside the wave was offered the update");
    assert_eq!(
        n.haves_received, 0,
        "{node} outside the wave was told of chunks"
    );
}

#[test]
fn a_branch_fetches_only_what_its_children_may_have() {
    let mut h = Harness::new(1, 2);
    let ids = seven_node_tree(&mut h);
    let [root, a, b, a1, ..] = ids;
    h.run(100);
    let (u, v) = (update(6, &root_secret()), update(7, &root_secret()));
    h.publish_only(root, &u);
    h.publish_only(root, &v);
    // The root gives both branches both updates, for them to decide.
    h.approve_for_children(root, u.id);
    h.approve_for_children(root, v.id);
    // a passes u on; b passes nothing on yet.
    h.approve_for_children(a, u.id);
    h.run(h.now() + 20_000);
    assert!(holds_all(&h, a, &u) && holds_all(&h, a1, &u));
    assert_eq!(
        h.node(a).store.len(),
        6,
        "a prefetched what no child may have"
    );
    assert!(
        h.node(b).store.is_empty(),
        "b prefetched what no child may have"
    );
    // Once b's admin approves v, b fetches it and its children get it.
    h.approve_for_children(b, v.id);
    h.run(h.now() + 20_000);
    assert!(holds_all(&h, b, &v));
    assert!(!holds_all(&h, b, &u));
}

#[test]
fn failures_past_the_threshold_halt_the_rollout_and_everyone_sees_why() {
    let mut h = Harness::new(1, 2);
    let root = key(1);
    h.add(root, Role::Root, 1);
    let children: Vec<PeerId> = (10..14).map(key).collect();
    for (i, c) in children.iter().enumerate() {
        h.add(*c, Role::Member { parent: root }, 100 + i as u64);
        h.attach(root, *c);
    }
    let m = update(3, &root_secret());
    h.publish_only(root, &m);
    let mut rules = h.own_rules(root);
    rules
        .approve(
            m.id,
            ALL,
            Approval {
                halt: Some(arbor::rules::Halt {
                    failures: Some(2),
                    fraction: None,
                }),
                ..Approval::wave(FULL_WAVE)
            },
        )
        .expect("approve");
    let version = h.set_rules(root, rules).version;
    h.run(h.now() + 10_000);
    h.with(children[0], |e, now| {
        e.set_outcome(&m.id, Outcome::Failed("hook exited 1".into()), now)
    });
    h.run(h.now() + 10_000);
    assert!(
        !h.node(root)
            .events
            .iter()
            .any(|e| matches!(e, Event::Halted { .. })),
        "halted below the threshold"
    );
    h.with(children[1], |e, now| {
        e.set_outcome(&m.id, Outcome::Failed("hook exited 1".into()), now)
    });
    h.run(h.now() + 10_000);
    let halts: Vec<&Event> = h
        .node(root)
        .events
        .iter()
        .filter(|e| matches!(e, Event::Halted { .. }))
        .collect();
    assert_eq!(halts.len(), 1, "{halts:?}");
    let held = h.engine(root).rules().get(&root).expect("own rules");
    assert_eq!(held.version, version + 1);
    let halted = held
        .rules
        .approvals
        .values()
        .next()
        .and_then(|a| a.halted.clone());
    assert!(halted.is_some_and(|h| h.reason.contains("2 nodes failed")));
    assert_eq!(
        h.node(root).rules_stored.last(),
        Some(&root),
        "the halt was not kept"
    );
    // Every child holds the halted rules, and the update is no longer available to them.
    for c in &children {
        assert_eq!(h.engine(*c).rules().version(&root), Some(version + 1));
        assert!(available(&h, *c, &[m.id]).is_empty());
    }
}
