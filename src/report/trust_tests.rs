//! Unit tests of what reports prove (PROTOCOL.md §15.7): a client cannot report
//! descendants, halts count only failures their nodes signed and whose certificates
//! chain through the reporting child, proofs are capped and checked once, and the
//! detail a child sends stays in its subtree, with lost children marked.

use super::proof::{
    Checked, FAILURE_TTL, MAX_PROOF_CERTS, MAX_PROOF_FAILURES, Proof, ProofError, Statement,
    assemble, check_shape, sign_failure,
};
use super::tests::{T0, key, pk, update};
use super::*;
use crate::rules::{Approval, FULL_WAVE, Halt};
use crate::trust::member;

fn keys(nodes: &[u8]) -> Vec<PublicKey> {
    nodes.iter().map(|n| pk(*n)).collect()
}

/// The certificate `issuer` signs for `node`, good from before T0 until T0 + 1000.
fn cert(issuer: u8, node: u8, client: bool) -> Envelope {
    member::issue(
        &key(issuer),
        pk(node),
        client,
        vec![],
        None,
        T0 - 100,
        T0 + 1000,
    )
}

/// The proof entry of `node`, certified by `issuer`, failing update 1 at `path`.
fn failing(issuer: u8, node: u8, client: bool, path: &[u8]) -> Proof {
    Proof {
        cert: cert(issuer, node, client),
        below: vec![],
        failed: vec![sign_failure(&key(node), &keys(path), update(1), T0)],
    }
}

fn failed(u: u8) -> UpdateState {
    UpdateState::failed(update(u), "hook exited 1", 1, 1)
}

fn installed(u: u8) -> UpdateState {
    UpdateState::new(update(u), State::Installed, 1, 1)
}

/// A node at `path` (root node first, itself last; the root node is 2) with the
/// roll-up of its children.
struct Node {
    path: Vec<u8>,
    client: bool,
    rollup: Rollup,
}

fn node(path: &[u8], client: bool) -> Node {
    Node {
        path: path.to_vec(),
        client,
        rollup: Rollup::new(keys(path)),
    }
}

impl Node {
    fn me(&self) -> u8 {
        self.path[self.path.len() - 1]
    }

    fn parent(&self) -> u8 {
        self.path[self.path.len() - 2]
    }

    /// Its report, its own failures signed and proven with its certificate.
    fn report(&self, seq: u64, mut own: Vec<UpdateState>) -> SignedReport {
        own.sort_by_key(|s| s.update);
        let n = self.me();
        let c = cert(self.parent(), n, self.client);
        let failures: Vec<Envelope> = own
            .iter()
            .filter(|s| s.state == State::Failed)
            .map(|s| sign_failure(&key(n), &keys(&self.path), s.update, T0))
            .collect();
        let me = NodeDetail {
            lost: None,
            node: pk(n),
            depth: self.path.len() as u32 - 1,
            issued: T0,
            parent: Some(pk(self.parent())),
            updates: own,
        };
        let r = self.rollup.report(Own {
            cert: Some(&c),
            failures: &failures,
            ..Own::new(me, &BTreeMap::new(), &[])
        });
        SignedReport::sign(&key(n), seq, r).expect("signs")
    }

    fn take(&mut self, child: &Node, r: &SignedReport) -> Result<Received, ReportError> {
        self.rollup
            .receive(&pk(child.me()), child.client, &r.bytes, T0)
    }

    fn failed_in_all(&self, u: u8) -> Outcomes {
        self.rollup
            .outcomes(&BTreeMap::new(), &update(u), ALL, true, T0)
    }
}

/// The root node 2's own detail, at T0, with no updates.
fn root_node() -> NodeDetail {
    NodeDetail {
        lost: None,
        node: pk(2),
        depth: 0,
        issued: T0,
        parent: None,
        updates: vec![],
    }
}

