//! Unit tests of reports, their checks and roll-ups.

use super::*;
use crate::rules::{SignedRules, TAG_RULES};
use proptest::prelude::*;
use serde_json::{Value, json};

pub(super) const T0: u64 = 1_767_225_600;

pub(super) fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

pub(super) fn pk(n: u8) -> PublicKey {
    key(n).public()
}

pub(super) fn update(n: u8) -> Hash {
    Hash::of(&[n])
}

fn state(u: u8, st: State) -> UpdateState {
    match st {
        State::Failed => UpdateState::failed(update(u), "disk full", 10, 100),
        State::Downloaded | State::Installed => UpdateState::new(update(u), st, 100, 100),
        State::Downloading => UpdateState {
            from_parent: 30,
            from_siblings: 20,
            ..UpdateState::new(update(u), st, 50, 100)
        },
        State::Available => UpdateState::new(update(u), st, 0, 100),
    }
}

fn me(n: u8, parent: Option<u8>, depth: u32, updates: Vec<UpdateState>) -> NodeDetail {
    NodeDetail {
        lost: None,
        node: pk(n),
        depth,
        issued: T0,
        parent: parent.map(pk),
        updates,
    }
}

fn no_groups() -> BTreeMap<String, BTreeSet<PublicKey>> {
    BTreeMap::new()
}

/// Node `n`'s signed leaf report under `parent` at depth 1.
fn leaf(n: u8, parent: u8, seq: u64, updates: Vec<UpdateState>) -> SignedReport {
    let report = Report::leaf(me(n, Some(parent), 1, updates), &[]);
    SignedReport::sign(&key(n), seq, report).expect("signs")
}

/// Signs `body` as node `n` without any of [`SignedReport::sign`]'s checks.
fn forge<T: Serialize>(n: u8, seq: u64, body: &T) -> Vec<u8> {
    wire::encode(&Envelope::sign(
        &key(n),
        TAG_REPORT,
        seq,
        None,
        wire::encode(body),
    ))
}

fn envelope_of(bytes: &[u8]) -> Envelope {
    wire::decode_canonical(bytes, MAX_REPORT_ENVELOPE_BYTES, "e").expect("decodes")
}

#[test]
fn reports_sign_and_open() {
    let signed = leaf(
        3,
        2,
        7,
        vec![
            state(2, State::Failed),
            state(1, State::Downloading), // unsorted: the builder sorts
        ],
    );
    let opened = SignedReport::open(&signed.bytes, &pk(3)).expect("opens");
    assert_eq!(opened, signed);
    assert_eq!(opened.seq, 7);
    assert_eq!(opened.node(), pk(3));
    let r = &opened.report;
    let mut ids = vec![update(1), update(2)];
    ids.sort();
    assert_eq!(r.own.iter().map(|s| s.update).collect::<Vec<_>>(), ids);
    assert_eq!(r.subtree_counts(&update(2)), Counts::one(State::Failed));
    assert_eq!(r.subtree_counts(&update(1)).downloading, 1);
    assert_eq!(r.groups.keys().collect::<Vec<_>>(), vec![ALL]);
    assert!(r.groups[ALL].is_empty());
    assert!(r.nodes.is_empty() && !r.truncated && r.refusals.is_empty());
    assert_eq!(r.detail(), {
        let mut d = me(3, Some(2), 1, r.own.clone());
        d.updates.sort_by_key(|s| s.update);
        d
    });
    // Reports never expire: the envelope's expires is null.
    assert_eq!(envelope_of(&signed.bytes).expires, None);
    // States are text on the wire.
    assert!(
        signed
            .bytes
            .windows(b"downloading".len())
            .any(|w| w == b"downloading")
    );
}

#[test]
fn states_read_and_print_as_text() {
    for st in State::ALL {
        assert_eq!(st.to_string().parse::<State>(), Ok(st));
        assert_eq!(serde_json::to_value(st).expect("json"), json!(st.as_str()));
    }
    assert!("Installed".parse::<State>().is_err());
    assert!("".parse::<State>().is_err());
}

