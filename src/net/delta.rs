//! The daemon's side of chunk deltas (PROTOCOL.md §13.2): encoding them when serving,
//! rebuilding them from the store when fetching. The matching itself is
//! `content::delta`'s.
//!
//! A server answers many requesters for the same new chunk against the same base (all
//! the children of a branch node, say), so [`Deltas`] computes each delta once and keeps
//! it, with the plans and reference outlines it was made from, within fixed bounds.

use crate::content::Hash;
use crate::content::delta::{self, Delta, Outline, Plan, Reference};
use crate::content::manifest::ChunkRef;
use crate::store::{Loc, Store, Unreadable};
use crate::trust::SignedManifest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Bounds of what [`Deltas`] keeps. Plans are counted in chunks (of both manifests)
/// and the least recently used goes first; past the other two, that cache starts
/// afresh.
const MAX_PLANNED_CHUNKS: usize = 4 * 1024 * 1024;
const MAX_OUTLINE_BYTES: usize = 64 * 1024 * 1024;
const MAX_ENCODED_BYTES: usize = 64 * 1024 * 1024;
/// Deltas computed at once: the work is CPU-bound, so a crowd of requesters waits its
/// turn rather than taking every core.
const ENCODERS: usize = 2;
/// Deltas tried for one file, none smaller than its chunk, before that file goes whole.
const GIVE_UP_AFTER: u32 = 16;

/// Deltas served by this node, and what they are made from.
pub(super) struct Deltas {
    inner: Mutex<Cache>,
    encoders: tokio::sync::Semaphore,
}

impl Default for Deltas {
    fn default() -> Deltas {
        Deltas {
            inner: Mutex::default(),
            encoders: tokio::sync::Semaphore::new(ENCODERS),
        }
    }
}

#[derive(Default)]
struct Cache {
    /// Per (update, base): the plan and when it was last used (a counter).
    plans: HashMap<(Hash, Hash), (Arc<PlanFor>, u64)>,
    planned_chunks: usize,
    uses: u64,
    outlines: HashMap<Hash, Arc<Outline>>,
    outline_bytes: usize,
    /// Per (chunk, base): the delta, or `None` when the chunk goes whole.
    encoded: HashMap<(Hash, Hash), Option<Arc<[u8]>>>,
    encoded_bytes: usize,
}

struct PlanFor {
    plan: Plan,
    base_chunks: Vec<ChunkRef>,
    /// Its size, as counted against [`MAX_PLANNED_CHUNKS`].
    chunks: usize,
    /// Per file of the update: deltas tried, and found smaller than their chunk.
    tries: Vec<(AtomicU32, AtomicU32)>,
}

impl PlanFor {
    /// Whether deltas are still worth trying for chunks of `file`: a file whose first
    /// [`GIVE_UP_AFTER`] tries all failed (a compressed archive, say, which changes
    /// throughout) is sent whole from then on, without the matching work.
    fn worth_trying(&self, file: u32) -> bool {
        self.tries.get(file as usize).is_some_and(|(tried, found)| {
            tried.load(Ordering::Relaxed) < GIVE_UP_AFTER || found.load(Ordering::Relaxed) > 0
        })
    }

    fn count(&self, file: u32, found: bool) {
        if let Some((t, f)) = self.tries.get(file as usize) {
            t.fetch_add(1, Ordering::Relaxed);
            f.fetch_add(u32::from(found), Ordering::Relaxed);
        }
    }
}

impl Deltas {
    /// What is known of chunk `hash` against `base`: `Some(Some(delta))`, or
    /// `Some(None)` when it goes whole; `None` when not yet computed.
    pub(super) fn known(&self, hash: &Hash, base: &Hash) -> Option<Option<Arc<[u8]>>> {
        self.lock().encoded.get(&(*hash, *base)).cloned()
    }