/// Rules of the root node 2 with a subtree approval of update 1 for everyone, halting
/// at `halt`.
fn rules_halting_at(halt: Halt) -> Rules {
    let mut rules = Rules::new(pk(2), T0);
    let approval = Approval {
        halt: Some(halt),
        subtree: true,
        ..Approval::wave(FULL_WAVE)
    };
    rules.approve(update(1), ALL, approval).expect("valid");
    rules
}

fn at_one_failure() -> Halt {
    Halt {
        failures: Some(1),
        fraction: None,
    }
}

/// The report of issue 25: a client-certified leaf reports 50 invented descendants that
/// failed, counts and detail adding up.
fn invented_subtree(n: u8, parent: u8) -> SignedReport {
    let mut r = Report::leaf(
        NodeDetail {
            lost: None,
            node: pk(n),
            depth: 1,
            issued: T0,
            parent: Some(pk(parent)),
            updates: vec![failed(1)],
        },
        &[],
    );
    let mut nodes: Vec<NodeDetail> = (0..50u8)
        .map(|i| NodeDetail {
            lost: None,
            node: PublicKey([i; 32]),
            depth: 2,
            issued: T0,
            parent: Some(pk(n)),
            updates: vec![failed(1)],
        })
        .collect();
    nodes.sort_by_key(|d| d.node);
    r.nodes = nodes;
    let fifty = Counts {
        failed: 50,
        ..Counts::default()
    };
    r.groups
        .insert(ALL.into(), BTreeMap::from([(update(1), fifty)]));
    r.subtree.insert(
        update(1),
        Counts {
            failed: 51,
            ..Counts::default()
        },
    );
    SignedReport::sign(&key(n), 1, r).expect("valid on its face")
}

#[test]
fn a_client_that_invents_failed_descendants_is_refused_and_halts_nothing() {
    let mut root = node(&[2], false);
    let leaf = node(&[2, 5], true);
    let forged = invented_subtree(5, 2);
    assert_eq!(
        root.take(&leaf, &forged),
        Err(ReportError::Client("detail entries"))
    );
    assert!(root.rollup.get(&pk(5)).is_none());
    assert!(
        root.rollup
            .due_halts(&rules_halting_at(at_one_failure()), T0)
            .is_empty()
    );

    // Counts of children alone are refused just the same.
    let mut counts_only = forged.report.clone();
    counts_only.nodes.clear();
    let counts_only = SignedReport::sign(&key(5), 2, counts_only).expect("valid on its face");
    assert_eq!(
        root.take(&leaf, &counts_only),
        Err(ReportError::Client("counts of children"))
    );
    // And so is a proof of anyone else's failure.
    let mut theirs = leaf.report(3, vec![failed(1)]);
    let own_proof = theirs
        .report
        .proof
        .clone()
        .expect("a proof of its own failure");
    let mut proof = own_proof.clone();
    proof.below.push(own_proof);
    theirs.report.proof = Some(proof);
    let theirs = SignedReport::sign(&key(5), 3, theirs.report).expect("valid on its face");
    assert_eq!(
        root.take(&leaf, &theirs),
        Err(ReportError::Client("failures of other nodes"))
    );

    // Its own failure, proven, weighs one node.
    let honest = leaf.report(4, vec![failed(1)]);
    assert_eq!(root.take(&leaf, &honest), Ok(Received::Applied));
    assert_eq!(
        root.failed_in_all(1),
        Outcomes {
            failed: 1,
            total: 1
        }
    );
}

#[test]
fn counts_without_proof_are_claims_that_halt_nothing() {
    // The same invented subtree from a node that is not a client: taken as its word,
    // shown, but no failure in it is proven.
    let mut root = node(&[2], false);
    let branch = node(&[2, 5], false);
    assert_eq!(
        root.take(&branch, &invented_subtree(5, 2)),
        Ok(Received::Applied)
    );
    let report = root
        .rollup
        .report(Own::new(root_node(), &BTreeMap::new(), &[]));
    assert_eq!(report.subtree_counts(&update(1)).failed, 51);
    assert_eq!(
        root.failed_in_all(1),
        Outcomes {
            failed: 0,
            total: 51
        }
    );
    assert!(
        root.rollup
            .due_halts(&rules_halting_at(at_one_failure()), T0)
            .is_empty()
    );
}