#[test]
fn garbage_gives_a_clear_error() {
    for bytes in [&b""[..], b"\xff\xff\xff", b"hello, arbor", &[0xa0], &[0x80]] {
        let err = SignedReport::open(bytes, &pk(3)).unwrap_err();
        assert!(matches!(err, ReportError::Wire(_)), "{bytes:?}: {err}");
        assert!(err.to_string().contains("report envelope"), "{err}");
    }
    let huge = vec![0u8; MAX_REPORT_ENVELOPE_BYTES + 1];
    assert!(matches!(
        SignedReport::open(&huge, &pk(3)),
        Err(ReportError::Wire(WireError::TooLarge { .. }))
    ));
    // Every truncation of a good report.
    let good = leaf(3, 2, 1, vec![state(1, State::Installed)]);
    for len in 0..good.bytes.len() {
        assert!(SignedReport::open(&good.bytes[..len], &pk(3)).is_err());
    }
    // Trailing bytes.
    let mut long = good.bytes.clone();
    long.push(0);
    assert!(matches!(
        SignedReport::open(&long, &pk(3)),
        Err(ReportError::Wire(WireError::NonCanonical { .. }))
    ));
    // A well-signed envelope around a body that is not a report.
    let env = Envelope::sign(&key(3), TAG_REPORT, 1, None, b"\x01\x02".to_vec());
    let err = SignedReport::open(&wire::encode(&env), &pk(3)).unwrap_err();
    assert!(
        matches!(
            err,
            ReportError::Wire(WireError::Malformed { what: "report", .. })
        ),
        "{err}"
    );
    // A rule set is not a report.
    let rules = SignedRules::sign(&key(3), 1, T0 + 1, Rules::new(pk(3), T0)).expect("signs");
    assert_eq!(
        SignedReport::open(&rules.bytes, &pk(3)),
        Err(ReportError::WrongTag {
            found: TAG_RULES.into()
        })
    );
}

#[test]
fn forged_reports_are_refused_with_distinct_errors() {
    let good = leaf(3, 2, 4, vec![state(1, State::Installed)]);
    // From another node than the connection's.
    assert_eq!(
        SignedReport::open(&good.bytes, &pk(4)),
        Err(ReportError::WrongSigner {
            signer: pk(3),
            expected: pk(4)
        })
    );
    // A bad signature: the signature or any signed field changed.
    let mut env = envelope_of(&good.bytes);
    env.sig[5] ^= 1;
    assert_eq!(
        SignedReport::open(&wire::encode(&env), &pk(3)),
        Err(ReportError::BadSignature)
    );
    let mut env = envelope_of(&good.bytes);
    env.seq += 1;
    assert_eq!(
        SignedReport::open(&wire::encode(&env), &pk(3)),
        Err(ReportError::BadSignature)
    );
    let mut env = envelope_of(&good.bytes);
    let last = env.body.len() - 1;
    env.body[last] ^= 1;
    assert_eq!(
        SignedReport::open(&wire::encode(&env), &pk(3)),
        Err(ReportError::BadSignature)
    );
    // Signed by the node, but with an expiry.
    let env = Envelope::sign(
        &key(3),
        TAG_REPORT,
        4,
        Some(T0),
        envelope_of(&good.bytes).body,
    );
    assert_eq!(
        SignedReport::open(&wire::encode(&env), &pk(3)),
        Err(ReportError::Expires { expires: T0 })
    );
    // Signed by the connection's node, but claiming to be another's.
    let theirs = Report::leaf(me(4, Some(2), 1, vec![]), &[]);
    assert_eq!(
        SignedReport::open(&forge(3, 1, &theirs), &pk(3)),
        Err(ReportError::NodeMismatch {
            claimed: pk(4),
            signer: pk(3)
        })
    );
    assert!(matches!(
        SignedReport::sign(&key(3), 1, theirs),
        Err(ReportError::NodeMismatch { .. })
    ));
}

/// Each broken report is refused by `sign` and, signed anyway, by `open`.
fn assert_invalid(report: Report, want: InvalidReport) {
    let n = report.node;
    let seed = (2..=40u8).find(|s| pk(*s) == n).expect("a test key");
    let signed = SignedReport::sign(&key(seed), 1, report.clone()).map(|_| ());
    assert_eq!(signed, Err(ReportError::Invalid(want)));
    let opened = SignedReport::open(&forge(seed, 1, &report), &n).map(|_| ());
    assert_eq!(opened, signed);
}

