//! The engine in a deterministic harness: several engines wired together through an
//! in-process event queue with virtual time and modelled links, no sockets. Each test
//! drives a small tree and checks what a user relies on: everything arrives, bad bytes
//! are never kept, depth costs chunk times rather than file times, a lost parent is
//! survived, a restart resumes; and rules decide what moves: they propagate down every
//! level (to a node that was offline too), forged ones are refused, a child cannot
//! widen what its parent approved, waves pick the same members every time, and a
//! branch fetches only what its children may have.

mod common;

use arbor::content::Hash;
use arbor::engine::bitmap::Bitmap;
use arbor::engine::{
    ChunkVerdict, Config, Control, Engine, Event, FetchId, Millis, Outcome, Output, PeerId, Role,
    RuleChange, Saved, SavedChild, Served,
};
use arbor::rules::{ALL, Approval, FULL_WAVE, Rules, SignedRules};
use arbor::trust::{SecretKey, SignedManifest, member};
use common::synthetic_update as update;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};
use std::sync::Arc;

const CHUNK: u32 = 64 * 1024;

fn key(i: u8) -> PeerId {
    SecretKey::from_seed([i; 32]).public()
}

fn root_secret() -> SecretKey {
    SecretKey::from_seed([200; 32])
}

/// The node key behind `key(i)`.
fn secret_of(id: PeerId) -> SecretKey {
    (0..=u8::MAX)
        .map(|i| SecretKey::from_seed([i; 32]))
        .find(|s| s.public() == id)
        .expect("a node of the harness")
}

/// Rules expire long after any test's virtual time (Unix seconds).
const RULES_EXPIRE: u64 = 4_000_000_000;

#[derive(Debug)]
enum Ev {
    Deliver {
        to: PeerId,
        from: PeerId,
        msg: Control,
    },
    Serve {
        server: PeerId,
        client: PeerId,
        fetch: FetchId,
        update: Hash,
        first: u32,
        count: u32,
        direct: bool,
    },
    Elsewhere {
        to: PeerId,
        from: PeerId,
        epoch: u64,
        fetch: FetchId,
        index: u32,
        holder: PeerId,
    },
    Chunk {
        to: PeerId,
        from: PeerId,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        index: u32,
        verdict: ChunkVerdict,
    },
    FetchEnd {
        to: PeerId,
        from: PeerId,
        epoch: u64,
        fetch: FetchId,
    },
    Connected {
        a: PeerId,
        b: PeerId,
    },
    DialFailed {
        node: PeerId,
        peer: PeerId,
    },
    Timeout {
        node: PeerId,
    },
}

struct Node {
    engine: Engine,
    /// Chunk hashes held: the store.
    store: HashSet<Hash>,
    /// Serve this many chunks with wrong bytes before behaving.
    corrupt: u32,
    completed_at: Option<Millis>,
    events: Vec<Event>,
    /// Chunks this node asked for, in total.
    chunks_requested: u64,
    /// Chunks this node sent, to each peer.
    chunks_sent: BTreeMap<PeerId, u64>,
    /// Good chunks delivered to this node, in total.
    chunks_received: u64,
    /// The issuers of the rule sets the engine asked to persist, in order.
    rules_stored: Vec<PeerId>,
    /// `Have` messages delivered to this node.
    haves_received: u64,
    /// What its store keeps besides chunks, to start again from: its children, the
    /// manifests it took up, and the rule sets and reports the engine asked to keep.
    kept: Saved,
}

struct Harness {
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    events: Vec<Option<Ev>>,
    nodes: BTreeMap<PeerId, Node>,
    /// Open connections, each with the epoch it was opened in: what was sent on a
    /// connection that has closed since is lost.
    links: BTreeMap<(PeerId, PeerId), u64>,
    epoch: u64,
    /// Pairs that cannot reach each other (dials fail).
    cut: BTreeSet<(PeerId, PeerId)>,
    /// When each directed link is free to carry the next chunk.
    busy_until: BTreeMap<(PeerId, PeerId), Millis>,
    latency: Millis,
    chunk_time: Millis,
    /// Pairs of children of one parent at one site: their connections are siblings'.
    siblings: BTreeSet<(PeerId, PeerId)>,
    /// Directed links that share another's capacity (a site's one WAN uplink).
    shares: BTreeMap<(PeerId, PeerId), (PeerId, PeerId)>,
}

/// Whether `server` answers `peer`'s request for chunk 0 of `update` with bytes.
fn serves(h: &mut Harness, server: PeerId, peer: PeerId, update: &Hash) -> bool {
    matches!(
        h.node(server).engine.serve(&peer, update, 0..1, false)[..],
        [Served::Data { .. }]
    )
}

fn pair(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a < b { (a, b) } else { (b, a) }
}

