//! Reports against lying nodes (issue 25, PROTOCOL.md §15.7), with real engines wired
//! by a small synchronous pump that carries control messages only (no chunk moves;
//! reports and halts need none): a client that invents failed descendants is refused
//! and halts nothing; a branch cannot count failures outside its subtree; a real
//! failure two levels down halts at the root; a child sending reports as fast as it
//! can has only its newest taken in, at its turn; and a parent marks a child it lost.

use arbor::content::Hash;
use arbor::content::manifest::{ChunkRef, FileEntry, Manifest};
use arbor::engine::{CHECK_RATE, REPORT_SPACING};
use arbor::engine::{
    Config, Control, Engine, Event, Millis, Outcome, Output, PeerId, Role, RuleChange,
};
use arbor::report::proof::{Proof, sign_failure};
use arbor::report::{Counts, NodeDetail, Report, SignedReport, State, UpdateState};
use arbor::rules::{ALL, Approval, FULL_WAVE, Halt};
use arbor::trust::{Envelope, PublicKey, SecretKey, SignedManifest, member};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Unix seconds at virtual time 0: certificates and rules are checked against it.
const START: Millis = 1_800_000_000_000;
const EXPIRES: u64 = 4_000_000_000;

fn secret(i: u8) -> SecretKey {
    SecretKey::from_seed([i; 32])
}

fn key(i: u8) -> PeerId {
    secret(i).public()
}

fn root_secret() -> SecretKey {
    SecretKey::from_seed([200; 32])
}

fn cert(issuer: u8, node: u8, client: bool) -> Envelope {
    member::issue(&secret(issuer), key(node), client, vec![], None, 0, EXPIRES)
}

/// A signed update of 4 chunks.
fn update() -> Arc<SignedManifest> {
    let refs: Vec<ChunkRef> = (0..4u32)
        .map(|i| ChunkRef(Hash::of(&i.to_le_bytes()), 1024))
        .collect();
    let m = Manifest {
        id: "agent".into(),
        files: vec![FileEntry {
            mode: 0o644,
            path: "agent.bin".into(),
            size: 4096,
            chunks: refs,
        }],
        tenant: "acme".into(),
        created: 1_767_225_600,
        version: "1".into(),
        category: "test".into(),
        total_size: 4096,
        description: None,
        post_install: None,
    };
    Arc::new(SignedManifest::sign(&root_secret(), 1, m).expect("valid manifest"))
}

/// Engines by key, the connections between them, and what each asked for.
struct Tree {
    now: Millis,
    nodes: BTreeMap<PeerId, Engine>,
    parents: BTreeMap<PeerId, u8>,
    links: BTreeSet<(PeerId, PeerId)>,
    /// Pairs whose dials fail.
    blocked: BTreeSet<(PeerId, PeerId)>,
    queue: VecDeque<(PeerId, Output)>,
    events: BTreeMap<PeerId, Vec<Event>>,
    /// Children's reports each node took in (asked to keep).
    taken: BTreeMap<PeerId, Vec<PeerId>>,
}

impl Tree {
    /// Root node 1 alone.
    fn new() -> Tree {
        let mut t = Tree {
            now: START,
            nodes: BTreeMap::new(),
            parents: BTreeMap::new(),
            links: BTreeSet::new(),
            blocked: BTreeSet::new(),
            queue: VecDeque::new(),
            events: BTreeMap::new(),
            taken: BTreeMap::new(),
        };
        let engine = Engine::new(
            Role::Root,
            root_secret().public(),
            secret(1),
            vec![key(1)],
            Config::default(),
            1,
        );
        t.nodes.insert(key(1), engine);
        t
    }

