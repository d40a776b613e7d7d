//! The engine: one node's logic, sans-IO. It owns the tree relations of a node (its
//! parent, its children), the state of every update it knows (chunk bitmaps), the choice
//! of what to fetch from whom and when, and the verdicts on misbehaving peers.
//!
//! It does no I/O: no sockets, no files, no clock, no threads. Inputs arrive through
//! `handle_*` calls that carry `now`; outputs are drained with [`Engine::poll_output`]
//! until it returns `None`, and [`Engine::poll_timeout`] says when to call
//! [`Engine::handle_timeout`] next. Randomness comes from a seeded generator. Two
//! drivers run it: `net` (libp2p, real time) and `sim` (virtual time, modelled links),
//! so the simulator runs the logic that ships.
//!
//! The data plane stays in the driver: the engine says "fetch chunks 40..56 of update U
//! from peer P" ([`Output::Fetch`]); the driver moves and hashes the bytes, stores good
//! chunks and reports each chunk's verdict ([`Engine::handle_chunk`]) and the end of the
//! request ([`Engine::handle_fetch_end`]). The control plane (offers of signed manifests,
//! announcements of held chunks, rule sets) is the engine's: [`Control`] messages in
//! both directions. A node announces each chunk to its children as soon as it is
//! stored, so transfers cut through the tree instead of waiting for whole updates.
//!
//! Rules gate all of it (PROTOCOL.md §14): the engine holds the [`RuleBook`] of its
//! path, computes what is available to itself and to each child, offers a child only
//! what is available to that child, takes up an offer only of what is available to
//! itself by its own computation, serves chunks only of those, and fetches only what
//! it may have and someone will use: itself if it is a leaf, else one of its children.
//!
//! Sites (PROTOCOL.md §13.1, in `site`): a parent sends each chunk across a site's
//! uplink once and points the site's other children to the sibling that has it; a child
//! fetches from its siblings what they hold and from its parent only the rest.
//!
//! Reports go the other way (PROTOCOL.md §15): the engine keeps its children's newest
//! reports, sends its parent a signed snapshot of its own state and its subtree's
//! roll-up shortly after anything changes (and after every reconnect, so that nothing
//! is lost while the parent is away and nothing is counted twice), and halts its own
//! approvals whose failure threshold the roll-up passes.

pub mod bitmap;
mod site;

pub use site::{MAX_SIBLINGS, MAX_STRIKES, Served, SiblingInfo};

use crate::content::{DigestState, Hash};
use crate::report::{
    self, NodeDetail, Received, Report, Rollup, RuleRefusal, SignedReport, State, UpdateState,
};
use crate::rules::{ApprovalKey, Availability, RuleBook, RulesError, SignedRules};
use crate::trust::{PublicKey, SecretKey, SignedManifest};
use bitmap::Bitmap;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Milliseconds since the Unix epoch: real time in the daemon, virtual time in the
/// simulator.
pub type Millis = u64;

/// A node, named by its ed25519 public key (its libp2p identity).
pub type PeerId = PublicKey;

/// Identifies one fetch request for its lifetime.
pub type FetchId = u64;

/// Tunables. The defaults suit a LAN or WAN link of 10 Mbit/s to 10 Gbit/s.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most chunks asked for in one fetch request (a span of consecutive chunks).
    pub span: u32,
    /// Fetch requests in flight towards one peer: enough to keep a long link full.
    pub window: usize,
    /// A fetch not ended by then is given up and its chunks asked again.
    pub fetch_timeout: Millis,
    /// First and longest wait before dialling a lost parent again (doubling between).
    pub retry_min: Millis,
    pub retry_max: Millis,
    /// How long a chunk that arrived bad waits before it is asked again.
    pub bad_chunk_delay: Millis,
    /// How long after a change the parent is sent a report, so that a burst of changes
    /// makes one report.
    pub report_delay: Millis,
    /// The least time between two reports that only carry progress (bytes so far);
    /// a change of state (an update started, done, installed or failed anywhere below,
    /// a rule refused, a child gone) is sent after `report_delay` alone.
    pub report_interval: Millis,
    /// Bytes per second of reports a node may send up on average: reports carrying
    /// much detail are spaced further apart, so that they never crowd a slow link
    /// (16 KiB/s is 1.3% of a 10 Mbit/s link; a 10 KB report goes up at most every
    /// 0.6 s, a 200 KB one every 12 s).
    pub report_rate: u64,
    /// The least time between two announcements of newly stored chunks to children
    /// and siblings: chunks stored in a burst go out in one `Have` (the first after a
    /// quiet spell, and the last of an update, at once). A node that receives fast so
    /// sends a message per burst, not per chunk, to every child, and its children ask
    /// for spans of chunks rather than one chunk at a time.
    pub announce_interval: Millis,
    /// A client with an installer: for its own use it fetches only the updates the
    /// installer asks for ([`Engine::set_needed`]), not everything it may have, so that
    /// nothing already installed and no superseded version crosses the link.
    pub installer: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            span: 16,
            window: 8,
            fetch_timeout: 60_000,
            retry_min: 500,
            retry_max: 30_000,
            bad_chunk_delay: 1_000,
            report_delay: 100,
            report_interval: 1_000,
            report_rate: 16 * 1024,
            announce_interval: 250,
            installer: false,
        }
    }
}

/// Most rule sets one `Rules` message may carry: one per node of the longest path.
pub const MAX_RULE_SETS: usize = 32;

/// Most offers of updates not available to this node that it keeps, waiting for rules
/// that make them available; past it, further such offers are dropped.
pub const MAX_WITHHELD: usize = 64;

/// Control-plane messages between a parent and its children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// A signed manifest the sender makes available (its canonical envelope bytes).
    Offer { manifest: Arc<[u8]> },
    /// The sender now holds these chunks of an update (ranges `[start, end)`).
    Have {
        update: Hash,
        ranges: Vec<(u32, u32)>,
    },
    /// The live rule sets of the sender's path, root node's first, its own last: the
    /// subset proof (PROTOCOL.md §14.6). Canonical envelope bytes.
    Rules { sets: Vec<Arc<[u8]>> },
    /// From a child: its newest signed report (PROTOCOL.md §15).
    Report { report: Arc<[u8]> },
    /// From the parent: the receiver's connected siblings, the other children of the
    /// parent at the receiver's site (PROTOCOL.md §13.1).
    Siblings { peers: Vec<PeerId> },
}

/// How the driver judged one chunk of a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// Hashed right and stored; `wire` bytes crossed the link for it (its length, or
    /// fewer for a delta).
    Stored { wire: u32 },
    /// The bytes did not match the manifest's hash: nothing was stored.
    Bad,
}

