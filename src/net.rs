//! The daemon: drives one node's [`Engine`] over libp2p in real time.
//!
//! Owns the swarm (TCP + noise + yamux), the clock, the tasks that run the stream
//! protocols of [`proto`], and the store writer thread, and answers its operator's
//! requests ([`command`]; the admin API, `crate::admin`, carries them). The engine decides; this module moves bytes, checks certificates and
//! hashes, and reports back:
//!
//! - one event loop owns the swarm and the engine; every task talks to it through one
//!   channel of [`LoopInput`]s, so the engine is never shared;
//! - a child keeps `window` persistent chunk streams to its parent; each runs one span
//!   request at a time, hashes every chunk as it arrives and hands good ones to the
//!   writer thread, which stores them and only then reports them stored; the engine
//!   announces them to the children, and the store serves them at once from its
//!   uncommitted index (cut-through);
//! - a parent serves chunk streams only to children whose control stream came up with a
//!   certificate chain it accepted, and only chunks it holds;
//! - children of one parent at one site connect to each other (the parent tells them
//!   who and where), check each other's certificates on a sibling stream, and fetch
//!   from each other what the engine asks for, under the local limits;
//! - a client run with an install directory carries out the install jobs of the
//!   engine's installer ([`installer`]), off the loop, one at a time;
//! - every peer is untrusted until its chain is: `limits` bounds what a connection
//!   and its streams can make the node hold, `accept` admits each inbound stream by
//!   the peer's standing (the engine's, with its bans), and [`logcap`] caps the log
//!   lines a peer can cause.
//!
//! Its rooms: `transport` (the swarm), `accept` and `session` (streams and
//! handshakes), `chunks` and `writer` (the data plane), `events` and `drive` (the event
//! loop's inputs and the engine's outputs), `command` (what an operator can ask, and
//! the answers), `membership`, `local`, `rules`, `reports` and `conduct` (what the
//! admin asks and sees), `saved` (what a restart starts from), `join` and `probe`.

mod accept;
mod chunks;
pub mod command;
mod conduct;
mod delta;
mod drive;
mod events;
pub mod fds;
mod installer;
mod join;
mod limit;
mod limits;
mod local;
#[doc(hidden)]
pub mod logcap;
mod membership;
#[doc(hidden)]
pub mod probe;
pub mod proto;
mod reports;
mod rules;
mod saved;
mod session;
mod transport;
mod writer;

use crate::content::Hash;
pub use crate::engine::installer::Withdrawn;
use crate::engine::installer::{InstallJob, InstallTask};
use crate::engine::{self, ChunkVerdict, Control, Engine, Event, FetchId, Output, Role, Served};
use crate::node::{Node, NodeError};
use crate::publish;
use crate::store::{ChildRecord, ModuleVersion, Store, StoreError, TokenRecord};
use crate::trust::member::{self, JoinToken, root_fingerprint, verify_chain};
use crate::trust::{Envelope, PublicKey, SecretKey, SignedManifest};
use command::{Answer, Refusal, RefusalKind, Reply, Request};
use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};
pub use installer::InstallerOptions;
use libp2p::swarm::{SwarmEvent, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId as Libp2pPeerId, Stream, Swarm};
pub use limit::BandwidthOptions;
use limit::{Limiter, pace};
use proto::{ChunkRequest, ControlFrame, JoinReply, JoinRequest, SiblingAddr};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use accept::*;
use chunks::*;
use join::*;
#[doc(hidden)]
pub use membership::parse_addrs;
use membership::*;
use session::*;
use transport::{Behaviour, BehaviourEvent, build_swarm};
use writer::*;

/// How long a certificate issued to a child is valid. Renewed on every connection.
pub const CERT_TTL_SECS: u64 = 30 * 24 * 3600;
/// How long a handshake (join or control) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes a child's writer queue may hold before its fetchers wait.
const WRITE_QUEUE: usize = 64;

/// How to run a node.
#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub engine: engine::Config,
    /// Install approved modules here: a client (`arbor run --install-dir`).
    pub installer: Option<InstallerOptions>,
    pub bandwidth: BandwidthOptions,
    /// This node's site: its parent's other children at the same site are its
    /// siblings, and they share chunks instead of each fetching them over the WAN.
    pub site: Option<String>,
    /// Test-only fault: corrupt this many of the first chunks served (one byte each).
    #[doc(hidden)]
    pub corrupt_first_chunks: u32,
    /// Test-only fault: corrupt this many of the first chunk deltas served.
    #[doc(hidden)]
    pub corrupt_first_deltas: u32,
}