#[test]
fn invalid_reports_are_neither_signed_nor_opened() {
    let base = || Report::leaf(me(3, Some(2), 1, vec![state(1, State::Downloading)]), &[]);

    let mut r = base();
    r.own[0].state = State::Failed;
    r.subtree.insert(update(1), Counts::one(State::Failed));
    assert_invalid(r, InvalidReport::MissingReason { update: update(1) });

    let mut r = base();
    r.own[0] = state(1, State::Failed);
    r.own[0].reason = Some("line\nbreak".into());
    r.subtree.insert(update(1), Counts::one(State::Failed));
    assert_invalid(r.clone(), InvalidReport::Reason);
    r.own[0].reason = Some(String::new());
    assert_invalid(r.clone(), InvalidReport::Reason);
    r.own[0].reason = Some("x".repeat(MAX_REASON_LEN + 1));
    assert_invalid(r, InvalidReport::Reason);

    let mut r = base();
    r.own[0].bytes_done = 101;
    assert_invalid(
        r,
        InvalidReport::BytesDone {
            update: update(1),
            done: 101,
            total: 100,
        },
    );

    // Unsorted and duplicate own states.
    let two = vec![state(1, State::Installed), state(2, State::Installed)];
    let mut r = Report::leaf(me(3, Some(2), 1, two), &[]);
    r.own.reverse();
    assert_invalid(
        r.clone(),
        InvalidReport::Unsorted {
            what: "own updates",
        },
    );
    r.own[0] = r.own[1].clone();
    assert_invalid(
        r,
        InvalidReport::Unsorted {
            what: "own updates",
        },
    );

    // Counts that do not add up, zero entries, and a missing `all`.
    let mut r = base();
    r.subtree.insert(update(1), Counts::one(State::Installed));
    assert!(matches!(
        SignedReport::sign(&key(3), 1, r),
        Err(ReportError::Invalid(InvalidReport::Rollup { .. }))
    ));
    let mut r = base();
    r.subtree.clear();
    assert!(matches!(
        SignedReport::sign(&key(3), 1, r),
        Err(ReportError::Invalid(InvalidReport::Rollup { .. }))
    ));
    let mut r = base();
    r.subtree.insert(update(9), Counts::default());
    assert_invalid(r, InvalidReport::ZeroCounts { update: update(9) });
    let mut r = base();
    r.groups.insert(
        "lab".into(),
        BTreeMap::from([(update(1), Counts::one(State::Installed))]),
    );
    assert!(matches!(
        SignedReport::sign(&key(3), 1, r),
        Err(ReportError::Invalid(InvalidReport::Rollup { .. }))
    ));
    let mut r = base();
    r.groups.clear();
    assert_invalid(r, InvalidReport::NoAllGroup);
    let mut r = base();
    r.groups.insert("a b".into(), BTreeMap::new());
    assert!(matches!(
        SignedReport::sign(&key(3), 1, r),
        Err(ReportError::Invalid(InvalidReport::GroupName(_)))
    ));

    // A place in the tree that makes no sense.
    let mut r = base();
    r.parent = None;
    assert!(matches!(
        SignedReport::sign(&key(3), 1, r),
        Err(ReportError::Invalid(InvalidReport::Tree(_)))
    ));
    let mut r = base();
    r.depth = MAX_DEPTH + 1;
    assert!(matches!(
        SignedReport::sign(&key(3), 1, r),
        Err(ReportError::Invalid(InvalidReport::Tree(_)))
    ));
    let mut r = base();
    r.nodes.push(me(4, Some(3), 1, vec![]));
    assert!(matches!(
        SignedReport::sign(&key(3), 1, r),
        Err(ReportError::Invalid(InvalidReport::Tree(_)))
    ));
    // Detail out of (depth, node) order, or a node twice, or the reporter itself.
    let (a, b) = if pk(4) < pk(5) { (4, 5) } else { (5, 4) };
    for nodes in [
        vec![me(b, Some(3), 2, vec![]), me(a, Some(3), 2, vec![])],
        vec![me(a, Some(3), 3, vec![]), me(b, Some(3), 2, vec![])],
        vec![me(a, Some(3), 2, vec![]), me(a, Some(3), 2, vec![])],
        vec![me(a, Some(3), 2, vec![]), me(a, Some(3), 3, vec![])],
        vec![me(3, Some(3), 2, vec![])],
    ] {
        let mut r = base();
        r.nodes = nodes;
        let err = SignedReport::sign(&key(3), 1, r).unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::Invalid(InvalidReport::Unsorted { .. } | InvalidReport::Tree(_))
            ),
            "{err}"
        );
    }

    // Refusals out of order, repeated, or over the limit.
    let older = RuleRefusal::new(pk(3), None, "rules expired", T0);
    let newer = RuleRefusal::new(pk(3), None, "rules expired", T0 + 1);
    let mut r = base();
    r.refusals = vec![older.clone(), newer.clone()];
    assert_invalid(
        r,
        InvalidReport::Unsorted {
            what: "rule refusals",
        },
    );
    let mut r = base();
    r.refusals = vec![newer.clone(), newer.clone()];
    assert_invalid(
        r,
        InvalidReport::Unsorted {
            what: "rule refusals",
        },
    );
    let mut r = base();
    r.refusals = (0..=MAX_REFUSALS as u64)
        .rev()
        .map(|i| RuleRefusal::new(pk(3), None, "x", T0 + i))
        .collect();
    assert_invalid(
        r,
        InvalidReport::TooMany {
            what: "rule refusals",
            count: MAX_REFUSALS + 1,
            limit: MAX_REFUSALS,
        },
    );
    let mut r = base();
    r.own = (0..=MAX_UPDATES)
        .map(|i| UpdateState::new(Hash::of(&i.to_le_bytes()), State::Available, 0, 0))
        .collect();
    r.own.sort_by_key(|s| s.update);
    assert!(matches!(
        SignedReport::sign(&key(3), 1, r),
        Err(ReportError::Invalid(InvalidReport::TooMany { .. }))
    ));
}

