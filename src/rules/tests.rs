//! Unit tests of rule sets, the rule book and availability.

use super::*;
use crate::trust::member;
use proptest::prelude::*;

const T0: u64 = 1_767_225_600;
const DAY: u64 = 86_400;
/// When a rule set that expires at `T0 + DAY` lapses: the clock tolerance later.
const LAPSE: u64 = T0 + DAY + crate::trust::CLOCK_TOLERANCE;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn pk(n: u8) -> PublicKey {
    key(n).public()
}

/// Root node 2 → branch 3 → branch 4 → leaf 5. (The root key, 1, signs no rules.)
fn path_to(depth: usize) -> Vec<PublicKey> {
    (2..=5u8).take(depth + 1).map(pk).collect()
}

fn update(n: u8) -> Hash {
    Hash::of(&[n])
}

/// `issuer`'s rules approving `updates` for `all` at 100%.
fn approve_all(issuer: u8, version: u64, updates: &[u8], subtree: bool) -> SignedRules {
    let mut rules = Rules::new(pk(issuer), T0);
    for u in updates {
        let approval = Approval {
            subtree,
            ..Approval::wave(FULL_WAVE)
        };
        rules.approve(update(*u), ALL, approval).expect("valid");
    }
    SignedRules::sign(&key(issuer), version, T0 + DAY, rules).expect("signs")
}

fn book_of(sets: &[SignedRules]) -> RuleBook {
    let mut book = RuleBook::new();
    for s in sets {
        book.apply(s.clone()).expect("applies");
    }
    book
}

fn listed(a: &Availability) -> Vec<Hash> {
    a.updates().map(|(u, _)| *u).collect()
}

#[test]
fn signed_rules_open_for_a_descendant() {
    let mut rules = Rules::new(pk(2), T0);
    rules.create_group("lab").expect("name");
    rules.assign("lab", pk(3)).expect("group");
    rules
        .approve(update(1), "lab", Approval::wave(2500))
        .expect("valid");
    let signed = SignedRules::sign(&key(2), 7, T0 + DAY, rules.clone()).expect("signs");
    // The parent's rules open at the child, and (as an ancestor's) at the grandchild.
    for depth in [1, 2, 3] {
        let opened = SignedRules::open(&signed.bytes, &path_to(depth), T0 + 1).expect("opens");
        assert_eq!(opened, signed);
    }
    assert_eq!(signed.version, 7);
    assert_eq!(signed.rules, rules);
    assert_eq!(rules.groups_of(&pk(3)), vec![ALL, "lab"]);
    assert_eq!(rules.groups_of(&pk(4)), vec![ALL]);
}

