//! The daemon: drives one node's [`Engine`] over libp2p in real time.
//!
//! Owns the swarm (TCP + noise + yamux), the clock, the tasks that run the stream
//! protocols of [`proto`], the store writer thread, and the admin API
//! ([`admin`]). The engine decides; this module moves bytes, checks certificates and
//! hashes, and reports back:
//!
//! - one event loop owns the swarm and the engine; every task talks to it through one
//!   channel of [`Ev`]s, so the engine is never shared;
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
//! - a client run with an install directory has an installer ([`client`]) that the
//!   event loop consults after every change, and whose jobs run off the loop.

pub mod admin;
mod client;
mod delta;
mod limit;
pub mod proto;
mod reports;
mod rules;

use crate::content::Hash;
use crate::engine::{self, ChunkVerdict, Control, Engine, Event, FetchId, Output, Role, Served};
use crate::node::{Node, NodeError};
use crate::publish;
use crate::store::{ChildRecord, ModuleVersion, Store, StoreError, TokenRecord};
use crate::trust::member::{self, JoinToken, root_fingerprint, verify_chain};
use crate::trust::{Envelope, PublicKey, SecretKey, SignedManifest};
use admin::{Answer, Refusal, RefusalKind, Request};
pub use client::{ClientOptions, Withdrawn};
use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use libp2p::swarm::{SwarmEvent, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId as Libp2pPeerId, Stream, Swarm, noise, tcp, yamux};
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
    /// Where the admin API listens.
    pub admin: std::net::SocketAddr,
    pub engine: engine::Config,
    /// Install approved modules here: a client (`arbor run --install-dir`).
    pub client: Option<ClientOptions>,
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
            admin: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            engine: engine::Config::default(),
            client: None,
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
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Install(#[from] crate::install::InstallError),
}

type Behaviour = libp2p_stream::Behaviour;

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