#[test]
fn unsorted_or_duplicate_counts_are_not_canonical() {
    #[derive(Serialize)]
    struct Entry {
        counts: [u64; 5],
        update: Hash,
    }
    #[derive(Serialize)]
    struct G {
        name: &'static str,
        counts: Vec<Entry>,
    }
    /// The report body with `subtree` and `groups` as given.
    #[derive(Serialize)]
    struct Body {
        own: Vec<UpdateState>,
        node: PublicKey,
        depth: u32,
        nodes: Vec<NodeDetail>,
        groups: Vec<G>,
        issued: u64,
        parent: Option<PublicKey>,
        subtree: Vec<Entry>,
        refusals: Vec<RuleRefusal>,
        truncated: bool,
    }
    let (lo, hi) = if update(1) < update(2) {
        (update(1), update(2))
    } else {
        (update(2), update(1))
    };
    let e = |u| Entry {
        counts: [1, 0, 0, 0, 0],
        update: u,
    };
    let all = |counts| G { name: ALL, counts };
    let body = |subtree, groups| Body {
        own: vec![],
        node: pk(3),
        depth: 1,
        nodes: vec![],
        groups,
        issued: T0,
        parent: Some(pk(2)),
        subtree,
        refusals: vec![],
        truncated: false,
    };
    // As built by the code, the same shape opens.
    let fine = body(vec![e(lo), e(hi)], vec![all(vec![e(lo), e(hi)])]);
    assert!(SignedReport::open(&forge(3, 1, &fine), &pk(3)).is_ok());
    for bad in [
        body(vec![e(hi), e(lo)], vec![all(vec![e(lo), e(hi)])]),
        body(vec![e(lo), e(lo)], vec![all(vec![e(lo)])]),
        body(vec![e(lo), e(hi)], vec![all(vec![e(hi), e(lo)])]),
        body(vec![e(lo)], vec![all(vec![e(lo)]), all(vec![e(lo)])]),
        body(
            vec![e(lo)],
            vec![
                G {
                    name: "zz",
                    counts: vec![],
                },
                all(vec![e(lo)]),
            ],
        ),
    ] {
        assert_eq!(
            SignedReport::open(&forge(3, 1, &bad), &pk(3)),
            Err(ReportError::Wire(WireError::NonCanonical {
                what: "report"
            }))
        );
    }
}

#[test]
fn newest_report_wins_and_a_resent_one_counts_once() {
    let mut rollup = Rollup::new(vec![pk(2)]);
    let v1 = leaf(3, 2, 1, vec![state(1, State::Downloading)]);
    let v2 = leaf(3, 2, 2, vec![state(1, State::Installed)]);
    let other_v2 = leaf(3, 2, 2, vec![state(1, State::Failed)]);
    assert_eq!(
        rollup.receive(&pk(3), false, &v1.bytes, T0),
        Ok(Received::Applied)
    );
    assert_eq!(
        rollup.receive(&pk(3), false, &v2.bytes, T0),
        Ok(Received::Applied)
    );
    // The latest resent after a reconnect: nothing changes.
    assert_eq!(
        rollup.receive(&pk(3), false, &v2.bytes, T0),
        Ok(Received::Duplicate)
    );
    // An older one arriving late, and another one with the same seq: ignored.
    assert_eq!(
        rollup.receive(&pk(3), false, &v1.bytes, T0),
        Ok(Received::Stale { held: 2, got: 1 })
    );
    assert_eq!(
        rollup.receive(&pk(3), false, &other_v2.bytes, T0),
        Ok(Received::Stale { held: 2, got: 2 })
    );
    assert_eq!(rollup.seq(&pk(3)), Some(2));
    assert_eq!(rollup.get(&pk(3)), Some(&v2));
    // A refused report changes nothing either.
    assert!(rollup.receive(&pk(4), false, &v2.bytes, T0).is_err());
    assert_eq!(rollup.children().collect::<Vec<_>>(), vec![&pk(3)]);

    let report = rollup.report(Own::new(me(2, None, 0, vec![]), &no_groups(), &[]));
    assert_eq!(
        report.subtree_counts(&update(1)),
        Counts::one(State::Installed)
    );
    assert_eq!(report.subtree_counts(&update(1)).total(), 1);
    SignedReport::sign(&key(2), 1, report).expect("the root's report is valid");

    assert!(rollup.remove(&pk(3)));
    assert!(!rollup.remove(&pk(3)));
    let report = rollup.report(Own::new(me(2, None, 0, vec![]), &no_groups(), &[]));
    assert!(report.subtree.is_empty());
}

