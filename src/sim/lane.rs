//! One lane of the simulated fleet: a real [`Engine`] for each node the lane runs,
//! driven in virtual time over the modelled [`Network`].
//!
//! Owns the discrete-event loop of its nodes and everything a daemon's driver does
//! for its engine, done in memory: connections, serving chunk requests through
//! [`Engine::serve`], the store (manifests, which chunks are held, rule sets,
//! children's reports, for restarts after a crash), the installer of a leaf, and the
//! scripted world around its part of the tree: publishing updates at the root, admins
//! setting rules, and nodes going away and coming back. It counts what the summary
//! reports as it goes. [`super::world`] runs the lanes side by side, a window of
//! virtual time at a time, and hands each one what the others sent it.
//!
//! Connections: each end keeps its own view of a connection (an epoch, 0 for none),
//! as a real peer does. A message is taken only if it arrives on the connection its
//! receiver holds now, so whatever was in flight when the receiver closed it, or when
//! it went down, is lost; a close reaches the other end after the latency. No event
//! reads or changes another node's state at once, which is what lets lanes run apart.

mod install;
mod rules;
mod transfer;
mod versions;
mod windows;

use super::fleet::{EPOCH, Fleet, draw};
use super::network::Network;
use super::overhead;
use super::queue::Calendar;
use super::scenario::ChurnKind;
use super::summary::{Row, Tally};
use crate::content::Hash;
use crate::content::manifest::ModuleName;
use crate::engine::bitmap::Bitmap;
use crate::engine::installer::{InstallDone, InstallJob, ModuleState, Withdrawn};
use crate::engine::{
    ChunkVerdict, Control, Engine, Event, FetchId, Millis, Output, PeerId, Role, Saved, SavedChild,
    Served,
};
use crate::rules::{Approval, Halt};
use crate::trust::PublicKey;
use std::collections::BTreeMap;

/// How long a dial to a node that is not running takes to fail, beyond the time its
/// handshake would have taken.
const DIAL_FAILS_AFTER: Millis = 1_000;
/// How long peers take to notice a crashed node (a graceful leave is seen at once).
const CRASH_NOTICED_AFTER: Millis = 10_000;
/// Epochs carry the lane that made them in their low bits, so that lanes never make
/// the same one.
const EPOCH_LANE_BITS: u32 = 4;

/// A node's state as it runs (its links are in the fleet).
#[derive(Default)]
struct Node {
    /// Boxed: an engine is moved out and back for every event it handles.
    engine: Option<Box<Engine>>,
    online: bool,
    /// Its connection to its parent, to each of its children (by position), and to
    /// each connected sibling: their epochs as it sees them, 0 for none.
    up_conn: u64,
    child_conns: Vec<u64>,
    siblings: Vec<(u32, u64)>,
    /// The earliest timeout event scheduled for it.
    timer: Option<Millis>,
    /// What its store keeps, to start again from after a crash.
    saved: Saved,
    /// What its install directory holds (leaves), as its engine's installer last
    /// knew it: it outlives a crash, as the directory does.
    modules: BTreeMap<ModuleName, ModuleState>,
    /// Its engines so far: an install job outlives neither a crash nor a leave.
    boots: u32,
    /// When each update was first installed (leaves), by update index.
    installed: Vec<Option<Millis>>,
    /// Whether an install of each update failed here (counted once).
    failed: Vec<bool>,
    /// Fetch timeouts counted by the engines this node ran before its last restart.
    fetch_timeouts: u64,
}