/// Something the driver should do, or know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        to: PeerId,
        msg: Control,
    },
    /// Fetch chunks `first .. first + count` of `update` from `from` (the parent or a
    /// sibling). `direct` asks the parent to send them even if a sibling has them.
    Fetch {
        id: FetchId,
        from: PeerId,
        update: Hash,
        first: u32,
        count: u32,
        direct: bool,
    },
    /// A new, verified manifest: store it, then report which of its chunks the store
    /// already holds with [`Engine::handle_local_have`].
    StoreManifest {
        manifest: Arc<SignedManifest>,
    },
    /// Connect to this peer (the parent, after it was lost, or a sibling).
    Dial {
        peer: PeerId,
    },
    /// Close the connection to this peer.
    Disconnect {
        peer: PeerId,
        reason: String,
    },
    /// A newer rule set, verified (an ancestor's), or signed here (a halt): persist it
    /// before acting on what it allows, so that after a restart older versions are
    /// still refused.
    StoreRules {
        issuer: PublicKey,
        rules: Arc<[u8]>,
    },
    /// A child's newer report: keep it, so that a restarted parent still counts a child
    /// that is offline.
    StoreReport {
        child: PeerId,
        report: Arc<[u8]>,
    },
    Event(Event),
}

/// Things worth logging and counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    UpdateComplete {
        update: Hash,
    },
    /// A peer sent bytes that did not match the manifest; the chunk will be fetched again.
    BadChunk {
        peer: PeerId,
        update: Hash,
        index: u32,
    },
    /// A peer sent something that cannot be accepted (a bad manifest, an unknown update).
    Misbehaved {
        peer: PeerId,
        reason: String,
    },
    /// A peer that is neither this node's parent nor one of its children.
    Refused {
        peer: PeerId,
    },
    /// A rule set from the parent was refused; the one held from its issuer stays.
    RulesRefused {
        peer: PeerId,
        reason: String,
    },
    /// Rules changed what is available to this node or its children.
    RulesApplied,
    /// The parent offered an update that is not available to this node by its own
    /// computation: it is kept aside (not stored, not fetched, not offered on).
    OfferWithheld {
        peer: PeerId,
        update: Hash,
    },
    /// The roll-up passed an approval's failure threshold: this node halted it.
    Halted {
        update: Hash,
        group: String,
        reason: String,
    },
    ParentLost,
    ParentConnected,
}

/// Counters for status and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub chunks_from_parent: u64,
    pub bytes_from_parent: u64,
    pub chunks_from_siblings: u64,
    pub bytes_from_siblings: u64,
    /// Chunk requests of children answered "elsewhere" (a sibling at their site has it).
    pub redirects: u64,
    pub siblings_banned: u64,
    pub bad_chunks: u64,
    pub fetch_timeouts: u64,
    /// Reports sent to the parent.
    pub reports_sent: u64,
}

/// Where this node sits in the tree.
#[derive(Clone, Debug)]
pub enum Role {
    /// Holds the root key: updates start here.
    Root,
    /// A member with a parent.
    Member { parent: PeerId },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ParentLink {
    Connected,
    /// Lost; dial again at `retry_at`.
    Down {
        retry_at: Millis,
        attempts: u32,
    },
    /// A dial was asked for; waiting for [`Engine::handle_connected`].
    Dialing {
        attempts: u32,
    },
}

pub use crate::trust::ChunkList;

/// What a node knows of one update.
struct Update {
    manifest: Arc<SignedManifest>,
    chunks: ChunkList,
    have: Bitmap,
    /// Chunks asked for (or resting after a bad copy) and not yet answered.
    busy: Bitmap,
    /// What the parent has announced it holds.
    parent_has: Bitmap,
    /// Stored since the children were last told.
    unannounced: Bitmap,
    /// The driver has not yet said what the store holds: fetch nothing yet.
    awaiting_local: bool,
    /// Chunks that came back bad and when they may be asked again.
    resting: Vec<(u32, Millis)>,
    /// [`Event::UpdateComplete`] was reported.
    completed: bool,
    /// Taken up: [`Output::StoreManifest`] was asked for. An offer of an update that is
    /// not available to this node waits here unstored until it becomes available.
    stored: bool,
    /// Bytes of it received from the parent, and from siblings.
    from_parent: u64,
    from_siblings: u64,
    /// Where its chunks are at this node's site, on a node with siblings.
    site: Option<Box<site::SiteChunks>>,
    /// What the installer said of it (a client's); else the chunks tell its state.
    outcome: Option<Outcome>,
}

impl Update {
    fn new(manifest: Arc<SignedManifest>, awaiting_local: bool) -> Update {
        let chunks = manifest.chunks.clone();
        let n = chunks.len() as u32;
        Update {
            manifest,
            chunks,
            have: Bitmap::new(n),
            busy: Bitmap::new(n),
            parent_has: Bitmap::new(n),
            unannounced: Bitmap::new(n),
            awaiting_local,
            resting: Vec::new(),
            completed: false,
            stored: !awaiting_local,
            from_parent: 0,
            from_siblings: 0,
            site: None,
            outcome: None,
        }
    }

    fn bytes_held(&self) -> u64 {
        (0..self.have.len())
            .filter(|&i| self.have.get(i))
            .map(|i| u64::from(self.chunks[i as usize].1))
            .sum()
    }
}

struct Fetch {
    from: PeerId,
    update: Hash,
    first: u32,
    count: u32,
    deadline: Millis,
}

/// The installer's word on an update (a client's), reported up with the update's state.
/// Notes and reasons are made fit for the wire ([`report::sanitize_reason`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Installed and current, with a note such as "upgraded from 1.0".
    Installed(Option<String>),
    /// The install, its hook, or the version itself failed here, and why.
    Failed(String),
    /// Not (or no longer) installed: the state is what the chunks say, with a note such
    /// as "superseded by 2.0".
    NotInstalled(Option<String>),
}

/// Progress of one update, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateProgress {
    pub update: Hash,
    /// Available to this node by its rules (PROTOCOL.md §14.4).
    pub available: bool,
    pub chunks: u32,
    pub chunks_held: u32,
    pub bytes: u64,
    pub bytes_held: u64,
}

/// One node's logic. See the module documentation.
pub struct Engine {
    config: Config,
    root_key: PublicKey,
    parent: Option<(PeerId, ParentLink)>,
    /// Certified children, and whether each is connected now.
    children: BTreeMap<PeerId, bool>,
    updates: HashMap<Hash, Update, DigestState>,
    /// Update ids in arrival order: the order fetches are scheduled in.
    order: Vec<Hash>,
    fetches: BTreeMap<FetchId, Fetch>,
    next_fetch: FetchId,
    out: VecDeque<Output>,
    stats: Stats,
    rng: SplitMix64,
    /// This node's certificate path, root node first, itself last.
    path: Vec<PublicKey>,
    /// The newest rule set of each node on the path, this node's own included.
    book: RuleBook,
    /// What this node may have, and what each certified child may, as of the last
    /// [`Engine::refresh`].
    avail: Availability,
    child_avail: BTreeMap<PeerId, Availability>,
    /// The union of `child_avail`: what some child may have, asked on every schedule.
    children_avail: Availability,
    /// When availability changes by itself next (a deadline, an expiry).
    next_change: Option<Millis>,
    /// The time of the last evaluation of rules, in Unix seconds.
    now_secs: u64,
    /// This node's key: it signs the node's reports and its halts.
    key: SecretKey,
    /// The newest report of each child.
    rollup: Rollup,
    /// When to send the parent a report (only while it is connected).
    report_due: Option<Millis>,
    /// When the chunks stored since the last announcement are announced, and when
    /// the last announcement went out.
    announce_due: Option<Millis>,
    last_announce: Option<Millis>,
    /// The last report sent (its time cleared): an unchanged snapshot is not sent again.
    last_report: Option<Report>,
    /// When the last report was sent, and its size.
    last_report_at: Millis,
    last_report_len: usize,
    /// The sequence number of the last report sent.
    report_seq: u64,
    /// Rule sets this node refused, newest first (at most [`report::MAX_REFUSALS`]).
    refusals: Vec<RuleRefusal>,
    /// Approvals this node halted and has not seen set again since.
    halted: std::collections::BTreeSet<ApprovalKey>,
    /// On a client with an installer: the updates it wants the bytes of.
    needed: std::collections::HashSet<Hash, DigestState>,
    /// The parent is connected and has sent its path's rules since: what is available
    /// now is what the tree says, not what was kept from an earlier session.
    rules_heard: bool,
    /// Nothing new is asked of the parent (outside the node's WAN windows).
    parent_paused: bool,
    /// The other children of this node's parent at its site; a slot never moves.
    siblings: Vec<site::Sibling>,
    /// On a parent: its children's sites and who was sent which chunk.
    sites: site::Sites,
}

