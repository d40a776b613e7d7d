//! Faults of a node's own disk, with real `arbor` processes on loopback: a store whose
//! pack was damaged while the node was stopped heals itself, and a node whose disk
//! fills up reports it, keeps what it committed, and carries on by itself once space
//! returns, fetching again only what it had not committed.
//!
//! The full-disk test mounts a small tmpfs, so it needs root (CI runs as root);
//! elsewhere it says so and returns.

mod common;

use arbor::content::Hash;
use arbor::node::Node;
use common::{HANG, Process, Tmpfs, arbor, arbor_json, arbor_ok, is_root, noise};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A root with one update published and approved for its whole tree, running.
struct Tree {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: String,
    input: PathBuf,
    update: String,
    /// Bytes of the update (its one big file and a README).
    size: u64,
    root_proc: Option<Process>,
}

impl Tree {
    fn new(mib: usize) -> Tree {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().to_path_buf();
        let input = base.join("input");
        std::fs::create_dir_all(input.join("bin")).expect("mkdir");
        std::fs::write(input.join("bin/engine"), noise(mib << 20, 25)).expect("write");
        std::fs::write(input.join("README"), b"sample\n").expect("write");
        let root = common::root_node(&base);
        let update = arbor_ok(&common::publish_args(&root, "1.0", &path_str(&input)))
            .trim()
            .to_string();
        let root_proc = Process::start(&root, &[], &[]);
        Tree {
            _tmp: tmp,
            base,
            root,
            input,
            update,
            size: (mib << 20) as u64 + 7,
            root_proc: Some(root_proc),
        }
    }

    fn approve(&self) {
        arbor_ok(&[
            "approve",
            "--data",
            &self.root,
            &self.update,
            "--group",
            "all",
            "--subtree",
        ]);
    }

    /// Creates a node in `dir` that joins under the running node `parent`.
    fn join(&self, parent: &str, dir: &Path) -> String {
        let token = arbor_ok(&["token", "--data", parent]).trim().to_string();
        let dir = path_str(dir);
        arbor_ok(&["init", "--data", &dir, "--join", &token]);
        dir
    }

    /// Waits until `node` holds the update whole and durably.
    fn wait(&self, node: &str, limit: &str) {
        arbor_ok(&["wait", "--data", node, "--timeout", limit, &self.update]);
    }

    /// Exports the update from the stopped node `data` and checks every byte.
    fn assert_identical_export(&self, data: &str, out: &str) {
        let out = self.base.join(out);
        arbor_ok(&[
            "export",
            "--data",
            data,
            &self.update,
            "--out",
            &path_str(&out),
        ]);
        for rel in ["bin/engine", "README"] {
            assert!(
                std::fs::read(self.input.join(rel)).expect("input")
                    == std::fs::read(out.join(rel)).expect("export"),
                "{rel} differs in the export of {data}"
            );
        }
    }

    /// The root's view of its child's state of the update: state and reason.
    fn child_state(&self) -> Option<(String, String)> {
        let tree = arbor_json(&["status", "--data", &self.root, "--tree"]);
        let u = tree["tree"]["children"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["updates"].as_array().cloned().unwrap_or_default())
            .find(|u| u["update_id"] == self.update.as_str())?;
        Some((
            u["state"].as_str().unwrap_or("").to_string(),
            u["reason"].as_str().unwrap_or("").to_string(),
        ))
    }