impl Options {
    pub fn new(dir: &Path, listen: Vec<Multiaddr>) -> Options {
        Options {
            dir: dir.to_path_buf(),
            listen,
            engine: engine::Config::default(),
            installer: None,
            bandwidth: BandwidthOptions::default(),
            site: None,
            corrupt_first_chunks: 0,
            corrupt_first_deltas: 0,
        }
    }
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the network: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {why}")]
    Listen { addr: String, why: String },
    #[error("joining through {addr} failed: {why}")]
    Join { addr: String, why: String },
    #[error("the parent refused to let this node join: {0}")]
    JoinRefused(String),
    #[error(transparent)]
    Install(#[from] crate::install::InstallError),
}

/// Every task a daemon spawns, so that stopping it ends them all before the store is
/// closed.
#[derive(Clone, Default)]
struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    fn spawn_blocking(&self, f: impl FnOnce() + Send + 'static) {
        self.tracker.spawn_blocking(f);
    }

    /// Cancels every task and waits for them (blocking ones run to their end).
    async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
        if timeout(Duration::from_secs(30), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 30 s");
        }
    }
}

/// An input of the event loop: what a peer, a task, the writer thread or the admin
/// hands it.
enum LoopInput {
    /// A peer opened a stream: admit it or drop it.
    Inbound(Inbound),
    /// A task saw a peer do something wrong.
    Offence {
        peer: PublicKey,
        offence: engine::Offence,
        reason: String,
    },
    Local {
        req: Request,
        reply: oneshot::Sender<Reply>,
    },
    Join {
        peer: PublicKey,
        secret: [u8; 32],
        reply: oneshot::Sender<JoinReply>,
    },
    Hello {
        peer: PublicKey,
        chain: Vec<Envelope>,
        site: Option<String>,
        addrs: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Envelope>, String>>,
    },
    /// A sibling opened a sibling stream: check its chain, answer with our own.
    SiblingHello {
        peer: PublicKey,
        chain: Vec<Envelope>,
        reply: oneshot::Sender<Result<Vec<Envelope>, String>>,
    },
    /// A child-side control handshake succeeded: the parent renewed our chain, and its
    /// clock said `time`.
    Renewed {
        chain: Vec<Envelope>,
        time: u64,
    },
    ControlUp {
        peer: PublicKey,
        sibling: bool,
        tx: mpsc::UnboundedSender<ControlFrame>,
    },
    ControlMsg {
        peer: PublicKey,
        frame: ControlFrame,
        /// The frame's share of its session's queue, given back once it is handled.
        held: tokio::sync::OwnedSemaphorePermit,
    },
    ControlDown {
        peer: PublicKey,
        why: String,
    },
    Verdict {
        fetch: FetchId,
        index: u32,
        verdict: ChunkVerdict,
    },
    FetchEnd {
        fetch: FetchId,
    },
    /// The parent answered a chunk with "elsewhere": a sibling has it.
    Elsewhere {
        fetch: FetchId,
        index: u32,
        holder: PublicKey,
    },
    Serve {
        peer: PublicKey,
        req: ChunkRequest,
        reply: oneshot::Sender<ServeAnswer>,
    },
    Served {
        peer: PublicKey,
        update: Hash,
        bytes: u64,
    },
    LocalHave {
        update: Hash,
        have: Vec<bool>,
    },
    Published {
        result: Result<publish::PublishOutcome, Refusal>,
        reply: oneshot::Sender<Reply>,
    },
    /// The installer finished a job.
    Installer {
        done: Box<installer::Done>,
    },
    /// The writer thread found the store failing (`Some`, why) or writable again.
    StoreFault {
        fault: Option<String>,
    },
    /// The store no longer holds these chunks (quarantined, or never committed).
    LocalLost {
        chunks: Vec<Hash>,
    },
    /// A chunk read to be served was damaged at `loc`: quarantine it.
    Damaged {
        chunk: Hash,
        loc: crate::store::Loc,
    },
}