impl Harness {
    fn new(latency: Millis, chunk_time: Millis) -> Harness {
        Harness {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes: BTreeMap::new(),
            links: BTreeMap::new(),
            epoch: 0,
            cut: BTreeSet::new(),
            busy_until: BTreeMap::new(),
            latency,
            chunk_time,
            siblings: BTreeSet::new(),
            shares: BTreeMap::new(),
        }
    }

    /// Places `children` of `parent` at one site behind one uplink: the parent's links
    /// to them share one capacity, and they are each other's siblings.
    fn site(&mut self, parent: PeerId, children: &[PeerId], name: &str) {
        for (i, c) in children.iter().enumerate() {
            self.node(parent).engine.set_child_site(*c, Some(name));
            self.shares.insert((parent, *c), (parent, children[0]));
            for d in &children[i + 1..] {
                self.siblings.insert(pair(*c, *d));
            }
        }
    }

    fn add(&mut self, id: PeerId, role: Role, seed: u64) {
        let path = match &role {
            Role::Root => vec![id],
            Role::Member { parent } => {
                let mut path = self.nodes[parent].engine.path().to_vec();
                path.push(id);
                path
            }
        };
        let engine = Engine::new(
            role,
            root_secret().public(),
            secret_of(id),
            path,
            // Liveness has tests of its own: pings would keep every run busy.
            Config {
                heartbeat: 0,
                ..Config::default()
            },
            seed,
        );
        self.nodes.insert(
            id,
            Node {
                engine,
                store: HashSet::new(),
                corrupt: 0,
                completed_at: None,
                events: Vec::new(),
                chunks_requested: 0,
                chunks_sent: BTreeMap::new(),
                chunks_received: 0,
                rules_stored: Vec::new(),
                haves_received: 0,
                kept: Saved::default(),
            },
        );
    }

    /// What `id`'s store holds now, as a snapshot to start again from: what it kept,
    /// with the chunks held of each update and the engine's report sequence number.
    fn snapshot(&self, id: PeerId) -> Saved {
        let node = &self.nodes[&id];
        let mut saved = node.kept.clone();
        saved.report_seq = node.engine.report_seq();
        for (m, have) in &mut saved.updates {
            *have = Bitmap::new(m.chunks.len() as u32);
            for (i, (hash, _)) in m.chunks.iter().enumerate() {
                if node.store.contains(hash) {
                    have.set(i as u32);
                }
            }
        }
        saved
    }

    /// `id` crashed and starts again from `saved`: a new engine, the same store.
    fn restart(&mut self, id: PeerId, role: Role, seed: u64, saved: &Saved) {
        let store = std::mem::take(&mut self.node(id).store);
        let kept = std::mem::take(&mut self.node(id).kept);
        self.add(id, role, seed);
        self.node(id).store = store;
        self.node(id).kept = kept;
        self.with(id, |e, now| {
            let dropped = e.resume(saved, now);
            assert!(dropped.is_empty(), "{dropped:?}");
            e.handle_timeout(now);
        });
    }

    /// `child` is a certified child of `parent` (with a certificate `parent` signed, so
    /// that it can prove its failures) and dials it now.
    fn attach(&mut self, parent: PeerId, child: PeerId) {
        let now = self.now;
        self.node(parent).engine.add_child(child, false, now);
        self.node(parent).kept.children.push(SavedChild {
            key: child,
            client: false,
            site: None,
        });
        let cert = member::issue(
            &secret_of(parent),
            child,
            false,
            vec![],
            None,
            0,
            RULES_EXPIRE,
        );
        self.node(child)
            .engine
            .set_certificate(cert)
            .expect("the parent's certificate");
        self.with(child, |e, now| e.handle_timeout(now));
    }

    fn node(&mut self, id: PeerId) -> &mut Node {
        self.nodes.get_mut(&id).expect("known node")
    }

