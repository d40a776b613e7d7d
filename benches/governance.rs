//! Governance benchmark ("rules down, reports up"): how fast a rule change at the root
//! reaches every node, and how fast a leaf's report reaches the root's roll-up, on a
//! tree of in-process nodes over libp2p on loopback.
//!
//! Run it with `cargo bench --bench governance`. It starts a root, 7 branches under it
//! and 7 leaf clients under each branch (57 nodes, 3 levels), all in this process on
//! one multi-thread tokio runtime, each with its own node directory in a temp dir, its
//! libp2p listener on `/ip4/127.0.0.1/tcp/0`; it asks the nodes through their in-process
//! handles (no admin API).
//! Environment:
//!
//! - `ARBOR_BENCH_BRANCHES`, `ARBOR_BENCH_LEAVES`: the tree's shape (default 7 and 7);
//! - `ARBOR_BENCH_ROUNDS`: measured rounds of each measurement (default 21);
//! - `ARBOR_BENCH_OBSERVE`: how rule arrival is observed, `log` (default) or `poll`;
//! - `ARBOR_BENCH_REPORT_DELAY_MS`, `ARBOR_BENCH_REPORT_INTERVAL_MS`,
//!   `ARBOR_BENCH_REPORT_RATE`: the engine's `report_delay`, `report_interval` (ms) and
//!   `report_rate` (bytes/s) on every node (default: the engine's own, 100 ms, 1 s
//!   and 64 KiB/s), to see how much of the report latency each is;
//! - `TMPDIR`: where the node directories go (`TMPDIR=/dev/shm` takes the disk's fsyncs
//!   out of the figures); all of it is removed at the end, also when a step fails;
//! - `RUST_LOG`: the nodes' log lines on stderr (default `warn`).
//!
//! Setup: the root publishes a 256 KiB update A and approves it for `all` with
//! `subtree`, and likewise a second one, B; every node waits (`Request::Wait`) until it
//! holds both. For measurement 2 the root also publishes one small update per round,
//! C1..Cn, approved for `all` *without* `subtree`: available to the branches only, which
//! take up their manifests but fetch nothing, since none of their children may have
//! them. Each branch puts each of its leaves alone in a group `solo-N`.
//!
//! 1. Rule propagation. Each round the root changes its rules: it declines B for `all`,
//!    or approves it again (alternately), which signs a new version of its rule set.
//!    Timed from just before the call to the moment the last node has applied the new
//!    version. With `log` (the default) that moment is observed without asking the
//!    nodes anything: each node's event loop runs inside a tracing span naming the node,
//!    and a tracing layer here records the instant of each node's "rules received and
//!    kept" event (logged by the daemon once the engine applied the rule set and the
//!    store kept it, before it is forwarded to the children), with the root as issuer.
//!    Each node's `Request::Status` is then checked (untimed) to hold exactly the root's
//!    new version. With `poll`, every node's `Request::Status` is polled every 3 ms, all
//!    nodes concurrently, until its `rules` entry from the root has the new version.
//! 2. Report latency. Each round one leaf (rotating over branches and leaves) gains an
//!    update that no other node's state changes for except its branch's: the branch
//!    approves Cn for the leaf's `solo` group, so the leaf (and the branch, to serve it)
//!    fetch it, and the leaf's state for it goes available → downloading → downloaded.
//!    Timed from the moment the leaf's engine holds all of Cn (its "update complete"
//!    event, observed as above: from then on its report says "downloaded"; should that
//!    log line change, the leaf's `Wait` answer stands in and the table says so) to the
//!    moment the root's `Request::Tree`, polled every 2 ms, shows that leaf's state for
//!    Cn as "downloaded". Also shown: the same from the leaf's `Request::Wait` answer
//!    (which comes after the leaf's store has committed, a little later), and the time
//!    from the branch's approval to the leaf's completion.
//!    The branch's own state changes in the same round (it takes up and fetches Cn to
//!    serve it), so it has just sent a report of its own when the leaf's arrives: the
//!    case of a rollout reaching one leaf, where the branch's report spacing counts.
//!
//! Between rounds the bench pauses for `report_delay + report_interval + 100 ms` (1.2 s
//! by default): not as synchronisation (every round ends on an observed state), but so
//! that every node's report clock is clear (a node reports at least `report_delay` after
//! a change, progress at most once per `report_interval`, and less often for big
//! reports) when
//! the next round starts, and the rounds are alike. Measurement 2 also rotates over the
//! branches, so a branch's last report is several rounds old.
//!
//! Printed: median, p90 and max of each, in ms, against the targets (rules < 500 ms,
//! reports < 1 s), with the machine's core count, the tree's shape, the rounds, and the
//! cost of one rules commit of the store on the temp dir (each hop keeps a rule set
//! before it forwards it). The exit code is 0 whatever the verdicts, and non-zero only
//! on an error; every wait is bounded by 60 s.

