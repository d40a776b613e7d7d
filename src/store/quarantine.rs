//! Damaged chunks: reading a chunk with its hash checked, and quarantining one whose
//! bytes are wrong or cannot be read.
//!
//! A quarantined chunk's index entry is removed, in one commit with a record of where
//! its old bytes are, so the store no longer holds it: the node fetches it again like
//! any chunk it lacks, and appends the good copy as a new record. The damaged record
//! stays in its pack, unreferenced: packs are append-only. `verify` lists these records
//! (their bytes count as orphans) and judges only what the index holds.

use super::*;
use redb::ReadableTableMetadata;

/// Location of a quarantined record → the chunk hash it claimed, then the Unix time of
/// the quarantine (8 bytes, little-endian).
const QUARANTINE: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("quarantine");

/// Most quarantine records kept. Each is one damaged record of a pack, so this is
/// reached only by a disk failing on a large scale; past it, chunks are still
/// quarantined but no longer listed.
const MAX_RECORDS: u64 = 1 << 20;

/// Why a chunk could not be read with its hash checked.
#[derive(Debug)]
pub enum Unreadable {
    /// The store does not hold it.
    NotHeld,
    /// The store could not be asked (it is closed, say): nothing is known of the chunk.
    Store(StoreError),
    /// The store holds it at `loc`, but the bytes there are not the chunk: quarantine it.
    Damaged { loc: Loc, why: String },
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::NotHeld => f.write_str("not in the store"),
            Unreadable::Store(e) => e.fmt(f),
            Unreadable::Damaged { why, .. } => write!(f, "damaged: {why}"),
        }
    }
}

/// A damaged record the store no longer uses.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    pub chunk: Hash,
    pub pack: u32,
    /// Byte offset of the chunk's bytes in the pack, and their length.
    pub offset: u64,
    pub len: u32,
    /// Unix seconds.
    pub at: u64,
}

impl Store {
    /// Reads chunk `hash` into `out` (exactly its length) and checks it against its
    /// hash. Costs one blake3 pass over the chunk: 109 µs for 256 KiB on one core of
    /// the 2-core test machine under load (2.4 GB/s), so serving 1 Gbit/s takes about
    /// 5% of a core for hashing.
    pub fn read_checked(&self, hash: &Hash, out: &mut [u8]) -> Result<(), Unreadable> {
        let loc = self
            .chunk_loc(hash)
            .map_err(Unreadable::Store)?
            .ok_or(Unreadable::NotHeld)?;
        let damaged = |why: String| Unreadable::Damaged { loc, why };
        if loc.len as usize != out.len() {
            return Err(damaged(format!(
                "its index entry says {} bytes, its manifest {}",
                loc.len,
                out.len()
            )));
        }
        self.read_into(loc, out)
            .map_err(|e| damaged(e.to_string()))?;
        if Hash::of(out) != *hash {
            return Err(damaged("its bytes do not match its hash".into()));
        }
        Ok(())
    }

    /// Reads chunk `hash` of `len` bytes and checks it against its hash.
    pub fn read_chunk(&self, hash: &Hash, len: u32) -> Result<Vec<u8>, Unreadable> {
        if len > MAX_CHUNK_LEN {
            return Err(Unreadable::Store(StoreError::ChunkTooLarge {
                len: len as usize,
            }));
        }
        let mut out = vec![0u8; len as usize];
        self.read_checked(hash, &mut out)?;
        Ok(out)
    }

    /// Quarantines chunk `hash` found damaged at `loc`: removes its index entry and
    /// records where the damaged bytes are, in one commit. Returns false (and changes
    /// nothing) when the index no longer points there: quarantined already, or the
    /// location was an uncommitted one given up since.
    pub fn quarantine(&self, hash: &Hash, loc: Loc, now: u64) -> Result<bool, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            let held = chunks
                .get(&hash.0)
                .map_err(db_err)?
                .map(|v| Loc::from_bytes(v.value()));
            if held != Some(loc) {
                return Ok(false);
            }
            chunks.remove(&hash.0).map_err(db_err)?;
            let mut records = txn.open_table(QUARANTINE).map_err(db_err)?;
            if records.len().map_err(db_err)? < MAX_RECORDS {
                let mut value = hash.0.to_vec();
                value.extend_from_slice(&now.to_le_bytes());
                records
                    .insert(&loc.to_bytes(), value.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Bytes of records in the committed part of the packs: every record the index
    /// points at, and every orphan (a quarantined record).
    pub fn committed_record_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .packs()?
            .iter()
            .map(|(_, len)| len.saturating_sub(PACK_HEADER as u64))
            .sum())
    }