#[test]
fn forged_rules_are_refused_with_distinct_errors() {
    let child = path_to(2); // node 4, under 3, under root node 2
    let good = approve_all(3, 2, &[1], false);

    // A bad signature: any bit of the signature or the signed fields flipped.
    let mut envelope: Envelope =
        wire::decode_canonical(&good.bytes, MAX_RULES_ENVELOPE_BYTES, "e").expect("decodes");
    envelope.sig[0] ^= 1;
    assert_eq!(
        SignedRules::open(&wire::encode(&envelope), &child, T0),
        Err(RulesError::BadSignature)
    );
    let mut envelope: Envelope =
        wire::decode_canonical(&good.bytes, MAX_RULES_ENVELOPE_BYTES, "e").expect("decodes");
    envelope.seq += 1;
    assert_eq!(
        SignedRules::open(&wire::encode(&envelope), &child, T0),
        Err(RulesError::BadSignature)
    );

    // A wrong signer: a sibling, the receiver itself, a stranger, a descendant.
    for signer in [7u8, 4, 9, 5] {
        let forged = approve_all(signer, 2, &[1], false);
        assert_eq!(
            SignedRules::open(&forged.bytes, &child, T0),
            Err(RulesError::WrongSigner { signer: pk(signer) }),
            "signer {signer}"
        );
    }
    // Signed by an ancestor, but claiming another issuer inside.
    let lying = Rules::new(pk(2), T0);
    let env = Envelope::sign(&key(3), TAG_RULES, 3, Some(T0 + DAY), wire::encode(&lying));
    assert_eq!(
        SignedRules::open(&wire::encode(&env), &child, T0),
        Err(RulesError::IssuerMismatch {
            claimed: pk(2),
            signer: pk(3)
        })
    );

    // A replayed older version, and another rule set under the version held.
    let mut book = RuleBook::new();
    assert_eq!(book.receive(&good.bytes, &child, T0), Ok(true));
    let older = approve_all(3, 1, &[1, 2], false);
    assert_eq!(
        book.receive(&older.bytes, &child, T0),
        Err(RulesError::Rollback {
            issuer: pk(3),
            held: 2,
            got: 1
        })
    );
    let same_version = approve_all(3, 2, &[2], false);
    assert!(matches!(
        book.receive(&same_version.bytes, &child, T0),
        Err(RulesError::Rollback {
            held: 2,
            got: 2,
            ..
        })
    ));
    // The very same bytes again are a duplicate, not an error, and change nothing.
    assert_eq!(book.receive(&good.bytes, &child, T0), Ok(false));

    // Expired, and never expiring.
    assert_eq!(
        SignedRules::open(&good.bytes, &child, LAPSE),
        Err(RulesError::Expired {
            expires: T0 + DAY,
            now: LAPSE
        })
    );
    let forever = Envelope::sign(
        &key(3),
        TAG_RULES,
        3,
        None,
        wire::encode(&Rules::new(pk(3), T0)),
    );
    assert_eq!(
        SignedRules::open(&wire::encode(&forever), &child, T0),
        Err(RulesError::NoExpiry)
    );

    // Another kind of signed object, even from the right signer.
    let cert = member::issue(&key(3), pk(4), false, vec![], None, T0, T0 + DAY);
    assert!(matches!(
        SignedRules::open(&wire::encode(&cert), &child, T0),
        Err(RulesError::WrongTag { .. })
    ));
    // Every error names its problem.
    let err = book.receive(&older.bytes, &child, T0).unwrap_err();
    assert!(err.to_string().contains("rollback refused"), "{err}");
}

#[test]
fn garbage_gives_a_clear_error() {
    let child = path_to(1);
    for bytes in [&b""[..], b"\xff\xff\xff", b"hello, arbor", &[0xa0], &[0x80]] {
        let err = SignedRules::open(bytes, &child, T0).unwrap_err();
        assert!(matches!(err, RulesError::Wire(_)), "{bytes:?}: {err}");
        assert!(err.to_string().contains("rules envelope"), "{err}");
    }
    let huge = vec![0u8; MAX_RULES_ENVELOPE_BYTES + 1];
    assert!(matches!(
        SignedRules::open(&huge, &child, T0),
        Err(RulesError::Wire(WireError::TooLarge { .. }))
    ));
    // A well-signed envelope around a body that is not rules.
    let env = Envelope::sign(&key(2), TAG_RULES, 1, Some(T0 + DAY), b"\x01\x02".to_vec());
    let err = SignedRules::open(&wire::encode(&env), &child, T0).unwrap_err();
    assert!(
        matches!(
            err,
            RulesError::Wire(WireError::Malformed { what: "rules", .. })
        ),
        "{err}"
    );
}

