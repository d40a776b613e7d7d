//! Foundation benchmark: how fast `arbor publish` and `arbor verify` go, compared with
//! what blake3 and the disk can do on the same machine.
//!
//! Run it with `cargo bench --bench foundation` (1 GiB of input), or for a quick check
//! `ARBOR_BENCH_MIB=64 cargo bench --bench foundation`; `ARBOR_BENCH_RUNS` changes the
//! number of repetitions (default 3). Temporary files go under `$TMPDIR` (default
//! `/tmp`) and, for the tmpfs runs, under `/dev/shm`; all are removed at the end, also
//! when a step fails.
//!
//! What it measures, each step repeated 3 times (median, min and max reported):
//!
//! 1. blake3 on one core, in process: `blake3::Hasher::update` over the whole input
//!    held in one in-memory buffer (read once from the page cache beforehand; the
//!    reading is not timed). This is the reference the targets are stated against.
//!    For diagnosis it also times, in process on one core, the two halves of publish's
//!    pipeline: FastCDC cutting alone (`fastcdc::v2020::FastCDC` over the buffer, with
//!    arbor's chunk parameters) and blake3 hashing of each chunk separately.
//! 2. The raw sequential write speed of the disk holding the temp dir: the input size
//!    written in 8 MiB blocks, then `fdatasync` (and, like publish, with an `fdatasync`
//!    every 64 MiB). The same on tmpfs: the cost of copying into the page cache.
//! 3. `arbor publish` of the one input file into a fresh root node (so every byte is
//!    new), run as a child process of the release `arbor` binary: wall-clock time, and
//!    peak RSS and CPU time from `wait4`. Once with the node on the temp dir's disk, once
//!    on tmpfs (`/dev/shm`), which takes the disk out and leaves the CPU cost of
//!    cutting, hashing and storing. The peak RSS of `arbor --version` is shown as a
//!    baseline, and the bench keeps its own RSS out of its children's figures (see
//!    [`lower_peak_rss`]).
//! 4. `arbor verify` of the whole store with a warm page cache, on disk and on tmpfs; and,
//!    when allowed to drop the page cache (root), with a cold cache on disk.
//!
//! The machine has to be otherwise idle for the figures to mean much: the load average
//! at the start and the end is printed with the table.
//!
//! Throughputs are input bytes per second, in MB/s (1 MB = 10^6 bytes). The targets:
//! publish >= 50% of blake3 (judged on the tmpfs figure), verify >= 70% of blake3 (warm,
//! on disk), publish peak RSS < 64 MiB. The verdicts are printed; the exit code is 0
//! whatever they are, and non-zero only if a step fails.

use anyhow::{Context, Result, bail, ensure};
use arbor::content::chunker::ChunkParams;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Repetitions of every measurement, unless `ARBOR_BENCH_RUNS` says otherwise.
const RUNS: usize = 3;
/// Block size for generating, reading and writing.
const BLOCK: usize = 8 << 20;
/// Bytes between `fdatasync`s in the batched disk write (the store's commit batch).
const SYNC_BATCH: u64 = 64 << 20;
const MIB: u64 = 1 << 20;
const MB: f64 = 1e6;
/// Where the tmpfs runs go.
const TMPFS: &str = "/dev/shm";

const PUBLISH_TARGET: f64 = 0.50;
const VERIFY_TARGET: f64 = 0.70;
const RSS_TARGET_MIB: f64 = 64.0;

