//! Reports go up: the root's roll-up is the sum of every node's state, reports made
//! while a parent is away arrive later and count once, forged ones are refused, a
//! revoked subtree leaves the roll-up, a download sends few of them, and a node
//! resumed from its store (in any order, or damaged) comes back the same.

use super::common::synthetic_update as update;
use super::harness::*;
use arbor::content::Hash;
use arbor::engine::{Config, Control, Engine, Event, Outcome, PeerId, Role, Saved};
use arbor::rules::{ALL, Approval, FULL_WAVE};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Each node's own state per update, counted straight from the engines: what a roll-up
/// must add up to.
fn leaf_counts(h: &Harness, nodes: &[PeerId]) -> BTreeMap<Hash, arbor::report::Counts> {
    let mut sum: BTreeMap<Hash, arbor::report::Counts> = BTreeMap::new();
    for n in nodes {
        for s in h.engine(*n).report(h.now()).own {
            sum.entry(s.update).or_default().count(s.state);
        }
    }
    sum
}

#[test]
fn the_roll_up_at_the_root_is_the_sum_of_every_nodes_state() {
    let mut h = Harness::new(1, 2);
    let ids = seven_node_tree(&mut h);
    let [root, a, b, a1, a2, b1, _b2] = ids;
    let (u, v) = (update(6, &root_secret()), update(7, &root_secret()));
    h.publish_at_root(root, &u);
    h.publish_only(root, &v);
    // v only to a's side, and a passes it on to a1 only, through a group.
    let mut rules = h.own_rules(root);
    rules.create_group("east").expect("group");
    rules.assign("east", a).expect("assign");
    rules
        .approve(v.id, "east", Approval::wave(FULL_WAVE))
        .expect("approve");
    h.set_rules(root, rules);
    let mut rules = h.own_rules(a);
    rules.create_group("pilot").expect("group");
    rules.assign("pilot", a1).expect("assign");
    rules
        .approve(v.id, "pilot", Approval::wave(FULL_WAVE))
        .expect("approve");
    h.set_rules(a, rules);
    h.run(h.now() + 30_000);
    // Installers have their say on two leaves.
    h.with(a2, |e, now| {
        e.set_outcome(&u.id, Outcome::Failed("disk full".into()), now)
    });
    h.with(b1, |e, now| {
        e.set_outcome(&u.id, Outcome::Installed(None), now)
    });
    h.run(h.now() + 30_000);

    let report = h.engine(root).report(h.now());
    assert_eq!(report.subtree, leaf_counts(&h, &ids));
    let counts = report.subtree_counts(&u.id);
    assert_eq!(
        (
            counts.total(),
            counts.failed(),
            counts.get(arbor::report::State::Installed)
        ),
        (7, 1, 1)
    );
    assert_eq!(
        report.subtree_counts(&v.id).total(),
        3,
        "root, a and a1 hold v"
    );
    assert_eq!(report.group_counts(ALL, &u.id).total(), 6);
    assert_eq!(
        report.group_counts("east", &v.id),
        leaf_counts(&h, &[a, a1])[&v.id]
    );
    assert_eq!(
        report.group_counts("east", &u.id),
        leaf_counts(&h, &[a, a1, a2])[&u.id]
    );
    // Every node is in the detail once, with its parent.
    assert_eq!(report.nodes.len(), 6);
    let failed = report
        .nodes
        .iter()
        .find(|d| d.node == a2)
        .and_then(|d| d.updates.iter().find(|s| s.update == u.id))
        .expect("a2's state");
    assert_eq!(failed.reason.as_deref(), Some("disk full"));
    assert!(report.nodes.iter().all(|d| d.parent.is_some()));
    let _ = b;
}

#[test]
fn reports_made_while_the_parent_is_away_arrive_later_and_count_once() {
    let mut h = Harness::new(1, 2);
    let [root, a, leaf] = chain(&mut h);
    let m = update(5, &root_secret());
    h.publish_at_root(root, &m);
    h.run(h.now() + 10_000);
    h.cut.insert(pair(a, leaf));
    h.disconnect(a, leaf);
    h.with(leaf, |e, now| {
        e.set_outcome(&m.id, Outcome::Installed(None), now)
    });
    h.run(h.now() + 5_000);
    let before = h.engine(root).report(h.now()).subtree_counts(&m.id);
    assert_eq!(before.get(arbor::report::State::Installed), 0);
    // Back: the leaf sends its snapshot at once.
    h.cut.clear();
    h.run(h.now() + 120_000);
    let after = h.engine(root).report(h.now()).subtree_counts(&m.id);
    assert_eq!(after.get(arbor::report::State::Installed), 1);
    assert_eq!(after.total(), 3, "a node was counted twice or not at all");
    // Delivering the same report again changes nothing.
    let held = h.engine(a).rollup().get(&leaf).cloned().expect("held");
    let again: Arc<[u8]> = held.bytes.clone().into();
    h.with(a, |e, now| {
        e.handle_message(leaf, Control::Report { report: again }, now)
    });
    h.run(h.now() + 5_000);
    assert_eq!(h.engine(root).report(h.now()).subtree_counts(&m.id), after);
}

