//! Three defects found by trying arbor as a new user would (issue 25), each with the
//! test that failed before its fix: reading the groups signed the rules anew, a child's
//! report that came shortly before a clean stop was lost, and nodes joining at the same
//! moment failed and exited. `arbor run` processes on loopback.

mod common;

use arbor::admin;
use arbor::net::command::{GroupRequest, Request};
use common::{HANG, Process, arbor_json, arbor_ok, noise, publish_args, update_id};
use std::path::Path;
use std::time::{Duration, Instant};

fn init_root(base: &Path) -> String {
    let dir = base.join("root");
    let dir = dir.to_str().expect("utf-8").to_string();
    arbor_ok(&["init", "--data", &dir, "--root"]);
    dir
}

fn init_child(parent: &str, base: &Path, name: &str) -> String {
    let token = arbor_ok(&["token", "--data", parent]);
    let dir = base.join(name);
    let dir = dir.to_str().expect("utf-8").to_string();
    arbor_ok(&["init", "--data", &dir, "--join", token.trim()]);
    dir
}

/// Publishes 2 MiB on the running root; returns the update id.
fn publish(root: &str, base: &Path) -> String {
    let input = base.join("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("data.bin"), noise(2 << 20, 5)).expect("write");
    let mut args = publish_args(root, "1.0", input.to_str().expect("utf-8"));
    args.push("--json");
    update_id(&serde_json::from_str(&arbor_ok(&args)).expect("json"))
}

/// The state of `update` at node `node` in a tree the admin API answered.
fn state_of(tree: &serde_json::Value, node: &str, update: &str) -> Option<String> {
    if tree["node_id"] == node {
        return tree["updates"]
            .as_array()?
            .iter()
            .find(|u| u["update_id"] == update)
            .and_then(|u| u["state"].as_str())
            .map(str::to_string);
    }
    let nested = tree
        .as_object()?
        .values()
        .chain(tree.as_array().into_iter().flatten());
    nested
        .filter(|v| v.is_object() || v.is_array())
        .find_map(|v| match v {
            serde_json::Value::Array(items) => items.iter().find_map(|i| state_of(i, node, update)),
            v => state_of(v, node, update),
        })
}

fn call(dir: &str, req: Request) -> serde_json::Value {
    admin::call(Path::new(dir), &req, Duration::from_secs(30)).expect("the node answers")
}

/// The version of the rules `dir`'s node signed itself.
fn own_rules_version(dir: &str) -> Option<u64> {
    call(dir, Request::Status)["rules"]
        .as_array()?
        .iter()
        .find(|r| r["own"] == true)?["version"]
        .as_u64()
}

#[test]
fn no_read_only_request_signs_the_rules_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root_dir = init_root(base);
    let _root = Process::start(&root_dir, &[], &[]);
    let child_dir = init_child(&root_dir, base, "child");
    let child = Process::start(&child_dir, &[], &[]);
    arbor_ok(&["group", "create", "--data", &root_dir, "pilot"]);
    let id = arbor_json(&["status", "--data", &child_dir])["node_id"]
        .as_str()
        .expect("id")
        .to_string();
    arbor_ok(&["group", "assign", "--data", &root_dir, "pilot", &id]);
    let update = publish(&root_dir, base);
    arbor_ok(&["approve", "--data", &root_dir, &update, "--group", "pilot"]);
    let version = own_rules_version(&root_dir).expect("the root signed rules");
    let kept = |p: &Process| {
        p.log()
            .iter()
            .filter(|l| l.contains("rules received and kept"))
            .count()
    };
    // The child has the rules once they stop coming.
    let deadline = Instant::now() + HANG;
    let mut seen = kept(&child);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = kept(&child);
        if now == seen && now > 0 {
            break;
        }
        seen = now;
        assert!(
            Instant::now() < deadline,
            "the rules never reached the child"
        );
    }
    // What the web UI asks every second, for a minute's worth, and the CLI's reads.
    for _ in 0..60 {
        call(&root_dir, Request::Status);
        call(&root_dir, Request::Group(GroupRequest::List));
        call(&root_dir, Request::Approvals);
        call(&root_dir, Request::Tree);
        call(&root_dir, Request::Updates);
        call(&root_dir, Request::Reports);
        call(&root_dir, Request::Metrics);
    }
    arbor_ok(&["group", "list", "--data", &root_dir]);
    // Assigning what is assigned already changes nothing either.
    arbor_ok(&["group", "assign", "--data", &root_dir, "pilot", &id]);
    assert_eq!(own_rules_version(&root_dir), Some(version));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(kept(&child), seen, "the child was sent new rules");
}