impl Engine {
    /// A node with no updates or rules yet. `key` is its node key; `path` its
    /// certificate path (the node keys of its verified chain, root node first, itself
    /// last; the root node's own key alone on the root). `seed` drives the engine's only randomness (backoff
    /// jitter); `root_key` is the pinned trust anchor.
    pub fn new(
        role: Role,
        root_key: PublicKey,
        key: SecretKey,
        path: Vec<PublicKey>,
        config: Config,
        seed: u64,
    ) -> Engine {
        let avail = if path.len() == 1 {
            Availability::everything()
        } else {
            Availability::none()
        };
        Engine {
            config,
            root_key,
            parent: match role {
                Role::Root => None,
                Role::Member { parent } => Some((
                    parent,
                    ParentLink::Down {
                        retry_at: 0,
                        attempts: 0,
                    },
                )),
            },
            children: BTreeMap::new(),
            updates: HashMap::default(),
            order: Vec::new(),
            fetches: BTreeMap::new(),
            next_fetch: 1,
            out: VecDeque::new(),
            stats: Stats::default(),
            rng: SplitMix64(seed),
            path,
            book: RuleBook::new(),
            avail,
            child_avail: BTreeMap::new(),
            children_avail: Availability::none(),
            next_change: None,
            now_secs: 0,
            key,
            rollup: Rollup::new(),
            report_due: None,
            announce_due: None,
            last_announce: None,
            last_report: None,
            last_report_at: 0,
            last_report_len: 0,
            report_seq: 0,
            refusals: Vec::new(),
            halted: std::collections::BTreeSet::new(),
            needed: std::collections::HashSet::default(),
            rules_heard: false,
            parent_paused: false,
            siblings: Vec::new(),
            sites: site::Sites::default(),
        }
    }

    /// Declares a certified child (from the membership records), not yet connected.
    pub fn add_child(&mut self, child: PeerId) {
        self.children.entry(child).or_insert(false);
        let avail = self
            .book
            .child_availability(&self.path, &child, self.now_secs);
        self.child_avail.entry(child).or_insert(avail);
        self.unite_children_avail();
    }

    /// Recomputes what some child may have, after `child_avail` changed.
    fn unite_children_avail(&mut self) {
        let mut union = Availability::none();
        for a in self.child_avail.values() {
            union.union(a);
        }
        self.children_avail = union;
    }

    /// Forgets a child (revoked): it is disconnected and refused from now on.
    pub fn remove_child(&mut self, child: &PeerId, now: Millis) {
        self.child_avail.remove(child);
        self.forget_site_member(child);
        self.unite_children_avail();
        if self.rollup.remove(child) {
            self.changed(now, true);
        }
        if self.children.remove(child) == Some(true) {
            self.out.push_back(Output::Disconnect {
                peer: *child,
                reason: "membership revoked".into(),
            });
        }
    }

    /// Adds an update the store already holds, at start-up or after a publish: `have`
    /// marks which of its distinct chunks (`Manifest::distinct_chunk_list` order) are
    /// stored.
    pub fn add_local_update(&mut self, manifest: Arc<SignedManifest>, have: &[bool], now: Millis) {
        let id = manifest.id;
        if !self.updates.contains_key(&id) {
            self.order.push(id);
            self.updates.insert(id, Update::new(manifest, false));
            self.offer_to_children(id);
        }
        self.handle_local_have(id, have, now);
    }

    /// Offers a taken-up update to every connected child it is available to.
    fn offer_to_children(&mut self, id: Hash) {
        for child in self.connected_children_with(&id) {
            self.offer(child, id);
        }
    }

    /// Sends `child` the offer of `id` and the chunks held of it.
    fn offer(&mut self, child: PeerId, id: Hash) {
        let Some(u) = self.updates.get(&id) else {
            return;
        };
        self.out.push_back(Output::Send {
            to: child,
            msg: Control::Offer {
                manifest: u.manifest.bytes.clone(),
            },
        });
        let ranges = u.have.ranges();
        if !ranges.is_empty() {
            self.out.push_back(Output::Send {
                to: child,
                msg: Control::Have { update: id, ranges },
            });
        }
    }

    /// Whether this node took `update` up (it stores it, to use or pass on).
    fn is_taken_up(&self, update: &Hash) -> bool {
        self.updates.get(update).is_some_and(|u| u.stored)
    }

    /// Whether `child` may be offered and served `update`: taken up here, and
    /// available to the child.
    fn is_available_to(&self, child: &PeerId, update: &Hash) -> bool {
        self.is_taken_up(update)
            && self
                .child_avail
                .get(child)
                .is_some_and(|a| a.is_available(update))
    }

    /// The connected children `update` is available to, in key order: what
    /// [`Engine::is_available_to`] says of each, found in one walk of `children` and
    /// `child_avail` side by side (they are ordered alike). A branch asks this at every
    /// announcement; searching both maps per child was 3.75% of a `perf record` of
    /// `simulations/fleet-100k.toml`.
    fn connected_children_with(&self, update: &Hash) -> Vec<PeerId> {
        if !self.is_taken_up(update) {
            return Vec::new();
        }
        let mut avail = self.child_avail.iter().peekable();
        self.children
            .iter()
            .filter(|(_, connected)| **connected)
            .filter_map(|(child, _)| {
                while avail.next_if(|(c, _)| *c < child).is_some() {}
                avail
                    .peek()
                    .filter(|(c, a)| *c == child && a.is_available(update))
                    .map(|_| *child)
            })
            .collect()
    }

    /// Whether this node fetches `update`: it may have it, and it will use it itself
    /// (a node without children) or one of its children may have it.
    fn is_wanted(&self, update: &Hash) -> bool {
        let own_use = if self.config.installer {
            self.needed.contains(update)
        } else {
            self.children.is_empty()
        };
        self.avail.is_available(update) && (own_use || self.children_avail.is_available(update))
    }