#[test]
fn garbage_and_forged_reports_are_refused_and_change_nothing() {
    let mut h = Harness::new(1, 2);
    let [root, a, b] = chain(&mut h);
    let m = update(3, &root_secret());
    h.publish_at_root(root, &m);
    h.run(h.now() + 10_000);
    let before = h.engine(a).rollup().clone();
    let b_report = before.get(&b).expect("b reported").clone();
    // b's report, claimed by... a stranger signing it as itself; and plain garbage.
    let forged = arbor::report::SignedReport::sign(
        &secret_of(key(9)),
        u64::MAX,
        arbor::report::Report {
            node: key(9),
            ..b_report.report.clone()
        },
    )
    .expect("signed");
    let mut flipped = b_report.bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    for bytes in [
        forged.bytes,
        flipped,
        b"\x00\xff garbage".to_vec(),
        Vec::new(),
    ] {
        let report: Arc<[u8]> = bytes.into();
        h.with(a, |e, now| {
            e.handle_message(b, Control::Report { report }, now)
        });
        // Past the child's turn: each is taken in, not only the newest.
        h.run(h.now() + 1_000);
    }
    // Nothing forged was taken. (Refused reports are offences: the third bans b, whose
    // session ends; when it is back it reports afresh, with the same content.)
    let held = |r: &arbor::report::Rollup| {
        let held = &r.get(&b).expect("a report of b is held").report;
        (held.node, held.own.clone(), held.subtree.clone())
    };
    assert_eq!(held(h.engine(a).rollup()), held(&before));
    assert!(
        h.node(a)
            .events
            .iter()
            .any(|e| matches!(e, Event::Banned { peer, .. } if *peer == b))
    );
    let refused = h.node(a)
        .events
        .iter()
        .filter(|e| matches!(e, Event::Misbehaved { peer, reason, .. } if *peer == b && reason.contains("report")))
        .count();
    assert_eq!(refused, 4);
    // A report from a peer that is not a child is refused too.
    let report: Arc<[u8]> = b_report.bytes.clone().into();
    h.with(root, |e, now| {
        e.handle_message(b, Control::Report { report }, now)
    });
    assert!(h.engine(root).rollup().get(&b).is_none());
}

/// A node resumed from a snapshot comes back the same whatever order its store lists
/// things in (the daemon's store lists them by key, the simulator's as they came): the
/// rule sets of its path and its own, its children's reports, what is available to it
/// and to each child, what it holds and its report sequence number.
#[test]
fn a_resumed_node_is_the_same_whichever_store_it_was_saved_in() {
    let mut h = Harness::new(1, 2);
    let [root, a, b] = chain(&mut h);
    let c = key(4);
    h.add(c, Role::Member { parent: a }, 4);
    h.attach(a, c);
    let m = update(20, &root_secret());
    h.publish_at_root(root, &m);
    h.approve_for_children(a, m.id);
    h.with(c, |e, now| {
        e.set_outcome(&m.id, Outcome::Failed("hook exited 1".into()), now)
    });
    h.run(h.now() + 10_000);
    let saved = h.snapshot(a);
    assert_eq!(
        (saved.children.len(), saved.rules.len(), saved.reports.len()),
        (2, 2, 2),
        "a kept its children, its path's rules and its own, and its children's reports"
    );
    assert_eq!(saved.updates.len(), 1);
    let mut listed_otherwise = saved.clone();
    listed_otherwise.children.reverse();
    listed_otherwise.rules.reverse();
    listed_otherwise.reports.reverse();

    let now = h.now();
    let resumed = [&saved, &listed_otherwise].map(|saved| {
        let mut e = Engine::new(
            Role::Member { parent: root },
            root_secret().public(),
            secret_of(a),
            h.engine(a).path().to_vec(),
            Config {
                heartbeat: 0,
                ..Config::default()
            },
            2,
        );
        assert!(e.resume(saved, now).is_empty());
        let mut outputs: Vec<String> = std::iter::from_fn(|| e.poll_output())
            .map(|o| format!("{o:?}"))
            .collect();
        outputs.sort();
        (e, outputs)
    });
    let before = h.engine(a);
    for (e, _) in &resumed {
        assert_eq!(e.rules(), before.rules(), "the rule sets");
        assert_eq!(e.rollup(), before.rollup(), "the children's reports");
        assert_eq!(e.availability(), before.availability());
        for child in [b, c] {
            assert_eq!(
                e.child_availability(&child),
                before.child_availability(&child)
            );
        }
        assert_eq!(e.progress(), before.progress(), "what it holds");
        assert!(e.is_complete(&m.id));
        assert!(e.report_seq() >= before.report_seq());
        assert_eq!(
            e.report(now).subtree_counts(&m.id),
            before.report(now).subtree_counts(&m.id)
        );
    }
    let [(first, first_outputs), (second, second_outputs)] = resumed;
    assert_eq!(
        first_outputs, second_outputs,
        "what each asked the driver to do"
    );
    assert_eq!(first.report(now), second.report(now));
}

