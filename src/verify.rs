//! Verification of a node's store: every signature re-checked, every chunk re-hashed.
//!
//! Owns the answer to "is what this node stores intact?". Chunks are checked in pages of
//! 65,536 index entries, each page in the order its chunks sit in the pack files and
//! split over two threads (one sequential pass for stores up to about 4 GiB), each
//! against its hash and its record header; manifests are re-opened against the pinned
//! root key. A bad chunk is reported once for every place an update uses it: which
//! update, which file, which chunk of that file, at which byte.
//!
//! The verdict is about what the index holds. A chunk the daemon quarantined (its
//! bytes were found damaged when read) is no longer in the index: its old record stays
//! in its pack as an orphan, which is listed and counted, not judged.

use crate::content::Hash;
use crate::node::Node;
use crate::store::{Loc, Quarantined, RECORD_HEADER, Store, StoreError};
use crate::trust::SignedManifest;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// Chunk index entries checked per round; bounds memory for any store size.
const PAGE: usize = 1 << 16;

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreProblem {
    /// The update concerned, if any (an unreferenced chunk has none).
    pub update: Option<Hash>,
    /// `tenant/category/id version`, when the manifest could be read.
    pub module: Option<String>,
    /// The file and position of the chunk within it.
    pub file: Option<String>,
    pub chunk_index: Option<usize>,
    pub offset: Option<u64>,
    pub chunk: Option<Hash>,
    pub reason: String,
}

impl std::fmt::Display for StoreProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.update, &self.module) {
            (Some(u), Some(m)) => write!(f, "update {} ({m}): ", u.short())?,
            (Some(u), None) => write!(f, "update {}: ", u.short())?,
            _ => {}
        }
        if let (Some(file), Some(i), Some(at)) = (&self.file, self.chunk_index, self.offset) {
            write!(f, "file {file}, chunk {i} at byte {at}: ")?;
        }
        if let Some(c) = &self.chunk {
            write!(f, "chunk {c}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// The outcome of a verification.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub updates: usize,
    pub chunks: u64,
    pub bytes: u64,
    pub problems: Vec<StoreProblem>,
    /// Damaged records the daemon quarantined: no longer used, left in their packs.
    pub quarantined: Vec<Quarantined>,
    /// Bytes of pack records no index entry points at (whole-store checks only):
    /// quarantined records, and anything else left there.
    pub orphan_bytes: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// What a user should know beyond the verdict: records the index no longer uses.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let record = |q: &Quarantined| u64::from(q.len) + RECORD_HEADER as u64;
        let quarantined: u64 = self.quarantined.iter().map(record).sum();
        if let (Some(first), n) = (self.quarantined.first(), self.quarantined.len()) {
            notes.push(format!(
                "{n} damaged chunk record{} quarantined since {} (Unix seconds): the store no longer uses {}, and the {quarantined} bytes stay in the packs as orphans; the chunks were fetched again if an update uses them",
                if n == 1 { " was" } else { "s were" },
                self.quarantined.iter().map(|q| q.at).min().unwrap_or(first.at),
                if n == 1 { "it" } else { "them" },
            ));
        }
        if self.orphan_bytes > quarantined {
            notes.push(format!(
                "{} bytes in the packs belong to no chunk the index holds",
                self.orphan_bytes - quarantined
            ));
        }
        notes
    }
}