#[test]
fn groups_count_each_member_subtree_and_all_counts_each_child_once() {
    // Root node 2 with children 3, 4, 5; 3 is in `lab` and `pilot`, 4 in `lab`.
    let mut rollup = Rollup::new(vec![pk(2)]);
    for (n, st) in [
        (3, State::Failed),
        (4, State::Installed),
        (5, State::Installed),
    ] {
        let r = leaf(n, 2, 1, vec![state(1, st)]);
        assert_eq!(
            rollup.receive(&pk(n), false, &r.bytes, T0),
            Ok(Received::Applied)
        );
    }
    let groups = BTreeMap::from([
        ("lab".to_string(), BTreeSet::from([pk(3), pk(4)])),
        ("pilot".to_string(), BTreeSet::from([pk(3), pk(9)])),
        ("empty".to_string(), BTreeSet::new()),
    ]);
    let report = rollup.report(Own::new(
        me(2, None, 0, vec![state(1, State::Downloaded)]),
        &groups,
        &[],
    ));
    let c = |g: &str| report.group_counts(g, &update(1));
    assert_eq!((c(ALL).failed, c(ALL).installed, c(ALL).total()), (1, 2, 3));
    assert_eq!((c("lab").failed, c("lab").installed), (1, 1));
    assert_eq!((c("pilot").failed, c("pilot").total()), (1, 1));
    assert!(report.groups["empty"].is_empty());
    assert_eq!(report.subtree_counts(&update(1)).total(), 4);
    assert_eq!(report.subtree_counts(&update(1)).downloaded, 1);
    assert_eq!(
        report.group_counts("lab", &update(1)).outcomes(),
        Outcomes {
            failed: 1,
            total: 2
        }
    );
    assert_eq!(
        Outcomes::from(report.subtree_counts(&update(1))),
        Outcomes {
            failed: 1,
            total: 4
        }
    );
    SignedReport::sign(&key(2), 1, report).expect("valid");
}