#[test]
fn a_revoked_childs_subtree_leaves_the_roll_up_above() {
    let mut h = Harness::new(1, 2);
    let [root, a, leaf] = chain(&mut h);
    let m = update(3, &root_secret());
    h.publish_at_root(root, &m);
    h.run(h.now() + 10_000);
    assert_eq!(
        h.engine(root).report(h.now()).subtree_counts(&m.id).total(),
        3
    );
    h.with(a, |e, now| e.remove_child(&leaf, now));
    h.run(h.now() + 10_000);
    let report = h.engine(root).report(h.now());
    assert_eq!(report.subtree_counts(&m.id).total(), 2);
    assert!(report.nodes.iter().all(|d| d.node != leaf));
}

#[test]
fn reports_during_a_download_are_few() {
    // 300 chunks at 10 ms: a 3 s download below a branch.
    let mut h = Harness::new(1, 10);
    let [root, a, leaf] = chain(&mut h);
    let m = update(300, &root_secret());
    h.publish_at_root(root, &m);
    h.run(h.now() + 60_000);
    assert!(holds_all(&h, leaf, &m));
    for n in [a, leaf] {
        let sent = h.engine(n).stats().reports_sent;
        // At most one per 500 ms of the download, and a few around it.
        assert!(sent <= 12, "{sent} reports for a 3 s download");
    }
    // Quiet now: nothing more is sent while nothing changes.
    let before = h.engine(leaf).stats().reports_sent;
    h.with(leaf, |e, now| e.handle_timeout(now + 10_000));
    h.run(h.now() + 60_000);
    assert_eq!(h.engine(leaf).stats().reports_sent, before);
}

#[test]
fn damaged_kept_rule_sets_and_reports_are_refused_at_restart_and_change_nothing() {
    let mut h = Harness::new(1, 2);
    let [root, a, b] = chain(&mut h);
    let m = update(3, &root_secret());
    h.publish_at_root(root, &m);
    h.run(h.now() + 10_000);
    let rules = h.engine(a).rules().clone();
    let rollup = h.engine(a).rollup().clone();
    let kept_rules = rules.get(&root).expect("held").bytes.clone();
    let kept_report = rollup.get(&b).expect("held").bytes.clone();
    let mut flipped_rules = kept_rules.clone();
    let mut flipped_report = kept_report.clone();
    let (r, p) = (flipped_rules.len() - 1, flipped_report.len() - 1);
    flipped_rules[r] ^= 1;
    flipped_report[p] ^= 1;
    let rules_garbage = [
        Vec::new(),
        b"\xa1garbage".to_vec(),
        flipped_rules,
        kept_report.clone(),
    ];
    let reports_garbage = [
        Vec::new(),
        b"\xa1garbage".to_vec(),
        flipped_report,
        kept_rules,
    ];
    let saved = Saved {
        rules: rules_garbage.map(|g| (root, g.into())).to_vec(),
        reports: reports_garbage.map(|g| (b, g.into())).to_vec(),
        ..Saved::default()
    };
    let now = h.now();
    let dropped = h.engine_mut(a).resume(&saved, now);
    assert_eq!(dropped.len(), 8, "{dropped:?}");
    assert_eq!(h.engine(a).rules(), &rules);
    assert_eq!(h.engine(a).rollup(), &rollup);
}