#[path = "../tests/common/mod.rs"]
mod common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use arbor::content::Hash;
use arbor::net::command::{ApproveRequest, GroupRequest, Request, TokenRequest};
use arbor::net::{self, Handle, Options};
use arbor::node::Node;
use arbor::publish::PublishRequest;
use arbor::trust::member::JoinToken;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Bound on every wait: past it the bench fails.
const WAIT: Duration = Duration::from_secs(60);
/// Polling interval for rule versions in `poll` mode.
const POLL_RULES: Duration = Duration::from_millis(3);
/// Polling interval for the root's roll-up.
const POLL_TREE: Duration = Duration::from_millis(2);
/// Added to `report_delay + report_interval` for the pause between rounds, so that
/// each starts from a quiet tree (see the module docs).
const ROUND_MARGIN: Duration = Duration::from_millis(100);

const RULES_TARGET_MS: f64 = 500.0;
const REPORT_TARGET_MS: f64 = 1000.0;

/// Span target and name of each node's event loop, and the tracing targets watched.
const SPAN_TARGET: &str = "arbor_bench";
const SPAN_NAME: &str = "arbor_node";
/// What the daemon logs once it kept (and applied) a rule set from an ancestor.
const RULES_KEPT: &str = "rules received and kept";
/// What the daemon logs once an update is complete on a node.
const UPDATE_COMPLETE: &str = "update complete";

fn main() -> Result<()> {
    let cfg = Config::from_env()?;
    let events = install_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let work = tempfile::Builder::new()
        .prefix("arbor-bench-governance-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let result = runtime.block_on(run(&cfg, work.path(), events));
    // Every node task ends with the runtime, before its directory is removed.
    runtime.shutdown_timeout(Duration::from_secs(10));
    let removed = work.close().context("cannot remove the temp dir");
    result.and(removed)
}

/// What the environment asks for.
struct Config {
    branches: usize,
    leaves: usize,
    rounds: usize,
    poll: bool,
    /// What every node's engine runs with.
    engine: arbor::engine::Config,
}

impl Config {
    fn from_env() -> Result<Config> {
        let observe = std::env::var("ARBOR_BENCH_OBSERVE").unwrap_or_else(|_| "log".into());
        let poll = match observe.trim() {
            "log" => false,
            "poll" => true,
            other => bail!("ARBOR_BENCH_OBSERVE must be log or poll, not {other:?}"),
        };
        let mut engine = arbor::engine::Config::default();
        engine.report_delay = whole("ARBOR_BENCH_REPORT_DELAY_MS", engine.report_delay)?;
        engine.report_interval = whole("ARBOR_BENCH_REPORT_INTERVAL_MS", engine.report_interval)?;
        engine.report_rate = whole("ARBOR_BENCH_REPORT_RATE", engine.report_rate)?.max(1);
        Ok(Config {
            branches: positive("ARBOR_BENCH_BRANCHES", 7)?,
            leaves: positive("ARBOR_BENCH_LEAVES", 7)?,
            rounds: positive("ARBOR_BENCH_ROUNDS", 21)?,
            poll,
            engine,
        })
    }

    /// The pause between rounds.
    fn round_gap(&self) -> Duration {
        Duration::from_millis(self.engine.report_delay + self.engine.report_interval) + ROUND_MARGIN
    }
}

fn whole(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name} must be a whole number, not {v:?}")),
        Err(_) => Ok(default),
    }
}