#[test]
fn unsorted_or_duplicate_lists_are_not_canonical() {
    #[derive(Serialize)]
    struct G<'a> {
        name: &'a str,
        members: Vec<PublicKey>,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        groups: Vec<G<'a>>,
        issued: u64,
        issuer: PublicKey,
        approvals: Vec<u8>,
    }
    let (a, b) = (pk(3), pk(4));
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let bodies = [
        vec![
            G {
                name: "b",
                members: vec![],
            },
            G {
                name: "a",
                members: vec![],
            },
        ],
        vec![
            G {
                name: "a",
                members: vec![],
            },
            G {
                name: "a",
                members: vec![],
            },
        ],
        vec![G {
            name: "a",
            members: vec![hi, lo],
        }],
        vec![G {
            name: "a",
            members: vec![lo, lo],
        }],
    ];
    for groups in bodies {
        let body = Body {
            groups,
            issued: T0,
            issuer: pk(2),
            approvals: vec![],
        };
        let env = Envelope::sign(&key(2), TAG_RULES, 1, Some(T0 + DAY), wire::encode(&body));
        assert_eq!(
            SignedRules::open(&wire::encode(&env), &path_to(1), T0),
            Err(RulesError::Wire(WireError::NonCanonical { what: "rules" }))
        );
    }
}

#[test]
fn invalid_rules_are_neither_signed_nor_opened() {
    let mut rules = Rules::new(pk(2), T0);
    assert_eq!(rules.create_group(ALL), Err(InvalidRules::BuiltInGroup));
    assert!(matches!(
        rules.create_group("a b"),
        Err(InvalidRules::GroupName(_))
    ));
    assert_eq!(rules.delete_group(ALL), Err(InvalidRules::BuiltInGroup));
    assert_eq!(rules.assign(ALL, pk(3)), Err(InvalidRules::BuiltInGroup));
    assert!(matches!(
        rules.approve(update(1), "nope", Approval::wave(1)),
        Err(InvalidRules::NoSuchGroup { .. })
    ));
    assert_eq!(
        rules.approve(update(1), ALL, Approval::wave(FULL_WAVE + 1)),
        Err(InvalidRules::Wave(FULL_WAVE + 1))
    );
    for halt in [
        Halt {
            failures: None,
            fraction: None,
        },
        Halt {
            failures: Some(0),
            fraction: None,
        },
        Halt {
            failures: None,
            fraction: Some(FULL_WAVE + 1),
        },
    ] {
        let a = Approval {
            halt: Some(halt),
            ..Approval::wave(1)
        };
        assert_eq!(
            rules.approve(update(1), ALL, a),
            Err(InvalidRules::Threshold)
        );
    }
    rules
        .approve(update(1), ALL, Approval::wave(1))
        .expect("valid");
    assert_eq!(
        rules.halt(&update(1), ALL, T0, "line\nbreak"),
        Err(InvalidRules::Reason)
    );
    assert_eq!(
        rules.halt(&update(1), ALL, T0, ""),
        Err(InvalidRules::Reason)
    );
    assert_eq!(rules.halt(&update(2), ALL, T0, "why"), Ok(false));
    assert_eq!(
        SignedRules::sign(&key(2), 1, T0, rules.clone()),
        Err(RulesError::Invalid(InvalidRules::ExpiresBeforeIssued {
            issued: T0,
            expires: T0
        }))
    );
    assert!(matches!(
        SignedRules::sign(&key(3), 1, T0 + 1, rules.clone()),
        Err(RulesError::IssuerMismatch { .. })
    ));
    // Signed anyway (bypassing the checks): every receiver refuses it.
    let mut bad = rules.clone();
    bad.groups.insert(ALL.into(), BTreeSet::new());
    let env = Envelope::sign(&key(2), TAG_RULES, 1, Some(T0 + 1), wire::encode(&bad));
    assert_eq!(
        SignedRules::open(&wire::encode(&env), &path_to(1), T0),
        Err(RulesError::Invalid(InvalidRules::BuiltInGroup))
    );
}