    /// Node `n` under `parent`, certified by it (a client's certificate if `client`),
    /// dialling it.
    fn add(&mut self, n: u8, parent: u8, client: bool) {
        let mut path = self.nodes[&key(parent)].path().to_vec();
        path.push(key(n));
        let mut e = Engine::new(
            Role::Member {
                parent: key(parent),
            },
            root_secret().public(),
            secret(n),
            path,
            Config::default(),
            u64::from(n),
        );
        e.set_certificate(cert(parent, n, client))
            .expect("its parent's certificate");
        self.nodes.insert(key(n), e);
        self.parents.insert(key(n), parent);
        self.with(key(parent), |e, now| e.add_child(key(n), client, now));
        self.with(key(n), |e, now| e.handle_timeout(now));
        self.pump();
    }

    fn engine(&self, n: u8) -> &Engine {
        &self.nodes[&key(n)]
    }

    fn with(&mut self, id: PeerId, f: impl FnOnce(&mut Engine, Millis)) {
        let now = self.now;
        let e = self.nodes.get_mut(&id).expect("a node of the tree");
        f(e, now);
        while let Some(out) = e.poll_output() {
            self.queue.push_back((id, out));
        }
    }

    fn linked(&self, a: PeerId, b: PeerId) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    fn pump(&mut self) {
        while let Some((id, out)) = self.queue.pop_front() {
            match out {
                Output::Send { to, msg } if self.linked(id, to) => {
                    self.with(to, |e, now| e.handle_message(id, msg, now));
                }
                Output::Dial { peer } if self.blocked.contains(&(id.min(peer), id.max(peer))) => {
                    self.with(id, |e, now| e.handle_disconnected(peer, now));
                }
                Output::Dial { peer } if !self.linked(id, peer) => {
                    self.links.insert((id.min(peer), id.max(peer)));
                    self.with(peer, |e, now| e.handle_connected(id, now));
                    self.with(id, |e, now| e.handle_connected(peer, now));
                }
                Output::Disconnect { peer, .. } => self.cut(id, peer),
                Output::StoreManifest { manifest } => {
                    let none = vec![false; manifest.chunks.len()];
                    self.with(id, |e, now| e.handle_local_have(manifest.id, &none, now));
                }
                Output::StoreReport { child, .. } => {
                    self.taken.entry(id).or_default().push(child);
                }
                Output::Event(ev) => self.events.entry(id).or_default().push(ev),
                _ => {}
            }
        }
    }

    /// Closes the connection of `a` and `b` for good.
    fn block(&mut self, a: u8, b: u8) {
        let (a, b) = (key(a), key(b));
        self.blocked.insert((a.min(b), a.max(b)));
        self.cut(a, b);
        self.pump();
    }

    fn cut(&mut self, a: PeerId, b: PeerId) {
        if self.links.remove(&(a.min(b), a.max(b))) {
            self.with(a, |e, now| e.handle_disconnected(b, now));
            self.with(b, |e, now| e.handle_disconnected(a, now));
        }
    }