/// Transfer counters of one update.
#[derive(Default)]
struct Transfer {
    bytes_in: u64,
    bytes_out: u64,
    rate_in: u64,
    rate_out: u64,
    last_in: u64,
    last_out: u64,
}

/// A started node, ready to run.
pub struct Daemon {
    node: Arc<Node>,
    engine: Engine,
    swarm: Swarm<Behaviour>,
    control: libp2p_stream::Control,
    ev_tx: mpsc::UnboundedSender<LoopInput>,
    ev_rx: mpsc::UnboundedReceiver<LoopInput>,
    writer_tx: mpsc::Sender<WriteJob>,
    writer: Option<std::thread::JoinHandle<()>>,
    listen_addrs: Vec<Multiaddr>,
    parent_addr: Option<Multiaddr>,
    /// This node's own certificate chain (a member's; the root issues its own).
    chain: Vec<Envelope>,
    sessions: HashMap<PublicKey, mpsc::UnboundedSender<ControlFrame>>,
    /// Sessions that are sibling streams.
    sibling_sessions: HashSet<PublicKey>,
    /// Fetch jobs for each source's chunk streams (the parent, siblings), while it is up.
    fetchers: HashMap<PublicKey, mpsc::UnboundedSender<FetchJob>>,
    /// Where children listen (from their hellos) and siblings listen (from the parent).
    peer_addrs: HashMap<PublicKey, Vec<Multiaddr>>,
    /// The address each connected peer's connection comes from.
    remote_addrs: HashMap<PublicKey, Multiaddr>,
    transfers: HashMap<Hash, Transfer>,
    /// For each update being fetched, the base its chunks may come as deltas against.
    delta_bases: HashMap<Hash, Arc<delta::Base>>,
    sent_to: HashMap<PublicKey, u64>,
    received_from: HashMap<PublicKey, u64>,
    refused: u64,
    /// Rule sets from the parent that were refused.
    rules_refused: u64,
    /// The report sequence number last kept in the store.
    kept_report_seq: u64,
    /// Children's newer reports, kept in the store on the next tick (in one commit).
    reports_to_keep: HashMap<PublicKey, Arc<[u8]>>,
    waiters: Vec<(Hash, oneshot::Sender<Reply>)>,
    /// The installer's hands, on a client.
    installer: Option<installer::InstallerHands>,
    /// Fetches from the parent, all streams together, go no faster than this.
    download: Option<Arc<Limiter>>,
    /// Fetches from siblings, all together, go no faster than this.
    local_download: Option<Arc<Limiter>>,
    /// Where its admin API answers, once one serves it.
    admin_url: Option<String>,
    /// Most connections an admin API may hold open (`fds`).
    admin_connections: usize,
    /// What every chunk stream this node serves shares.
    server: Arc<Server>,
    /// Streams open now, per peer and for all strangers.
    gate: Arc<limits::StreamGate>,
    /// Connections of strangers, and when each came up (`limits`).
    strangers: HashMap<libp2p::swarm::ConnectionId, (PublicKey, std::time::Instant)>,
    tasks: Tasks,
    opts: Options,
}

/// Sends requests to a running daemon in the same process.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<LoopInput>,
}

impl Handle {
    /// Asks the daemon what the admin API would.
    pub async fn call(&self, req: Request) -> Reply {
        let stopping = || Refusal::new(RefusalKind::Unavailable, "the daemon is stopping");
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(LoopInput::Local { req, reply })
            .map_err(|_| stopping())?;
        rx.await.unwrap_or_else(|_| Err(stopping()))
    }

    /// Asks the daemon, and takes the answer as the request's answer type (one of
    /// [`command::Answer`]'s).
    pub async fn ask<A: TryFrom<Answer, Error = Refusal>>(
        &self,
        req: Request,
    ) -> Result<A, Refusal> {
        self.call(req).await.and_then(A::try_from)
    }