#[derive(Debug)]
pub(super) enum Ev {
    /// A control message, `wire` bytes on the links.
    Deliver {
        to: u32,
        from: u32,
        epoch: u64,
        msg: Control,
        wire: u32,
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
        /// The version the requester holds whole and names for deltas, if any.
        base: Option<u32>,
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
    /// `from` dialled `to`: the handshake reaches the listener.
    Accept {
        to: u32,
        from: u32,
    },
    /// The listener took the connection: the dialer has it too.
    Accepted {
        to: u32,
        from: u32,
        epoch: u64,
    },
    /// The dial came to nothing.
    DialFailed {
        to: u32,
        from: u32,
    },
    /// `from` closed the connection, or went away.
    Disconnected {
        to: u32,
        from: u32,
        epoch: u64,
    },
    Timeout {
        node: u32,
    },
    /// A leaf's install job of an update is done (begun by its engine's `boot`).
    Install {
        node: u32,
        update: u32,
        boot: u32,
    },
    /// A WAN window of `node` opens or closes.
    WanWindow {
        node: u32,
    },
    Publish {
        update: u32,
    },
    /// A rule batch, set at every issuer this lane runs.
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
}

impl Ev {
    /// The node the event happens at, if it is one node's.
    fn node(&self) -> Option<u32> {
        match self {
            Ev::Deliver { to, .. }
            | Ev::Elsewhere { to, .. }
            | Ev::Chunks { to, .. }
            | Ev::Accept { to, .. }
            | Ev::Accepted { to, .. }
            | Ev::DialFailed { to, .. }
            | Ev::Disconnected { to, .. } => Some(*to),
            Ev::Serve { server, .. } => Some(*server),
            Ev::Timeout { node }
            | Ev::Install { node, .. }
            | Ev::WanWindow { node }
            | Ev::Down { node, .. }
            | Ev::Up { node, .. } => Some(*node),
            Ev::Publish { .. } => Some(0),
            Ev::SetRules { .. } => None,
        }
    }
}

/// Where a lane stands at the end of a window, for the others.
#[derive(Debug, Default)]
pub(super) struct Standing {
    /// Its earliest pending event, and the earliest it sent another lane.
    pub next: Option<Millis>,
    pub sent: Option<Millis>,
    /// Scripted events not yet run.
    pub scripted: usize,
    pub last_change: Millis,
    /// Its counts so far, when the window ends at a timeline sample.
    pub row: Option<Row>,
}

/// The nodes of one lane, and their events.
pub(super) struct Lane<'f> {
    fleet: &'f Fleet<'f>,
    id: usize,
    now: Millis,
    /// The end of the window being run: events for other lanes are at or after it.
    window_end: Millis,
    queue: Calendar<Ev>,
    /// One slot per node of the fleet; only this lane's are used.
    nodes: Vec<Node>,
    /// Every queue of the network; only those this lane's nodes send through are used.
    pub(super) net: Network,
    /// Events for each other lane, sent in this window.
    outbox: Vec<Vec<(Millis, Ev)>>,
    next_epoch: u64,
    /// Scripted events not yet run.
    scripted: usize,
    last_change: Millis,
    pub(super) tally: Tally,
}

