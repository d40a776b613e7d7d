//! New versions of a module in a scenario, as the shipped chunking and chunk deltas
//! (PROTOCOL.md §13.2) move them: which chunks a version shares with the versions
//! before it, and what each of its other chunks costs on the wire.
//!
//! A new version rewrites `change` of its base's bytes in `edits` evenly spaced runs
//! (as `benches/delta.sh` and `benches/delta_cost.rs` do to a real file). Chunking by
//! content keeps every chunk no run touches: the new version names the very chunk of
//! its base, which a node that holds the base holds already (the daemon's store finds
//! it by hash when it stores the manifest) and nothing moves for it. A touched chunk is
//! new; sent as a delta against a version the requester holds whole, it costs the
//! bytes its runs rewrote plus [`DELTA_PER_EDIT`] per run, and never more than the
//! chunk itself (then the server sends it whole). Against a version further back (or
//! on), the rewrites of every version in between add up.
//!
//! Everything is worked out once, before the run: per version, one number per chunk.

use super::scenario::Update;

/// What a chunk delta costs beyond the bytes the change rewrote, per run of rewritten
/// bytes in the chunk: the ops around the run and what the block matching loses at its
/// edges. `cargo test --bench delta_cost` measured the shipped `content::delta` on
/// 64 MiB with 1%, 5%, 20% and 50% rewritten in 1 to 4,096 runs: deltas move the
/// rewritten bytes times 1.0000 to 1.3175 (simulations/README.md, "Upgrades"); 56
/// bytes per run puts the model within 2.5% of each of those sixteen figures.
pub const DELTA_PER_EDIT: u64 = 56;
/// The smallest delta: one copy op (a chunk identical to the base's is never asked
/// for, as the requester holds it).
const MIN_DELTA: u32 = 13;

/// The versions of the scenario's modules.
#[derive(Debug, Default)]
pub struct Versions {
    /// Per update: the version it replaces.
    base: Vec<Option<usize>>,
    /// Per update: the first version of its module, and its place in the module's line
    /// (0 for the first).
    first: Vec<usize>,
    depth: Vec<u32>,
    /// Per update that replaces another: per chunk, 0 where it is its base's chunk,
    /// else what it costs sent as a delta against its base.
    cost: Vec<Box<[u32]>>,
    /// Per update: whether its module has more than one version.
    several: Vec<bool>,
}

/// The bytes of file `f` of `files` in an update of `size`: equal shares, the first
/// files one byte larger where it does not divide.
pub fn file_size(size: u64, files: u32, f: u32) -> u64 {
    let files = u64::from(files.max(1));
    size / files + u64::from(u64::from(f) < size % files)
}

/// The lengths of the chunks of a file of `size` bytes.
pub fn chunk_lens(size: u64, chunk: u32) -> impl Iterator<Item = u32> {
    let chunk = u64::from(chunk);
    (0..size.div_ceil(chunk)).map(move |c| (size - c * chunk).min(chunk) as u32)
}

impl Versions {
    /// The versions among a scenario's `updates`, in chunks of `chunk` bytes.
    pub fn new(updates: &[Update], chunk: u32) -> Versions {
        let n = updates.len();
        let mut v = Versions {
            base: vec![None; n],
            first: (0..n).collect(),
            depth: vec![0; n],
            cost: vec![Box::default(); n],
            several: vec![false; n],
        };
        // A base is always listed before its new version.
        for (u, up) in updates.iter().enumerate() {
            let Some(new) = &up.version_of else { continue };
            v.base[u] = Some(new.base);
            v.first[u] = v.first[new.base];
            v.depth[u] = v.depth[new.base] + 1;
            v.several[u] = true;
            v.several[v.first[u]] = true;
            v.cost[u] = step_costs(up, chunk);
        }
        for u in 0..n {
            v.several[u] = v.several[v.first[u]];
        }
        v
    }

    /// Whether update `u`'s module has other versions: else nothing below applies.
    pub fn has_versions(&self, u: usize) -> bool {
        self.several.get(u).copied().unwrap_or(false)
    }

    /// The first version of `u`'s module: its name is the module's id.
    pub fn first_of(&self, u: usize) -> usize {
        self.first[u]
    }

