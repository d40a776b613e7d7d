//! The harness the engine's tests drive small trees with: engines with keys of the
//! test's choosing, on the simulator's virtual network (`arbor::sim::vnet`: its links,
//! its queue and its event loop, as a simulated fleet runs on them). What the tests need
//! on top is here: building a tree (nodes, children, sites), a store of chunk hashes and
//! what else a node keeps, counts of what moved, the admin's rule changes, and the
//! faults a test injects: a server that sends bad bytes, pairs that cannot reach each
//! other, a link that breaks, a node that restarts from its store.

use arbor::content::Hash;
use arbor::engine::bitmap::Bitmap;
use arbor::engine::{
    Config, Control, Engine, Event, Millis, Output, PeerId, Role, RuleChange, Saved, SavedChild,
    Served,
};
use arbor::rules::{ALL, Approval, FULL_WAVE, Rules, SignedRules};
use arbor::sim::vnet::{Driver, Link, Network, Sent, Shape, Vnet, chunk_wire_bytes};
use arbor::trust::{SecretKey, SignedManifest, member};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::sync::Arc;

/// The length of every chunk of the tests' updates.
pub const CHUNK: u32 = 64 * 1024;

/// How much faster a site's members reach each other than across its uplink: a LAN
/// behind a WAN link.
const LAN_SPEEDUP: f64 = 10.0;

/// Rules expire long after any test's virtual time (Unix seconds).
pub const RULES_EXPIRE: u64 = 4_000_000_000;

pub fn key(i: u8) -> PeerId {
    SecretKey::from_seed([i; 32]).public()
}

pub fn root_secret() -> SecretKey {
    SecretKey::from_seed([200; 32])
}

/// The node key behind `key(i)`.
pub fn secret_of(id: PeerId) -> SecretKey {
    (0..=u8::MAX)
        .map(|i| SecretKey::from_seed([i; 32]))
        .find(|s| s.public() == id)
        .expect("a node of the harness")
}

pub fn pair(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a < b { (a, b) } else { (b, a) }
}

/// What a test sees of a node besides its engine.
#[derive(Default)]
pub struct Node {
    /// Chunk hashes held: the store.
    pub store: HashSet<Hash>,
    /// Serve this many chunks with wrong bytes before behaving.
    pub corrupt: u32,
    pub completed_at: Option<Millis>,
    pub events: Vec<Event>,
    /// Chunks this node asked for, in total.
    pub chunks_requested: u64,
    /// Chunks this node sent, to each peer.
    pub chunks_sent: BTreeMap<PeerId, u64>,
    /// Good chunks delivered to this node, in total.
    pub chunks_received: u64,
    /// The issuers of the rule sets the engine asked to persist, in order.
    pub rules_stored: Vec<PeerId>,
    /// `Have` messages delivered to this node.
    pub haves_received: u64,
    /// What its store keeps besides chunks, to start again from: its children, the
    /// manifests it took up, and the rule sets and reports the engine asked to keep.
    pub kept: Saved,
}

/// The tree's shape, as the virtual network sees it: keys, parents, sites and links.
#[derive(Default)]
pub struct Tree {
    keys: Vec<PeerId>,
    index: BTreeMap<PeerId, u32>,
    parents: Vec<Option<u32>>,
    /// The site each node is at, by number.
    sites: Vec<Option<usize>>,
    links: Vec<Link>,
    site_count: usize,
}

impl Shape for Tree {
    fn key(&self, i: u32) -> PeerId {
        self.keys[i as usize]
    }

    fn node_of(&self, key: &PeerId) -> Option<u32> {
        self.index.get(key).copied()
    }

    fn parent(&self, i: u32) -> Option<u32> {
        self.parents[i as usize]
    }

    fn link(&self, i: u32) -> &Link {
        &self.links[i as usize]
    }

    fn same_site(&self, a: u32, b: u32) -> bool {
        matches!((self.sites[a as usize], self.sites[b as usize]), (Some(x), Some(y)) if x == y)
    }

    /// Every node of a test may pass chunks on: each hears of them as they land.
    fn hears_each_chunk(&self, _: u32) -> bool {
        true
    }
}

pub struct Harness {
    vnet: Vnet<Infallible>,
    tree: Tree,
    nodes: Vec<Node>,
    /// Pairs that cannot reach each other: dials between them fail.
    pub cut: BTreeSet<(PeerId, PeerId)>,
    /// Every node's one-way latency to its parent (and to its site).
    latency: u32,
    /// Bytes per second of every node's links, each way, and of a site's uplink.
    rate: f64,
}

