//! Install benchmark: how fast a daemon's installer stages, writes, syncs and switches
//! in an update ([`arbor::install::install`], reading each chunk from the node's store
//! as the daemon does: its index entry, then its bytes from the pack), for the
//! simulator's install cost (`[install]` in simulations/README.md,
//! `InstallCost::MEASURED`).
//!
//! Run it with `cargo bench --bench install`. Each install goes into a fresh directory
//! under `$TMPDIR` (default `/tmp`) from a store beside it, written just before (so in
//! the page cache, as a download leaves it); each shape is installed `ARBOR_BENCH_RUNS`
//! times (default 3, median reported):
//!
//! 1. one file of `ARBOR_BENCH_MIB` MiB (default 256): the rate;
//! 2. 2,000 files of 4 KiB: what each file costs beyond its bytes (open, write,
//!    fsync, rename, and its line in the metadata), after the rate's share.
//!
//! Chunks are `ARBOR_BENCH_CHUNK_KIB` KiB (default 64, the size `arbor publish` cuts on
//! average). `ARBOR_BENCH_PARALLEL=N` (default 1) runs N installs at once, each from
//! its own store into its own directory, and reports the time each took: what an
//! install costs on a machine that hosts N clients installing together, as
//! `benches/branch-offices.sh` runs its 16 clients on one machine.
//!
//! Prints figures, asserts nothing; the machine should be otherwise idle (the load
//! average is printed).

use anyhow::{Context, Result};
use arbor::content::Hash;
use arbor::content::manifest::{ChunkRef, FileEntry, Manifest};
use arbor::store::Store;
use arbor::trust::{SecretKey, SignedManifest};
use std::collections::HashMap;
use std::sync::Barrier;
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

/// The median time of `runs` rounds of `parallel` installs at once of fresh versions
/// of one shape in chunks of `chunk` bytes, each from a store of its own into a
/// directory of its own.
fn time_installs(
    runs: u64,
    parallel: u64,
    files: u32,
    file_bytes: u64,
    chunk: u64,
) -> Result<Duration> {
    let key = SecretKey::from_seed([7; 32]);
    let nodes = (0..parallel)
        .map(|_| {
            let dir = tempfile::tempdir().context("making a node directory")?;
            let store = Store::create(dir.path()).context("making a store")?;
            std::fs::create_dir(dir.path().join("modules")).context("making a directory")?;
            Ok((dir, store))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut times = Vec::new();
    for run in 0..runs {
        let (signed, chunks) = update(&key, run + 1, files, file_bytes, chunk)?;
        for (_, store) in &nodes {
            let mut writer = store.writer().context("writing the store")?;
            for (hash, bytes) in &chunks {
                writer.put(*hash, bytes).context("storing a chunk")?;
            }
            writer.flush().context("committing the store")?;
        }
        let signed = &signed;
        let start = Barrier::new(nodes.len());
        let start = &start;
        let took: Vec<Result<Duration>> = std::thread::scope(|s| {
            let installs: Vec<_> = nodes
                .iter()
                .map(|(dir, store)| {
                    s.spawn(move || {
                        let into = dir.path().join("modules");
                        start.wait();
                        let begun = Instant::now();
                        arbor::install::install(&into, signed, 1_800_000_000 + run, |h| {
                            let loc = store
                                .chunk_loc(h)
                                .map_err(std::io::Error::other)?
                                .ok_or_else(|| std::io::Error::other("no such chunk"))?;
                            let mut buf = Vec::new();
                            store
                                .read_at(loc, &mut buf)
                                .map_err(std::io::Error::other)?;
                            Ok::<_, std::io::Error>(buf)
                        })
                        .context("installing")?;
                        Ok(begun.elapsed())
                    })
                })
                .collect();
            installs
                .into_iter()
                .map(|i| {
                    i.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("an install panicked")))
                })
                .collect()
        });
        for t in took {
            times.push(t?);
        }
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
    let parallel = env("ARBOR_BENCH_PARALLEL", 1).max(1);
    let chunk = env("ARBOR_BENCH_CHUNK_KIB", 64).clamp(1, 1024) * 1024;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "install bench: {mib} MiB in {} KiB chunks, {runs} runs of {parallel} install(s) at once, load average {}",
        chunk / 1024,
        load.trim()
    );
    let big = time_installs(runs, parallel, 1, mib * MIB, chunk)?;
    let rate = (mib * MIB) as f64 / big.as_secs_f64();
    println!(
        "one file of {mib} MiB: {:.3} s, {:.0} MiB/s",
        big.as_secs_f64(),
        rate / MIB as f64
    );
    let (files, small) = (2_000u32, 4_096u64);
    let many = time_installs(runs, parallel, files, small, chunk)?;
    let per_file = (many.as_secs_f64() - f64::from(files) * small as f64 / rate) / f64::from(files);
    println!(
        "{files} files of {small} B: {:.3} s, {:.3} ms per file beyond the bytes",
        many.as_secs_f64(),
        per_file * 1000.0
    );
    Ok(())
}
