//! An adversary against real daemons (`arbor run` processes on loopback): a test peer
//! built on the library (`net::probe::Peer`) plays a stranger, a malicious child, a
//! malicious sibling and a malicious parent, and each test checks, within generous bounds, what the attacked
//! node holds (memory), spends (CPU), writes (its log) and still does (serve a
//! legitimate child). The figures go to stderr as `figure: ...` lines, which
//! `benches/adversary.sh` prints.

mod common;

use arbor::content::Hash;
use arbor::net::probe::Peer;
use arbor::net::proto::{self, ChunkRequest, ControlFrame};
use arbor::node::Node;
use arbor::rules::{ALL, Approval, FULL_WAVE, Rules, SignedRules};
use arbor::trust::{PublicKey, SecretKey, member};
use common::{HANG, Process, arbor_json, arbor_ok, noise, publish_args, update_id};
use futures::StreamExt;
use futures::io::AsyncWriteExt;
use libp2p::Multiaddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One running node.
struct Daemon {
    dir: String,
    process: Process,
    key: PublicKey,
    addr: Multiaddr,
}

impl Daemon {
    fn start(dir: &str) -> Daemon {
        let process = Process::start(dir, &[], &[]);
        let s = arbor_json(&["status", "--data", dir]);
        let key: PublicKey = s["node_id"]
            .as_str()
            .and_then(|id| id.parse::<libp2p::PeerId>().ok())
            .and_then(|p| PublicKey::from_peer_id(&p))
            .expect("a node id");
        let addr = s["listen"][0]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("a listening address");
        Daemon {
            dir: dir.to_string(),
            process,
            key,
            addr,
        }
    }

    fn status(&self) -> serde_json::Value {
        arbor_json(&["status", "--data", &self.dir])
    }
}

fn root(base: &Path) -> Daemon {
    let dir = base.join("root");
    let dir = dir.to_str().expect("utf-8");
    arbor_ok(&["init", "--data", dir, "--root"]);
    Daemon::start(dir)
}

/// Makes `name` a child of `parent` (its join completes when it first runs).
fn init_child(parent: &Daemon, base: &Path, name: &str) -> String {
    let token = arbor_ok(&["token", "--data", &parent.dir]);
    let dir = base.join(name);
    let dir = dir.to_str().expect("utf-8").to_string();
    arbor_ok(&["init", "--data", &dir, "--join", token.trim()]);
    dir
}

/// Publishes `mib` MiB on the root, approved for the whole tree; returns its id.
fn publish(root: &Daemon, base: &Path, mib: usize, seed: u64) -> String {
    let input = base.join(format!("input-{seed}"));
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("data.bin"), noise(mib << 20, seed)).expect("write");
    let version = format!("{seed}.0");
    let mut args = publish_args(&root.dir, &version, input.to_str().expect("utf-8"));
    args.push("--json");
    let id = update_id(&serde_json::from_str(&arbor_ok(&args)).expect("json"));
    arbor_ok(&[
        "approve",
        "--data",
        &root.dir,
        &id,
        "--group",
        "all",
        "--subtree",
    ]);
    id
}

fn wait(node: &str, update: &str) {
    arbor_ok(&["wait", "--data", node, update, "--timeout", "2m"]);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The largest of `samples` readings of `f`, one every 100 ms.
fn peak(samples: u32, f: impl Fn() -> u64) -> u64 {
    (0..samples)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            f()
        })
        .max()
        .unwrap_or(0)
}

