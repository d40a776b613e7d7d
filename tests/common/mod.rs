//! Helpers shared by the integration tests: running the `arbor` binary and making inputs.
#![allow(dead_code)] // each test crate uses its own subset

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on anything a test waits for: generous, only there to catch a hang.
pub const HANG: Duration = Duration::from_secs(120);

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

/// Compares the vector file `file` (relative to the crate) with `want`, what the code
/// produces now: every field but `about` must be equal. With `ARBOR_WRITE_VECTORS` set,
/// writes `want` to the file first. Returns the file, for more checks.
pub fn assert_vector_file(file: &str, want: &serde_json::Value) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    if std::env::var_os("ARBOR_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(want).expect("json") + "\n";
        std::fs::write(&path, text).expect("write vectors");
    }
    let text = std::fs::read_to_string(&path).expect("the vector file is readable");
    let have: serde_json::Value = serde_json::from_str(&text).expect("vector file is JSON");
    let fields = want.as_object().expect("vectors are an object");
    for (key, value) in fields.iter().filter(|(k, _)| *k != "about") {
        assert_eq!(
            &have[key], value,
            "{file}: field {key} differs from what the code produces"
        );
    }
    have
}

/// Reads the vector file `file` (relative to the crate) and asserts that every CBOR map
/// in each of its hex fields `keys` has its keys in RFC 8949 deterministic order.
/// Returns the file, for more checks.
pub fn assert_vector_maps_canonical(file: &str, keys: &[&str]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).expect("vector file is readable");
    let have: serde_json::Value = serde_json::from_str(&text).expect("vector file is JSON");
    for key in keys {
        let bytes = hex::decode(have[*key].as_str().expect("hex string")).expect("hex");
        assert_maps_canonical(&bytes);
    }
    have
}

/// Asserts that every CBOR map in `bytes` has its keys in canonical order.
pub fn assert_maps_canonical(bytes: &[u8]) {
    let value: cbor4ii::core::Value = cbor4ii::serde::from_slice(bytes).expect("generic decode");
    check_sorted(&value);
}

fn check_sorted(v: &cbor4ii::core::Value) {
    use cbor4ii::core::Value as V;
    match v {
        V::Map(entries) => {
            let keys: Vec<Vec<u8>> = entries
                .iter()
                .map(|(k, _)| cbor4ii::serde::to_vec(Vec::new(), k).expect("encode"))
                .collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "map keys out of canonical order");
            entries.iter().for_each(|(_, v)| check_sorted(v));
        }
        V::Array(items) => items.iter().for_each(check_sorted),
        _ => {}
    }
}

/// A running `arbor run`, killed if the test fails half-way.
pub struct Process {
    child: Child,
    /// Everything it wrote to stderr, line by line.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `arbor run` on `data` with `extra` flags and waits for "listening".
    pub fn start(data: &str, extra: &[&str], env: &[(&str, &str)]) -> Process {
        Process::start_command(Command::new(env!("CARGO_BIN_EXE_arbor")), data, extra, env)
    }

    /// As [`Process::start`], with the open-files limit at `(soft, hard)`.
    pub fn start_with_open_files(
        data: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        (soft, hard): (u64, u64),
    ) -> Process {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_arbor"));
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Process::start_command(cmd, data, extra, env)
    }

    fn start_command(
        mut cmd: Command,
        data: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let mut child = cmd
            .args(["run", "--data", data, "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn,arbor=info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("arbor run starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                lines.lock().expect("log").push(line);
            }
        });
        rx.recv_timeout(HANG).expect("the node comes up");
        Process { child, log }
    }

    /// The lines it wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Bytes it wrote to stderr so far (a newline per line).
    pub fn log_bytes(&self) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .map(|l| l.len() + 1)
            .sum()
    }

    /// Its resident memory now, in bytes (Linux).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// CPU time it used so far, user and system (Linux).
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the process is alive");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signals our own child process.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to end by itself (a test fault aborts it).
    pub fn wait_for_exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: as a power cut would.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM: the node must stop cleanly.
    pub fn stop(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.child.wait().expect("reaped");
        assert!(status.success(), "arbor run exited with {status}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether the tests run as root (CI does): mounting a tmpfs needs it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for the test's lifetime, always unmounted.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A signed update of `chunks` distinct chunks of 64 KiB in one file. Updates of
/// different sizes share no chunk.
pub fn synthetic_update(
    chunks: u32,
    root: &arbor::trust::SecretKey,
) -> std::sync::Arc<arbor::trust::SignedManifest> {
    use arbor::content::Hash;
    use arbor::content::manifest::{ChunkRef, FileEntry, Manifest};
    const CHUNK: u32 = 64 * 1024;
    let refs: Vec<ChunkRef> = (0..chunks)
        .map(|i| ChunkRef(Hash::of(&[chunks, i].map(u32::to_le_bytes).concat()), CHUNK))
        .collect();
    let size = u64::from(chunks) * u64::from(CHUNK);
    let m = Manifest {
        id: "big".into(),
        files: vec![FileEntry {
            mode: 0o644,
            path: "big.bin".into(),
            size,
            chunks: refs,
        }],
        tenant: "acme".into(),
        created: 1_767_225_600,
        version: "1".into(),
        category: "test".into(),
        total_size: size,
        description: None,
        post_install: None,
    };
    std::sync::Arc::new(arbor::trust::SignedManifest::sign(root, 1, m).expect("valid manifest"))
}
