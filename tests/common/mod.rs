//! Helpers shared by the integration tests: running the `arbor` binary and making inputs.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::Path;
use std::process::{Command, Output};

pub fn arbor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the arbor binary runs")
}

/// Runs arbor, asserts success, returns stdout.
pub fn arbor_ok(args: &[&str]) -> String {
    let out = arbor(args);
    assert!(
        out.status.success(),
        "arbor {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs arbor with --json, asserts success, parses stdout.
pub fn arbor_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&arbor_ok(&all)).expect("stdout is JSON")
}

/// Runs arbor, asserts failure, returns stderr.
pub fn arbor_err(args: &[&str]) -> String {
    let out = arbor(args);
    assert!(
        !out.status.success(),
        "arbor {args:?} succeeded but should have failed"
    );
    String::from_utf8(out.stderr).expect("stderr is UTF-8")
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Creates a root node in `dir/root` and returns its path as a string.
pub fn root_node(dir: &Path) -> String {
    let data = dir.join("root");
    arbor_ok(&[
        "init",
        "--data",
        data.to_str().expect("utf-8 path"),
        "--root",
    ]);
    data.to_str().expect("utf-8 path").to_string()
}

/// Arguments for `arbor publish` of module acme/plugins/viewer.
pub fn publish_args<'a>(data: &'a str, version: &'a str, path: &'a str) -> Vec<&'a str> {
    vec![
        "publish",
        "--data",
        data,
        "--tenant",
        "acme",
        "--category",
        "plugins",
        "--id",
        "viewer",
        "--version",
        version,
        path,
    ]
}

/// Arguments for `arbor export`.
pub fn export_args<'a>(data: &'a str, id: &'a str, out: &'a Path) -> Vec<&'a str> {
    vec![
        "export",
        "--data",
        data,
        id,
        "--out",
        out.to_str().expect("utf-8 path"),
    ]
}

/// The update id in a `publish --json` answer.
pub fn update_id(published: &serde_json::Value) -> String {
    published["update_id"]
        .as_str()
        .expect("update_id is a string")
        .to_string()
}