#[test]
fn groups_assign_approve_decline_and_delete() {
    let mut rules = Rules::new(pk(2), T0);
    assert_eq!(rules.create_group("lab"), Ok(true));
    assert_eq!(rules.create_group("lab"), Ok(false));
    assert_eq!(rules.assign("lab", pk(3)), Ok(true));
    assert_eq!(rules.assign("lab", pk(3)), Ok(false));
    rules
        .approve(update(1), "lab", Approval::wave(FULL_WAVE))
        .expect("valid");
    rules
        .approve(update(2), "lab", Approval::wave(FULL_WAVE))
        .expect("valid");
    let signed = |rules: &Rules, v| SignedRules::sign(&key(2), v, T0 + DAY, rules.clone());
    let mut book = book_of(&[signed(&rules, 1).expect("signs")]);
    let child = path_to(1);
    assert_eq!(
        listed(&book.availability(&child, T0)),
        [update(1), update(2)]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    // A decline is a new version without the approval.
    assert!(rules.decline(&update(2), "lab"));
    assert!(!rules.decline(&update(2), "lab"));
    assert_eq!(book.apply(signed(&rules, 2).expect("signs")), Ok(true));
    assert_eq!(listed(&book.availability(&child, T0)), vec![update(1)]);
    // Out of the group, out of the approval.
    assert_eq!(rules.unassign("lab", &pk(3)), Ok(true));
    assert_eq!(book.apply(signed(&rules, 3).expect("signs")), Ok(true));
    assert!(listed(&book.availability(&child, T0)).is_empty());
    // Deleting a group declines its approvals.
    assert_eq!(rules.delete_group("lab"), Ok(true));
    assert!(rules.approvals.is_empty());
    assert_eq!(rules.delete_group("lab"), Ok(false));
}

#[test]
fn newest_wins_after_being_offline_across_several_versions() {
    let child = path_to(1);
    let versions: Vec<SignedRules> = (1..=5u8)
        .map(|v| approve_all(2, u64::from(v), &[v], false))
        .collect();
    let mut book = RuleBook::new();
    assert_eq!(book.receive(&versions[0].bytes, &child, T0), Ok(true));
    // Offline through versions 2 to 4; on reconnecting the parent sends only version 5.
    assert_eq!(book.receive(&versions[4].bytes, &child, T0), Ok(true));
    assert_eq!(book.version(&pk(2)), Some(5));
    assert_eq!(listed(&book.availability(&child, T0)), vec![update(5)]);
    // Late copies of the versions missed are refused, and none is applied.
    for old in &versions[..4] {
        assert!(matches!(
            book.receive(&old.bytes, &child, T0),
            Err(RulesError::Rollback { held: 5, .. })
        ));
    }
    assert_eq!(book.receive(&versions[4].bytes, &child, T0), Ok(false));
    assert_eq!(listed(&book.availability(&child, T0)), vec![update(5)]);
    assert_eq!(book.next_version(&pk(2)), 6);
    assert_eq!(book.next_version(&pk(3)), 1);
}

#[test]
fn restored_expired_rules_still_refuse_rollbacks_but_approve_nothing() {
    let child = path_to(1);
    let v3 = approve_all(2, 3, &[1], false);
    let mut book = RuleBook::new();
    // Stored earlier, reloaded after the expiry: kept for its version only.
    assert_eq!(book.restore(&v3.bytes, &child, T0), Ok(true));
    let late = T0 + 2 * DAY;
    assert!(listed(&book.availability(&child, late)).is_empty());
    assert!(book.forward(&child, late).is_empty());
    let v2 = approve_all(2, 2, &[1], false);
    assert!(matches!(
        book.restore(&v2.bytes, &child, T0),
        Err(RulesError::Rollback { .. })
    ));
    // A node's own rules restore too (it is on its own path); a stranger's do not.
    let own = approve_all(3, 1, &[1], false);
    assert_eq!(book.restore(&own.bytes, &child, T0), Ok(true));
    assert!(matches!(
        book.restore(&approve_all(9, 1, &[1], false).bytes, &child, T0),
        Err(RulesError::WrongSigner { .. })
    ));
    book.retain_path(&path_to(0));
    assert!(book.get(&pk(3)).is_none());
    assert!(book.get(&pk(2)).is_some());
}

#[test]
fn a_child_cannot_widen_what_its_parent_approved() {
    // The root node approves update 1 for branch 3; branch 3 approves 1 and 2 for 4.
    let root_rules = approve_all(2, 1, &[1], false);
    let branch_rules = approve_all(3, 1, &[1, 2], false);
    let (branch, leaf) = (path_to(1), path_to(2));

    // The branch's own view: it has update 1 only, and refuses to approve 2 onward.
    let branch_book = book_of(&[root_rules.clone(), branch_rules.clone()]);
    let own = branch_book.availability(&branch, T0);
    assert_eq!(listed(&own), vec![update(1)]);
    assert_eq!(
        branch_rules.rules.check_within(&own),
        Err(RulesError::Widens {
            update: update(2),
            group: ALL.into()
        })
    );
    // What it computes for its child is clipped to its own.
    assert_eq!(
        listed(&branch_book.child_availability(&branch, &pk(4), T0)),
        vec![update(1)]
    );

    // The leaf checks it itself, from what the branch forwards.
    let proof: Vec<&[u8]> = branch_book
        .forward(&branch, T0)
        .iter()
        .map(|r| r.bytes.as_slice())
        .collect();
    assert_eq!(proof.len(), 2);
    let avail = availability_from_proof(&proof, &leaf, T0).expect("proof opens");
    assert_eq!(listed(&avail), vec![update(1)]);
    let leaf_book = book_of(&[root_rules.clone(), branch_rules.clone()]);
    assert!(leaf_book.check_offer(&leaf, &update(1), T0).is_ok());
    assert_eq!(
        leaf_book.check_offer(&leaf, &update(2), T0),
        Err(RulesError::NotAvailable { update: update(2) })
    );
    // Without the root node's rules the branch cannot prove anything: fail closed.
    let partial = availability_from_proof(&[&branch_rules.bytes], &leaf, T0).expect("opens");
    assert!(listed(&partial).is_empty());
    // Nor can the branch stand in for the root node: it cannot sign the root node's rules.
    let mut fake = Rules::new(pk(2), T0);
    fake.approve(update(2), ALL, Approval::wave(FULL_WAVE))
        .expect("valid");
    let env = Envelope::sign(&key(3), TAG_RULES, 9, Some(T0 + DAY), wire::encode(&fake));
    assert!(matches!(
        availability_from_proof(&[&wire::encode(&env), &branch_rules.bytes], &leaf, T0),
        Err(RulesError::IssuerMismatch { .. })
    ));
    // The root node itself has everything.
    assert!(branch_book.availability(&path_to(0), T0).is_everything());
    assert!(RuleBook::new().availability(&[], T0) == Availability::none());
}

#[test]
fn subtree_approvals_reach_the_whole_subtree_and_others_stop_at_the_child() {
    // The root node approves 1 (subtree) and 2 (autonomous) for branch 3.
    let mut rules = Rules::new(pk(2), T0);
    let subtree = Approval {
        subtree: true,
        deadline: Some(T0 + 10),
        ..Approval::wave(FULL_WAVE)
    };
    rules.approve(update(1), ALL, subtree).expect("valid");
    rules
        .approve(update(2), ALL, Approval::wave(FULL_WAVE))
        .expect("valid");
    let root_rules = SignedRules::sign(&key(2), 1, T0 + DAY, rules).expect("signs");
    let book = book_of(&[root_rules]);
    assert_eq!(
        listed(&book.availability(&path_to(1), T0)),
        vec![update(1), update(2)]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    // Branches 3 and 4 set no rules: the leaf still gets update 1, with its deadline.
    for depth in [2, 3] {
        let a = book.availability(&path_to(depth), T0);
        assert_eq!(listed(&a), vec![update(1)], "depth {depth}");
        assert_eq!(
            a.grant(&update(1)),
            Some(&Grant {
                deadline: Some(T0 + 10),
                subtree: true
            })
        );
    }
    // Halting it at the root node stops it for the whole subtree.
    let mut halted = book.get(&pk(2)).expect("held").rules.clone();
    assert_eq!(halted.halt(&update(1), ALL, T0, "3 nodes failed"), Ok(true));
    let mut book = book;
    book.apply(SignedRules::sign(&key(2), 2, T0 + DAY, halted).expect("signs"))
        .expect("newer");
    assert!(listed(&book.availability(&path_to(3), T0)).is_empty());
    assert_eq!(listed(&book.availability(&path_to(1), T0)), vec![update(2)]);
}

#[test]
fn waves_deadlines_halts_and_groups_decide_availability() {
    let parent = pk(2);
    let children: Vec<PublicKey> = (100..=255u8).map(pk).collect();
    let (u, other) = (update(1), update(2));
    let mut rules = Rules::new(parent, T0);
    rules.create_group("lab").expect("name");
    for c in &children[..50] {
        rules.assign("lab", *c).expect("group");
    }
    let wave = Approval {
        deadline: Some(T0 + 100),
        ..Approval::wave(3000)
    };
    rules.approve(u, ALL, wave).expect("valid");
    rules
        .approve(other, "lab", Approval::wave(FULL_WAVE))
        .expect("valid");
    let book = book_of(&[SignedRules::sign(&key(2), 1, T0 + DAY, rules.clone()).expect("signs")]);
    let has =
        |c: &PublicKey, up: &Hash, now| book.availability(&[parent, *c], now).is_available(up);
    // Before the deadline: exactly the wave's members; from it on, everyone.
    let early: Vec<bool> = children.iter().map(|c| has(c, &u, T0)).collect();
    for (c, e) in children.iter().zip(&early) {
        assert_eq!(*e, in_wave(&u, c, 3000));
    }
    let n = early.iter().filter(|e| **e).count();
    assert!(n > 20 && n < 80, "{n} of 156 in a 30% wave");
    assert!(children.iter().all(|c| has(c, &u, T0 + 100)));
    assert_eq!(book.next_change(&[parent], T0), Some(T0 + 100));
    assert_eq!(book.next_change(&[parent], T0 + 100), Some(LAPSE));
    assert_eq!(book.next_change(&[parent], LAPSE), None);
    // Only the group's members get what is approved for the group.
    for (i, c) in children.iter().enumerate() {
        assert_eq!(has(c, &other, T0), i < 50);
    }
    // After the rule set expires, nothing.
    assert!(!has(&children[0], &other, LAPSE));
    // A halted approval makes nothing available, deadline or not.
    rules.halt(&u, ALL, T0, "too many failures").expect("valid");
    let book = book_of(&[SignedRules::sign(&key(2), 2, T0 + DAY, rules).expect("signs")]);
    assert!(
        children
            .iter()
            .all(|c| !book.availability(&[parent, *c], T0 + 100).is_available(&u))
    );
}

#[test]
fn a_subtree_wave_takes_each_member_with_its_whole_subtree() {
    let mut rules = Rules::new(pk(2), T0);
    let a = Approval {
        subtree: true,
        ..Approval::wave(5000)
    };
    rules.approve(update(1), ALL, a).expect("valid");
    let book = book_of(&[SignedRules::sign(&key(2), 1, T0 + DAY, rules).expect("signs")]);
    for branch in 100..=140u8 {
        let inside = in_wave(&update(1), &pk(branch), 5000);
        for leaf in [200u8, 201, 202] {
            let p = [pk(2), pk(branch), pk(leaf)];
            assert_eq!(book.availability(&p, T0).is_available(&update(1)), inside);
        }
    }
}

#[test]
fn halting_a_rollout_from_reported_failures() {
    let a = Approval {
        halt: Some(Halt {
            failures: Some(3),
            fraction: None,
        }),
        ..Approval::wave(FULL_WAVE)
    };
    let reason = a.should_halt(Outcomes {
        failed: 3,
        total: 40,
    });
    assert_eq!(
        reason,
        Some(HaltReason::Failures {
            failed: 3,
            threshold: 3
        })
    );
    let mut rules = Rules::new(pk(2), T0);
    rules.approve(update(1), ALL, a).expect("valid");
    let text = reason.map(|r| r.to_string()).unwrap_or_default();
    assert_eq!(rules.halt(&update(1), ALL, T0 + 5, &text), Ok(true));
    let halted = &rules.approvals[&ApprovalKey {
        update: update(1),
        group: ALL.into(),
    }];
    assert_eq!(
        halted.halted.as_ref().map(|h| h.reason.as_str()),
        Some("3 nodes failed, at or over the threshold of 3")
    );
    // Halted already, or without a threshold: nothing more to decide.
    let many = Outcomes {
        failed: 99,
        total: 99,
    };
    assert_eq!(halted.should_halt(many), None);
    assert_eq!(Approval::wave(1).should_halt(many), None);
}

#[test]
fn rules_open_against_a_verified_certificate_chain() {
    // root key 1 → root node 2 → branch 3 → leaf 4.
    let chain = vec![
        member::issue(&key(1), pk(2), false, vec![], None, T0, T0 + DAY),
        member::issue(&key(2), pk(3), false, vec![], None, T0, T0 + DAY),
        member::issue(&key(3), pk(4), true, vec![], None, T0, T0 + DAY),
    ];
    let members = member::verify_chain(&chain, &pk(1), T0).expect("verifies");
    let p = path(&members);
    assert_eq!(p, path_to(2));
    let mut book = RuleBook::new();
    for r in [
        approve_all(2, 1, &[1], false),
        approve_all(3, 1, &[1], false),
    ] {
        assert_eq!(book.receive(&r.bytes, &p, T0), Ok(true));
    }
    assert_eq!(book.check_offer(&p, &update(1), T0).map(|_| ()), Ok(()));
    // Rules are signed by nodes, never by the root key itself.
    assert!(matches!(
        SignedRules::open(&approve_all(1, 1, &[1], false).bytes, &p, T0),
        Err(RulesError::WrongSigner { .. })
    ));
}

#[test]
fn an_over_limit_rule_set_is_not_signed() {
    let mut rules = Rules::new(pk(2), T0);
    rules.create_group("big").expect("name");
    let members = rules.groups.get_mut("big").expect("created");
    for i in 0..40_000u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        members.insert(PublicKey(k));
    }
    assert!(matches!(
        SignedRules::sign(&key(2), 1, T0 + 1, rules),
        Err(RulesError::Wire(WireError::TooLarge { .. }))
    ));
}

/// Random rules for the levels of a path of 4 nodes: (level, update, member or `all`,
/// wave, subtree).
fn arb_level_rules() -> impl Strategy<Value = Vec<(usize, u8, Option<usize>, u16, bool)>> {
    proptest::collection::vec(
        (
            0usize..4,
            0u8..6,
            proptest::option::of(0usize..3),
            prop_oneof![Just(0u16), Just(FULL_WAVE), 0u16..=FULL_WAVE],
            any::<bool>(),
        ),
        0..24,
    )
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = SignedRules::open(&bytes, &path_to(2), T0);
    }

    #[test]
    fn mutated_rules_never_open(pos in any::<proptest::sample::Index>(), bit in 0u8..8) {
        let good = approve_all(2, 1, &[1, 2], true);
        let mut bytes = good.bytes.clone();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(SignedRules::open(&bytes, &path_to(1), T0).is_err());
    }

    /// Whatever every level approves, a node never has more than its parent.
    #[test]
    fn availability_only_narrows_down_the_path(entries in arb_level_rules()) {
        let p = path_to(3);
        let mut per_level: Vec<Rules> = (0..4).map(|i| Rules::new(p[i], T0)).collect();
        for (level, u, member, wave, subtree) in entries {
            let rules = &mut per_level[level];
            let group = match member {
                // A group holding one node of the path (maybe not this level's child).
                Some(m) => {
                    let name = format!("g{m}");
                    rules.create_group(&name).expect("name");
                    rules.assign(&name, p[m + 1]).expect("group");
                    name
                }
                None => ALL.to_string(),
            };
            let a = Approval { subtree, ..Approval::wave(wave) };
            rules.approve(update(u), &group, a).expect("valid");
        }
        let mut book = RuleBook::new();
        for (i, rules) in per_level.into_iter().enumerate() {
            let seed = 2 + i as u8;
            book.apply(SignedRules::sign(&key(seed), 1, T0 + DAY, rules).expect("signs"))
                .expect("first version");
        }
        for depth in 1..4 {
            let above = book.availability(&p[..depth], T0);
            let here = book.availability(&p[..=depth], T0);
            for (u, _) in here.updates() {
                prop_assert!(above.is_available(u), "depth {depth} widened {u}");
            }
        }
        // The last node's view of its own child is clipped the same way.
        let leaf = book.availability(&p, T0);
        for (u, _) in book.child_availability(&p, &pk(77), T0).updates() {
            prop_assert!(leaf.is_available(u));
        }
    }
}

