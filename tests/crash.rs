//! Crash safety: SIGKILL an `arbor publish` in the middle, then check the store.
//!
//! After the kill the update must be either fully present or not listed, `verify` must
//! pass, and publishing again must complete, reusing the chunks already committed.
//! The kill is placed by the child's own log ("committed chunk batch"), not by timing.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// 320 MiB: five 64 MiB batches, so a kill after the first lands mid-publish.
const INPUT_BYTES: usize = 320 << 20;
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// Starts a publish and kills it once it has logged `batches` committed batches.
/// Returns whether the publish had finished first.
fn publish_and_kill(data: &str, input: &str, batches: usize) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(publish_args(data, "1.0", input))
        .env("RUST_LOG", "arbor=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arbor publish");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("committed chunk batch") {
                seen += 1;
                if seen == batches {
                    let _ = tx.send(());
                }
            }
        }
    });
    let reached = rx.recv_timeout(HANG_LIMIT);
    let finished = matches!(child.try_wait(), Ok(Some(_)));
    child.kill().expect("kill publish");
    child.wait().expect("reap publish");
    assert!(
        reached.is_ok() || finished,
        "publish neither logged a batch nor finished in {HANG_LIMIT:?}"
    );
    finished
}

#[test]
fn sigkill_during_publish_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let input_path = tmp.path().join("big.bin");
    std::fs::write(&input_path, noise(INPUT_BYTES, 77)).expect("write input");
    let input = input_path.to_str().expect("utf-8").to_string();

    let mut interrupted = 0;
    for batches in [1, 2] {
        let finished = publish_and_kill(&data, &input, batches);
        let listed = arbor_json(&["updates", "--data", &data])
            .as_array()
            .expect("array")
            .len();
        let verify = arbor(&["verify", "--data", &data]);
        assert!(
            verify.status.success(),
            "verify failed after a kill: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        if listed == 0 {
            interrupted += 1;
        } else {
            assert!(finished || listed == 1, "a partial update is listed");
            break;
        }
    }
    assert!(interrupted > 0, "no kill landed mid-publish");

    // Publishing again completes and reuses what the killed runs committed.
    let done = arbor_json(&publish_args(&data, "1.0", &input));
    assert_eq!(done["bytes"], INPUT_BYTES as u64);
    assert!(
        done["new_bytes"].as_u64().expect("new_bytes") < INPUT_BYTES as u64,
        "nothing committed before the kill was reused"
    );
    assert!(arbor_ok(&["verify", "--data", &data]).starts_with("ok:"));
    let out = tmp.path().join("out");
    let id = update_id(&done);
    arbor_ok(&export_args(&data, &id, &out));
    let exported = std::fs::read(out.join("big.bin")).expect("read export");
    assert!(
        exported == std::fs::read(&input_path).expect("read input"),
        "export differs from input"
    );
}