fn main() -> Result<()> {
    let mib: u64 = match std::env::var("ARBOR_BENCH_MIB") {
        Ok(v) => v.trim().parse().ok().filter(|&n| n > 0).with_context(|| {
            format!("ARBOR_BENCH_MIB must be a positive whole number of MiB, not {v:?}")
        })?,
        Err(_) => 1024,
    };
    let runs: usize = match std::env::var("ARBOR_BENCH_RUNS") {
        Ok(v) => v.trim().parse().ok().filter(|&n| n > 0).with_context(|| {
            format!("ARBOR_BENCH_RUNS must be a positive whole number, not {v:?}")
        })?,
        Err(_) => RUNS,
    };
    let bench = Bench {
        arbor: PathBuf::from(env!("CARGO_BIN_EXE_arbor")),
        bytes: mib * MIB,
        runs,
    };
    ensure!(
        bench.arbor.is_file(),
        "the arbor binary is missing at {}",
        bench.arbor.display()
    );
    let work = tempfile::Builder::new()
        .prefix("arbor-bench-")
        .tempdir()
        .context("cannot create a temp dir")?;
    eprintln!(
        "arbor: {}\nwork dir: {}\ninput: {mib} MiB",
        bench.arbor.display(),
        work.path().display()
    );

    let load_at_start = load_average();
    let input = work.path().join("input.bin");
    let t = Instant::now();
    generate_input(&input, bench.bytes)?;
    eprintln!("generated input in {:.1} s", t.elapsed().as_secs_f64());

    // 1. blake3 and the pipeline's halves, in process.
    let (blake3_raw, cut, per_chunk) = bench.hash_in_memory(&input)?;
    let blake3_mbs = blake3_raw.median_mbs(bench.bytes);

    // 2. The disk.
    let disk_plain = bench.write_speed(work.path(), None, "disk")?;
    let disk_write_batched = bench.write_speed(work.path(), Some(SYNC_BATCH), "disk")?;
    let disk_mbs = disk_plain.median_mbs(bench.bytes);

    // A baseline for the RSS figures: arbor doing (almost) nothing.
    let mut version = bench.arbor();
    version.arg("--version");
    let baseline = run_child(version).context("arbor --version failed")?;

    // 3 and 4 on disk.
    eprintln!(
        "publish and verify with the node on disk ({})",
        work.path().display()
    );
    let on_disk = bench.publish_and_verify(work.path(), &input, "disk")?;

    // 3 and 4 on tmpfs. Its guard is dropped (and the copy freed) before the cold run.
    let mut tmpfs_skipped = None;
    let (on_tmpfs, tmpfs_write) = match tmpfs_dir(bench.bytes)? {
        Ok(shm) => {
            eprintln!(
                "publish and verify with the node on tmpfs ({})",
                shm.path().display()
            );
            // What storing costs when nothing waits for a disk: copying into the page cache.
            let write = bench.write_speed(shm.path(), None, "tmpfs")?;
            let runs = bench.publish_and_verify(shm.path(), &input, "tmpfs")?;
            (Some(runs), Some(write))
        }
        Err(why) => {
            eprintln!("skipping the tmpfs runs: {why}");
            tmpfs_skipped = Some(why);
            (None, None)
        }
    };

    // 4, cold, on disk.
    let cold = bench.verify_cold(&on_disk.node)?;

    // The report.
    let pct = |mbs: f64| 100.0 * mbs / blake3_mbs;
    let mut rows = Vec::new();
    rows.push(Row::speed(
        "blake3 raw (1 core, in memory)",
        &blake3_raw,
        bench.bytes,
        String::new(),
    ));
    rows.push(Row::speed(
        "  fastcdc cut (1 core)",
        &cut,
        bench.bytes,
        format!("{:>3.0}% of blake3", pct(cut.median_mbs(bench.bytes))),
    ));
    rows.push(Row::speed(
        "  blake3 per chunk (1 core)",
        &per_chunk,
        bench.bytes,
        format!("{:>3.0}% of blake3", pct(per_chunk.median_mbs(bench.bytes))),
    ));
    rows.push(Row::speed(
        "disk write + fdatasync",
        &disk_plain,
        bench.bytes,
        String::new(),
    ));
    rows.push(Row::speed(
        "disk write, sync every 64 MiB",
        &disk_write_batched,
        bench.bytes,
        String::new(),
    ));
    if let Some(w) = &tmpfs_write {
        rows.push(Row::speed(
            "tmpfs write (page cache copy)",
            w,
            bench.bytes,
            String::new(),
        ));
    }
    let publish_disk_mbs = on_disk.publish.median_mbs(bench.bytes);
    rows.push(Row::speed(
        "publish (disk)",
        &on_disk.publish,
        bench.bytes,
        format!(
            "{:>3.0}% of blake3  {:>3.0}% of disk write ({disk_mbs:.0} MB/s)",
            pct(publish_disk_mbs),
            100.0 * publish_disk_mbs / disk_mbs
        ),
    ));
    if let Some(why) = &tmpfs_skipped {
        rows.push(Row::note(format!(
            "publish and verify on tmpfs skipped: {why}"
        )));
    }
    if let Some(t) = &on_tmpfs {
        rows.push(Row::speed(
            "publish (tmpfs)",
            &t.publish,
            bench.bytes,
            format!(
                "{:>3.0}% of blake3  target >= {:.0}%",
                pct(t.publish.median_mbs(bench.bytes)),
                100.0 * PUBLISH_TARGET
            ),
        ));
    }
    rows.push(Row::speed(
        "verify warm (disk)",
        &on_disk.verify,
        bench.bytes,
        format!(
            "{:>3.0}% of blake3  target >= {:.0}%",
            pct(on_disk.verify.median_mbs(bench.bytes)),
            100.0 * VERIFY_TARGET
        ),
    ));
    if let Some(t) = &on_tmpfs {
        rows.push(Row::speed(
            "verify warm (tmpfs)",
            &t.verify,
            bench.bytes,
            format!("{:>3.0}% of blake3", pct(t.verify.median_mbs(bench.bytes))),
        ));
    }
    match &cold {
        Ok(c) => rows.push(Row::speed(
            "verify cold (disk)",
            c,
            bench.bytes,
            format!("{:>3.0}% of blake3", pct(c.median_mbs(bench.bytes))),
        )),
        Err(why) => rows.push(Row::note(format!("verify cold (disk) skipped: {why}"))),
    }
    let mut publish_runs = on_disk.publish.runs.clone();
    publish_runs.extend(on_tmpfs.iter().flat_map(|t| t.publish.runs.iter().cloned()));
    let publish_rss = max_rss_mib(&publish_runs);
    let mut verify_runs = on_disk.verify.runs.clone();
    verify_runs.extend(on_tmpfs.iter().flat_map(|t| t.verify.runs.iter().cloned()));
    let floor = publish_runs
        .iter()
        .chain(&verify_runs)
        .map(|r| r.rss_floor_kib)
        .max()
        .unwrap_or(0) as f64
        / 1024.0;
    rows.push(Row::text(
        "publish peak RSS",
        format!("{publish_rss:>6.1} MiB"),
        format!("target < {RSS_TARGET_MIB:.0} MiB (max over all publish runs)"),
    ));
    rows.push(Row::text(
        "verify peak RSS",
        format!("{:>6.1} MiB", max_rss_mib(&verify_runs)),
        String::new(),
    ));
    rows.push(Row::text(
        "`arbor --version` peak RSS",
        format!("{:>6.1} MiB", baseline.max_rss_mib()),
        format!("baseline; bench's own RSS at spawn <= {floor:.1} MiB (a floor for these)"),
    ));
    rows.push(Row::text(
        "publish CPU (disk)",
        cpu_summary(&on_disk.publish),
        String::new(),
    ));
    if let Some(t) = &on_tmpfs {
        rows.push(Row::text(
            "publish CPU (tmpfs)",
            cpu_summary(&t.publish),
            String::new(),
        ));
        rows.push(Row::text(
            "verify CPU (tmpfs)",
            cpu_summary(&t.verify),
            String::new(),
        ));
    }

    println!();
    println!(
        "load average (1 min) at start {load_at_start}, at end {}",
        load_average()
    );
    println!(
        "input: {mib} MiB, {runs} runs each, medians (min..max); blake3 = {blake3_mbs:.0} MB/s, 1 MB = 10^6 bytes"
    );
    for row in &rows {
        println!("{row}");
    }
    println!();
    let (publish_judged, publish_which) = match &on_tmpfs {
        Some(t) => (t.publish.median_mbs(bench.bytes), "tmpfs"),
        None => (publish_disk_mbs, "disk, no tmpfs run"),
    };
    let verify_mbs = on_disk.verify.median_mbs(bench.bytes);
    println!(
        "{}  publish >= {:.0}% of blake3: {:.0}% ({publish_which}); on disk {:.0}%",
        verdict(publish_judged >= PUBLISH_TARGET * blake3_mbs),
        100.0 * PUBLISH_TARGET,
        pct(publish_judged),
        pct(publish_disk_mbs)
    );
    println!(
        "{}  verify >= {:.0}% of blake3: {:.0}% (warm, disk)",
        verdict(verify_mbs >= VERIFY_TARGET * blake3_mbs),
        100.0 * VERIFY_TARGET,
        pct(verify_mbs)
    );
    println!(
        "{}  publish peak RSS < {RSS_TARGET_MIB:.0} MiB: {publish_rss:.1} MiB",
        verdict(publish_rss < RSS_TARGET_MIB)
    );

    work.close().context("cannot remove the work dir")?;
    Ok(())
}

