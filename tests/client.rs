//! Clients end to end, with real `arbor` processes on loopback: a root publishes and
//! approves, a client joined with `arbor token --client` and run with `--install-dir`
//! installs, upgrades, rolls back, detects and repairs damage, survives a crash at the
//! switch point, catches up after being offline, runs hooks only when allowed, keeps or
//! removes withdrawn modules as configured, and reports all of it up the tree.
//!
//! Tests that mount a small or read-only tmpfs need root (CI runs as root); elsewhere
//! they say so and return.

mod common;

use common::{HANG, Process, Tmpfs, arbor, arbor_err, arbor_json, arbor_ok, is_root, noise};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MODULE: &str = "acme/plugins/viewer";

/// A root node, running, and a client joined under it (not started).
struct Fleet {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: String,
    client: String,
    install: PathBuf,
    root_proc: Option<Process>,
}

impl Fleet {
    fn new() -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().to_path_buf();
        let root = common::root_node(&base);
        let root_proc = Process::start(&root, &[], &[]);
        let token = arbor_ok(&["token", "--data", &root, "--client"])
            .trim()
            .to_string();
        let client = path_str(&base.join("client"));
        arbor_ok(&["init", "--data", &client, "--join", &token]);
        Fleet {
            install: base.join("modules"),
            _tmp: tmp,
            base,
            root,
            client,
            root_proc: Some(root_proc),
        }
    }

    /// Starts the client with `--install-dir` and `extra` flags.
    fn client(&self, extra: &[&str]) -> Process {
        self.client_env(extra, &[])
    }

    fn client_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Process {
        let install = path_str(&self.install);
        let mut args = vec!["--install-dir", install.as_str()];
        args.extend_from_slice(extra);
        Process::start(&self.client, &args, env)
    }

    /// Writes version `n` of the module's input (`bin/viewer` changes a little each
    /// version) and publishes it with `extra` flags; returns the update id.
    fn publish(&self, n: u64, extra: &[&str]) -> String {
        let input = self.write_input(n);
        let version = format!("{n}.0");
        let mut args = common::publish_args(&self.root, &version, &input);
        args.extend_from_slice(extra);
        arbor_ok(&args).trim().to_string()
    }

    /// Publishes version `n` on a scratch root, exports it as a module package, and
    /// imports that on this fleet's (running) root.
    fn publish_package(&self, n: u64) -> String {
        let input = self.write_input(n);
        let scratch = common::root_node(&self.base.join(format!("scratch-{n}")));
        let version = format!("{n}.0");
        let id = arbor_ok(&common::publish_args(&scratch, &version, &input))
            .trim()
            .to_string();
        let package = path_str(&self.base.join(format!("viewer-{n}.xml")));
        arbor_ok(&[
            "package", "export", "--data", &scratch, &id, "--out", &package,
        ]);
        arbor_ok(&["publish", "--data", &self.root, "--from-xml", &package])
            .trim()
            .to_string()
    }

    fn write_input(&self, n: u64) -> String {
        let dir = self.base.join(format!("input-{n}"));
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        let mut body = noise(2 << 20, 11);
        body[(n as usize) * 4096..(n as usize) * 4096 + 8].copy_from_slice(&n.to_le_bytes());
        std::fs::write(dir.join("bin/viewer"), body).expect("write");
        std::fs::write(dir.join("README"), format!("version {n}\n")).expect("write");
        path_str(&dir)
    }

    /// Publishes version `n` and approves it for the whole tree.
    fn release(&self, n: u64) -> String {
        let update = self.publish(n, &[]);
        self.approve(&update);
        update
    }

    fn approve(&self, update: &str) {
        arbor_ok(&[
            "approve",
            "--data",
            &self.root,
            update,
            "--group",
            "all",
            "--subtree",
        ]);
    }

    fn decline(&self, update: &str) {
        arbor_ok(&["decline", "--data", &self.root, update, "--group", "all"]);
    }

    fn input(&self, n: u64) -> PathBuf {
        self.base.join(format!("input-{n}"))
    }

    fn module_dir(&self) -> PathBuf {
        self.install.join(MODULE)
    }

    /// The client's installed modules, as its status shows them.
    fn installed(&self) -> serde_json::Value {
        arbor_json(&["status", "--data", &self.client])["installed"]["modules"].clone()
    }

    /// Polls the client's status until `check` holds for its module list.
    fn until_installed(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + HANG;
        loop {
            let modules = self.installed();
            if check(&modules) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never happened: {modules:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn until_current(&self, version: &str) {
        self.until_installed(&format!("{MODULE} {version} installed"), |m| {
            m[0]["current"]["version"] == version
        });
    }

    /// Polls the root's view of the tree until the client's state of `update` is
    /// `state` with a reason containing `reason`.
    fn until_root_sees(&self, update: &str, state: &str, reason: &str) -> String {
        let deadline = Instant::now() + HANG;
        loop {
            let tree = arbor_json(&["status", "--data", &self.root, "--tree"]);
            let found = tree["tree"]["children"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["updates"].as_array().cloned().unwrap_or_default())
                .find(|u| u["update_id"] == update);
            // A client's failure goes up with its proof (PROTOCOL.md §15.7).
            if let Some(u) = &found
                && u["state"] == state
                && u["reason"].as_str().unwrap_or("").contains(reason)
            {
                if state == "failed" {
                    assert_eq!(u["proven"], true, "a failure without its proof: {u}");
                }
                return u["reason"].as_str().unwrap_or("").to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the root never saw {update} {state} ({reason}): {found:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the installed module is exactly input `n`, files and modes.
    fn assert_is(&self, n: u64) {
        for rel in ["bin/viewer", "README"] {
            assert!(
                std::fs::read(self.input(n).join(rel)).expect("input")
                    == std::fs::read(self.module_dir().join(rel)).expect("installed"),
                "{rel} is not that of version {n}"
            );
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(p) = self.root_proc.take() {
            p.stop();
        }
    }
}

/// `arbor publish` flags for a post-install command `sh -c SCRIPT`.
fn hook(script: &str) -> [&str; 6] {
    [
        "--post-install",
        "sh",
        "--post-install-arg",
        "-c",
        "--post-install-arg",
        script,
    ]
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// Runs the fleet's client with `--install-dir dir`, which must fail; its stderr.
fn refused_start(fleet: &Fleet, dir: &Path) -> String {
    let dir = path_str(dir);
    arbor_err(&[
        "run",
        "--data",
        &fleet.client,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--install-dir",
        &dir,
    ])
}

#[test]
fn a_client_installs_upgrades_rolls_back_and_repairs() {
    let fleet = Fleet::new();
    let v1 = fleet.release(1);
    let client = fleet.client(&[]);

    // v1 is installed exactly as published, with its metadata beside it.
    fleet.until_current("1.0");
    fleet.assert_is(1);
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fleet.module_dir().join("../meta.json")).expect("meta.json"),
    )
    .expect("meta.json is JSON");
    assert_eq!(meta["tenant"], "acme");
    assert_eq!(meta["version"], "1.0");
    assert_eq!(meta["update_id"], v1);
    assert!(meta["installed_at"].as_u64().is_some());
    assert_eq!(meta["files"].as_array().map(Vec::len), Some(2));
    fleet.until_root_sees(&v1, "installed", "");

    // v2: the client upgrades, fetching only the chunks that changed.
    let before = arbor_json(&["status", "--data", &fleet.client])["parent"]["bytes_received"]
        .as_u64()
        .expect("counter");
    let v2 = fleet.release(2);
    fleet.until_current("2.0");
    fleet.assert_is(2);
    let fetched = arbor_json(&["status", "--data", &fleet.client])["parent"]["bytes_received"]
        .as_u64()
        .expect("counter")
        - before;
    assert!(
        fetched < 512 << 10,
        "the upgrade fetched {fetched} bytes for a change of 8 bytes"
    );
    assert_eq!(fleet.installed()[0]["previous"]["version"], "1.0");
    fleet.until_root_sees(&v2, "installed", "in place of 1.0");

    // Rollback restores v1 and holds v2 back; the root hears why.
    let out = arbor_ok(&["rollback", "--data", &fleet.client, MODULE]);
    assert!(out.contains("back on 1.0"), "{out}");
    fleet.assert_is(1);
    fleet.until_root_sees(&v2, "failed", "rolled back to 1.0");
    fleet.until_root_sees(&v1, "installed", "rolled back from 2.0");
    assert_eq!(fleet.installed()[0]["held"], v2);
    let err = arbor_err(&["rollback", "--data", &fleet.client, "acme/plugins"]);
    assert!(err.contains("TENANT/CATEGORY/ID"), "{err}");

    // A tampered file and a deleted one are detected, by checksum, and repaired.
    let readme = fleet.module_dir().join("README");
    std::fs::write(&readme, "tampered\n").expect("tamper");
    std::fs::remove_file(fleet.module_dir().join("bin/viewer")).expect("delete");
    std::fs::write(fleet.module_dir().join("planted"), "x").expect("plant");
    let out = arbor(&["check", "--data", &fleet.client]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("README modified")
            && text.contains("bin/viewer missing")
            && text.contains("planted extra"),
        "{text}"
    );
    let out = arbor_ok(&["check", "--data", &fleet.client, "--repair"]);
    assert!(out.contains("repaired"), "{out}");
    let out = arbor_ok(&["check", "--data", &fleet.client]);
    assert!(out.contains(&format!("{MODULE} 1.0: ok")), "{out}");
    fleet.assert_is(1);
    assert!(!fleet.module_dir().join("planted").exists());

    // v3 is newer than the held-back v2: it installs.
    fleet.release(3);
    fleet.until_current("3.0");
    fleet.assert_is(3);
    assert!(fleet.installed()[0]["held"].is_null());
    client.stop();
}

#[test]
fn a_client_killed_at_the_switch_point_recovers_to_a_complete_version() {
    let fleet = Fleet::new();
    fleet.release(1);
    let client = fleet.client(&[]);
    fleet.until_current("1.0");
    client.stop();

    // The client dies between switching `.previous` and the module link.
    fleet.release(2);
    let crashing = fleet.client_env(&[], &[("ARBOR_TEST_ABORT_AT_SWITCH", "1")]);
    let status = crashing.wait_for_exit();
    assert!(!status.success(), "the fault did not fire: {status}");
    // What is installed is the complete old version: every file, every checksum.
    fleet.assert_is(1);
    let meta = std::fs::read_to_string(fleet.module_dir().join("../meta.json")).expect("meta");
    assert!(meta.contains("\"1.0\""), "{meta}");

    // Restarted, it checks clean and finishes the upgrade.
    let client = fleet.client(&[]);
    fleet.until_current("2.0");
    fleet.assert_is(2);
    let out = arbor_ok(&["check", "--data", &fleet.client]);
    assert!(out.contains(&format!("{MODULE} 2.0: ok")), "{out}");
    client.stop();
}

#[test]
fn a_client_offline_during_two_releases_installs_the_newest_approved_version() {
    let fleet = Fleet::new();
    fleet.release(1);
    let client = fleet.client(&[]);
    fleet.until_current("1.0");
    client.stop();

    let v2 = fleet.release(2);
    // v3 comes from the provider as a module package.
    let v3 = fleet.publish_package(3);
    fleet.approve(&v3);
    let client = fleet.client(&[]);
    fleet.until_current("3.0");
    fleet.assert_is(3);
    // v2 was never installed nor fetched: v3 went straight in over v1.
    assert_eq!(fleet.installed()[0]["previous"]["version"], "1.0");
    let status = arbor_json(&["status", "--data", &fleet.client]);
    let held = |u: &str| {
        status["updates"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["update_id"] == u)
            .and_then(|x| x["chunks_held"].as_u64())
    };
    let chunks = |u: &str| {
        status["updates"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["update_id"] == u)
            .and_then(|x| x["chunks"].as_u64())
    };
    // v2 shares all but its changed chunk with v1 and v3: that one never came.
    assert!(
        held(&v2) < chunks(&v2),
        "v2 was fetched: {:?} of {:?} chunks held",
        held(&v2),
        chunks(&v2)
    );
    assert_eq!(held(&v3), chunks(&v3));
    client.stop();
}

#[test]
fn hooks_run_only_when_allowed_with_a_timeout_and_their_outcome_is_reported() {
    let fleet = Fleet::new();
    let marker = fleet.base.join("hook-ran");
    let script = format!(
        "echo \"$ARBOR_VERSION $ARBOR_MODULE\" > {}",
        marker.display()
    );
    let v1 = fleet.publish(1, &hook(&script));
    fleet.approve(&v1);

    // Off by default: installed, the hook not run.
    let client = fleet.client(&[]);
    fleet.until_current("1.0");
    fleet.until_root_sees(&v1, "installed", "hooks are off");
    assert!(!marker.exists(), "a hook ran with hooks off");
    client.stop();

    // Allowed: it runs, in the module's directory, and the report says so.
    let client = fleet.client(&["--hooks"]);
    let v2 = fleet.publish(2, &hook(&script));
    fleet.approve(&v2);
    fleet.until_root_sees(&v2, "installed", "post-install hook ran");
    assert_eq!(
        std::fs::read_to_string(&marker).expect("the hook ran"),
        "2.0 viewer\n"
    );

    // A failing hook is reported with its exit status and last line.
    let v3 = fleet.publish(3, &hook("echo cannot configure >&2; exit 3"));
    fleet.approve(&v3);
    let why = fleet.until_root_sees(&v3, "failed", "post-install hook failed");
    assert!(
        why.contains("3") && why.contains("cannot configure"),
        "{why}"
    );
    fleet.assert_is(3);
    client.stop();

    // One that outlives its timeout is stopped, with its children.
    let client = fleet.client(&["--hooks", "--hook-timeout", "1s"]);
    let v4 = fleet.publish(4, &hook("sleep 600 & sleep 600"));
    fleet.approve(&v4);
    let why = fleet.until_root_sees(&v4, "failed", "did not finish within 1s");
    assert!(why.contains("stopped"), "{why}");
    client.stop();
}

#[test]
fn a_withdrawn_version_is_kept_by_default_and_removed_when_configured() {
    let fleet = Fleet::new();
    let v1 = fleet.release(1);
    let client = fleet.client(&[]);
    fleet.until_current("1.0");
    let v2 = fleet.release(2);

    // keep (the default): declining v2 changes nothing installed. (Were it to go back,
    // v1 is at hand: the switch would start as soon as the decline arrives, before
    // the check below could run.)
    fleet.until_current("2.0");
    fleet.decline(&v2);
    // The decline has reached the client once its parent's rules say v2 is gone.
    let deadline = Instant::now() + HANG;
    while arbor_json(&["status", "--data", &fleet.client])["updates"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|u| u["update_id"] == v2 && u["available"] == true)
    {
        assert!(Instant::now() < deadline, "the decline never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give the installer its next decision, then look: still 2.0.
    arbor_ok(&["check", "--data", &fleet.client]);
    assert_eq!(fleet.installed()[0]["current"]["version"], "2.0");
    fleet.assert_is(2);
    client.stop();

    // remove: back to the newest version still approved, then nothing.
    let client = fleet.client(&["--withdrawn", "remove"]);
    fleet.until_current("1.0");
    fleet.assert_is(1);
    fleet.until_root_sees(&v2, "downloaded", "replaced by 1.0");
    fleet.decline(&v1);
    fleet.until_installed("the module removed", |m| {
        m.as_array().is_some_and(Vec::is_empty)
    });
    assert!(!fleet.module_dir().exists());
    fleet.until_root_sees(&v1, "downloaded", "removed: no longer approved");
    client.stop();
}

#[test]
fn a_full_disk_keeps_the_previous_version_and_reports_the_failure() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let fleet = Fleet::new();
    // 2 MiB bodies: v1 fits in 3 MiB, v1 and v2 together do not.
    let _disk = Tmpfs::mount(&fleet.install, "size=3m");
    fleet.release(1);
    let client = fleet.client(&[]);
    fleet.until_current("1.0");
    let v2 = fleet.release(2);
    let why = fleet.until_root_sees(&v2, "failed", "install failed");
    assert!(why.contains("No space left on device"), "{why}");
    fleet.assert_is(1);
    let out = arbor_ok(&["check", "--data", &fleet.client]);
    assert!(out.contains(&format!("{MODULE} 1.0: ok")), "{out}");
    let versions = std::fs::read_dir(fleet.install.join("acme/plugins/.viewer.versions"))
        .expect("versions")
        .count();
    assert_eq!(versions, 1, "a staging directory was left behind");
    client.stop();
}

#[test]
fn an_install_dir_that_cannot_be_written_stops_the_client_at_start() {
    let fleet = Fleet::new();
    // A regular file where the directory should be.
    let file = fleet.base.join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let err = refused_start(&fleet, &file);
    assert!(err.contains("is unusable: it is not a directory"), "{err}");

    // Bad settings are refused before anything starts.
    let err = arbor_err(&[
        "run",
        "--data",
        &fleet.client,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--hooks",
    ]);
    assert!(err.contains("give --install-dir"), "{err}");
    std::fs::write(
        Path::new(&fleet.client).join("config.toml"),
        "install_dir = \"/tmp/x\"\nwithdrawn = \"sometimes\"\n",
    )
    .expect("write config");
    let err = arbor_err(&[
        "run",
        "--data",
        &fleet.client,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    assert!(
        err.contains("line 2") && err.contains("config.toml"),
        "{err}"
    );
    std::fs::remove_file(Path::new(&fleet.client).join("config.toml")).expect("rm config");

    if !is_root() {
        eprintln!("skipped the read-only case: mounting a tmpfs needs root");
        return;
    }
    let ro = fleet.base.join("ro");
    let _mount = Tmpfs::mount(&ro, "ro,size=1m");
    let err = refused_start(&fleet, &ro);
    assert!(
        err.contains("is not writable") && err.contains("Read-only file system"),
        "{err}"
    );
}

#[test]
fn a_repair_fetches_from_the_parent_what_the_store_lacks() {
    let fleet = Fleet::new();
    fleet.release(1);
    let client = fleet.client(&[]);
    fleet.until_current("1.0");
    client.stop();

    // The machine is set up again: a new node over the same install directory. It
    // recognises the installed version and fetches nothing...
    let token = arbor_ok(&["token", "--data", &fleet.root, "--client"])
        .trim()
        .to_string();
    let fresh = path_str(&fleet.base.join("fresh"));
    arbor_ok(&["init", "--data", &fresh, "--join", &token]);
    let install = path_str(&fleet.install);
    let node = Process::start(&fresh, &["--install-dir", &install], &[]);
    let received = |what: &str| {
        arbor_json(&["status", "--data", &fresh])["parent"]["bytes_received"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no counter"))
    };
    let out = arbor_ok(&["check", "--data", &fresh]);
    assert!(out.contains(&format!("{MODULE} 1.0: ok")), "{out}");
    assert_eq!(received("before the repair"), 0);

    // ... until a file is damaged: its chunks come from the parent, then the repair.
    std::fs::write(fleet.module_dir().join("bin/viewer"), "damaged").expect("damage");
    // Not repaired yet: exit 1, saying the chunks are on their way.
    let out = arbor(&["check", "--data", &fresh, "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("fetched from the parent"), "{text}");
    let deadline = Instant::now() + HANG;
    loop {
        let out = arbor(&["check", "--data", &fresh]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the repair never completed");
        std::thread::sleep(Duration::from_millis(50));
    }
    fleet.assert_is(1);
    assert!(received("after the repair") > 0);
    node.stop();
}