/// Something for the event loop.
enum Ev {
    Local {
        req: Request,
        reply: oneshot::Sender<Answer>,
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
    /// A child-side control handshake succeeded: the parent renewed our chain.
    Renewed {
        chain: Vec<Envelope>,
    },
    ControlUp {
        peer: PublicKey,
        sibling: bool,
        tx: mpsc::UnboundedSender<ControlFrame>,
    },
    ControlMsg {
        peer: PublicKey,
        frame: ControlFrame,
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
        reply: oneshot::Sender<Answer>,
    },
    /// The installer finished a job.
    Installer {
        done: client::Done,
    },
}

/// How to answer a chunk request; or why the peer is refused altogether.
type ServeAnswer = Result<Serving, String>;

/// What to send for each chunk of a request.
struct Serving {
    chunks: Vec<Served>,
    /// The peer is a sibling: served under the local upload limit.
    sibling: bool,
    /// The update and the request's base, when chunks may go as deltas against it.
    delta: Option<(Arc<SignedManifest>, Arc<SignedManifest>)>,
}

/// Work for the store writer thread, in order.
enum WriteJob {
    Chunk {
        fetch: FetchId,
        index: u32,
        hash: Hash,
        data: Vec<u8>,
        /// Bytes that crossed the link for it.
        wire: u32,
    },
    Bad {
        fetch: FetchId,
        index: u32,
    },
    Elsewhere {
        fetch: FetchId,
        index: u32,
        holder: PublicKey,
    },
    End {
        fetch: FetchId,
    },
    Manifest {
        manifest: Arc<SignedManifest>,
    },
    /// Once a second: commit and release the store if no chunk came since the last tick.
    Tick,
    /// Commit what was stored so far, then answer.
    Sync {
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// A chunk span to fetch, with what each chunk must hash to.
struct FetchJob {
    id: FetchId,
    update: Hash,
    first: u32,
    direct: bool,
    expected: Vec<(Hash, u32)>,
    /// What the chunks may come as deltas against.
    base: Option<Arc<delta::Base>>,
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
    ev_tx: mpsc::UnboundedSender<Ev>,
    ev_rx: mpsc::UnboundedReceiver<Ev>,
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
    waiters: Vec<(Hash, oneshot::Sender<Answer>)>,
    /// The installer, on a client.
    client: Option<client::Client>,
    /// Something the installer decides on may have changed: consult it.
    client_dirty: bool,
    /// Fetches from the parent, all streams together, go no faster than this.
    download: Option<Arc<Limiter>>,
    /// Fetches from siblings, all together, go no faster than this.
    local_download: Option<Arc<Limiter>>,
    admin_url: String,
    tasks: Tasks,
    opts: Options,
}

/// Sends requests to a running daemon in the same process.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Ev>,
}

impl Handle {
    /// Asks the daemon what the admin API would.
    pub async fn call(&self, req: Request) -> Answer {
        let stopping = || Refusal::new(RefusalKind::Unavailable, "the daemon is stopping");
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Ev::Local { req, reply })
            .map_err(|_| stopping())?;
        rx.await.unwrap_or_else(|_| Err(stopping()))
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

/// The transport: TCP with TCP_NODELAY, noise, yamux (see README "Transport").
fn build_swarm(key: &SecretKey) -> Result<Swarm<Behaviour>, NetError> {
    let t = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    Ok(
        libp2p::SwarmBuilder::with_existing_identity(key.to_keypair())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| t(&e))?
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .map_err(|e| t(&e))?
            // The control stream keeps a tree connection busy; idle ones are strays.
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build(),
    )
}

/// Opens the node in `opts.dir`, redeems its join token if it has not joined yet,
/// listens, and binds the admin API. The node runs once [`Daemon::run`] is awaited.
pub async fn start(opts: Options) -> Result<Daemon, NetError> {
    let dir = opts.dir.clone();
    // An unusable install directory stops a client before it joins or listens.
    let client = match &opts.client {
        Some(c) => {
            crate::install::probe(&c.install_dir)?;
            Some(client::Client::new(
                c.clone(),
                client::scan(&c.install_dir)?,
            ))
        }
        None => None,
    };
    let key = SecretKey::read(&dir.join(crate::node::NODE_KEY_FILE)).map_err(NodeError::from)?;
    let mut swarm = build_swarm(&key)?;
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
    let control = swarm.behaviour().new_control();
    {
        let store = Store::open(&dir)?;
        if let Some(token) = Node::pending_join(&store)? {
            join(&mut swarm, control.clone(), &key, &store, &token).await?;
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
        installer: opts.engine.installer || client.is_some(),
        ..opts.engine.clone()
    };
    if let Some(rate) = opts.bandwidth.max_download {
        // What is in flight takes longer at a limited rate: a fetch is given up only
        // when it has taken twice what a full window of large chunks would.
        let in_flight = config.window as u64 * u64::from(config.span) * (256 << 10);
        config.fetch_timeout = config.fetch_timeout.max(in_flight * 2000 / rate.0.max(1));
    }
    let mut engine = Engine::new(role, node.root_key, key.clone(), path, config, seed);
    engine.set_parent_paused(!opts.bandwidth.wan_open(limit::local_minute()), now);
    for (child, record) in node.store.children()? {
        if !record.revoked {
            engine.add_child(PublicKey(child));
        }
    }
    for (id, bytes) in node.store.manifests()? {
        match SignedManifest::open(&bytes, &node.root_key, now / 1000) {
            Ok(m) => {
                let have = local_have(&node.store, &m)?;
                engine.add_local_update(Arc::new(m), &have, now);
            }
            Err(e) => {
                tracing::error!(update = %id, "stored manifest refused: {e}; run arbor verify")
            }
        }
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
    let admin = admin::Server::bind(&dir, opts.admin).await?;
    let admin_url = admin.url().to_string();
    {
        let handle = Handle { tx: ev_tx.clone() };
        let stop = tasks.cancel.clone();
        tasks.tracker.spawn(async move {
            if let Err(e) = admin.serve(handle, stop).await {
                tracing::error!("the admin API stopped: {e}");
            }
        });
    }
    spawn_acceptors(
        &tasks,
        control.clone(),
        ev_tx.clone(),
        node.clone(),
        [opts.corrupt_first_chunks, opts.corrupt_first_deltas],
        Uploads {
            children: opts.bandwidth.max_upload.map(Limiter::new),
            siblings: opts.bandwidth.max_local_upload.map(Limiter::new),
        },
    )?;
    tracing::info!(
        node = %node.node_id(),
        root = node.is_root(),
        admin = %admin_url,
        "listening on {}",
        listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    );
    let mut daemon = Daemon {
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
        kept_report_seq: 0,
        waiters: Vec::new(),
        client,
        client_dirty: true,
        download: opts.bandwidth.max_download.map(Limiter::new),
        local_download: opts.bandwidth.max_local_download.map(Limiter::new),
        admin_url,
        tasks,
        opts,
    };
    daemon.restore_rules();
    daemon.restore_reports();
    daemon.restore_report_seq();
    Ok(daemon)
}

/// Which distinct chunks of `m` the store holds, in distinct-chunk order.
fn local_have(store: &Store, m: &SignedManifest) -> Result<Vec<bool>, StoreError> {
    m.chunks
        .iter()
        .map(|(hash, _)| store.has_chunk(hash))
        .collect()
}

/// Redeems `token` at the parent it names: the first run of a joining node.
async fn join(
    swarm: &mut Swarm<Behaviour>,
    mut control: libp2p_stream::Control,
    key: &SecretKey,
    store: &Store,
    token: &JoinToken,
) -> Result<(), NetError> {
    let fail = |why: String| NetError::Join {
        addr: token.addr.clone(),
        why,
    };
    let addr: Multiaddr = token
        .addr
        .parse()
        .map_err(|e| fail(format!("not a multiaddr: {e}")))?;
    let parent = peer_of(&token.parent)?;
    tracing::info!(parent = %token.parent.node_id(), addr = %token.addr, "joining");
    let reply = exchange(swarm, addr, parent, async move {
        let mut s = control
            .open_stream(parent, proto::JOIN)
            .await
            .map_err(|e| e.to_string())?;
        proto::write_frame(
            &mut s,
            &JoinRequest {
                secret: token.secret,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let reply: Option<JoinReply> =
            proto::read_frame(&mut s, proto::MAX_JOIN_FRAME, "join reply")
                .await
                .map_err(|e| e.to_string())?;
        reply.ok_or_else(|| "the parent closed the stream without an answer".to_string())
    })
    .await
    .map_err(fail)?;
    match reply {
        JoinReply::Refused { reason } => Err(NetError::JoinRefused(reason)),
        JoinReply::Accepted { root, chain } => {
            if root_fingerprint(&root) != token.root {
                return Err(fail(
                    "the parent's root key does not match the fingerprint in the token".into(),
                ));
            }
            let members = verify_chain(&chain, &root, now_secs())
                .map_err(|e| fail(format!("the certificate chain is refused: {e}")))?;
            let mine = members.last();
            if mine.map(|m| (m.node, m.issuer)) != Some((key.public(), token.parent)) {
                return Err(fail(
                    "the certificate chain is not for this node under this parent".into(),
                ));
            }
            Node::complete_join(store, &root, &chain, token)?;
            tracing::info!(parent = %token.parent.node_id(), "joined; root key pinned");
            Ok(())
        }
    }
}

/// Dials `peer` at `addr` and runs `talk` while driving the swarm, within the
/// handshake timeout: the one-shot exchanges made before a node runs (joining, probes).
async fn exchange<T>(
    swarm: &mut Swarm<Behaviour>,
    addr: Multiaddr,
    peer: Libp2pPeerId,
    talk: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    swarm
        .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build())
        .map_err(|e| e.to_string())?;
    let driven = async {
        tokio::pin!(talk);
        loop {
            tokio::select! {
                r = &mut talk => return r,
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::OutgoingConnectionError { error, .. } = ev {
                        return Err(format!("cannot reach the peer: {error}"));
                    }
                }
            }
        }
    };
    timeout(HANDSHAKE_TIMEOUT, driven)
        .await
        .map_err(|_| "the peer did not answer in time".to_string())?
}

/// A minimal client of the tree protocols, for the tests and for troubleshooting a
/// refusal: connects to `node` at `addr` as `key` and makes one request.
#[doc(hidden)]
pub mod probe {
    use super::*;

    /// Connects as `key` to `node` at `addr`, opens one stream of `protocol` and runs
    /// `talk` on it.
    async fn one_stream<T, Fut>(
        key: &SecretKey,
        addr: Multiaddr,
        node: PublicKey,
        protocol: libp2p::StreamProtocol,
        talk: impl FnOnce(Stream) -> Fut,
    ) -> Result<T, String>
    where
        Fut: std::future::Future<Output = Result<T, proto::ProtoError>>,
    {
        let mut swarm = build_swarm(key).map_err(|e| e.to_string())?;
        let mut control = swarm.behaviour().new_control();
        let peer = node.peer_id().ok_or("bad node key")?;
        exchange(&mut swarm, addr, peer, async move {
            let s = control
                .open_stream(peer, protocol)
                .await
                .map_err(|e| e.to_string())?;
            talk(s).await.map_err(|e| e.to_string())
        })
        .await
    }

    /// Sends `hello` on a stream of `protocol` (the control or the sibling stream);
    /// returns the node's first answer.
    pub async fn hello(
        key: &SecretKey,
        addr: Multiaddr,
        node: PublicKey,
        protocol: libp2p::StreamProtocol,
        hello: ControlFrame,
    ) -> Result<ControlFrame, String> {
        one_stream(key, addr, node, protocol, |mut s| async move {
            proto::write_frame(&mut s, &hello).await?;
            proto::read_frame(&mut s, proto::MAX_CONTROL_FRAME, "control frame")
                .await?
                .ok_or_else(|| proto::ProtoError::Violation("no answer".into()))
        })
        .await
    }

    /// Sends one chunk request; returns the kind of the first answer and its payload.
    pub async fn chunks(
        key: &SecretKey,
        addr: Multiaddr,
        node: PublicKey,
        req: ChunkRequest,
    ) -> Result<(u8, Vec<u8>), String> {
        one_stream(key, addr, node, proto::CHUNKS, |mut s| async move {
            proto::write_frame(&mut s, &req).await?;
            let (kind, len) = proto::read_chunk_header(&mut s).await?;
            let mut payload = vec![0u8; len as usize];
            s.read_exact(&mut payload).await?;
            Ok((kind, payload))
        })
        .await
    }
}

/// The upload limits: to children (the tree) and to siblings (the site's LAN).
struct Uploads {
    children: Option<Arc<Limiter>>,
    siblings: Option<Arc<Limiter>>,
}

/// What every chunk stream a node serves shares.
struct Server {
    node: Arc<Node>,
    /// A test fault: damage the first this many chunks, and deltas, sent (one byte).
    corrupt: [AtomicU32; 2],
    uploads: Uploads,
    deltas: delta::Deltas,
}

/// Accepts the four stream protocols and hands each stream to its task.
fn spawn_acceptors(
    tasks: &Tasks,
    mut control: libp2p_stream::Control,
    ev: mpsc::UnboundedSender<Ev>,
    node: Arc<Node>,
    corrupt_first: [u32; 2],
    uploads: Uploads,
) -> Result<(), NetError> {
    let taken = |_| NetError::Transport("a protocol was registered twice".into());
    let mut joins = control.accept(proto::JOIN).map_err(taken)?;
    let mut controls = control.accept(proto::CONTROL).map_err(taken)?;
    let mut chunks = control.accept(proto::CHUNKS).map_err(taken)?;
    let mut siblings = control.accept(proto::SIBLINGS).map_err(taken)?;
    let (e, t) = (ev.clone(), tasks.clone());
    tasks.spawn(async move {
        while let Some((peer, stream)) = siblings.next().await {
            if let Some(peer) = PublicKey::from_peer_id(&peer) {
                t.spawn(accept_hello(peer, stream, e.clone(), true));
            }
        }
    });
    let (e, t) = (ev.clone(), tasks.clone());
    tasks.spawn(async move {
        while let Some((peer, stream)) = joins.next().await {
            if let Some(peer) = PublicKey::from_peer_id(&peer) {
                t.spawn(serve_join(peer, stream, e.clone()));
            }
        }
    });
    let (e, t) = (ev.clone(), tasks.clone());
    tasks.spawn(async move {
        while let Some((peer, stream)) = controls.next().await {
            if let Some(peer) = PublicKey::from_peer_id(&peer) {
                t.spawn(accept_hello(peer, stream, e.clone(), false));
            }
        }
    });
    let server = Arc::new(Server {
        node,
        corrupt: corrupt_first.map(AtomicU32::new),
        uploads,
        deltas: delta::Deltas::default(),
    });
    let t = tasks.clone();
    tasks.spawn(async move {
        while let Some((peer, stream)) = chunks.next().await {
            if let Some(peer) = PublicKey::from_peer_id(&peer) {
                t.spawn(serve_chunks(peer, stream, ev.clone(), server.clone()));
            }
        }
    });
    Ok(())
}

async fn serve_join(peer: PublicKey, mut stream: Stream, ev: mpsc::UnboundedSender<Ev>) {
    let req: Result<Option<JoinRequest>, _> = match timeout(
        HANDSHAKE_TIMEOUT,
        proto::read_frame(&mut stream, proto::MAX_JOIN_FRAME, "join request"),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => return,
    };
    let reply = match req {
        Ok(Some(JoinRequest { secret })) => {
            let (reply, rx) = oneshot::channel();
            if ev
                .send(Ev::Join {
                    peer,
                    secret,
                    reply,
                })
                .is_err()
            {
                return;
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(peer = %peer.node_id(), "bad join request: {e}");
            JoinReply::Refused {
                reason: format!("bad join request: {e}"),
            }
        }
    };
    let _ = timeout(HANDSHAKE_TIMEOUT, async {
        proto::write_frame(&mut stream, &reply).await?;
        stream.close().await?;
        Ok::<_, proto::ProtoError>(())
    })
    .await;
}

/// The answering side of a control stream (from a child) or a sibling stream (from a
/// sibling): the event loop checks the hello's chain; the answer is `Welcome` and the
/// session, or `Refused` with the reason.
async fn accept_hello(
    peer: PublicKey,
    mut stream: Stream,
    ev: mpsc::UnboundedSender<Ev>,
    sibling: bool,
) {
    let limit = if sibling {
        proto::MAX_JOIN_FRAME
    } else {
        proto::MAX_CONTROL_FRAME
    };
    let hello = timeout(
        HANDSHAKE_TIMEOUT,
        proto::read_frame::<_, ControlFrame>(&mut stream, limit, "hello"),
    )
    .await;
    let verdict = match hello {
        Ok(Ok(Some(ControlFrame::Hello { site, addrs, chain }))) => {
            let (reply, rx) = oneshot::channel();
            let check = if sibling {
                Ev::SiblingHello { peer, chain, reply }
            } else {
                Ev::Hello {
                    peer,
                    chain,
                    site,
                    addrs,
                    reply,
                }
            };
            if ev.send(check).is_err() {
                return;
            }
            rx.await
                .unwrap_or_else(|_| Err("the node is shutting down".into()))
        }
        Ok(Ok(_)) => Err("the first frame must be Hello".to_string()),
        Ok(Err(e)) => Err(format!("bad hello: {e}")),
        Err(_) => Err("no hello in time".to_string()),
    };
    match verdict {
        Ok(chain) => {
            if proto::write_frame(&mut stream, &ControlFrame::Welcome { chain })
                .await
                .is_ok()
            {
                run_control(peer, sibling, stream, ev).await;
            }
        }
        Err(reason) => {
            if sibling {
                tracing::warn!(peer = %peer.node_id(), "refused as a sibling: {reason}");
            }
            let _ = timeout(HANDSHAKE_TIMEOUT, async {
                proto::write_frame(&mut stream, &ControlFrame::Refused { reason }).await?;
                stream.close().await?;
                Ok::<_, proto::ProtoError>(())
            })
            .await;
        }
    }
}

/// The control stream to the parent, child side: present the chain, check the renewed
/// one, then run the session.
async fn open_control(
    mut control: libp2p_stream::Control,
    parent: PublicKey,
    me: PublicKey,
    root: PublicKey,
    hello: ControlFrame,
    ev: mpsc::UnboundedSender<Ev>,
) {
    let handshake = async {
        let pid = parent.peer_id().ok_or("bad parent key")?;
        let mut s = control
            .open_stream(pid, proto::CONTROL)
            .await
            .map_err(|e| e.to_string())?;
        proto::write_frame(&mut s, &hello)
            .await
            .map_err(|e| e.to_string())?;
        match proto::read_frame(&mut s, proto::MAX_CONTROL_FRAME, "control frame").await {
            Ok(Some(ControlFrame::Welcome { chain })) => {
                let members = verify_chain(&chain, &root, now_secs())
                    .map_err(|e| format!("the parent sent a chain that is refused: {e}"))?;
                if members.last().map(|m| (m.node, m.issuer)) != Some((me, parent)) {
                    return Err("the parent sent a chain for another node".to_string());
                }
                Ok((s, chain))
            }
            Ok(Some(ControlFrame::Refused { reason })) => {
                Err(format!("the parent refused this node: {reason}"))
            }
            Ok(_) => Err("the parent broke the protocol".to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok((stream, chain))) => {
            let _ = ev.send(Ev::Renewed { chain });
            run_control(parent, false, stream, ev).await;
        }
        Ok(Err(why)) => {
            let _ = ev.send(Ev::ControlDown { peer: parent, why });
        }
        Err(_) => {
            let _ = ev.send(Ev::ControlDown {
                peer: parent,
                why: "the control handshake timed out".into(),
            });
        }
    }
}

/// What a node checks a sibling's chain against: the pinned root, its own parent (the
/// sibling's must be the same) and its own site (likewise).
#[derive(Clone)]
struct SiblingCheck {
    root: PublicKey,
    parent: PublicKey,
    site: String,
}

/// Accepts `chain` from `peer` as a sibling's, or says why not.
fn check_sibling(peer: &PublicKey, chain: &[Envelope], check: &SiblingCheck) -> Result<(), String> {
    let members = verify_chain(chain, &check.root, now_secs())
        .map_err(|e| format!("its certificate chain is refused: {e}"))?;
    let last = members.last().ok_or("empty chain")?;
    if last.node != *peer {
        return Err("it presented the certificate chain of another node".into());
    }
    if last.issuer != check.parent {
        return Err("it is not a child of this node's parent".into());
    }
    if last.site.as_deref() != Some(check.site.as_str()) {
        return Err(format!(
            "its parent certified it at site {:?}, not at {:?}",
            last.site.as_deref().unwrap_or("(none)"),
            check.site
        ));
    }
    Ok(())
}

/// The sibling stream to a sibling this node dialled: present our chain, check theirs.
async fn open_sibling(
    mut control: libp2p_stream::Control,
    peer: PublicKey,
    chain: Vec<Envelope>,
    check: SiblingCheck,
    ev: mpsc::UnboundedSender<Ev>,
) {
    // As for chunk streams, a peer drops an inbound stream it cannot accept fast enough:
    // a stream that fails before any answer is opened again, a few times. A refusal or
    // a chain that is not a sibling's is final.
    let mut why = String::new();
    for _ in 0..3 {
        let handshake = async {
            let pid = peer
                .peer_id()
                .ok_or((false, "bad sibling key".to_string()))?;
            let io = |e: &dyn std::fmt::Display| (true, e.to_string());
            let mut s = control
                .open_stream(pid, proto::SIBLINGS)
                .await
                .map_err(|e| io(&e))?;
            let hello = ControlFrame::Hello {
                site: None,
                addrs: Vec::new(),
                chain: chain.clone(),
            };
            proto::write_frame(&mut s, &hello)
                .await
                .map_err(|e| io(&e))?;
            match proto::read_frame(&mut s, proto::MAX_JOIN_FRAME, "sibling welcome").await {
                Ok(Some(ControlFrame::Welcome { chain })) => {
                    check_sibling(&peer, &chain, &check).map_err(|e| (false, e))?;
                    Ok(s)
                }
                Ok(Some(ControlFrame::Refused { reason })) => {
                    Err((false, format!("the sibling refused this node: {reason}")))
                }
                Ok(_) => Err((false, "the sibling broke the protocol".to_string())),
                Err(e) => Err(io(&e)),
            }
        };
        match timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => return run_control(peer, true, stream, ev).await,
            Ok(Err((retry, e))) => {
                why = e;
                if !retry {
                    break;
                }
            }
            Err(_) => {
                why = "the sibling handshake timed out".into();
                break;
            }
        }
    }
    tracing::warn!(peer = %peer.node_id(), "no sibling session: {why}");
    let _ = ev.send(Ev::ControlDown { peer, why });
}

/// A live control or sibling session: frames out from the event loop, frames in to it.
async fn run_control(
    peer: PublicKey,
    sibling: bool,
    stream: Stream,
    ev: mpsc::UnboundedSender<Ev>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<ControlFrame>();
    if ev.send(Ev::ControlUp { peer, sibling, tx }).is_err() {
        return;
    }
    let (mut r, mut w) = stream.split();
    let writer = async {
        while let Some(frame) = rx.recv().await {
            proto::write_frame(&mut w, &frame).await?;
        }
        // The event loop ended the session.
        w.close().await?;
        Ok::<_, proto::ProtoError>(())
    };
    let reader = async {
        loop {
            match proto::read_frame::<_, ControlFrame>(
                &mut r,
                proto::MAX_CONTROL_FRAME,
                "control frame",
            )
            .await?
            {
                Some(frame) => {
                    if ev.send(Ev::ControlMsg { peer, frame }).is_err() {
                        return Ok(());
                    }
                }
                None => return Ok::<_, proto::ProtoError>(()),
            }
        }
    };
    let why = tokio::select! {
        r = writer => match r { Ok(()) => "closed".to_string(), Err(e) => e.to_string() },
        r = reader => match r { Ok(()) => "closed by the peer".to_string(), Err(e) => e.to_string() },
    };
    let _ = ev.send(Ev::ControlDown { peer, why });
}

/// Serves span requests on one chunk stream of `peer`.
async fn serve_chunks(
    peer: PublicKey,
    mut stream: Stream,
    ev: mpsc::UnboundedSender<Ev>,
    server: Arc<Server>,
) {
    // One chunk answer, header then bytes, is one write: the header does not go out
    // as a frame of its own.
    let mut buf = Vec::new();
    const H: usize = proto::CHUNK_HEADER_LEN;
    loop {
        let req: ChunkRequest =
            match proto::read_frame(&mut stream, proto::MAX_REQUEST_FRAME, "chunk request").await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(peer = %peer.node_id(), "chunk stream: {e}");
                    return;
                }
            };
        if let Err(e) = req.check() {
            tracing::warn!(peer = %peer.node_id(), "chunk stream: {e}");
            return;
        }
        let (reply, rx) = oneshot::channel();
        if ev
            .send(Ev::Serve {
                peer,
                req: req.clone(),
                reply,
            })
            .is_err()
        {
            return;
        }
        let answer = match rx.await {
            Ok(a) => a,
            Err(_) => return,
        };
        let result: Result<u64, proto::ProtoError> = async {
            let serving = match answer {
                Ok(serving) => serving,
                Err(reason) => {
                    let reason = reason.as_bytes();
                    let reason = &reason[..reason.len().min(1024)];
                    proto::write_chunk_header(&mut stream, proto::CHUNK_REFUSED, reason.len() as u32)
                        .await?;
                    stream.write_all(reason).await?;
                    stream.close().await?;
                    return Err(proto::ProtoError::Violation("refused".into()));
                }
            };
            let upload = if serving.sibling {
                &server.uploads.siblings
            } else {
                &server.uploads.children
            };
            let store = &server.node.store;
            let mut sent = 0u64;
            for (index, c) in (req.first..).zip(serving.chunks) {
                let (hash, len) = match c {
                    Served::Data { hash, len } => (hash, len),
                    Served::Missing => {
                        proto::write_chunk_header(&mut stream, proto::CHUNK_MISSING, 0).await?;
                        continue;
                    }
                    Served::Elsewhere { holder } => {
                        let mut answer = proto::chunk_header(proto::CHUNK_ELSEWHERE, 32).to_vec();
                        answer.extend_from_slice(&holder.0);
                        stream.write_all(&answer).await?;
                        continue;
                    }
                };
                // A delta made for an earlier requester goes as it is, unread.
                let known = serving
                    .delta
                    .as_ref()
                    .and_then(|(_, base)| server.deltas.known(&hash, &base.id));
                if let Some(Some(delta)) = &known {
                    buf.resize(H, 0);
                    buf.extend_from_slice(delta);
                    send_answer(&mut stream, &server, &mut buf, proto::CHUNK_DELTA, upload)
                        .await?;
                    sent += delta.len() as u64;
                    continue;
                }
                // A page-cache read of one chunk: short enough to do in place.
                // Every byte after the header is overwritten by the read.
                buf.resize(H + len as usize, 0);
                let read = store
                    .chunk_loc(&hash)
                    .ok()
                    .flatten()
                    .filter(|loc| loc.len == len)
                    .is_some_and(|loc| store.read_into(loc, &mut buf[H..]).is_ok());
                if !read {
                    tracing::error!(chunk = %hash, "a chunk this node holds cannot be read; run arbor verify");
                    proto::write_chunk_header(&mut stream, proto::CHUNK_MISSING, 0).await?;
                    continue;
                }
                let mut kind = proto::CHUNK_DATA;
                if let Some((update, base)) = serving.delta.as_ref().filter(|_| known.is_none()) {
                    // Matching is CPU work of a millisecond or so: off the async threads,
                    // a few at a time.
                    let turn = server.deltas.turn().await;
                    let (server, update, base) = (server.clone(), update.clone(), base.clone());
                    let data = std::mem::take(&mut buf);
                    let (data, delta) = tokio::task::spawn_blocking(move || {
                        let target = &data[H..];
                        let delta = server.deltas.encode(
                            &server.node.store,
                            &update,
                            &base,
                            index,
                            hash,
                            target,
                        );
                        (data, delta)
                    })
                    .await
                    .map_err(|e| proto::ProtoError::Io(std::io::Error::other(e)))?;
                    drop(turn);
                    buf = data;
                    if let Some(delta) = delta {
                        kind = proto::CHUNK_DELTA;
                        buf.truncate(H);
                        buf.extend_from_slice(&delta);
                    }
                }
                send_answer(&mut stream, &server, &mut buf, kind, upload).await?;
                sent += (buf.len() - H) as u64;
            }
            stream.flush().await?;
            Ok(sent)
        }
        .await;
        match result {
            Ok(bytes) => {
                let _ = ev.send(Ev::Served {
                    peer,
                    update: req.update,
                    bytes,
                });
            }
            Err(_) => return,
        }
    }
}

/// Sends one chunk answer of `kind` whose payload follows the header room in `buf`, as
/// one write, paced by `upload`.
async fn send_answer(
    stream: &mut Stream,
    server: &Server,
    buf: &mut [u8],
    kind: u8,
    upload: &Option<Arc<Limiter>>,
) -> Result<(), proto::ProtoError> {
    const H: usize = proto::CHUNK_HEADER_LEN;
    let payload = (buf.len() - H) as u32;
    if server.corrupt[usize::from(kind == proto::CHUNK_DELTA)]
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
        && let Some(b) = buf.get_mut(H)
    {
        *b ^= 0xff;
    }
    buf[..H].copy_from_slice(&proto::chunk_header(kind, payload));
    pace(upload, u64::from(payload)).await;
    stream.write_all(buf).await?;
    Ok(())
}

/// How often a chunk stream that fails before its first answer is opened, and the
/// wait before the second attempt (doubling after each).
const OPEN_ATTEMPTS: u32 = 6;
const REOPEN_AFTER: Duration = Duration::from_millis(10);

/// One of a node's persistent chunk streams to a source (its parent or a sibling).
async fn fetch_worker(
    mut control: libp2p_stream::Control,
    source: Libp2pPeerId,
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<FetchJob>>>,
    writer: mpsc::Sender<WriteJob>,
    fetch_timeout: Duration,
    download: Option<Arc<Limiter>>,
    node: Arc<Node>,
) {
    let mut stream: Option<Stream> = None;
    loop {
        let job = { jobs.lock().await.recv().await };
        let Some(job) = job else { return };
        // A peer drops inbound streams it cannot accept fast enough (libp2p-stream's
        // accept queue holds one), so a stream that fails before its first answer is
        // opened again, a few times and further apart each time (a burst of new
        // streams from a whole site at once takes a while to be accepted), before the
        // fetch is given up and its chunks are asked of another source.
        for attempt in 0..OPEN_ATTEMPTS {
            let fresh = stream.is_none();
            if fresh {
                match timeout(
                    HANDSHAKE_TIMEOUT,
                    control.open_stream(source, proto::CHUNKS),
                )
                .await
                {
                    Ok(Ok(s)) => stream = Some(s),
                    Ok(Err(e)) => tracing::warn!("cannot open a chunk stream: {e}"),
                    Err(_) => tracing::warn!("opening a chunk stream timed out"),
                }
            }
            let Some(s) = stream.as_mut() else { break };
            let outcome = timeout(
                fetch_timeout,
                fetch_span(s, &job, &writer, &download, &node),
            )
            .await;
            let (span, n) = (job.first, job.expected.len());
            match outcome {
                Ok(Ok(())) => break,
                Ok(Err(proto::ProtoError::Io(e))) if fresh && attempt + 1 < OPEN_ATTEMPTS => {
                    tracing::debug!(
                        "a new chunk stream failed before answering ({e}); opening another"
                    );
                    stream = None;
                    tokio::time::sleep(REOPEN_AFTER * (1 << attempt)).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(update = %job.update, "fetch of chunks {span}+{n} failed: {e}");
                    stream = None;
                    break;
                }
                Err(_) => {
                    tracing::warn!(update = %job.update, "fetch of chunks {span}+{n} timed out");
                    stream = None;
                    break;
                }
            }
        }
        if writer.send(WriteJob::End { fetch: job.id }).await.is_err() {
            return;
        }
    }
}

/// Requests one span and checks every chunk of the answer against its expected hash.
async fn fetch_span(
    s: &mut Stream,
    job: &FetchJob,
    writer: &mpsc::Sender<WriteJob>,
    download: &Option<Arc<Limiter>>,
    node: &Arc<Node>,
) -> Result<(), proto::ProtoError> {
    let count = job.expected.len() as u32;
    let base = job
        .base
        .as_ref()
        .filter(|b| !b.broken.load(Ordering::Relaxed));
    proto::write_frame(
        s,
        &ChunkRequest {
            base: base.map(|b| b.id),
            count,
            first: job.first,
            direct: job.direct,
            update: job.update,
        },
    )
    .await?;
    for (k, (hash, len)) in job.expected.iter().enumerate() {
        let index = job.first + k as u32;
        let (kind, n) = proto::read_chunk_header(s).await?;
        match kind {
            proto::CHUNK_DATA => {
                if n != *len {
                    let why = format!("chunk {index} sent with {n} bytes; the manifest says {len}");
                    return Err(bad_answer(writer, job.id, index, why).await);
                }
                // Read no faster than the limit: the parent's sending waits on the
                // streams' flow control, so the link carries no more either.
                pace(download, u64::from(n)).await;
                let mut data = vec![0u8; n as usize];
                s.read_exact(&mut data).await?;
                // The one hash of this chunk on this node: it is the verification.
                let job = if Hash::of(&data) == *hash {
                    WriteJob::Chunk {
                        fetch: job.id,
                        index,
                        hash: *hash,
                        data,
                        wire: n,
                    }
                } else {
                    WriteJob::Bad {
                        fetch: job.id,
                        index,
                    }
                };
                if writer.send(job).await.is_err() {
                    return Ok(());
                }
            }
            proto::CHUNK_DELTA => {
                let Some(base) = base.filter(|_| n < *len) else {
                    let asked = if base.is_some() {
                        "whole"
                    } else {
                        "without a base"
                    };
                    let why = format!(
                        "chunk {index} sent as a delta of {n} bytes; it has {len} bytes and was asked for {asked}"
                    );
                    return Err(bad_answer(writer, job.id, index, why).await);
                };
                pace(download, u64::from(n)).await;
                let mut bytes = vec![0u8; n as usize];
                s.read_exact(&mut bytes).await?;
                // Reading up to 8 base chunks and hashing: off the async threads.
                let (node, base, expected) = (node.clone(), base.clone(), (*hash, *len));
                let rebuilt = tokio::task::spawn_blocking(move || {
                    delta::rebuild(&node.store, &base, &bytes, expected)
                })
                .await
                .map_err(|e| proto::ProtoError::Io(std::io::Error::other(e)))?;
                let verdict = match rebuilt {
                    Ok(data) => Some(WriteJob::Chunk {
                        fetch: job.id,
                        index,
                        hash: *hash,
                        data,
                        wire: n,
                    }),
                    Err(delta::Rebuild::Bad(why)) => {
                        tracing::warn!(update = %job.update, "chunk {index}: a bad delta: {why}");
                        Some(WriteJob::Bad {
                            fetch: job.id,
                            index,
                        })
                    }
                    // Not the sender's fault: left unanswered, asked again without a base.
                    Err(delta::Rebuild::Local(why)) => {
                        tracing::error!(
                            "cannot rebuild chunk {index} of update {}: {why}; run arbor verify",
                            job.update
                        );
                        None
                    }
                };
                if let Some(verdict) = verdict
                    && writer.send(verdict).await.is_err()
                {
                    return Ok(());
                }
            }
            proto::CHUNK_MISSING => {}
            proto::CHUNK_ELSEWHERE => {
                let mut key = [0u8; 32];
                s.read_exact(&mut key).await?;
                let elsewhere = WriteJob::Elsewhere {
                    fetch: job.id,
                    index,
                    holder: PublicKey(key),
                };
                if writer.send(elsewhere).await.is_err() {
                    return Ok(());
                }
            }
            _ => {
                let mut reason = vec![0u8; n as usize];
                s.read_exact(&mut reason).await?;
                return Err(proto::ProtoError::Violation(format!(
                    "refused: {}",
                    String::from_utf8_lossy(&reason)
                )));
            }
        }
    }
    Ok(())
}

/// A chunk answer that breaks the protocol: counted as a bad chunk from its sender, and
/// the stream is given up.
async fn bad_answer(
    writer: &mpsc::Sender<WriteJob>,
    fetch: FetchId,
    index: u32,
    why: String,
) -> proto::ProtoError {
    let _ = writer.send(WriteJob::Bad { fetch, index }).await;
    proto::ProtoError::Violation(why)
}

/// The store writer thread: stores verified chunks and received manifests, in arrival
/// order, and reports each chunk only once it is stored.
fn write_loop(node: &Node, mut rx: mpsc::Receiver<WriteJob>, ev: &mpsc::UnboundedSender<Ev>) {
    let store = &node.store;
    let mut writer = None;
    let mut wrote = false;
    let mut damaged_logged = false;
    while let Some(job) = rx.blocking_recv() {
        match job {
            WriteJob::Chunk {
                fetch,
                index,
                hash,
                data,
                wire,
            } => {
                if writer.is_none() {
                    match store.writer() {
                        Ok(w) => writer = Some(w),
                        Err(e) => {
                            if !damaged_logged {
                                tracing::error!("cannot store chunks: {e}");
                                damaged_logged = true;
                            }
                            continue;
                        }
                    }
                }
                if let Some(w) = writer.as_mut() {
                    match w.put(hash, &data) {
                        Ok(_) => {
                            wrote = true;
                            let _ = ev.send(Ev::Verdict {
                                fetch,
                                index,
                                verdict: ChunkVerdict::Stored { wire },
                            });
                        }
                        Err(e) => tracing::error!(chunk = %hash, "cannot store a chunk: {e}"),
                    }
                }
            }
            WriteJob::Bad { fetch, index } => {
                let _ = ev.send(Ev::Verdict {
                    fetch,
                    index,
                    verdict: ChunkVerdict::Bad,
                });
            }
            WriteJob::Elsewhere {
                fetch,
                index,
                holder,
            } => {
                let _ = ev.send(Ev::Elsewhere {
                    fetch,
                    index,
                    holder,
                });
            }
            WriteJob::End { fetch } => {
                let _ = ev.send(Ev::FetchEnd { fetch });
            }
            WriteJob::Manifest { manifest } => {
                let m = &manifest.manifest;
                let name = ModuleVersion {
                    tenant: &m.tenant,
                    category: &m.category,
                    id: &m.id,
                    version: &m.version,
                };
                let stored = store
                    .put_manifest(&manifest.id, &manifest.bytes, &name)
                    .and_then(|()| local_have(store, &manifest));
                match stored {
                    Ok(have) => {
                        let _ = ev.send(Ev::LocalHave {
                            update: manifest.id,
                            have,
                        });
                    }
                    Err(e) => {
                        tracing::error!(update = %manifest.id, "cannot store a manifest: {e}")
                    }
                }
            }
            WriteJob::Sync { done } => {
                let synced = match writer.as_mut() {
                    Some(w) if w.has_pending() => w.flush().map_err(|e| e.to_string()),
                    _ => Ok(()),
                };
                let _ = done.send(synced);
            }
            WriteJob::Tick => {
                if !wrote && let Some(mut w) = writer.take() {
                    // Idle: make what arrived durable and let publish use the store.
                    if let Err(e) = w.flush() {
                        tracing::error!("cannot commit received chunks: {e}");
                    }
                }
                wrote = false;
            }
        }
    }
    if let Some(mut w) = writer
        && let Err(e) = w.flush()
    {
        tracing::error!("cannot commit received chunks at shutdown: {e}");
    }
}

impl Daemon {
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    pub fn node_id(&self) -> String {
        self.node.node_id()
    }

    /// The URL of this node's admin API.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
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
        // Waits whose caller gave up (an admin API timeout) need no answer.
        self.waiters.retain(|(_, reply)| !reply.is_closed());
        self.renew_rules();
        self.keep_reports();
        self.keep_report_seq();
        // Retries of failed installs come due with time.
        self.client_dirty = true;
        let open = self.opts.bandwidth.wan_open(limit::local_minute());
        if self.engine.set_parent_paused(!open, now_ms()) {
            if open {
                tracing::info!("the WAN window opened: fetching from the parent resumes");
            } else {
                tracing::info!("the WAN window closed: fetching from the parent pauses");
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<()>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let Some(peer) = PublicKey::from_peer_id(&peer_id) else {
                    return;
                };
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
                num_established: 0,
                ..
            } => {
                if let Some(peer) = PublicKey::from_peer_id(&peer_id) {
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
                        tracing::warn!(peer = %peer.node_id(), "cannot reach a sibling: {error}");
                        self.engine.handle_disconnected(peer, now_ms());
                    }
                }
            }
            _ => {}
        }
    }