/// The 1-minute load average, as `/proc/loadavg` gives it, or `?`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// What the benchmark works with.
struct Bench {
    arbor: PathBuf,
    /// Input size.
    bytes: u64,
    /// Repetitions of every measurement.
    runs: usize,
}

/// The publish and verify measurements in one place (disk or tmpfs).
struct NodeRuns {
    publish: Timings,
    verify: Timings,
    /// The node directory left from the last publish (verified, and kept for the cold run).
    node: PathBuf,
}

impl Bench {
    fn arbor(&self) -> Command {
        let mut cmd = Command::new(&self.arbor);
        cmd.env_remove("RUST_LOG");
        cmd
    }

    /// Publishes the input into a fresh node under `dir` `self.runs` times (removing the
    /// previous node first), then verifies the last node `self.runs` times.
    fn publish_and_verify(&self, dir: &Path, input: &Path, label: &str) -> Result<NodeRuns> {
        let mut publish = Timings::default();
        let mut node = PathBuf::new();
        for run in 0..self.runs {
            if run > 0 {
                std::fs::remove_dir_all(&node)
                    .with_context(|| format!("cannot remove {}", node.display()))?;
            }
            node = dir.join(format!("node-{label}-{run}"));
            let mut init = self.arbor();
            init.arg("init").arg("--data").arg(&node).arg("--root");
            run_child(init).context("arbor init failed")?;
            sync();
            let mut cmd = self.arbor();
            cmd.args(["publish", "--data"])
                .arg(&node)
                .args([
                    "--tenant",
                    "bench",
                    "--category",
                    "files",
                    "--id",
                    "big",
                    "--version",
                ])
                .arg(format!("{}", run + 1))
                .arg("--json")
                .arg(input);
            let done = run_child(cmd).context("arbor publish failed")?;
            let out: serde_json::Value = serde_json::from_slice(&done.stdout)
                .context("arbor publish --json printed no JSON")?;
            let field = |name: &str| out.get(name).and_then(serde_json::Value::as_u64);
            ensure!(
                field("bytes") == Some(self.bytes) && field("new_bytes") == Some(self.bytes),
                "publish stored an unexpected amount: {out}"
            );
            eprintln!(
                "  publish ({label}) run {}: {:.2} s, {:.0} MB/s, {} chunks, peak RSS {:.1} MiB (floor {:.1}), cpu {:.2} s user + {:.2} s sys",
                run + 1,
                done.wall.as_secs_f64(),
                mbs(self.bytes, done.wall),
                field("chunks").unwrap_or(0),
                done.max_rss_mib(),
                done.rss_floor_kib as f64 / 1024.0,
                done.user.as_secs_f64(),
                done.sys.as_secs_f64()
            );
            publish.runs.push(done);
        }
        let mut verify = Timings::default();
        for run in 0..self.runs {
            let done = self.verify(&node).context("arbor verify failed")?;
            eprintln!(
                "  verify warm ({label}) run {}: {:.2} s, {:.0} MB/s",
                run + 1,
                done.wall.as_secs_f64(),
                mbs(self.bytes, done.wall)
            );
            verify.runs.push(done);
        }
        Ok(NodeRuns {
            publish,
            verify,
            node,
        })
    }