#[test]
fn a_report_that_came_just_before_a_clean_stop_survives_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root_dir = init_root(base);
    let root = Process::start(&root_dir, &[], &[]);
    let leaf_dir = init_child(&root_dir, base, "leaf");
    let leaf = Process::start(&leaf_dir, &[], &[]);
    let update = publish(&root_dir, base);
    arbor_ok(&[
        "approve",
        "--data",
        &root_dir,
        &update,
        "--group",
        "all",
        "--subtree",
    ]);
    // The moment the root holds the leaf's report that it is done, it is stopped.
    let leaf_id = arbor_json(&["status", "--data", &leaf_dir])["node_id"]
        .as_str()
        .expect("id")
        .to_string();
    let done = |tree: &serde_json::Value| {
        state_of(tree, &leaf_id, &update).as_deref() == Some("downloaded")
    };
    let deadline = Instant::now() + HANG;
    while !done(&call(&root_dir, Request::Tree)) {
        assert!(Instant::now() < deadline, "the leaf never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    root.stop();
    // The leaf is gone when the root comes back: it cannot report again.
    leaf.stop();
    let _root = Process::start(&root_dir, &[], &[]);
    let tree = call(&root_dir, Request::Tree);
    assert!(
        done(&tree),
        "the root forgot the leaf's last report: {tree}"
    );
}

#[test]
fn thirty_two_nodes_joining_at_once_all_join() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root_dir = init_root(base);
    let _root = Process::start(&root_dir, &[], &[]);
    let dirs: Vec<String> = (0..32)
        .map(|i| init_child(&root_dir, base, &format!("node-{i}")))
        .collect();
    // Every first run at once: each joins, then listens.
    let nodes: Vec<Process> = std::thread::scope(|s| {
        let started: Vec<_> = dirs
            .iter()
            .map(|d| s.spawn(move || Process::start(d, &[], &[])))
            .collect();
        started
            .into_iter()
            .map(|h| h.join().expect("a node came up"))
            .collect()
    });
    let deadline = Instant::now() + HANG;
    loop {
        let status = call(&root_dir, Request::Status);
        let connected = status["children"]
            .as_array()
            .map_or(0, |c| c.iter().filter(|c| c["connected"] == true).count());
        if connected == 32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{connected} of 32 children connected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(nodes);
}

#[test]
fn a_node_whose_parent_is_down_when_it_first_runs_keeps_trying_and_joins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root_dir = init_root(base);
    let root = Process::start(&root_dir, &[], &[]);
    let addr = arbor_json(&["status", "--data", &root_dir])["listen"][0]
        .as_str()
        .expect("an address")
        .to_string();
    let child_dir = init_child(&root_dir, base, "child");
    root.stop();
    // The root comes back a few seconds after the child first tries, where its token
    // says it listens.
    let back = std::thread::spawn({
        let root_dir = root_dir.clone();
        move || {
            std::thread::sleep(Duration::from_secs(3));
            Process::start(&root_dir, &["--listen", &addr], &[])
        }
    });
    // Comes up only once it has joined.
    let _child = Process::start(&child_dir, &[], &[]);
    let _root = back.join().expect("the root came back");
    let status = arbor_json(&["status", "--data", &child_dir]);
    assert!(status["parent"].is_object(), "{status}");
}