impl<'f> Lane<'f> {
    /// Lane `id` of `fleet`, its script scheduled.
    pub fn new(fleet: &'f Fleet<'f>, id: usize) -> Lane<'f> {
        let sc = fleet.sc;
        let nodes = (0..fleet.node_count() as u32)
            .map(|i| {
                if fleet.lane_of(i) != id {
                    return Node::default();
                }
                Node {
                    child_conns: vec![0; fleet.children_of(i).len()],
                    installed: vec![None; sc.updates.len()],
                    failed: vec![false; sc.updates.len()],
                    ..Node::default()
                }
            })
            .collect();
        let mut lane = Lane {
            fleet,
            id,
            now: 0,
            window_end: 0,
            queue: Calendar::default(),
            nodes,
            net: fleet.net.clone(),
            outbox: (0..fleet.lanes).map(|_| Vec::new()).collect(),
            next_epoch: 1,
            scripted: 0,
            last_change: 0,
            tally: Tally::new(sc, &fleet.tier_start, fleet.batches.len()),
        };
        lane.script();
        lane
    }

    fn owns(&self, i: u32) -> bool {
        self.fleet.lane_of(i) == self.id
    }

    /// Schedules what the scenario makes happen around this lane's part of the tree.
    fn script(&mut self) {
        let fleet = self.fleet;
        let sc = fleet.sc;
        // Who is away, and when: each churn entry draws its own share of its tier.
        let mut offline_until: Vec<Option<Millis>> = vec![None; self.nodes.len()];
        for (c, churn) in sc.churn.iter().enumerate() {
            let purpose = format!("churn-{c}");
            for i in fleet.tier_range(churn.tier) {
                if !self.owns(i) || draw(fleet.seed, &purpose, u64::from(i)) >= churn.share {
                    continue;
                }
                let pick = |what: &str, r: &std::ops::Range<u64>| {
                    r.start
                        + ((r.end - r.start) as f64 * draw(fleet.seed, what, u64::from(i))) as u64
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
            if !self.owns(i as u32) {
                continue;
            }
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
        self.schedule_windows();
        // Nodes that start with the run are up before anything else happens at 0.
        if self.owns(0) {
            for (u, up) in sc.updates.iter().enumerate() {
                self.scripted_at(up.at, Ev::Publish { update: u as u32 });
            }
        }
        for (b, batch) in fleet.batches.iter().enumerate() {
            if !self.issuers(b).is_empty() {
                self.scripted_at(batch.at, Ev::SetRules { batch: b as u32 });
            }
        }
    }

    /// The issuers of rule batch `b` that this lane runs.
    fn issuers(&self, b: usize) -> Vec<u32> {
        let all = match self.fleet.batches[b].by {
            None => 0..1,
            Some(t) => self.fleet.tier_range(t),
        };
        all.filter(|i| self.owns(*i)).collect()
    }

    /// Node `i`'s view of its connection with `j`: the epoch, 0 if none.
    fn conn(&self, i: u32, j: u32) -> u64 {
        let fleet = self.fleet;
        let node = &self.nodes[i as usize];
        if i != 0 && fleet.parent_of(i) == j {
            return node.up_conn;
        }
        if j != 0 && fleet.parent_of(j) == i {
            return node.child_conns[(j - fleet.children_of(i).start) as usize];
        }
        node.siblings
            .iter()
            .find(|(s, _)| *s == j)
            .map_or(0, |(_, e)| *e)
    }

    /// Sets node `i`'s view of its connection with `j` (0: it has none).
    fn set_conn(&mut self, i: u32, j: u32, epoch: u64) {
        let fleet = self.fleet;
        let node = &mut self.nodes[i as usize];
        if i != 0 && fleet.parent_of(i) == j {
            node.up_conn = epoch;
        } else if j != 0 && fleet.parent_of(j) == i {
            node.child_conns[(j - fleet.children_of(i).start) as usize] = epoch;
        } else {
            node.siblings.retain(|(s, _)| *s != j);
            if epoch != 0 {
                node.siblings.push((j, epoch));
            }
        }
    }

    fn at(&mut self, at: Millis, ev: Ev) {
        let lane = ev.node().map_or(self.id, |n| self.fleet.lane_of(n));
        if lane == self.id {
            self.queue.push(at, ev);
        } else {
            debug_assert!(at >= self.window_end, "an event for another lane too soon");
            self.outbox[lane].push((at, ev));
        }
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

    /// Runs every event before `end` (and not past `until`).
    pub fn run_window(&mut self, end: Millis) {
        self.window_end = end;
        while let Some((at, ev)) = self.queue.pop_before(end) {
            self.now = at;
            self.step(ev);
        }
    }

    /// What the other lanes need to know of this one at the end of a window; the
    /// events sent to lane `l` are handed to `post(l, events)`.
    pub fn standing(
        &mut self,
        sample: bool,
        mut post: impl FnMut(usize, &mut Vec<(Millis, Ev)>),
    ) -> Standing {
        let mut sent = None;
        for (l, events) in self.outbox.iter_mut().enumerate() {
            if let Some(first) = events.iter().map(|(at, _)| *at).min() {
                sent = Some(sent.map_or(first, |s: Millis| s.min(first)));
            }
            if l != self.id {
                post(l, events);
            }
        }
        Standing {
            next: self.queue.next_at(),
            sent,
            scripted: self.scripted,
            last_change: self.last_change,
            row: sample.then(|| self.tally.row(self.window_end)),
        }
    }

    /// Takes events another lane sent this one.
    pub fn receive(&mut self, events: &mut Vec<(Millis, Ev)>) {
        for (at, ev) in events.drain(..) {
            // An event due inside a window already run would be run late, silently:
            // the lookahead the lanes keep was not enough.
            assert!(
                at >= self.window_end,
                "an event from another lane is due at {at} ms, before the window end {} ms",
                self.window_end
            );
            self.queue.push(at, ev);
        }
    }

    /// Collects what the engines counted.
    pub fn finish(&mut self) {
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
        self.count_versions();
        self.tally.last_change = self.last_change;
    }

    fn step(&mut self, ev: Ev) {
        let now = self.now;
        let fleet = self.fleet;
        match ev {
            Ev::Deliver {
                to,
                from,
                epoch,
                msg,
                wire,
            } => {
                self.crossed(from, to, u64::from(wire));
                if self.conn(to, from) == epoch {
                    let peer = fleet.keys[from as usize];
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
                base,
            } => {
                if self.conn(server, client) == epoch {
                    self.serve(
                        server,
                        client,
                        epoch,
                        fetch,
                        (update, base),
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
                let wire = chunks.iter().map(|(_, len)| overhead::chunk(*len)).sum();
                self.crossed(from, to, wire);
                if self.conn(to, from) != epoch {
                    return;
                }
                let sibling = fleet.same_site(to, from);
                let tier = fleet.tier_of(to);
                if let Some(have) = self.nodes[to as usize].saved.update_mut(&update) {
                    for (index, _) in &chunks {
                        have.set(*index);
                    }
                }
                let mut bytes = 0u64;
                for (_, wire) in &chunks {
                    bytes += u64::from(*wire);
                }
                self.tally.received(tier, sibling, bytes);
                if let Some(u) = fleet.update_index(&update) {
                    self.tally.received_for(u, chunks.len() as u64, bytes);
                }
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
            Ev::Accept { to, from } => self.accept(to, from),
            Ev::Accepted { to, from, epoch } => {
                if !self.nodes[to as usize].online {
                    // The dialer went away meanwhile: the listener sees it gone.
                    self.disconnected_at(from, to, epoch, 0);
                    return;
                }
                // A connection it still holds with the listener is stale: it dialled
                // again, or both dialled.
                self.drop_stale(to, from);
                self.connected(to, from, epoch);
            }
            Ev::DialFailed { to, from } => {
                // A dial that failed while another connection came up changes nothing.
                if self.conn(to, from) == 0 {
                    let key = fleet.keys[from as usize];
                    self.drive(to, |e, now| e.handle_disconnected(key, now));
                }
            }
            Ev::Disconnected { to, from, epoch } => {
                if self.conn(to, from) == epoch {
                    self.set_conn(to, from, 0);
                    let key = fleet.keys[from as usize];
                    self.drive(to, |e, now| e.handle_disconnected(key, now));
                }
            }
            Ev::Timeout { node } => {
                let n = &mut self.nodes[node as usize];
                if n.timer == Some(now) {
                    n.timer = None;
                }
                if n.engine
                    .as_ref()
                    .and_then(|e| e.poll_timeout())
                    .is_some_and(|t| t <= EPOCH + now)
                {
                    self.drive(node, |e, now| e.handle_timeout(now));
                } else {
                    self.drive(node, |_, _| {});
                }
            }
            Ev::Install { node, update, boot } => {
                if self.nodes[node as usize].boots == boot {
                    self.install(node, update as usize);
                }
            }
            Ev::WanWindow { node } => self.window_changed(node),
            Ev::Publish { update } => {
                self.script_ran();
                let manifest = fleet.manifests[update as usize].clone();
                let n = manifest.chunks.len() as u32;
                let mut all = Bitmap::new(n);
                for i in 0..n {
                    all.set(i);
                }
                self.nodes[0].saved.updates.push((manifest.clone(), all));
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
        }
    }

    /// The handshake of a dial from `from` reaches `to`: a node that is up takes it and
    /// answers; otherwise the dial fails. A new connection replaces one the listener
    /// still held with the dialer (it came back before its crash was noticed, or both
    /// dialled), and the dialer hears that the old one closed. The dialer does the
    /// same when the answer reaches it.
    fn accept(&mut self, to: u32, from: u32) {
        let fleet = self.fleet;
        let lat = fleet.latency(to, from);
        if !self.nodes[to as usize].online {
            self.at(
                self.now + lat + DIAL_FAILS_AFTER,
                Ev::DialFailed { to: from, from: to },
            );
            return;
        }
        self.drop_stale(to, from);
        let epoch = self.next_epoch << EPOCH_LANE_BITS | self.id as u64;
        self.next_epoch += 1;
        // The answer goes before anything the engine sends on the new connection.
        self.at(
            self.now + lat,
            Ev::Accepted {
                to: from,
                from: to,
                epoch,
            },
        );
        self.connected(to, from, epoch);
    }

    /// Closes the connection `i` holds with `peer`, if any, before a new one replaces
    /// it: `peer` hears of it, and `i`'s engine sees the old one go.
    fn drop_stale(&mut self, i: u32, peer: u32) {
        if self.conn(i, peer) != 0 {
            self.close(i, peer, 0);
            let key = self.fleet.keys[peer as usize];
            self.drive(i, |e, now| e.handle_disconnected(key, now));
        }
    }

    /// Node `i` holds connection `epoch` with `peer` now, and tells its engine; a
    /// sibling its engine has banned is closed again at once.
    fn connected(&mut self, i: u32, peer: u32, epoch: u64) {
        self.set_conn(i, peer, epoch);
        let key = self.fleet.keys[peer as usize];
        if self.fleet.are_siblings(i, peer) {
            let mut banned = false;
            self.drive(i, |e, now| banned = !e.handle_sibling_connected(key, now));
            if banned {
                self.close(i, peer, 0);
            }
        } else {
            self.drive(i, |e, now| e.handle_connected(key, now));
        }
    }

    /// Starts node `i` from what its store holds (nothing, the first time).
    fn boot(&mut self, i: u32) {
        // The engine's clock: Unix time, as the rules it checks carry.
        let now = EPOCH + self.now;
        let fleet = self.fleet;
        if self.nodes[i as usize].online {
            return;
        }
        let role = if i == 0 {
            Role::Root
        } else {
            Role::Member {
                parent: fleet.keys[fleet.parent_of(i) as usize],
            }
        };
        let mut path = Vec::new();
        let mut n = i;
        loop {
            path.push(fleet.keys[n as usize]);
            if n == 0 {
                break;
            }
            n = fleet.parent_of(n);
        }
        path.reverse();
        let mut engine = Engine::new(
            role,
            fleet.root_key.public(),
            fleet.secrets[i as usize].clone(),
            path,
            fleet.config.clone(),
            fleet.seed ^ u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        // A leaf needs its certificate only to prove a failure: it is given one then.
        if i != 0 && (!fleet.is_leaf(i) || self.nodes[i as usize].failed.iter().any(|f| *f)) {
            fleet.certify(&mut engine, i);
        }
        let node = &mut self.nodes[i as usize];
        node.online = true;
        // The children are the fleet's, each at its site where its tier has siblings.
        node.saved.children = fleet
            .children_of(i)
            .map(|c| SavedChild {
                key: fleet.keys[c as usize],
                client: fleet.is_leaf(c),
                site: fleet
                    .site_of(c)
                    .filter(|(tier, _)| {
                        fleet.sc.tiers[*tier]
                            .site
                            .as_ref()
                            .is_some_and(|s| s.siblings)
                    })
                    .map(|(_, site)| format!("site-{site}")),
            })
            .collect();
        for dropped in engine.resume(&node.saved, now) {
            tracing::warn!(node = i, "{dropped}");
        }
        let node = &mut self.nodes[i as usize];
        if fleet.is_leaf(i) {
            node.boots += 1;
            engine.start_installer(Withdrawn::Keep, std::mem::take(&mut node.modules), now);
        }
        self.nodes[i as usize].engine = Some(Box::new(engine));
        self.keep_window(i);
        self.drive(i, |e, now| e.handle_timeout(now));
    }

    /// Node `i` leaves (or crashes): its connections close, its memory is gone, its
    /// store stays.
    fn go_down(&mut self, i: u32, crash: bool) {
        let fleet = self.fleet;
        let notice = if crash { CRASH_NOTICED_AFTER } else { 0 };
        let node = &self.nodes[i as usize];
        let mut peers: Vec<u32> = Vec::new();
        if i != 0 && node.up_conn != 0 {
            peers.push(fleet.parent_of(i));
        }
        for (c, epoch) in fleet.children_of(i).zip(&node.child_conns) {
            if *epoch != 0 {
                peers.push(c);
            }
        }
        peers.extend(node.siblings.iter().map(|(s, _)| *s));
        for p in peers {
            self.close(i, p, notice);
        }
        let node = &mut self.nodes[i as usize];
        node.online = false;
        node.timer = None;
        if let Some(e) = node.engine.take() {
            node.fetch_timeouts += e.stats().fetch_timeouts;
            node.saved.report_seq = e.report_seq();
            node.modules = e.installed_modules().cloned().unwrap_or_default();
        }
        if crash {
            self.tally.counters.crashes += 1;
        } else {
            self.tally.counters.leaves += 1;
        }
    }

    /// `a` closes its connection with `b`; `b` hears of it after the latency (and
    /// `extra`), `a` is not told (it is gone, or tells its engine itself).
    fn close(&mut self, a: u32, b: u32, extra: Millis) {
        let epoch = self.conn(a, b);
        self.set_conn(a, b, 0);
        self.disconnected_at(b, a, epoch, extra);
    }

    /// Tells `to` that `from` closed connection `epoch`, after the latency and `extra`.
    fn disconnected_at(&mut self, to: u32, from: u32, epoch: u64, extra: Millis) {
        let at = self.now + self.fleet.latency(from, to) + extra;
        self.at(at, Ev::Disconnected { to, from, epoch });
    }

    /// Runs an input on node `i`'s engine, then carries out everything it asks for.
    fn drive(&mut self, i: u32, input: impl FnOnce(&mut Engine, Millis)) {
        let Some(mut engine) = self.nodes[i as usize].engine.take() else {
            return;
        };
        // The engine's clock is Unix time, as the rules it checks carry: virtual time 0
        // is [`EPOCH`].
        let now = self.now;
        input(&mut engine, EPOCH + now);
        while let Some(out) = engine.poll_output() {
            self.carry_out(i, &mut engine, out);
        }
        if let Some(t) = engine.poll_timeout() {
            let t = t.saturating_sub(EPOCH).max(now);
            let node = &mut self.nodes[i as usize];
            if node.timer.is_none_or(|pending| t < pending) {
                node.timer = Some(t);
                self.at(t, Ev::Timeout { node: i });
            }
        }
        self.nodes[i as usize].engine = Some(engine);
    }

    /// Sends what `make` builds (given the peer's index and the connection's epoch)
    /// from node `i` to `peer`, arriving after the latency; nothing if `i` holds no
    /// connection with it.
    fn over_connection(&mut self, i: u32, peer: &PeerId, make: impl FnOnce(u32, u64) -> Ev) {
        let Some(j) = self.fleet.node_of(peer) else {
            return;
        };
        let epoch = self.conn(i, j);
        if epoch != 0 {
            let at = self.now + self.fleet.latency(i, j);
            self.at(at, make(j, epoch));
        }
    }

    fn carry_out(&mut self, i: u32, engine: &mut Engine, out: Output) {
        let now = self.now;
        let fleet = self.fleet;
        match out {
            Output::Send { to, msg } => self.send_control(i, &to, msg),
            Output::Fetch {
                id,
                from,
                update,
                first,
                count,
                direct,
            } => {
                let base = self.delta_base(engine, &update);
                self.over_connection(i, &from, |j, epoch| Ev::Serve {
                    server: j,
                    client: i,
                    epoch,
                    fetch: id,
                    update,
                    first,
                    count,
                    direct,
                    base,
                })
            }
            Output::StoreManifest { manifest } => {
                let id = manifest.id;
                let n = manifest.chunks.len() as u32;
                let saved = &mut self.nodes[i as usize].saved;
                if saved.update_mut(&id).is_none() {
                    saved.updates.push((manifest, Bitmap::new(n)));
                    self.held_elsewhere(i, &id);
                }
                let have: Vec<bool> = self.nodes[i as usize]
                    .saved
                    .update_mut(&id)
                    .map(|b| (0..n).map(|c| b.get(c)).collect())
                    .unwrap_or_default();
                engine.handle_local_have(id, &have, EPOCH + now);
            }
            Output::Dial { peer } => {
                let Some(j) = fleet.node_of(&peer) else {
                    return;
                };
                // The handshake reaches the listener after a round trip.
                let rtt = 2 * fleet.latency(i, j);
                self.at(now + rtt, Ev::Accept { to: j, from: i });
            }
            Output::Disconnect { peer, .. } => {
                let Some(j) = fleet.node_of(&peer) else {
                    return;
                };
                if self.conn(i, j) != 0 {
                    self.close(i, j, 0);
                    engine.handle_disconnected(peer, EPOCH + now);
                }
            }
            Output::StoreRules { issuer, rules } => {
                // A node's own rules are counted when issued, an ancestor's on arrival.
                let origin = (issuer != fleet.keys[i as usize])
                    .then(|| fleet.rule_origin.lock().ok())
                    .flatten()
                    .and_then(|o| o.get(&Hash::of(&rules)).copied());
                if let Some(b) = origin {
                    self.tally.rules_arrived(b as usize, now);
                }
                self.last_change = now;
                self.nodes[i as usize].saved.keep_rules(issuer, rules);
            }
            Output::StoreReport { child, report } => {
                self.nodes[i as usize].saved.keep_report(child, report);
            }
            Output::Installer(job) => self.install_job(i, job, engine),
            Output::Event(event) => match event {
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
