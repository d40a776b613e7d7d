//! The simulated fleet: one real [`Engine`] per node, driven in virtual time over the
//! modelled [`Network`].
//!
//! Owns the discrete-event loop and everything a daemon's driver does for its engine,
//! done in memory: connections (with epochs, so that whatever was in flight on a
//! closed connection is lost), serving chunk requests through [`Engine::serve`], the
//! store (manifests, which chunks are held, rule sets, children's reports, for restarts
//! after a crash), the installer of a leaf, and the scripted world around the tree:
//! publishing updates at the root, admins setting rules, and nodes going away and
//! coming back. It counts what the summary reports as it goes.
//!
//! Nodes are numbered tier by tier (the root is 0), so that a node's children are one
//! contiguous range and its parent is found by arithmetic.

use super::network::{Ms, Network};
use super::queue::Calendar;
use super::scenario::{ChurnKind, RuleBatch, Scenario};
use super::summary::Tally;
use crate::content::manifest::{ChunkRef, FileEntry, Manifest};
use crate::content::{DigestState, Hash};
use crate::engine::bitmap::Bitmap;
use crate::engine::{
    ChunkVerdict, Config, Control, Engine, Event, FetchId, Millis, Outcome, Output, PeerId, Role,
    Served,
};
use crate::rules::{Approval, Halt, Rules, SignedRules};
use crate::trust::{PublicKey, SecretKey, SignedManifest};
use std::collections::HashMap;
use std::sync::Arc;

/// Virtual time 0 is this Unix time (ms): rules and deadlines are in Unix seconds.
pub const EPOCH: Millis = 1_800_000_000_000;
/// How long a dial to a node that is not running takes to fail, beyond a round trip.
const DIAL_FAILS_AFTER: Ms = 1_000;
/// How long peers take to notice a crashed node (a graceful leave is seen at once).
const CRASH_NOTICED_AFTER: Ms = 10_000;
/// Rules are signed to outlive any run.
const RULES_LIFETIME: u64 = 10 * 365 * 24 * 3600;
/// The run ends this long after the last thing that changed, once the script is done.
const QUIET: Ms = 120_000;

/// No node: a marker in `u32` fields.
const NONE: u32 = u32::MAX;

/// What the store of one node holds.
#[derive(Default)]
struct Store {
    updates: Vec<(Arc<SignedManifest>, Bitmap)>,
    rules: Vec<(PublicKey, Arc<[u8]>)>,
    reports: Vec<(PeerId, Arc<[u8]>)>,
    report_seq: u64,
}

impl Store {
    fn update(&mut self, id: &Hash) -> Option<&mut (Arc<SignedManifest>, Bitmap)> {
        self.updates.iter_mut().find(|(m, _)| m.id == *id)
    }
}

struct Node {
    /// Boxed: an engine is moved out and back for every event it handles.
    engine: Option<Box<Engine>>,
    online: bool,
    /// The connection to the parent: its epoch, 0 when there is none.
    up_conn: u64,
    /// Connected siblings and their connections' epochs.
    siblings: Vec<(u32, u64)>,
    /// One-way latency to the parent.
    latency: u32,
    /// Index of its queues in the network: what it receives with, what it sends with.
    down: u32,
    up: u32,
    /// Its site's shared link (down queue; the up queue follows), or NONE.
    site_link: u32,
    site_latency: u32,
    /// The earliest timeout event scheduled for it.
    timer: Option<Millis>,
    store: Store,
    /// When each update was installed (leaves), by update index.
    installed: Vec<Option<Millis>>,
    failed: Vec<bool>,
    /// Fetch timeouts counted by the engines this node ran before its last restart.
    fetch_timeouts: u64,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: u32,
        from: u32,
        epoch: u64,
        msg: Control,
    },
    Serve {
        server: u32,
        client: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        first: u32,
        count: u32,
        direct: bool,
    },
    Elsewhere {
        to: u32,
        from: u32,
        epoch: u64,
        fetch: FetchId,
        index: u32,
        holder: PeerId,
    },
    /// Good chunks of a fetch (index, bytes on the wire), and whether the fetch ends.
    Chunks {
        to: u32,
        from: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        chunks: Vec<(u32, u32)>,
        end: bool,
    },
    Connect {
        a: u32,
        b: u32,
    },
    DialFailed {
        node: u32,
        peer: u32,
    },
    Disconnected {
        node: u32,
        peer: u32,
    },
    Timeout {
        node: u32,
    },
    Install {
        node: u32,
        update: u32,
    },
    Publish {
        update: u32,
    },
    SetRules {
        batch: u32,
    },
    Down {
        node: u32,
        crash: bool,
        back: Millis,
    },
    /// A node starts (`scripted`: a join or a return, not the start of the run).
    Up {
        node: u32,
        scripted: bool,
    },
    Sample,
}

/// A fleet ready to run.
pub struct World<'s> {
    sc: &'s Scenario,
    seed: u64,
    now: Millis,
    queue: Calendar<Ev>,
    nodes: Vec<Node>,
    keys: Vec<PublicKey>,
    /// Each node's key, made once: deriving one costs a scalar multiplication.
    secrets: Vec<SecretKey>,
    index: HashMap<PublicKey, u32, DigestState>,
    /// First node of each tier (tier 0 is the root's children); one past the last at
    /// the end.
    tier_start: Vec<u32>,
    net: Network,
    root_key: SecretKey,
    manifests: Vec<Arc<SignedManifest>>,
    batches: Vec<RuleBatch>,
    /// Rule-set bytes (hashed) to the batch that made them.
    rule_origin: HashMap<Hash, u32>,
    next_epoch: u64,
    /// Scripted events not yet run.
    scripted: usize,
    last_change: Millis,
    pub(super) tally: Tally,
    finished: bool,
    config: Config,
}