    /// This node's own rule set, signed by the driver for the admin: applied, sent to
    /// the children, and acted on. The driver persists it first.
    pub fn set_own_rules(&mut self, rules: SignedRules, now: Millis) -> Result<(), RulesError> {
        if self.path.last() != Some(&rules.issuer()) {
            return Err(RulesError::WrongSigner {
                signer: rules.issuer(),
            });
        }
        if self.book.apply(rules)? {
            // An approval set again (resumed, or changed) may be halted again.
            let own = self.book.get(&self.me()).map(|r| &r.rules.approvals);
            self.halted.retain(|k| {
                own.and_then(|a| a.get(k))
                    .is_some_and(|a| a.halted.is_some())
            });
            self.send_rules_to_children(now);
            self.refresh(now);
            self.check_halts(now);
        }
        Ok(())
    }

    /// This node's key.
    fn me(&self) -> PublicKey {
        self.key.public()
    }

    /// Something a report shows may have changed: the parent hears of it shortly, never
    /// faster than the report byte rate allows, and, for mere progress (`state` false),
    /// no sooner than the report interval.
    fn changed(&mut self, now: Millis, state: bool) {
        if self.parent_connected() != Some(true) {
            return;
        }
        let by_rate = (self.last_report_len as u64)
            .saturating_mul(1000)
            .checked_div(self.config.report_rate)
            .unwrap_or(0);
        let spacing = if state {
            by_rate
        } else {
            by_rate.max(self.config.report_interval)
        };
        let due = (now + self.config.report_delay).max(self.last_report_at + spacing);
        self.report_due = Some(self.report_due.map_or(due, |d| d.min(due)));
    }

    /// The sequence number of the last report sent: the driver keeps it, so that the
    /// next run continues above it (PROTOCOL.md §15.1) whatever the clock does.
    pub fn report_seq(&self) -> u64 {
        self.report_seq
    }

    /// Continues report sequence numbers above `seq` (kept by an earlier run).
    pub fn set_report_seq(&mut self, seq: u64) {
        self.report_seq = self.report_seq.max(seq);
    }

    /// What this node would report now: its own state and its subtree's roll-up. On the
    /// root, the whole fleet.
    pub fn report(&self, now: Millis) -> Report {
        let me = NodeDetail {
            node: self.me(),
            depth: self.path.len().saturating_sub(1) as u32,
            issued: now / 1000,
            parent: self.parent().copied(),
            updates: self.own_states(),
        };
        let groups = self
            .book
            .get(&self.me())
            .map(|r| r.rules.groups.clone())
            .unwrap_or_default();
        self.rollup.report(me, &groups, &self.refusals)
    }

    /// This node's state for every update it took up.
    fn own_states(&self) -> Vec<UpdateState> {
        self.order
            .iter()
            .filter_map(|id| self.updates.get(id).map(|u| (id, u)))
            .filter(|(_, u)| u.stored)
            .take(report::MAX_UPDATES)
            .map(|(id, u)| {
                let done = u.bytes_held();
                let total: u64 = u.chunks.iter().map(|c| u64::from(c.1)).sum();
                let by_chunks = if !u.awaiting_local && u.have.is_full() {
                    State::Downloaded
                } else if done > 0 || u.busy.count() > 0 {
                    State::Downloading
                } else {
                    State::Available
                };
                let (state, reason) = match &u.outcome {
                    Some(Outcome::Installed(note)) => (State::Installed, note.clone()),
                    Some(Outcome::Failed(reason)) => (State::Failed, Some(reason.clone())),
                    Some(Outcome::NotInstalled(note)) => (by_chunks, note.clone()),
                    None => (by_chunks, None),
                };
                let mut state = UpdateState::new(*id, state, done, total);
                state.reason = reason;
                state.bytes_done = done.min(total);
                state.bytes_total = total;
                state.from_parent = u.from_parent;
                state.from_siblings = u.from_siblings;
                state
            })
            .collect()
    }

    /// The installer's word on an update (see [`Outcome`]). Reported up if it changed.
    pub fn set_outcome(&mut self, update: &Hash, outcome: Outcome, now: Millis) {
        let Some(u) = self.updates.get_mut(update) else {
            return;
        };
        let fit = |s: &Option<String>| s.as_deref().map(report::sanitize_reason);
        let outcome = match outcome {
            Outcome::Installed(note) => Outcome::Installed(fit(&note)),
            Outcome::Failed(reason) => Outcome::Failed(report::sanitize_reason(&reason)),
            Outcome::NotInstalled(note) => Outcome::NotInstalled(fit(&note)),
        };
        if u.outcome.as_ref() != Some(&outcome) {
            u.outcome = Some(outcome);
            self.changed(now, true);
        }
    }

    /// On a client with an installer ([`Config::installer`]): whether the installer
    /// wants the bytes of `update`. Updates start unneeded there.
    pub fn set_needed(&mut self, update: &Hash, needed: bool, now: Millis) {
        let changed = if needed {
            self.needed.insert(*update)
        } else {
            self.needed.remove(update)
        };
        if changed && needed {
            self.schedule(now);
        }
    }

    /// Forgets which chunks of `update` are held and takes the store's word again: a
    /// client whose repair found chunks missing or damaged fetches them again.
    pub fn recheck_local(&mut self, update: &Hash, have: &[bool], now: Millis) {
        if let Some(u) = self.updates.get_mut(update)
            && have.len() == u.have.len() as usize
        {
            for (i, held) in have.iter().enumerate() {
                if !held {
                    u.have.clear(i as u32);
                }
            }
            u.completed = false;
        }
        self.handle_local_have(*update, have, now);
    }

    /// The newest report of each child.
    pub fn rollup(&self) -> &Rollup {
        &self.rollup
    }

    /// Reloads a child's report the driver kept, at start-up. A report that no longer
    /// opens is refused and dropped.
    pub fn restore_report(
        &mut self,
        child: &PeerId,
        bytes: &[u8],
        now: Millis,
    ) -> Result<(), report::ReportError> {
        if !self.children.contains_key(child) {
            return Ok(());
        }
        self.rollup.receive(child, bytes)?;
        // A threshold crossed just before a restart still halts.
        self.check_halts(now);
        Ok(())
    }

    fn handle_report(&mut self, child: PeerId, bytes: Arc<[u8]>, now: Millis) {
        let before = self
            .rollup
            .get(&child)
            .map(|r| (r.report.subtree.clone(), r.report.refusals.clone()));
        match self.rollup.receive(&child, &bytes) {
            Ok(Received::Applied) => {
                self.out.push_back(Output::StoreReport {
                    child,
                    report: bytes,
                });
                // New counts or refusals below are news; only new bytes so far are not.
                let state = self
                    .rollup
                    .get(&child)
                    .map(|r| (&r.report.subtree, &r.report.refusals))
                    != before
                        .as_ref()
                        .map(|(subtree, refusals)| (subtree, refusals));
                self.changed(now, state);
                self.check_halts(now);
            }
            Ok(Received::Duplicate | Received::Stale { .. }) => {}
            Err(e) => self.misbehaved(child, &format!("sent a report that is refused: {e}")),
        }
    }