    /// `u`'s version as people read it: 1 for the first, then 2, 3, ...
    pub fn version(&self, u: usize) -> String {
        (self.depth[u] + 1).to_string()
    }

    /// Whether `v` is a later version of `u`'s module than `u`.
    pub fn is_newer(&self, v: usize, u: usize) -> bool {
        self.first[v] == self.first[u] && self.depth[v] > self.depth[u]
    }

    /// Whether chunk `k` of `u` is new in `u` (not its base's). A first version's
    /// chunks are all its own.
    pub fn is_new(&self, u: usize, k: u32) -> bool {
        self.cost[u].get(k as usize).is_none_or(|c| *c > 0)
    }

    /// The updates from the later of `a` and `b` back to the earlier (which is left
    /// out), if they are two versions of one module.
    fn between(&self, a: usize, b: usize) -> Option<impl Iterator<Item = usize> + '_> {
        if a == b || self.first.get(a)? != self.first.get(b)? {
            return None;
        }
        let (mut at, stop) = if self.depth[a] > self.depth[b] {
            (Some(a), b)
        } else {
            (Some(b), a)
        };
        Some(std::iter::from_fn(move || {
            let u = at.filter(|u| *u != stop)?;
            at = self.base[u];
            Some(u)
        }))
    }

    /// Whether chunk `k` of `u` is chunk `k` of `v`, another version of its module (the
    /// same bytes, so the same hash): no version in between rewrote it.
    pub fn shares(&self, u: usize, v: usize, k: u32) -> bool {
        self.between(u, v).is_some_and(|mut steps| {
            steps.all(|s| self.cost[s].get(k as usize).is_some_and(|c| *c == 0))
        })
    }

    /// The bytes chunk `k` of `u` (of `len` bytes) takes on the wire sent as a delta
    /// against `base`, another version of its module; `len` when they are not.
    pub fn payload(&self, u: usize, base: usize, k: u32, len: u32) -> u32 {
        let Some(steps) = self.between(u, base) else {
            return len;
        };
        let rewritten: u64 = steps
            .map(|s| u64::from(self.cost[s].get(k as usize).copied().unwrap_or(len)))
            .sum();
        rewritten.clamp(u64::from(MIN_DELTA), u64::from(len)) as u32
    }
}

