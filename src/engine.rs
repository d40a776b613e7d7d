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
mod conduct;
mod fetching;
mod inbox;
pub mod installer;
mod links;
mod liveness;
mod local;
mod offers;
mod reporting;
mod resume;
mod rulebook;
mod signer;
mod site;
mod sources;
mod timers;

pub use conduct::{BanInfo, Offence, Standing};
pub use liveness::clock_note;
pub use reporting::{CHECK_RATE, REPORT_SPACING};
pub use resume::{Dropped, Saved, SavedChild};
pub use signer::{RULES_LIFETIME, RuleChange};
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
    /// A fetch not ended by then is given up and its chunks asked again; also the
    /// longest the parent may deliver nothing while fetches are in flight
    /// (`engine::sources`).
    pub fetch_timeout: Millis,
    /// The longest a sibling may deliver nothing while fetches are in flight to it,
    /// before its rate is measured (then four times what the rate needs, if less), and
    /// the longest chunks wait on a sibling the parent pointed to while nothing of
    /// their update arrives. Siblings share a LAN: a silent one costs little.
    pub sibling_stall: Millis,
    /// First and longest wait before dialling a lost parent again (doubling between).
    pub retry_min: Millis,
    pub retry_max: Millis,
    /// How long a chunk that arrived bad waits before it is asked again, doubling with
    /// each bad copy of it (up to 64 times as long).
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
    /// How often every session carries a `Ping` (0: never; the simulator, which models
    /// no frozen peers, saves the events).
    pub heartbeat: Millis,
    /// A peer not heard from for this long is taken for gone (a frozen process keeps
    /// its connection up).
    pub silence: Millis,
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
    /// How long, in seconds, a rule set this node signs stays valid: it is signed
    /// again once half of that has passed ([`RULES_LIFETIME`] by default).
    pub rules_lifetime: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            span: 16,
            window: 8,
            fetch_timeout: 60_000,
            sibling_stall: 3_000,
            retry_min: 500,
            retry_max: 30_000,
            bad_chunk_delay: 1_000,
            report_delay: 100,
            report_interval: 1_000,
            report_rate: 16 * 1024,
            announce_interval: 250,
            heartbeat: 5_000,
            silence: 15_000,
            installer: false,
            rules_lifetime: RULES_LIFETIME,
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
    /// Either way, every [`Config::heartbeat`]: the sender is alive, and its clock
    /// (Unix ms) says `time` (PROTOCOL.md §12.1).
    Ping { time: Millis },
}