fn positive(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("{name} must be a positive whole number, not {v:?}")),
        Err(_) => Ok(default),
    }
}

/// One running in-process node.
struct BenchNode {
    /// 0 for the root, then the branches, then the leaves.
    idx: usize,
    id: String,
    handle: Handle,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), net::NetError>>,
}

impl BenchNode {
    async fn call(&self, req: Request) -> Result<serde_json::Value> {
        call(&self.handle, req).await
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(WAIT, self.task)
            .await
            .map_err(|_| anyhow!("node {} did not stop within {WAIT:?}", self.idx))?
            .context("a node task failed")?
            .with_context(|| format!("node {} stopped with an error", self.idx))
    }
}

/// One request to a node, bounded by [`WAIT`]; its answer as the admin API's JSON.
async fn call(handle: &Handle, req: Request) -> Result<serde_json::Value> {
    let what = format!("{req:?}");
    let what = what
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("request")
        .to_string();
    tokio::time::timeout(WAIT, handle.call(req))
        .await
        .map_err(|_| anyhow!("{what} not answered within {WAIT:?}"))?
        .map_err(|e| anyhow!("{what} refused: {e}"))
        .and_then(|a| Ok(serde_json::to_value(a)?))
}

/// The tree: its nodes and who is below whom.
struct Tree {
    root: BenchNode,
    branches: Vec<BenchNode>,
    /// `leaves[b]`: the leaves under branch `b`.
    leaves: Vec<Vec<BenchNode>>,
}

impl Tree {
    fn all(&self) -> impl Iterator<Item = &BenchNode> {
        std::iter::once(&self.root)
            .chain(&self.branches)
            .chain(self.leaves.iter().flatten())
    }

    fn count(&self) -> usize {
        1 + self.branches.len() + self.leaves.iter().map(Vec::len).sum::<usize>()
    }

    /// Whether node `idx` is a branch.
    fn is_branch(&self, idx: usize) -> bool {
        (1..=self.branches.len()).contains(&idx)
    }

    async fn stop(self) -> Result<()> {
        let mut result = Ok(());
        for node in self.leaves.into_iter().flatten().chain(self.branches) {
            result = result.and(node.stop().await);
        }
        result.and(self.root.stop().await)
    }
}

async fn start_node(idx: usize, dir: &Path, cfg: &Config) -> Result<BenchNode> {
    let mut opts = Options::new(dir, vec!["/ip4/127.0.0.1/tcp/0".parse()?]);
    opts.engine = cfg.engine.clone();
    let daemon = tokio::time::timeout(WAIT, net::start(opts))
        .await
        .map_err(|_| anyhow!("node {idx} did not start within {WAIT:?}"))?
        .with_context(|| format!("node {idx} did not start"))?;
    let handle = daemon.handle();
    let id = daemon.node_id();
    let (stop, mut stopped) = watch::channel(false);
    let span = tracing::info_span!(target: SPAN_TARGET, SPAN_NAME, node = idx as u64);
    let task = tokio::spawn(
        daemon
            .run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .instrument(span),
    );
    Ok(BenchNode {
        idx,
        id,
        handle,
        stop,
        task,
    })
}

/// Joins a new node under `parent` and starts it.
async fn start_child(
    parent: &BenchNode,
    idx: usize,
    dir: &Path,
    client: bool,
    cfg: &Config,
) -> Result<BenchNode> {
    let token = parent
        .call(Request::Token(TokenRequest {
            groups: vec![],
            client,
            ttl_secs: 600,
            addr: None,
            site: None,
        }))
        .await?;
    let token = token["token"].as_str().context("no token in the answer")?;
    let token = JoinToken::parse(token).map_err(|e| anyhow!("a bad join token: {e}"))?;
    Node::init_join(dir, &token).with_context(|| format!("cannot init node {idx}"))?;
    start_node(idx, dir, cfg).await
}