    /// Waits for a turn to compute a delta.
    pub(super) async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.encoders.acquire().await.ok()
    }

    /// The delta of chunk `index` (`target`, of hash `hash`) of `update` against
    /// `base`, when it is smaller than the chunk. Blocking: it reads the store. Base
    /// chunks are checked against their hashes as they are read, so that damage found
    /// there heals too: damaged ones are not used, and are added to `damaged` with
    /// where they are, for quarantine.
    pub(super) fn encode(
        &self,
        store: &Store,
        (update, base): (&SignedManifest, &SignedManifest),
        index: u32,
        hash: Hash,
        target: &[u8],
        damaged: &mut Vec<(Hash, Loc)>,
    ) -> Option<Arc<[u8]>> {
        let key = (hash, base.id);
        // Another requester's turn may have computed it meanwhile.
        if let Some(known) = self.known(&hash, &base.id) {
            return known;
        }
        let plan = self.plan(update, base);
        let file = plan.plan.file_of(index).filter(|&f| plan.worth_trying(f))?;
        let mut held = Vec::new();
        for &r in plan.plan.references(index) {
            let Some(c) = plan.base_chunks.get(r as usize) else {
                continue;
            };
            match store.read_chunk(&c.hash(), c.size()) {
                Ok(data) => {
                    let outline = self.outline(c.hash(), &data);
                    held.push((r, data, outline));
                }
                Err(Unreadable::Damaged { loc, .. }) => damaged.push((c.hash(), loc)),
                Err(_) => {}
            }
        }
        let refs: Vec<Reference<'_>> = held
            .iter()
            .map(|(index, data, outline)| Reference {
                index: *index,
                data,
                outline,
            })
            .collect();
        let encoded: Option<Arc<[u8]>> = delta::encode(target, &refs).map(Arc::from);
        plan.count(file, encoded.is_some());
        let size = |d: &Option<Arc<[u8]>>| d.as_ref().map_or(0, |d| d.len()) + 64;
        let mut cache = self.lock();
        if cache.encoded_bytes + size(&encoded) > MAX_ENCODED_BYTES {
            cache.encoded.clear();
            cache.encoded_bytes = 0;
        }
        cache.encoded_bytes += size(&encoded);
        if let Some(old) = cache.encoded.insert(key, encoded.clone()) {
            cache.encoded_bytes -= size(&old);
        }
        encoded
    }

    fn plan(&self, update: &SignedManifest, base: &SignedManifest) -> Arc<PlanFor> {
        let key = (update.id, base.id);
        {
            let mut cache = self.lock();
            cache.uses += 1;
            let now = cache.uses;
            if let Some((plan, used)) = cache.plans.get_mut(&key) {
                *used = now;
                return plan.clone();
            }
        }
        let (built, base_chunks) = (
            Plan::new(&update.manifest, &base.manifest),
            base.manifest.distinct_chunk_list(),
        );
        let plan = Arc::new(PlanFor {
            chunks: built.planned() + base_chunks.len(),
            plan: built,
            base_chunks,
            tries: update
                .manifest
                .files
                .iter()
                .map(|_| Default::default())
                .collect(),
        });
        let mut cache = self.lock();
        while cache.planned_chunks + plan.chunks > MAX_PLANNED_CHUNKS {
            let Some(oldest) = cache.plans.iter().min_by_key(|(_, (_, used))| *used) else {
                break;
            };
            let oldest = *oldest.0;
            if let Some((gone, _)) = cache.plans.remove(&oldest) {
                cache.planned_chunks -= gone.chunks;
            }
        }
        let now = cache.uses;
        cache.planned_chunks += plan.chunks;
        if let Some((old, _)) = cache.plans.insert(key, (plan.clone(), now)) {
            cache.planned_chunks -= old.chunks;
        }
        plan
    }

    fn outline(&self, hash: Hash, data: &[u8]) -> Arc<Outline> {
        if let Some(o) = self.lock().outlines.get(&hash) {
            return o.clone();
        }
        let outline = Arc::new(Outline::of(data));
        let mut cache = self.lock();
        if cache.outline_bytes + outline.footprint() > MAX_OUTLINE_BYTES {
            cache.outlines.clear();
            cache.outline_bytes = 0;
        }
        cache.outline_bytes += outline.footprint();
        if let Some(old) = cache.outlines.insert(hash, outline.clone()) {
            cache.outline_bytes -= old.footprint();
        }
        outline
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds no invariant a panic elsewhere could break.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The base a fetch names in its requests: an update this node holds whole.
pub(super) struct Base {
    pub id: Hash,
    /// Its distinct chunks: what a delta's copies index.
    pub chunks: crate::trust::ChunkList,
    /// Set when a base chunk could not be read here: name the base no more.
    pub broken: AtomicBool,
}

/// Why a received delta gave no chunk.
pub(super) enum Rebuild {
    /// The sender's fault: a malformed delta (or one that builds the wrong bytes).
    Bad(String),
    /// This node's: a base chunk it should hold cannot be read, or is damaged (then
    /// `damaged` says which, and where, for quarantine).
    Local {
        why: String,
        damaged: Option<(Hash, Loc)>,
    },
}

/// Rebuilds the chunk `expected` (hash, length) from a received delta and the base
/// chunks in the store, and checks it. Blocking: it reads the store.
pub(super) fn rebuild(
    store: &Store,
    base: &Base,
    bytes: &[u8],
    expected: (Hash, u32),
) -> Result<Vec<u8>, Rebuild> {
    let (hash, len) = expected;
    let delta = Delta::parse(bytes, len, |i| base.chunks.get(i as usize).map(|c| c.1))
        .map_err(|e| Rebuild::Bad(e.to_string()))?;
    let mut bases = HashMap::new();
    let mut locs = HashMap::new();
    for &i in delta.bases() {
        let (chunk, chunk_len) = base.chunks[i as usize];
        let loc = match store.chunk_loc(&chunk) {
            Ok(Some(loc)) => loc,
            Ok(None) => return Err(base.retire(&chunk, "not in the store", None)),
            Err(e) => return Err(base.retire(&chunk, &e.to_string(), None)),
        };
        let mut data = Vec::new();
        if let Err(e) = store.read_at(loc, &mut data) {
            return Err(base.retire(&chunk, &e.to_string(), Some(loc)));
        }
        if data.len() != chunk_len as usize {
            let why = format!("{} bytes read, {chunk_len} expected", data.len());
            return Err(base.retire(&chunk, &why, Some(loc)));
        }
        bases.insert(i, data);
        locs.insert(i, loc);
    }
    let built = delta
        .apply(&bases)
        .map_err(|e| Rebuild::Bad(e.to_string()))?;
    if Hash::of(&built) == hash {
        return Ok(built);
    }
    // Either the sender's delta is wrong or this node's copy of a base chunk is: only
    // the second is checked here, and then it is not the sender's fault.
    for (i, data) in &bases {
        let chunk = base.chunks[*i as usize].0;
        if Hash::of(data) != chunk {
            let loc = locs.get(i).copied();
            return Err(base.retire(&chunk, "its bytes no longer match its hash", loc));
        }
    }
    Err(Rebuild::Bad(
        "it builds bytes that do not match the chunk's hash".into(),
    ))
}

impl Base {
    /// A base chunk that cannot be used: name this base no more.
    fn retire(&self, chunk: &Hash, why: &str, at: Option<Loc>) -> Rebuild {
        self.broken.store(true, Ordering::Relaxed);
        Rebuild::Local {
            why: format!("base chunk {chunk} of update {}: {why}", self.id),
            damaged: at.map(|loc| (*chunk, loc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::delta::{Op, write};

    fn store_with(chunks: &[&[u8]]) -> (tempfile::TempDir, Store) {
        let entries: Vec<(Hash, &[u8])> = chunks.iter().map(|c| (Hash::of(c), *c)).collect();
        store_of(&entries)
    }

    /// A store holding each of `entries`' bytes under its hash (which need not match).
    fn store_of(entries: &[(Hash, &[u8])]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path()).expect("store");
        {
            let mut w = store.writer().expect("writer");
            for (hash, bytes) in entries {
                w.put(*hash, bytes).expect("put");
            }
            w.flush().expect("flush");
        }
        (dir, store)
    }

    fn base_of(chunks: &[&[u8]]) -> Base {
        Base {
            id: Hash::of(b"base"),
            chunks: chunks
                .iter()
                .map(|c| (Hash::of(c), c.len() as u32))
                .collect(),
            broken: AtomicBool::new(false),
        }
    }

    #[test]
    fn a_delta_is_rebuilt_from_the_store_and_garbage_is_the_senders_fault() {
        let (old0, old1): (&[u8], &[u8]) = (b"the quick brown fox", b"jumps over the lazy dog");
        let (_dir, store) = store_with(&[old0, old1]);
        let base = base_of(&[old0, old1]);
        let delta = write(&[
            Op::Copy {
                base: 1,
                offset: 0,
                len: 5,
            },
            Op::Literal(b" across "),
            Op::Copy {
                base: 0,
                offset: 4,
                len: 5,
            },
        ]);
        let want = (Hash::of(b"jumps across quick"), 18);
        let built = rebuild(&store, &base, &delta, want).ok().expect("rebuilt");
        assert_eq!(built, b"jumps across quick");
        // Well formed, but not the chunk asked for.
        let other = (Hash::of(b"something else"), 18);
        assert!(matches!(
            rebuild(&store, &base, &delta, other),
            Err(Rebuild::Bad(_))
        ));
        for garbage in [
            &b""[..],
            b"\x09",
            b"\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x01",
            &delta[..7],
        ] {
            assert!(
                matches!(rebuild(&store, &base, garbage, want), Err(Rebuild::Bad(_))),
                "{garbage:?}"
            );
        }
        assert!(!base.broken.load(Ordering::Relaxed));
    }

    #[test]
    fn a_base_chunk_missing_here_is_this_nodes_fault_and_retires_the_base() {
        let (held, lost): (&[u8], &[u8]) = (b"held here", b"never stored");
        let (_dir, store) = store_with(&[held]);
        let base = base_of(&[held, lost]);
        let delta = write(&[Op::Copy {
            base: 1,
            offset: 0,
            len: 5,
        }]);
        let want = (Hash::of(b"never"), 5);
        assert!(matches!(
            rebuild(&store, &base, &delta, want),
            Err(Rebuild::Local { damaged: None, .. })
        ));
        assert!(base.broken.load(Ordering::Relaxed));
    }

    #[test]
    fn a_base_chunk_damaged_here_is_not_blamed_on_the_sender() {
        let good: &[u8] = b"the bytes the sender holds";
        let rotted: &[u8] = b"the bytes thX sender holds";
        // The store holds `good`'s hash with bytes that have rotted since.
        let (_dir, store) = store_of(&[(Hash::of(good), rotted)]);
        let base = base_of(&[good]);
        let delta = write(&[Op::Copy {
            base: 0,
            offset: 10,
            len: 5,
        }]);
        let want = (Hash::of(b"the s"), 5);
        let at = store.chunk_loc(&Hash::of(good)).expect("lookup");
        match rebuild(&store, &base, &delta, want) {
            Err(Rebuild::Local { damaged, .. }) => {
                assert_eq!(
                    damaged,
                    at.map(|loc| (Hash::of(good), loc)),
                    "not named for quarantine"
                )
            }
            _ => panic!("a damaged base chunk was not found"),
        }
        assert!(base.broken.load(Ordering::Relaxed));
    }

    fn signed(manifest: crate::content::manifest::Manifest, seq: u64) -> SignedManifest {
        SignedManifest {
            id: Hash::of(&seq.to_be_bytes()),
            bytes: Vec::new().into(),
            seq,
            chunks: crate::trust::chunk_list(&manifest),
            manifest,
        }
    }

    #[test]
    fn a_damaged_base_chunk_is_never_used_for_a_delta_and_is_named_for_quarantine() {
        use crate::content::delta::tests::{manifest_of, noise};
        let old_bytes = noise(3, 2 << 20);
        let mut new_bytes = old_bytes.clone();
        for at in (0..new_bytes.len()).step_by(100_000) {
            new_bytes[at] ^= 1;
        }
        let (old, old_chunks) = manifest_of(&old_bytes);
        let (new, new_chunks) = manifest_of(&new_bytes);
        let base_list = old.distinct_chunk_list();
        // A base chunk the new version changed: deltas of its new chunk draw on it.
        let rotten = base_list
            .iter()
            .map(|c| c.hash())
            .find(|h| !new_chunks.contains_key(h))
            .expect("a changed chunk");
        let mut rotted = old_chunks[&rotten].clone();
        let mid = rotted.len() / 2;
        for b in &mut rotted[mid..mid + 8] {
            *b ^= 0xff;
        }
        let held: Vec<(Hash, &[u8])> = base_list
            .iter()
            .map(|c| match c.hash() == rotten {
                true => (rotten, rotted.as_slice()),
                false => (c.hash(), old_chunks[&c.hash()].as_slice()),
            })
            .collect();
        let (_dir, store) = store_of(&held);
        let good: Vec<&[u8]> = base_list
            .iter()
            .map(|c| old_chunks[&c.hash()].as_slice())
            .collect();
        let (_good_dir, good_store) = store_with(&good);
        let (update, base) = (signed(new, 2), signed(old, 1));
        let receiver = Base {
            id: base.id,
            chunks: base.chunks.clone(),
            broken: AtomicBool::new(false),
        };
        let deltas = Deltas::default();
        let (mut damaged, mut sent) = (Vec::new(), 0);
        for (i, c) in update.manifest.distinct_chunk_list().iter().enumerate() {
            let target = &new_chunks[&c.hash()];
            let pair = (&update, &base);
            let Some(d) = deltas.encode(&store, pair, i as u32, c.hash(), target, &mut damaged)
            else {
                continue;
            };
            sent += 1;
            let built = rebuild(&good_store, &receiver, &d, (c.hash(), c.size()));
            assert!(
                built.ok().as_ref() == Some(target),
                "chunk {i} builds wrong bytes"
            );
        }
        assert!(sent > 0, "no delta was made: the test proves nothing");
        let at = store.chunk_loc(&rotten).expect("lookup").expect("held");
        assert!(damaged.contains(&(rotten, at)), "{damaged:?}");
    }

    #[test]
    fn a_file_that_changed_throughout_is_sent_whole_after_a_few_tries() {
        use crate::content::delta::tests::{manifest_of, noise};
        let (old, old_chunks) = manifest_of(&noise(1, 4 << 20));
        let (new, new_chunks) = manifest_of(&noise(2, 4 << 20));
        let chunks: Vec<&[u8]> = old_chunks.values().map(Vec::as_slice).collect();
        let (_dir, store) = store_with(&chunks);
        let (update, base) = (signed(new, 2), signed(old, 1));
        let deltas = Deltas::default();
        let list = update.manifest.distinct_chunk_list();
        assert!(list.len() > 2 * GIVE_UP_AFTER as usize);
        for (i, c) in list.iter().enumerate() {
            let target = &new_chunks[&c.hash()];
            let mut damaged = Vec::new();
            let pair = (&update, &base);
            let d = deltas.encode(&store, pair, i as u32, c.hash(), target, &mut damaged);
            assert!(d.is_none() && damaged.is_empty());
        }
        let plan = deltas.plan(&update, &base);
        assert_eq!(plan.tries[0].0.load(Ordering::Relaxed), GIVE_UP_AFTER);
        assert!(!plan.worth_trying(0));
    }
}