#[test]
fn a_failure_two_levels_down_is_proven_at_the_root_and_halts() {
    let mut root = node(&[2], false);
    let mut branch = node(&[2, 3], false);
    let leaf = node(&[2, 3, 5], true);
    let other = node(&[2, 3, 6], true);
    assert_eq!(
        branch.take(&leaf, &leaf.report(1, vec![failed(1)])),
        Ok(Received::Applied)
    );
    assert_eq!(
        branch.take(&other, &other.report(1, vec![installed(1)])),
        Ok(Received::Applied)
    );
    let b = branch.report(1, vec![installed(1)]);
    let proof = b
        .report
        .proof
        .as_ref()
        .expect("the branch forwards the proof");
    assert_eq!(
        (proof.failures(), proof.failed.len(), proof.below.len()),
        (1, 0, 1)
    );
    let view = ReportView::from(&b);
    assert_eq!(view.proven_failures, 1);
    assert_eq!(root.take(&branch, &b), Ok(Received::Applied));
    assert_eq!(
        root.failed_in_all(1),
        Outcomes {
            failed: 1,
            total: 3
        }
    );
    assert_eq!(root.rollup.proven(T0), BTreeSet::from([(pk(5), update(1))]));
    let due = root
        .rollup
        .due_halts(&rules_halting_at(at_one_failure()), T0);
    assert_eq!(
        due.iter().map(|(_, why)| *why).collect::<Vec<_>>(),
        vec![HaltReason::Failures {
            failed: 1,
            threshold: 1
        }]
    );
    // Without `subtree`, only the children's own failures count: the branch's none.
    assert_eq!(
        root.rollup
            .outcomes(&BTreeMap::new(), &update(1), ALL, false, T0),
        Outcomes {
            failed: 0,
            total: 1
        }
    );
    // The proof is good only while its statements and certificates are.
    assert_eq!(root.rollup.proven(T0 + 1000), BTreeSet::new());
    assert!(
        root.rollup
            .due_halts(&rules_halting_at(at_one_failure()), T0 + 1000)
            .is_empty()
    );
}

#[test]
fn a_node_proven_through_two_children_counts_once() {
    // Node 9 moved from branch 3 to branch 4, and 3 still holds its old report: both
    // prove its failure, each at its own place. It failed once.
    let mut root = node(&[2], false);
    let mut b3 = node(&[2, 3], false);
    let mut b4 = node(&[2, 4], false);
    let (old, new) = (node(&[2, 3, 9], true), node(&[2, 4, 9], true));
    b3.take(&old, &old.report(1, vec![failed(1)]))
        .expect("applied");
    b4.take(&new, &new.report(2, vec![failed(1)]))
        .expect("applied");
    root.take(&b3, &b3.report(1, vec![])).expect("applied");
    root.take(&b4, &b4.report(1, vec![])).expect("applied");
    assert_eq!(
        root.failed_in_all(1),
        Outcomes {
            failed: 1,
            total: 2
        }
    );
}

#[test]
fn fractions_count_proven_failures_against_the_claimed_total() {
    let mut root = node(&[2], false);
    let mut branch = node(&[2, 3], false);
    for (i, n) in (10..20u8).enumerate() {
        let leaf = node(&[2, 3, n], true);
        let state = if i < 2 { failed(1) } else { installed(1) };
        branch
            .take(&leaf, &leaf.report(1, vec![state]))
            .expect("applied");
    }
    root.take(&branch, &branch.report(1, vec![]))
        .expect("applied");
    let outcomes = root.failed_in_all(1);
    assert_eq!(
        outcomes,
        Outcomes {
            failed: 2,
            total: 10
        }
    );
    let at = |fraction| Halt {
        failures: None,
        fraction: Some(fraction),
    };
    assert_eq!(
        root.rollup.due_halts(&rules_halting_at(at(2000)), T0).len(),
        1
    );
    assert!(
        root.rollup
            .due_halts(&rules_halting_at(at(2001)), T0)
            .is_empty()
    );
}

