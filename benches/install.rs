//! Install benchmark: how fast the installer ([`arbor::install::install`]) stages,
//! writes, syncs and switches in an update, for the simulator's install cost
//! (`[install]` in simulations/README.md, `InstallCost::MEASURED`).
//!
//! Run it with `cargo bench --bench install`. Two installs into a fresh directory
//! under `$TMPDIR` (default `/tmp`), chunks read from memory as a daemon reads them
//! from its store's page cache, each repeated `ARBOR_BENCH_RUNS` times (default 3,
//! median reported):
//!
//! 1. one file of `ARBOR_BENCH_MIB` MiB (default 256) in 1 MiB chunks: the rate;
//! 2. 2,000 files of 4 KiB: what each file costs beyond its bytes (open, write,
//!    fsync, rename, and its line in the metadata), after the rate's share.
//!
//! Prints figures, asserts nothing; the machine should be otherwise idle (the load
//! average is printed).

use anyhow::{Context, Result};
use arbor::content::Hash;
use arbor::content::manifest::{ChunkRef, FileEntry, Manifest};
use arbor::trust::{SecretKey, SignedManifest};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// An update of `files` files of `file_bytes` each, in chunks of at most `chunk`, and
/// its chunks by hash.
fn update(
    key: &SecretKey,
    seq: u64,
    files: u32,
    file_bytes: u64,
    chunk: u64,
) -> Result<(SignedManifest, HashMap<Hash, Vec<u8>>)> {
    let mut store = HashMap::new();
    let mut entries = Vec::new();
    let mut state = seq;
    for f in 0..files {
        let mut chunks = Vec::new();
        let mut left = file_bytes;
        while left > 0 {
            let len = left.min(chunk);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    (state >> 33) as u8
                })
                .collect();
            let hash = Hash::of(&bytes);
            chunks.push(ChunkRef(hash, len as u32));
            store.insert(hash, bytes);
            left -= len;
        }
        entries.push(FileEntry {
            mode: 0o644,
            path: format!("files/f{f:05}"),
            size: file_bytes,
            chunks,
        });
    }
    let manifest = Manifest {
        id: "bench".into(),
        files: entries,
        tenant: "bench".into(),
        created: 1_800_000_000,
        version: format!("{seq}"),
        category: "bench".into(),
        total_size: u64::from(files) * file_bytes,
        description: None,
        post_install: None,
    };
    let signed = SignedManifest::sign(key, seq, manifest).context("signing the manifest")?;
    Ok((signed, store))
}

/// The median time of `runs` installs of fresh versions of one shape.
fn time_installs(runs: u64, files: u32, file_bytes: u64) -> Result<Duration> {
    let key = SecretKey::from_seed([7; 32]);
    let dir = tempfile::tempdir().context("making the install directory")?;
    let mut times = Vec::new();
    for run in 0..runs {
        let (signed, store) = update(&key, run + 1, files, file_bytes, MIB)?;
        let start = Instant::now();
        arbor::install::install(dir.path(), &signed, 1_800_000_000 + run, |h| {
            store
                .get(h)
                .cloned()
                .ok_or_else(|| std::io::Error::other("no such chunk"))
        })
        .context("installing")?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn main() -> Result<()> {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mib = env("ARBOR_BENCH_MIB", 256);
    let runs = env("ARBOR_BENCH_RUNS", 3).max(1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "install bench: {mib} MiB, {runs} runs, load average {}",
        load.trim()
    );
    let big = time_installs(runs, 1, mib * MIB)?;
    let rate = (mib * MIB) as f64 / big.as_secs_f64();
    println!(
        "one file of {mib} MiB: {:.3} s, {:.0} MiB/s",
        big.as_secs_f64(),
        rate / MIB as f64
    );
    let (files, small) = (2_000u32, 4_096u64);
    let many = time_installs(runs, files, small)?;
    let per_file = (many.as_secs_f64() - f64::from(files) * small as f64 / rate) / f64::from(files);
    println!(
        "{files} files of {small} B: {:.3} s, {:.3} ms per file beyond the bytes",
        many.as_secs_f64(),
        per_file * 1000.0
    );
    Ok(())
}