/// How the driver judged one chunk of a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// Hashed right and stored; `wire` bytes crossed the link for it (its length, or
    /// fewer for a delta).
    Stored { wire: u32 },
    /// The bytes did not match the manifest's hash: nothing was stored.
    Bad,
    /// The source said it does not hold the chunk: it is not asked for it again until
    /// it announces it again.
    Missing,
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
    /// A newer rule set, verified (an ancestor's), or signed here (this node's own): persist it
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
    /// Work for a client's installer: do it, then say what happened with
    /// [`Engine::handle_install_done`]. One at a time.
    Installer(installer::InstallJob),
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
    /// A peer did something wrong ([`Offence`]): counted against it.
    Misbehaved {
        peer: PeerId,
        offence: Offence,
        reason: String,
    },
    /// A peer was banned until `until` after repeated offences: its connections are
    /// closed and refused until then.
    Banned {
        peer: PeerId,
        until: Millis,
        reason: String,
    },
    /// Something this node could not do itself (sign its report or its own rules).
    Error {
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
    /// Nothing came from `peer` since `since` for [`Config::silence`]: its session was
    /// ended, as if its connection had dropped.
    Unresponsive {
        peer: PeerId,
        since: Millis,
    },
    /// An install failed; it is tried again in `retry_in` ms.
    InstallFailed {
        update: Hash,
        reason: String,
        retry_in: Millis,
    },
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
    /// Announced by the parent since they were last asked of it. The announcement and
    /// the answer to an earlier ask travel on different streams, so the parent's "not
    /// held" may arrive after it announced the chunk again (it lost a damaged copy and
    /// fetched it in milliseconds, say): such an answer is out of date, and the chunk
    /// is asked again rather than never.
    parent_renewed: Bitmap,
    /// Stored since the children were last told.
    unannounced: Bitmap,
    /// The driver has not yet said what the store holds: fetch nothing yet.
    awaiting_local: bool,
    /// Chunks that came back bad and when they may be asked again.
    resting: Vec<(u32, Millis)>,
    /// How many bad copies of each chunk came: each waits twice as long as the last.
    bad_copies: HashMap<u32, u8>,
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
            parent_renewed: Bitmap::new(n),
            unannounced: Bitmap::new(n),
            awaiting_local,
            resting: Vec::new(),
            bad_copies: HashMap::new(),
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
    /// The bytes of the chunks asked for.
    bytes: u64,
    /// Chunks answered with bytes that were stored, or with "elsewhere".
    answered: u32,
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
    /// This node's key: it signs the node's reports and its own rules.
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
    /// Which children are clients or away, and each one's turn to report.
    intake: reporting::Intake,
    /// This node's certificate and failure statements.
    own_proof: reporting::OwnProof,
    /// When a renewal of this node's own rules that failed is tried again.
    renewal: signer::Renewal,
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
    /// What peers did wrong, and who is banned.
    conduct: conduct::Conduct,
    /// The health of each source fetched from.
    sources: sources::Sources,
    /// When each peer with a session was last heard from (only with a heartbeat).
    heard: HashMap<PeerId, Millis>,
    /// When the next `Ping`s go out.
    next_heartbeat: Option<Millis>,
    /// How far the parent's clock is ahead of this node's, in ms.
    clock_offset: Option<i64>,
    /// The parent was given up for silence at this time, and not heard from since.
    parent_silent_since: Option<Millis>,
    /// Why the store cannot be written, while it cannot: nothing new is fetched.
    store_fault: Option<String>,
    /// A client's installer: what it has, and what it chooses to have.
    installer: Option<Box<installer::Installer>>,
    installer_due: installer::Due,
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
        let rollup = Rollup::new(path.clone());
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
            rollup,
            report_due: None,
            announce_due: None,
            last_announce: None,
            last_report: None,
            last_report_at: 0,
            last_report_len: 0,
            report_seq: 0,
            refusals: Vec::new(),
            intake: reporting::Intake::default(),
            own_proof: reporting::OwnProof::default(),
            renewal: signer::Renewal::default(),
            halted: std::collections::BTreeSet::new(),
            needed: std::collections::HashSet::default(),
            rules_heard: false,
            parent_paused: false,
            siblings: Vec::new(),
            sites: site::Sites::default(),
            conduct: conduct::Conduct::default(),
            sources: sources::Sources::default(),
            heard: HashMap::new(),
            next_heartbeat: None,
            clock_offset: None,
            parent_silent_since: None,
            store_fault: None,
            installer: None,
            installer_due: installer::Due::default(),
        }
    }

    /// Declares a certified child (from the membership records), not yet connected;
    /// `client` if its certificate says it is a client (it has no children, and its
    /// reports may say nothing about any).
    pub fn add_child(&mut self, child: PeerId, client: bool, now: Millis) {
        self.children.entry(child).or_insert(false);
        self.declare_child(child, client, now);
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
        self.forget_child_reports(child);
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

    /// Whether this node fetches `update`: it may have it, it can store it, and it will
    /// use it itself (a node without children) or one of its children may have it.
    fn is_wanted(&self, update: &Hash) -> bool {
        if self.store_fault.is_some() {
            return false;
        }
        let own_use = if self.config.installer {
            self.needed.contains(update)
        } else {
            self.children.is_empty()
        };
        self.avail.is_available(update) && (own_use || self.children_avail.is_available(update))
    }

    /// The updates this node fetches, in the order they are fetched.
    fn wanted(&self) -> Vec<Hash> {
        self.order
            .iter()
            .filter(|id| self.is_wanted(id))
            .copied()
            .collect()
    }

    /// This node's key.
    fn me(&self) -> PublicKey {
        self.key.public()
    }

    /// On a client with an installer ([`Config::installer`]): whether its installer
    /// wants the bytes of `update`. Updates start unneeded there.
    fn set_needed(&mut self, update: &Hash, needed: bool, now: Millis) {
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
    fn recheck_local(&mut self, update: &Hash, have: &[bool], now: Millis) {
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

    /// The next thing to do, or `None` when idle. Drain it after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.out.is_empty() {
            self.installer_poll();
        }
        self.out.pop_front()
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

    /// Something this node could not do itself: said, not counted against anyone.
    fn failed(&mut self, reason: String) {
        self.out.push_back(Output::Event(Event::Error { reason }));
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
    backoff_between(config.retry_min, config.retry_max, attempts, rng)
}

/// Exponential backoff with jitter: `min * 2^attempts`, capped at `max`, then spread
/// over its upper half.
fn backoff_between(min: Millis, max: Millis, attempts: u32, rng: &mut SplitMix64) -> Millis {
    let base = min.saturating_mul(1 << attempts.min(20)).min(max);
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
