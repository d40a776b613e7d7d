//! One lane of the simulated fleet: a real [`Engine`] for each node the lane runs,
//! driven in virtual time on the virtual network ([`super::vnet`]), which carries
//! out what crosses the links: connections, control messages, chunk requests served
//! through [`Engine::serve`].
//!
//! Owns the rest of what a daemon's driver does for its engine, done in memory: the
//! store (manifests, which chunks are held, rule sets, children's reports, for restarts
//! after a crash), the installer of a leaf, and the scripted world around its part of
//! the tree: publishing updates at the root, admins setting rules, WAN windows, and
//! nodes going away and coming back. It counts what the summary reports as it goes.
//! [`super::world`] runs the lanes side by side, a window of virtual time at a time,
//! and hands each one what the others sent it.

mod install;
mod rules;
mod versions;
mod windows;

use super::fleet::{EPOCH, Fleet, draw};
use super::scenario::ChurnKind;
use super::summary::{Row, Tally};
use super::vnet::{self, Driver, Own, Sent, Shape, Vnet};
use crate::content::Hash;
use crate::content::manifest::ModuleName;
use crate::engine::bitmap::Bitmap;
use crate::engine::installer::{InstallDone, InstallJob, ModuleState, Withdrawn};
use crate::engine::{Engine, Event, Millis, Output, Role, Saved, SavedChild};
use crate::rules::{Approval, Halt};
use crate::trust::PublicKey;
use std::collections::BTreeMap;

/// How long peers take to notice a crashed node (a graceful leave is seen at once).
const CRASH_NOTICED_AFTER: Millis = 10_000;

