//! The admin API cannot starve the node: a real root (`arbor run`) at a 1,024
//! open-files limit, its admin port held by 1,000 slow connections (and 100 more that
//! promise a body they never send), still answers its
//! token holder, takes a client into the tree and gets an update installed on it, and
//! gives every descriptor back once the slow connections time out. Garbage on the
//! admin port gets a 4xx or a close, and the node keeps running.
//!
//! Linux only: descriptors are counted in /proc.
#![cfg(target_os = "linux")]

mod common;

use common::{HANG, Process, arbor_json, arbor_ok, noise};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The attacked root's open-files limit, soft and hard.
const OPEN_FILES: u64 = 1024;
/// Slow connections kept open against the admin port: headers that never end.
const SLOW: usize = 1000;
/// Connections that promise a 1 MB body and send a few bytes of it.
const LIARS: usize = 100;
/// How long the token holder's status call may take under attack: generous, a
/// bound on waiting behind slow connections, not a figure (benches/adversary-admin.sh
/// measures it).
const ANSWER_BOUND: Duration = Duration::from_secs(5);
/// Descriptors the root may gain over the test besides the admin API's: the client's
/// connection, the update's pack file, the store's.
const TREE_SLACK: usize = 32;

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// The node's admin URL (host:port) and token.
fn admin(data: &str) -> (SocketAddr, String) {
    let url =
        std::fs::read_to_string(Path::new(data).join(arbor::admin::ADDR_FILE)).expect("admin.addr");
    let addr = url
        .trim()
        .strip_prefix("http://")
        .expect("an http URL")
        .parse()
        .expect("host:port");
    let token = std::fs::read_to_string(Path::new(data).join(arbor::admin::TOKEN_FILE))
        .expect("admin.token")
        .trim()
        .to_string();
    (addr, token)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The token holder's `GET /api/status` on a new connection: its status code and how
/// long it took.
fn status_call(addr: SocketAddr, token: &str) -> (u16, Duration) {
    let t0 = Instant::now();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(HANG))
        .build()
        .new_agent();
    let resp = agent
        .get(format!("http://{addr}/api/status"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .expect("the admin API answers");
    (resp.status().as_u16(), t0.elapsed())
}

/// [`SLOW`] + [`LIARS`] connections that each send part of a request and wait, on a
/// runtime of their own; each opens again a second after the server closes it, until
/// told to stop.
struct Attack {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Attack {
    fn start(addr: SocketAddr) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for i in 0..SLOW + LIARS {
                        let (stop, opened) = (stop.clone(), opened.clone());
                        tasks.push(tokio::spawn(slow_connection(addr, i, stop, opened)));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
        };
        Attack {
            stop,
            opened,
            thread,
        }
    }

    /// Stops opening connections; the open ones stay until the server closes them.
    /// Waits for that, at most `limit`.
    fn stop_and_wait(self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        self.stop.store(true, Ordering::SeqCst);
        while !self.thread.is_finished() {
            assert!(
                t0.elapsed() < limit,
                "slow connections were still open {limit:?} after the attack stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.thread.join().expect("the attack thread");
        t0.elapsed()
    }
}

/// One attacker: the first [`SLOW`] send a header that never ends, the others a
/// Content-Length of 1 MB followed by a few bytes.
async fn slow_connection(
    addr: SocketAddr,
    i: usize,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let half: &[u8] = if i < SLOW {
        b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: "
    } else {
        b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{\"ttl"
    };
    while !stop.load(Ordering::SeqCst) {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            opened.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(half).await;
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Raises this test process's own open-files limit for the attack; false if it cannot
/// hold the attack's connections.
fn room_for_the_attack() -> bool {
    let budget = arbor::net::fds::raise_limit();
    if budget.open_files < (SLOW + LIARS) as u64 + 256 {
        eprintln!(
            "skipped: this process may open only {} files (ulimit -Hn)",
            budget.open_files
        );
        return false;
    }
    true
}

fn write_input(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::write(dir.join("bin/viewer"), noise(2 << 20, 7)).expect("write");
    std::fs::write(dir.join("README"), "version 1\n").expect("write");
    path_str(dir)
}

#[test]
fn a_thousand_slow_connections_starve_neither_installs_nor_the_tree_nor_the_token_holder() {
    if !room_for_the_attack() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = common::root_node(base);
    let root_proc = Process::start_with_open_files(&root, &[], &[], (OPEN_FILES, OPEN_FILES));
    let pid = root_proc.id();
    let (addr, token) = admin(&root);
    let (code, quiet) = status_call(addr, &token);
    assert_eq!(code, 200);
    let before = open_fds(pid);
    let cap = arbor::net::fds::admin_connections(OPEN_FILES);

    let attack = Attack::start(addr);
    let t0 = Instant::now();
    while attack.opened.load(Ordering::SeqCst) < (SLOW + LIARS) as u64 {
        assert!(
            t0.elapsed() < HANG,
            "the attack never got its connections open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut most = open_fds(pid);

    // The token holder's calls answer.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (code, took) = status_call(addr, &token);
        assert_eq!(code, 200);
        slowest = slowest.max(took);
        most = most.max(open_fds(pid));
    }
    assert!(
        slowest < ANSWER_BOUND,
        "under attack the status call took {slowest:?} (unattacked {quiet:?})"
    );

    // The tree takes a client in, through a token the token holder asks for.
    let join = arbor_ok(&["token", "--data", &root, "--client"])
        .trim()
        .to_string();
    let client = path_str(&base.join("client"));
    arbor_ok(&["init", "--data", &client, "--join", &join]);
    let install = path_str(&base.join("modules"));
    let client_proc = Process::start(&client, &["--install-dir", &install], &[]);

    // An update published and approved through the attacked API gets installed.
    let input = write_input(&base.join("input"));
    let update = arbor_ok(&common::publish_args(&root, "1.0", &input))
        .trim()
        .to_string();
    arbor_ok(&[
        "approve",
        "--data",
        &root,
        &update,
        "--group",
        "all",
        "--subtree",
    ]);
    let t0 = Instant::now();
    loop {
        most = most.max(open_fds(pid));
        let status = arbor_json(&["status", "--data", &client]);
        if status["installed"]["modules"][0]["current"]["version"] == "1.0" {
            break;
        }
        assert!(
            t0.elapsed() < HANG,
            "the client never installed the update: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Path::new(&install)
            .join("acme/plugins/viewer/bin/viewer")
            .exists(),
        "the module's files are in place"
    );
    // The attack was on the whole time.
    assert!(
        attack.opened.load(Ordering::SeqCst) > (SLOW + LIARS) as u64,
        "the slow connections were not reopened"
    );
    assert!(alive(pid), "the root is running");

    // The admin API never held more than its share of the root's descriptors.
    assert!(
        most <= before + cap + TREE_SLACK,
        "the root had {most} descriptors open under attack ({before} before, admin cap {cap})"
    );

    // Once the attack stops, the slow connections time out and their descriptors are
    // given back.
    let opened = attack.opened.clone();
    let drained = attack.stop_and_wait(HANG);
    let t0 = Instant::now();
    let after = loop {
        let now = open_fds(pid);
        if now <= before + TREE_SLACK || t0.elapsed() > HANG {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        after <= before + TREE_SLACK,
        "{after} descriptors open after the attack ({before} before); drained in {drained:?}"
    );
    assert_eq!(status_call(addr, &token).0, 200);
    eprintln!(
        "status call {quiet:?} unattacked, at most {slowest:?} attacked; root descriptors \
         {before} before, at most {most} attacked (admin cap {cap}), {after} after; \
         {} slow connections opened; drained {drained:?} after the attack stopped",
        opened.load(Ordering::SeqCst)
    );
    client_proc.stop();
    root_proc.stop();
}

/// The soft open-files limit of process `pid`.
fn soft_open_files(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open-files line");
    line.split_whitespace()
        .nth(3)
        .expect("a soft limit")
        .parse()
        .expect("a number")
}

#[test]
fn the_daemon_raises_its_open_files_limit_to_the_hard_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = common::root_node(tmp.path());
    let root_proc = Process::start_with_open_files(&root, &[], &[], (256, 2048));
    assert_eq!(soft_open_files(root_proc.id()), 2048);
    root_proc.stop();
}

/// Sends `bytes` on a new connection and reads what comes back until the server
/// closes or stops sending: the status code of the answer, if any.
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(HANG)).expect("timeout");
    // The server may answer and close before it has read everything.
    let _ = s.write_all(bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .map(|code| code.parse().expect("a status code"))
}

#[test]
fn garbage_on_the_admin_port_gets_a_4xx_or_a_close_and_the_node_keeps_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = common::root_node(tmp.path());
    let root_proc = Process::start(&root, &[], &[]);
    let (addr, token) = admin(&root);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let huge_header = format!(
        "GET /api/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(arbor::admin::MAX_HEADER * 4)
    );
    let many_headers = format!(
        "GET /api/status HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("binary junk", noise(4096, 3), &[400]),
        ("a NUL in the request line", b"GET /\0 HTTP/1.1\r\n\r\n".to_vec(), &[400]),
        ("a huge header", huge_header.into_bytes(), &[431]),
        ("500 headers", many_headers.into_bytes(), &[431]),
        (
            "an absurd Content-Length",
            b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
                .to_vec(),
            &[400],
        ),
        (
            "two Content-Lengths",
            b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{"
                .to_vec(),
            &[400],
        ),
        (
            "a Content-Length past the body limit, with the token",
            format!(
                "POST /api/tokens HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1000000000000\r\n\r\n{{"
            )
            .into_bytes(),
            &[413],
        ),
        (
            "a broken chunked body, with the token",
            format!(
                "POST /api/tokens HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\n"
            )
            .into_bytes(),
            &[400],
        ),
        (
            "an HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            &[400, 505],
        ),
        ("a bare newline", b"\r\n\r\n\r\n".to_vec(), &[400]),
    ];
    for (what, bytes, allowed) in &cases {
        let t0 = Instant::now();
        let code = send_raw(addr, bytes);
        eprintln!("{what}: {code:?}");
        assert!(
            code.is_none_or(|c| allowed.contains(&c)),
            "{what}: answered {code:?}, expected one of {allowed:?} or a close"
        );
        assert!(
            t0.elapsed() < HANG / 4,
            "{what}: took {:?} to answer or close",
            t0.elapsed()
        );
        let (code, _) = status_call(addr, &token);
        assert_eq!(code, 200, "{what}: the node stopped answering");
    }
    let data = PathBuf::from(&root);
    assert!(data.join(arbor::admin::ADDR_FILE).exists());
    root_proc.stop();
}