    fn at(&mut self, t: Millis, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((t, self.seq, self.events.len() - 1)));
    }

    /// Runs an input on a node's engine, then carries out everything it asks for.
    fn with(&mut self, id: PeerId, input: impl FnOnce(&mut Engine, Millis)) {
        let now = self.now;
        input(&mut self.node(id).engine, now);
        while let Some(out) = self.node(id).engine.poll_output() {
            self.carry_out(id, out);
        }
        if let Some(t) = self.node(id).engine.poll_timeout() {
            self.at(t.max(now), Ev::Timeout { node: id });
        }
    }

    fn carry_out(&mut self, id: PeerId, out: Output) {
        let now = self.now;
        match out {
            Output::Send { to, msg } => {
                if self.links.contains_key(&pair(id, to)) {
                    self.at(now + self.latency, Ev::Deliver { to, from: id, msg });
                }
            }
            Output::Fetch {
                id: fetch,
                from,
                update,
                first,
                count,
                direct,
            } => {
                self.node(id).chunks_requested += u64::from(count);
                self.at(
                    now + self.latency,
                    Ev::Serve {
                        server: from,
                        client: id,
                        fetch,
                        update,
                        first,
                        count,
                        direct,
                    },
                );
            }
            Output::StoreManifest { manifest } => {
                // The store answers at once with the chunks it already holds.
                let update = manifest.id;
                let node = self.node(id);
                node.kept.updates.push((manifest, Bitmap::new(0)));
                let have: Vec<bool> = (0..)
                    .map_while(|i| node.engine.chunk(&update, i))
                    .map(|(h, _)| node.store.contains(&h))
                    .collect();
                node.engine.handle_local_have(update, &have, now);
            }
            Output::Dial { peer } => {
                if self.cut.contains(&pair(id, peer)) {
                    self.at(now + self.latency, Ev::DialFailed { node: id, peer });
                } else {
                    self.at(now + self.latency, Ev::Connected { a: id, b: peer });
                }
            }
            Output::Disconnect { peer, .. } => self.disconnect(id, peer),
            Output::StoreRules { issuer, rules } => {
                let node = self.node(id);
                node.rules_stored.push(issuer);
                node.kept.keep_rules(issuer, rules);
            }
            Output::StoreReport { child, report } => self.node(id).kept.keep_report(child, report),
            // No node of these trees installs (tests/installer.rs drives installers).
            Output::Installer(_) => {}
            Output::Event(e) => {
                if matches!(e, Event::UpdateComplete { .. }) {
                    self.node(id).completed_at = Some(now);
                }
                self.node(id).events.push(e);
            }
        }
    }

    fn disconnect(&mut self, a: PeerId, b: PeerId) {
        if self.links.remove(&pair(a, b)).is_some() {
            self.with(a, |e, now| e.handle_disconnected(b, now));
            self.with(b, |e, now| e.handle_disconnected(a, now));
        }
    }

    /// Processes events until none is left or time passes `limit`.
    fn run(&mut self, limit: Millis) {
        while let Some(Reverse((t, _, i))) = self.queue.pop() {
            if t > limit {
                self.queue.push(Reverse((t, 0, i)));
                break;
            }
            self.now = t;
            let Some(ev) = self.events[i].take() else {
                continue;
            };
            self.step(ev);
        }
        self.now = self.now.max(limit.min(self.now));
    }

    fn step(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver { to, from, msg } => {
                if self.links.contains_key(&pair(to, from)) {
                    if matches!(msg, Control::Have { .. }) {
                        self.node(to).haves_received += 1;
                    }
                    self.with(to, |e, now| e.handle_message(from, msg, now));
                }
            }
            Ev::Serve {
                server,
                client,
                fetch,
                update,
                first,
                count,
                direct,
            } => {
                let Some(&epoch) = self.links.get(&pair(server, client)) else {
                    return;
                };
                let link = *self
                    .shares
                    .get(&(server, client))
                    .unwrap_or(&(server, client));
                let mut t = now.max(*self.busy_until.get(&link).unwrap_or(&0));
                let span = first..first + count;
                let answers =
                    self.node(server)
                        .engine
                        .serve(&client, &update, span.clone(), direct);
                for (index, answer) in span.zip(answers) {
                    match answer {
                        Served::Data { .. } => {}
                        Served::Missing => continue,
                        Served::Elsewhere { holder } => {
                            self.at(
                                t + self.latency,
                                Ev::Elsewhere {
                                    to: client,
                                    from: server,
                                    epoch,
                                    fetch,
                                    index,
                                    holder,
                                },
                            );
                            continue;
                        }
                    }
                    *self.node(server).chunks_sent.entry(client).or_default() += 1;
                    let node = self.node(server);
                    let verdict = if node.corrupt > 0 {
                        node.corrupt -= 1;
                        ChunkVerdict::Bad
                    } else {
                        let wire = node.engine.chunk(&update, index).map_or(0, |c| c.1);
                        ChunkVerdict::Stored { wire }
                    };
                    t += self.chunk_time;
                    self.at(
                        t + self.latency,
                        Ev::Chunk {
                            to: client,
                            from: server,
                            epoch,
                            fetch,
                            update,
                            index,
                            verdict,
                        },
                    );
                }
                self.busy_until.insert(link, t);
                self.at(
                    t + self.latency,
                    Ev::FetchEnd {
                        to: client,
                        from: server,
                        epoch,
                        fetch,
                    },
                );
            }
            Ev::Chunk {
                to,
                from,
                epoch,
                fetch,
                update,
                index,
                verdict,
            } => {
                if self.links.get(&pair(to, from)) != Some(&epoch) {
                    return;
                }
                // The driver stores a chunk only after its hash matched.
                if matches!(verdict, ChunkVerdict::Stored { .. })
                    && let Some((hash, _)) = self.nodes[&to].engine.chunk(&update, index)
                {
                    let node = self.node(to);
                    node.store.insert(hash);
                    node.chunks_received += 1;
                }
                self.with(to, |e, now| e.handle_chunk(fetch, index, verdict, now));
            }
            Ev::Elsewhere {
                to,
                from,
                epoch,
                fetch,
                index,
                holder,
            } => {
                if self.links.get(&pair(to, from)) == Some(&epoch) {
                    self.with(to, |e, now| e.handle_elsewhere(fetch, index, holder, now));
                }
            }
            Ev::FetchEnd {
                to,
                from,
                epoch,
                fetch,
            } => {
                if self.links.get(&pair(to, from)) == Some(&epoch) {
                    self.with(to, |e, now| e.handle_fetch_end(fetch, now));
                }
            }
            Ev::Connected { a, b } => {
                if self.cut.contains(&pair(a, b)) {
                    self.with(a, |e, now| e.handle_disconnected(b, now));
                    return;
                }
                self.epoch += 1;
                self.links.insert(pair(a, b), self.epoch);
                if self.siblings.contains(&pair(a, b)) {
                    // Both drivers checked the other's certificate: same parent, same site.
                    self.with(b, |e, now| {
                        e.handle_sibling_connected(a, now);
                    });
                    self.with(a, |e, now| {
                        e.handle_sibling_connected(b, now);
                    });
                    return;
                }
                self.with(b, |e, now| e.handle_connected(a, now));
                self.with(a, |e, now| e.handle_connected(b, now));
            }
            Ev::DialFailed { node, peer } => {
                self.with(node, |e, now| e.handle_disconnected(peer, now))
            }
            Ev::Timeout { node } => {
                if self.nodes[&node]
                    .engine
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                {
                    self.with(node, |e, now| e.handle_timeout(now));
                }
            }
        }
    }

    /// The root publishes `manifest` (its store holds every chunk) and approves it for
    /// its whole tree.
    fn publish_at_root(&mut self, root: PeerId, manifest: &Arc<SignedManifest>) {
        self.publish_only(root, manifest);
        let mut rules = self.own_rules(root);
        rules
            .approve(manifest.id, ALL, subtree(FULL_WAVE))
            .expect("valid approval");
        self.set_rules(root, rules);
    }

    /// The root publishes `manifest` without approving it.
    fn publish_only(&mut self, root: PeerId, manifest: &Arc<SignedManifest>) {
        let all = vec![true; manifest.manifest.distinct_chunks().0];
        for c in manifest.manifest.chunk_refs() {
            self.node(root).store.insert(c.hash());
        }
        let m = manifest.clone();
        self.with(root, |e, now| e.add_local_update(m, &all, now));
    }

    /// The rules `node` holds for its children, or empty ones.
    fn own_rules(&self, node: PeerId) -> Rules {
        self.nodes[&node]
            .engine
            .rules()
            .get(&node)
            .map_or_else(|| Rules::new(node, 0), |r| r.rules.clone())
    }

    /// `node`'s admin sets `rules` (their groups and approvals): its engine signs them
    /// as its next version.
    fn set_rules(&mut self, node: PeerId, rules: Rules) -> Arc<SignedRules> {
        let held = self.own_rules(node);
        let mut changes = vec![RuleChange::Groups(rules.groups)];
        changes.extend(
            held.approvals
                .into_keys()
                .filter(|k| !rules.approvals.contains_key(k))
                .map(|k| RuleChange::Decline {
                    update: k.update,
                    group: k.group,
                }),
        );
        changes.extend(
            rules
                .approvals
                .into_iter()
                .map(|(k, approval)| RuleChange::Approve {
                    update: k.update,
                    group: k.group,
                    approval,
                }),
        );
        let mut signed = None;
        self.with(node, |e, now| {
            signed = Some(
                e.change_own_rules(changes, now)
                    .expect("a node's own rules"),
            );
        });
        signed.expect("signed")
    }

    /// `node` approves `update` for every child, in autonomous mode.
    fn approve_for_children(&mut self, node: PeerId, update: Hash) {
        let mut rules = self.own_rules(node);
        rules
            .approve(update, ALL, Approval::wave(FULL_WAVE))
            .expect("valid approval");
        self.set_rules(node, rules);
    }

    fn completed(&self, id: PeerId) -> Option<Millis> {
        self.nodes[&id].completed_at
    }
}