/// Verifies one update (`Some`) or the whole store (`None`). `progress` gets the chunk
/// bytes checked so far. Errors are for failures to read the store at all; damage is
/// reported in [`VerifyReport::problems`].
pub fn verify(
    node: &Node,
    update: Option<Hash>,
    now: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, StoreError> {
    let store = &node.store;
    let mut report = VerifyReport::default();
    let manifests: Vec<(Hash, Vec<u8>)> = match update {
        Some(id) => {
            let bytes = store
                .manifest_bytes(&id)?
                .ok_or(StoreError::UnknownUpdate(id.to_hex()))?;
            vec![(id, bytes)]
        }
        None => store.manifests()?,
    };
    report.updates = manifests.len();
    report.quarantined = store.quarantined()?;

    let mut opened = Vec::with_capacity(manifests.len());
    for (id, bytes) in manifests {
        let problem = |reason: String| StoreProblem {
            update: Some(id),
            module: None,
            file: None,
            chunk_index: None,
            offset: None,
            chunk: None,
            reason,
        };
        if crate::content::Hash::of(&bytes) != id {
            report.problems.push(problem(
                "stored manifest does not hash to its update id".into(),
            ));
            continue;
        }
        match SignedManifest::open(&bytes, &node.root_key, now) {
            Ok(m) => opened.push(m),
            Err(e) => report
                .problems
                .push(problem(format!("manifest refused: {e}"))),
        }
    }

    // Which chunks to check, and the bad ones found.
    let done = AtomicU64::new(0);
    let mut bad: HashMap<Hash, String> = HashMap::new();
    if update.is_some() {
        let mut locs = Vec::new();
        let mut seen = HashSet::new();
        for m in &opened {
            for c in m.manifest.chunk_refs() {
                if seen.insert(c.hash()) {
                    match store.chunk_loc(&c.hash())? {
                        Some(loc) => locs.push((c.hash(), loc)),
                        None => {
                            bad.insert(c.hash(), "missing from the store".into());
                        }
                    }
                }
            }
        }
        check_page(store, locs, &mut report, &mut bad, &done, progress);
    } else {
        let mut after: Option<Hash> = None;
        let mut indexed = 0u64;
        loop {
            let page = store.chunk_index_page(after.as_ref(), PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            indexed += page
                .iter()
                .map(|(_, loc)| u64::from(loc.len) + RECORD_HEADER as u64)
                .sum::<u64>();
            check_page(store, page, &mut report, &mut bad, &done, progress);
        }
        report.orphan_bytes = store.committed_record_bytes()?.saturating_sub(indexed);
        for m in &opened {
            for c in m.manifest.chunk_refs() {
                if !bad.contains_key(&c.hash()) && !store.has_chunk(&c.hash())? {
                    bad.insert(c.hash(), "missing from the store".into());
                }
            }
        }
    }

    // Name every place a bad chunk is used.
    let mut used: HashSet<Hash> = HashSet::new();
    for m in &opened {
        let module = format!("{} {}", m.manifest.module(), m.manifest.version);
        for file in &m.manifest.files {
            let mut offset = 0u64;
            for (i, c) in file.chunks.iter().enumerate() {
                if let Some(reason) = bad.get(&c.hash()) {
                    used.insert(c.hash());
                    report.problems.push(StoreProblem {
                        update: Some(m.id),
                        module: Some(module.clone()),
                        file: Some(file.path.clone()),
                        chunk_index: Some(i),
                        offset: Some(offset),
                        chunk: Some(c.hash()),
                        reason: reason.clone(),
                    });
                }
                offset += u64::from(c.size());
            }
        }
    }
    let mut unused: Vec<_> = bad.into_iter().filter(|(h, _)| !used.contains(h)).collect();
    unused.sort();
    for (hash, reason) in unused {
        report.problems.push(StoreProblem {
            update: None,
            module: None,
            file: None,
            chunk_index: None,
            offset: None,
            chunk: Some(hash),
            reason: format!("{reason} (not used by any update)"),
        });
    }
    Ok(report)
}

/// Checks a page of chunks in pack order, on two threads.
fn check_page(
    store: &Store,
    mut page: Vec<(Hash, Loc)>,
    report: &mut VerifyReport,
    bad: &mut HashMap<Hash, String>,
    done: &AtomicU64,
    progress: &(dyn Fn(u64) + Sync),
) {
    page.sort_by_key(|(_, loc)| *loc);
    let (first, second) = page.split_at(page.len() / 2);
    let results = std::thread::scope(|s| {
        let other = s.spawn(|| check_chunks(store, second, done, progress));
        let mine = check_chunks(store, first, done, progress);
        let theirs = other
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        [mine, theirs]
    });
    report.chunks += page.len() as u64;
    for (bytes, found) in results {
        report.bytes += bytes;
        bad.extend(found);
    }
}

/// Re-reads and re-hashes each chunk; returns the bytes read and the bad chunks.
fn check_chunks(
    store: &Store,
    chunks: &[(Hash, Loc)],
    done: &AtomicU64,
    progress: &(dyn Fn(u64) + Sync),
) -> (u64, Vec<(Hash, String)>) {
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    let mut bad = Vec::new();
    for &(hash, loc) in chunks {
        let record = Loc {
            pack: loc.pack,
            offset: loc.offset.saturating_sub(RECORD_HEADER as u64),
            len: loc.len.saturating_add(RECORD_HEADER as u32),
        };
        if let Err(e) = store.read_at(record, &mut buf) {
            bad.push((hash, format!("unreadable: {e}")));
            continue;
        }
        bytes += u64::from(loc.len);
        let (header, data) = buf.split_at(RECORD_HEADER);
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if len != loc.len || header[4..] != hash.0 {
            bad.push((
                hash,
                "the pack record header does not match the index".into(),
            ));
        } else if Hash::of(data) != hash {
            bad.push((hash, "stored bytes do not match the chunk hash".into()));
        }
        progress(done.fetch_add(u64::from(loc.len), Ordering::Relaxed) + u64::from(loc.len));
    }
    (bytes, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::manifest::tests::two_files;
    use crate::store::ModuleVersion;
    use crate::trust::SecretKey;

    fn store_manifest(node: &Node, id: &Hash, bytes: &[u8], version: &str) {
        let name = ModuleVersion {
            tenant: "acme",
            category: "plugins",
            id: "viewer",
            version,
        };
        node.store
            .writer()
            .expect("writer")
            .commit_manifest(id, bytes, &name, 1)
            .expect("commit");
    }

    #[test]
    fn manifests_that_do_not_check_out_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node::init_root(&dir.path().join("n")).expect("init");

        // Signed by a key that is not this node's root.
        let foreign =
            SignedManifest::sign(&SecretKey::from_seed([9; 32]), 1, two_files()).expect("sign");
        store_manifest(&node, &foreign.id, &foreign.bytes, "1");
        // Stored under an id that is not its hash.
        let mut tampered = SignedManifest::sign(node.root_secret().expect("root"), 2, two_files())
            .expect("sign")
            .bytes
            .to_vec();
        let id = Hash::of(&tampered);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        store_manifest(&node, &id, &tampered, "2");

        let report = verify(&node, None, 0, &|_| {}).expect("verify runs");
        let reasons: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("manifest refused") && r.contains("not the trusted key")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("does not hash to its update id")),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_quarantined_chunk_is_judged_by_the_index_and_its_old_record_noted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node::init_root(&dir.path().join("n")).expect("init");
        let signed =
            SignedManifest::sign(node.root_secret().expect("root"), 1, two_files()).expect("sign");
        let mut w = node.store.writer().expect("writer");
        for c in [&b"a"[..], b"bc"] {
            w.put(Hash::of(c), c).expect("put");
        }
        w.flush().expect("flush");
        drop(w);
        store_manifest(&node, &signed.id, &signed.bytes, "1");
        let clean = verify(&node, None, 0, &|_| {}).expect("verify runs");
        assert!(clean.ok() && clean.notes().is_empty(), "{clean:?}");
        assert_eq!(clean.orphan_bytes, 0);

        let bc = Hash::of(b"bc");
        let loc = node.store.chunk_loc(&bc).expect("lookup").expect("held");
        assert!(
            node.store
                .quarantine(&bc, loc, 1_800_000_000)
                .expect("quarantine")
        );
        let lacking = verify(&node, None, 0, &|_| {}).expect("verify runs");
        assert!(!lacking.ok());
        assert!(
            lacking
                .problems
                .iter()
                .all(|p| p.chunk == Some(bc) && p.reason.contains("missing")),
            "{:?}",
            lacking.problems
        );

        // Fetched again: the verdict is clean, and the old record is noted, not judged.
        let mut w = node.store.writer().expect("writer");
        w.put(bc, b"bc").expect("put");
        w.flush().expect("flush");
        drop(w);
        let healed = verify(&node, None, 0, &|_| {}).expect("verify runs");
        assert!(healed.ok(), "{:?}", healed.problems);
        assert_eq!(healed.orphan_bytes, 2 + RECORD_HEADER as u64);
        let notes = healed.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("1 damaged chunk record was quarantined since 1800000000")
                && notes[0].contains("38 bytes stay in the packs as orphans"),
            "{notes:?}"
        );
    }

    #[test]
    fn chunks_missing_from_the_store_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node::init_root(&dir.path().join("n")).expect("init");
        // A valid, signed manifest whose chunks were never stored.
        let signed =
            SignedManifest::sign(node.root_secret().expect("root"), 1, two_files()).expect("sign");
        store_manifest(&node, &signed.id, &signed.bytes, "1");
        let report = verify(&node, Some(signed.id), 0, &|_| {}).expect("verify runs");
        // Chunk "a" is used twice (bin/x and run.sh), "bc" once.
        assert_eq!(report.problems.len(), 3, "{:?}", report.problems);
        assert!(report.problems.iter().all(|p| p.reason.contains("missing")));
        assert_eq!(report.problems[1].file.as_deref(), Some("bin/x"));
        assert_eq!(report.problems[1].offset, Some(1));
    }
}