async fn build_tree(base: &Path, cfg: &Config) -> Result<Tree> {
    Node::init_root(&base.join("root")).context("cannot init the root")?;
    let root = start_node(0, &base.join("root"), cfg).await?;
    let mut branches = Vec::new();
    for b in 0..cfg.branches {
        let dir = base.join(format!("branch{b}"));
        branches.push(start_child(&root, 1 + b, &dir, false, cfg).await?);
    }
    // One join at a time, as an operator would: joins through one parent at once can
    // fail ("connection is closed") on a loaded machine.
    let mut leaves = Vec::new();
    for (b, branch) in branches.iter().enumerate() {
        let mut under = Vec::new();
        for l in 0..cfg.leaves {
            let idx = 1 + cfg.branches + b * cfg.leaves + l;
            let dir = base.join(format!("leaf{b}-{l}"));
            under.push(start_child(branch, idx, &dir, true, cfg).await?);
        }
        leaves.push(under);
    }
    Ok(Tree {
        root,
        branches,
        leaves,
    })
}

/// Writes `len` pseudo-random bytes to `dir/payload` and publishes it on the root.
async fn publish(root: &BenchNode, dir: &Path, len: usize, seed: u64, id: &str) -> Result<Hash> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("payload"), common::noise(len, seed))
        .context("cannot write an input")?;
    let v = root
        .call(Request::Publish(PublishRequest {
            tenant: "bench".into(),
            category: "governance".into(),
            id: id.into(),
            version: "1.0".into(),
            description: None,
            path: dir.to_path_buf(),
            follow_symlinks: false,
            post_install: None,
            created: None,
        }))
        .await?;
    serde_json::from_value(v["update_id"].clone()).context("no update id in the answer")
}

fn approve(update: &Hash, group: &str, subtree: bool) -> Request {
    Request::Approve(ApproveRequest {
        update: update.to_hex(),
        group: group.into(),
        wave: None,
        deadline: None,
        subtree,
        halt_failures: None,
        halt_fraction: None,
    })
}

/// The version of the rule set from `issuer` that a `Request::Status` answer shows.
fn rules_version(status: &serde_json::Value, issuer: &str) -> Option<u64> {
    status["rules"]
        .as_array()?
        .iter()
        .find(|r| r["issuer"] == issuer)?["version"]
        .as_u64()
}

/// The root's own rules version, from its status.
async fn root_version(root: &BenchNode) -> Result<u64> {
    let s = root.call(Request::Status).await?;
    s["rules"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["own"] == true))
        .and_then(|r| r["version"].as_u64())
        .context("the root shows no own rules version")
}

/// Polls `node`'s status until it holds `version` of `issuer`'s rules; answers when.
async fn until_version(
    node: &BenchNode,
    issuer: &str,
    version: u64,
    every: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = node.call(Request::Status).await?;
        if rules_version(&s, issuer).is_some_and(|v| v >= version) {
            return Ok(Instant::now());
        }
        ensure!(
            Instant::now() < deadline,
            "node {} did not get rules version {version} within {WAIT:?}: it holds {:?}",
            node.idx,
            rules_version(&s, issuer)
        );
        tokio::time::sleep(every).await;
    }
}

/// Polls `node`'s status until every update of `updates` is listed (taken up).
async fn until_listed(node: &BenchNode, updates: &[Hash]) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = node.call(Request::Status).await?;
        let listed = |u: &Hash| {
            s["updates"]
                .as_array()
                .is_some_and(|us| us.iter().any(|x| x["update_id"] == u.to_hex()))
        };
        if updates.iter().all(listed) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "node {} did not take up the updates within {WAIT:?}",
            node.idx
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state of `update` on node `id` in a `Request::Tree` answer's subtree.
fn tree_state<'a>(tree: &'a serde_json::Value, id: &str, update: &str) -> Option<&'a str> {
    if tree["node_id"] == id {
        return tree["updates"]
            .as_array()?
            .iter()
            .find(|u| u["update_id"] == update)?["state"]
            .as_str();
    }
    tree["children"]
        .as_array()?
        .iter()
        .find_map(|c| tree_state(c, id, update))
}