/// Per chunk of new version `up` (its base's layout), what it costs as a delta against
/// its base: 0 for a chunk no run touches.
fn step_costs(up: &Update, chunk: u32) -> Box<[u32]> {
    let Some(new) = &up.version_of else {
        return Box::default();
    };
    let size = up.size;
    let runs = u64::from(new.edits.max(1));
    let run = (size as f64 * new.change / runs as f64).round() as u64;
    // Run i starts where benches/delta.sh puts it.
    let run_at = |i: u64| {
        let at =
            u128::from(i) * u128::from(size) / u128::from(runs) + u128::from(size / (2 * runs));
        (at as u64).min(size - run)
    };
    let mut costs = Vec::with_capacity(size.div_ceil(u64::from(chunk)) as usize);
    let (mut at, mut next) = (0u64, 0u64);
    for f in 0..up.files.max(1) {
        for len in chunk_lens(file_size(size, up.files, f), chunk) {
            let end = at + u64::from(len);
            let (mut rewritten, mut touching) = (0u64, 0u64);
            if run > 0 {
                while next < runs && run_at(next) + run <= at {
                    next += 1;
                }
                let mut i = next;
                while i < runs && run_at(i) < end {
                    let (s, e) = (run_at(i).max(at), (run_at(i) + run).min(end));
                    if e > s {
                        rewritten += e - s;
                        touching += 1;
                    }
                    i += 1;
                }
            }
            costs.push(if rewritten == 0 {
                0
            } else {
                (rewritten + DELTA_PER_EDIT * touching).min(u64::from(len)) as u32
            });
            at = end;
        }
    }
    costs.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::NewVersion;

    /// An update of `size` bytes in `files` files; a new version of update `base`
    /// with `change` rewritten in `edits` runs, if given.
    fn update(size: u64, files: u32, new: Option<(usize, f64, u32)>) -> Update {
        Update {
            name: "u".into(),
            size,
            files,
            at: 0,
            fail: 0.0,
            version_of: new.map(|(base, change, edits)| NewVersion {
                base,
                change,
                edits,
            }),
        }
    }

    #[test]
    fn the_model_moves_what_the_shipped_deltas_moved() {
        // `cargo test --bench delta_cost`: moved bytes per rewritten byte, for 64 MiB
        // with `change` rewritten in `edits` runs (simulations/README.md, "Upgrades").
        let measured = [
            (0.01, 1, 1.0001),
            (0.01, 16, 1.0010),
            (0.01, 256, 1.0384),
            (0.01, 4096, 1.3175),
            (0.05, 1, 1.0000),
            (0.05, 16, 1.0002),
            (0.05, 256, 1.0072),
            (0.05, 4096, 1.0955),
            (0.20, 1, 1.0001),
            (0.20, 16, 1.0004),
            (0.20, 256, 1.0031),
            (0.20, 4096, 1.0324),
            (0.50, 1, 1.0000),
            (0.50, 16, 1.0001),
            (0.50, 256, 1.0013),
            (0.50, 4096, 1.0241),
        ];
        let size = 64u64 << 20;
        for (change, edits, ratio) in measured {
            let rewritten = (size as f64 * change / f64::from(edits)).round() * f64::from(edits);
            for chunk in [64 << 10, 1 << 20] {
                let up = update(size, 1, Some((0, change, edits)));
                let moved: u64 = step_costs(&up, chunk).iter().map(|c| u64::from(*c)).sum();
                let model = moved as f64 / rewritten;
                assert!(
                    (model / ratio - 1.0).abs() < 0.025,
                    "{change} in {edits} runs, chunks of {chunk}: {model} per byte, measured {ratio}"
                );
            }
        }
    }

    #[test]
    fn untouched_chunks_are_shared_and_versions_further_apart_add_up() {
        // 16 MiB in 2 files, then a version with 1 MiB rewritten in the middle of each
        // half, then one with 1 MiB rewritten in the middle; and a module of its own.
        let mib = 1u64 << 20;
        let updates = [
            update(16 * mib, 2, None),
            update(16 * mib, 2, Some((0, 0.125, 2))),
            update(16 * mib, 2, Some((1, 0.0625, 1))),
            update(16 * mib, 1, None),
        ];
        let v = Versions::new(&updates, 1 << 20);
        assert!(v.has_versions(0) && v.has_versions(2) && !v.has_versions(3));
        assert_eq!(
            (v.version(0), v.version(2)),
            ("1".to_string(), "3".to_string())
        );
        assert_eq!(v.first_of(2), 0);
        // app-2: runs of 1 MiB from 4 MiB and 12 MiB: chunks 4 and 12, whole.
        let new: Vec<u32> = (0..16).filter(|k| v.is_new(1, *k)).collect();
        assert_eq!(new, vec![4, 12]);
        assert!(v.shares(1, 0, 3) && v.shares(0, 1, 3) && !v.shares(1, 0, 4));
        assert_eq!(
            v.payload(1, 0, 4, 1 << 20),
            1 << 20,
            "no delta beats a rewrite"
        );
        // app-3: one run of 1 MiB from 8 MiB: chunk 8.
        assert!(v.shares(2, 0, 3) && !v.shares(2, 0, 4) && !v.shares(2, 0, 8));
        assert!(v.shares(2, 1, 4) && !v.shares(2, 1, 8));
        assert_eq!(v.payload(2, 1, 4, 1 << 20), MIN_DELTA);
        assert_eq!(v.payload(0, 2, 8, 1 << 20), 1 << 20);
        // Not versions of one module: the whole chunk.
        assert!(!v.shares(3, 0, 3));
        assert_eq!(v.payload(3, 0, 3, 1 << 20), 1 << 20);
    }

    #[test]
    fn a_run_across_chunks_costs_each_its_part() {
        // 3 chunks of 1 MiB; a third in one run from 1.5 MiB: half of chunk 1, half of 2.
        let up = update(3 << 20, 1, Some((0, 1.0 / 3.0, 1)));
        let half = (1u64 << 19) + DELTA_PER_EDIT;
        assert_eq!(
            step_costs(&up, 1 << 20).to_vec(),
            vec![0, half as u32, half as u32]
        );
    }
}