    /// Runs `arbor verify` on the whole store and checks it reports every input byte.
    fn verify(&self, node: &Path) -> Result<ChildRun> {
        let mut cmd = self.arbor();
        cmd.args(["--json", "verify", "--data"]).arg(node);
        let done = run_child(cmd)?;
        let report: serde_json::Value =
            serde_json::from_slice(&done.stdout).context("arbor verify --json printed no JSON")?;
        ensure!(
            report.get("bytes").and_then(serde_json::Value::as_u64) == Some(self.bytes),
            "verify checked an unexpected amount: {report}"
        );
        Ok(done)
    }

    /// Verifies `node` with a cold page cache `self.runs` times, or says why it cannot.
    /// Only a failing verify is an error; not being allowed to drop caches is not.
    fn verify_cold(&self, node: &Path) -> Result<Result<Timings, String>> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "skipping the cold-cache verify: not running as root, cannot drop the page cache"
            );
            return Ok(Err("not root, cannot drop the page cache".into()));
        }
        let mut cold = Timings::default();
        for run in 0..self.runs {
            if let Err(e) = drop_caches() {
                let why = format!("cannot drop the page cache: {e:#}");
                eprintln!("skipping the cold-cache verify: {why}");
                return Ok(Err(why));
            }
            let done = self.verify(node).context("arbor verify (cold) failed")?;
            eprintln!(
                "  verify cold (disk) run {}: {:.2} s, {:.0} MB/s",
                run + 1,
                done.wall.as_secs_f64(),
                mbs(self.bytes, done.wall)
            );
            cold.runs.push(done);
        }
        Ok(Ok(cold))
    }

    /// Reads the input into memory (untimed), then times on one core: blake3 over the whole
    /// buffer, FastCDC cutting alone, and blake3 of each chunk apart.
    fn hash_in_memory(&self, input: &Path) -> Result<(Timings, Timings, Timings)> {
        let bytes = self.bytes;
        let mut data =
            Vec::with_capacity(usize::try_from(bytes).context("input too large for memory")?);
        let mut f =
            File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
        let mut block = vec![0u8; BLOCK];
        loop {
            let n = f
                .read(&mut block)
                .with_context(|| format!("cannot read {}", input.display()))?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&block[..n]);
        }
        ensure!(
            data.len() as u64 == bytes,
            "read {} bytes of input, expected {bytes}",
            data.len()
        );

        let mut whole = Vec::new();
        let mut first_hash = None;
        for run in 0..self.runs {
            let t = Instant::now();
            let hash = blake3::Hasher::new().update(&data).finalize();
            let wall = t.elapsed();
            // Also keeps the hashing from being optimised away.
            ensure!(
                *first_hash.get_or_insert(hash) == hash,
                "blake3 gave two answers"
            );
            eprintln!(
                "  blake3 raw run {}: {:.3} s, {:.0} MB/s",
                run + 1,
                wall.as_secs_f64(),
                mbs(bytes, wall)
            );
            whole.push(wall);
        }

        let mut cut = Vec::new();
        let mut lens = Vec::new();
        let ChunkParams { min, avg, max } = ChunkParams::default();
        for _ in 0..self.runs {
            lens.clear();
            let t = Instant::now();
            lens.extend(fastcdc::v2020::FastCDC::new(&data, min, avg, max).map(|c| c.length));
            cut.push(t.elapsed());
        }

        let mut per_chunk = Vec::new();
        for _ in 0..self.runs {
            let t = Instant::now();
            let mut at = 0usize;
            let mut acc = 0u8;
            for &len in &lens {
                let end = at + len;
                acc ^= blake3::hash(&data[at..end]).as_bytes()[0];
                at = end;
            }
            per_chunk.push(t.elapsed());
            ensure!(
                at == data.len(),
                "chunks cover {at} bytes of {}",
                data.len()
            );
            std::hint::black_box(acc);
        }
        eprintln!(
            "  {} chunks, average {} bytes",
            lens.len(),
            data.len() / lens.len().max(1)
        );
        Ok((
            Timings::from_walls(whole),
            Timings::from_walls(cut),
            Timings::from_walls(per_chunk),
        ))
    }

    /// Times writing the input size to a new file in `dir` in 8 MiB blocks, made durable
    /// with `fdatasync` at the end (and every `sync_every` bytes, when given).
    fn write_speed(&self, dir: &Path, sync_every: Option<u64>, label: &str) -> Result<Timings> {
        let bytes = self.bytes;
        let path = dir.join("write-speed.bin");
        let mut block = vec![0u8; BLOCK];
        fill(&mut block, &mut 0x2545_f491_4f6c_dd1d);
        let mut walls = Vec::new();
        for run in 0..self.runs {
            sync();
            let t = Instant::now();
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut written = 0u64;
            let mut since_sync = 0u64;
            while written < bytes {
                let n =
                    usize::try_from((bytes - written).min(BLOCK as u64)).context("block size")?;
                f.write_all(&block[..n])
                    .with_context(|| format!("cannot write {}", path.display()))?;
                written += n as u64;
                since_sync += n as u64;
                if sync_every.is_some_and(|every| since_sync >= every) {
                    f.sync_data()
                        .with_context(|| format!("cannot sync {}", path.display()))?;
                    since_sync = 0;
                }
            }
            f.sync_data()
                .with_context(|| format!("cannot sync {}", path.display()))?;
            let wall = t.elapsed();
            drop(f);
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            eprintln!(
                "  {label} write{} run {}: {:.2} s, {:.0} MB/s",
                if sync_every.is_some() {
                    " (sync every 64 MiB)"
                } else {
                    ""
                },
                run + 1,
                wall.as_secs_f64(),
                mbs(bytes, wall)
            );
            walls.push(wall);
        }
        Ok(Timings::from_walls(walls))
    }
}

