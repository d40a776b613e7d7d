//! Delta cost: what a new version of a file moves over a link when a share of its bytes
//! changed, with the shipped chunking (`content::chunker`, FastCDC 16/64/256 KiB) and
//! the shipped chunk deltas (`content::delta`: the sender's plan and encoder, PROTOCOL.md
//! §13.2). It calibrates the simulator's model of upgrades (`sim::versions`,
//! simulations/README.md "Upgrades").
//!
//! Run it with `cargo test --bench delta_cost` (about 15 s; the figures are byte
//! counts, the same in every profile). A file of `ARBOR_BENCH_MIB` MiB (default 64) of
//! pseudo-random bytes is version 1; version 2 rewrites `change` of its bytes in
//! `edits` evenly spaced runs, as `benches/delta.sh` does on a real tree. For each
//! pair it prints:
//!
//! - new chunks: the bytes of the chunks version 2 has and version 1 lacks (what would
//!   cross without deltas), as a share of the file;
//! - moved: the bytes a server sends for those chunks (a delta when one is smaller
//!   than the chunk, else the chunk), as a share of the file, and per changed byte;
//! - beyond: what the deltas cost beyond the changed bytes, per edit.
//!
//! Prints figures, asserts nothing.

use arbor::content::Hash;
use arbor::content::chunker::manifest_in_memory;
use arbor::content::delta::{self, Outline, Plan, Reference};
use arbor::content::manifest::Manifest;
use std::collections::HashMap;

/// Pseudo-random bytes (xorshift64*), the same on every run.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    state |= 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A one-file manifest of `data` cut by the shipped chunker, and its chunks by hash.
fn chunked(data: &[u8]) -> (Manifest, HashMap<Hash, Vec<u8>>) {
    let (manifest, cut) = manifest_in_memory(data);
    let store = cut.into_iter().map(|(h, c)| (h, c.to_vec())).collect();
    (manifest, store)
}

/// Version 1 with `change` of its bytes rewritten in `edits` evenly spaced runs.
fn edited(v1: &[u8], change: f64, edits: u64, seed: u64) -> (Vec<u8>, u64) {
    let size = v1.len() as u64;
    let run = ((size as f64 * change) / edits as f64).round() as u64;
    let mut v2 = v1.to_vec();
    for i in 0..edits {
        let at = (i * size / edits + size / (2 * edits)).min(size - run);
        let fresh = noise(run as usize, seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        v2[at as usize..(at + run) as usize].copy_from_slice(&fresh);
    }
    (v2, run * edits)
}

/// Bytes of the chunks `new` adds to `old`, and what a server moves for them.
fn moved(
    old: &(Manifest, HashMap<Hash, Vec<u8>>),
    new: &(Manifest, HashMap<Hash, Vec<u8>>),
) -> (u64, u64) {
    let base_list = old.0.distinct_chunk_list();
    let outlines: Vec<Outline> = base_list
        .iter()
        .map(|c| Outline::of(&old.1[&c.hash()]))
        .collect();
    let plan = Plan::new(&new.0, &old.0);
    let (mut fresh, mut sent) = (0u64, 0u64);
    for (index, c) in new.0.distinct_chunk_list().iter().enumerate() {
        if old.1.contains_key(&c.hash()) {
            continue;
        }
        let target = &new.1[&c.hash()];
        let refs: Vec<Reference<'_>> = plan
            .references(index as u32)
            .iter()
            .map(|&r| Reference {
                index: r,
                data: &old.1[&base_list[r as usize].hash()],
                outline: &outlines[r as usize],
            })
            .collect();
        fresh += target.len() as u64;
        sent += delta::encode(target, &refs).map_or(target.len(), |d| d.len()) as u64;
    }
    (fresh, sent)
}

fn main() {
    let mib: u64 = std::env::var("ARBOR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = (mib << 20) as usize;
    let v1 = noise(size, 1);
    let old = chunked(&v1);
    println!(
        "delta cost: {mib} MiB of pseudo-random bytes, `change` of them rewritten in `edits` runs"
    );
    println!(
        "{:>7} {:>6} {:>11} {:>8} {:>14} {:>16}",
        "change", "edits", "new chunks", "moved", "moved/changed", "beyond, per edit"
    );
    for change in [0.01, 0.05, 0.2, 0.5] {
        for edits in [1u64, 16, 256, 4096] {
            let (v2, changed) = edited(&v1, change, edits, 2 + edits);
            let (fresh, sent) = moved(&old, &chunked(&v2));
            println!(
                "{:>6.0}% {:>6} {:>10.1}% {:>7.2}% {:>14.4} {:>13.0} B",
                change * 100.0,
                edits,
                fresh as f64 * 100.0 / size as f64,
                sent as f64 * 100.0 / size as f64,
                sent as f64 / changed as f64,
                (sent as f64 - changed as f64) / edits as f64,
            );
        }
    }
}