/// Strangers' streams, each announcing a 64 MiB frame and sending 64 KiB of it:
/// `identities` × `streams` tries. Returns the peers with the streams the node accepted,
/// and how many it accepted.
async fn strangers_flood(
    target: PublicKey,
    addr: Multiaddr,
    identities: u8,
    streams: usize,
) -> (Vec<(Peer, Vec<libp2p::Stream>)>, usize) {
    let protocols = [proto::CONTROL, proto::JOIN, proto::SIBLINGS, proto::CHUNKS];
    let mut held = Vec::new();
    let mut accepted = 0;
    for i in 0..identities {
        let key = SecretKey::from_seed([100 + i; 32]);
        let Ok(mut peer) = Peer::new(&key, None).await else {
            continue;
        };
        if peer.connect(target, addr.clone()).await.is_err() {
            continue;
        }
        let mut open = Vec::new();
        for s in 0..streams {
            let Ok(mut stream) = peer
                .open(target, protocols[s % protocols.len()].clone())
                .await
            else {
                continue;
            };
            accepted += 1;
            let mut frame = (64u32 << 20).to_be_bytes().to_vec();
            frame.extend(noise(64 << 10, u64::from(i) * 1000 + s as u64));
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&frame)).await;
            open.push(stream);
        }
        held.push((peer, open));
    }
    (held, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_with_a_thousand_streams_holds_little_and_a_child_is_still_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(base);
    let update = publish(&root, base, 8, 1);
    // A first child, so that the baseline includes serving one.
    let first = init_child(&root, base, "first");
    let first = Daemon::start(&first);
    wait(&first.dir, &update);
    let baseline = peak(20, || root.process.rss());

    // 1,000 streams from 50 identities.
    let (attack, streams) = strangers_flood(root.key, root.addr.clone(), 50, 20).await;
    let during = peak(20, || root.process.rss());
    // A new child joins and is served while the strangers hold their streams.
    let second = init_child(&root, base, "second");
    let second = Daemon::start(&second);
    let started = Instant::now();
    wait(&second.dir, &update);
    let served_in = started.elapsed();
    let with_child = peak(5, || root.process.rss());
    drop(attack);
    let gone = Instant::now();
    let mut after = root.process.rss();
    while after > baseline + (4 << 20) && gone.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        after = root.process.rss();
    }
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "figure: 1 strangers tried 1000 streams with 64 MiB prefixes, {streams} were taken; root RSS baseline {:.1} MiB, peak under attack {:.1} MiB (+{:.1}), {:.1} MiB while also serving a new child, {:.1} MiB {:.1} s after they left; the new child was served in {:.1} s",
        mib(baseline),
        mib(during),
        mib(during.saturating_sub(baseline)),
        mib(with_child),
        mib(after),
        gone.elapsed().as_secs_f64(),
        served_in.as_secs_f64()
    );
    assert!(
        during.saturating_sub(baseline) < 32 << 20,
        "the strangers raised the root's memory by {:.1} MiB",
        mib(during - baseline)
    );
    // Generous: a new child joined meanwhile, and the allocator keeps some memory.
    assert!(
        after <= baseline + (16 << 20),
        "memory did not come back: {:.1} MiB over the baseline 10 s after",
        mib(after.saturating_sub(baseline))
    );
    drop((first, second));
}

/// A member's key and certificate chain, read from its (stopped) node directory.
fn identity(dir: &str) -> (SecretKey, Vec<arbor::trust::Envelope>) {
    let key = SecretKey::read(&Path::new(dir).join("node.key")).expect("key");
    let chain = Node::open(Path::new(dir))
        .expect("open")
        .chain()
        .expect("chain");
    (key, chain)
}

/// Opens a control session to `parent` as the member `(key, chain)`; returns the stream
/// after the welcome.
async fn session_as(
    peer: &mut Peer,
    parent: &Daemon,
    chain: &[arbor::trust::Envelope],
) -> Option<libp2p::Stream> {
    peer.connect(parent.key, parent.addr.clone()).await.ok()?;
    let mut s = peer.open(parent.key, proto::CONTROL).await.ok()?;
    let hello = ControlFrame::Hello {
        site: None,
        addrs: vec![],
        chain: chain.to_vec(),
    };
    proto::write_frame(&mut s, &hello).await.ok()?;
    match proto::read_frame::<_, ControlFrame>(&mut s, proto::MAX_JOIN_FRAME, "welcome").await {
        Ok(Some(ControlFrame::Welcome { .. })) => Some(s),
        _ => None,
    }
}