/// The runs of one measurement.
#[derive(Default)]
struct Timings {
    runs: Vec<ChildRun>,
}

impl Timings {
    fn from_walls(walls: Vec<Duration>) -> Timings {
        Timings {
            runs: walls.into_iter().map(ChildRun::in_process).collect(),
        }
    }

    /// Wall times, sorted.
    fn sorted(&self) -> Vec<Duration> {
        let mut walls: Vec<Duration> = self.runs.iter().map(|r| r.wall).collect();
        walls.sort();
        walls
    }

    fn median_mbs(&self, bytes: u64) -> f64 {
        let walls = self.sorted();
        walls.get(walls.len() / 2).map_or(0.0, |&w| mbs(bytes, w))
    }

    /// Slowest and fastest run, in MB/s.
    fn range_mbs(&self, bytes: u64) -> (f64, f64) {
        let walls = self.sorted();
        let min = walls.last().map_or(0.0, |&w| mbs(bytes, w));
        let max = walls.first().map_or(0.0, |&w| mbs(bytes, w));
        (min, max)
    }
}

fn mbs(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / MB / time.as_secs_f64().max(1e-9)
}

fn max_rss_mib(runs: &[ChildRun]) -> f64 {
    runs.iter().map(ChildRun::max_rss_mib).fold(0.0, f64::max)
}