    /// A handle whose requests come out of the receiver, for tests of what carries them.
    #[cfg(test)]
    pub(crate) fn stand_in() -> (
        Handle,
        mpsc::UnboundedReceiver<(Request, oneshot::Sender<Reply>)>,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (out, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(input) = rx.recv().await {
                if let LoopInput::Local { req, reply } = input
                    && out.send((req, reply)).is_err()
                {
                    break;
                }
            }
        });
        (Handle { tx }, requests)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads a node id given by an operator.
fn parse_node(node: &str) -> Result<PublicKey, Refusal> {
    node.parse::<Libp2pPeerId>()
        .ok()
        .and_then(|p| PublicKey::from_peer_id(&p))
        .ok_or_else(|| Refusal::bad(format!("{node:?} is not a node id (12D3KooW...)")))
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

fn peer_of(key: &PublicKey) -> Result<Libp2pPeerId, NetError> {
    key.peer_id()
        .ok_or_else(|| NetError::Transport(format!("{key} is not a valid node key")))
}

/// Opens the node in `opts.dir`, redeems its join token if it has not joined yet,
/// and listens. The node runs once [`Daemon::run`] is awaited; `crate::admin::start`
/// starts it with its admin API.
pub async fn start(opts: Options) -> Result<Daemon, NetError> {
    let fds = fds::raise_limit();
    let dir = opts.dir.clone();
    // An unusable install directory stops a client before it joins or listens.
    let hands = match &opts.installer {
        Some(c) => {
            crate::install::probe(&c.install_dir)?;
            let installed = installer::scan(&c.install_dir)?;
            Some(installer::InstallerHands::new(c.clone(), installed))
        }
        None => None,
    };
    let key = SecretKey::read(&dir.join(crate::node::NODE_KEY_FILE)).map_err(NodeError::from)?;
    let mut swarm = build_swarm(&key, Some(fds.tree_connections()))?;
    let mut listen_addrs = Vec::new();
    for addr in &opts.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.to_string(),
                why: e.to_string(),
            })?;
    }
    // Learn the actual addresses (port 0 becomes a real port).
    while listen_addrs.len() < opts.listen.len() {
        match timeout(HANDSHAKE_TIMEOUT, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => listen_addrs.push(address),
            Ok(SwarmEvent::ListenerError { error, .. })
            | Ok(SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            }) => {
                return Err(NetError::Listen {
                    addr: format!("{:?}", opts.listen),
                    why: error.to_string(),
                });
            }
            Ok(_) => {}
            Err(_) => {
                return Err(NetError::Listen {
                    addr: format!("{:?}", opts.listen),
                    why: "no listening address came up".into(),
                });
            }
        }
    }
    let control = swarm.behaviour().streams.new_control();
    {
        let store = Store::open(&dir)?;
        if let Some(token) = Node::pending_join(&store)? {
            join_with_retries(&mut swarm, control.clone(), &key, &store, &token).await?;
        }
    }
    let node = Arc::new(Node::open(&dir)?);
    let now = now_ms();
    let parent = node.parent()?;
    let role = match &parent {
        Some((p, _)) => Role::Member { parent: *p },
        None => Role::Root,
    };
    let seed = u64::from_le_bytes(key.public().0[..8].try_into().unwrap_or([0; 8])) ^ now;
    let chain = if node.is_root() {
        Vec::new()
    } else {
        node.chain()?
    };
    // The path is read off the chain whatever its expiry: rules only need its keys,
    // and the parent renews an expired chain when it takes the node back.
    let path = if node.is_root() {
        vec![key.public()]
    } else {
        crate::rules::path(
            &crate::trust::member::verify_chain(&chain, &node.root_key, 0).map_err(|e| {
                NetError::Transport(format!("this node's certificate chain is unusable: {e}"))
            })?,
        )
    };
    let mut config = engine::Config {
        installer: opts.engine.installer || hands.is_some(),
        ..opts.engine.clone()
    };
    if let Some(rate) = opts.bandwidth.max_download {
        // What is in flight takes longer at a limited rate: a fetch is given up only
        // when it has taken twice what a full window of large chunks would.
        let in_flight = config.window as u64 * u64::from(config.span) * (256 << 10);
        config.fetch_timeout = config.fetch_timeout.max(in_flight * 2000 / rate.0.max(1));
    }
    if let Some(rate) = opts.bandwidth.max_local_download {
        // Likewise a sibling under a LAN limit: its first chunk on each stream comes
        // after a window of chunks has crossed at that rate.
        let first = config.window as u64 * (256 << 10);
        config.sibling_stall = config.sibling_stall.max(first * 4000 / rate.0.max(1));
    }
    let mut engine = Engine::new(role, node.root_key, key.clone(), path, config, seed);
    if let Some(cert) = chain.last()
        && let Err(e) = engine.set_certificate(cert.clone())
    {
        tracing::warn!("this node's certificate cannot prove its failures: {e}");
    }
    engine.set_parent_paused(!opts.bandwidth.wan_open(limit::local_minute()), now);
    let (saved, kept_report_seq) = saved::read(&node, now)?;
    for dropped in engine.resume(&saved, now) {
        tracing::error!("{dropped}");
    }
    if let Some(h) = &hands {
        engine.start_installer(h.opts.withdrawn, installer::states(&h.installed), now);
    }
    let parent_addr = match parent {
        Some((_, addr)) => Some(addr.parse::<Multiaddr>().map_err(|e| NetError::Join {
            addr: addr.clone(),
            why: format!("the stored parent address is not a multiaddr: {e}"),
        })?),
        None => None,
    };
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
    let writer = {
        let node = node.clone();
        let ev = ev_tx.clone();
        std::thread::Builder::new()
            .name("arbor-writer".into())
            .spawn(move || write_loop(&node, writer_rx, &ev))
            .map_err(|e| NetError::Transport(format!("cannot start the writer thread: {e}")))?
    };
    let tasks = Tasks::default();
    spawn_acceptors(&tasks, control.clone(), ev_tx.clone())?;
    let server = Arc::new(Server {
        node: node.clone(),
        corrupt: [opts.corrupt_first_chunks, opts.corrupt_first_deltas].map(AtomicU32::new),
        uploads: Uploads {
            children: opts.bandwidth.max_upload.map(Limiter::new),
            siblings: opts.bandwidth.max_local_upload.map(Limiter::new),
        },
        deltas: delta::Deltas::default(),
    });
    let daemon = Daemon {
        node,
        engine,
        swarm,
        control,
        ev_tx,
        ev_rx,
        writer_tx,
        writer: Some(writer),
        listen_addrs,
        parent_addr,
        chain,
        sessions: HashMap::new(),
        sibling_sessions: HashSet::new(),
        fetchers: HashMap::new(),
        peer_addrs: HashMap::new(),
        remote_addrs: HashMap::new(),
        transfers: HashMap::new(),
        sent_to: HashMap::new(),
        received_from: HashMap::new(),
        delta_bases: HashMap::new(),
        refused: 0,
        rules_refused: 0,
        reports_to_keep: HashMap::new(),
        kept_report_seq,
        waiters: Vec::new(),
        installer: hands,
        download: opts.bandwidth.max_download.map(Limiter::new),
        local_download: opts.bandwidth.max_local_download.map(Limiter::new),
        admin_url: None,
        admin_connections: fds.admin_connections,
        server,
        gate: Default::default(),
        strangers: HashMap::new(),
        tasks,
        opts,
    };
    Ok(daemon)
}

