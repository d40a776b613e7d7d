//! The tree over real libp2p on loopback: nodes join with tokens, updates flow down any
//! depth with every chunk verified, bad parents and strangers are refused, and a
//! killed node resumes. In-process daemons (one tokio runtime) except where a process
//! must be killed.

mod common;

use arbor::admin::{self, AdminError};
use arbor::content::Hash;
use arbor::net::command::{ApproveRequest, GroupRequest, Request, TokenRequest};
use arbor::net::proto::{CHUNK_REFUSED, ChunkRequest, ControlFrame};
use arbor::net::{self, Handle, Options, probe};
use arbor::node::Node;
use arbor::publish::PublishRequest;
use arbor::trust::member::JoinToken;
use arbor::trust::{PublicKey, SecretKey};
use common::{HANG, Process, arbor_err, arbor_json, arbor_ok, noise};
use libp2p::Multiaddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One running in-process node.
struct TestNode {
    dir: PathBuf,
    handle: Handle,
    addr: Multiaddr,
    key: PublicKey,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), net::NetError>>,
}

impl TestNode {
    /// The node's answer, as the admin API's JSON.
    async fn call(&self, req: Request) -> serde_json::Value {
        let answer = tokio::time::timeout(HANG, self.handle.call(req))
            .await
            .expect("the node answers in time")
            .expect("the node accepts the request");
        serde_json::to_value(answer).expect("an answer is JSON")
    }

    async fn token(&self, client: bool, ttl_secs: u64) -> String {
        let v = self
            .call(Request::Token(TokenRequest {
                groups: vec![],
                client,
                ttl_secs,
                addr: None,
                site: None,
            }))
            .await;
        v["token"].as_str().expect("a token").to_string()
    }

    async fn status(&self) -> serde_json::Value {
        self.call(Request::Status).await
    }

    async fn wait(&self, update: &Hash) {
        self.call(Request::Wait {
            update: update.to_hex(),
        })
        .await;
    }

    async fn stop(self) -> PathBuf {
        let _ = self.stop.send(true);
        tokio::time::timeout(HANG, self.task)
            .await
            .expect("the node stops in time")
            .expect("the node task ends")
            .expect("the node stops cleanly");
        self.dir
    }
}