/// Median CPU use of a child-process measurement, as user + sys seconds and cores busy.
fn cpu_summary(t: &Timings) -> String {
    let mut runs: Vec<&ChildRun> = t.runs.iter().collect();
    runs.sort_by_key(|r| r.wall);
    match runs.get(runs.len() / 2) {
        Some(r) => format!(
            "{:.2} s user + {:.2} s sys in {:.2} s wall = {:.2} cores busy (median run)",
            r.user.as_secs_f64(),
            r.sys.as_secs_f64(),
            r.wall.as_secs_f64(),
            (r.user + r.sys).as_secs_f64() / r.wall.as_secs_f64().max(1e-9)
        ),
        None => String::new(),
    }
}

/// One line of the final table.
struct Row {
    name: String,
    value: String,
    range: String,
    note: String,
}

impl Row {
    fn speed(name: &str, t: &Timings, bytes: u64, note: String) -> Row {
        let (min, max) = t.range_mbs(bytes);
        Row {
            name: name.into(),
            value: format!("{:>6.0} MB/s", t.median_mbs(bytes)),
            range: format!("({min:.0}..{max:.0})"),
            note,
        }
    }

    fn text(name: &str, value: String, note: String) -> Row {
        Row {
            name: name.into(),
            value,
            range: String::new(),
            note,
        }
    }