impl Harness {
    /// A harness whose nodes are `latency` ms from their parents, with links (each
    /// node's, each way, and a site's uplink) that carry a chunk of [`CHUNK`] bytes,
    /// with its framing, in `chunk_time` ms.
    pub fn new(latency: u32, chunk_time: Millis) -> Harness {
        Harness {
            vnet: Vnet::new(Network::default(), 0, 0),
            tree: Tree::default(),
            nodes: Vec::new(),
            cut: BTreeSet::new(),
            latency,
            rate: chunk_wire_bytes(CHUNK) as f64 * 1000.0 / chunk_time as f64,
        }
    }

    fn index(&self, id: PeerId) -> u32 {
        self.tree.node_of(&id).expect("a node of the harness")
    }

    pub fn node(&self, id: PeerId) -> &Node {
        &self.nodes[self.index(id) as usize]
    }

    pub fn node_mut(&mut self, id: PeerId) -> &mut Node {
        let i = self.index(id);
        &mut self.nodes[i as usize]
    }

    pub fn engine(&self, id: PeerId) -> &Engine {
        self.vnet.engine(self.index(id)).expect("a running node")
    }

    pub fn engine_mut(&mut self, id: PeerId) -> &mut Engine {
        let i = self.index(id);
        self.vnet.engine_mut(i).expect("a running node")
    }

    /// Virtual time now (the engines' clocks read the same).
    pub fn now(&self) -> Millis {
        self.vnet.now()
    }

    /// An engine for node `id` in `role`, its path taken from its parent's.
    fn engine_for(&self, id: PeerId, role: Role, seed: u64) -> Engine {
        let path = match &role {
            Role::Root => vec![id],
            Role::Member { parent } => {
                let mut path = self.engine(*parent).path().to_vec();
                path.push(id);
                path
            }
        };
        Engine::new(
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
        )
    }

    /// Adds node `id`, running, with links of its own and connected to nothing.
    pub fn add(&mut self, id: PeerId, role: Role, seed: u64) {
        let engine = self.engine_for(id, role.clone(), seed);
        let parent = match role {
            Role::Root => None,
            Role::Member { parent } => self.tree.node_of(&parent),
        };
        let net = self.vnet.network_mut();
        let (down, up) = (net.add(self.rate) as u32, net.add(self.rate) as u32);
        let i = self.vnet.add_node();
        self.tree.keys.push(id);
        self.tree.index.insert(id, i);
        self.tree.parents.push(parent);
        self.tree.sites.push(None);
        self.tree.links.push(Link::new(self.latency, down, up));
        self.vnet.start(i, engine);
        self.nodes.push(Node::default());
    }

    /// Places `children` of `parent` at one site behind one uplink: the parent's bytes
    /// to each of them cross it, they are each other's siblings, and their own links
    /// are a LAN's, [`LAN_SPEEDUP`] times as fast. The parent's engine sends them the
    /// site's lists at once.
    pub fn site(&mut self, parent: PeerId, children: &[PeerId], name: &str) {
        let (rate, lan) = (self.rate, self.rate * LAN_SPEEDUP);
        let net = self.vnet.network_mut();
        let uplink = net.add(rate) as u32;
        net.add(rate);
        let site = self.tree.site_count;
        self.tree.site_count += 1;
        for c in children {
            let i = self.index(*c) as usize;
            let net = self.vnet.network_mut();
            let (down, up) = (net.add(lan) as u32, net.add(lan) as u32);
            let link = &mut self.tree.links[i];
            (link.down, link.up, link.site_link) = (down, up, uplink);
            self.tree.sites[i] = Some(site);
        }
        self.with(parent, |e, _| {
            for c in children {
                e.set_child_site(*c, Some(name));
            }
        });
    }