/// Branch 4's report with `proof` in place of its own.
fn with_proof(seq: u64, proof: Proof) -> SignedReport {
    let mut r = node(&[2, 4], false).report(seq, vec![]);
    r.report.proof = Some(proof);
    SignedReport::sign(&key(4), seq, r.report).expect("valid on its face")
}

#[test]
fn a_branch_cannot_prove_failures_outside_its_subtree() {
    // Root node 2 → branches 3 and 4; leaf 5 under 3 really failed. Branch 4 has seen
    // 5's statement and tries to count it under itself.
    let mut root = node(&[2], false);
    let b4 = node(&[2, 4], false);
    let statement = sign_failure(&key(5), &keys(&[2, 3, 5]), update(1), T0);
    let under_4 = |below: Proof| Proof {
        cert: cert(2, 4, false),
        below: vec![below],
        failed: vec![],
    };
    let leaf_5 = |issuer: u8| Proof {
        cert: cert(issuer, 5, true),
        below: vec![],
        failed: vec![statement.clone()],
    };
    // With 5's real certificate: it is not signed by 4.
    let refused = root.take(&b4, &with_proof(1, under_4(leaf_5(3))));
    assert!(
        matches!(
            refused,
            Err(ReportError::Invalid(InvalidReport::Proof(
                ProofError::Certificate(TrustError::UnknownSigner { .. })
            )))
        ),
        "{refused:?}"
    );
    // With a certificate 4 made up for 5: the statement was made elsewhere.
    assert_eq!(
        root.take(&b4, &with_proof(2, under_4(leaf_5(4)))),
        Err(ReportError::Invalid(InvalidReport::Proof(
            ProofError::WrongPath { node: pk(5) }
        )))
    );
    // Grafting 5's real certificate under one 4 made up for branch 3: still elsewhere.
    let graft = Proof {
        cert: cert(4, 3, false),
        below: vec![leaf_5(3)],
        failed: vec![],
    };
    assert_eq!(
        root.take(&b4, &with_proof(3, under_4(graft))),
        Err(ReportError::Invalid(InvalidReport::Proof(
            ProofError::WrongPath { node: pk(5) }
        )))
    );
    // 4 cannot put itself or its parent below itself either.
    let looped = failing(4, 2, false, &[2, 4, 2]);
    assert_eq!(
        root.take(&b4, &with_proof(4, under_4(looped))),
        Err(ReportError::Invalid(InvalidReport::Proof(
            ProofError::Loop(pk(2))
        )))
    );
    assert!(root.rollup.get(&pk(4)).is_none());
    assert_eq!(root.failed_in_all(1).failed, 0);

    // Nodes it certifies itself are its own subtree: they count, each once, under it.
    let invented = failing(4, 9, true, &[2, 4, 9]);
    assert_eq!(
        root.take(&b4, &with_proof(5, under_4(invented))),
        Ok(Received::Applied)
    );
    assert_eq!(root.rollup.proven(T0), BTreeSet::from([(pk(9), update(1))]));
}