    fn note(note: String) -> Row {
        Row {
            name: String::new(),
            value: String::new(),
            range: String::new(),
            note,
        }
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name.is_empty() && self.value.is_empty() {
            return write!(f, "({})", self.note);
        }
        let line = format!(
            "{:<31} {:>11} {:<13} {}",
            self.name, self.value, self.range, self.note
        );
        f.write_str(line.trim_end())
    }
}

/// A finished child process (or an in-process step, with only `wall` set).
#[derive(Clone)]
struct ChildRun {
    wall: Duration,
    /// Peak resident set size in KiB (`ru_maxrss` on Linux).
    max_rss_kib: u64,
    /// The bench's own peak RSS when it spawned the child, in KiB: `max_rss_kib` is at
    /// least this, whatever the child used (see [`lower_peak_rss`]).
    rss_floor_kib: u64,
    user: Duration,
    sys: Duration,
    stdout: Vec<u8>,
}

impl ChildRun {
    fn in_process(wall: Duration) -> ChildRun {
        ChildRun {
            wall,
            max_rss_kib: 0,
            rss_floor_kib: 0,
            user: Duration::ZERO,
            sys: Duration::ZERO,
            stdout: Vec::new(),
        }
    }

    fn max_rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

/// Runs `cmd` to completion, timing it from spawn to reaping; fails unless it exits 0.
/// The child is always reaped (with `wait4`, for its resource use), whatever else fails.
fn run_child(mut cmd: Command) -> Result<ChildRun> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let rss_floor_kib = lower_peak_rss();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let output = read_output(&mut child);
    let reaped = wait4(&child);
    let wall = start.elapsed();
    let (status, usage) = reaped.with_context(|| format!("cannot wait for {what}"))?;
    let (stdout, stderr) = output.with_context(|| format!("cannot read the output of {what}"))?;
    if !status.success() {
        bail!(
            "{what} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(ChildRun {
        wall,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        rss_floor_kib,
        user: timeval(usage.ru_utime),
        sys: timeval(usage.ru_stime),
        stdout,
    })
}

