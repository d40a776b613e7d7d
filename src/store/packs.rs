//! Pack files: appending chunk records, committing their index entries in durable
//! batches, syncing in the background, and cutting back what a crash left uncommitted.

use super::*;

pub(super) fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("{pack:08}.pack"))
}

/// Cuts every pack of this store back to its committed length and removes its packs
/// that were never committed. Files that are not this store's packs are left alone.
/// Returns what is damaged: committed packs that are missing or shorter than committed.
pub(super) fn recover_packs(
    dir: &Path,
    committed: &HashMap<u32, u64>,
    header: &[u8; PACK_HEADER],
) -> Result<Vec<String>, StoreError> {
    let mut damage = Vec::new();
    let mut seen = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let pack = name
            .to_str()
            .and_then(|n| n.strip_suffix(".pack"))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| pack_path(dir, n) == path);
        let Some(pack) = pack else {
            tracing::warn!(path = %path.display(), "ignoring a file that is not a pack");
            continue;
        };
        let actual = entry.metadata().map_err(io("stat", &path))?.len();
        let mut start = vec![0u8; PACK_HEADER.min(actual as usize)];
        File::open(&path)
            .and_then(|f| f.read_exact_at(&mut start, 0))
            .map_err(io("read", &path))?;
        if !header.starts_with(&start) {
            tracing::warn!(path = %path.display(), "leaving alone a pack that belongs to another store");
            continue;
        }
        seen.push(pack);
        match committed.get(&pack) {
            None => {
                tracing::info!(path = %path.display(), "removing an uncommitted pack file a crash or a failed write left");
                fs::remove_file(&path).map_err(io("remove", &path))?;
            }
            Some(&len) if actual > len => {
                tracing::info!(path = %path.display(), committed = len, found = actual,
                    "cutting off uncommitted bytes a crash or a failed write left");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                f.set_len(len).map_err(io("truncate", &path))?;
                f.sync_all().map_err(io("sync", &path))?;
            }
            Some(&len) if actual < len => damage.push(format!(
                "pack {} is {actual} bytes, shorter than the {len} bytes committed",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for pack in committed.keys().filter(|p| !seen.contains(p)) {
        damage.push(format!(
            "pack {} is missing or not this store's",
            pack_path(dir, *pack).display()
        ));
    }
    damage.sort();
    Ok(damage)
}

/// A batch of chunk writes: appends to the current pack and commits index entries in
/// durable batches. Dropping it without [`ChunkWriter::flush`] loses only the pending,
/// uncommitted chunks (the store stays consistent).
pub struct ChunkWriter<'s> {
    store: &'s Store,
    appender: MutexGuard<'s, Appender>,
    pending: HashMap<Hash, Loc>,
    pending_bytes: u64,
    writeback: Writeback,
    /// Bytes appended since writeback was last started.
    unsynced: u64,
}

/// Appended bytes after which writeback to disk is started in the background.
pub(super) const WRITEBACK_BYTES: u64 = 16 << 20;

/// A thread that syncs pack files in the background while chunks are still being
/// appended, so the disk writes overlap the hashing and the sync before each commit
/// finds little left to do. Without it, every batch would first fill the page cache
/// and then wait for the disk.
pub(super) struct Writeback {
    files: Option<mpsc::SyncSender<File>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writeback {
    fn start() -> Writeback {
        let (tx, rx) = mpsc::sync_channel::<File>(1);
        let thread = std::thread::Builder::new()
            .name("arbor-writeback".into())
            .spawn(move || {
                for file in rx {
                    // Only a head start: the commit path syncs again and reports errors.
                    let _ = file.sync_data();
                }
            })
            .ok();
        Writeback {
            files: thread.as_ref().map(|_| tx),
            thread,
        }
    }

    /// Asks for a background sync of `file`, unless one is already queued.
    fn kick(&self, file: &File) {
        if let (Some(tx), Ok(dup)) = (&self.files, file.try_clone()) {
            let _ = tx.try_send(dup);
        }
    }
}

impl Drop for ChunkWriter<'_> {
    fn drop(&mut self) {
        // Chunks never committed must not look stored.
        self.forget_uncommitted();
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.files = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ChunkWriter<'_> {
    /// Whether the chunk is stored already or pending in this batch.
    pub fn contains(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.pending.contains_key(hash) || self.store.has_chunk(hash)?)
    }

    /// Stores a chunk the caller has hashed (`hash == blake3(data)`). Returns whether it
    /// was new. Commits durably whenever enough new bytes have accumulated.
    pub fn put(&mut self, hash: Hash, data: &[u8]) -> Result<bool, StoreError> {
        if self.contains(&hash)? {
            return Ok(false);
        }
        let len = u32::try_from(data.len())
            .ok()
            .filter(|&l| l <= MAX_CHUNK_LEN)
            .ok_or(StoreError::ChunkTooLarge { len: data.len() })?;
        let offset = self.append(&hash, data)?;
        let loc = Loc {
            pack: self.appender.pack,
            offset,
            len,
        };
        self.pending.insert(hash, loc);
        self.store
            .uncommitted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, loc);
        self.pending_bytes += u64::from(len);
        if self.pending_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(true)
    }

    /// Writes one record at the end of the current pack; returns the offset of its data.
    /// Positional writes keep this correct after a failed write: the next record simply
    /// overwrites the partial one, and nothing uncommitted survives a reopen.
    fn append(&mut self, hash: &Hash, data: &[u8]) -> Result<u64, StoreError> {
        let a = &mut *self.appender;
        let f = match a.file.take() {
            Some(f) => f,
            None => {
                if a.len >= PACK_TARGET_BYTES {
                    a.pack += 1;
                    a.len = 0;
                }
                let path = self.store.pack_path(a.pack);
                // A new pack is created; an existing one must still be there (recovery
                // checked it), so a vanished pack is an error rather than a sparse new file.
                let f = OpenOptions::new()
                    .create_new(a.len == 0)
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                if a.len == 0 {
                    f.write_all_at(&self.store.pack_header, 0)
                        .map_err(io("write", &path))?;
                    a.len = PACK_HEADER as u64;
                    a.new_pack = true;
                }
                f
            }
        };
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&hash.0);
        let offset = a.len + RECORD_HEADER as u64;
        let written = f
            .write_all_at(&header, a.len)
            .and_then(|()| f.write_all_at(data, offset));
        a.file = Some(f);
        written.map_err(io("write", &self.store.pack_path(a.pack)))?;
        a.len = offset + data.len() as u64;
        self.unsynced += (RECORD_HEADER + data.len()) as u64;
        if self.unsynced >= WRITEBACK_BYTES {
            self.unsynced = 0;
            if let Some(f) = a.file.as_ref() {
                self.writeback.kick(f);
            }
        }
        Ok(offset)
    }

    /// Drops this writer's pending chunks from the store's uncommitted index.
    fn forget_uncommitted(&self) {
        let mut map = self
            .store
            .uncommitted
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for hash in self.pending.keys() {
            map.remove(hash);
        }
    }

    /// Whether chunks wait for a commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Gives up the chunks that wait for a commit (after a failed write): they are no
    /// longer readable, and the caller learns which they were, so that only those are
    /// fetched again.
    pub fn abandon(self) -> Vec<Hash> {
        // Dropping forgets them in the uncommitted index.
        self.pending.keys().copied().collect()
    }

    /// Makes the pending chunks durable.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.commit(|_| Ok(()))
    }

    /// Syncs the pack, then commits the pending index entries together with whatever
    /// `extra` writes, in one redb transaction.
    fn commit(
        &mut self,
        extra: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let a = &mut *self.appender;
        // Records reach the disk before the index entries that point at them.
        let dirty = match a.file.as_ref() {
            Some(f) if !self.pending.is_empty() => {
                f.sync_data()
                    .map_err(io("sync", &self.store.pack_path(a.pack)))?;
                true
            }
            _ => false,
        };
        let db = self.store.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            for (hash, loc) in &self.pending {
                chunks.insert(&hash.0, &loc.to_bytes()).map_err(db_err)?;
            }
            if dirty && a.new_pack {
                let dir = &self.store.packs_dir;
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("sync", dir))?;
                a.new_pack = false;
            }
            if dirty {
                txn.open_table(PACKS)
                    .map_err(db_err)?
                    .insert(a.pack, a.len)
                    .map_err(db_err)?;
            }
        }
        extra(&txn)?;
        txn.commit().map_err(db_err)?;
        tracing::debug!(
            chunks = self.pending.len(),
            bytes = self.pending_bytes,
            "committed chunk batch"
        );
        if a.len >= PACK_TARGET_BYTES {
            a.file = None;
        }
        self.forget_uncommitted();
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    /// Commits the pending chunks and a signed manifest atomically, under its module
    /// name, and records its publish sequence number.
    pub fn commit_manifest(
        mut self,
        id: &Hash,
        bytes: &[u8],
        name: &ModuleVersion,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.commit(|txn| {
            insert_manifest(txn, id, bytes, name)?;
            txn.open_table(META)
                .map_err(db_err)?
                .insert(META_PUBLISH_SEQ, seq.to_le_bytes().as_slice())
                .map_err(db_err)?;
            Ok(())
        })
    }
}

impl Store {
    /// Starts a batch of chunk writes. One writer at a time; others wait. Refused while
    /// committed packs are missing or short: appending would build on a hole.
    pub fn writer(&self) -> Result<ChunkWriter<'_>, StoreError> {
        let damage = self.damage.lock().unwrap_or_else(|p| p.into_inner());
        if !damage.is_empty() {
            return Err(StoreError::Damaged(damage.join("; ")));
        }
        drop(damage);
        Ok(ChunkWriter {
            store: self,
            appender: self.appender.lock().unwrap_or_else(|p| p.into_inner()),
            pending: HashMap::new(),
            pending_bytes: 0,
            writeback: Writeback::start(),
            unsynced: 0,
        })
    }
}