/// A node's state besides its engine and connections (those are the virtual
/// network's; its links are in the fleet).
#[derive(Default)]
struct Node {
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

/// What the lane makes happen around the network, queued with the network's events.
#[derive(Debug)]
pub(super) enum Script {
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

impl Own for Script {
    fn node(&self) -> Option<u32> {
        match self {
            Script::Install { node, .. }
            | Script::WanWindow { node }
            | Script::Down { node, .. }
            | Script::Up { node, .. } => Some(*node),
            Script::Publish { .. } => Some(0),
            Script::SetRules { .. } => None,
        }
    }
}

/// An event of a lane: the network's, or its script's.
pub(super) type Ev = vnet::Ev<Script>;

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
    /// The network as this lane sees it: every node of the fleet and every queue, of
    /// which only this lane's nodes, and the queues they send through, are used.
    pub(super) vnet: Vnet<Script>,
    /// One slot per node of the fleet; only this lane's are used.
    nodes: Vec<Node>,
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
                    installed: vec![None; sc.updates.len()],
                    failed: vec![false; sc.updates.len()],
                    ..Node::default()
                }
            })
            .collect();
        let mut lane = Lane {
            fleet,
            vnet: Vnet::new(fleet.net.clone(), fleet.links.len(), EPOCH).in_lane(id, fleet.lanes),
            nodes,
            scripted: 0,
            last_change: 0,
            tally: Tally::new(sc, &fleet.tier_start, fleet.batches.len()),
        };
        lane.script();
        lane
    }

    fn owns(&self, i: u32) -> bool {
        self.fleet.lane_of(i) == self.vnet.lane()
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
                        Script::Down {
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
                    Script::Up {
                        node: i as u32,
                        scripted: false,
                    },
                ),
                Some(Millis::MAX) => self.tally.never_online += 1,
                Some(t) => self.scripted_at(
                    *t,
                    Script::Up {
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
                self.scripted_at(up.at, Script::Publish { update: u as u32 });
            }
        }
        for (b, batch) in fleet.batches.iter().enumerate() {
            if !self.issuers(b).is_empty() {
                self.scripted_at(batch.at, Script::SetRules { batch: b as u32 });
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

    fn scripted_at(&mut self, at: Millis, ev: Script) {
        self.scripted += 1;
        self.at(at, ev);
    }

    /// A scripted event ran: the world changed now.
    fn script_ran(&mut self) {
        self.scripted -= 1;
        self.last_change = self.now();
    }

    /// What the other lanes need to know of this one at the end of a window; the
    /// events sent to lane `l` are handed to `post(l, events)`.
    pub fn standing(
        &mut self,
        sample: bool,
        post: impl FnMut(usize, &mut Vec<(Millis, Ev)>),
    ) -> Standing {
        let sent = self.vnet.post(post);
        Standing {
            next: self.vnet.next_at(),
            sent,
            scripted: self.scripted,
            last_change: self.last_change,
            row: sample.then(|| self.tally.row(self.vnet.window_end())),
        }
    }

    /// Collects what the engines counted.
    pub fn finish(&mut self) {
        for i in 0..self.nodes.len() {
            let mut timeouts = self.nodes[i].fetch_timeouts;
            if let Some(e) = self.vnet.engine(i as u32) {
                timeouts += e.stats().fetch_timeouts;
                self.tally.counters.redirects += e.stats().redirects;
                self.tally.counters.siblings_banned += e.stats().siblings_banned;
            }
            self.tally.counters.fetch_timeouts += timeouts;
        }
        self.count_versions();
        self.tally.last_change = self.last_change;
    }

    /// Starts node `i` from what its store holds (nothing, the first time).
    fn boot(&mut self, i: u32) {
        // The engine's clock: Unix time, as the rules it checks carry.
        let now = self.vnet.engine_now();
        let fleet = self.fleet;
        if self.vnet.online(i) {
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
        self.vnet.start(i, engine);
        self.keep_window(i);
        self.drive(i, |e, now| e.handle_timeout(now));
    }

    /// Node `i` leaves (or crashes): its connections close, its memory is gone, its
    /// store stays.
    fn go_down(&mut self, i: u32, crash: bool) {
        let fleet = self.fleet;
        let notice = if crash { CRASH_NOTICED_AFTER } else { 0 };
        let (up, children, others) = self.vnet.connections(i);
        let mut peers: Vec<u32> = Vec::new();
        if i != 0 && up != 0 {
            peers.push(fleet.parent_of(i));
        }
        for (c, epoch) in fleet.children_of(i).zip(children) {
            if *epoch != 0 {
                peers.push(c);
            }
        }
        peers.extend(others.iter().map(|(s, _)| *s));
        for p in peers {
            self.close(i, p, notice);
        }
        let node = &mut self.nodes[i as usize];
        if let Some(e) = self.vnet.stop(i) {
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
}

impl<'f> Driver for Lane<'f> {
    type Shape = Fleet<'f>;
    type Own = Script;

    fn vnet(&mut self) -> &mut Vnet<Script> {
        &mut self.vnet
    }

    fn vnet_ref(&self) -> &Vnet<Script> {
        &self.vnet
    }

    fn shape(&self) -> &Fleet<'f> {
        self.fleet
    }

    fn own(&mut self, ev: Script) {
        let now = self.now();
        let fleet = self.fleet;
        match ev {
            Script::Install { node, update, boot } => {
                if self.nodes[node as usize].boots == boot {
                    self.install(node, update as usize);
                }
            }
            Script::WanWindow { node } => self.window_changed(node),
            Script::Publish { update } => {
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
            Script::SetRules { batch } => {
                self.script_ran();
                self.set_rules(batch as usize);
            }
            Script::Down { node, crash, back } => {
                self.script_ran();
                if self.vnet.online(node) {
                    self.go_down(node, crash);
                    self.scripted_at(
                        back,
                        Script::Up {
                            node,
                            scripted: true,
                        },
                    );
                }
            }
            Script::Up { node, scripted } => {
                if scripted {
                    self.script_ran();
                }
                self.boot(node);
            }
        }
    }

    fn keep(&mut self, i: u32, engine: &mut Engine, out: Output) {
        let now = self.now();
        let fleet = self.fleet;
        match out {
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
            // The network carries out the rest.
            Output::Send { .. }
            | Output::Fetch { .. }
            | Output::Dial { .. }
            | Output::Disconnect { .. } => {}
        }
    }

    /// `wire` bytes from `from` reached `to`: counted as the root's egress, across a
    /// site's WAN link, and into `to`'s site, as they apply.
    fn crossed(&mut self, from: u32, to: u32, wire: u64) {
        let fleet = self.fleet;
        if from == 0 {
            self.tally.root_egress += wire;
        }
        if fleet.crosses_site(from, to) {
            self.tally.site_wan += wire;
        }
        if let Some(site) = fleet.report_site(to)
            && fleet.report_site(from) != Some(site)
        {
            self.tally.site_received(site, wire);
        }
    }

    /// Good chunks landed at `to`: its store holds them, and the summary counts their
    /// bytes by where they came from.
    fn landed(&mut self, to: u32, from: u32, update: &Hash, chunks: &[Sent]) {
        let fleet = self.fleet;
        let sibling = fleet.same_site(to, from);
        let tier = fleet.tier_of(to);
        if let Some(have) = self.nodes[to as usize].saved.update_mut(update) {
            for c in chunks.iter().filter(|c| c.good) {
                have.set(c.index);
            }
        }
        let mut bytes = 0u64;
        for c in chunks {
            bytes += u64::from(c.len);
        }
        self.tally.received(tier, sibling, bytes);
        if let Some(u) = fleet.update_index(update) {
            self.tally.received_for(u, chunks.len() as u64, bytes);
        }
        if !chunks.is_empty() {
            self.last_change = self.now();
        }
    }
}