/// Makes a child's `ru_maxrss` about the child alone, as far as it can; returns what is
/// left of the bench process in it, in KiB (0 if unknown).
///
/// Linux carries the spawning process's peak RSS into the child's `ru_maxrss` (the
/// child starts on, or as a copy of, the parent's memory until it execs), so the bench's
/// own 1 GiB buffer would show up as the child's peak. So the bench gives freed heap back
/// to the kernel, resets its peak-RSS mark to its current RSS (`/proc/self/clear_refs`),
/// and reports its peak as the floor below which a child's figure means nothing.
fn lower_peak_rss() -> u64 {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        WARNED.call_once(|| {
            eprintln!(
                "cannot reset the bench's peak RSS ({e}); child RSS figures include the bench's own peak"
            );
        });
    }
    own_status_kib("VmHWM:").unwrap_or(0)
}

/// A `kB` field of `/proc/self/status`, such as `VmHWM:`.
fn own_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Reads the child's stdout and stderr to their ends (both at once, so neither pipe
/// fills up and blocks the child).
fn read_output(child: &mut Child) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut stdout = child.stdout.take().context("stdout is not piped")?;
    let mut stderr = child.stderr.take().context("stderr is not piped")?;
    std::thread::scope(|s| {
        let err = s.spawn(move || {
            let mut buf = Vec::new();
            stderr.read_to_end(&mut buf).map(|_| buf)
        });
        let mut out = Vec::new();
        let read_out = stdout.read_to_end(&mut out);
        let read_err = err
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        read_out.context("reading stdout")?;
        Ok((out, read_err.context("reading stderr")?))
    })
}

/// Reaps `child` with `wait4`, returning its exit status and resource use.
fn wait4(child: &Child) -> Result<(ExitStatus, libc::rusage)> {
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct of integers, for which all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types; `pid` is our own
        // child, which nothing else reaps (std's `Child` is never waited on).
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            return Ok((ExitStatus::from_raw(status), usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
}

fn timeval(t: libc::timeval) -> Duration {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u64::try_from(t.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

fn sync() {
    // SAFETY: sync has no preconditions and cannot fail.
    unsafe { libc::sync() };
}

/// Writes back all dirty data and drops the page cache (needs root).
fn drop_caches() -> Result<()> {
    sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("writing 3 to /proc/sys/vm/drop_caches")
}

/// Fills `block` with xorshift64 output.
fn fill(block: &mut [u8], state: &mut u64) {
    for word in block.chunks_exact_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
}

/// Writes `bytes` pseudo-random bytes to `path` in 8 MiB blocks and syncs them, so
/// their write-back does not disturb the disk measurements.
fn generate_input(path: &Path, bytes: u64) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut block = vec![0u8; BLOCK];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(BLOCK as u64)).context("block size")?;
        fill(&mut block[..n], &mut state);
        f.write_all(&block[..n])
            .with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))
}

/// A temp dir on tmpfs with room for a store of `bytes`, or why there is none.
fn tmpfs_dir(bytes: u64) -> Result<Result<tempfile::TempDir, String>> {
    let dir = Path::new(TMPFS);
    if !dir.is_dir() {
        return Ok(Err(format!("{TMPFS} does not exist")));
    }
    let c_path = std::ffi::CString::new(TMPFS).context("path with a NUL")?;
    // SAFETY: statfs is a plain C struct of integers, for which all zeroes is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a live statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        let err = std::io::Error::last_os_error();
        return Ok(Err(format!("cannot statfs {TMPFS}: {err}")));
    }
    if st.f_type != libc::TMPFS_MAGIC {
        return Ok(Err(format!("{TMPFS} is not a tmpfs")));
    }
    let free = st
        .f_bavail
        .saturating_mul(u64::try_from(st.f_bsize).unwrap_or(0));
    // The store holds the input plus record headers and the index; keep a margin.
    let need = bytes + bytes / 8 + 64 * MIB;
    if free < need {
        return Ok(Err(format!(
            "{TMPFS} has {} MiB free, {} MiB needed",
            free / MIB,
            need / MIB
        )));
    }
    let shm = tempfile::Builder::new()
        .prefix("arbor-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a temp dir in {TMPFS}"))?;
    Ok(Ok(shm))
}