#[test]
fn forged_or_malformed_proofs_are_refused() {
    let mut root = node(&[2], false);
    let leaf = node(&[2, 5], true);
    let good = leaf.report(1, vec![failed(1)]);
    let proof = good.report.proof.clone().expect("proof");
    let invalid = |e| Err(ReportError::Invalid(InvalidReport::Proof(e)));
    let send = |seq: u64, p: Proof| {
        let mut r = good.report.clone();
        r.proof = Some(p);
        SignedReport::sign(&key(5), seq, r).expect("valid on its face")
    };
    // A statement with a broken signature.
    let mut bad = proof.clone();
    bad.failed[0].sig[0] ^= 1;
    assert_eq!(
        root.take(&leaf, &send(1, bad)),
        invalid(ProofError::Statement {
            node: pk(5),
            source: TrustError::BadSignature
        })
    );
    // Another node's certificate at the top.
    let mut other = proof.clone();
    other.cert = cert(2, 6, true);
    assert_eq!(
        root.take(&leaf, &send(2, other)),
        invalid(ProofError::NotTheReporter {
            named: pk(6),
            reporter: pk(5)
        })
    );
    // A statement signed by someone else than the node whose entry holds it.
    let mut stranger = proof.clone();
    stranger.failed = vec![sign_failure(&key(6), &keys(&[2, 5]), update(1), T0)];
    assert!(matches!(
        root.take(&leaf, &send(3, stranger)),
        Err(ReportError::Invalid(InvalidReport::Proof(
            ProofError::Statement { .. }
        )))
    ));
    // Statements out of order.
    let mut twice = proof.clone();
    twice.failed.push(twice.failed[0].clone());
    assert_eq!(
        root.take(&leaf, &send(4, twice)),
        invalid(ProofError::Unsorted("failure statements"))
    );
    // Below a client.
    let mut branch_of_client = node(&[2, 7], false).report(1, vec![failed(1)]);
    let mut p = branch_of_client.report.proof.take().expect("proof");
    p.cert = cert(2, 7, true);
    p.below = vec![failing(7, 8, true, &[2, 7, 8])];
    branch_of_client.report.proof = Some(p);
    let branch_of_client =
        SignedReport::sign(&key(7), 1, branch_of_client.report).expect("valid on its face");
    assert_eq!(
        root.rollup
            .receive(&pk(7), false, &branch_of_client.bytes, T0),
        invalid(ProofError::BelowClient(pk(7)))
    );
    assert_eq!(root.failed_in_all(1).failed, 0);
    // The good one still opens.
    assert_eq!(root.take(&leaf, &send(9, proof)), Ok(Received::Applied));
}

#[test]
fn expired_statements_and_certificates_prove_nothing() {
    let mut root = node(&[2], false);
    let leaf = node(&[2, 5], true);
    let mut r = leaf.report(1, vec![failed(1)]);
    let p = r.report.proof.as_mut().expect("proof");
    p.failed = vec![sign_failure(
        &key(5),
        &keys(&[2, 5]),
        update(1),
        T0 - FAILURE_TTL,
    )];
    let r = SignedReport::sign(&key(5), 1, r.report).expect("signs");
    // Not a violation (clocks differ, reports wait): left out.
    assert_eq!(root.take(&leaf, &r), Ok(Received::Applied));
    assert_eq!(root.failed_in_all(1).failed, 0);
    let mut r = leaf.report(2, vec![failed(1)]);
    r.report.proof.as_mut().expect("proof").cert =
        member::issue(&key(2), pk(5), true, vec![], None, T0 - 100, T0);
    let r = SignedReport::sign(&key(5), 2, r.report).expect("signs");
    assert_eq!(root.take(&leaf, &r), Ok(Received::Applied));
    assert_eq!(root.failed_in_all(1).failed, 0);
    assert_eq!(
        root.take(&leaf, &leaf.report(3, vec![failed(1)])),
        Ok(Received::Applied)
    );
    assert_eq!(root.failed_in_all(1).failed, 1);
}

#[test]
fn a_repeated_proof_costs_no_signature_check() {
    let mut root = node(&[2], false);
    let leaf = node(&[2, 5], true);
    let first = leaf.report(1, vec![failed(1), installed(2)]);
    root.take(&leaf, &first).expect("applied");
    // Its certificate and its statement.
    assert_eq!(root.rollup.signature_checks(), 2);
    // The same bytes again, and a newer report with the same proof: nothing new.
    assert_eq!(root.take(&leaf, &first), Ok(Received::Duplicate));
    let mut second = first.report.clone();
    second.own[1].reason = Some("upgraded".into());
    let second = SignedReport::sign(&key(5), 2, second).expect("signs");
    assert_eq!(root.take(&leaf, &second), Ok(Received::Applied));
    assert_eq!(root.rollup.signature_checks(), 2);
    // A new failure: its statement alone.
    let third = leaf.report(3, vec![failed(1), failed(2)]);
    assert_eq!(root.take(&leaf, &third), Ok(Received::Applied));
    assert_eq!(root.rollup.signature_checks(), 3);
    // An older report is not checked at all.
    assert!(matches!(
        root.take(&leaf, &first),
        Ok(Received::Stale { .. })
    ));
    assert_eq!(root.rollup.signature_checks(), 3);
}