    /// Bytes the root has sent its children: over the WAN.
    fn sent_by_root(&self) -> u64 {
        let s = arbor_json(&["status", "--data", &self.root]);
        s["children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["bytes_sent"].as_u64())
            .sum()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(p) = self.root_proc.take() {
            p.stop();
        }
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// Polls `check` until it gives a value, at most [`HANG`].
fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Flips 8 bytes in the middle of `n` chunks of the stopped node `data`; returns them.
fn damage_chunks(data: &str, n: usize) -> Vec<Hash> {
    let node = Node::open(Path::new(data)).expect("open node");
    let chunks = node.store.chunk_index_page(None, n).expect("index");
    for (_, loc) in &chunks {
        let pack = Path::new(data)
            .join("packs")
            .join(format!("{:08}.pack", loc.pack));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pack)
            .expect("open pack");
        let at = loc.offset + u64::from(loc.len) / 2;
        let mut bytes = [0u8; 8];
        f.read_exact_at(&mut bytes, at).expect("read");
        f.write_all_at(&bytes.map(|b| !b), at).expect("write");
    }
    chunks.into_iter().map(|(h, _)| h).collect()
}

#[test]
fn a_damaged_store_heals_itself_and_a_new_leaf_completes_within_30_s() {
    let tree = Tree::new(8);
    tree.approve();
    let branch = tree.join(&tree.root, &tree.base.join("branch"));
    let branch_proc = Process::start(&branch, &[], &[]);
    tree.wait(&branch, "2m");
    branch_proc.stop();

    let damaged = damage_chunks(&branch, 2);
    let before = arbor(&["verify", "--data", &branch]);
    let said = String::from_utf8_lossy(&before.stdout);
    assert!(!before.status.success(), "the damage went unseen: {said}");
    for chunk in &damaged {
        assert!(said.contains(&chunk.to_hex()), "{chunk} not named: {said}");
    }

    let branch_proc = Process::start(&branch, &[], &[]);
    let leaf = tree.join(&branch, &tree.base.join("leaf"));
    let started = Instant::now();
    let leaf_proc = Process::start(&leaf, &[], &[]);
    tree.wait(&leaf, "30s");
    let took = started.elapsed();
    println!("the new leaf completed in {:.1} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(30), "took {took:?}");
    leaf_proc.stop();
    branch_proc.stop();
    tree.assert_identical_export(&leaf, "out-leaf");

    // No operator action: the branch quarantined its damaged copies and fetched them
    // again, and its verify is clean, noting the old records it no longer uses.
    let after = arbor_ok(&["verify", "--data", &branch]);
    assert!(after.contains("ok: 1 updates"), "{after}");
    assert!(
        after.contains("2 damaged chunk records were quarantined"),
        "{after}"
    );
    tree.assert_identical_export(&branch, "out-branch");
}

/// Bytes free on the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path_str(path)).expect("no NUL");
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs to fill.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0, "statvfs");
    s.f_bavail as u64 * s.f_frsize as u64
}

/// The leaf's engine's count of the update's bytes it holds.
fn held(leaf: &str) -> u64 {
    let s = arbor_json(&["status", "--data", leaf]);
    s["updates"][0]["bytes_held"].as_u64().unwrap_or(0)
}

#[test]
fn a_full_disk_loses_nothing_and_recovers_by_itself() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let tree = Tree::new(16);
    let disk = tree.base.join("disk");
    let _mount = Tmpfs::mount(&disk, "size=32m");
    let leaf = tree.join(&tree.root, &disk.join("leaf"));
    // 4 MiB/s: the disk fills over a few seconds, as from a WAN link.
    let leaf_proc = Process::start(&leaf, &["--max-download", "4MiB/s"], &[]);
    // Room for half the update.
    let filler = disk.join("filler");
    let room = 8u64 << 20;
    let fill = free_bytes(&disk).saturating_sub(room);
    std::fs::write(&filler, vec![1u8; fill as usize]).expect("fill the disk");
    tree.approve();

    // The leaf says it failed, and why, up the tree.
    let why = until("the root seeing the leaf fail", || {
        tree.child_state()
            .filter(|(state, _)| state == "failed")
            .map(|(_, why)| why)
    });
    assert!(why.contains("No space left on device"), "{why}");
    // It asks for nothing new while it cannot write: once the requests in flight are
    // answered, what the root sends stays the same (here for 1.5 s running).
    let (mut last, mut same) = (tree.sent_by_root(), 0);
    let sent_in_fault = until("the transfer settling", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = tree.sent_by_root();
        same = if std::mem::replace(&mut last, now) == now {
            same + 1
        } else {
            0
        };
        (same == 3).then_some(now)
    });
    let kept = held(&leaf);
    println!(
        "disk full: {why}; {kept} bytes held of {}, {sent_in_fault} sent",
        tree.size
    );
    assert!(
        kept >= 2 << 20,
        "only {kept} bytes were committed before the disk filled"
    );

    std::fs::remove_file(&filler).expect("free the space");
    tree.wait(&leaf, "2m");
    // Complete means durable: killed at once, the leaf still holds all of it.
    leaf_proc.kill();
    let sent_after = tree.sent_by_root() - sent_in_fault;
    println!(
        "after the space returned: {sent_after} bytes fetched, {} lacking; {} sent in all for {} bytes",
        tree.size - kept,
        sent_in_fault + sent_after,
        tree.size
    );
    assert!(
        sent_after <= tree.size - kept,
        "fetched {sent_after} bytes after the space returned, for {} lacking: committed chunks came again",
        tree.size - kept
    );
    let verify = arbor_ok(&["verify", "--data", &leaf]);
    assert!(verify.contains("ok: 1 updates"), "{verify}");
    tree.assert_identical_export(&leaf, "out-leaf");
}