#[test]
fn shared_rule_sets_are_opened_once_and_judged_as_ever() {
    crate::trust::memo::enable();
    let good = approve_all(2, 1, &[7], false);
    let child = path_to(1);
    let first = SignedRules::open_shared(&good.bytes, &child, T0).expect("opens");
    let second = SignedRules::open_shared(&good.bytes, &child, T0).expect("opens");
    assert!(Arc::ptr_eq(&first, &second), "opened once, shared");
    assert_eq!(
        *first,
        SignedRules::open(&good.bytes, &child, T0).expect("opens")
    );
    // What depends on the receiver is judged again on every open, as by `open`.
    for (path, now) in [(path_to(0), T0), (vec![pk(9), pk(8)], T0), (child, LAPSE)] {
        assert_eq!(
            SignedRules::open_shared(&good.bytes, &path, now).map(|r| (*r).clone()),
            SignedRules::open(&good.bytes, &path, now),
            "path {path:?} at {now}"
        );
        assert!(SignedRules::open(&good.bytes, &path, now).is_err());
    }
    // Bytes that fail are never remembered as good.
    let mut forged = good.bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    for _ in 0..2 {
        assert!(SignedRules::open_shared(&forged, &path_to(1), T0).is_err());
    }
    // A shared set is applied like any other.
    let mut book = RuleBook::new();
    assert_eq!(book.apply_shared(first), Ok(true));
    assert_eq!(book.apply_shared(second), Ok(false));
}