/// A child's report with `count` made-up descendants (depth 2 below the root node 2).
fn bushy_child(n: u8, count: usize, truncated: bool) -> SignedReport {
    let mut report = Report::leaf(me(n, Some(2), 1, vec![]), &[]);
    let mut nodes: Vec<NodeDetail> = (0..count)
        .map(|i| {
            let mut k = [n; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            NodeDetail {
                lost: None,
                node: PublicKey(k),
                depth: 2,
                issued: T0,
                parent: Some(pk(n)),
                updates: vec![],
            }
        })
        .collect();
    nodes.sort_by_key(|d| d.node);
    report.nodes = nodes;
    report.truncated = truncated;
    SignedReport::sign(&key(n), 1, report).expect("signs")
}

#[test]
fn detail_is_capped_and_marked_truncated() {
    let mut rollup = Rollup::new(vec![pk(2)]);
    for n in [3, 4] {
        let r = bushy_child(n, 1500, false);
        assert_eq!(
            rollup.receive(&pk(n), false, &r.bytes, T0),
            Ok(Received::Applied)
        );
    }
    let report = rollup.report(Own::new(me(2, None, 0, vec![]), &no_groups(), &[]));
    assert_eq!(report.nodes.len(), MAX_DETAIL);
    assert!(report.truncated);
    // The children themselves come first: the shallowest are kept.
    assert_eq!(report.nodes[0].depth, 1);
    assert_eq!(report.nodes[1].depth, 1);
    assert!(report.nodes[2..].iter().all(|d| d.depth == 2));
    SignedReport::sign(&key(2), 1, report).expect("a capped report is valid");

    // Room for all: not truncated, unless a child was.
    let mut rollup = Rollup::new(vec![pk(2)]);
    let r = bushy_child(3, 10, false);
    rollup.receive(&pk(3), false, &r.bytes, T0).expect("opens");
    let report = rollup.report(Own::new(me(2, None, 0, vec![]), &no_groups(), &[]));
    assert_eq!(report.nodes.len(), 11);
    assert!(!report.truncated);
    let r = bushy_child(3, 10, true);
    let r = SignedReport::sign(&key(3), 2, r.report).expect("signs");
    assert_eq!(
        rollup.receive(&pk(3), false, &r.bytes, T0),
        Ok(Received::Applied)
    );
    assert!(
        rollup
            .report(Own::new(me(2, None, 0, vec![]), &no_groups(), &[]))
            .truncated
    );
}

#[test]
fn a_child_cannot_make_its_parents_report_invalid() {
    // A child that claims the wrong depth and parent, lists its parent and a sibling
    // among its descendants, and counts absurdly much.
    let mut lying = Report::leaf(me(3, Some(9), 7, vec![state(1, State::Failed)]), &[]);
    let (a, b) = (pk(2), pk(4));
    let mut nodes = vec![
        me(2, Some(3), 8, vec![]),
        me(4, Some(3), 8, vec![]),
        me(5, Some(3), 9, vec![]),
    ];
    nodes.sort_by_key(|d| (d.depth, d.node));
    assert!(nodes.iter().any(|d| d.node == a) && nodes.iter().any(|d| d.node == b));
    lying.nodes = nodes;
    let huge = Counts::from([u64::MAX; 5]);
    lying
        .groups
        .insert(ALL.into(), BTreeMap::from([(update(1), huge)]));
    lying.subtree.insert(update(1), huge);
    let lying = SignedReport::sign(&key(3), 1, lying).expect("valid on its face");

    let mut rollup = Rollup::new(vec![pk(2)]);
    rollup
        .receive(&pk(3), false, &lying.bytes, T0)
        .expect("opens");
    let honest = leaf(4, 2, 1, vec![state(1, State::Installed)]);
    rollup
        .receive(&pk(4), false, &honest.bytes, T0)
        .expect("opens");
    let report = rollup.report(Own::new(
        me(2, Some(1), 1, vec![state(1, State::Installed)]),
        &no_groups(),
        &[],
    ));
    // Re-based below this node, each node once, never this node itself.
    let listed: Vec<(u32, PublicKey)> = report.nodes.iter().map(|d| (d.depth, d.node)).collect();
    assert!(listed.contains(&(2, pk(3))) && listed.contains(&(2, pk(4))));
    assert!(listed.contains(&(4, pk(5))));
    assert!(!listed.iter().any(|(_, n)| *n == pk(2)));
    assert_eq!(report.subtree_counts(&update(1)).failed, u64::MAX);
    SignedReport::sign(&key(2), 1, report).expect("still valid");
}

#[test]
fn too_many_updates_keep_the_most_counted() {
    // Two children: one knows updates 0..200 and the other 100..300, each once; both
    // know update 255 (more counted) and the parent itself knows 299.
    let mk = |n: u8, range: std::ops::Range<u16>| {
        let mut own: Vec<UpdateState> = range
            .map(|i| UpdateState::new(Hash::of(&i.to_le_bytes()), State::Available, 0, 1))
            .collect();
        own.push(UpdateState::new(
            Hash::of(b"popular"),
            State::Installed,
            1,
            1,
        ));
        SignedReport::sign(&key(n), 1, Report::leaf(me(n, Some(2), 1, own), &[])).expect("signs")
    };
    let mut rollup = Rollup::new(vec![pk(2)]);
    rollup
        .receive(&pk(3), false, &mk(3, 0..200).bytes, T0)
        .expect("opens");
    rollup
        .receive(&pk(4), false, &mk(4, 100..300).bytes, T0)
        .expect("opens");
    let report = rollup.report(Own::new(
        me(2, None, 0, vec![state(1, State::Installed)]),
        &no_groups(),
        &[],
    ));
    assert!(report.truncated);
    assert_eq!(report.subtree.len(), MAX_UPDATES);
    assert_eq!(report.subtree_counts(&Hash::of(b"popular")).installed, 2);
    // Counted twice (100..200) before counted once.
    for i in 100..200u16 {
        assert_eq!(
            report.subtree_counts(&Hash::of(&i.to_le_bytes())).total(),
            2
        );
    }
    assert!(report.groups[ALL].len() <= MAX_UPDATES);
    SignedReport::sign(&key(2), 1, report).expect("valid");
}

#[test]
fn refusals_are_newest_first_each_once_and_capped() {
    let own: Vec<RuleRefusal> = (0..20u64)
        .map(|i| RuleRefusal::new(pk(2), Some(pk(1)), "rules expired", T0 + 2 * i))
        .collect();
    let theirs: Vec<RuleRefusal> = (0..20u64)
        .map(|i| RuleRefusal::new(pk(3), None, "bad\nsignature", T0 + 2 * i + 1))
        .collect();
    let mut theirs_sorted = theirs.clone();
    theirs_sorted.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let child = Report::leaf(me(3, Some(2), 1, vec![]), &theirs);
    assert_eq!(child.refusals, theirs_sorted);
    assert!(!child.refusals[0].reason.contains('\n'));
    let child = SignedReport::sign(&key(3), 1, child).expect("signs");
    let mut rollup = Rollup::new(vec![pk(2)]);
    rollup
        .receive(&pk(3), false, &child.bytes, T0)
        .expect("opens");
    // Its own refusals twice over: each counted once.
    let doubled: Vec<RuleRefusal> = own.iter().chain(&own).cloned().collect();
    let report = rollup.report(Own::new(me(2, None, 0, vec![]), &no_groups(), &doubled));
    assert_eq!(report.refusals.len(), MAX_REFUSALS);
    assert_eq!(report.refusals[0].at, T0 + 39);
    assert_eq!(report.refusals[0].node, pk(3));
    assert_eq!(report.refusals[1].at, T0 + 38);
    assert_eq!(report.refusals[1].issuer, Some(pk(1)));
    assert!(report.refusals.windows(2).all(|w| w[0].at > w[1].at));
    SignedReport::sign(&key(2), 1, report).expect("valid");

    // Reasons are made fit for the wire.
    let long = "é".repeat(MAX_REASON_LEN);
    let r = RuleRefusal::new(pk(2), None, &long, T0);
    assert!(r.reason.len() <= MAX_REASON_LEN && r.reason.chars().all(|c| c == 'é'));
    assert_eq!(
        RuleRefusal::new(pk(2), None, "", T0).reason,
        "no reason given"
    );
    let err = crate::rules::RulesError::BadSignature;
    assert_eq!(
        RuleRefusal::new(pk(2), Some(pk(1)), &err.to_string(), T0).reason,
        "the rules' signature does not verify"
    );
}

#[test]
fn the_json_view_names_nodes_by_id_and_states_by_name() {
    let mut rollup = Rollup::new(vec![pk(2)]);
    let child = leaf(3, 2, 5, vec![state(1, State::Failed)]);
    rollup
        .receive(&pk(3), false, &child.bytes, T0)
        .expect("opens");
    let groups = BTreeMap::from([("lab".to_string(), BTreeSet::from([pk(3)]))]);
    let refusal = RuleRefusal::new(pk(2), Some(pk(1)), "rules expired", T0);
    let report = rollup.report(Own::new(
        me(2, None, 0, vec![state(1, State::Installed)]),
        &groups,
        &[refusal],
    ));
    let signed = SignedReport::sign(&key(2), 9, report).expect("signs");
    let v = serde_json::to_value(ReportView::from(&signed)).expect("json");
    assert_eq!(v["seq"], json!(9));
    assert_eq!(v["node_id"], json!(pk(2).node_id()));
    assert_eq!(v["parent"], Value::Null);
    assert_eq!(v["own"][0]["state"], json!("installed"));
    assert_eq!(v["own"][0]["update"], json!(update(1).to_hex()));
    assert_eq!(v["subtree"][0]["failed"], json!(1));
    assert_eq!(v["subtree"][0]["installed"], json!(1));
    assert_eq!(v["subtree"][0]["total"], json!(2));
    assert_eq!(v["groups"][0]["name"], json!(ALL));
    assert_eq!(v["groups"][1]["name"], json!("lab"));
    assert_eq!(v["groups"][1]["counts"][0]["failed"], json!(1));
    assert_eq!(v["nodes"][0]["node_id"], json!(pk(3).node_id()));
    assert_eq!(v["nodes"][0]["parent"], json!(pk(2).node_id()));
    assert_eq!(v["nodes"][0]["updates"][0]["reason"], json!("disk full"));
    assert_eq!(v["refusals"][0]["issuer"], json!(pk(1).node_id()));
    assert_eq!(v["truncated"], json!(false));
}

/// A node's own states: (update, index into [`State::ALL`]).
type Spec = Vec<(u8, usize)>;

/// A random 3-level tree: the root node, branches, leaves; every node's own states.
#[derive(Clone, Debug)]
struct Tree {
    root: Spec,
    /// Per branch: its own states, and its leaves' own states.
    branches: Vec<(Spec, Vec<Spec>)>,
    /// Per branch: in group `even`, in group `odd`.
    grouped: Vec<(bool, bool)>,
}

fn arb_states() -> impl Strategy<Value = Spec> {
    proptest::collection::vec((0u8..5, 0usize..5), 0..5)
}

fn arb_tree() -> impl Strategy<Value = Tree> {
    (
        arb_states(),
        proptest::collection::vec(
            (
                arb_states(),
                proptest::collection::vec(arb_states(), 0..5),
                any::<(bool, bool)>(),
            ),
            0..5,
        ),
    )
        .prop_map(|(root, bs)| Tree {
            root,
            grouped: bs.iter().map(|b| b.2).collect(),
            branches: bs.into_iter().map(|(s, l, _)| (s, l)).collect(),
        })
}

fn own_states(spec: &[(u8, usize)]) -> Vec<UpdateState> {
    let mut by_update = BTreeMap::new();
    for (u, s) in spec {
        by_update.insert(*u, state(*u, State::ALL[*s]));
    }
    by_update.into_values().collect()
}

fn count_into(counts: &mut BTreeMap<Hash, Counts>, states: &[UpdateState]) {
    for s in states {
        counts.entry(s.update).or_default().count(s.state);
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = SignedReport::open(&bytes, &pk(3));
        let _ = Rollup::new(vec![pk(2)]).receive(&pk(3), false, &bytes, T0);
    }

    #[test]
    fn mutated_reports_never_open(pos in any::<proptest::sample::Index>(), bit in 0u8..8) {
        let good = leaf(3, 2, 1, vec![state(1, State::Failed), state(2, State::Downloading)]);
        let mut bytes = good.bytes.clone();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(SignedReport::open(&bytes, &pk(3)).is_err());
    }

    /// The root's counts are exactly every node's own states, counted once, whatever
    /// the tree; each group counts its members' subtrees; and resending changes nothing.
    #[test]
    fn roll_ups_add_up_to_every_nodes_own_state(tree in arb_tree()) {
        // Keys: the root node 2, branches 10.., leaves 100...
        let mut root = Rollup::new(vec![pk(2)]);
        let mut want: BTreeMap<Hash, Counts> = BTreeMap::new();
        let mut want_group: BTreeMap<&str, BTreeMap<Hash, Counts>> = BTreeMap::new();
        let mut nodes = 0usize;
        let mut leaf_key = 100u8;
        for (i, (own, leaves)) in tree.branches.iter().enumerate() {
            let b = 10 + i as u8;
            let mut branch = Rollup::new(vec![pk(2)]);
            let mut below: BTreeMap<Hash, Counts> = BTreeMap::new();
            for leaf_spec in leaves {
                let states = own_states(leaf_spec);
                count_into(&mut below, &states);
                let r = Report::leaf(me(leaf_key, Some(b), 2, states), &[]);
                let r = SignedReport::sign(&key(leaf_key), 3, r).expect("leaf signs");
                prop_assert_eq!(branch.receive(&pk(leaf_key), false, &r.bytes, T0), Ok(Received::Applied));
                prop_assert_eq!(branch.receive(&pk(leaf_key), false, &r.bytes, T0), Ok(Received::Duplicate));
                leaf_key += 1;
                nodes += 1;
            }
            let states = own_states(own);
            count_into(&mut below, &states);
            let r = branch.report(Own::new(me(b, Some(2), 1, states), &no_groups(), &[]));
            prop_assert_eq!(&r.subtree, &below);
            let r = SignedReport::sign(&key(b), 1, r).expect("branch signs");
            prop_assert_eq!(root.receive(&pk(b), false, &r.bytes, T0), Ok(Received::Applied));
            prop_assert_eq!(root.receive(&pk(b), false, &r.bytes, T0), Ok(Received::Duplicate));
            nodes += 1;
            let (even, odd) = tree.grouped[i];
            for (g, member) in [("even", even), ("odd", odd), (ALL, true)] {
                if member {
                    sum_into(want_group.entry(g).or_default(), &below);
                }
            }
            sum_into(&mut want, &below);
        }
        let groups: BTreeMap<String, BTreeSet<PublicKey>> = ["even", "odd"]
            .iter()
            .enumerate()
            .map(|(j, g)| {
                let members = tree
                    .grouped
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| if j == 0 { m.0 } else { m.1 })
                    .map(|(i, _)| pk(10 + i as u8))
                    .collect();
                (g.to_string(), members)
            })
            .collect();
        let own = own_states(&tree.root);
        count_into(&mut want, &own);
        let report = root.report(Own::new(me(2, None, 0, own), &groups, &[]));
        prop_assert_eq!(&report.subtree, &want);
        for g in ["even", "odd", ALL] {
            prop_assert_eq!(&report.groups[g], &want_group.get(g).cloned().unwrap_or_default());
        }
        prop_assert_eq!(report.nodes.len(), nodes);
        prop_assert!(!report.truncated);
        // Every node's own detail reaches the root, leaves at depth 2.
        let branches: BTreeSet<PublicKey> = (10..15).map(pk).collect();
        for d in &report.nodes {
            prop_assert_eq!(d.depth, if branches.contains(&d.node) { 1 } else { 2 });
        }
        let signed = SignedReport::sign(&key(2), 1, report).expect("root signs");
        prop_assert!(SignedReport::open(&signed.bytes, &pk(2)).is_ok());
    }
}