impl Daemon {
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    pub fn node_id(&self) -> String {
        self.node.node_id()
    }

    /// The node's directory.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// The URL of this node's admin API, once one serves it.
    pub fn admin_url(&self) -> Option<&str> {
        self.admin_url.as_deref()
    }

    /// Most connections an admin API may hold open: its share of the open-files limit.
    pub fn admin_connections(&self) -> usize {
        self.admin_connections
    }

    /// Serves the node's operator on `url` for as long as the node runs: `serve` gets a
    /// handle for the requests and a token cancelled when the node stops, and runs
    /// among the node's tasks (the node stops once it has ended).
    pub fn serve_admin<F>(
        &mut self,
        url: String,
        serve: impl FnOnce(Handle, tokio_util::sync::CancellationToken) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.admin_url = Some(url);
        let task = serve(self.handle(), self.tasks.cancel.clone());
        self.tasks.tracker.spawn(task);
    }

    /// A handle for in-process management requests.
    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.ev_tx.clone(),
        }
    }

    /// Runs the node until `shutdown` completes, then stops cleanly: received chunks
    /// are committed and the admin API closed.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NetError> {
        tokio::pin!(shutdown);
        // Once this is logged, the node and its admin API (if it has one) answer.
        tracing::info!(
            node = %self.node.node_id(),
            root = self.node.is_root(),
            admin = self.admin_url.as_deref().unwrap_or("none"),
            "listening on {}",
            self.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.drain(now_ms());
        loop {
            let wake = self
                .engine
                .poll_timeout()
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = &mut shutdown => break,
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                Some(ev) = self.ev_rx.recv() => self.on_event(ev),
                _ = tick.tick() => self.on_tick(),
                _ = tokio::time::sleep(wake) => self.engine.handle_timeout(now_ms()),
            }
            self.drain(now_ms());
        }
        tracing::info!(node = %self.node.node_id(), "stopping");
        // Answer pending waits now: the admin API stops once its requests are done.
        self.waiters.clear();
        // What the tick keeps is kept now too: a child's report that came in since the
        // last tick would otherwise be lost with the process.
        self.keep_reports();
        self.keep_report_seq();
        let Daemon {
            writer,
            writer_tx,
            swarm,
            fetchers,
            sessions,
            tasks,
            ..
        } = self;
        drop((fetchers, sessions, swarm));
        tasks.stop().await;
        drop(writer_tx);
        if let Some(w) = writer {
            // The writer commits what it holds once every sender is gone.
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        Ok(())
    }

    fn on_tick(&mut self) {
        for t in self.transfers.values_mut() {
            t.rate_in = t.bytes_in - t.last_in;
            t.rate_out = t.bytes_out - t.last_out;
            t.last_in = t.bytes_in;
            t.last_out = t.bytes_out;
        }
        let _ = self.writer_tx.try_send(WriteJob::Tick);
        self.expire_strangers();
        logcap::flush();
        // Waits whose caller gave up (an admin API timeout) need no answer.
        self.waiters.retain(|(_, reply)| !reply.is_closed());
        self.keep_reports();
        self.keep_report_seq();
        let open = self.opts.bandwidth.wan_open(limit::local_minute());
        if self.engine.set_parent_paused(!open, now_ms()) {
            if open {
                tracing::info!("the WAN window opened: fetching from the parent resumes");
            } else {
                tracing::info!("the WAN window closed: fetching from the parent pauses");
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let Some(peer) = PublicKey::from_peer_id(&peer_id) else {
                    return;
                };
                if !self.admit_connection(peer, connection_id) {
                    return;
                }
                self.remote_addrs
                    .insert(peer, endpoint.get_remote_address().clone());
                if endpoint.is_dialer() && !self.sessions.contains_key(&peer) {
                    if Some(&peer) == self.engine.parent() {
                        self.open_parent_session(peer);
                    } else if self.peer_addrs.contains_key(&peer)
                        && !self.engine.is_connected_child(&peer)
                    {
                        self.open_sibling_session(peer);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.strangers.remove(&connection_id);
                if num_established == 0
                    && let Some(peer) = PublicKey::from_peer_id(&peer_id)
                {
                    self.remote_addrs.remove(&peer);
                    self.end_session(peer, "connection closed");
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer_id),
                error,
                ..
            } => {
                if let Some(peer) = PublicKey::from_peer_id(&peer_id) {
                    if Some(&peer) == self.engine.parent() {
                        tracing::warn!("cannot reach the parent: {error}");
                        self.engine.handle_disconnected(peer, now_ms());
                    } else if !self.sessions.contains_key(&peer) {
                        crate::peer_warn!(peer, "dial failed", "cannot reach a sibling: {error}");
                        self.engine.handle_disconnected(peer, now_ms());
                    }
                }
            }
            _ => {}
        }
    }
}

fn not_a_client() -> Refusal {
    Refusal::new(
        RefusalKind::Conflict,
        "this node installs nothing: it runs without --install-dir",
    )
}

/// "tenant/category/id version".
fn module_name(m: &SignedManifest) -> String {
    let m = &m.manifest;
    format!("{}/{}/{} {}", m.tenant, m.category, m.id, m.version)
}

fn frame_kind(f: &ControlFrame) -> &'static str {
    match f {
        ControlFrame::Hello { .. } => "Hello",
        ControlFrame::Siblings { .. } => "Siblings",
        ControlFrame::Welcome { .. } => "Welcome",
        ControlFrame::Refused { .. } => "Refused",
        ControlFrame::Offer { .. } => "Offer",
        ControlFrame::Have { .. } => "Have",
        ControlFrame::Rules { .. } => "Rules",
        ControlFrame::Report { .. } => "Report",
        ControlFrame::Ping { .. } => "Ping",
    }
}