    fn open_parent_session(&self, parent: PublicKey) {
        let hello = ControlFrame::Hello {
            site: self.opts.site.clone(),
            addrs: self
                .listen_addrs
                .iter()
                .take(proto::MAX_ADDRS)
                .map(|a| a.to_string())
                .collect(),
            chain: self.chain.clone(),
        };
        self.tasks.spawn(open_control(
            self.control.clone(),
            parent,
            self.node.node_key.public(),
            self.node.root_key,
            hello,
            self.ev_tx.clone(),
        ));
    }

    /// What a sibling's chain must show: this node's root, parent and site.
    fn sibling_check(&self) -> Option<SiblingCheck> {
        Some(SiblingCheck {
            root: self.node.root_key,
            parent: *self.engine.parent()?,
            site: self.opts.site.clone()?,
        })
    }

    fn open_sibling_session(&self, peer: PublicKey) {
        let Some(check) = self.sibling_check() else {
            return;
        };
        self.tasks.spawn(open_sibling(
            self.control.clone(),
            peer,
            self.chain.clone(),
            check,
            self.ev_tx.clone(),
        ));
    }

    /// A session with `peer` is over (or never started): the engine hears of it once.
    fn end_session(&mut self, peer: PublicKey, why: &str) {
        let had_session = self.sessions.remove(&peer).is_some();
        let was_sibling = self.sibling_sessions.remove(&peer);
        let is_parent = Some(&peer) == self.engine.parent();
        self.fetchers.remove(&peer);
        if was_sibling {
            tracing::info!(peer = %peer.node_id(), "sibling session ended: {why}");
            self.engine.handle_disconnected(peer, now_ms());
        } else if had_session || is_parent {
            tracing::info!(peer = %peer.node_id(), parent = is_parent, "session ended: {why}");
            self.engine.handle_disconnected(peer, now_ms());
        }
    }