/// An approval for a whole group and everything below its members.
fn subtree(wave: u16) -> Approval {
    Approval {
        subtree: true,
        ..Approval::wave(wave)
    }
}

/// A chain root -> n1 -> ... of `N` nodes (keys 1..=N), each member dialling its parent.
fn chain<const N: usize>(h: &mut Harness) -> [PeerId; N] {
    let ids: [PeerId; N] = std::array::from_fn(|i| key(i as u8 + 1));
    h.add(ids[0], Role::Root, 1);
    for i in 1..N {
        h.add(ids[i], Role::Member { parent: ids[i - 1] }, i as u64 + 1);
        h.attach(ids[i - 1], ids[i]);
    }
    ids
}

/// root -> (a, b) -> (a1, a2, b1, b2), all members dialling their parents.
fn seven_node_tree(h: &mut Harness) -> [PeerId; 7] {
    let ids = [key(1), key(2), key(3), key(4), key(5), key(6), key(7)];
    let [root, a, b, a1, a2, b1, b2] = ids;
    h.add(root, Role::Root, 1);
    for (i, (child, parent)) in [(a, root), (b, root), (a1, a), (a2, a), (b1, b), (b2, b)]
        .into_iter()
        .enumerate()
    {
        h.add(child, Role::Member { parent }, 10 + i as u64);
    }
    for (child, parent) in [(a, root), (b, root), (a1, a), (a2, a), (b1, b), (b2, b)] {
        h.attach(parent, child);
    }
    ids
}