/// A checked chain of `depth` nodes below child `child`, the last failing `updates`.
fn chain_below(child: u8, tag: u32, depth: u32, updates: &[Hash], e: &Envelope) -> Checked {
    let id = |i: u32| {
        let mut k = [child; 32];
        k[..4].copy_from_slice(&tag.to_le_bytes());
        k[4..8].copy_from_slice(&i.to_le_bytes());
        PublicKey(k)
    };
    let mut c = Checked {
        node: id(depth),
        cert: e.clone(),
        expires: T0 + 1000,
        failed: updates
            .iter()
            .map(|u| Statement {
                update: *u,
                expires: T0 + 1000,
                envelope: e.clone(),
            })
            .collect(),
        below: vec![],
    };
    for i in (1..depth).rev() {
        c = Checked {
            node: id(i),
            cert: e.clone(),
            expires: T0 + 1000,
            failed: vec![],
            below: vec![c],
        };
    }
    c
}

/// A child `child` with `count` failing leaves of `updates` right below it.
fn wide_child(child: u8, count: u32, depth: u32, updates: &[Hash], e: &Envelope) -> Checked {
    let mut below: Vec<Checked> = (0..count)
        .map(|i| chain_below(child, i, depth, updates, e))
        .collect();
    below.sort_by_key(|c| c.node);
    Checked {
        node: pk(child),
        cert: e.clone(),
        expires: T0 + 1000,
        failed: vec![],
        below,
    }
}

#[test]
fn proofs_are_capped_and_shared_fairly() {
    let e = cert(2, 3, false);
    let (u1, u2) = (update(1), update(2));
    // One child with 1,500 failing nodes of update 1; the other, whose key sorts
    // after it, with ten of update 1 and 2 each.
    let (first, last) = if pk(3) < pk(4) { (3, 4) } else { (4, 3) };
    let big = wide_child(first, 1500, 1, &[u1], &e);
    let small = wide_child(last, 10, 1, &[u1, u2], &e);
    let below = BTreeMap::from([(pk(first), &big), (pk(last), &small)]);
    let (proof, cut) = assemble(Some(&e), &[], &below, T0);
    let proof = proof.expect("something to prove");
    assert!(cut);
    assert_eq!(proof.failures(), MAX_PROOF_FAILURES);
    // Every failure of the smaller child made it.
    let mut per_child: Vec<usize> = proof.below.iter().map(Proof::failures).collect();
    per_child.sort();
    assert_eq!(per_child, vec![20, MAX_PROOF_FAILURES - 20]);
    check_shape(&proof, 32).expect("within the caps");

    // Each failure three levels down needs three certificates: the certificate cap.
    let deep = wide_child(3, 1100, 2, &[u1], &e);
    let below = BTreeMap::from([(pk(3), &deep)]);
    let (proof, cut) = assemble(Some(&e), &[], &below, T0);
    let proof = proof.expect("something to prove");
    assert!(cut);
    let certs = |p: &Proof| {
        fn n(p: &Proof) -> usize {
            1 + p.below.iter().map(n).sum::<usize>()
        }
        n(p)
    };
    assert!(certs(&proof) <= MAX_PROOF_CERTS);
    assert_eq!(proof.failures(), (MAX_PROOF_CERTS - 2) / 2);

    // Nothing to prove, or no certificate to prove it with: no proof.
    assert_eq!(assemble(Some(&e), &[], &BTreeMap::new(), T0), (None, false));
    let below = BTreeMap::from([(pk(last), &small)]);
    assert_eq!(assemble(None, &[], &below, T0), (None, false));
    // What expired is left out.
    assert_eq!(assemble(Some(&e), &[], &below, T0 + 1000), (None, false));
}