    /// Halts this node's own approvals whose failure threshold the children's reports
    /// pass (PROTOCOL.md §14.7): a new version of its rules, signed here, kept by the
    /// driver and sent down like any other.
    fn check_halts(&mut self, now: Millis) {
        let me = self.me();
        let Some(own) = self.book.get(&me) else {
            return;
        };
        let halts: Vec<(ApprovalKey, String)> = self
            .rollup
            .due_halts(&own.rules)
            .into_iter()
            .filter(|(key, _)| !self.halted.contains(key))
            .map(|(key, reason)| (key, reason.to_string()))
            .collect();
        if halts.is_empty() {
            return;
        }
        let mut rules = own.rules.clone();
        // Versions follow the clock where it is ahead, so that a version whose write
        // was lost is never signed again with other content (PROTOCOL.md §14.1).
        let (version, expires) = ((own.version + 1).max(now / 1000), own.expires);
        let secs = (now / 1000).max(rules.issued);
        for (key, reason) in &halts {
            // The reason comes from a fixed message with numbers: always valid.
            let _ = rules.halt(&key.update, &key.group, secs, reason);
        }
        rules.issued = secs;
        let signed = match SignedRules::sign(&self.key, version, expires.max(secs + 1), rules) {
            Ok(signed) => signed,
            Err(e) => {
                self.misbehaved(me, &format!("cannot sign a halt: {e}"));
                return;
            }
        };
        self.out.push_back(Output::StoreRules {
            issuer: me,
            rules: signed.bytes.clone().into(),
        });
        for (key, reason) in halts {
            self.out.push_back(Output::Event(Event::Halted {
                update: key.update,
                group: key.group.clone(),
                reason,
            }));
            self.halted.insert(key);
        }
        if self.book.apply(signed).is_ok() {
            self.send_rules_to_children(now);
            self.refresh(now);
        }
    }

    /// Sends the parent a signed snapshot, if it is connected.
    fn send_report(&mut self, now: Millis) {
        self.report_due = None;
        let Some(parent) = self.parent().copied() else {
            return;
        };
        if self.parent_connected() != Some(true) {
            return;
        }
        let mut report = self.report(now);
        // Compared with its time cleared, as the last one is kept.
        let issued = std::mem::take(&mut report.issued);
        if self.last_report.as_ref() == Some(&report) {
            return;
        }
        report.issued = issued;
        let seq = now.max(self.report_seq + 1);
        match SignedReport::sign(&self.key, seq, report) {
            Ok(signed) => {
                self.report_seq = seq;
                self.last_report_at = now;
                self.last_report_len = signed.bytes.len();
                self.stats.reports_sent += 1;
                self.out.push_back(Output::Send {
                    to: parent,
                    msg: Control::Report {
                        report: signed.bytes.into(),
                    },
                });
                let mut kept = signed.report;
                kept.issued = 0;
                self.last_report = Some(kept);
            }
            Err(e) => self.misbehaved(self.me(), &format!("cannot sign this node's report: {e}")),
        }
    }

    /// Reloads a rule set the driver stored earlier (an ancestor's or this node's own),
    /// at start-up. An expired one still holds its issuer's version.
    pub fn restore_rules(&mut self, bytes: &[u8], now: Millis) -> Result<(), RulesError> {
        self.book.restore(bytes, &self.path)?;
        self.refresh(now);
        self.check_halts(now);
        Ok(())
    }

    /// Sends every connected child the live rule sets of this node's path.
    fn send_rules_to_children(&mut self, now: Millis) {
        for child in self.connected_children() {
            self.send_rules(child, now);
        }
    }

    fn send_rules(&mut self, child: PeerId, now: Millis) {
        let sets: Vec<Arc<[u8]>> = self
            .book
            .forward(&self.path, now / 1000)
            .into_iter()
            .map(|r| Arc::from(r.bytes.as_slice()))
            .collect();
        if !sets.is_empty() {
            self.out.push_back(Output::Send {
                to: child,
                msg: Control::Rules { sets },
            });
        }
    }

    /// Re-evaluates what is available to this node and its children at `now`, and acts
    /// on what changed: takes up offers that became available, offers children what
    /// became available to them, and fetches accordingly.
    fn refresh(&mut self, now: Millis) {
        let secs = now / 1000;
        self.now_secs = secs;
        self.avail = self.book.availability(&self.path, secs);
        let ready: Vec<Hash> = self
            .order
            .iter()
            .filter(|id| {
                self.updates.get(*id).is_some_and(|u| !u.stored) && self.avail.is_available(id)
            })
            .copied()
            .collect();
        for id in &ready {
            if let Some(u) = self.updates.get_mut(id) {
                u.stored = true;
                self.out.push_back(Output::StoreManifest {
                    manifest: u.manifest.clone(),
                });
            }
        }
        let children: Vec<PeerId> = self.children.keys().copied().collect();
        for child in children {
            let new = self.book.child_availability(&self.path, &child, secs);
            let old = self.child_avail.insert(child, new);
            if self.children.get(&child) != Some(&true) {
                continue;
            }
            let gained: Vec<Hash> = self
                .order
                .iter()
                .filter(|id| {
                    self.is_available_to(&child, id)
                        && !old.as_ref().is_some_and(|o| o.is_available(id))
                })
                .copied()
                .collect();
            for id in gained {
                self.offer(child, id);
            }
        }
        self.unite_children_avail();
        self.next_change = self
            .book
            .next_change(&self.path, secs)
            .map(|s| s.saturating_mul(1000));
        self.out.push_back(Output::Event(Event::RulesApplied));
        self.changed(now, true);
        self.schedule(now);
    }