#[test]
fn detail_is_cut_to_the_size_limit() {
    // 30 children, each failing 256 updates with the longest reasons: about 300 KiB of
    // detail each, more than a report may carry.
    let reason = "x".repeat(MAX_REASON_LEN);
    let own: Vec<UpdateState> = {
        let mut v: Vec<UpdateState> = (0..MAX_UPDATES as u16)
            .map(|i| UpdateState::failed(Hash::of(&i.to_le_bytes()), &reason, 0, 1))
            .collect();
        v.sort_by_key(|s| s.update);
        v
    };
    let mut rollup = Rollup::new(vec![pk(2)]);
    for n in 10..40u8 {
        let r = Report::leaf(me(n, Some(2), 1, own.clone()), &[]);
        let r = SignedReport::sign(&key(n), 1, r).expect("a child's report fits");
        assert_eq!(
            rollup.receive(&pk(n), false, &r.bytes, T0),
            Ok(Received::Applied)
        );
    }
    let report = rollup.report(Own::new(me(2, None, 0, vec![]), &no_groups(), &[]));
    assert!(report.truncated);
    assert!(report.nodes.len() < 30 && report.nodes.len() > 20);
    assert_eq!(report.subtree_counts(&own[0].update).failed, 30);
    let signed = SignedReport::sign(&key(2), 1, report).expect("fits the limit");
    assert!(signed.bytes.len() <= MAX_REPORT_ENVELOPE_BYTES);
}