// ---- Observing the nodes' events -------------------------------------------------

/// Something a node logged, with when and which node.
#[derive(Debug)]
struct Seen {
    at: Instant,
    node: usize,
    what: What,
}

#[derive(Debug)]
enum What {
    RulesKept { issuer: String },
    Complete { update: String },
}

/// A tracing layer that passes on the two events the bench times, each with the
/// instant it was logged and the node whose event loop logged it.
struct Recorder {
    tx: mpsc::UnboundedSender<Seen>,
}

/// The node index of a node's span, kept in the span's extensions.
struct NodeIdx(usize);

#[derive(Default)]
struct Fields {
    message: Option<String>,
    issuer: Option<String>,
    update: Option<String>,
    node: Option<u64>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = || Some(format!("{value:?}"));
        match field.name() {
            "message" => self.message = text(),
            "issuer" => self.issuer = text(),
            "update" => self.update = text(),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "node" {
            self.node = Some(value);
        }
    }
}

impl<S> Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: LayerContext<'_, S>,
    ) {
        if attrs.metadata().name() != SPAN_NAME {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(node), Some(span)) = (fields.node, ctx.span(id)) {
            span.extensions_mut().insert(NodeIdx(node as usize));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let at = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let what = match (fields.message.as_deref(), fields.issuer, fields.update) {
            (Some(RULES_KEPT), Some(issuer), _) => What::RulesKept { issuer },
            (Some(UPDATE_COMPLETE), _, Some(update)) => What::Complete { update },
            _ => return,
        };
        let node = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|s| s.extensions().get::<NodeIdx>().map(|n| n.0))
        });
        if let Some(node) = node {
            let _ = self.tx.send(Seen { at, node, what });
        }
    }
}

/// Logs `RUST_LOG` (default `warn`) to stderr, and passes the timed events on.
fn install_tracing() -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let watched = tracing_subscriber::filter::Targets::new()
        .with_target(SPAN_TARGET, tracing::Level::INFO)
        .with_target("arbor::net", tracing::Level::INFO);
    let log = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(log),
        )
        .with(Recorder { tx }.with_filter(watched))
        .init();
    rx
}

/// Drops the events seen so far.
fn drain(events: &mut mpsc::UnboundedReceiver<Seen>) {
    while events.try_recv().is_ok() {}
}

/// Waits for the first event `pick` accepts; answers its node and instant.
async fn next_seen(
    events: &mut mpsc::UnboundedReceiver<Seen>,
    deadline: tokio::time::Instant,
    what: &str,
    mut pick: impl FnMut(&Seen) -> bool,
) -> Result<Seen> {
    loop {
        let seen = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "{what} not seen within {WAIT:?}: if the daemon's log line changed, run \
                     with ARBOR_BENCH_OBSERVE=poll"
                )
            })?
            .context("the event channel closed")?;
        if pick(&seen) {
            return Ok(seen);
        }
    }
}

// ---- The measurements -------------------------------------------------------------

/// One round of measurement 1.
struct RulesRound {
    /// Call to the last node.
    all: Duration,
    /// Call to the last branch.
    branches: Duration,
}

/// One round of measurement 2.
struct ReportRound {
    /// The leaf's engine holds the update → the root's tree shows it downloaded.
    from_complete: Duration,
    /// The leaf's `Wait` answered → the root's tree shows it.
    from_wait: Duration,
    /// The branch's approval call → the leaf's engine holds it.
    to_leaf: Duration,
    /// The leaf's "update complete" event was seen (else its Wait answer stood in).
    observed: bool,
}