async fn start_with(opts: Options) -> Result<TestNode, AdminError> {
    let dir = opts.dir.clone();
    let daemon = tokio::time::timeout(HANG, admin::start(opts, admin::LOOPBACK))
        .await
        .expect("start does not hang")?;
    let handle = daemon.handle();
    let addr = daemon.listen_addrs()[0].clone();
    let key = SecretKey::read(&dir.join("node.key"))
        .expect("node key")
        .public();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(daemon.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Ok(TestNode {
        dir,
        handle,
        addr,
        key,
        stop,
        task,
    })
}

fn options(dir: &Path) -> Options {
    Options::new(
        dir,
        vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
    )
}

async fn root(dir: &Path) -> TestNode {
    Node::init_root(dir).expect("init root");
    start_with(options(dir)).await.expect("root starts")
}

/// Joins a new node under `parent` and starts it.
async fn child(parent: &TestNode, dir: &Path, client: bool) -> TestNode {
    let token = parent.token(client, 600).await;
    Node::init_join(dir, &JoinToken::parse(&token).expect("token")).expect("init join");
    start_with(options(dir))
        .await
        .expect("child joins and starts")
}

async fn publish(root: &TestNode, input: &Path, version: &str) -> Hash {
    let update = publish_unapproved(root, input, version).await;
    approve_everywhere(root, &update).await;
    update
}

/// Publishes on the root without approving it for anyone.
async fn publish_unapproved(root: &TestNode, input: &Path, version: &str) -> Hash {
    let v = root
        .call(Request::Publish(PublishRequest {
            tenant: "acme".into(),
            category: "plugins".into(),
            id: "viewer".into(),
            version: version.into(),
            description: None,
            path: input.to_path_buf(),
            follow_symlinks: false,
            post_install: None,
            created: None,
        }))
        .await;
    serde_json::from_value(v["update_id"].clone()).expect("update id")
}

/// The root approves `update` for its whole tree.
async fn approve_everywhere(root: &TestNode, update: &Hash) {
    root.call(Request::Approve(ApproveRequest {
        update: update.to_hex(),
        group: "all".into(),
        wave: None,
        deadline: None,
        subtree: true,
        halt_failures: None,
        halt_fraction: None,
    }))
    .await;
}

/// Writes `mib` MiB of pseudo-random bytes in two files under `dir`.
fn input(dir: &Path, mib: usize, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::write(dir.join("bin/engine"), noise(mib << 20, seed)).expect("write");
    std::fs::write(dir.join("README"), b"sample\n").expect("write");
    dir.to_path_buf()
}

/// Exports `update` from the (stopped) node in `dir` and checks every byte.
fn assert_identical_export(dir: &Path, update: &Hash, input: &Path, out: &Path) {
    let node = Node::open(dir).expect("open node");
    arbor::export::export(&node, update, out, 0).expect("export");
    for rel in ["bin/engine", "README"] {
        assert!(
            std::fs::read(input.join(rel)).expect("input")
                == std::fs::read(out.join(rel)).expect("output"),
            "{} differs in the export of {}",
            rel,
            dir.display()
        );
    }
}

/// Presents the key and certificate chain of the (stopped) node in `dir` to `root`;
/// answers the root's reply to that hello.
async fn hello_as(dir: &Path, root: &TestNode) -> ControlFrame {
    hello_with(dir, root, net::proto::CONTROL, None, vec![]).await
}

/// Like [`hello_as`], on a stream of `protocol`, declaring `site` and `addrs`.
async fn hello_with(
    dir: &Path,
    to: &TestNode,
    protocol: libp2p::StreamProtocol,
    site: Option<&str>,
    addrs: Vec<String>,
) -> ControlFrame {
    let key = SecretKey::read(&dir.join("node.key")).expect("key");
    let chain = Node::open(dir).expect("open").chain().expect("chain");
    let hello = ControlFrame::Hello {
        site: site.map(str::to_string),
        addrs,
        chain,
    };
    probe::hello(&key, to.addr.clone(), to.key, protocol, hello)
        .await
        .expect("an answer")
}

fn bytes_held(status: &serde_json::Value, update: &Hash) -> u64 {
    status["updates"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["update_id"] == update.to_hex()))
        .and_then(|u| u["bytes_held"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_nodes_on_two_levels_all_get_identical_copies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let data = input(&base.join("input"), 64, 1);
    let root = root(&base.join("root")).await;
    let mut nodes = Vec::new();
    for b in 0..2 {
        let branch = child(&root, &base.join(format!("branch{b}")), false).await;
        for l in 0..2 {
            nodes.push(child(&branch, &base.join(format!("leaf{b}{l}")), true).await);
        }
        nodes.push(branch);
    }
    let update = publish(&root, &data, "1.0").await;
    for n in &nodes {
        n.wait(&update).await;
    }
    // Each node got each byte once: the parents sent exactly the update's chunk bytes.
    let total = bytes_held(&root.status().await, &update);
    assert!(total >= 64 << 20);
    for n in nodes.iter().filter(|n| {
        n.dir
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("branch"))
    }) {
        let s = n.status().await;
        for c in s["children"].as_array().expect("children") {
            assert_eq!(
                c["bytes_sent"].as_u64(),
                Some(total),
                "bytes to {}",
                c["node_id"]
            );
        }
        assert_eq!(s["parent"]["connected"], true);
    }
    let mut dirs = Vec::new();
    for n in nodes {
        dirs.push(n.stop().await);
    }
    root.stop().await;
    for (i, d) in dirs.iter().enumerate() {
        assert_identical_export(d, &update, &data, &base.join(format!("out{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupting_parent_is_caught_and_nothing_bad_is_stored_or_forwarded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let data = input(&base.join("input"), 8, 2);
    Node::init_root(&base.join("root")).expect("init");
    let mut opts = options(&base.join("root"));
    opts.corrupt_first_chunks = 5;
    let root = start_with(opts).await.expect("root starts");
    let branch = child(&root, &base.join("branch"), false).await;
    let leaf = child(&branch, &base.join("leaf"), true).await;
    let update = publish(&root, &data, "1.0").await;
    branch.wait(&update).await;
    leaf.wait(&update).await;
    // The five bad copies were each caught, counted, and fetched again.
    assert_eq!(branch.status().await["bad_chunks"], 5);
    assert_eq!(
        leaf.status().await["bad_chunks"],
        0,
        "a bad chunk was forwarded"
    );
    let (b, l) = (branch.stop().await, leaf.stop().await);
    root.stop().await;
    assert_identical_export(&b, &update, &data, &base.join("out-branch"));
    assert_identical_export(&l, &update, &data, &base.join("out-leaf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_reused_and_expired_tokens_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(&base.join("root")).await;
    let refusal = |r: Result<TestNode, AdminError>| match r {
        Ok(_) => panic!("the join was accepted"),
        Err(e) => e.to_string(),
    };

    let mut wrong = JoinToken::parse(&root.token(false, 600).await).expect("token");
    wrong.secret[0] ^= 1;
    Node::init_join(&base.join("wrong"), &wrong).expect("init");
    let e = refusal(start_with(options(&base.join("wrong"))).await);
    assert!(e.contains("not one this parent issued"), "{e}");

    let token = JoinToken::parse(&root.token(false, 600).await).expect("token");
    Node::init_join(&base.join("first"), &token).expect("init");
    let first = start_with(options(&base.join("first")))
        .await
        .expect("first use joins");
    Node::init_join(&base.join("second"), &token).expect("init");
    let e = refusal(start_with(options(&base.join("second"))).await);
    assert!(e.contains("already used"), "{e}");

    let expired = JoinToken::parse(&root.token(false, 0).await).expect("token");
    Node::init_join(&base.join("late"), &expired).expect("init");
    let e = refusal(start_with(options(&base.join("late"))).await);
    assert!(e.contains("expired"), "{e}");

    // A refused node stays un-joined: nothing was pinned.
    let err = Node::open(&base.join("late")).err().expect("not joined");
    assert!(err.to_string().contains("not joined"), "{err}");
    assert_eq!(root.status().await["refused"], 3);
    first.stop().await;
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_other_trees_and_revoked_children_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(&base.join("root")).await;
    let member = child(&root, &base.join("member"), false).await;
    let other_root = self::root(&base.join("other-root")).await;
    let foreign = child(&other_root, &base.join("foreign"), false).await;
    let data = input(&base.join("input"), 1, 3);
    let update = publish(&root, &data, "1.0").await;
    member.wait(&update).await;

    // A stranger with no chain.
    let stranger = SecretKey::from_seed([42; 32]);
    let hello = ControlFrame::Hello {
        site: None,
        addrs: vec![],
        chain: vec![],
    };
    let answer = probe::hello(
        &stranger,
        root.addr.clone(),
        root.key,
        net::proto::CONTROL,
        hello,
    )
    .await
    .expect("an answer");
    assert!(
        matches!(&answer, ControlFrame::Refused { reason, .. } if reason.contains("chain is refused")),
        "{answer:?}"
    );
    // A stranger asking for chunks directly.
    let req = ChunkRequest {
        base: None,
        count: 1,
        first: 0,
        direct: false,
        update,
    };
    let (kind, reason) = probe::chunks(&stranger, root.addr.clone(), root.key, req)
        .await
        .expect("an answer");
    assert_eq!(kind, CHUNK_REFUSED);
    assert!(String::from_utf8_lossy(&reason).contains("own connected children"));

    // A member of another tree, with its valid chain under the other root.
    let answer = hello_as(&foreign.stop().await, &root).await;
    assert!(
        matches!(&answer, ControlFrame::Refused { reason, .. } if reason.contains("another tree")),
        "{answer:?}"
    );

    // A revoked child: disconnected at once, and refused when it comes back.
    let member_id = member.key.node_id();
    root.call(Request::Revoke {
        node: member_id.clone(),
    })
    .await;
    let answer = hello_as(&member.stop().await, &root).await;
    assert!(
        matches!(&answer, ControlFrame::Refused { reason, .. } if reason.contains("revoked")),
        "{answer:?}"
    );
    let s = root.status().await;
    let c = s["children"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["node_id"] == member_id.as_str())
                .cloned()
        })
        .expect("the child is listed");
    assert_eq!(c["revoked"], true);
    assert_eq!(c["connected"], false);
    assert!(s["refused"].as_u64() >= Some(4), "{s}");
    other_root.stop().await;
    root.stop().await;
}

#[test]
fn a_killed_node_resumes_without_fetching_again_what_it_has() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let data = input(&base.join("input"), 320, 4);
    let root = common::root_node(base);
    let input_path = data.to_str().expect("utf-8").to_string();
    let update = arbor_ok(&common::publish_args(&root, "1.0", &input_path))
        .trim()
        .to_string();
    let root_proc = Process::start(&root, &[], &[]);
    arbor_ok(&[
        "approve",
        "--data",
        &root,
        &update,
        "--group",
        "all",
        "--subtree",
    ]);
    let token = arbor_ok(&["token", "--data", &root]).trim().to_string();
    let leaf = base.join("leaf").to_str().expect("utf-8").to_string();
    arbor_ok(&["init", "--data", &leaf, "--join", &token]);
    let leaf_proc = Process::start(&leaf, &[], &[]);

    // Kill it once it holds over 70 MiB. What a kill loses is what waited for its
    // commit (at most a second's or 64 MiB's worth); what survived is what the offline
    // check finds in the store, and only the rest may cross the link again.
    let deadline = Instant::now() + HANG;
    let (held, total) = loop {
        let s = arbor_json(&["status", "--data", &leaf]);
        let held = s["updates"][0]["bytes_held"].as_u64().unwrap_or(0);
        if held > 70 << 20 {
            break (held, s["updates"][0]["bytes"].as_u64().expect("size"));
        }
        assert!(Instant::now() < deadline, "the transfer did not progress");
        std::thread::sleep(Duration::from_millis(20));
    };
    leaf_proc.kill();
    assert!(
        held < total,
        "the transfer finished before the kill; the test proves nothing"
    );
    // A partial update is a finding (its missing chunks), so verify exits 1 here.
    let durable = common::arbor(&["verify", "--data", &leaf, "--json"]).stdout;
    let durable: serde_json::Value = serde_json::from_slice(&durable).expect("verify --json");
    let durable = durable["bytes"].as_u64().expect("bytes checked");
    assert!(
        durable > 0 && durable <= held,
        "{durable} bytes survived the kill of a node holding {held}"
    );

    let leaf_proc = Process::start(&leaf, &[], &[]);
    arbor_ok(&["wait", "--data", &leaf, "--timeout", "2m", &update]);
    let s = arbor_json(&["status", "--data", &leaf]);
    let fetched_after_restart = s["parent"]["bytes_received"].as_u64().expect("counter");
    eprintln!(
        "held {held} bytes at the kill, {durable} survived it, fetched {fetched_after_restart} after the restart"
    );
    assert!(
        fetched_after_restart <= total - durable,
        "fetched {fetched_after_restart} bytes after the restart, but {durable} of {total} survived the kill"
    );
    // Complete means durable: killed at once, the leaf still holds all of it.
    leaf_proc.kill();
    root_proc.stop();
    let out = base.join("out");
    arbor_ok(&[
        "export",
        "--data",
        &leaf,
        &update,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(
        std::fs::read(data.join("bin/engine")).expect("in")
            == std::fs::read(out.join("bin/engine")).expect("out")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_parent_keeps_serving_and_carries_on_when_it_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let quick_retry = |dir: &Path| {
        let mut o = options(dir);
        o.engine.retry_min = 50;
        o.engine.retry_max = 500;
        o
    };
    Node::init_root(&base.join("root")).expect("init");
    let root = start_with(quick_retry(&base.join("root")))
        .await
        .expect("root");
    let root_addr = root.addr.clone();
    let token = root.token(false, 600).await;
    Node::init_join(
        &base.join("branch"),
        &JoinToken::parse(&token).expect("token"),
    )
    .expect("init");
    let branch = start_with(quick_retry(&base.join("branch")))
        .await
        .expect("branch");
    let v1 = publish(&root, &input(&base.join("v1"), 4, 5), "1.0").await;
    branch.wait(&v1).await;

    // The root goes away: the branch still serves a new leaf what it holds.
    let root_dir = root.stop().await;
    let leaf = child(&branch, &base.join("leaf"), true).await;
    leaf.wait(&v1).await;
    assert_eq!(branch.status().await["parent"]["connected"], false);

    // The root comes back on the same address: the branch reconnects by itself, and the
    // next update flows down to the leaf.
    let mut opts = quick_retry(&root_dir);
    opts.listen = vec![root_addr];
    let root = start_with(opts).await.expect("root restarts");
    let v2 = publish(&root, &input(&base.join("v2"), 4, 6), "2.0").await;
    branch.wait(&v2).await;
    leaf.wait(&v2).await;
    assert_eq!(branch.status().await["parent"]["connected"], true);
    leaf.stop().await;
    branch.stop().await;
    root.stop().await;
}

/// One request to the admin API and what must come back.
type AdminCase<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<&'a [u8]>,
    u16,
    &'a str,
);

/// Sends one HTTP request to a node's admin API; answers the status and the body.
fn admin_http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(HANG))
        .build()
        .new_agent();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(body.unwrap_or_default().to_vec())
        .expect("request");
    let mut resp = agent.run(req).expect("the admin API answers");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_api_input_gets_a_clear_4xx_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = root(&tmp.path().join("root")).await;
    let before = root.status().await;
    let url = before["admin"].as_str().expect("admin url").to_string();
    let token = std::fs::read_to_string(root.dir.join(admin::TOKEN_FILE))
        .expect("the token file")
        .trim()
        .to_string();
    let stranger = SecretKey::generate().expect("key").public().node_id();
    let checks = tokio::task::spawn_blocking(move || {
        let t = Some(token.as_str());
        let wrong = Some("0123456789abcdef0123456789abcdef");
        let big = vec![b' '; admin::MAX_BODY + 1];
        let publish_relative =
            br#"{"path":"relative","tenant":"t","category":"c","id":"i","version":"1"}"#;
        // (method, path, token, body, expected status, words the answer must hold)
        let cases: Vec<AdminCase> = vec![
            ("GET", "/api/status".into(), None, None, 401, "admin token"),
            ("GET", "/api/status".into(), wrong, None, 401, "admin token"),
            ("POST", "/api/tokens".into(), t, Some(b"{"), 400, "EOF"),
            (
                "POST",
                "/api/tokens".into(),
                t,
                Some(b"\xff\xfe"),
                400,
                "JSON",
            ),
            (
                "POST",
                "/api/tokens".into(),
                t,
                Some(br#"{"ttl_secs":"soon"}"#),
                422,
                "ttl_secs",
            ),
            (
                "POST",
                "/api/tokens".into(),
                t,
                Some(br#"{"format_disk":1}"#),
                422,
                "format_disk",
            ),
            (
                "POST",
                "/api/tokens".into(),
                t,
                Some(br#"{"groups":["../etc"]}"#),
                400,
                "group",
            ),
            (
                "POST",
                "/api/tokens".into(),
                t,
                Some(br#"{"addr":"nowhere"}"#),
                400,
                "multiaddr",
            ),
            ("POST", "/api/tokens".into(), t, Some(&big), 413, ""),
            (
                "POST",
                "/api/children/garbage/revoke".into(),
                t,
                None,
                400,
                "not a node id",
            ),
            (
                "POST",
                format!("/api/children/{stranger}/revoke"),
                t,
                None,
                404,
                "not a child",
            ),
            (
                "POST",
                "/api/publish".into(),
                t,
                Some(publish_relative),
                400,
                "absolute",
            ),
            (
                "GET",
                "/api/updates/zz/wait?timeout_secs=x".into(),
                t,
                None,
                400,
                "timeout_secs",
            ),
            (
                "GET",
                "/api/updates/abcd/wait?timeout_secs=1".into(),
                t,
                None,
                404,
                "no update",
            ),
            (
                "GET",
                "/api/format_disk".into(),
                t,
                None,
                404,
                "no such endpoint",
            ),
            // A node without --install-dir has no install directory to check or roll back.
            (
                "GET",
                "/api/installed".into(),
                t,
                None,
                409,
                "--install-dir",
            ),
            (
                "POST",
                "/api/installed/check".into(),
                t,
                Some(b"{"),
                400,
                "EOF",
            ),
            (
                "POST",
                "/api/installed/check".into(),
                t,
                Some(br#"{"repair":"yes"}"#),
                422,
                "repair",
            ),
            (
                "POST",
                "/api/installed/check".into(),
                t,
                Some(br#"{"wipe":true}"#),
                422,
                "wipe",
            ),
            (
                "POST",
                "/api/installed/check".into(),
                t,
                Some(br#"{"repair":true}"#),
                409,
                "installs nothing",
            ),
            (
                "POST",
                "/api/installed/acme/plug%2Fins/viewer/rollback".into(),
                t,
                None,
                400,
                "TENANT/CATEGORY/ID",
            ),
            (
                "POST",
                "/api/installed/acme/plugins/.hidden/rollback".into(),
                t,
                None,
                400,
                "id",
            ),
            (
                "POST",
                "/api/installed/acme/plugins/viewer/rollback".into(),
                t,
                None,
                409,
                "installs nothing",
            ),
        ];
        let groups: Vec<AdminCase> = vec![
            (
                "POST",
                "/api/groups".into(),
                t,
                Some(br#"{"name":5}"#),
                422,
                "name",
            ),
            (
                "POST",
                "/api/groups".into(),
                t,
                Some(br#"{"name":"a/b"}"#),
                400,
                "group",
            ),
            (
                "POST",
                "/api/groups".into(),
                t,
                Some(br#"{"name":"all"}"#),
                409,
                "built in",
            ),
            (
                "DELETE",
                "/api/groups/nope".into(),
                t,
                None,
                404,
                "no group",
            ),
            (
                "PUT",
                "/api/groups/all/members/x".into(),
                t,
                None,
                409,
                "built in",
            ),
            (
                "PUT",
                "/api/groups/g/members/x".into(),
                t,
                None,
                400,
                "not a node id",
            ),
            (
                "PUT",
                format!("/api/groups/nope/members/{stranger}"),
                t,
                None,
                404,
                "no group",
            ),
        ];
        let zeros = "0".repeat(64);
        let unknown = format!(r#"{{"update":"{zeros}","group":"all"}}"#);
        let approvals: Vec<AdminCase> = vec![
            (
                "POST",
                "/api/approvals".into(),
                t,
                Some(br#"{"update":"abcd","group":"all"}"#),
                404,
                "no update",
            ),
            (
                "POST",
                "/api/approvals".into(),
                t,
                Some(unknown.as_bytes()),
                404,
                "no update",
            ),
            (
                "POST",
                "/api/approvals".into(),
                t,
                Some(br#"{"group":"all"}"#),
                422,
                "update",
            ),
            (
                "POST",
                "/api/approvals".into(),
                t,
                Some(br#"{"update":"abcd","group":"all","wave":"150"}"#),
                400,
                "wave",
            ),
            (
                "POST",
                "/api/approvals".into(),
                t,
                Some(br#"{"update":"abcd","group":"all","wave":12.345}"#),
                400,
                "two decimals",
            ),
            (
                "POST",
                "/api/approvals".into(),
                t,
                Some(br#"{"update":"abcd","group":"all","deadline":"tomorrow"}"#),
                400,
                "deadline",
            ),
            (
                "POST",
                "/api/approvals".into(),
                t,
                Some(br#"{"update":"abcd","group":"all","halt_fraction":"-1"}"#),
                400,
                "halt fraction",
            ),
            (
                "POST",
                "/api/approvals".into(),
                t,
                Some(br#"{"update":"abcd","group":"all","everyone":true}"#),
                422,
                "everyone",
            ),
            (
                "DELETE",
                "/api/approvals/abcd/all".into(),
                t,
                None,
                404,
                "no update",
            ),
            (
                "DELETE",
                format!("/api/approvals/{zeros}/all"),
                t,
                None,
                404,
                "not approved",
            ),
            ("GET", "/api/tree".into(), None, None, 401, "admin token"),
            (
                "GET",
                "/api/reports".into(),
                wrong,
                None,
                401,
                "admin token",
            ),
            ("GET", "/metrics".into(), None, None, 401, "admin token"),
        ];
        let mut failed = Vec::new();
        for (method, path, token, body, want, says) in
            cases.into_iter().chain(groups).chain(approvals)
        {
            let (status, text) = admin_http(&url, method, &path, token, body);
            if status != want || !text.contains(says) {
                failed.push(format!("{method} {path}: {status} {text}"));
            }
        }
        // Every endpoint the OpenAPI description names exists (the UI and the
        // description itself answer without the token).
        let (status, text) = admin_http(&url, "GET", "/api/openapi.json", None, None);
        let doc: serde_json::Value = serde_json::from_str(&text).expect("OpenAPI is JSON");
        if status != 200 || doc["openapi"] != "3.1.0" {
            failed.push(format!("openapi.json: {status}"));
        }
        for (path, methods) in doc["paths"].as_object().expect("paths") {
            let concrete = path
                .replace("{node}", "x")
                .replace("{update}", "abcd")
                .replace("{group}", "nope");
            for method in methods.as_object().expect("methods").keys() {
                let method = method.to_uppercase();
                let (status, text) = admin_http(&url, &method, &concrete, t, Some(b"{}"));
                if status == 404 && text.contains("no such endpoint") || status == 405 {
                    failed.push(format!("described but missing: {method} {path}: {status}"));
                }
            }
        }
        for page in ["/", "/app.js", "/style.css"] {
            let (status, text) = admin_http(&url, "GET", page, None, None);
            if status != 200 || text.is_empty() {
                failed.push(format!("UI {page}: {status}"));
            }
        }
        // Not HTTP at all.
        use std::io::{Read, Write};
        let addr = url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(HANG)).expect("timeout");
        s.write_all(b"\xff\xfe\x00garbage\r\n\r\n").expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        if !out.starts_with(b"HTTP/1.1 400") && !out.is_empty() {
            failed.push(format!("raw garbage: {}", String::from_utf8_lossy(&out)));
        }
        failed
    })
    .await
    .expect("client");
    assert!(
        checks.is_empty(),
        "unexpected answers:\n{}",
        checks.join("\n")
    );
    // Nothing changed, and the node still answers.
    let after = root.status().await;
    assert_eq!(after["children"], before["children"]);
    assert_eq!(after["updates"], before["updates"]);
    let groups = root.call(Request::Group(GroupRequest::List)).await;
    assert_eq!(
        groups["groups"].as_array().map(Vec::len),
        Some(1),
        "{groups}"
    );
    let approvals = root.call(Request::Approvals).await;
    assert_eq!(approvals["approvals"], serde_json::json!([]));
    assert_eq!(after["rules"], before["rules"]);
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_managed_through_the_cli_and_carried_by_tokens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = root(&tmp.path().join("root")).await;
    let first = child(&root, &tmp.path().join("first"), false).await;
    let first_id = first.key.node_id();
    let data = root.dir.to_str().expect("utf-8").to_string();
    let token = tokio::task::spawn_blocking({
        let (data, first_id) = (data.clone(), first_id.clone());
        move || {
            let d = data.as_str();
            arbor_ok(&["group", "create", "--data", d, "pilot"]);
            let again = arbor_err(&["group", "create", "--data", d, "pilot"]);
            assert!(again.contains("already exists"), "{again}");
            let all = arbor_err(&["group", "delete", "--data", d, "all"]);
            assert!(all.contains("built in"), "{all}");
            let bad = arbor_err(&["group", "create", "--data", d, "a/b"]);
            assert!(bad.contains("group"), "{bad}");
            let unknown = arbor_err(&["token", "--data", d, "--group", "nope"]);
            assert!(unknown.contains("no group \"nope\""), "{unknown}");
            let stranger = arbor_err(&["group", "assign", "--data", d, "pilot", "12D3KooWgarbage"]);
            assert!(stranger.contains("not a node id"), "{stranger}");

            arbor_ok(&["group", "assign", "--data", d, "pilot", &first_id]);
            let list = arbor_json(&["group", "list", "--data", d]);
            let members = |name: &str| {
                list["groups"]
                    .as_array()
                    .expect("groups")
                    .iter()
                    .find(|g| g["name"] == name)
                    .map(|g| g["members"].clone())
                    .expect("listed")
            };
            assert_eq!(members("pilot"), serde_json::json!([first_id]));
            assert_eq!(members("all"), serde_json::json!([first_id]));
            arbor_ok(&["token", "--data", d, "--group", "pilot"])
                .trim()
                .to_string()
        }
    })
    .await
    .expect("cli");

    // The token's group is the new child's.
    let second_dir = tmp.path().join("second");
    Node::init_join(&second_dir, &JoinToken::parse(&token).expect("token")).expect("init");
    let second = start_with(options(&second_dir))
        .await
        .expect("second starts");
    let groups_of = |status: &serde_json::Value, id: &str| {
        status["children"]
            .as_array()
            .expect("children")
            .iter()
            .find(|c| c["node_id"] == id)
            .map(|c| c["groups"].clone())
            .expect("a child")
    };
    let status = root.status().await;
    assert_eq!(
        groups_of(&status, &second.key.node_id()),
        serde_json::json!(["pilot"])
    );

    // Deleting the group takes everyone out of it.
    let d = data.clone();
    tokio::task::spawn_blocking(move || arbor_ok(&["group", "delete", "--data", &d, "pilot"]))
        .await
        .expect("cli");
    let status = root.status().await;
    assert_eq!(groups_of(&status, &first_id), serde_json::json!([]));
    assert_eq!(
        groups_of(&status, &second.key.node_id()),
        serde_json::json!([])
    );
    second.stop().await;
    first.stop().await;
    root.stop().await;
}

/// Polls `check` on `node`'s answer to `req` until it holds, or fails after [`HANG`].
async fn until(
    node: &TestNode,
    req: Request,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + HANG;
    loop {
        let v = node.call(req.clone()).await;
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The states of `update` per node id in a `/api/tree` answer.
fn tree_states(tree: &serde_json::Value, update: &Hash, out: &mut Vec<(String, String)>) {
    let state = tree["updates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["update_id"] == update.to_hex())
        .and_then(|u| u["state"].as_str())
        .unwrap_or("-");
    out.push((
        tree["node_id"].as_str().unwrap_or("?").to_string(),
        state.to_string(),
    ));
    for c in tree["children"].as_array().into_iter().flatten() {
        tree_states(c, update, out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_go_down_three_levels_and_reports_come_back_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(&base.join("root")).await;
    root.call(Request::Group(GroupRequest::Create {
        name: "east".into(),
    }))
    .await;
    let token = root
        .call(Request::Token(TokenRequest {
            groups: vec!["east".into()],
            client: false,
            ttl_secs: 600,
            addr: None,
            site: None,
        }))
        .await["token"]
        .as_str()
        .expect("token")
        .to_string();
    Node::init_join(
        &base.join("branch"),
        &JoinToken::parse(&token).expect("token"),
    )
    .expect("init");
    let branch = start_with(options(&base.join("branch")))
        .await
        .expect("branch");
    let west = child(&root, &base.join("west"), false).await;
    let leaf = child(&branch, &base.join("leaf"), true).await;
    let u1 = publish_unapproved(&root, &input(&base.join("v1"), 1, 11), "1.0").await;

    // Approved for `east` and everything below it, through the CLI.
    let data = root.dir.to_str().expect("utf-8").to_string();
    let (d, u) = (data.clone(), u1.to_hex());
    tokio::task::spawn_blocking(move || {
        // Garbage in the flags gets one clear line and changes nothing.
        for (flag, value, says) in [
            ("--wave", "150", "wave"),
            ("--deadline", "soonish", "deadline"),
            ("--halt-fraction", "x", "halt fraction"),
            ("--group", "nope", "no group"),
        ] {
            let mut args = vec!["approve", "--data", &d, &u, flag, value];
            if flag != "--group" {
                args.extend(["--group", "east"]);
            }
            let err = arbor_err(&args);
            assert!(err.contains(says), "{flag} {value}: {err}");
        }
        assert_eq!(
            arbor_json(&["approvals", "--data", &d])["approvals"],
            serde_json::json!([])
        );
        arbor_ok(&["approve", "--data", &d, &u, "--group", "east", "--subtree"]);
        let list = arbor_json(&["approvals", "--data", &d]);
        assert_eq!(list["approvals"][0]["group"], "east");
        assert_eq!(list["approvals"][0]["reached"], 1);
    })
    .await
    .expect("cli");
    tokio::time::timeout(HANG, leaf.wait(&u1))
        .await
        .expect("leaf gets u1");

    // The root sees every node's state, through the tree, within the hang bound.
    let (d, u) = (data.clone(), u1);
    let tree = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + HANG;
        loop {
            let tree = arbor_json(&["status", "--data", &d, "--tree"]);
            let mut states = Vec::new();
            tree_states(&tree["tree"], &u, &mut states);
            if states.iter().filter(|(_, s)| s == "downloaded").count() == 3 {
                return tree;
            }
            assert!(
                Instant::now() < deadline,
                "the roll-up never showed it: {tree:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("cli");
    let mut states = Vec::new();
    tree_states(&tree["tree"], &u1, &mut states);
    states.sort();
    let mut want = vec![
        (root.key.node_id(), "downloaded".to_string()),
        (branch.key.node_id(), "downloaded".to_string()),
        (leaf.key.node_id(), "downloaded".to_string()),
        (west.key.node_id(), "-".to_string()),
    ];
    want.sort();
    assert_eq!(states, want, "west is not in east and must not have it");
    let west_status = west.status().await;
    assert_eq!(west_status["updates"], serde_json::json!([]));

    // The rollout per group, and the metrics, say the same.
    let updates = root.call(Request::Updates).await;
    let rollout = updates["updates"][0]["rollout"]
        .as_array()
        .expect("rollout")
        .clone();
    let east = rollout.iter().find(|r| r["group"] == "east").expect("east");
    assert_eq!(
        (east["downloaded"].as_u64(), east["done_percent"].as_u64()),
        (Some(2), Some(100))
    );
    let dir = root.dir.clone();
    let metrics = tokio::task::spawn_blocking(move || {
        admin::call::<String>(&dir, &Request::Metrics, Duration::from_secs(30))
    })
    .await
    .expect("client")
    .expect("metrics");
    let text = metrics.as_str();
    let line = format!(
        "arbor_update_nodes{{state=\"downloaded\",update=\"{}\"}} 3",
        u1.to_hex()
    );
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("# TYPE arbor_bytes_total counter"), "{text}");

    // The leaf goes offline; meanwhile the root withdraws u1 and approves u2.
    let leaf_dir = leaf.stop().await;
    let u2 = publish_unapproved(&root, &input(&base.join("v2"), 1, 12), "2.0").await;
    let (d, a, b) = (data.clone(), u1.to_hex(), u2.to_hex());
    tokio::task::spawn_blocking(move || {
        arbor_ok(&["approve", "--data", &d, &b, "--group", "east", "--subtree"]);
        arbor_ok(&["decline", "--data", &d, &a, "--group", "east"]);
    })
    .await
    .expect("cli");
    let root_version = root.status().await["rules"][0]["version"].clone();
    // A node keeps the newest rules across a restart (west: its parent's address stays).
    until(&west, Request::Status, "west hearing of it", |s| {
        s["rules"][0]["version"] == root_version
    })
    .await;
    let west_dir = west.stop().await;
    let west = start_with(options(&west_dir)).await.expect("west restarts");
    assert_eq!(west.status().await["rules"][0]["version"], root_version);
    // Back, the leaf catches up: the newest rules, u2, and u1 no longer available.
    let leaf = start_with(options(&leaf_dir)).await.expect("leaf restarts");
    tokio::time::timeout(HANG, leaf.wait(&u2))
        .await
        .expect("leaf gets u2");
    let status = until(&leaf, Request::Status, "catching up", |s| {
        s["rules"][0]["version"] == root_version
    })
    .await;
    let available: Vec<(String, bool)> = status["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|u| {
            (
                u["update_id"].as_str().unwrap_or("").to_string(),
                u["available"] == true,
            )
        })
        .collect();
    assert!(available.contains(&(u1.to_hex(), false)), "{available:?}");
    assert!(available.contains(&(u2.to_hex(), true)), "{available:?}");
    assert_eq!(status["rules_refused"], 0);

    leaf.stop().await;
    branch.stop().await;
    west.stop().await;
    root.stop().await;
}

/// A node limited to 10 Mbit/s from its parent fetches at that rate, within 10%, over
/// 10 seconds (after 2 s, which the streams' flow-control windows may run ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_limit_of_10_mbit_holds_within_10_percent_over_10_s() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = root(&tmp.path().join("root")).await;
    let token = root.token(false, 600).await;
    let dir = tmp.path().join("limited");
    Node::init_join(&dir, &JoinToken::parse(&token).expect("token")).expect("init join");
    let mut opts = options(&dir);
    opts.bandwidth.max_download = Some("10Mbit".parse().expect("rate"));
    let child = start_with(opts).await.expect("the limited child starts");
    let data = input(&tmp.path().join("input"), 24, 9);
    let update = publish(&root, &data, "1.0").await;

    let rate = 10_000_000.0 / 8.0;
    let deadline = Instant::now() + HANG;
    let sample = || async { (Instant::now(), bytes_held(&child.status().await, &update)) };
    let mut first = sample().await;
    while first.1 == 0 {
        assert!(Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
        first = sample().await;
    }
    let from = loop {
        let s = sample().await;
        if s.0 >= first.0 + Duration::from_secs(2) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let to = loop {
        let s = sample().await;
        if s.0 >= from.0 + Duration::from_secs(10) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let measured = (to.1 - from.1) as f64 / (to.0 - from.0).as_secs_f64();
    eprintln!(
        "measured {:.3} Mbit/s under a 10 Mbit/s limit",
        measured * 8.0 / 1e6
    );
    assert!(
        (measured / rate - 1.0).abs() <= 0.10,
        "fetched at {:.2} Mbit/s under a 10 Mbit/s limit",
        measured * 8.0 / 1e6
    );
    assert!(
        to.1 < 24 << 20,
        "the transfer finished early: the limit did not hold"
    );
    child.stop().await;
    root.stop().await;
}

/// Joins nodes under `root` at site "berlin", named from `first`, each serving corrupt
/// bytes for its first `corrupt[i]` chunks, and waits until each sees the others.
async fn site(root: &TestNode, base: &Path, first: usize, corrupt: &[u32]) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for (i, bad) in corrupt.iter().enumerate() {
        let dir = base.join(format!("site{}", first + i));
        let token = root.token(false, 600).await;
        Node::init_join(&dir, &JoinToken::parse(&token).expect("token")).expect("init join");
        let opts = Options {
            site: Some("berlin".into()),
            corrupt_first_chunks: *bad,
            ..options(&dir)
        };
        nodes.push(start_with(opts).await.expect("a site member starts"));
    }
    // Each sees every member so far, the earlier ones included: connected, or banned
    // already if it sent bad bytes.
    let others = first + corrupt.len() - 1;
    for n in &nodes {
        until(n, Request::Status, "every sibling connected", |s| {
            s["siblings"].as_array().is_some_and(|a| {
                a.iter()
                    .filter(|s| s["connected"] == true || s["banned"] == true)
                    .count()
                    >= others
            })
        })
        .await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_takes_one_copy_from_the_parent_and_shares_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let data = input(&base.join("input"), 16, 7);
    let root = root(&base.join("root")).await;
    let nodes = site(&root, base, 0, &[0, 0, 0]).await;
    let update = publish(&root, &data, "1.0").await;
    for n in &nodes {
        n.wait(&update).await;
    }
    let total = bytes_held(&root.status().await, &update);
    let s = root.status().await;
    let uplink: u64 = s["children"]
        .as_array()
        .expect("children")
        .iter()
        .inspect(|c| assert_eq!(c["site"], "berlin"))
        .map(|c| c["bytes_sent"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        uplink * 100 <= total * 105,
        "{uplink} bytes crossed the site's uplink for an update of {total}"
    );
    for n in &nodes {
        let s = n.status().await;
        let from_siblings: u64 = s["siblings"]
            .as_array()
            .expect("siblings")
            .iter()
            .map(|s| s["bytes_received"].as_u64().unwrap_or(0))
            .sum();
        let from_parent = s["parent"]["bytes_received"].as_u64().unwrap_or(0);
        assert_eq!(from_parent + from_siblings, total, "{s:#}");
        assert!(from_siblings > 0, "a node took nothing from its siblings");
    }
    let mut dirs = Vec::new();
    for n in nodes {
        dirs.push(n.stop().await);
    }
    root.stop().await;
    for (i, d) in dirs.iter().enumerate() {
        assert_identical_export(d, &update, &data, &base.join(format!("out{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_that_sends_bad_bytes_is_banned_and_nothing_bad_is_stored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let data = input(&base.join("input"), 8, 8);
    let root = root(&base.join("root")).await;
    // The bad sibling holds the whole update first, so the root sends the others to it.
    let mut nodes = site(&root, base, 0, &[u32::MAX]).await;
    let update = publish(&root, &data, "1.0").await;
    nodes[0].wait(&update).await;
    nodes.extend(site(&root, base, 1, &[0, 0]).await);
    for n in &nodes {
        n.wait(&update).await;
    }
    let bad = nodes[0].key.node_id();
    for n in &nodes[1..] {
        let s = until(n, Request::Status, "the bad sibling banned", |s| {
            s["siblings"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["node_id"] == bad && s["banned"] == true))
        })
        .await;
        assert!(s["bad_chunks"].as_u64().unwrap_or(0) >= 1, "{s:#}");
    }
    let mut dirs = Vec::new();
    for n in nodes {
        dirs.push(n.stop().await);
    }
    root.stop().await;
    for (i, d) in dirs.iter().enumerate() {
        assert_identical_export(d, &update, &data, &base.join(format!("out{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sites_and_addresses_and_strangers_at_a_site_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = root(&base.join("root")).await;
    let members = site(&root, base, 0, &[0]).await;
    // A child of the root that is stopped, to present its chain by hand.
    let other = child(&root, &base.join("other"), false).await;
    let other_dir = other.stop().await;
    let refused = |answer: &ControlFrame, why: &str| {
        assert!(
            matches!(answer, ControlFrame::Refused { reason, .. } if reason.contains(why)),
            "{answer:?}"
        )
    };
    let control = net::proto::CONTROL;
    refused(
        &hello_with(&other_dir, &root, control.clone(), Some("../hq"), vec![]).await,
        "site",
    );
    refused(
        &hello_with(&other_dir, &root, control.clone(), Some(""), vec![]).await,
        "site",
    );
    refused(
        &hello_with(
            &other_dir,
            &root,
            control.clone(),
            None,
            vec!["not an address".into()],
        )
        .await,
        "not a multiaddr",
    );
    let many = vec!["/ip4/192.0.2.1/tcp/1".to_string(); 9];
    refused(
        &hello_with(&other_dir, &root, control.clone(), None, many).await,
        "over the limit",
    );
    // A member of the tree that is not at the site is no sibling: its certificate
    // names no site (it never declared one).
    refused(
        &hello_with(&other_dir, &members[0], net::proto::SIBLINGS, None, vec![]).await,
        "not at",
    );
    // The site member refuses it for chunks as well, and keeps running.
    let req = ChunkRequest {
        base: None,
        count: 1,
        first: 0,
        direct: false,
        update: Hash::of(b"x"),
    };
    let key = SecretKey::read(&other_dir.join("node.key")).expect("key");
    let (kind, reason) = probe::chunks(&key, members[0].addr.clone(), members[0].key, req)
        .await
        .expect("an answer");
    assert_eq!(
        kind,
        net::proto::CHUNK_REFUSED,
        "{}",
        String::from_utf8_lossy(&reason)
    );
    assert_eq!(members[0].status().await["parent"]["connected"], true);
    // A well-formed hello from the same child is still welcome.
    assert!(matches!(
        hello_with(&other_dir, &root, control, Some("hq"), vec![]).await,
        ControlFrame::Welcome { .. }
    ));
    for n in members {
        n.stop().await;
    }
    root.stop().await;
}

/// A copy of the input `v1` in `dir` with 5% of its engine's bytes rewritten in 512
/// evenly spread runs of fresh noise: every 64 KiB chunk is touched.
fn second_version(v1: &Path, dir: &Path, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::copy(v1.join("README"), dir.join("README")).expect("copy");
    let mut bytes = std::fs::read(v1.join("bin/engine")).expect("read");
    let (size, runs) = (bytes.len(), 512);
    let run = size / 20 / runs;
    for i in 0..runs {
        let at = i * size / runs + size / (2 * runs);
        bytes[at..at + run].copy_from_slice(&noise(run, seed + i as u64));
    }
    std::fs::write(dir.join("bin/engine"), bytes).expect("write");
    dir.to_path_buf()
}

fn update_figure(status: &serde_json::Value, update: &Hash, key: &str) -> u64 {
    status["updates"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["update_id"] == update.to_hex()))
        .and_then(|u| u[key].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_moves_only_its_changed_bytes_down_every_link() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let v1 = input(&base.join("v1"), 8, 31);
    Node::init_root(&base.join("root")).expect("init");
    let mut opts = options(&base.join("root"));
    // The root's first two deltas arrive damaged: caught, and fetched again.
    opts.corrupt_first_deltas = 2;
    let root = start_with(opts).await.expect("root starts");
    let branch = child(&root, &base.join("branch"), false).await;
    let leaf = child(&branch, &base.join("leaf"), true).await;
    let first = publish(&root, &v1, "1.0").await;
    branch.wait(&first).await;
    leaf.wait(&first).await;
    let v2 = second_version(&v1, &base.join("v2"), 32);
    let second = publish(&root, &v2, "2.0").await;
    branch.wait(&second).await;
    leaf.wait(&second).await;
    let size = bytes_held(&root.status().await, &second);
    for (name, node) in [("branch", &branch), ("leaf", &leaf)] {
        let s = node.status().await;
        let moved = update_figure(&s, &second, "bytes_in");
        assert!(
            moved > 0 && moved * 10 <= size,
            "the {name} took {moved} bytes for a 2.0 of {size}"
        );
    }
    assert_eq!(branch.status().await["bad_chunks"], 2);
    assert_eq!(leaf.status().await["bad_chunks"], 0);
    let (b, l) = (branch.stop().await, leaf.stop().await);
    root.stop().await;
    for (dir, out) in [(&b, "out-branch"), (&l, "out-leaf")] {
        assert_identical_export(dir, &first, &v1, &base.join(out).join("1"));
        assert_identical_export(dir, &second, &v2, &base.join(out).join("2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_pass_a_new_version_on_as_deltas_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let v1 = input(&base.join("v1"), 8, 41);
    let root = root(&base.join("root")).await;
    let nodes = site(&root, base, 0, &[0, 0, 0]).await;
    let first = publish(&root, &v1, "1.0").await;
    for n in &nodes {
        n.wait(&first).await;
    }
    let v2 = second_version(&v1, &base.join("v2"), 42);
    let second = publish(&root, &v2, "2.0").await;
    for n in &nodes {
        n.wait(&second).await;
    }
    let size = bytes_held(&root.status().await, &second);
    // Across the site's uplink, one delta's worth; between the siblings, deltas too.
    let uplink = update_figure(&root.status().await, &second, "bytes_out");
    assert!(
        uplink > 0 && uplink * 10 <= size,
        "{uplink} bytes of 2.0 crossed the uplink; it has {size}"
    );
    let mut shared = 0;
    for n in &nodes {
        let s = n.status().await;
        let moved = update_figure(&s, &second, "bytes_in");
        assert!(moved * 10 <= size, "a member took {moved} bytes of {size}");
        shared += update_figure(&s, &second, "bytes_out");
    }
    assert!(shared > 0, "the siblings shared nothing of 2.0");
    let mut dirs = Vec::new();
    for n in nodes {
        dirs.push(n.stop().await);
    }
    root.stop().await;
    for (i, d) in dirs.iter().enumerate() {
        assert_identical_export(d, &second, &v2, &base.join(format!("out{i}")));
    }
}