    /// Every quarantined record, in pack order.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let Some(table) = open_optional(&txn, QUARANTINE)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let loc = Loc::from_bytes(k.value());
            let v = v.value();
            let (Some(chunk), Some(at)) = (v.get(..32), v.get(32..40)) else {
                return Err(StoreError::BadRecord(
                    "a quarantine record is damaged".into(),
                ));
            };
            let mut hash = [0u8; 32];
            hash.copy_from_slice(chunk);
            let mut secs = [0u8; 8];
            secs.copy_from_slice(at);
            out.push(Quarantined {
                chunk: Hash(hash),
                pack: loc.pack,
                offset: loc.offset,
                len: loc.len,
                at: u64::from_le_bytes(secs),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one committed chunk; returns it and where it is.
    fn one_chunk(dir: &Path) -> (Store, Hash, Vec<u8>, Loc) {
        let store = Store::create(dir).expect("create");
        let data = vec![7u8; 5000];
        let hash = Hash::of(&data);
        let mut w = store.writer().expect("writer");
        w.put(hash, &data).expect("put");
        w.flush().expect("flush");
        drop(w);
        let loc = store.chunk_loc(&hash).expect("lookup").expect("held");
        (store, hash, data, loc)
    }

    fn flip(dir: &Path, at: u64) {
        let pack = dir.join(PACKS_DIR).join("00000000.pack");
        let f = OpenOptions::new().write(true).open(&pack).expect("open");
        f.write_all_at(&[0xff; 8], at).expect("write");
    }

    #[test]
    fn a_damaged_chunk_is_never_read_as_good_and_its_quarantine_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, hash, data, loc) = one_chunk(dir.path());
        let mut out = vec![0u8; data.len()];
        store.read_checked(&hash, &mut out).expect("intact");
        assert_eq!(out, data);
        flip(dir.path(), loc.offset + 100);
        match store.read_checked(&hash, &mut out) {
            Err(Unreadable::Damaged { loc: at, why }) => {
                assert_eq!(at, loc);
                assert!(why.contains("do not match"), "{why}");
            }
            other => panic!("damage not caught: {other:?}"),
        }
        // The length the manifest gives must match the index.
        let mut short = vec![0u8; data.len() - 1];
        assert!(matches!(
            store.read_checked(&hash, &mut short),
            Err(Unreadable::Damaged { .. })
        ));
        assert!(store.quarantine(&hash, loc, 1234).expect("quarantine"));
        assert!(
            !store
                .quarantine(&hash, loc, 1235)
                .expect("twice is nothing")
        );
        drop(store);
        let store = Store::open(dir.path()).expect("open");
        assert!(matches!(
            store.read_checked(&hash, &mut out),
            Err(Unreadable::NotHeld)
        ));
        let listed = store.quarantined().expect("list");
        assert_eq!(
            listed,
            vec![Quarantined {
                chunk: hash,
                pack: 0,
                offset: loc.offset,
                len: loc.len,
                at: 1234,
            }]
        );
        // A good copy is stored again as a new record.
        let mut w = store.writer().expect("writer");
        assert!(w.put(hash, &data).expect("put"));
        w.flush().expect("flush");
        drop(w);
        assert_eq!(
            store.read_chunk(&hash, data.len() as u32).expect("good"),
            data
        );
    }

    #[test]
    fn a_location_the_index_no_longer_holds_is_not_quarantined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, hash, _, loc) = one_chunk(dir.path());
        let elsewhere = Loc {
            offset: loc.offset + 1,
            ..loc
        };
        assert!(!store.quarantine(&hash, elsewhere, 1).expect("quarantine"));
        assert!(store.has_chunk(&hash).expect("lookup"));
        assert!(store.quarantined().expect("list").is_empty());
    }
}