/// A deterministic value in [0, 1) for a (seed, purpose, node) triple.
fn draw(seed: u64, purpose: &str, node: u64) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(purpose.as_bytes());
    h.update(&node.to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn secret(seed: u64, node: u32) -> SecretKey {
    let mut h = blake3::Hasher::new();
    h.update(b"arbor/sim/node-key");
    h.update(&seed.to_le_bytes());
    h.update(&node.to_le_bytes());
    SecretKey::from_seed(*h.finalize().as_bytes())
}

/// The tier of node `i` given the first node of each tier (0 for the root as for the
/// first tier below it).
fn tier_of(tier_start: &[u32], i: u32) -> usize {
    tier_start.partition_point(|s| *s <= i).saturating_sub(1)
}

/// The keys of nodes `0..total`, derived on two threads (the same keys either way).
fn node_secrets(seed: u64, total: u32) -> Vec<SecretKey> {
    let half = total / 2;
    std::thread::scope(|s| {
        let upper = s.spawn(|| (half..total).map(|i| secret(seed, i)).collect::<Vec<_>>());
        let mut keys: Vec<SecretKey> = (0..half).map(|i| secret(seed, i)).collect();
        keys.extend(
            upper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        );
        keys
    })
}

impl<'s> World<'s> {
    /// Builds the tree, its links and its script.
    pub fn new(sc: &'s Scenario, seed: u64) -> Result<World<'s>, crate::trust::TrustError> {
        let sizes = sc.tier_sizes();
        let mut tier_start = vec![1u32];
        for s in &sizes {
            let last = *tier_start.last().unwrap_or(&1);
            tier_start.push(last + *s as u32);
        }
        let total = *tier_start.last().unwrap_or(&1) as usize;
        let secrets = node_secrets(seed, total as u32);
        let keys: Vec<PublicKey> = secrets.iter().map(SecretKey::public).collect();
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, i as u32))
            .collect();
        let mut net = Network::default();
        let mut nodes = Vec::with_capacity(total);
        let vary = |rate: f64, spread: f64, i: usize, what: &str| {
            rate * (1.0 + spread * (2.0 * draw(seed, what, i as u64) - 1.0))
        };
        // The root.
        let root_down = net.add(sc.root_up) as u32;
        let root_up = net.add(sc.root_up) as u32;
        nodes.push(Node::new(0, root_down, root_up, sc.updates.len()));
        let mut site_links: HashMap<u64, u32> = HashMap::new();
        for i in 1..total {
            let tier = tier_of(&tier_start, i as u32);
            let t = &sc.tiers[tier];
            let jitter = t.jitter as f64 * (2.0 * draw(seed, "latency", i as u64) - 1.0);
            let latency = (t.latency as f64 + jitter).round().max(0.0) as u32;
            let down = net.add(vary(t.down, t.spread, i, "down")) as u32;
            let up = net.add(vary(t.up, t.spread, i, "up")) as u32;
            let mut node = Node::new(latency, down, up, sc.updates.len());
            if let Some(site) = &t.site
                && let Some(link) = &site.link
            {
                let site_id = (i as u64 - u64::from(tier_start[tier])) / u64::from(site.size);
                let key = (tier as u64) << 40 | site_id;
                let q = *site_links.entry(key).or_insert_with(|| {
                    let d = net.add(link.down) as u32;
                    net.add(link.up);
                    d
                });
                node.site_link = q;
                node.site_latency = link.latency as u32;
            }
            nodes.push(node);
        }
        let root_key = secrets[0].clone();
        let manifests = sc
            .updates
            .iter()
            .enumerate()
            .map(|(u, up)| synthetic_update(&root_key, u as u64 + 1, &up.name, up.size, sc.chunk))
            .collect::<Result<Vec<_>, _>>()?;
        let batches = sc.rule_batches();
        let mut config = Config::default();
        if let Some(s) = sc.engine.span {
            config.span = s;
        }
        if let Some(w) = sc.engine.window {
            config.window = w;
        }
        if let Some(t) = sc.engine.fetch_timeout {
            config.fetch_timeout = t;
        }
        if let Some(t) = sc.engine.report_interval {
            config.report_interval = t;
        }
        if let Some(r) = sc.engine.report_rate {
            config.report_rate = r;
        }
        if let Some(t) = sc.engine.announce_interval {
            config.announce_interval = t;
        }
        let tally = Tally::new(sc, &tier_start, batches.len());
        let mut world = World {
            sc,
            seed,
            now: 0,
            queue: Calendar::default(),
            nodes,
            keys,
            secrets,
            index,
            tier_start,
            net,
            root_key,
            manifests,
            batches,
            rule_origin: HashMap::new(),
            next_epoch: 1,
            scripted: 0,
            last_change: 0,
            tally,
            finished: false,
            config,
        };
        world.script();
        Ok(world)
    }

    /// Schedules what the scenario makes happen around the tree.
    fn script(&mut self) {
        let sc = self.sc;
        // Who is away, and when: each churn entry draws its own share of its tier.
        let mut offline_until: Vec<Option<Millis>> = vec![None; self.nodes.len()];
        for (c, churn) in sc.churn.iter().enumerate() {
            let purpose = format!("churn-{c}");
            for i in self.tier_range(churn.tier) {
                if draw(self.seed, &purpose, u64::from(i)) >= churn.share {
                    continue;
                }
                let pick = |what: &str, r: &std::ops::Range<u64>| {
                    r.start
                        + ((r.end - r.start) as f64 * draw(self.seed, what, u64::from(i))) as u64
                };
                let at = pick(&format!("{purpose}-at"), &churn.within);
                let back = at + pick(&format!("{purpose}-downtime"), &churn.downtime);
                match churn.kind {
                    ChurnKind::Offline => offline_until[i as usize] = Some(Millis::MAX),
                    ChurnKind::Join => {
                        let t = offline_until[i as usize].get_or_insert(at);
                        *t = (*t).max(at);
                    }
                    ChurnKind::Leave | ChurnKind::Crash => self.scripted_at(
                        at,
                        Ev::Down {
                            node: i,
                            crash: churn.kind == ChurnKind::Crash,
                            back,
                        },
                    ),
                }
            }
        }
        for (i, until) in offline_until.iter().enumerate() {
            match until {
                None => self.at(
                    0,
                    Ev::Up {
                        node: i as u32,
                        scripted: false,
                    },
                ),
                Some(Millis::MAX) => self.tally.never_online += 1,
                Some(t) => self.scripted_at(
                    *t,
                    Ev::Up {
                        node: i as u32,
                        scripted: true,
                    },
                ),
            }
        }
        // Nodes that start with the run are up before anything else happens at 0.
        for (u, up) in sc.updates.iter().enumerate() {
            self.scripted_at(up.at, Ev::Publish { update: u as u32 });
        }
        for b in 0..self.batches.len() {
            let at = self.batches[b].at;
            self.scripted_at(at, Ev::SetRules { batch: b as u32 });
        }
        self.at(0, Ev::Sample);
    }

    fn tier_range(&self, tier: usize) -> std::ops::Range<u32> {
        self.tier_start[tier]..self.tier_start[tier + 1]
    }

    /// The tier of node `i` (0 for the root as for the first tier below it), from the
    /// numbering alone: the hot paths ask it without touching the node.
    fn tier_of(&self, i: u32) -> usize {
        tier_of(&self.tier_start, i)
    }

    /// The parent of node `i` (not the root).
    fn parent_of(&self, i: u32) -> u32 {
        let tier = self.tier_of(i);
        if tier == 0 {
            return 0;
        }
        let fanout = self.sc.tiers[tier].fanout;
        self.tier_start[tier - 1] + (i - self.tier_start[tier]) / fanout
    }

    /// The children of node `i`.
    fn children_of(&self, i: u32) -> std::ops::Range<u32> {
        let tier = if i == 0 { None } else { Some(self.tier_of(i)) };
        let child_tier = tier.map_or(0, |t| t + 1);
        if child_tier >= self.sc.tiers.len() {
            return 0..0;
        }
        let fanout = self.sc.tiers[child_tier].fanout;
        let first_of_tier = tier.map_or(0, |t| self.tier_start[t]);
        let offset = if i == 0 { 0 } else { i - first_of_tier };
        let start = self.tier_start[child_tier] + offset * fanout;
        start..start + fanout
    }

    fn is_leaf(&self, i: u32) -> bool {
        i != 0 && self.tier_of(i) + 1 == self.sc.tiers.len()
    }

    /// The site of node `i` within its tier, if its tier has sites.
    fn site_of(&self, i: u32) -> Option<(usize, u32)> {
        if i == 0 {
            return None;
        }
        let tier = self.tier_of(i);
        let site = self.sc.tiers[tier].site.as_ref()?;
        Some((tier, (i - self.tier_start[tier]) / site.size))
    }

    fn same_site(&self, a: u32, b: u32) -> bool {
        matches!((self.site_of(a), self.site_of(b)), (Some(x), Some(y)) if x == y)
    }

    /// The epoch of the connection between `a` and `b`, 0 if none.
    fn conn(&self, a: u32, b: u32) -> u64 {
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        if a != 0 && self.parent_of(a) == b {
            return na.up_conn;
        }
        if b != 0 && self.parent_of(b) == a {
            return nb.up_conn;
        }
        na.siblings
            .iter()
            .find(|(s, _)| *s == b)
            .map_or(0, |(_, e)| *e)
    }

    /// One-way latency between two connected nodes.
    fn latency(&self, a: u32, b: u32) -> Ms {
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        if self.same_site(a, b) {
            return u64::from(na.latency + nb.latency);
        }
        let child = if a != 0 && self.parent_of(a) == b {
            na
        } else {
            nb
        };
        u64::from(child.latency + child.site_latency)
    }

    fn at(&mut self, at: Millis, ev: Ev) {
        self.queue.push(at, ev);
    }

    fn scripted_at(&mut self, at: Millis, ev: Ev) {
        self.scripted += 1;
        self.at(at, ev);
    }

    /// A scripted event ran: the world changed now.
    fn script_ran(&mut self) {
        self.scripted -= 1;
        self.last_change = self.now;
    }

    /// Runs until the script is done and nothing has changed for a while, or until the
    /// scenario's time limit. `progress` is told the virtual time as it passes.
    pub fn run(&mut self, progress: &mut dyn FnMut(Millis, &Tally)) {
        while let Some((at, ev)) = self.queue.pop() {
            if at > self.sc.until || self.finished {
                break;
            }
            self.now = at;
            if let Ev::Sample = ev {
                progress(at, &self.tally);
            }
            self.step(ev);
        }
        self.now = self.now.min(self.sc.until);
        self.finish();
    }

    /// Collects what the engines counted.
    fn finish(&mut self) {
        let now = self.now;
        self.tally.ended = now;
        self.tally.last_change = self.last_change;
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let mut timeouts = node.fetch_timeouts;
            if let Some(e) = &node.engine {
                timeouts += e.stats().fetch_timeouts;
                self.tally.counters.redirects += e.stats().redirects;
                self.tally.counters.siblings_banned += e.stats().siblings_banned;
            }
            self.tally.counters.fetch_timeouts += timeouts;
        }
        let root_up = self.net.queue(self.nodes[0].up as usize).peak();
        self.tally.note_peak("root up".into(), root_up);
        let mut sites = std::collections::BTreeSet::new();
        for i in 1..self.nodes.len() {
            let node = &self.nodes[i];
            let name = &self.sc.tiers[self.tier_of(i as u32)].name;
            let down = self.net.queue(node.down as usize).peak();
            let up = self.net.queue(node.up as usize).peak();
            self.tally.note_peak(format!("{name} down"), down);
            self.tally.note_peak(format!("{name} up"), up);
            if node.site_link != NONE && sites.insert(node.site_link) {
                let down = self.net.queue(node.site_link as usize).peak();
                let up = self.net.queue(node.site_link as usize + 1).peak();
                self.tally.note_peak(format!("{name} site WAN down"), down);
                self.tally.note_peak(format!("{name} site WAN up"), up);
            }
        }
        self.tally.record(now, true);
    }

    fn step(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver {
                to,
                from,
                epoch,
                msg,
            } => {
                if self.conn(to, from) == epoch {
                    let peer = self.keys[from as usize];
                    self.drive(to, |e, now| e.handle_message(peer, msg, now));
                }
            }
            Ev::Serve {
                server,
                client,
                epoch,
                fetch,
                update,
                first,
                count,
                direct,
            } => {
                if self.conn(server, client) == epoch {
                    self.serve(
                        server,
                        client,
                        epoch,
                        fetch,
                        update,
                        first..first + count,
                        direct,
                    );
                }
            }
            Ev::Elsewhere {
                to,
                from,
                epoch,
                fetch,
                index,
                holder,
            } => {
                if self.conn(to, from) == epoch {
                    self.drive(to, |e, now| e.handle_elsewhere(fetch, index, holder, now));
                }
            }
            Ev::Chunks {
                to,
                from,
                epoch,
                fetch,
                update,
                chunks,
                end,
            } => {
                if self.conn(to, from) != epoch {
                    return;
                }
                let sibling = self.same_site(to, from);
                let tier = self.tier_of(to);
                if let Some((_, have)) = self.nodes[to as usize].store.update(&update) {
                    for (index, _) in &chunks {
                        have.set(*index);
                    }
                }
                let mut bytes = 0u64;
                for (_, wire) in &chunks {
                    bytes += u64::from(*wire);
                }
                self.tally.received(tier, sibling, bytes);
                if !chunks.is_empty() {
                    self.last_change = now;
                }
                self.drive(to, |e, now| {
                    let verdicts = chunks
                        .into_iter()
                        .map(|(index, wire)| (index, ChunkVerdict::Stored { wire }));
                    e.handle_chunks(fetch, verdicts, now);
                    if end {
                        e.handle_fetch_end(fetch, now);
                    }
                });
            }
            Ev::Connect { a, b } => {
                let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
                if !na.online || !nb.online || self.conn(a, b) != 0 {
                    if na.online && self.conn(a, b) == 0 {
                        let peer = self.keys[b as usize];
                        self.drive(a, |e, now| e.handle_disconnected(peer, now));
                    }
                    return;
                }
                let epoch = self.next_epoch;
                self.next_epoch += 1;
                let (ka, kb) = (self.keys[a as usize], self.keys[b as usize]);
                if self.same_site(a, b) && self.parent_of(a) == self.parent_of(b) {
                    self.nodes[a as usize].siblings.push((b, epoch));
                    self.nodes[b as usize].siblings.push((a, epoch));
                    let mut banned = false;
                    self.drive(b, |e, now| banned |= !e.handle_sibling_connected(ka, now));
                    self.drive(a, |e, now| banned |= !e.handle_sibling_connected(kb, now));
                    if banned {
                        self.close(a, b, 0);
                    }
                    return;
                }
                let child = if a != 0 && self.parent_of(a) == b {
                    a
                } else {
                    b
                };
                self.nodes[child as usize].up_conn = epoch;
                self.drive(b, |e, now| e.handle_connected(ka, now));
                self.drive(a, |e, now| e.handle_connected(kb, now));
            }
            Ev::DialFailed { node, peer } => {
                let key = self.keys[peer as usize];
                self.drive(node, |e, now| e.handle_disconnected(key, now));
            }
            Ev::Disconnected { node, peer } => {
                let key = self.keys[peer as usize];
                self.drive(node, |e, now| e.handle_disconnected(key, now));
            }
            Ev::Timeout { node } => {
                let n = &mut self.nodes[node as usize];
                if n.timer == Some(now) {
                    n.timer = None;
                }
                if n.engine
                    .as_ref()
                    .and_then(|e| e.poll_timeout())
                    .is_some_and(|t| t <= now)
                {
                    self.drive(node, |e, now| e.handle_timeout(now));
                } else {
                    self.drive(node, |_, _| {});
                }
            }
            Ev::Install { node, update } => self.install(node, update as usize),
            Ev::Publish { update } => {
                self.script_ran();
                let manifest = self.manifests[update as usize].clone();
                let n = manifest.chunks.len() as u32;
                let mut all = Bitmap::new(n);
                for i in 0..n {
                    all.set(i);
                }
                self.nodes[0].store.updates.push((manifest.clone(), all));
                let have = vec![true; n as usize];
                self.last_change = now;
                self.drive(0, |e, now| e.add_local_update(manifest, &have, now));
            }
            Ev::SetRules { batch } => {
                self.script_ran();
                self.set_rules(batch as usize);
            }
            Ev::Down { node, crash, back } => {
                self.script_ran();
                if self.nodes[node as usize].online {
                    self.go_down(node, crash);
                    self.scripted_at(
                        back,
                        Ev::Up {
                            node,
                            scripted: true,
                        },
                    );
                }
            }
            Ev::Up { node, scripted } => {
                if scripted {
                    self.script_ran();
                }
                self.boot(node);
            }
            Ev::Sample => {
                self.tally.record(now, false);
                let quiet = self.scripted == 0 && now.saturating_sub(self.last_change) >= QUIET;
                if quiet || self.queue.is_empty() {
                    self.finished = true;
                } else {
                    self.at(now + self.sc.sample, Ev::Sample);
                }
            }
        }
    }

    /// Starts node `i` from what its store holds (nothing, the first time).
    fn boot(&mut self, i: u32) {
        let now = self.now;
        if self.nodes[i as usize].online {
            return;
        }
        let role = if i == 0 {
            Role::Root
        } else {
            Role::Member {
                parent: self.keys[self.parent_of(i) as usize],
            }
        };
        let mut path = Vec::new();
        let mut n = i;
        loop {
            path.push(self.keys[n as usize]);
            if n == 0 {
                break;
            }
            n = self.parent_of(n);
        }
        path.reverse();
        let mut config = self.config.clone();
        config.installer = self.is_leaf(i);
        let mut engine = Engine::new(
            role,
            self.root_key.public(),
            self.secrets[i as usize].clone(),
            path,
            config,
            self.seed ^ u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        for c in self.children_of(i) {
            let key = self.keys[c as usize];
            engine.add_child(key);
            if let Some((tier, site)) = self.site_of(c)
                && self.sc.tiers[tier]
                    .site
                    .as_ref()
                    .is_some_and(|s| s.siblings)
            {
                engine.set_child_site(key, Some(&format!("site-{site}")));
            }
        }
        let node = &mut self.nodes[i as usize];
        node.online = true;
        let store = std::mem::take(&mut node.store);
        for (_, rules) in &store.rules {
            if let Err(e) = engine.restore_rules(rules, now) {
                tracing::warn!(node = i, error = %e, "a stored rule set no longer opens");
            }
        }
        engine.set_report_seq(store.report_seq);
        for (child, report) in &store.reports {
            let _ = engine.restore_report(child, report, now);
        }
        for (manifest, have) in &store.updates {
            let held: Vec<bool> = (0..have.len()).map(|c| have.get(c)).collect();
            engine.add_local_update(manifest.clone(), &held, now);
        }
        let leaf = self.is_leaf(i);
        for (u, m) in self.manifests.iter().enumerate() {
            let node = &self.nodes[i as usize];
            if !leaf || !store.updates.iter().any(|(s, _)| s.id == m.id) {
                continue;
            }
            if node.installed[u].is_some() {
                engine.set_outcome(&m.id, Outcome::Installed(None), now);
            } else if node.failed[u] {
                engine.set_outcome(&m.id, Outcome::Failed("install failed".into()), now);
            } else {
                engine.set_needed(&m.id, true, now);
            }
        }
        self.nodes[i as usize].store = store;
        self.nodes[i as usize].engine = Some(Box::new(engine));
        self.drive(i, |e, now| e.handle_timeout(now));
    }

    /// Node `i` leaves (or crashes): its connections close, its memory is gone, its
    /// store stays.
    fn go_down(&mut self, i: u32, crash: bool) {
        let notice = if crash { CRASH_NOTICED_AFTER } else { 0 };
        let mut peers: Vec<u32> = Vec::new();
        if i != 0 && self.nodes[i as usize].up_conn != 0 {
            peers.push(self.parent_of(i));
        }
        for c in self.children_of(i) {
            if self.nodes[c as usize].up_conn != 0 {
                peers.push(c);
            }
        }
        peers.extend(self.nodes[i as usize].siblings.iter().map(|(s, _)| *s));
        for p in peers {
            self.close(i, p, notice);
        }
        let node = &mut self.nodes[i as usize];
        node.online = false;
        node.timer = None;
        if let Some(e) = node.engine.take() {
            node.fetch_timeouts += e.stats().fetch_timeouts;
            node.store.report_seq = e.report_seq();
        }
        if crash {
            self.tally.counters.crashes += 1;
        } else {
            self.tally.counters.leaves += 1;
        }
    }

    /// Closes the connection between `a` and `b`; `b` hears of it after the latency
    /// (and `extra`), `a` is not told (it is gone, or tells its engine itself).
    fn close(&mut self, a: u32, b: u32, extra: Ms) {
        if a != 0 && self.parent_of(a) == b {
            self.nodes[a as usize].up_conn = 0;
        } else if b != 0 && self.parent_of(b) == a {
            self.nodes[b as usize].up_conn = 0;
        } else {
            self.nodes[a as usize].siblings.retain(|(s, _)| *s != b);
            self.nodes[b as usize].siblings.retain(|(s, _)| *s != a);
        }
        let at = self.now + self.latency(a, b) + extra;
        self.at(at, Ev::Disconnected { node: b, peer: a });
    }

    /// Signs and sets the rule sets of one batch at every issuer.
    fn set_rules(&mut self, b: usize) {
        let now = self.now;
        let issuers: Vec<u32> = match self.batches[b].by {
            None => vec![0],
            Some(t) => self.tier_range(t).collect(),
        };
        for issuer in issuers {
            if !self.nodes[issuer as usize].online {
                // Its admin sets them when it is back: nothing to sign on a node that
                // is down. Later batches still apply.
                self.tally.counters.rules_missed += 1;
                continue;
            }
            let Some(signed) = self.rules_for(issuer, b) else {
                continue;
            };
            self.rule_origin.insert(Hash::of(&signed.bytes), b as u32);
            let bytes: Arc<[u8]> = signed.bytes.clone().into();
            let key = self.keys[issuer as usize];
            let store = &mut self.nodes[issuer as usize].store;
            store.rules.retain(|(k, _)| *k != key);
            store.rules.push((key, bytes));
            self.tally.rules_issued(b, now);
            self.drive(issuer, |e, now| {
                if let Err(err) = e.set_own_rules(signed, now) {
                    tracing::warn!(node = issuer, error = %err, "simulated rules refused");
                }
            });
        }
    }

    /// Node `issuer`'s rules after batch `b`: what it held, with the batch's approvals
    /// set (an approval that was halted stays halted).
    fn rules_for(&self, issuer: u32, b: usize) -> Option<SignedRules> {
        let engine = self.nodes[issuer as usize].engine.as_ref()?;
        let me = self.keys[issuer as usize];
        let secs = (EPOCH + self.now) / 1000;
        let mut rules = match engine.rules().get(&me) {
            Some(held) => held.rules.clone(),
            None => Rules::new(me, secs),
        };
        rules.issued = secs;
        for g in &self.sc.groups {
            let children = self.children_of(issuer);
            if children.is_empty() || self.tier_of(children.start) != g.tier {
                continue;
            }
            let _ = rules.create_group(&g.name);
            for c in children {
                if self.in_group(c, g.tier, &g.name) {
                    let _ = rules.assign(&g.name, self.keys[c as usize]);
                }
            }
        }
        for &a in &self.batches[b].approvals {
            let ap = &self.sc.approvals[a];
            let update = self.manifests[ap.update].id;
            let key = crate::rules::ApprovalKey {
                update,
                group: ap.group.clone(),
            };
            if rules
                .approvals
                .get(&key)
                .is_some_and(|held| held.halted.is_some())
            {
                continue;
            }
            let halt = (ap.halt_failures.is_some() || ap.halt_fraction.is_some()).then_some(Halt {
                failures: ap.halt_failures,
                fraction: ap.halt_fraction,
            });
            let approval = Approval {
                wave: ap.wave,
                deadline: ap.deadline.map(|d| (EPOCH + d) / 1000),
                subtree: ap.subtree,
                halt,
                halted: None,
            };
            if let Err(e) = rules.approve(update, &ap.group, approval) {
                tracing::warn!(node = issuer, error = %e, "a simulated approval is invalid");
            }
        }
        let version = engine.rules().next_version(&me);
        match SignedRules::sign(
            &self.secrets[issuer as usize],
            version,
            secs + RULES_LIFETIME,
            rules,
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(node = issuer, error = %e, "cannot sign simulated rules");
                None
            }
        }
    }

    /// Which summary groups leaf `i` counts in: all leaves, then each scenario group
    /// that holds it or one of its ancestors.
    pub(super) fn summary_groups_of(&self, i: u32) -> Vec<bool> {
        std::iter::once(true)
            .chain(self.sc.groups.iter().map(|g| {
                let a = self.ancestor_in(i, g.tier);
                self.in_group(a, g.tier, &g.name)
            }))
            .collect()
    }

    /// The size of each summary group, in leaves.
    pub(super) fn summary_group_sizes(&self) -> Vec<u64> {
        let leaves = self.tier_range(self.sc.tiers.len() - 1);
        let mut sizes = vec![0u64; 1 + self.sc.groups.len()];
        for i in leaves {
            for (g, member) in self.summary_groups_of(i).iter().enumerate() {
                sizes[g] += u64::from(*member);
            }
        }
        sizes
    }

    pub(super) fn node_count(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// Whether node `i` of `tier` is in group `name` (a fixed draw per node).
    pub(super) fn in_group(&self, i: u32, tier: usize, name: &str) -> bool {
        self.sc
            .groups
            .iter()
            .find(|g| g.name == name && g.tier == tier)
            .is_some_and(|g| draw(self.seed, &format!("group-{name}"), u64::from(i)) < g.share)
    }

    /// The ancestor of leaf `i` in `tier` (itself for the leaf tier).
    pub(super) fn ancestor_in(&self, mut i: u32, tier: usize) -> u32 {
        while i != 0 && self.tier_of(i) > tier {
            i = self.parent_of(i);
        }
        i
    }

    /// Answers a chunk request: each chunk through [`Engine::serve`], the bytes through
    /// the links.
    #[allow(clippy::too_many_arguments)]
    fn serve(
        &mut self,
        server: u32,
        client: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        span: std::ops::Range<u32>,
        direct: bool,
    ) {
        let Some(engine) = self.nodes[server as usize].engine.as_mut() else {
            return;
        };
        let peer = self.keys[client as usize];
        let answers = span.clone().zip(engine.serve(&peer, &update, span, direct));
        let lat = self.latency(server, client);
        let path = self.path(server, client);
        // A node that serves others hears of every chunk as it lands, so that it can
        // pass it on at once; a leaf without siblings only needs the whole answer.
        let chunkwise = !self.children_of(client).is_empty() || self.site_of(client).is_some();
        let now = self.now as f64;
        let mut last = now;
        let mut batch: Vec<(u32, u32)> = Vec::new();
        let mut pending: Option<(Millis, u32, u32)> = None;
        let mut sent = 0u64;
        for (index, answer) in answers {
            match answer {
                Served::Data { len, .. } => {
                    last = self.net.send(&path, now, len);
                    sent += u64::from(len);
                    if chunkwise {
                        if let Some((at, i, l)) = pending.take() {
                            self.chunks_at(
                                at,
                                client,
                                server,
                                epoch,
                                fetch,
                                update,
                                vec![(i, l)],
                                false,
                            );
                        }
                        pending = Some((last.ceil() as Millis + lat, index, len));
                    } else {
                        batch.push((index, len));
                    }
                }
                Served::Missing => {}
                Served::Elsewhere { holder } => {
                    self.at(
                        self.now + lat,
                        Ev::Elsewhere {
                            to: client,
                            from: server,
                            epoch,
                            fetch,
                            index,
                            holder,
                        },
                    );
                }
            }
        }
        if server == 0 {
            self.tally.root_egress += sent;
        }
        if self.crosses_site(server, client) {
            self.tally.site_wan += sent;
        }
        let end = (last.ceil() as Millis).max(self.now) + lat;
        match pending {
            Some((at, i, l)) => {
                self.chunks_at(at, client, server, epoch, fetch, update, vec![(i, l)], true)
            }
            None => self.chunks_at(end, client, server, epoch, fetch, update, batch, true),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn chunks_at(
        &mut self,
        at: Millis,
        to: u32,
        from: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        chunks: Vec<(u32, u32)>,
        end: bool,
    ) {
        self.at(
            at,
            Ev::Chunks {
                to,
                from,
                epoch,
                fetch,
                update,
                chunks,
                end,
            },
        );
    }

    fn crosses_site(&self, from: u32, to: u32) -> bool {
        let (a, b) = (&self.nodes[from as usize], &self.nodes[to as usize]);
        a.site_link != b.site_link
    }

    /// The queues bytes from `from` to `to` go through.
    fn path(&self, from: u32, to: u32) -> Vec<usize> {
        let (a, b) = (&self.nodes[from as usize], &self.nodes[to as usize]);
        let mut path = vec![a.up as usize];
        if a.site_link != b.site_link {
            if a.site_link != NONE {
                path.push(a.site_link as usize + 1);
            }
            if b.site_link != NONE {
                path.push(b.site_link as usize);
            }
        }
        path.push(b.down as usize);
        path
    }

    /// A leaf's installer finished with `update`.
    fn install(&mut self, i: u32, u: usize) {
        let node = &self.nodes[i as usize];
        if node.installed[u].is_some() || node.failed[u] || node.engine.is_none() {
            return;
        }
        let fails =
            draw(self.seed, &format!("install-{u}"), u64::from(i)) < self.sc.updates[u].fail;
        let id = self.manifests[u].id;
        let outcome = if fails {
            self.nodes[i as usize].failed[u] = true;
            self.tally.counters.install_failures += 1;
            Outcome::Failed("the simulated install failed".into())
        } else {
            self.nodes[i as usize].installed[u] = Some(self.now);
            let groups = self.summary_groups_of(i);
            self.tally.installed(u, &groups, self.now);
            Outcome::Installed(None)
        };
        self.last_change = self.now;
        self.drive(i, |e, now| {
            e.set_outcome(&id, outcome, now);
            e.set_needed(&id, false, now);
        });
    }

    /// Runs an input on node `i`'s engine, then carries out everything it asks for.
    fn drive(&mut self, i: u32, input: impl FnOnce(&mut Engine, Millis)) {
        let Some(mut engine) = self.nodes[i as usize].engine.take() else {
            return;
        };
        let now = self.now;
        input(&mut engine, now);
        while let Some(out) = engine.poll_output() {
            self.carry_out(i, &mut engine, out);
        }
        if let Some(t) = engine.poll_timeout() {
            let t = t.max(now);
            let node = &mut self.nodes[i as usize];
            if node.timer.is_none_or(|pending| t < pending) {
                node.timer = Some(t);
                self.at(t, Ev::Timeout { node: i });
            }
        }
        self.nodes[i as usize].engine = Some(engine);
    }

    /// Sends what `make` builds (given the peer's index and the connection's epoch)
    /// from node `i` to `peer`, arriving after the latency; nothing if they are not
    /// connected.
    fn over_connection(&mut self, i: u32, peer: &PeerId, make: impl FnOnce(u32, u64) -> Ev) {
        let Some(&j) = self.index.get(peer) else {
            return;
        };
        let epoch = self.conn(i, j);
        if epoch != 0 {
            let at = self.now + self.latency(i, j);
            self.at(at, make(j, epoch));
        }
    }

    fn carry_out(&mut self, i: u32, engine: &mut Engine, out: Output) {
        let now = self.now;
        match out {
            Output::Send { to, msg } => self.over_connection(i, &to, |j, epoch| Ev::Deliver {
                to: j,
                from: i,
                epoch,
                msg,
            }),
            Output::Fetch {
                id,
                from,
                update,
                first,
                count,
                direct,
            } => self.over_connection(i, &from, |j, epoch| Ev::Serve {
                server: j,
                client: i,
                epoch,
                fetch: id,
                update,
                first,
                count,
                direct,
            }),
            Output::StoreManifest { manifest } => {
                let id = manifest.id;
                let n = manifest.chunks.len() as u32;
                let store = &mut self.nodes[i as usize].store;
                if store.update(&id).is_none() {
                    store.updates.push((manifest, Bitmap::new(n)));
                }
                let have: Vec<bool> = store
                    .update(&id)
                    .map(|(_, b)| (0..n).map(|c| b.get(c)).collect())
                    .unwrap_or_default();
                engine.handle_local_have(id, &have, now);
                if self.is_leaf(i)
                    && let Some(u) = self.manifests.iter().position(|m| m.id == id)
                    && self.nodes[i as usize].installed[u].is_none()
                {
                    engine.set_needed(&id, true, now);
                }
            }
            Output::Dial { peer } => {
                let Some(&j) = self.index.get(&peer) else {
                    return;
                };
                let rtt = 2 * self.latency(i, j);
                if self.nodes[j as usize].online {
                    self.at(now + rtt + rtt / 2, Ev::Connect { a: i, b: j });
                } else {
                    self.at(
                        now + rtt + DIAL_FAILS_AFTER,
                        Ev::DialFailed { node: i, peer: j },
                    );
                }
            }
            Output::Disconnect { peer, .. } => {
                let Some(&j) = self.index.get(&peer) else {
                    return;
                };
                if self.conn(i, j) != 0 {
                    self.close(i, j, 0);
                    engine.handle_disconnected(peer, now);
                }
            }
            Output::StoreRules { issuer, rules } => {
                if let Some(&b) = self.rule_origin.get(&Hash::of(&rules)) {
                    self.tally.rules_arrived(b as usize, now);
                }
                self.last_change = now;
                let store = &mut self.nodes[i as usize].store;
                store.rules.retain(|(k, _)| *k != issuer);
                store.rules.push((issuer, rules));
            }
            Output::StoreReport { child, report } => {
                let store = &mut self.nodes[i as usize].store;
                store.reports.retain(|(k, _)| *k != child);
                store.reports.push((child, report));
            }
            Output::Event(event) => match event {
                Event::UpdateComplete { update } => {
                    if self.is_leaf(i)
                        && let Some(u) = self.manifests.iter().position(|m| m.id == update)
                    {
                        let at = now + self.sc.updates[u].install;
                        self.at(
                            at,
                            Ev::Install {
                                node: i,
                                update: u as u32,
                            },
                        );
                    }
                }
                Event::Halted { .. } => self.tally.counters.halts += 1,
                Event::BadChunk { .. } => self.tally.counters.bad_chunks += 1,
                Event::Misbehaved { reason, .. } => {
                    self.tally.counters.misbehaved += 1;
                    tracing::debug!(node = i, %reason, "a peer misbehaved");
                }
                Event::RulesRefused { reason, .. } => {
                    self.tally.counters.rules_refused += 1;
                    tracing::debug!(node = i, %reason, "rules refused");
                }
                _ => {}
            },
        }
    }
}

impl Node {
    fn new(latency: u32, down: u32, up: u32, updates: usize) -> Node {
        Node {
            engine: None,
            online: false,
            up_conn: 0,
            siblings: Vec::new(),
            latency,
            down,
            up,
            site_link: NONE,
            site_latency: 0,
            timer: None,
            store: Store::default(),
            installed: vec![None; updates],
            failed: vec![false; updates],
            fetch_timeouts: 0,
        }
    }
}

/// A signed update of `size` bytes in one file, in chunks of `chunk` bytes whose
/// hashes stand for content the simulator never makes.
fn synthetic_update(
    root: &SecretKey,
    seq: u64,
    name: &str,
    size: u64,
    chunk: u32,
) -> Result<Arc<SignedManifest>, crate::trust::TrustError> {
    let chunks = size.div_ceil(u64::from(chunk));
    let refs: Vec<ChunkRef> = (0..chunks)
        .map(|i| {
            let len = (size - i * u64::from(chunk)).min(u64::from(chunk)) as u32;
            let mut h = blake3::Hasher::new();
            h.update(name.as_bytes());
            h.update(&i.to_le_bytes());
            ChunkRef(Hash(*h.finalize().as_bytes()), len)
        })
        .collect();
    let manifest = Manifest {
        id: name.into(),
        files: vec![FileEntry {
            mode: 0o644,
            path: format!("{name}.bin"),
            size,
            chunks: refs,
        }],
        tenant: "simulation".into(),
        created: EPOCH / 1000,
        version: "1".into(),
        category: "simulated".into(),
        total_size: size,
        description: None,
        post_install: None,
    };
    SignedManifest::sign(root, seq, manifest).map(Arc::new)
}