/// A root with a child that joined (its first run completes the join), whose key and
/// chain the test then speaks with through a [`Peer`].
async fn a_child_played_by_the_test(
    base: &Path,
) -> (Daemon, SecretKey, Vec<arbor::trust::Envelope>, Peer) {
    let root = root(base);
    let child = init_child(&root, base, "child");
    Daemon::start(&child).process.stop();
    let (key, chain) = identity(&child);
    let peer = Peer::new(&key, None).await.expect("peer");
    (root, key, chain, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_sending_what_only_a_parent_may_is_cut_off_banned_and_barely_logged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (root, key, chain, mut peer) = a_child_played_by_the_test(tmp.path()).await;
    let log_before = root.process.log_bytes();
    let started = Instant::now();
    let mut sessions = 0;
    let mut frames = 0u64;
    let offer = ControlFrame::Offer {
        manifest: vec![0xa0; 64],
    };
    let banned = |status: &serde_json::Value| {
        status["bans"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["node_id"] == key.public().node_id()))
    };
    // 200,000 frames only a parent may send, session after session, until it is banned.
    // A session refused may also be the last connection closing: it tries again.
    while frames < 200_000 && started.elapsed() < Duration::from_secs(60) {
        let Some(mut s) = session_as(&mut peer, &root, &chain).await else {
            if banned(&root.status()) {
                break;
            }
            continue;
        };
        sessions += 1;
        while frames < 200_000 {
            if proto::write_frame(&mut s, &offer).await.is_err() {
                break;
            }
            frames += 1;
            if frames.is_multiple_of(1000) {
                tokio::task::yield_now().await;
            }
        }
    }
    let took = started.elapsed();
    let status = root.status();
    let bans = status["bans"].as_array().cloned().unwrap_or_default();
    let log = root.process.log_bytes() - log_before;
    eprintln!(
        "figure: 2 a child sent {frames} parent-only frames over {sessions} sessions in {:.1} s; banned: {}; root log {log} bytes",
        took.as_secs_f64(),
        bans.len()
    );
    assert!(banned(&status), "the child is not banned: {status}");
    assert!(
        sessions <= 4,
        "{sessions} sessions: each should end at the first frame"
    );
    assert!(log < 100 << 10, "the root wrote {log} bytes of log");
    // The metrics say so too.
    let dir = root.dir.clone();
    let metrics = tokio::task::spawn_blocking(move || {
        let req = arbor::net::command::Request::Metrics;
        arbor::admin::call::<String>(Path::new(&dir), &req, Duration::from_secs(30))
    })
    .await
    .expect("client")
    .expect("metrics");
    let text = metrics.as_str();
    assert!(text.contains("arbor_peers_banned 1"), "{text}");
    assert!(
        text.contains("arbor_offences_total{kind=\"wrong_role\"}"),
        "{text}"
    );
    // Banned: its connections are closed at once.
    assert!(session_as(&mut peer, &root, &chain).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_flooding_frames_it_may_send_is_slowed_to_its_share() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (root, _, chain, mut peer) = a_child_played_by_the_test(tmp.path()).await;
    let mut s = session_as(&mut peer, &root, &chain)
        .await
        .expect("a session");
    let cpu0 = root.process.cpu();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(10) {
        let ping = ControlFrame::Ping { time: now_ms() };
        let write = proto::write_frame(&mut s, &ping);
        match tokio::time::timeout(Duration::from_millis(100), write).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break,
            // Held up by flow control: the root reads no faster than its share.
            Err(_) => {}
        }
    }
    let took = started.elapsed().as_secs_f64();
    let share = (root.process.cpu() - cpu0).as_secs_f64() / took;
    eprintln!(
        "figure: 2 a child wrote {sent} pings in {took:.1} s (the root takes 200 a second); root CPU {:.1}% of a core",
        share * 100.0
    );
    assert!(
        share < 0.25,
        "the root spent {:.0}% of a core",
        share * 100.0
    );
    // Still a member in good standing: pings are allowed, only slowed.
    assert!(
        root.status()["bans"]
            .as_array()
            .is_some_and(|b| b.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_flooding_refused_requests_writes_little_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(base);
    let log_before = root.process.log_bytes();
    let started = Instant::now();
    let req = ChunkRequest {
        base: None,
        count: 1,
        first: 0,
        direct: false,
        update: Hash::of(b"none"),
    };
    let mut sent = 0u64;
    // Fresh identities, as a stranger mints them for free: each sends until it is cut
    // off. The bench floods for a minute; the suite for a few seconds.
    let secs: u64 = std::env::var("ARBOR_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut seed = 0u32;
    while sent < 50_000 && started.elapsed() < Duration::from_secs(secs) {
        seed += 1;
        let mut k = [7u8; 32];
        k[..4].copy_from_slice(&seed.to_le_bytes());
        let Ok(mut peer) = Peer::new(&SecretKey::from_seed(k), None).await else {
            continue;
        };
        if peer.connect(root.key, root.addr.clone()).await.is_err() {
            continue;
        }
        for _ in 0..100 {
            let Ok(mut s) = peer.open(root.key, proto::CHUNKS).await else {
                break;
            };
            if proto::write_frame(&mut s, &req).await.is_err() {
                break;
            }
            sent += 1;
        }
    }
    let took = started.elapsed();
    let log = root.process.log_bytes() - log_before;
    eprintln!(
        "figure: 4 {sent} refused requests from {seed} strangers in {:.1} s; root log {log} bytes",
        took.as_secs_f64(),
    );
    assert!(sent >= 1_000, "only {sent} requests went out");
    // Lines are capped per minute: within one, a flood of any length writes this little.
    assert!(log < 100 << 10, "the root wrote {log} bytes of log");
    // The root still answers.
    root.status();
}

/// A parent that announces everything and serves nothing: it holds the real parent's
/// keys (the test made the tree) and listens where the real one did.
struct LyingParent {
    requests: Arc<std::sync::Mutex<Vec<u64>>>,
    _peer: Peer,
}

#[derive(Clone, Copy)]
enum Lie {
    /// Every chunk answered "missing", and everything announced again every 50 ms.
    Missing,
    /// Every request answered with a header of a kind that does not exist.
    BadHeader,
}

impl LyingParent {
    async fn start(root_dir: &str, addr: Multiaddr, lie: Lie) -> LyingParent {
        let node = Node::open(Path::new(root_dir)).expect("the stopped root's directory");
        let key = SecretKey::read(&Path::new(root_dir).join("node.key")).expect("key");
        let root_secret = node.root_secret().expect("the root key").clone();
        let (id, manifest) = node.store.manifests().expect("manifests").remove(0);
        let chunks = arbor::trust::SignedManifest::open(&manifest, &node.root_key, now_ms() / 1000)
            .expect("manifest")
            .chunks
            .len() as u32;
        drop(node);
        let mut peer = Peer::new(&key, Some(addr))
            .await
            .expect("listens where the root did");
        let now = now_ms() / 1000;
        let mut rules = Rules::new(key.public(), now);
        rules
            .approve(
                id,
                ALL,
                Approval {
                    subtree: true,
                    ..Approval::wave(FULL_WAVE)
                },
            )
            .expect("approve");
        let rules = SignedRules::sign(&key, now, now + 3600, rules).expect("rules");
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut controls = peer.accept(proto::CONTROL).expect("control");
        let mut chunk_streams = peer.accept(proto::CHUNKS).expect("chunks");
        let (k, r) = (key.clone(), root_secret);
        tokio::spawn(async move {
            while let Some((_, mut s)) = controls.next().await {
                let Ok(Some(ControlFrame::Hello { chain, .. })) =
                    proto::read_frame::<_, ControlFrame>(&mut s, proto::MAX_HELLO_FRAME, "hello")
                        .await
                else {
                    continue;
                };
                let Some(child) = chain.last().and_then(|c| {
                    arbor::wire::decode_canonical::<member::Membership>(&c.body, 1 << 16, "cert")
                        .ok()
                }) else {
                    continue;
                };
                let now = now_ms() / 1000;
                let renewed = vec![
                    member::issue(&r, k.public(), false, vec![], None, now, now + 3600),
                    member::issue(&k, child.node, child.client, vec![], None, now, now + 3600),
                ];
                let welcome = ControlFrame::Welcome {
                    time: now_ms(),
                    chain: renewed,
                };
                let frames = [
                    welcome,
                    ControlFrame::Rules {
                        sets: vec![serde_bytes::ByteBuf::from(rules.bytes.clone())],
                    },
                    ControlFrame::Offer {
                        manifest: manifest.clone(),
                    },
                ];
                let mut ok = true;
                for f in &frames {
                    ok &= proto::write_frame(&mut s, f).await.is_ok();
                }
                // Announce everything again and again, and stay alive.
                let mut tick = 0u64;
                while ok {
                    let have = ControlFrame::Have {
                        update: id,
                        ranges: vec![(0, chunks)],
                    };
                    ok = proto::write_frame(&mut s, &have).await.is_ok();
                    if tick.is_multiple_of(40) {
                        ok &= proto::write_frame(&mut s, &ControlFrame::Ping { time: now_ms() })
                            .await
                            .is_ok();
                    }
                    tick += 1;
                    let pause = match lie {
                        Lie::Missing => 50,
                        Lie::BadHeader => 2000,
                    };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        });
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Some((_, mut s)) = chunk_streams.next().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    while let Ok(Some(req)) = proto::read_frame::<_, ChunkRequest>(
                        &mut s,
                        proto::MAX_REQUEST_FRAME,
                        "request",
                    )
                    .await
                    {
                        counted.lock().expect("count").push(now_ms());
                        let answer = match lie {
                            Lie::Missing => (0..req.count)
                                .flat_map(|_| proto::chunk_header(proto::CHUNK_MISSING, 0))
                                .collect::<Vec<u8>>(),
                            Lie::BadHeader => proto::chunk_header(9, 7).to_vec(),
                        };
                        if s.write_all(&answer).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        LyingParent {
            requests,
            _peer: peer,
        }
    }

    /// Requests received between `from` and `to` (Unix ms).
    fn requests_between(&self, from: u64, to: u64) -> usize {
        let r = self.requests.lock().expect("count");
        r.iter().filter(|t| **t >= from && **t < to).count()
    }
}

/// A leaf under a parent that lies in the way of `lie`: after 10 s it asks at most 10
/// times a second and spends under 5% of a core.
async fn a_lying_parent(lie: Lie, what: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(base);
    let leaf = init_child(&root, base, "leaf");
    // The leaf joins, then both stop; the root publishes offline.
    Daemon::start(&leaf).process.stop();
    let addr = root.addr.clone();
    let root_dir = root.dir.clone();
    root.process.stop();
    let input = base.join("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("data.bin"), noise(4 << 20, 3)).expect("write");
    arbor_ok(&publish_args(
        &root_dir,
        "1.0",
        input.to_str().expect("utf-8"),
    ));
    let liar = LyingParent::start(&root_dir, addr, lie).await;
    let leaf = Daemon::start(&leaf);
    let start = now_ms();
    let cpu0 = leaf.process.cpu();
    // Wait until the leaf has been at it for 10 s, then measure 10 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu10 = leaf.process.cpu();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu20 = leaf.process.cpu();
    let first = liar.requests_between(start, start + 10_000);
    let late = liar.requests_between(start + 10_000, start + 20_000);
    let share = (cpu20 - cpu10).as_secs_f64() / 10.0;
    let log = leaf.process.log_bytes();
    eprintln!(
        "figure: 3 a parent that {what}: {first} requests in the first 10 s, {late} in the next 10 s ({:.1}/s); leaf CPU {:.1}% of a core then (first 10 s {:.2} s); leaf log {log} bytes",
        late as f64 / 10.0,
        share * 100.0,
        (cpu10 - cpu0).as_secs_f64()
    );
    assert!(first > 0, "the leaf never asked the lying parent");
    assert!(late <= 100, "{late} requests in 10 s after the first 10 s");
    assert!(
        share < 0.05,
        "the leaf spent {:.1}% of a core",
        share * 100.0
    );
    assert!(log < 100 << 10, "the leaf wrote {log} bytes of log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_announces_chunks_then_answers_missing_is_asked_rarely() {
    a_lying_parent(Lie::Missing, "answers MISSING to what it announced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_answers_with_invalid_headers_is_asked_rarely() {
    a_lying_parent(Lie::BadHeader, "answers with invalid headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_parent_is_noticed_within_15_s() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(base);
    let child = init_child(&root, base, "child");
    let child = Daemon::start(&child);
    let deadline = Instant::now() + HANG;
    while child.status()["parent"]["connected"] != true {
        assert!(Instant::now() < deadline, "the child never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
    root.process.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    let noticed = loop {
        let s = child.status();
        if s["parent"]["unresponsive_since"].is_u64() && s["parent"]["connected"] == false {
            break frozen.elapsed();
        }
        assert!(
            frozen.elapsed() < HANG,
            "the frozen parent was never noticed: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = arbor_ok(&["status", "--data", &child.dir]);
    root.process.signal(libc::SIGCONT);
    eprintln!(
        "figure: 6 a frozen parent noticed by its child after {:.1} s",
        noticed.as_secs_f64()
    );
    assert!(
        text.contains("unresponsive since"),
        "status does not say so: {text}"
    );
    assert!(
        noticed < Duration::from_secs(20),
        "noticed after {noticed:?}"
    );
    // Thawed, it is taken back.
    let deadline = Instant::now() + HANG;
    while child.status()["parent"]["connected"] != true {
        assert!(Instant::now() < deadline, "the child never reconnected");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child at `site` (its join completes when it first runs).
fn init_at_site(parent: &Daemon, base: &Path, name: &str, site: &str) -> String {
    let token = arbor_ok(&["token", "--data", &parent.dir, "--site", site]);
    let dir = base.join(name);
    let dir = dir.to_str().expect("utf-8").to_string();
    arbor_ok(&["init", "--data", &dir, "--join", token.trim()]);
    dir
}

/// The sibling session's opening from a silent sibling: its chain, then every chunk of
/// `update` announced. After that it says nothing on `s` (the caller keeps it open).
async fn announce_everything(
    s: &mut libp2p::Stream,
    chain: &[arbor::trust::Envelope],
    update: Hash,
    chunks: u32,
) -> bool {
    let frames = [
        ControlFrame::Welcome {
            time: now_ms(),
            chain: chain.to_vec(),
        },
        ControlFrame::Have {
            update,
            ranges: vec![(0, chunks)],
        },
    ];
    for f in &frames {
        if proto::write_frame(s, f).await.is_err() {
            return false;
        }
    }
    true
}

/// A sibling the parent credits with every chunk of an update (it fetched them all),
/// that announces them all to the leaf at its site, keeps its session alive with pings
/// and never answers a chunk request: the leaf waits on it a few seconds, then takes
/// the chunks from its parent directly. The cost is the leaf's time over that of a leaf
/// with no site, in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_that_never_answers_costs_its_site_a_few_seconds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(base);
    let update = publish(&root, base, 8, 21);
    let id: Hash = update.parse().expect("update id");
    let chunks = root.status()["updates"][0]["chunks"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .expect("the update's chunk count");

    // The baseline: a leaf with no site, from the root alone.
    let alone = init_child(&root, base, "alone");
    let started = Instant::now();
    let alone = Daemon::start(&alone);
    wait(&alone.dir, &update);
    let baseline = started.elapsed();

    // The silent sibling: a real member at site "berlin", played by the test.
    let sibling = init_at_site(&root, base, "sibling", "berlin");
    Daemon::start(&sibling).process.stop();
    let (key, chain) = identity(&sibling);
    let mut peer = Peer::new(&key, Some("/ip4/127.0.0.1/tcp/0".parse().expect("addr")))
        .await
        .expect("the sibling listens");
    let listen = peer.listen_addrs()[0].to_string();
    peer.connect(root.key, root.addr.clone())
        .await
        .expect("the sibling reaches the root");
    let mut control = peer.open(root.key, proto::CONTROL).await.expect("control");
    let hello = ControlFrame::Hello {
        site: Some("berlin".into()),
        addrs: vec![listen],
        chain,
    };
    proto::write_frame(&mut control, &hello)
        .await
        .expect("hello");
    let chain = match proto::read_frame(&mut control, proto::MAX_JOIN_FRAME, "welcome").await {
        Ok(Some(ControlFrame::Welcome { chain, .. })) => chain,
        other => panic!("the root did not welcome the sibling: {other:?}"),
    };
    // It fetches every chunk, so that the root sends the leaf to it for each.
    let mut fetch = peer.open(root.key, proto::CHUNKS).await.expect("chunks");
    for first in (0..chunks).step_by(proto::MAX_SPAN as usize) {
        let req = ChunkRequest {
            base: None,
            count: proto::MAX_SPAN.min(chunks - first),
            first,
            direct: false,
            update: id,
        };
        proto::write_frame(&mut fetch, &req).await.expect("request");
        for _ in 0..req.count {
            let (kind, len) = proto::read_chunk_header(&mut fetch).await.expect("header");
            assert_eq!(
                kind,
                proto::CHUNK_DATA,
                "the root did not serve the sibling"
            );
            let mut bytes = vec![0u8; len as usize];
            futures::io::AsyncReadExt::read_exact(&mut fetch, &mut bytes)
                .await
                .expect("chunk");
        }
    }
    // Alive towards the root; the root's frames (the leaf's address among them) read.
    let (mut from_root, mut to_root) = futures::io::AsyncReadExt::split(control);
    let pinger = tokio::spawn(async move {
        loop {
            let ping = ControlFrame::Ping { time: now_ms() };
            if proto::write_frame(&mut to_root, &ping).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let (listed_tx, mut listed) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(frame)) =
            proto::read_frame::<_, ControlFrame>(&mut from_root, proto::MAX_CONTROL_FRAME, "frame")
                .await
        {
            if let ControlFrame::Siblings { peers } = frame {
                for p in peers {
                    let _ = listed_tx.send(p);
                }
            }
        }
    });
    // One side of two siblings dials (the smaller key): the leaf, or this one.
    let mut incoming = peer.accept(proto::SIBLINGS).expect("siblings");
    let mut chunk_asks = peer.accept(proto::CHUNKS).expect("chunks");
    let me = key.public();
    let (c, u) = (chain.clone(), id);
    let silent = tokio::spawn(async move {
        let (mut sessions, mut held) = (Vec::new(), Vec::new());
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for s in &mut sessions {
                        let _ = proto::write_frame(s, &ControlFrame::Ping { time: now_ms() }).await;
                    }
                }
                Some((_, mut s)) = incoming.next() => {
                    let hello = proto::read_frame::<_, ControlFrame>(&mut s, proto::MAX_HELLO_FRAME, "hello").await;
                    if matches!(hello, Ok(Some(ControlFrame::Hello { .. })))
                        && announce_everything(&mut s, &c, u, chunks).await
                    {
                        sessions.push(s);
                    }
                }
                Some(p) = listed.recv() => {
                    if p.node == me || me > p.node {
                        continue;
                    }
                    let Some(addr) = p.addrs.first().and_then(|a| a.parse::<Multiaddr>().ok()) else {
                        continue;
                    };
                    if peer.connect(p.node, addr).await.is_err() {
                        continue;
                    }
                    let Ok(mut s) = peer.open(p.node, proto::SIBLINGS).await else { continue };
                    let hello = ControlFrame::Hello { site: None, addrs: vec![], chain: c.clone() };
                    if proto::write_frame(&mut s, &hello).await.is_err() {
                        continue;
                    }
                    let welcome = proto::read_frame::<_, ControlFrame>(&mut s, proto::MAX_JOIN_FRAME, "welcome").await;
                    if matches!(welcome, Ok(Some(ControlFrame::Welcome { .. }))) {
                        // Its own welcome is not sent on a stream it opened: the Have only.
                        let have = ControlFrame::Have { update: u, ranges: vec![(0, chunks)] };
                        if proto::write_frame(&mut s, &have).await.is_ok() {
                            sessions.push(s);
                        }
                    }
                }
                // Chunk requests are taken and never answered.
                Some((_, s)) = chunk_asks.next() => held.push(s),
                else => return,
            }
        }
    });

    let leaf = init_at_site(&root, base, "leaf", "berlin");
    let started = Instant::now();
    let leaf = Daemon::start(&leaf);
    wait(&leaf.dir, &update);
    let took = started.elapsed();
    let cost = took.saturating_sub(baseline);
    let s = leaf.status();
    let redirects = root.status()["redirects"].as_u64().unwrap_or(0);
    eprintln!(
        "figure: 6 a sibling that never answers cost its site {:.1} s (the leaf at its site took {:.1} s, a leaf with no site {:.1} s; {redirects} chunks redirected to it)",
        cost.as_secs_f64(),
        took.as_secs_f64(),
        baseline.as_secs_f64(),
    );
    for task in [pinger, reader, silent] {
        task.abort();
    }
    assert!(
        redirects > 0,
        "the root never sent the leaf to the sibling; the test proves nothing"
    );
    let from_siblings: u64 = s["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["bytes_received"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(from_siblings, 0, "the silent sibling sent bytes: {s}");
    // Generous: a sibling that never answered cost its site 60 s before; the liveness
    // pings it sends would keep it a sibling without the stall timeout (3 s).
    assert!(
        cost < Duration::from_secs(10),
        "the silent sibling cost the leaf {cost:?}"
    );
}