    fn on_event(&mut self, ev: Ev) {
        let now = now_ms();
        match ev {
            Ev::Local { req, reply } => self.on_local(req, reply),
            Ev::Join {
                peer,
                secret,
                reply,
            } => {
                let _ = reply.send(self.on_join(peer, secret));
            }
            Ev::Hello {
                peer,
                chain,
                site,
                addrs,
                reply,
            } => {
                let verdict = self.check_child(&peer, &chain, site.as_deref(), &addrs);
                match &verdict {
                    Ok(_) => self.engine.set_child_site(peer, site.as_deref()),
                    Err(reason) => {
                        self.refused += 1;
                        tracing::warn!(peer = %peer.node_id(), "refused: {reason}");
                    }
                }
                let _ = reply.send(verdict);
            }
            Ev::SiblingHello { peer, chain, reply } => {
                let verdict = match self.sibling_check() {
                    Some(check) => {
                        check_sibling(&peer, &chain, &check).map(|()| self.chain.clone())
                    }
                    None => Err("this node has no site, so it has no siblings".to_string()),
                };
                if verdict.is_err() {
                    self.refused += 1;
                }
                let _ = reply.send(verdict);
            }
            Ev::Renewed { chain } => {
                if let Err(e) = self.node.set_chain(&chain) {
                    tracing::error!("cannot keep the renewed certificate chain: {e}");
                }
                self.chain = chain;
            }
            Ev::ControlUp { peer, sibling, tx } => {
                if sibling {
                    if self.sessions.contains_key(&peer) {
                        // Both sides dialled at once: one session is enough.
                        return;
                    }
                    self.sessions.insert(peer, tx);
                    self.sibling_sessions.insert(peer);
                    self.start_fetchers(peer, self.local_download.clone());
                    if !self.engine.handle_sibling_connected(peer, now) {
                        self.end_session(peer, "a banned sibling");
                        self.disconnect(peer);
                    } else {
                        tracing::info!(peer = %peer.node_id(), "sibling session up");
                    }
                    return;
                }
                self.sessions.insert(peer, tx);
                if Some(&peer) == self.engine.parent() {
                    self.start_fetchers(peer, self.download.clone());
                }
                self.engine.handle_connected(peer, now);
            }
            Ev::ControlMsg { peer, frame } => {
                let msg = match frame {
                    ControlFrame::Offer { manifest } => Control::Offer {
                        manifest: manifest.into(),
                    },
                    ControlFrame::Have { update, ranges } if ranges.len() <= proto::MAX_RANGES => {
                        Control::Have { update, ranges }
                    }
                    ControlFrame::Rules { sets } => Control::Rules {
                        sets: sets.into_iter().map(|b| b.into_vec().into()).collect(),
                    },
                    ControlFrame::Report { report } => Control::Report {
                        report: report.into_vec().into(),
                    },
                    ControlFrame::Siblings { peers } if Some(&peer) == self.engine.parent() => {
                        match self.take_sibling_addrs(peers) {
                            Ok(peers) => Control::Siblings { peers },
                            Err(why) => {
                                tracing::warn!(peer = %peer.node_id(), "bad sibling list: {why}; closing");
                                self.disconnect(peer);
                                return;
                            }
                        }
                    }
                    other => {
                        tracing::warn!(peer = %peer.node_id(), "unexpected control frame {:?}; closing", frame_kind(&other));
                        self.disconnect(peer);
                        return;
                    }
                };
                // New offers and rules change what the installer decides; chunk
                // announcements and reports do not (completion comes as an event).
                if matches!(msg, Control::Offer { .. } | Control::Rules { .. }) {
                    self.client_dirty = true;
                }
                self.engine.handle_message(peer, msg, now);
            }
            Ev::ControlDown { peer, why } => {
                let is_parent = Some(&peer) == self.engine.parent();
                let came_up =
                    self.sessions.contains_key(&peer) || self.sibling_sessions.contains(&peer);
                if is_parent && !came_up {
                    tracing::error!("{why}");
                }
                self.end_session(peer, &why);
                if !is_parent && !came_up {
                    // A sibling session that never came up (say, the sibling still had
                    // the certificate of its join, without the site): the dial is over.
                    // The engine is told, so that it dials again after its backoff
                    // instead of waiting on this dial forever.
                    self.engine.handle_disconnected(peer, now);
                }
                self.disconnect(peer);
            }
            Ev::Verdict {
                fetch,
                index,
                verdict,
            } => {
                let source = self.engine.fetch_source(fetch);
                if let (ChunkVerdict::Stored { wire }, Some((from, update))) = (verdict, source) {
                    let wire = u64::from(wire);
                    self.transfers.entry(update).or_default().bytes_in += wire;
                    *self.received_from.entry(from).or_default() += wire;
                }
                self.engine.handle_chunk(fetch, index, verdict, now);
                if let Some((_, update)) = source
                    && self.engine.is_complete(&update)
                {
                    self.delta_bases.remove(&update);
                }
            }
            Ev::FetchEnd { fetch } => self.engine.handle_fetch_end(fetch, now),
            Ev::Elsewhere {
                fetch,
                index,
                holder,
            } => self.engine.handle_elsewhere(fetch, index, holder, now),
            Ev::Serve { peer, req, reply } => {
                let answer = if self.engine.may_request(&peer) {
                    let span = req.first..req.first + req.count;
                    let chunks = self.engine.serve(&peer, &req.update, span, req.direct);
                    Ok(Serving {
                        chunks,
                        sibling: self.engine.is_connected_sibling(&peer),
                        delta: req
                            .base
                            .and_then(|base| self.engine.delta_pair(&req.update, &base)),
                    })
                } else {
                    self.refused += 1;
                    tracing::warn!(peer = %peer.node_id(), "refused a chunk request: not a connected child or sibling");
                    Err(
                        "this node serves chunks only to its own connected children and siblings"
                            .to_string(),
                    )
                };
                let _ = reply.send(answer);
            }
            Ev::Served {
                peer,
                update,
                bytes,
            } => {
                self.transfers.entry(update).or_default().bytes_out += bytes;
                *self.sent_to.entry(peer).or_default() += bytes;
            }
            Ev::LocalHave { update, have } => {
                self.engine.handle_local_have(update, &have, now);
                self.client_dirty = true;
            }
            Ev::Installer { done } => {
                if let Some(c) = self.client.as_mut() {
                    c.finish(done, &mut self.engine, &self.node, now);
                }
                self.client_dirty = true;
            }
            Ev::Published { result, reply } => {
                let response = match result {
                    Ok(outcome) => {
                        if let Err(e) = self.add_published(&outcome.update_id, now) {
                            tracing::error!("published update cannot be offered: {e}");
                        }
                        Ok(serde_json::to_value(&outcome).unwrap_or_default())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(response);
            }
        }
    }

    /// The base this node names when it fetches chunks of `update`, kept per update
    /// so that every span names the same one.
    fn delta_base(&mut self, update: &Hash) -> Option<Arc<delta::Base>> {
        if let Some(base) = self.delta_bases.get(update) {
            return Some(base.clone());
        }
        let (id, chunks) = self.engine.delta_base(update)?;
        let base = Arc::new(delta::Base {
            id,
            chunks,
            broken: Default::default(),
        });
        self.delta_bases.insert(*update, base.clone());
        Some(base)
    }

    fn add_published(&mut self, id: &Hash, now: u64) -> Result<(), String> {
        let bytes = self
            .node
            .store
            .manifest_bytes(id)
            .map_err(|e| e.to_string())?
            .ok_or("the manifest is not in the store")?;
        let m = SignedManifest::open(&bytes, &self.node.root_key, now / 1000)
            .map_err(|e| e.to_string())?;
        let have = local_have(&self.node.store, &m).map_err(|e| e.to_string())?;
        self.engine.add_local_update(Arc::new(m), &have, now);
        Ok(())
    }

    /// Starts the chunk streams to a source (the parent or a sibling), paced by `limit`.
    fn start_fetchers(&mut self, source: PublicKey, limit: Option<Arc<Limiter>>) {
        let Some(pid) = source.peer_id() else { return };
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..self.opts.engine.window {
            self.tasks.spawn(fetch_worker(
                self.control.clone(),
                pid,
                rx.clone(),
                self.writer_tx.clone(),
                Duration::from_millis(self.engine.config().fetch_timeout),
                limit.clone(),
                self.node.clone(),
            ));
        }
        self.fetchers.insert(source, tx);
    }

    /// The parent's list of siblings: checked, their addresses kept for dialling.
    fn take_sibling_addrs(&mut self, peers: Vec<SiblingAddr>) -> Result<Vec<PublicKey>, String> {
        if peers.len() > engine::MAX_SIBLINGS {
            return Err(format!(
                "{} siblings, over the limit of {}",
                peers.len(),
                engine::MAX_SIBLINGS
            ));
        }
        let mut keys = Vec::with_capacity(peers.len());
        for p in peers {
            let addrs = parse_addrs(&p.addrs)?;
            self.peer_addrs.insert(p.node, addrs);
            keys.push(p.node);
        }
        Ok(keys)
    }

    fn disconnect(&mut self, peer: PublicKey) {
        if let Some(pid) = peer.peer_id() {
            let _ = self.swarm.disconnect_peer_id(pid);
        }
    }

    /// Carries out everything the engine asked for, consulting the installer (which
    /// may ask the engine for more) whenever something it decides on changed.
    fn drain(&mut self, now: u64) {
        loop {
            self.drain_engine(now);
            if !std::mem::take(&mut self.client_dirty) {
                break;
            }
            self.plan_installs(now);
        }
        self.answer_waiters();
    }

    /// Lets the installer decide, and starts its next job if it has one.
    fn plan_installs(&mut self, now: u64) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        if let Some(job) = client.plan(&mut self.engine, now) {
            let ctx = client::JobContext {
                node: self.node.clone(),
                writer: self.writer_tx.clone(),
                opts: client.options().clone(),
                hook_logs: self.opts.dir.join("hook-logs"),
            };
            self.tasks.spawn(client::run(job, ctx, self.ev_tx.clone()));
        }
    }

    fn drain_engine(&mut self, now: u64) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    let frame = match msg {
                        Control::Offer { manifest } => ControlFrame::Offer {
                            manifest: manifest.to_vec(),
                        },
                        Control::Have { update, ranges } => ControlFrame::Have { update, ranges },
                        Control::Rules { sets } => ControlFrame::Rules {
                            sets: sets
                                .iter()
                                .map(|b| serde_bytes::ByteBuf::from(b.to_vec()))
                                .collect(),
                        },
                        Control::Report { report } => ControlFrame::Report {
                            report: serde_bytes::ByteBuf::from(report.to_vec()),
                        },
                        Control::Siblings { peers } => ControlFrame::Siblings {
                            peers: peers
                                .into_iter()
                                .map(|node| SiblingAddr {
                                    node,
                                    addrs: self
                                        .peer_addrs
                                        .get(&node)
                                        .map(|a| a.iter().map(|a| a.to_string()).collect())
                                        .unwrap_or_default(),
                                })
                                .collect(),
                        },
                    };
                    if let Some(tx) = self.sessions.get(&to) {
                        let _ = tx.send(frame);
                    }
                }
                Output::Fetch {
                    id,
                    from,
                    update,
                    first,
                    count,
                    direct,
                } => {
                    let expected: Vec<(Hash, u32)> = (first..first + count)
                        .filter_map(|i| self.engine.chunk(&update, i))
                        .collect();
                    let job = FetchJob {
                        id,
                        update,
                        first,
                        direct,
                        expected,
                        base: self.delta_base(&update),
                    };
                    let sent = self
                        .fetchers
                        .get(&from)
                        .is_some_and(|tx| tx.send(job).is_ok());
                    if !sent {
                        self.engine.handle_fetch_end(id, now);
                    }
                }
                Output::StoreManifest { manifest } => {
                    tracing::info!(update = %manifest.id, module = %module_name(&manifest), "new update offered");
                    if self
                        .writer_tx
                        .try_send(WriteJob::Manifest {
                            manifest: manifest.clone(),
                        })
                        .is_err()
                    {
                        // The queue is full of chunks: wait for room off the event loop.
                        let tx = self.writer_tx.clone();
                        self.tasks.spawn(async move {
                            let _ = tx.send(WriteJob::Manifest { manifest }).await;
                        });
                    }
                }
                Output::Dial { peer } if Some(&peer) != self.engine.parent() => {
                    self.dial_sibling(peer, now);
                }
                Output::Dial { peer } => {
                    let (Ok(pid), Some(addr)) = (peer_of(&peer), self.parent_addr.clone()) else {
                        continue;
                    };
                    if self.swarm.is_connected(&pid) {
                        // Still connected (after joining, or a session that broke on
                        // its own): only the control session needs to start again.
                        self.open_parent_session(peer);
                        continue;
                    }
                    tracing::info!(addr = %addr, "dialling the parent");
                    if let Err(e) = self
                        .swarm
                        .dial(DialOpts::peer_id(pid).addresses(vec![addr]).build())
                    {
                        tracing::warn!("cannot dial the parent: {e}");
                        self.engine.handle_disconnected(peer, now);
                    }
                }
                Output::Disconnect { peer, reason } => {
                    tracing::info!(peer = %peer.node_id(), "disconnecting: {reason}");
                    self.sessions.remove(&peer);
                    self.disconnect(peer);
                }
                Output::StoreRules { issuer, rules } => self.keep_rules(&issuer, &rules),
                Output::StoreReport { child, report } => {
                    self.reports_to_keep.insert(child, report);
                }
                Output::Event(e) => self.log_event(e),
            }
        }
    }

    fn log_event(&mut self, e: Event) {
        match e {
            Event::UpdateComplete { update } => {
                self.client_dirty = true;
                tracing::info!(update = %update, "update complete")
            }
            Event::BadChunk {
                peer,
                update,
                index,
            } => tracing::warn!(
                peer = %peer.node_id(), update = %update, index,
                "chunk failed verification: discarded, will be fetched again"
            ),
            Event::Misbehaved { peer, reason } => {
                tracing::warn!(peer = %peer.node_id(), "misbehaving peer: {reason}")
            }
            Event::Refused { peer } => {
                self.refused += 1;
                tracing::warn!(peer = %peer.node_id(), "refused a peer outside this node's part of the tree")
            }
            Event::ParentLost => tracing::warn!(
                "lost the parent; serving children what this node has, retrying with backoff"
            ),
            Event::ParentConnected => {
                self.client_dirty = true;
                tracing::info!("connected to the parent")
            }
            Event::RulesRefused { peer, reason } => {
                self.rules_refused += 1;
                tracing::warn!(peer = %peer.node_id(), "rule set refused: {reason}")
            }
            Event::RulesApplied => {
                self.client_dirty = true;
                tracing::debug!("availability re-evaluated")
            }
            Event::Halted {
                update,
                group,
                reason,
            } => tracing::warn!(update = %update, group = %group, "rollout halted: {reason}"),
            Event::OfferWithheld { peer, update } => tracing::warn!(
                peer = %peer.node_id(), update = %update,
                "the parent offered an update not available to this node by its rules; kept aside"
            ),
        }
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(u, _)| self.engine.is_complete(u));
        self.waiters = waiting;
        for (u, reply) in done {
            // Complete means durable: the writer commits what it holds first.
            let writer = self.writer_tx.clone();
            self.tasks.spawn(async move {
                let stopping = || "the daemon is stopping".to_string();
                let (done, synced) = oneshot::channel();
                let answer = match writer.send(WriteJob::Sync { done }).await {
                    Err(_) => Err(stopping()),
                    Ok(()) => synced.await.unwrap_or_else(|_| Err(stopping())),
                };
                let _ = reply.send(match answer {
                    Ok(()) => Ok(serde_json::json!({ "update_id": u, "complete": true })),
                    Err(e) => Err(Refusal::internal(format!(
                        "the update is here but could not be committed: {e}"
                    ))),
                });
            });
        }
    }

    fn on_join(&mut self, peer: PublicKey, secret: [u8; 32]) -> JoinReply {
        let redeemed =
            self.node
                .store
                .redeem_token(&JoinToken::secret_hash(&secret), &peer.0, now_secs());
        match redeemed {
            Ok(Ok(record)) => {
                tracing::info!(child = %peer.node_id(), client = record.client, "a new child joined");
                self.engine.add_child(peer);
                if !record.groups.is_empty() {
                    self.resign_rules();
                }
                JoinReply::Accepted {
                    root: self.node.root_key,
                    chain: self.child_chain(&peer, &record, None),
                }
            }
            Ok(Err(refusal)) => {
                self.refused += 1;
                tracing::warn!(peer = %peer.node_id(), "join refused: {refusal}");
                JoinReply::Refused {
                    reason: refusal.to_string(),
                }
            }
            Err(e) => {
                tracing::error!("cannot redeem a join token: {e}");
                JoinReply::Refused {
                    reason: "the parent could not record the join; try again".into(),
                }
            }
        }
    }

    /// This node's chain followed by a fresh certificate for `child`, at `site`.
    fn child_chain(
        &self,
        child: &PublicKey,
        record: &ChildRecord,
        site: Option<&str>,
    ) -> Vec<Envelope> {
        let now = now_secs();
        let mut chain = match self.node.root_secret() {
            Ok(root) => vec![member::issue(
                root,
                self.node.node_key.public(),
                false,
                Vec::new(),
                None,
                now,
                now + CERT_TTL_SECS,
            )],
            Err(_) => self.chain.clone(),
        };
        chain.push(member::issue(
            &self.node.node_key,
            *child,
            record.client,
            record.groups.clone(),
            site.map(str::to_string),
            now,
            now + CERT_TTL_SECS,
        ));
        chain
    }

    /// Checks a connecting child's chain, records, site and addresses; keeps the
    /// addresses for its siblings; returns its renewed chain, certified at its site.
    fn check_child(
        &mut self,
        peer: &PublicKey,
        chain: &[Envelope],
        site: Option<&str>,
        addrs: &[String],
    ) -> Result<Vec<Envelope>, String> {
        if let Some(site) = site {
            crate::content::names::check_name("site", site).map_err(|e| e.to_string())?;
        }
        let addrs = parse_addrs(addrs)?;
        let members = verify_chain(chain, &self.node.root_key, now_secs()).map_err(|e| {
            format!("its certificate chain is refused ({e}); it may belong to another tree")
        })?;
        let last = members.last().ok_or("empty chain")?;
        if last.node != *peer {
            return Err("it presented the certificate chain of another node".into());
        }
        if last.issuer != self.node.node_key.public() {
            return Err("it is not a child of this node".into());
        }
        let record = self
            .node
            .store
            .child(&peer.0)
            .map_err(|e| e.to_string())?
            .ok_or("this node has no record of it as a child")?;
        if record.revoked {
            return Err("its membership was revoked".into());
        }
        // A child listening on every interface, or naming its loopback address while it
        // connected from elsewhere, is reachable at the address it connected from.
        let seen = self.remote_addrs.get(peer).and_then(|a| a.iter().next());
        let seen_loopback = self.remote_addrs.get(peer).is_some_and(is_loopback);
        let mut reachable: Vec<Multiaddr> = Vec::new();
        for a in addrs {
            let a = match &seen {
                Some(ip) if is_unspecified(&a) || (is_loopback(&a) && !seen_loopback) => a
                    .iter()
                    .map(|p| if is_ip(&p) { ip.clone() } else { p })
                    .collect(),
                _ => a,
            };
            if !reachable.contains(&a) {
                reachable.push(a);
            }
        }
        self.peer_addrs.insert(*peer, reachable);
        Ok(self.child_chain(peer, &record, site))
    }

    /// Dials a sibling the engine asked for, at the addresses the parent gave.
    fn dial_sibling(&mut self, peer: PublicKey, now: u64) {
        let Ok(pid) = peer_of(&peer) else { return };
        if self.swarm.is_connected(&pid) {
            if !self.sessions.contains_key(&peer) {
                self.open_sibling_session(peer);
            }
            return;
        }
        let addrs = self.peer_addrs.get(&peer).cloned().unwrap_or_default();
        if addrs.is_empty() {
            self.engine.handle_disconnected(peer, now);
            return;
        }
        if let Err(e) = self
            .swarm
            .dial(DialOpts::peer_id(pid).addresses(addrs).build())
        {
            tracing::warn!(peer = %peer.node_id(), "cannot dial a sibling: {e}");
            self.engine.handle_disconnected(peer, now);
        }
    }

    fn on_local(&mut self, req: Request, reply: oneshot::Sender<Answer>) {
        let response = match req {
            Request::Status => Ok(self.status()),
            Request::Token(t) => self.issue_token(t),
            Request::Revoke { node } => self.revoke(&node),
            Request::Group(g) => {
                let answer = self.group(g);
                if answer.is_ok() {
                    self.resign_rules();
                }
                answer
            }
            Request::Approve(a) => self.approve(a),
            Request::Decline { update, group } => self.decline(&update, &group),
            Request::Approvals => self.approvals(),
            Request::Reports => self.reports_view(),
            Request::Tree => self.tree_view(),
            Request::Updates => self.updates_view(),
            Request::Metrics => Ok(serde_json::Value::String(self.metrics())),
            Request::Installed => match &self.client {
                Some(c) => Ok(c.view()),
                None => Err(not_a_client()),
            },
            Request::Check { repair } => {
                self.installer_task(client::Task::Check { repair }, reply);
                return;
            }
            Request::Rollback { module } => {
                match module.parse::<crate::install::ModuleName>() {
                    Ok(module) => self.installer_task(client::Task::Rollback { module }, reply),
                    Err(e) => {
                        let _ = reply.send(Err(Refusal::bad(e.to_string())));
                    }
                }
                return;
            }
            Request::Wait { update } => match self.resolve(&update) {
                Ok(u) => {
                    self.waiters.push((u, reply));
                    self.answer_waiters();
                    return;
                }
                Err(e) => Err(e),
            },
            Request::Publish(req) => {
                let node = self.node.clone();
                let ev = self.ev_tx.clone();
                self.tasks.spawn_blocking(move || {
                    let result = publish::publish(
                        &node,
                        &req,
                        req.created.unwrap_or_else(now_secs),
                        &|_| {},
                    )
                    .map_err(|e| {
                        use publish::PublishError as P;
                        let kind = match e {
                            P::Conflict { .. } | P::Node(_) => RefusalKind::Conflict,
                            P::Store(_) | P::Trust(_) => RefusalKind::Internal,
                            _ => RefusalKind::BadRequest,
                        };
                        Refusal::new(kind, e.to_string())
                    });
                    let _ = ev.send(Ev::Published { result, reply });
                });
                return;
            }
        };
        let _ = reply.send(response);
    }

    /// Hands an admin's request to the installer, which answers it once it has run.
    fn installer_task(&mut self, task: client::Task, reply: oneshot::Sender<Answer>) {
        match self.client.as_mut() {
            Some(c) => {
                c.enqueue(task, reply);
                self.client_dirty = true;
            }
            None => {
                let _ = reply.send(Err(not_a_client()));
            }
        }
    }

    fn resolve(&self, update: &str) -> Result<Hash, Refusal> {
        // A whole id may name an update that has not been offered yet.
        if let Ok(id) = update.parse::<Hash>() {
            return Ok(id);
        }
        let lower = update.to_ascii_lowercase();
        let found: Vec<Hash> = self
            .engine
            .progress()
            .into_iter()
            .map(|p| p.update)
            .filter(|u| lower.len() >= 4 && u.to_hex().starts_with(&lower))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(Refusal::new(
                RefusalKind::NotFound,
                format!("no update {update:?} is known to this node yet"),
            )),
            _ => Err(Refusal::bad(format!(
                "{update:?} matches several updates; give more digits"
            ))),
        }
    }

    fn issue_token(&mut self, req: admin::TokenRequest) -> Answer {
        let admin::TokenRequest {
            mut groups,
            client,
            ttl_secs,
            addr,
            site,
        } = req;
        if let Some(site) = &site
            && let Err(e) = crate::content::names::check_name("site", site)
        {
            return Err(Refusal::bad(e.to_string()));
        }
        // Every child is in the built-in group; the others must exist.
        groups.retain(|g| g != crate::store::ALL);
        groups.sort();
        groups.dedup();
        for g in &groups {
            if let Err(e) = crate::content::names::check_name("group", g) {
                return Err(Refusal::bad(e.to_string()));
            }
            match self.node.store.has_group(g) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Refusal::new(
                        RefusalKind::NotFound,
                        format!("there is no group {g:?}; create it first (arbor group create)"),
                    ));
                }
                Err(e) => return Err(Refusal::internal(e.to_string())),
            }
        }
        if groups.len() > member::MAX_GROUPS {
            return Err(Refusal::bad(format!(
                "at most {} groups",
                member::MAX_GROUPS
            )));
        }
        if let Ok(ms) = verify_chain(&self.chain, &self.node.root_key, now_secs())
            && ms.last().is_some_and(|m| m.client)
        {
            return Err(Refusal::new(
                RefusalKind::Conflict,
                "this node joined as a client; clients have no children",
            ));
        }
        let addr = match addr {
            Some(a) => match a.parse::<Multiaddr>() {
                Ok(m) => m,
                Err(e) => {
                    return Err(Refusal::bad(format!(
                        "the address {a:?} is not a multiaddr: {e}"
                    )));
                }
            },
            None => match self.advertised_addr() {
                Some(a) => a,
                None => {
                    return Err(Refusal::bad(
                        "this node has no address to put in the token; give one (--addr)",
                    ));
                }
            },
        };
        let mut secret = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut secret) {
            return Err(Refusal::internal(format!(
                "the system random source failed: {e}"
            )));
        }
        let expires = now_secs().saturating_add(ttl_secs);
        let record = TokenRecord {
            used: false,
            client,
            groups,
            expires,
        };
        if let Err(e) = self
            .node
            .store
            .add_token(&JoinToken::secret_hash(&secret), &record)
        {
            return Err(Refusal::internal(e.to_string()));
        }
        let token = JoinToken {
            addr: addr.to_string(),
            root: root_fingerprint(&self.node.root_key),
            site,
            parent: self.node.node_key.public(),
            secret,
        };
        tracing::info!(expires, client, "issued a join token");
        Ok(serde_json::json!({
            "token": token.to_text(),
            "addr": addr.to_string(),
            "expires": expires,
        }))
    }

    /// The address a child should dial: a listening address, not the unspecified one.
    fn advertised_addr(&self) -> Option<Multiaddr> {
        let usable = |a: &&Multiaddr| !is_unspecified(a);
        let addrs: Vec<&Multiaddr> = self.listen_addrs.iter().filter(usable).collect();
        addrs
            .iter()
            .find(|a| !is_loopback(a))
            .or(addrs.first())
            .map(|a| (*a).clone())
    }

    fn revoke(&mut self, node: &str) -> Answer {
        let key = parse_node(node)?;
        match self.node.store.revoke_child(&key.0) {
            Ok(true) => {
                tracing::warn!(child = %node, "membership revoked");
                self.engine.remove_child(&key, now_ms());
                self.reports_to_keep.remove(&key);
                if let Err(e) = self.node.store.remove_report(&key.0) {
                    tracing::error!("cannot forget the revoked child's report: {e}");
                }
                self.resign_rules();
                self.sessions.remove(&key);
                self.disconnect(key);
                Ok(serde_json::json!({ "revoked": node }))
            }
            Ok(false) => Err(Refusal::new(
                RefusalKind::NotFound,
                format!("{node} is not a child of this node"),
            )),
            Err(e) => Err(Refusal::internal(e.to_string())),
        }
    }

    fn group(&mut self, req: admin::GroupRequest) -> Answer {
        use crate::store::{ALL, MemberChange};
        use admin::GroupRequest as G;
        let store = &self.node.store;
        let failed = |e: StoreError| Refusal::internal(e.to_string());
        let not_found = |m: String| Refusal::new(RefusalKind::NotFound, m);
        let built_in = |what: &str| {
            Refusal::new(
                RefusalKind::Conflict,
                format!("`{ALL}` is built in and holds every child; it cannot be {what}"),
            )
        };
        let (group, node, member) = match req {
            G::List => return self.list_groups(),
            G::Create { name } => {
                crate::content::names::check_name("group", &name)
                    .map_err(|e| Refusal::bad(e.to_string()))?;
                if name == ALL {
                    return Err(built_in("created"));
                }
                if !store.create_group(&name, now_secs()).map_err(failed)? {
                    return Err(Refusal::new(
                        RefusalKind::Conflict,
                        format!("group {name:?} already exists"),
                    ));
                }
                tracing::info!(group = %name, "group created");
                return Ok(serde_json::json!({ "created": name }));
            }
            G::Delete { name } => {
                if name == ALL {
                    return Err(built_in("deleted"));
                }
                if !store.delete_group(&name).map_err(failed)? {
                    return Err(not_found(format!("there is no group {name:?}")));
                }
                tracing::info!(group = %name, "group deleted");
                return Ok(serde_json::json!({ "deleted": name }));
            }
            G::Assign { group, node } => (group, node, true),
            G::Unassign { group, node } => (group, node, false),
        };
        if group == ALL {
            return Err(built_in("changed"));
        }
        let key = parse_node(&node)?;
        match store.set_member(&group, &key.0, member).map_err(failed)? {
            MemberChange::Changed(changed) => {
                if changed {
                    tracing::info!(group = %group, child = %node, member, "group membership changed");
                }
                Ok(serde_json::json!({
                    "group": group, "node_id": node, "member": member, "changed": changed,
                }))
            }
            MemberChange::NoSuchGroup => Err(not_found(format!("there is no group {group:?}"))),
            MemberChange::NoSuchChild => {
                Err(not_found(format!("{node} is not a child of this node")))
            }
            MemberChange::Revoked => Err(Refusal::new(
                RefusalKind::Conflict,
                format!("{node} was revoked"),
            )),
        }
    }

    /// The groups of this node's children, the built-in one first, with their members.
    fn list_groups(&self) -> Answer {
        use crate::store::ALL;
        let store = &self.node.store;
        let failed = |e: StoreError| Refusal::internal(e.to_string());
        let children = store.children().map_err(failed)?;
        let members = |g: &str| -> Vec<String> {
            children
                .iter()
                .filter(|(_, r)| !r.revoked && (g == ALL || r.groups.iter().any(|x| x == g)))
                .map(|(k, _)| PublicKey(*k).node_id())
                .collect()
        };
        let mut groups = vec![serde_json::json!({
            "name": ALL, "built_in": true, "members": members(ALL),
        })];
        for (name, record) in store.groups().map_err(failed)? {
            groups.push(serde_json::json!({
                "name": name, "built_in": false, "created": record.created,
                "members": members(&name),
            }));
        }
        Ok(serde_json::json!({ "groups": groups }))
    }

    fn status(&self) -> serde_json::Value {
        let records: HashMap<[u8; 32], ChildRecord> = self
            .node
            .store
            .children()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let children: Vec<serde_json::Value> = records
            .iter()
            .map(|(k, r)| {
                let key = PublicKey(*k);
                serde_json::json!({
                    "node_id": key.node_id(),
                    "connected": self.engine.is_connected_child(&key),
                    "client": r.client,
                    "groups": r.groups,
                    "revoked": r.revoked,
                    "site": self.engine.child_site(&key),
                    "bytes_sent": self.sent_to.get(&key).copied().unwrap_or(0),
                })
            })
            .collect();
        let siblings: Vec<serde_json::Value> = self
            .engine
            .siblings()
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "node_id": s.peer.node_id(),
                    "connected": s.connected,
                    "banned": s.banned,
                    "bytes_received": s.bytes_from,
                    "bytes_sent": self.sent_to.get(&s.peer).copied().unwrap_or(0),
                })
            })
            .collect();
        let updates: Vec<serde_json::Value> = self
            .engine
            .progress()
            .into_iter()
            .map(|p| {
                let t = self.transfers.get(&p.update);
                let name = self
                    .engine
                    .manifest(&p.update)
                    .map(module_name)
                    .unwrap_or_default();
                serde_json::json!({
                    "update_id": p.update,
                    "available": p.available,
                    "module": name,
                    "bytes": p.bytes,
                    "bytes_held": p.bytes_held,
                    "chunks": p.chunks,
                    "chunks_held": p.chunks_held,
                    "bytes_in": t.map_or(0, |t| t.bytes_in),
                    "bytes_out": t.map_or(0, |t| t.bytes_out),
                    "rate_in": t.map_or(0, |t| t.rate_in),
                    "rate_out": t.map_or(0, |t| t.rate_out),
                })
            })
            .collect();
        let parent = self.engine.parent().map(|p| {
            serde_json::json!({
                "node_id": p.node_id(),
                "addr": self.parent_addr.as_ref().map(|a| a.to_string()),
                "connected": self.engine.parent_connected() == Some(true),
                "bytes_received": self.engine.stats().bytes_from_parent,
            })
        });
        let stats = self.engine.stats();
        let me = self.node.node_key.public();
        let rules: Vec<serde_json::Value> = self
            .engine
            .path()
            .iter()
            .filter_map(|n| self.engine.rules().get(n))
            .map(|r| {
                serde_json::json!({
                    "issuer": r.issuer().node_id(),
                    "own": r.issuer() == me,
                    "version": r.version,
                    "issued": r.rules.issued,
                    "expires": r.expires,
                    "approvals": r.rules.approvals.len(),
                })
            })
            .collect();
        serde_json::json!({
            "node_id": self.node.node_id(),
            "root": self.node.is_root(),
            "listen": self.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "admin": self.admin_url,
            "parent": parent,
            "site": self.opts.site,
            "siblings": siblings,
            "children": children,
            "redirects": stats.redirects,
            "updates": updates,
            "bad_chunks": stats.bad_chunks,
            "fetch_timeouts": stats.fetch_timeouts,
            "refused": self.refused,
            "rules": rules,
            "halted": self.halted_approvals(),
            "rules_refused": self.rules_refused,
            "installed": self.client.as_ref().map(|c| c.view()),
        })
    }
}