    /// Runs every timer due until `ms` from now.
    fn advance(&mut self, ms: Millis) {
        let until = self.now + ms;
        for _ in 0..100_000 {
            let next = self
                .nodes
                .iter()
                .filter_map(|(id, e)| e.poll_timeout().map(|t| (t, *id)))
                .min();
            match next {
                Some((t, id)) if t <= until => {
                    self.now = self.now.max(t);
                    self.with(id, |e, now| e.handle_timeout(now));
                    self.pump();
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
        panic!("timers never settle");
    }

    /// The root node publishes `m` for everyone below it, halting at `halt`.
    fn publish(&mut self, m: &Arc<SignedManifest>, halt: Halt) {
        let all = vec![true; m.chunks.len()];
        let mm = m.clone();
        self.with(key(1), |e, now| e.add_local_update(mm, &all, now));
        let approval = Approval {
            halt: Some(halt),
            subtree: true,
            ..Approval::wave(FULL_WAVE)
        };
        let change = RuleChange::Approve {
            update: m.id,
            group: ALL.into(),
            approval,
        };
        self.with(key(1), |e, now| {
            e.change_own_rules([change], now).expect("own rules");
        });
        self.pump();
        self.advance(5_000);
    }

    fn fail(&mut self, n: u8, m: &Hash) {
        self.with(key(n), |e, now| {
            e.set_outcome(m, Outcome::Failed("hook exited 1".into()), now)
        });
        self.pump();
        self.advance(5_000);
    }

    fn halts(&self, n: u8) -> Vec<String> {
        self.events
            .get(&key(n))
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                Event::Halted { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn misbehaved(&self, n: u8, peer: u8) -> Vec<String> {
        self.events
            .get(&key(n))
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                Event::Misbehaved {
                    peer: p, reason, ..
                } if *p == key(peer) => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    /// `n` sends its parent `report`, as a compromised node would.
    fn send(&mut self, n: u8, report: &SignedReport) {
        let parent = key(self.parents[&key(n)]);
        let bytes: Arc<[u8]> = report.bytes.clone().into();
        self.with(parent, |e, now| {
            e.handle_message(key(n), Control::Report { report: bytes }, now)
        });
        self.pump();
    }
}

fn one_failure() -> Halt {
    Halt {
        failures: Some(1),
        fraction: None,
    }
}

fn at_count(n: u64) -> Halt {
    Halt {
        failures: Some(n),
        fraction: None,
    }
}

/// A report of node `n` (depth `depth`, under `parent`): its own failure of `u`, and
/// `invented` failed descendants right below it, detail and counts adding up.
fn invented(n: u8, parent: u8, depth: u32, u: Hash, invented: u8) -> Report {
    let failed = |_| UpdateState::failed(u, "hook exited 1", 0, 4096);
    let mut r = Report::leaf(
        NodeDetail {
            lost: None,
            node: key(n),
            depth,
            issued: START / 1000,
            parent: Some(key(parent)),
            updates: vec![failed(0)],
        },
        &[],
    );
    let mut nodes: Vec<NodeDetail> = (0..invented)
        .map(|i| NodeDetail {
            lost: None,
            node: PublicKey([i; 32]),
            depth: depth + 1,
            issued: START / 1000,
            parent: Some(key(n)),
            updates: vec![failed(0)],
        })
        .collect();
    nodes.sort_by_key(|d| d.node);
    r.nodes = nodes;
    let below = Counts {
        failed: u64::from(invented),
        ..Counts::default()
    };
    if invented > 0 {
        r.groups.insert(ALL.into(), BTreeMap::from([(u, below)]));
    }
    let mut all = below;
    all.count(State::Failed);
    r.subtree.insert(u, all);
    r
}

#[test]
fn a_client_inventing_failed_descendants_is_refused_and_halts_nothing() {
    // Issue 25: a client-certified node reported 50 invented descendants that had
    // failed, and the root's approval went "HALTED: 51 nodes failed".
    let mut t = Tree::new();
    t.add(5, 1, true);
    let m = update();
    t.publish(&m, at_count(2));
    let forged = invented(5, 1, 1, m.id, 50);
    let forged = SignedReport::sign(&secret(5), u64::MAX / 2, forged).expect("valid on its face");
    t.send(5, &forged);
    t.advance(5_000);
    assert!(t.halts(1).is_empty(), "{:?}", t.halts(1));
    let refused = t.misbehaved(1, 5);
    assert!(
        refused
            .iter()
            .any(|r| r.contains("clients have no descendants")),
        "{refused:?}"
    );
    let held = t
        .engine(1)
        .rollup()
        .get(&key(5))
        .map(|r| r.report.nodes.len());
    assert_eq!(held, Some(0), "the forged report is not held");
    // Its own failure, proven, weighs one node: below the threshold of 2.
    t.fail(5, &m.id);
    assert!(t.halts(1).is_empty());
    let report = t.engine(1).report(t.now);
    assert_eq!(report.subtree_counts(&m.id).failed, 1);
}

#[test]
fn a_failure_two_levels_down_is_proven_at_the_root_and_halts() {
    let mut t = Tree::new();
    t.add(3, 1, false);
    t.add(5, 3, true);
    t.add(6, 3, true);
    let m = update();
    t.publish(&m, one_failure());
    assert!(t.halts(1).is_empty());
    t.fail(5, &m.id);
    let halts = t.halts(1);
    assert_eq!(halts.len(), 1, "{halts:?}");
    assert!(halts[0].contains("1 nodes failed"), "{halts:?}");
    assert_eq!(
        t.engine(1).rollup().proven(t.now / 1000),
        BTreeSet::from([(key(5), m.id)])
    );
    assert!(t.misbehaved(1, 3).is_empty() && t.misbehaved(3, 5).is_empty());
}

#[test]
fn a_branch_cannot_count_failures_outside_its_subtree() {
    // Root node 1 → branches 3 and 4; leaf 5 under 3 failed for real, under a threshold
    // of 2. Branch 4 is compromised.
    let mut t = Tree::new();
    t.add(3, 1, false);
    t.add(4, 1, false);
    t.add(5, 3, true);
    let m = update();
    t.publish(&m, at_count(2));
    t.fail(5, &m.id);
    assert!(t.halts(1).is_empty());
    let real: Proof = t
        .engine(3)
        .rollup()
        .get(&key(5))
        .and_then(|r| r.report.proof.clone())
        .expect("5's proof at its parent");

    // 4 claims 50 failed nodes below it: counted as its word, proving nothing.
    let claims = invented(4, 1, 1, m.id, 50);
    t.send(
        4,
        &SignedReport::sign(&secret(4), 1 << 50, claims.clone()).expect("signs"),
    );
    t.advance(5_000);
    assert!(t.halts(1).is_empty(), "{:?}", t.halts(1));
    assert_eq!(t.engine(1).report(t.now).subtree_counts(&m.id).failed, 52);

    // 4 replays 5's real statement: under 5's real certificate (not signed by 4), under
    // one it made up for 5, or grafted under one it made up for 3. Each is refused.
    let replays = [
        real.clone(),
        Proof {
            cert: cert(4, 5, true),
            ..real.clone()
        },
        Proof {
            cert: cert(4, 3, false),
            below: vec![real.clone()],
            failed: vec![],
        },
    ];
    for (i, below) in replays.into_iter().enumerate() {
        let mut r = claims.clone();
        r.own = vec![UpdateState::new(m.id, State::Installed, 4096, 4096)];
        r.subtree.insert(
            m.id,
            Counts {
                failed: 50,
                installed: 1,
                ..Counts::default()
            },
        );
        r.proof = Some(Proof {
            cert: cert(1, 4, false),
            below: vec![below],
            failed: vec![],
        });
        let seq = (1 << 50) + 1 + i as u64;
        t.send(
            4,
            &SignedReport::sign(&secret(4), seq, r).expect("valid on its face"),
        );
        t.advance(5_000);
    }
    assert_eq!(t.misbehaved(1, 4).len(), 3, "{:?}", t.misbehaved(1, 4));
    assert!(t.halts(1).is_empty(), "{:?}", t.halts(1));
    assert_eq!(
        t.engine(1).rollup().proven(t.now / 1000),
        BTreeSet::from([(key(5), m.id)])
    );
    // Its own failure it can prove: with 5's, the threshold of 2 is reached.
    let mut own = claims;
    own.proof = Some(Proof {
        cert: cert(1, 4, false),
        below: vec![],
        failed: vec![sign_failure(
            &secret(4),
            &[key(1), key(4)],
            m.id,
            START / 1000,
        )],
    });
    t.send(
        4,
        &SignedReport::sign(&secret(4), 1 << 51, own).expect("signs"),
    );
    t.advance(5_000);
    assert_eq!(t.halts(1).len(), 1, "{:?}", t.halts(1));
}

#[test]
fn a_child_flooding_reports_has_only_the_newest_taken_in_at_its_turn() {
    let mut t = Tree::new();
    t.add(3, 1, false);
    t.advance(5_000);
    let before = t.taken.get(&key(1)).map_or(0, Vec::len);
    let report = |seq: u64, failures: u8| {
        let mut r = invented(3, 1, 1, Hash::of(b"u"), 0);
        r.issued = seq;
        // Each failure a node 3 certifies and that signs it: two checks each.
        let mut below: Vec<Proof> = (0..failures)
            .map(|i| {
                let n = 100 + i;
                Proof {
                    cert: cert(3, n, true),
                    below: vec![],
                    failed: vec![sign_failure(
                        &secret(n),
                        &[key(1), key(3), key(n)],
                        Hash::of(b"u"),
                        START / 1000,
                    )],
                }
            })
            .collect();
        below.sort_by_key(|p| {
            let m: member::Membership =
                cbor4ii::serde::from_slice(&p.cert.body).expect("membership");
            m.node
        });
        r.proof = (failures > 0).then(|| Proof {
            cert: cert(1, 3, false),
            below,
            failed: vec![],
        });
        SignedReport::sign(&secret(3), seq, r).expect("signs")
    };
    // 200 reports at once: the first is taken in, then the newest at the next turn.
    // Above the node's own sequence numbers (its clock in milliseconds).
    let base = 1u64 << 50;
    for seq in 1..=200u64 {
        t.send(3, &report(base + seq, 0));
    }
    assert_eq!(t.taken[&key(1)].len(), before + 1);
    t.advance(REPORT_SPACING);
    assert_eq!(t.taken[&key(1)].len(), before + 2);
    assert_eq!(t.engine(1).rollup().seq(&key(3)), Some(base + 200));
    t.advance(10_000);
    assert_eq!(t.taken[&key(1)].len(), before + 2);

    // A report that costs 202 signature checks (its envelope, 3's certificate, and a
    // certificate and a statement of each failure): the next one waits for them.
    t.send(3, &report(base + 1000, 100));
    assert_eq!(t.taken[&key(1)].len(), before + 3);
    let wait = 202 * 1000 / CHECK_RATE;
    assert!(wait > REPORT_SPACING);
    t.send(3, &report(base + 1001, 100));
    t.advance(wait - 1);
    assert_eq!(t.taken[&key(1)].len(), before + 3, "taken before its turn");
    t.advance(1);
    assert_eq!(t.taken[&key(1)].len(), before + 4);
    assert_eq!(t.engine(1).rollup().seq(&key(3)), Some(base + 1001));
}

#[test]
fn a_parent_marks_a_child_it_lost_and_the_root_sees_it() {
    let mut t = Tree::new();
    t.add(3, 1, false);
    t.add(5, 3, true);
    let m = update();
    t.publish(&m, one_failure());
    let lost_of = |t: &Tree, n: u8| {
        t.engine(1)
            .report(t.now)
            .nodes
            .iter()
            .find(|d| d.node == key(n))
            .map(|d| d.lost)
    };
    assert_eq!(lost_of(&t, 5), Some(None));
    let gone_at = t.now;
    t.block(3, 5);
    t.advance(3_000);
    assert_eq!(lost_of(&t, 5), Some(Some(gone_at / 1000)));
    assert_eq!(lost_of(&t, 3), Some(None));
    // The branch itself gone: the root marks it from its own links.
    let gone_at = t.now;
    t.block(1, 3);
    assert_eq!(lost_of(&t, 3), Some(Some(gone_at / 1000)));
}

#[test]
fn a_certificate_not_from_the_parent_for_this_node_is_refused() {
    let mut t = Tree::new();
    t.add(3, 1, false);
    let e = t.nodes.get_mut(&key(3)).expect("node 3");
    // Signed by another node, naming another node, or garbage: refused, the one held
    // stays.
    assert!(e.set_certificate(cert(4, 3, false)).is_err());
    assert!(e.set_certificate(cert(1, 5, false)).is_err());
    let mut garbage = cert(1, 3, false);
    garbage.body = b"\x00\xff".to_vec();
    assert!(e.set_certificate(garbage).is_err());
    e.set_certificate(cert(1, 3, false))
        .expect("its parent's, for itself");
    // The root node has no parent: it needs no certificate and takes none.
    assert!(
        t.nodes
            .get_mut(&key(1))
            .expect("root")
            .set_certificate(cert(1, 3, false))
            .is_err()
    );
}