async fn measure_rules(
    tree: &Tree,
    b: &Hash,
    cfg: &Config,
    events: &mut mpsc::UnboundedReceiver<Seen>,
) -> Result<Vec<RulesRound>> {
    let root_id = tree.root.id.clone();
    let mut rounds = Vec::new();
    for round in 0..cfg.rounds {
        tokio::time::sleep(cfg.round_gap()).await;
        drain(events);
        // B is approved at the start: decline it on even rounds, approve it on odd ones.
        let req = if round % 2 == 0 {
            Request::Decline {
                update: b.to_hex(),
                group: "all".into(),
            }
        } else {
            approve(b, "all", true)
        };
        let t0 = Instant::now();
        let answer = tree.root.call(req).await?;
        let at_root = Instant::now();
        let version = match answer["rules_version"].as_u64() {
            Some(v) => v,
            None => root_version(&tree.root).await?,
        };
        let mut arrived: BTreeMap<usize, Instant> = BTreeMap::from([(0, at_root)]);
        if cfg.poll {
            let root_id = root_id.as_str();
            let polls = tree.all().skip(1).map(|n| async move {
                Ok::<_, anyhow::Error>((
                    n.idx,
                    until_version(n, root_id, version, POLL_RULES).await?,
                ))
            });
            arrived.extend(futures::future::try_join_all(polls).await?);
        } else {
            let deadline = tokio::time::Instant::now() + WAIT;
            while arrived.len() < tree.count() {
                let seen = next_seen(events, deadline, "every node's rules", |s| {
                    s.at >= t0
                        && matches!(&s.what, What::RulesKept { issuer } if *issuer == root_id)
                })
                .await?;
                arrived.entry(seen.node).or_insert(seen.at);
            }
            // Untimed: every node shows exactly that version.
            let checks = tree.all().map(|n| async {
                let s = n.call(Request::Status).await?;
                let held = rules_version(&s, &root_id);
                ensure!(
                    held == Some(version),
                    "node {} logged the root's rules but holds version {held:?}, not {version}",
                    n.idx
                );
                Ok(())
            });
            futures::future::try_join_all(checks).await?;
        }
        let last = |pick: &dyn Fn(usize) -> bool| {
            arrived
                .iter()
                .filter(|(i, _)| pick(**i))
                .map(|(_, t)| t.duration_since(t0))
                .max()
                .unwrap_or_default()
        };
        rounds.push(RulesRound {
            all: last(&|_| true),
            branches: last(&|i| tree.is_branch(i)),
        });
    }
    Ok(rounds)
}

async fn measure_reports(
    tree: &Tree,
    updates: &[Hash],
    gap: Duration,
    events: &mut mpsc::UnboundedReceiver<Seen>,
) -> Result<Vec<ReportRound>> {
    let mut rounds = Vec::new();
    let per_branch = tree.leaves[0].len();
    for (round, update) in updates.iter().enumerate() {
        tokio::time::sleep(gap).await;
        drain(events);
        let b = round % tree.branches.len();
        let l = (round / tree.branches.len()) % per_branch;
        let (branch, leaf) = (&tree.branches[b], &tree.leaves[b][l]);
        let hex = update.to_hex();
        let waiting = {
            let (handle, hex) = (leaf.handle.clone(), hex.clone());
            tokio::spawn(async move {
                let answer = call(&handle, Request::Wait { update: hex }).await;
                (Instant::now(), answer)
            })
        };
        let t0 = Instant::now();
        branch.call(approve(update, &solo(l), false)).await?;
        // The root's roll-up, polled until it shows the leaf's update downloaded.
        let deadline = Instant::now() + WAIT;
        let at_root = loop {
            let v = tree.root.call(Request::Tree).await?;
            if tree_state(&v["tree"], &leaf.id, &hex) == Some("downloaded") {
                break Instant::now();
            }
            ensure!(
                Instant::now() < deadline,
                "the root's tree did not show leaf {} with the update within {WAIT:?}",
                leaf.idx
            );
            tokio::time::sleep(POLL_TREE).await;
        };
        let (at_wait, answer) = waiting.await.context("the wait task failed")?;
        ensure!(
            answer?["complete"] == true,
            "leaf {} did not complete the update",
            leaf.idx
        );
        // The leaf logs "update complete" before its Wait is answered (that waits for a
        // store commit), so the event is here by now. Without it (the log line changed),
        // the Wait answer stands in, and the table says so.
        let mut complete = None;
        while let Ok(s) = events.try_recv() {
            if s.node == leaf.idx && matches!(&s.what, What::Complete { update } if *update == hex)
            {
                complete = Some(s.at);
                break;
            }
        }
        let at_complete = complete.unwrap_or(at_wait);
        rounds.push(ReportRound {
            from_complete: at_root.saturating_duration_since(at_complete),
            from_wait: at_root.saturating_duration_since(at_wait),
            to_leaf: at_complete.saturating_duration_since(t0),
            observed: complete.is_some(),
        });
    }
    Ok(rounds)
}