#[test]
fn a_version_far_ahead_of_its_clock_is_refused_so_a_stolen_key_cannot_pin_it() {
    let child = path_to(1);
    let forge = |version: u64, issued: u64| {
        let rules = Rules::new(pk(2), issued);
        SignedRules::sign(&key(2), version, issued + DAY, rules).expect("signs")
    };
    // Version 4,000,000,000 on rules that say they were issued now.
    assert_eq!(
        SignedRules::open(&forge(4_000_000_000, T0).bytes, &child, T0),
        Err(RulesError::VersionAhead {
            version: 4_000_000_000,
            issued: T0
        })
    );
    // ... or that say they were issued then too: ahead of the receiver's clock.
    let late = forge(4_000_000_000, 4_000_000_000);
    assert_eq!(
        SignedRules::open(&late.bytes, &child, T0),
        Err(RulesError::IssuedAhead {
            issued: 4_000_000_000,
            now: T0
        })
    );
    // Kept from before this check, it is refused on restore as well, so the real
    // issuer's next version is taken.
    let mut book = RuleBook::new();
    assert!(book.restore(&late.bytes, &child, T0).is_err());
    assert_eq!(book.receive(&forge(T0 + 5, T0).bytes, &child, T0), Ok(true));
    // A version a few changes ahead of the clock, as quick edits make, is fine; so is
    // a set issued by a clock a little ahead.
    assert!(SignedRules::open(&forge(T0 + 100, T0).bytes, &child, T0).is_ok());
    assert!(SignedRules::open(&forge(T0 + 3600, T0 + 3600).bytes, &child, T0).is_ok());
}