#[test]
fn proof_shapes_past_the_limits_are_refused() {
    let e = cert(2, 3, false);
    let too_many = Proof {
        cert: e.clone(),
        below: vec![],
        failed: vec![e.clone(); MAX_PROOF_FAILURES + 1],
    };
    assert_eq!(
        check_shape(&too_many, 32),
        Err(ProofError::TooMany {
            what: "failure statements",
            count: MAX_PROOF_FAILURES + 1,
            limit: MAX_PROOF_FAILURES
        })
    );
    let leaf = Proof {
        cert: e.clone(),
        below: vec![],
        failed: vec![e.clone()],
    };
    // A thousand failures three certificates down each: too many certificates.
    let three_down = (0..2).fold(leaf.clone(), |p, _| Proof {
        cert: e.clone(),
        below: vec![p],
        failed: vec![],
    });
    let wide = Proof {
        cert: e.clone(),
        below: vec![three_down; 1000],
        failed: vec![],
    };
    assert_eq!(
        check_shape(&wide, 32),
        Err(ProofError::TooMany {
            what: "certificates",
            count: 3001,
            limit: MAX_PROOF_CERTS
        })
    );
    let empty = Proof {
        cert: e.clone(),
        below: vec![],
        failed: vec![],
    };
    assert_eq!(check_shape(&empty, 32), Err(ProofError::Empty));
    let deep = (0..3).fold(leaf, |p, _| Proof {
        cert: e.clone(),
        below: vec![p],
        failed: vec![],
    });
    assert_eq!(check_shape(&deep, 3), Err(ProofError::TooDeep));
    check_shape(&deep, 4).expect("four levels");
    // In a report: refused like any other invariant.
    let mut r = Report::leaf(
        NodeDetail {
            lost: None,
            node: pk(3),
            depth: 30,
            issued: T0,
            parent: Some(pk(2)),
            updates: vec![],
        },
        &[],
    );
    r.proof = Some(deep);
    assert_eq!(r.validate(), Err(InvalidReport::Proof(ProofError::TooDeep)));
}

#[test]
fn detail_stays_in_the_reporters_subtree_and_lost_children_are_marked() {
    // Branch 3 says: leaf 5 is its child (lost since T0 - 5), and 6 is a child of 4,
    // a node outside its subtree, as is 7 below 6.
    let mut root = node(&[2], false);
    let mut r = node(&[2, 3], false).report(1, vec![]);
    let entry = |n: u8, parent: u8, depth: u32, lost: Option<u64>| NodeDetail {
        lost,
        node: pk(n),
        depth,
        issued: T0,
        parent: Some(pk(parent)),
        updates: vec![installed(1)],
    };
    let mut nodes = vec![
        entry(5, 3, 2, Some(T0 - 5)),
        entry(6, 4, 2, None),
        entry(7, 6, 3, None),
    ];
    nodes.sort_by_key(|d| (d.depth, d.node));
    r.report.nodes = nodes;
    let r = SignedReport::sign(&key(3), 1, r.report).expect("signs");
    root.take(&node(&[2, 3], false), &r).expect("applied");
    let lost = BTreeMap::from([(pk(3), T0 - 1)]);
    let report = root.rollup.report(Own {
        lost: &lost,
        ..Own::new(root_node(), &BTreeMap::new(), &[])
    });
    let listed: Vec<(PublicKey, Option<u64>)> =
        report.nodes.iter().map(|d| (d.node, d.lost)).collect();
    assert_eq!(
        listed,
        vec![(pk(3), Some(T0 - 1)), (pk(5), Some(T0 - 5))],
        "{:?}",
        report.nodes
    );
    let signed = SignedReport::sign(&key(2), 1, report).expect("valid");
    // `lost` is on the wire only when set.
    assert_eq!(signed.bytes.windows(4).filter(|w| w == b"lost").count(), 2);
}