    /// What `id`'s store holds now, as a snapshot to start again from: what it kept,
    /// with the chunks held of each update and the engine's report sequence number.
    pub fn snapshot(&self, id: PeerId) -> Saved {
        let node = self.node(id);
        let mut saved = node.kept.clone();
        saved.report_seq = self.engine(id).report_seq();
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
    pub fn restart(&mut self, id: PeerId, role: Role, seed: u64, saved: &Saved) {
        let engine = self.engine_for(id, role, seed);
        let i = self.index(id);
        let old = std::mem::take(&mut self.nodes[i as usize]);
        self.nodes[i as usize] = Node {
            store: old.store,
            kept: old.kept,
            ..Node::default()
        };
        self.vnet.start(i, engine);
        self.with(id, |e, now| {
            let dropped = e.resume(saved, now);
            assert!(dropped.is_empty(), "{dropped:?}");
            e.handle_timeout(now);
        });
    }

    /// `child` is a certified child of `parent` (with a certificate `parent` signed, so
    /// that it can prove its failures) and dials it now.
    pub fn attach(&mut self, parent: PeerId, child: PeerId) {
        let now = self.now();
        self.engine_mut(parent).add_child(child, false, now);
        self.node_mut(parent).kept.children.push(SavedChild {
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
        self.engine_mut(child)
            .set_certificate(cert)
            .expect("the parent's certificate");
        self.with(child, |e, now| e.handle_timeout(now));
    }

    /// Runs an input on a node's engine, then carries out everything it asks for.
    pub fn with(&mut self, id: PeerId, input: impl FnOnce(&mut Engine, Millis)) {
        let i = self.index(id);
        self.drive(i, input);
    }

    /// The link between `a` and `b` breaks: both ends lose the connection at once, and
    /// each engine hears of it.
    pub fn disconnect(&mut self, a: PeerId, b: PeerId) {
        let (i, j) = (self.index(a), self.index(b));
        for (x, y, peer) in [(i, j, b), (j, i, a)] {
            if self.conn(x, y) != 0 {
                self.set_conn(x, y, 0);
                self.drive(x, |e, now| e.handle_disconnected(peer, now));
            }
        }
    }

    /// Whether `a` holds a connection with `b`.
    pub fn holds_connection(&self, a: PeerId, b: PeerId) -> bool {
        self.conn(self.index(a), self.index(b)) != 0
    }

    /// Runs every event until `limit`. The clock stops at the last one: it stands
    /// still while nothing happens.
    pub fn run(&mut self, limit: Millis) {
        self.run_until(limit + 1);
    }

    /// Runs every event before `t`, then moves the clock on to `t`.
    pub fn skip_to(&mut self, t: Millis) {
        self.run_until(t);
        self.vnet.idle_until(t);
    }

    /// The root publishes `manifest` (its store holds every chunk) and approves it for
    /// its whole tree.
    pub fn publish_at_root(&mut self, root: PeerId, manifest: &Arc<SignedManifest>) {
        self.publish_only(root, manifest);
        let mut rules = self.own_rules(root);
        rules
            .approve(manifest.id, ALL, subtree(FULL_WAVE))
            .expect("valid approval");
        self.set_rules(root, rules);
    }

    /// The root publishes `manifest` without approving it.
    pub fn publish_only(&mut self, root: PeerId, manifest: &Arc<SignedManifest>) {
        let all = vec![true; manifest.manifest.distinct_chunks().0];
        for c in manifest.manifest.chunk_refs() {
            self.node_mut(root).store.insert(c.hash());
        }
        let m = manifest.clone();
        self.with(root, |e, now| e.add_local_update(m, &all, now));
    }

    /// The rules `node` holds for its children, or empty ones.
    pub fn own_rules(&self, node: PeerId) -> Rules {
        self.engine(node)
            .rules()
            .get(&node)
            .map_or_else(|| Rules::new(node, 0), |r| r.rules.clone())
    }

    /// `node`'s admin sets `rules` (their groups and approvals): its engine signs them
    /// as its next version.
    pub fn set_rules(&mut self, node: PeerId, rules: Rules) -> Arc<SignedRules> {
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
    pub fn approve_for_children(&mut self, node: PeerId, update: Hash) {
        let mut rules = self.own_rules(node);
        rules
            .approve(update, ALL, Approval::wave(FULL_WAVE))
            .expect("valid approval");
        self.set_rules(node, rules);
    }

    pub fn completed(&self, id: PeerId) -> Option<Millis> {
        self.node(id).completed_at
    }
}

impl Driver for Harness {
    type Shape = Tree;
    type Own = Infallible;

    fn vnet(&mut self) -> &mut Vnet<Infallible> {
        &mut self.vnet
    }

    fn vnet_ref(&self) -> &Vnet<Infallible> {
        &self.vnet
    }

    fn shape(&self) -> &Tree {
        &self.tree
    }

    fn own(&mut self, ev: Infallible) {
        match ev {}
    }

    fn keep(&mut self, i: u32, engine: &mut Engine, out: Output) {
        let now = self.vnet.engine_now();
        let node = &mut self.nodes[i as usize];
        match out {
            Output::StoreManifest { manifest } => {
                // The store answers at once with the chunks it already holds.
                let update = manifest.id;
                node.kept.updates.push((manifest, Bitmap::new(0)));
                let have: Vec<bool> = (0..)
                    .map_while(|c| engine.chunk(&update, c))
                    .map(|(h, _)| node.store.contains(&h))
                    .collect();
                engine.handle_local_have(update, &have, now);
            }
            Output::StoreRules { issuer, rules } => {
                node.rules_stored.push(issuer);
                node.kept.keep_rules(issuer, rules);
            }
            Output::StoreReport { child, report } => node.kept.keep_report(child, report),
            // No node of these trees installs (tests/installer.rs drives installers).
            Output::Installer(_) => {}
            Output::Event(e) => {
                if matches!(e, Event::UpdateComplete { .. }) {
                    node.completed_at = Some(now);
                }
                node.events.push(e);
            }
            // The network carries out the rest.
            Output::Send { .. }
            | Output::Fetch { .. }
            | Output::Dial { .. }
            | Output::Disconnect { .. } => {}
        }
    }

    fn saw(&mut self, i: u32, out: &Output) {
        if let Output::Fetch { count, .. } = out {
            self.nodes[i as usize].chunks_requested += u64::from(*count);
        }
    }

    fn delivered(&mut self, to: u32, _: u32, msg: &Control) {
        if matches!(msg, Control::Have { .. }) {
            self.nodes[to as usize].haves_received += 1;
        }
    }

    /// The driver stores a chunk only after its hash matched.
    fn landed(&mut self, to: u32, _: u32, update: &Hash, chunks: &[Sent]) {
        let Some(engine) = self.vnet.engine(to) else {
            return;
        };
        let node = &mut self.nodes[to as usize];
        for c in chunks.iter().filter(|c| c.good) {
            if let Some((hash, _)) = engine.chunk(update, c.index) {
                node.store.insert(hash);
                node.chunks_received += 1;
            }
        }
    }

    fn sends_good(&mut self, server: u32, client: u32) -> bool {
        let peer = self.tree.key(client);
        let node = &mut self.nodes[server as usize];
        *node.chunks_sent.entry(peer).or_default() += 1;
        if node.corrupt > 0 {
            node.corrupt -= 1;
            return false;
        }
        true
    }

    fn reachable(&self, from: u32, to: u32) -> bool {
        !self
            .cut
            .contains(&pair(self.tree.key(from), self.tree.key(to)))
    }
}

/// Whether `server` answers `peer`'s request for chunk 0 of `update` with bytes.
pub fn serves(h: &mut Harness, server: PeerId, peer: PeerId, update: &Hash) -> bool {
    matches!(
        h.engine_mut(server).serve(&peer, update, 0..1, false)[..],
        [Served::Data { .. }]
    )
}

/// An approval for a whole group and everything below its members.
pub fn subtree(wave: u16) -> Approval {
    Approval {
        subtree: true,
        ..Approval::wave(wave)
    }
}

/// A chain root -> n1 -> ... of `N` nodes (keys 1..=N), each member dialling its parent.
pub fn chain<const N: usize>(h: &mut Harness) -> [PeerId; N] {
    let ids: [PeerId; N] = std::array::from_fn(|i| key(i as u8 + 1));
    h.add(ids[0], Role::Root, 1);
    for i in 1..N {
        h.add(ids[i], Role::Member { parent: ids[i - 1] }, i as u64 + 1);
        h.attach(ids[i - 1], ids[i]);
    }
    ids
}

/// root -> (a, b) -> (a1, a2, b1, b2), all members dialling their parents.
pub fn seven_node_tree(h: &mut Harness) -> [PeerId; 7] {
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

/// The updates available to `node` by its own rules, among `updates`.
pub fn available(h: &Harness, node: PeerId, updates: &[Hash]) -> Vec<Hash> {
    updates
        .iter()
        .filter(|u| h.engine(node).availability().is_available(u))
        .copied()
        .collect()
}

pub fn holds_all(h: &Harness, node: PeerId, m: &SignedManifest) -> bool {
    m.manifest
        .chunk_refs()
        .all(|c| h.node(node).store.contains(&c.hash()))
}