#[test]
fn every_node_of_a_two_level_tree_gets_every_chunk() {
    let mut h = Harness::new(1, 2);
    let ids = seven_node_tree(&mut h);
    let m = update(100, &root_secret());
    h.publish_at_root(ids[0], &m);
    h.run(60_000);
    let want: HashSet<Hash> = m.manifest.chunk_refs().map(|c| c.hash()).collect();
    for id in &ids[1..] {
        let node = &h.nodes[id];
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
            node.engine.stats().bytes_from_parent,
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
    let start = h.now;
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
    assert_eq!(h.nodes[&n2].store.len(), 200);
    // One `Have` when it connected, then one per pause between announcements (and
    // the last chunk at once), not one per chunk.
    let pause = Config::default().announce_interval;
    let haves = h.nodes[&n2].haves_received;
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
    h.node(a).corrupt = 25;
    let m = update(40, &root_secret());
    h.publish_at_root(root, &m);
    h.run(600_000);
    let want: HashSet<Hash> = m.manifest.chunk_refs().map(|c| c.hash()).collect();
    let child = &h.nodes[&c];
    assert_eq!(child.store, want);
    assert_eq!(child.engine.stats().bad_chunks, 25);
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
    let held_when_cut = h.nodes[&a].store.len();
    assert!(
        held_when_cut > 0 && held_when_cut < 300,
        "cut at {held_when_cut} chunks"
    );
    h.run(20_000);
    assert_eq!(h.nodes[&a].engine.parent_connected(), Some(false));
    assert_eq!(
        h.nodes[&a].store.len(),
        held_when_cut,
        "fetched from a lost parent"
    );
    // Meanwhile a still serves its own child what it holds.
    assert_eq!(h.nodes[&c].store.len(), held_when_cut);
    assert!(h.nodes[&a].events.contains(&Event::ParentLost));

    h.cut.clear();
    h.run(200_000);
    assert_eq!(
        h.nodes[&a].engine.parent_connected(),
        Some(true),
        "never reconnected"
    );
    assert_eq!(h.nodes[&c].store.len(), 300);
    // What was in flight when the link broke is asked again; nothing arrives twice.
    assert_eq!(
        h.nodes[&a].chunks_received, 300,
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
    let held = h.nodes[&a].store.len();
    assert!(held > 0 && held < 200);

    // Crash: the engine is gone, the store stays. A new engine starts from the store.
    h.disconnect(root, a);
    let saved = h.snapshot(a);
    h.restart(a, Role::Member { parent: root }, 3, &saved);
    h.run(600_000);
    assert_eq!(h.nodes[&a].store.len(), 200);
    assert_eq!(h.nodes[&a].chunks_requested, (200 - held) as u64);
}

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
        h.nodes[&root]
            .events
            .contains(&Event::Refused { peer: stranger })
    );
    assert!(h.nodes[&stranger].store.is_empty());
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
        h.nodes[&a].engine.progress().is_empty(),
        "a forged manifest was accepted"
    );
    assert!(
        h.nodes[&a]
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
    let misbehaved = h.nodes[&a]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Misbehaved { .. }))
        .count();
    assert_eq!(misbehaved, 2);
    assert!(h.nodes[&a].engine.progress().is_empty());
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
        !h.links.contains_key(&pair(root, a)),
        "the revoked child is still connected"
    );
    assert!(!serves(&mut h, root, a, &m.id));
    // When it dials again, it is refused.
    h.with(a, |e, now| e.handle_timeout(now + 60_000));
    h.run(200_000);
    assert!(h.nodes[&root].events.contains(&Event::Refused { peer: a }));
}

/// The updates available to `node` by its own rules, among `updates`.
fn available(h: &Harness, node: PeerId, updates: &[Hash]) -> Vec<Hash> {
    updates
        .iter()
        .filter(|u| h.nodes[&node].engine.availability().is_available(u))
        .copied()
        .collect()
}