    /// The driver reports which chunks of `update` its store holds (after
    /// [`Output::StoreManifest`], or after finding chunks shared with other updates).
    pub fn handle_local_have(&mut self, update: Hash, have: &[bool], now: Millis) {
        let Some(u) = self.updates.get_mut(&update) else {
            return;
        };
        let taken_up = std::mem::take(&mut u.awaiting_local);
        let mut stored = false;
        for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
            if u.have.set(i as u32) {
                u.unannounced.set(i as u32);
                stored = true;
            }
        }
        if taken_up {
            self.tell_siblings(update);
        }
        let done = self.check_complete(update);
        if stored {
            self.stored_new(done, now);
        }
        self.changed(now, true);
        self.schedule(now);
    }

    /// A connection to `peer` is up, after the driver checked its certificate chain.
    pub fn handle_connected(&mut self, peer: PeerId, now: Millis) {
        if let Some((parent, link)) = &mut self.parent
            && *parent == peer
        {
            *link = ParentLink::Connected;
            self.rules_heard = false;
            self.out.push_back(Output::Event(Event::ParentConnected));
            // The parent may have missed anything while away: a fresh snapshot at once.
            self.last_report = None;
            self.report_due = Some(now);
            self.schedule(now);
            return;
        }
        match self.children.get_mut(&peer) {
            Some(connected) => {
                *connected = true;
                self.greet_child(peer, now);
                self.child_moved(&peer);
            }
            None => {
                self.out.push_back(Output::Event(Event::Refused { peer }));
                self.out.push_back(Output::Disconnect {
                    peer,
                    reason: "not a member of this node's part of the tree".into(),
                });
            }
        }
    }

    /// Tells a newly connected child the rules of this node's path, then everything
    /// available to it.
    fn greet_child(&mut self, child: PeerId, now: Millis) {
        self.send_rules(child, now);
        let available: Vec<Hash> = self
            .order
            .iter()
            .filter(|id| self.is_available_to(&child, id))
            .copied()
            .collect();
        for id in available {
            self.offer(child, id);
        }
    }

    /// The connection to `peer` is gone (closed, failed, or a dial failed).
    pub fn handle_disconnected(&mut self, peer: PeerId, now: Millis) {
        if let Some(connected) = self.children.get_mut(&peer)
            && std::mem::take(connected)
        {
            self.child_moved(&peer);
        }
        if let Some(slot) = self.sibling_slot(&peer) {
            self.sibling_lost(slot, now);
        }
        // Whatever was asked of that peer is asked again later.
        let lost: Vec<FetchId> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.from == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.end_fetch(id);
        }
        if let Some((parent, link)) = &mut self.parent
            && *parent == peer
        {
            self.report_due = None;
            let attempts = match link {
                ParentLink::Connected => {
                    self.out.push_back(Output::Event(Event::ParentLost));
                    0
                }
                ParentLink::Dialing { attempts } | ParentLink::Down { attempts, .. } => *attempts,
            };
            let backoff = backoff(&self.config, attempts, &mut self.rng);
            *link = ParentLink::Down {
                retry_at: now + backoff,
                attempts: attempts + 1,
            };
            for u in self.updates.values_mut() {
                // The parent tells again what it has when it is back.
                u.parent_has = Bitmap::new(u.parent_has.len());
            }
        }
    }

    /// A control message from a connected peer.
    pub fn handle_message(&mut self, peer: PeerId, msg: Control, now: Millis) {
        if let Control::Report { report } = msg {
            if self.is_connected_child(&peer) {
                self.handle_report(peer, report, now);
            } else {
                self.misbehaved(peer, "a report from a peer that is not a connected child");
            }
            return;
        }
        if let Some(slot) = self.sibling_slot(&peer)
            && self.is_connected_sibling(&peer)
        {
            match msg {
                Control::Have { update, ranges } => {
                    self.handle_sibling_have(slot, update, ranges, now)
                }
                _ => self.misbehaved(peer, "a sibling sent something other than a Have"),
            }
            return;
        }
        if !self.is_parent(&peer) {
            self.misbehaved(
                peer,
                "a control message only a parent sends, from a peer that is not this node's parent",
            );
            return;
        }
        match msg {
            Control::Offer { manifest } => self.handle_offer(peer, manifest, now),
            Control::Rules { sets } => self.handle_rules(peer, &sets, now),
            Control::Report { .. } => {}
            Control::Siblings { peers } => self.handle_siblings(peers, now),
            Control::Have { update, ranges } => {
                let Some(u) = self.updates.get_mut(&update) else {
                    self.misbehaved(peer, "announced chunks of an update it never offered");
                    return;
                };
                for (start, end) in ranges {
                    for i in start..end.min(u.parent_has.len()) {
                        u.parent_has.set(i);
                    }
                }
                self.schedule(now);
            }
        }
    }

    fn handle_offer(&mut self, peer: PeerId, bytes: Arc<[u8]>, now: Millis) {
        let signed = match SignedManifest::open_shared(&bytes, &self.root_key, now / 1000) {
            Ok(m) => m,
            Err(e) => {
                self.misbehaved(peer, &format!("offered a manifest that is refused: {e}"));
                return;
            }
        };
        let id = signed.id;
        if self.updates.contains_key(&id) {
            return;
        }
        let available = self.avail.is_available(&id);
        if !available {
            let withheld = self.updates.values().filter(|u| !u.stored).count();
            if withheld >= MAX_WITHHELD {
                self.misbehaved(peer, "offered too many updates not available to this node");
                return;
            }
            self.out
                .push_back(Output::Event(Event::OfferWithheld { peer, update: id }));
        }
        self.order.push(id);
        let mut update = Update::new(signed.clone(), true);
        update.stored = available;
        self.updates.insert(id, update);
        if available {
            self.out
                .push_back(Output::StoreManifest { manifest: signed });
            self.offer_to_children(id);
        }
    }

    /// Rule sets from the parent: each checked on its own (PROTOCOL.md §14.3); a refused
    /// one is reported and the others still applied.
    fn handle_rules(&mut self, peer: PeerId, sets: &[Arc<[u8]>], now: Millis) {
        if sets.len() > MAX_RULE_SETS {
            self.misbehaved(peer, "sent more rule sets than any path has nodes");
            return;
        }
        let mut changed = false;
        for bytes in sets {
            let applied = SignedRules::open_shared(bytes, &self.path, now / 1000).and_then(|r| {
                let issuer = r.issuer();
                self.book.apply_shared(r).map(|new| new.then_some(issuer))
            });
            match applied {
                Ok(Some(issuer)) => {
                    changed = true;
                    self.rules_heard = true;
                    self.out.push_back(Output::StoreRules {
                        issuer,
                        rules: bytes.clone(),
                    });
                }
                Ok(None) => self.rules_heard = true,
                Err(error) => {
                    let issuer = match &error {
                        RulesError::WrongSigner { signer } => Some(*signer),
                        _ => None,
                    };
                    let refusal =
                        RuleRefusal::new(self.me(), issuer, &error.to_string(), now / 1000);
                    self.refusals.insert(0, refusal);
                    self.refusals.truncate(report::MAX_REFUSALS);
                    self.changed(now, true);
                    self.out.push_back(Output::Event(Event::RulesRefused {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
        }
        if changed {
            self.send_rules_to_children(now);
            self.refresh(now);
        }
    }

    /// The verdict on one chunk of fetch `id`.
    pub fn handle_chunk(&mut self, id: FetchId, index: u32, verdict: ChunkVerdict, now: Millis) {
        self.handle_chunks(id, [(index, verdict)], now);
    }

    /// The verdicts on chunks of fetch `id`, in the order they came: the same as
    /// [`Engine::handle_chunk`] for each, for a driver that judged several at once.
    pub fn handle_chunks(
        &mut self,
        id: FetchId,
        verdicts: impl IntoIterator<Item = (u32, ChunkVerdict)>,
        now: Millis,
    ) {
        let Some(f) = self.fetches.get(&id) else {
            return;
        };
        let (from, update, span) = (f.from, f.update, f.first..f.first + f.count);
        let sibling = self.sibling_slot(&from).filter(|_| !self.is_parent(&from));
        let Some(u) = self.updates.get_mut(&update) else {
            return;
        };
        // The first chunk makes it downloading; the last, downloaded.
        let mut started = false;
        let mut stored = false;
        // New chunks and their bytes, and the bad chunks, dealt with after the loop.
        let (mut chunks, mut bytes) = (0u64, 0u64);
        let mut bad = Vec::new();
        for (index, verdict) in verdicts {
            if !span.contains(&index) {
                continue;
            }
            match verdict {
                ChunkVerdict::Stored { wire } => {
                    u.busy.clear(index);
                    started |= !stored && u.have.count() == 0;
                    stored = true;
                    if u.have.set(index) {
                        u.unannounced.set(index);
                        chunks += 1;
                        bytes += u64::from(wire);
                    }
                }
                ChunkVerdict::Bad => {
                    // Keep it busy for a while, so a bad source is not hammered.
                    u.resting.push((index, now + self.config.bad_chunk_delay));
                    bad.push(index);
                }
            }
        }
        if let Some(slot) = sibling {
            u.from_siblings += bytes;
            self.count_from_sibling(slot, chunks, bytes);
        } else {
            u.from_parent += bytes;
            self.stats.chunks_from_parent += chunks;
            self.stats.bytes_from_parent += bytes;
        }
        for index in bad {
            self.stats.bad_chunks += 1;
            self.out.push_back(Output::Event(Event::BadChunk {
                peer: from,
                update,
                index,
            }));
            if let Some(slot) = sibling {
                // Asked of the parent next, not of a sibling that sends bad bytes.
                self.sibling_fetch_failed(&update, std::iter::once(index));
                self.strike_sibling(slot, now);
            }
        }
        if stored {
            self.progressed(&update, now);
            let done = self.check_complete(update);
            self.stored_new(done, now);
            self.changed(now, started || done);
        }
    }

    /// Fetch `id` ended (completely or not); unanswered chunks are asked again.
    pub fn handle_fetch_end(&mut self, id: FetchId, now: Millis) {
        self.end_fetch(id);
        self.schedule(now);
    }

    fn end_fetch(&mut self, id: FetchId) {
        let Some(f) = self.fetches.remove(&id) else {
            return;
        };
        if let Some(u) = self.updates.get_mut(&f.update) {
            let resting: Vec<u32> = u.resting.iter().map(|(i, _)| *i).collect();
            for i in f.first..f.first + f.count {
                if !u.have.get(i) && !resting.contains(&i) {
                    u.busy.clear(i);
                }
            }
        }
        if !self.is_parent(&f.from) && self.sibling_slot(&f.from).is_some() {
            // A sibling that announced chunks and did not deliver them is not waited on.
            self.sibling_fetch_failed(&f.update, f.first..f.first + f.count);
        }
    }

    /// Time has reached `now`: retry dials, give up on overdue fetches, wake resting chunks.
    pub fn handle_timeout(&mut self, now: Millis) {
        if let Some((parent, link)) = &mut self.parent
            && let ParentLink::Down { retry_at, attempts } = *link
            && retry_at <= now
        {
            *link = ParentLink::Dialing { attempts };
            self.out.push_back(Output::Dial { peer: *parent });
        }
        self.redial_siblings(now);
        let overdue: Vec<FetchId> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.stats.fetch_timeouts += 1;
            self.end_fetch(id);
        }
        self.check_stalls(now);
        for u in self.updates.values_mut() {
            let (awake, still): (Vec<_>, Vec<_>) = u.resting.iter().partition(|(_, at)| *at <= now);
            u.resting = still;
            for (i, _) in awake {
                u.busy.clear(i);
            }
        }
        if self.report_due.is_some_and(|t| t <= now) {
            self.send_report(now);
        }
        if self.announce_due.is_some_and(|t| t <= now) {
            self.announce(now);
        }
        if self.next_change.is_some_and(|t| t <= now) {
            // A deadline passed or a rule set expired; children are told by their own
            // clocks, and offered what they gained by this one.
            self.refresh(now);
        } else {
            self.schedule(now);
        }
    }

    /// When [`Engine::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let dial = match &self.parent {
            Some((_, ParentLink::Down { retry_at, .. })) => Some(*retry_at),
            _ => None,
        };
        let fetch = self.fetches.values().map(|f| f.deadline).min();
        let rest = self
            .updates
            .values()
            .flat_map(|u| u.resting.iter().map(|(_, at)| *at))
            .min();
        [
            dial,
            fetch,
            rest,
            self.next_change,
            self.report_due,
            self.announce_due,
            self.next_stall(),
            self.next_sibling_redial(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing to do, or `None` when idle. Drain it after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Chunks were stored: they are announced now if the last announcement is old
    /// enough or an update is `complete`, else when it is.
    fn stored_new(&mut self, complete: bool, now: Millis) {
        // A node nobody listens to (a client without siblings) has nothing to send: a
        // child or sibling that connects later is told all it holds then.
        let listened_to =
            self.children.values().any(|up| *up) || self.connected_siblings().next().is_some();
        if !listened_to {
            return;
        }
        let interval = self.config.announce_interval;
        let due = *self.announce_due.get_or_insert_with(|| {
            self.last_announce
                .map_or(now, |last| (last + interval).max(now))
        });
        if complete || due <= now {
            self.announce(now);
        }
    }

    /// Tells connected children (and siblings) about chunks stored since they were
    /// last told.
    fn announce(&mut self, now: Millis) {
        self.announce_due = None;
        self.last_announce = Some(now);
        for i in 0..self.order.len() {
            let id = self.order[i];
            if self
                .updates
                .get(&id)
                .is_none_or(|u| u.unannounced.count() == 0)
            {
                continue;
            }
            // Only children it is available to: the others were never offered it, and
            // one that gains it later is offered it with every range held then.
            let to = self.connected_children_with(&id);
            let Some(u) = self.updates.get_mut(&id) else {
                continue;
            };
            let ranges = u.unannounced.ranges();
            u.unannounced.clear_all();
            let siblings: Vec<PeerId> = self.connected_siblings().collect();
            for child in to.iter().chain(&siblings) {
                self.out.push_back(Output::Send {
                    to: *child,
                    msg: Control::Have {
                        update: id,
                        ranges: ranges.clone(),
                    },
                });
            }
        }
    }

    /// Asks siblings for what they announced, then the parent for missing chunks it
    /// holds that no sibling has or gets, each up to the window.
    fn schedule(&mut self, now: Millis) {
        self.schedule_siblings(now);
        let Some((parent, ParentLink::Connected)) = self.parent.clone() else {
            return;
        };
        if self.parent_paused {
            return;
        }
        let mut in_flight = self.fetches.values().filter(|f| f.from == parent).count();
        let wanted: Vec<Hash> = self
            .order
            .iter()
            .filter(|id| self.is_wanted(id))
            .copied()
            .collect();
        'outer: while in_flight < self.config.window {
            for id in &wanted {
                let Some((first, count, direct)) = self.next_parent_span(id) else {
                    continue;
                };
                let Some(u) = self.updates.get_mut(id) else {
                    continue;
                };
                for i in first..first + count {
                    u.busy.set(i);
                }
                self.start_fetch(parent, *id, (first, count), direct, now);
                in_flight += 1;
                continue 'outer;
            }
            break;
        }
    }

    /// Asks `from` for chunks `span.0 .. span.0 + span.1` of `update` (marked busy by
    /// the caller), with a deadline.
    fn start_fetch(
        &mut self,
        from: PeerId,
        update: Hash,
        (first, count): (u32, u32),
        direct: bool,
        now: Millis,
    ) {
        let id = self.next_fetch;
        self.next_fetch += 1;
        let deadline = now + self.config.fetch_timeout;
        self.fetches.insert(
            id,
            Fetch {
                from,
                update,
                first,
                count,
                deadline,
            },
        );
        self.out.push_back(Output::Fetch {
            id,
            from,
            update,
            first,
            count,
            direct,
        });
    }

    /// The next span of `update` to ask the parent for: chunks it holds that are not
    /// held, asked for, or waited on from a sibling, all asked with or all without
    /// `direct`.
    fn next_parent_span(&self, id: &Hash) -> Option<(u32, u32, bool)> {
        let u = self.updates.get(id)?;
        if u.awaiting_local || !u.stored || u.have.is_full() {
            return None;
        }
        let none = Bitmap::new(0);
        let (elsewhere, direct) = self.site_bitmaps(id).unwrap_or((&none, &none));
        let skip = [&u.have, &u.busy, elsewhere];
        let start = self.parent_search_start(u.have.len());
        let first = u
            .parent_has
            .first_set_not_in(start, &skip)
            .or_else(|| u.parent_has.first_set_not_in(0, &skip))?;
        let is_direct = direct.get(first);
        let mut count = 1;
        while count < self.config.span {
            let i = first + count;
            if i >= u.have.len()
                || !u.parent_has.get(i)
                || skip.iter().any(|b| b.get(i))
                || direct.get(i) != is_direct
            {
                break;
            }
            count += 1;
        }
        Some((first, count, is_direct))
    }

    /// Reports an update complete, once, when its last chunk is held.
    fn check_complete(&mut self, update: Hash) -> bool {
        if let Some(u) = self.updates.get_mut(&update)
            && !u.awaiting_local
            && !u.completed
            && u.have.is_full()
        {
            u.completed = true;
            self.out
                .push_back(Output::Event(Event::UpdateComplete { update }));
            return true;
        }
        false
    }

    fn misbehaved(&mut self, peer: PeerId, reason: &str) {
        self.out.push_back(Output::Event(Event::Misbehaved {
            peer,
            reason: reason.to_string(),
        }));
    }

    fn is_parent(&self, peer: &PeerId) -> bool {
        matches!(&self.parent, Some((p, _)) if p == peer)
    }

    /// The hash and length of chunk `index` of `update`, for the driver to verify and serve.
    pub fn chunk(&self, update: &Hash, index: u32) -> Option<(Hash, u32)> {
        self.updates
            .get(update)?
            .chunks
            .get(index as usize)
            .copied()
    }

    /// Progress of every known update, in arrival order.
    pub fn progress(&self) -> Vec<UpdateProgress> {
        self.order
            .iter()
            .filter_map(|id| self.updates.get(id).map(|u| (id, u)))
            .filter(|(_, u)| u.stored)
            .map(|(id, u)| UpdateProgress {
                update: *id,
                available: self.avail.is_available(id),
                chunks: u.have.len(),
                chunks_held: u.have.count(),
                bytes: u.chunks.iter().map(|c| u64::from(c.1)).sum(),
                bytes_held: u.bytes_held(),
            })
            .collect()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn connected_children(&self) -> Vec<PeerId> {
        self.children
            .iter()
            .filter(|(_, c)| **c)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether `peer` is a certified child with a live connection.
    pub fn is_connected_child(&self, peer: &PeerId) -> bool {
        self.children.get(peer) == Some(&true)
    }

    /// Every certified child and whether it is connected.
    pub fn children(&self) -> impl Iterator<Item = (&PeerId, bool)> {
        self.children.iter().map(|(p, c)| (p, *c))
    }

    /// The parent, on a member.
    pub fn parent(&self) -> Option<&PeerId> {
        self.parent.as_ref().map(|(p, _)| p)
    }

    /// Whether every chunk of `update` is held.
    pub fn is_complete(&self, update: &Hash) -> bool {
        self.updates
            .get(update)
            .is_some_and(|u| !u.awaiting_local && u.have.is_full())
    }

    /// The source and update of a fetch in flight.
    pub fn fetch_source(&self, fetch: FetchId) -> Option<(PeerId, Hash)> {
        self.fetches.get(&fetch).map(|f| (f.from, f.update))
    }

    /// The signed manifest of a known update.
    pub fn manifest(&self, update: &Hash) -> Option<&SignedManifest> {
        self.updates.get(update).map(|u| &*u.manifest)
    }

    /// What chunk deltas of `update` may draw on when this node fetches it (PROTOCOL.md
    /// §13.2): the newest other version of the same module that it holds whole, with
    /// that version's distinct chunks.
    pub fn delta_base(&self, update: &Hash) -> Option<(Hash, ChunkList)> {
        let m = &self.updates.get(update)?.manifest.manifest;
        self.updates
            .iter()
            .filter(|(id, u)| {
                *id != update && u.manifest.manifest.same_module_as(m) && self.is_complete(id)
            })
            .max_by_key(|(_, u)| u.manifest.seq)
            .map(|(id, u)| (*id, u.chunks.clone()))
    }

    /// Both manifests, when this node may answer requests for `update` with deltas
    /// against `base`: it holds `base` whole, and `base` is another version of the same
    /// module (so a delta relates only versions of one module to each other).
    pub fn delta_pair(
        &self,
        update: &Hash,
        base: &Hash,
    ) -> Option<(Arc<SignedManifest>, Arc<SignedManifest>)> {
        let (u, b) = (self.updates.get(update)?, self.updates.get(base)?);
        (update != base
            && u.manifest.manifest.same_module_as(&b.manifest.manifest)
            && self.is_complete(base))
        .then(|| (u.manifest.clone(), b.manifest.clone()))
    }

    /// The rule sets this node holds: its ancestors' and its own.
    pub fn rules(&self) -> &RuleBook {
        &self.book
    }

    /// This node's certificate path, root node first, itself last.
    pub fn path(&self) -> &[PublicKey] {
        &self.path
    }

    /// Whether what is available to this node is the tree's word of now: on the root
    /// always; on a member once its parent, connected, has sent its rules. A client
    /// removes or downgrades a withdrawn module only then, never on rules it kept from
    /// an earlier session (they may merely have expired while it was offline).
    pub fn rules_current(&self) -> bool {
        self.parent.is_none() || (self.parent_connected() == Some(true) && self.rules_heard)
    }

    /// Pauses or resumes asking the parent for chunks (the driver's WAN windows); what
    /// is in flight completes. Returns whether that changed anything.
    pub fn set_parent_paused(&mut self, paused: bool, now: Millis) -> bool {
        if self.parent_paused == paused {
            return false;
        }
        self.parent_paused = paused;
        if !paused {
            self.schedule(now);
        }
        true
    }

    /// The tunables this engine runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether `update` is available to this node now.
    pub fn is_available(&self, update: &Hash) -> bool {
        self.avail.is_available(update)
    }

    /// What is available to this node, as of the last evaluation.
    pub fn availability(&self) -> &Availability {
        &self.avail
    }

    /// What is available to a certified child, as of the last evaluation.
    pub fn child_availability(&self, child: &PeerId) -> Option<&Availability> {
        self.child_avail.get(child)
    }

    /// Whether the parent link is up (`None` on the root).
    pub fn parent_connected(&self) -> Option<bool> {
        self.parent
            .as_ref()
            .map(|(_, l)| *l == ParentLink::Connected)
    }
}

/// Exponential backoff with jitter: `retry_min * 2^attempts`, capped at `retry_max`,
/// then spread over its upper half so that many children do not come back at once.
fn backoff(config: &Config, attempts: u32, rng: &mut SplitMix64) -> Millis {
    let base = config
        .retry_min
        .saturating_mul(1 << attempts.min(20))
        .min(config.retry_max);
    base / 2 + rng.next() % (base / 2 + 1)
}

/// SplitMix64: a tiny generator whose output is fixed by its definition, so a seed gives
/// the same simulation on every build.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