/// Reads the addresses a peer gave for itself (or another): bounded in number and
/// length, each a multiaddr.
fn parse_addrs(addrs: &[String]) -> Result<Vec<Multiaddr>, String> {
    if addrs.len() > proto::MAX_ADDRS {
        return Err(format!(
            "{} addresses, over the limit of {}",
            addrs.len(),
            proto::MAX_ADDRS
        ));
    }
    addrs
        .iter()
        .map(|a| {
            if a.len() > proto::MAX_ADDR_LEN {
                return Err(format!(
                    "an address of {} bytes, over the limit of {}",
                    a.len(),
                    proto::MAX_ADDR_LEN
                ));
            }
            a.parse::<Multiaddr>()
                .map_err(|e| format!("{a:?} is not a multiaddr: {e}"))
        })
        .collect()
}

fn is_ip(p: &libp2p::multiaddr::Protocol) -> bool {
    matches!(
        p,
        libp2p::multiaddr::Protocol::Ip4(_) | libp2p::multiaddr::Protocol::Ip6(_)
    )
}

/// Whether an address is a loopback one (127.0.0.0/8 or ::1).
fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| {
        matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_loopback())
            || matches!(p, libp2p::multiaddr::Protocol::Ip6(ip) if ip.is_loopback())
    })
}

/// Whether an address is on every interface (0.0.0.0 or ::).
fn is_unspecified(a: &Multiaddr) -> bool {
    a.iter().any(|p| {
        matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified())
            || matches!(p, libp2p::multiaddr::Protocol::Ip6(ip) if ip.is_unspecified())
    })
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
    }
}