fn holds_all(h: &Harness, node: PeerId, m: &SignedManifest) -> bool {
    m.manifest
        .chunk_refs()
        .all(|c| h.nodes[&node].store.contains(&c.hash()))
}

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
        h.run(h.now + 1_000);
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
        h.nodes[&c].store.len() == 8,
        "the leaf fetched an unapproved update"
    );

    // c goes offline; meanwhile every level changes its rules twice.
    h.cut.insert(pair(b, c));
    h.disconnect(b, c);
    for node in [root, a, b] {
        h.approve_for_children(node, u2.id);
        h.run(h.now + 500);
        let mut rules = h.own_rules(node);
        assert!(rules.decline(&u1.id, ALL));
        h.set_rules(node, rules);
        h.run(h.now + 500);
    }
    assert_eq!(available(&h, b, &ids), vec![u2.id]);
    assert_eq!(available(&h, c, &ids), vec![u1.id], "c heard while offline");
    let stored_before = h.nodes[&c].rules_stored.len();

    h.cut.clear();
    h.run(h.now + 120_000);
    // c holds the newest version of each issuer, took each once, and acts on it.
    for issuer in [root, a, b] {
        assert_eq!(
            h.nodes[&c].engine.rules().version(&issuer),
            h.nodes[&b].engine.rules().version(&issuer),
        );
    }
    assert_eq!(
        h.nodes[&c].rules_stored.len() - stored_before,
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
    let held = h.nodes[&b]
        .engine
        .rules()
        .get(&root)
        .cloned()
        .expect("held");
    let old = held.clone();
    // A newer version at the root, so that `old` is a replay.
    let mut rules = h.own_rules(root);
    rules.issued = 1;
    h.set_rules(root, rules.clone());
    h.run(h.now + 1_000);
    let current = h.nodes[&b]
        .engine
        .rules()
        .get(&root)
        .cloned()
        .expect("held");
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
    // when nothing happens).
    h.now = h.now.max((3 + arbor::trust::CLOCK_TOLERANCE) * 1000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("signature", bad_signature),
        ("not an ancestor", stranger.bytes),
        ("rollback", old.bytes.clone()),
        ("expired", expired.bytes),
        ("not valid CBOR", b"\xa1garbage".to_vec()),
    ];
    for (what, bytes) in cases {
        let before = h.nodes[&b].events.len();
        let sets: Vec<Arc<[u8]>> = vec![bytes.into()];
        h.with(b, |e, now| {
            e.handle_message(a, Control::Rules { sets }, now)
        });
        let refusals: Vec<String> = h.nodes[&b].events[before..]
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
            h.nodes[&b].engine.rules().get(&root),
            Some(&current),
            "{what}: changed what b holds"
        );
    }
    // The refusals go up: the root's roll-up names b and each reason.
    h.run(h.now + 10_000);
    let refusals = h.nodes[&root].engine.report(h.now).refusals;
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    assert!(refusals.iter().all(|r| r.node == b));
    assert!(refusals.iter().any(|r| r.reason.contains("rollback")));
    // A rule set of b's own parent that b's grandparent never signed is fine on its
    // own (a signs for a), but a set signed by a that claims to be the root's is not.
    let before = h.nodes[&b].events.len();
    let sets: Vec<Arc<[u8]>> = vec![wrong_signer.bytes.into()];
    h.with(b, |e, now| {
        e.handle_message(a, Control::Rules { sets }, now)
    });
    assert!(
        !h.nodes[&b].events[before..]
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
    h.run(h.now + 10_000);
    assert_eq!(available(&h, b, &[allowed.id, other.id]), vec![allowed.id]);
    assert!(holds_all(&h, b, &allowed));
    assert_eq!(
        h.nodes[&b].store.len(),
        4,
        "b fetched what a could not give"
    );
    assert!(h.nodes[&b].events.contains(&Event::OfferWithheld {
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
            let complaints: Vec<&Event> = h.nodes[c]
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
    h.run(h.now + 1_000);
    h.publish_only(root, &m);
    h.approve_for_children(root, m.id);
    h.run(h.now + 30_000);
    let (inside, outside): (Vec<PeerId>, Vec<PeerId>) = children
        .iter()
        .partition(|c| arbor::rules::in_wave(&m.id, c, wave));
    assert!(!inside.is_empty() && !outside.is_empty());
    for c in &inside {
        assert!(
            holds_all(&h, *c, &m),
            "a child in the wave lacks the update"
        );
        assert!(h.nodes[c].haves_received > 0);
    }
    for c in &outside {
        assert!(
            h.nodes[c].store.is_empty(),
            "a child outside the wave got chunks"
        );
        assert_never_told(&h, *c);
    }
}

/// `node`, outside a wave, was neither offered the update nor told of its chunks.
fn assert_never_told(h: &Harness, node: PeerId) {
    let n = &h.nodes[&node];
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
    h.run(h.now + 20_000);
    assert!(holds_all(&h, a, &u) && holds_all(&h, a1, &u));
    assert_eq!(
        h.nodes[&a].store.len(),
        6,
        "a prefetched what no child may have"
    );
    assert!(
        h.nodes[&b].store.is_empty(),
        "b prefetched what no child may have"
    );
    // Once b's admin approves v, b fetches it and its children get it.
    h.approve_for_children(b, v.id);
    h.run(h.now + 20_000);
    assert!(holds_all(&h, b, &v));
    assert!(!holds_all(&h, b, &u));
}

/// Each node's own state per update, counted straight from the engines: what a roll-up
/// must add up to.
fn leaf_counts(h: &Harness, nodes: &[PeerId]) -> BTreeMap<Hash, arbor::report::Counts> {
    let mut sum: BTreeMap<Hash, arbor::report::Counts> = BTreeMap::new();
    for n in nodes {
        for s in h.nodes[n].engine.report(h.now).own {
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
    h.run(h.now + 30_000);
    // Installers have their say on two leaves.
    h.with(a2, |e, now| {
        e.set_outcome(&u.id, Outcome::Failed("disk full".into()), now)
    });
    h.with(b1, |e, now| {
        e.set_outcome(&u.id, Outcome::Installed(None), now)
    });
    h.run(h.now + 30_000);

    let report = h.nodes[&root].engine.report(h.now);
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
    h.run(h.now + 10_000);
    h.cut.insert(pair(a, leaf));
    h.disconnect(a, leaf);
    h.with(leaf, |e, now| {
        e.set_outcome(&m.id, Outcome::Installed(None), now)
    });
    h.run(h.now + 5_000);
    let before = h.nodes[&root].engine.report(h.now).subtree_counts(&m.id);
    assert_eq!(before.get(arbor::report::State::Installed), 0);
    // Back: the leaf sends its snapshot at once.
    h.cut.clear();
    h.run(h.now + 120_000);
    let after = h.nodes[&root].engine.report(h.now).subtree_counts(&m.id);
    assert_eq!(after.get(arbor::report::State::Installed), 1);
    assert_eq!(after.total(), 3, "a node was counted twice or not at all");
    // Delivering the same report again changes nothing.
    let held = h.nodes[&a]
        .engine
        .rollup()
        .get(&leaf)
        .cloned()
        .expect("held");
    let again: Arc<[u8]> = held.bytes.clone().into();
    h.with(a, |e, now| {
        e.handle_message(leaf, Control::Report { report: again }, now)
    });
    h.run(h.now + 5_000);
    assert_eq!(
        h.nodes[&root].engine.report(h.now).subtree_counts(&m.id),
        after
    );
}

#[test]
fn garbage_and_forged_reports_are_refused_and_change_nothing() {
    let mut h = Harness::new(1, 2);
    let [root, a, b] = chain(&mut h);
    let m = update(3, &root_secret());
    h.publish_at_root(root, &m);
    h.run(h.now + 10_000);
    let before = h.nodes[&a].engine.rollup().clone();
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
        h.run(h.now + 1_000);
    }
    // Nothing forged was taken. (Refused reports are offences: the third bans b, whose
    // session ends; when it is back it reports afresh, with the same content.)
    let held = |r: &arbor::report::Rollup| {
        let held = &r.get(&b).expect("a report of b is held").report;
        (held.node, held.own.clone(), held.subtree.clone())
    };
    assert_eq!(held(h.nodes[&a].engine.rollup()), held(&before));
    assert!(
        h.nodes[&a]
            .events
            .iter()
            .any(|e| matches!(e, Event::Banned { peer, .. } if *peer == b))
    );
    let refused = h.nodes[&a]
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
    assert!(h.nodes[&root].engine.rollup().get(&b).is_none());
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
    h.run(h.now + 10_000);
    h.with(children[0], |e, now| {
        e.set_outcome(&m.id, Outcome::Failed("hook exited 1".into()), now)
    });
    h.run(h.now + 10_000);
    assert!(
        !h.nodes[&root]
            .events
            .iter()
            .any(|e| matches!(e, Event::Halted { .. })),
        "halted below the threshold"
    );
    h.with(children[1], |e, now| {
        e.set_outcome(&m.id, Outcome::Failed("hook exited 1".into()), now)
    });
    h.run(h.now + 10_000);
    let halts: Vec<&Event> = h.nodes[&root]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Halted { .. }))
        .collect();
    assert_eq!(halts.len(), 1, "{halts:?}");
    let held = h.nodes[&root].engine.rules().get(&root).expect("own rules");
    assert_eq!(held.version, version + 1);
    let halted = held
        .rules
        .approvals
        .values()
        .next()
        .and_then(|a| a.halted.clone());
    assert!(halted.is_some_and(|h| h.reason.contains("2 nodes failed")));
    assert_eq!(
        h.nodes[&root].rules_stored.last(),
        Some(&root),
        "the halt was not kept"
    );
    // Every child holds the halted rules, and the update is no longer available to them.
    for c in &children {
        assert_eq!(h.nodes[c].engine.rules().version(&root), Some(version + 1));
        assert!(available(&h, *c, &[m.id]).is_empty());
    }
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
    h.run(h.now + 10_000);
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

    let now = h.now;
    let resumed = [&saved, &listed_otherwise].map(|saved| {
        let mut e = Engine::new(
            Role::Member { parent: root },
            root_secret().public(),
            secret_of(a),
            h.nodes[&a].engine.path().to_vec(),
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
    let before = &h.nodes[&a].engine;
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
    h.run(h.now + 10_000);
    assert_eq!(
        h.nodes[&root]
            .engine
            .report(h.now)
            .subtree_counts(&m.id)
            .total(),
        3
    );
    h.with(a, |e, now| e.remove_child(&leaf, now));
    h.run(h.now + 10_000);
    let report = h.nodes[&root].engine.report(h.now);
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
    h.run(h.now + 60_000);
    assert!(holds_all(&h, leaf, &m));
    for n in [a, leaf] {
        let sent = h.nodes[&n].engine.stats().reports_sent;
        // At most one per 500 ms of the download, and a few around it.
        assert!(sent <= 12, "{sent} reports for a 3 s download");
    }
    // Quiet now: nothing more is sent while nothing changes.
    let before = h.nodes[&leaf].engine.stats().reports_sent;
    h.with(leaf, |e, now| e.handle_timeout(now + 10_000));
    h.run(h.now + 60_000);
    assert_eq!(h.nodes[&leaf].engine.stats().reports_sent, before);
}

#[test]
fn damaged_kept_rule_sets_and_reports_are_refused_at_restart_and_change_nothing() {
    let mut h = Harness::new(1, 2);
    let [root, a, b] = chain(&mut h);
    let m = update(3, &root_secret());
    h.publish_at_root(root, &m);
    h.run(h.now + 10_000);
    let rules = h.nodes[&a].engine.rules().clone();
    let rollup = h.nodes[&a].engine.rollup().clone();
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
    let now = h.now;
    let dropped = h.node(a).engine.resume(&saved, now);
    assert_eq!(dropped.len(), 8, "{dropped:?}");
    assert_eq!(h.nodes[&a].engine.rules(), &rules);
    assert_eq!(h.nodes[&a].engine.rollup(), &rollup);
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
    assert_eq!(h.nodes[&leaf].chunks_requested, 0, "fetched while paused");
    assert!(h.completed(leaf).is_none());
    // It opens: the node fetches everything, once.
    h.with(leaf, |e, now| assert!(e.set_parent_paused(false, now)));
    h.run(60_000);
    assert!(h.completed(leaf).is_some(), "the transfer did not resume");
    assert_eq!(h.nodes[&leaf].chunks_requested, 50);
}

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
        .map(|l| h.nodes[&root].chunks_sent.get(l).copied().unwrap_or(0))
        .sum()
}

#[test]
fn siblings_at_a_site_take_each_chunk_across_the_uplink_once() {
    let mut h = Harness::new(1, 10);
    let (root, leaves, m) = site_of_leaves(&mut h, 4, 200);
    h.run(600_000);
    for leaf in &leaves {
        assert!(holds_all(&h, *leaf, &m), "a leaf did not get everything");
        let stats = h.nodes[leaf].engine.stats();
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
    let report = h.nodes[&leaves[0]].engine.report(last);
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
            .all(|l| h.nodes[l].engine.stats().bytes_from_siblings == 0)
    );
}

#[test]
fn a_sibling_that_sends_bad_bytes_is_banned_and_its_chunks_come_from_the_parent() {
    let mut h = Harness::new(1, 10);
    let (root, leaves, m) = site_of_leaves(&mut h, 3, 120);
    h.node(leaves[0]).corrupt = u32::MAX;
    h.run(600_000);
    for leaf in &leaves[1..] {
        assert!(holds_all(&h, *leaf, &m), "a leaf did not get everything");
        let n = &h.nodes[leaf];
        assert!(
            n.events
                .iter()
                .any(|e| matches!(e, Event::Misbehaved { peer, reason, .. }
                if *peer == leaves[0] && reason.contains("banned"))),
            "the corrupting sibling was not banned"
        );
        assert_eq!(n.engine.stats().siblings_banned, 1);
        assert!(
            !n.engine
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
    h.run(h.now + 2_000);
    // ...and later it would work: nothing else changes at the site.
    h.cut.remove(&pair(leaves[0], leaves[1]));
    h.run(h.now + 60_000);
    for (leaf, other) in [(leaves[0], leaves[1]), (leaves[1], leaves[0])] {
        assert!(
            h.nodes[&leaf]
                .engine
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
    h.run(h.now + 400);
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
        h.nodes[&leaves[0]]
            .events
            .iter()
            .any(|e| matches!(e, Event::Misbehaved { peer, .. } if *peer == stranger))
    );
    assert!(!h.nodes[&leaves[0]].engine.may_request(&stranger));
    assert!(!serves(&mut h, leaves[0], stranger, &m.id));
    // A connected sibling may ask, and is served.
    assert!(h.nodes[&leaves[0]].engine.may_request(&leaves[1]));
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
    assert_eq!(h.nodes[&leaves[1]].engine.stats().bytes_from_parent, 0);
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