fn solo(leaf: usize) -> String {
    format!("solo-{leaf}")
}

/// Everything after the temp dir and the tracing are set up.
async fn run(cfg: &Config, base: &Path, mut events: mpsc::UnboundedReceiver<Seen>) -> Result<()> {
    let started = Instant::now();
    let load_at_start = load_average();
    let commit = rules_commit_cost(&base.join("probe"))?;

    let tree = build_tree(base, cfg).await?;
    let nodes = tree.count();
    eprintln!(
        "started {nodes} nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let inputs = base.join("inputs");
    let a = publish(&tree.root, &inputs.join("a"), 256 << 10, 1, "base").await?;
    let b = publish(&tree.root, &inputs.join("b"), 256 << 10, 2, "toggled").await?;
    tree.root.call(approve(&a, "all", true)).await?;
    tree.root.call(approve(&b, "all", true)).await?;
    let mut per_leaf = Vec::new();
    for r in 0..cfg.rounds {
        let dir = inputs.join(format!("c{r}"));
        per_leaf.push(
            publish(
                &tree.root,
                &dir,
                64 << 10,
                100 + r as u64,
                &format!("solo{r}"),
            )
            .await?,
        );
    }
    for c in &per_leaf {
        tree.root.call(approve(c, "all", false)).await?;
    }
    for (branch, leaves) in tree.branches.iter().zip(&tree.leaves) {
        for (l, leaf) in leaves.iter().enumerate() {
            branch
                .call(Request::Group(GroupRequest::Create { name: solo(l) }))
                .await?;
            branch
                .call(Request::Group(GroupRequest::Assign {
                    group: solo(l),
                    node: leaf.id.clone(),
                }))
                .await?;
        }
    }
    // Every node holds A and B and the root's newest rules; every branch took up C1..Cn.
    let version = root_version(&tree.root).await?;
    let holding = tree.all().skip(1).map(|n| async {
        for u in [&a, &b] {
            n.call(Request::Wait { update: u.to_hex() }).await?;
        }
        until_version(n, &tree.root.id, version, Duration::from_millis(20)).await?;
        if tree.is_branch(n.idx) {
            until_listed(n, &per_leaf).await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    futures::future::try_join_all(holding).await?;
    let setup = started.elapsed();
    eprintln!("setup done in {:.1} s", setup.as_secs_f64());

    let t = Instant::now();
    let rules = measure_rules(&tree, &b, cfg, &mut events).await?;
    let rules_time = t.elapsed();
    eprintln!(
        "rule propagation: {} rounds in {:.1} s",
        rules.len(),
        rules_time.as_secs_f64()
    );
    let t = Instant::now();
    let reports = measure_reports(&tree, &per_leaf, cfg.round_gap(), &mut events).await?;
    let reports_time = t.elapsed();
    eprintln!(
        "report latency: {} rounds in {:.1} s",
        reports.len(),
        reports_time.as_secs_f64()
    );
    tree.stop().await?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("arbor governance benchmark: rules down, reports up");
    println!(
        "machine: {cores} cores (tokio worker threads: {cores}), load average {load_at_start} at \
         the start, {} at the end",
        load_average()
    );
    println!(
        "tree: 1 root -> {} branches -> {} leaves each = {nodes} nodes, 3 levels, in process on \
         127.0.0.1",
        cfg.branches, cfg.leaves
    );
    println!(
        "rounds: {} per measurement, {} ms apart; rule arrival observed by {}",
        cfg.rounds,
        cfg.round_gap().as_millis(),
        if cfg.poll {
            "polling every node's status every 3 ms"
        } else {
            "the nodes' log events (no polling)"
        },
    );
    println!(
        "engine: report_delay {} ms, report_interval {} ms, report_rate {} B/s",
        cfg.engine.report_delay, cfg.engine.report_interval, cfg.engine.report_rate
    );
    println!(
        "node dirs on {}; one rules commit of the store there: median {:.1} ms, max {:.1} ms",
        base.display(),
        ms(median(&commit)),
        ms(max(&commit))
    );
    println!();
    println!(
        "{:<52} {:>8} {:>8} {:>8} {:>9}  verdict",
        "ms", "median", "p90", "max", "target"
    );
    let row = |name: &str, v: &[Duration], target: Option<f64>| {
        let verdict = match target {
            Some(t) if ms(median(v)) < t => "met (median)",
            Some(_) => "MISSED (median)",
            None => "",
        };
        println!(
            "{name:<52} {:>8.1} {:>8.1} {:>8.1} {:>9}  {verdict}",
            ms(median(v)),
            ms(p90(v)),
            ms(max(v)),
            target.map_or_else(String::new, |t| format!("< {t:.0}")),
        );
    };
    let all: Vec<Duration> = rules.iter().map(|r| r.all).collect();
    let branches: Vec<Duration> = rules.iter().map(|r| r.branches).collect();
    row(
        "1. rule change at root -> applied at every node",
        &all,
        Some(RULES_TARGET_MS),
    );
    row("   (-> applied at every branch)", &branches, None);
    let from_complete: Vec<Duration> = reports.iter().map(|r| r.from_complete).collect();
    let from_wait: Vec<Duration> = reports.iter().map(|r| r.from_wait).collect();
    let to_leaf: Vec<Duration> = reports.iter().map(|r| r.to_leaf).collect();
    row(
        "2. leaf has update -> root's roll-up shows it",
        &from_complete,
        Some(REPORT_TARGET_MS),
    );
    row("   (from the leaf's Wait answer)", &from_wait, None);
    row("   (branch approves -> leaf has it)", &to_leaf, None);
    let unobserved = reports.iter().filter(|r| !r.observed).count();
    if unobserved > 0 {
        println!(
            "note: in {unobserved} of {} rounds the leaf's \"{UPDATE_COMPLETE}\" log event was \
             not seen; those are timed from its Wait answer",
            reports.len()
        );
    }
    println!();
    println!(
        "rules target (< {RULES_TARGET_MS:.0} ms): {}; report target (< {REPORT_TARGET_MS:.0} \
         ms): {}",
        verdict(ms(median(&all)) < RULES_TARGET_MS),
        verdict(ms(median(&from_complete)) < REPORT_TARGET_MS)
    );
    println!(
        "wall time: {:.1} s (setup {:.1} s, rules {:.1} s, reports {:.1} s)",
        started.elapsed().as_secs_f64(),
        setup.as_secs_f64(),
        rules_time.as_secs_f64(),
        reports_time.as_secs_f64()
    );
    Ok(())
}

/// What one hop pays before it forwards a rule set: a store commit of it. Timed on a
/// scratch store in the temp dir, 21 times.
fn rules_commit_cost(dir: &Path) -> Result<Vec<Duration>> {
    std::fs::create_dir_all(dir)?;
    let store = arbor::store::Store::create(dir).context("cannot create a scratch store")?;
    let bytes = common::noise(2048, 7);
    let mut times = Vec::new();
    for i in 0..21u8 {
        let t = Instant::now();
        store
            .put_rules(&[i; 32], &bytes)
            .context("cannot commit to the scratch store")?;
        times.push(t.elapsed());
    }
    Ok(times)
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut s = v.to_vec();
    s.sort();
    s
}

fn median(v: &[Duration]) -> Duration {
    let s = sorted(v);
    match s.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2,
    }
}

/// Nearest-rank 90th percentile.
fn p90(v: &[Duration]) -> Duration {
    let s = sorted(v);
    if s.is_empty() {
        return Duration::ZERO;
    }
    s[(s.len() * 9).div_ceil(10) - 1]
}

fn max(v: &[Duration]) -> Duration {
    v.iter().copied().max().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
