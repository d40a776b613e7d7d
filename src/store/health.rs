//! The store after a failed write: reopening it, probing whether the disk takes
//! writes again, and telling what is durable.
//!
//! redb refuses every transaction, reads included, once one of its writes has failed
//! ("Previous I/O error occurred"), so a store that hit a full disk would stay useless
//! until a restart. [`Store::reopen`] closes the database and opens it again, and cuts
//! the packs back to what is committed, as a restart would; the caller (the writer
//! thread) first gives up its chunk writer, whose uncommitted chunks are lost.
//! Committed chunks are never touched.

use super::*;

/// File name, in the node directory, of the file a probe writes and removes.
const PROBE_FILE: &str = ".arbor-space-probe";
/// Bytes a probe writes: room for a span of large chunks, so that fetching resumes
/// only when a useful amount fits. The probe file is removed at once.
pub const PROBE_BYTES: usize = 4 << 20;

impl Store {
    /// Closes the database and opens it again, then cuts every pack back to its
    /// committed length, as a restart would. Waits for every transaction and chunk
    /// writer to end first. On failure the store stays closed (every call answers
    /// [`StoreError::Closed`]) until a later reopen succeeds.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut appender = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old database is dropped first: redb refuses to open a file that is open.
        let why = match std::mem::replace(&mut *slot, Err(String::new())) {
            Ok(_) => "reopening".to_string(),
            Err(why) => why,
        };
        *slot = Err(why);
        let path = self.dir.join(DB_FILE);
        let result = Database::open(&path).map_err(db_err).and_then(|db| {
            let opened = recover(&db, &self.dir)?;
            if opened.pack_header != self.pack_header {
                return Err(StoreError::NotAStore {
                    path: self.dir.display().to_string(),
                    why: "its database was replaced while it was open".into(),
                });
            }
            Ok((db, opened))
        });
        let (db, opened) = match result {
            Ok(found) => found,
            Err(e) => {
                *slot = Err(e.to_string());
                return Err(e);
            }
        };
        *appender = opened.appender;
        *self.damage.lock().unwrap_or_else(|p| p.into_inner()) = opened.damage;
        // Packs removed by the recovery must not be read through old handles.
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // No chunk writer exists (the appender is held), so nothing is pending.
        self.uncommitted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *slot = Ok(db);
        tracing::info!(store = %self.dir.display(), "store reopened");
        Ok(())
    }

    /// Whether the store takes writes again: reopens it if it is closed, checks that no
    /// committed pack is missing or short, writes
    /// [`PROBE_BYTES`] to a file next to it, syncs and removes it, then commits an empty
    /// transaction.
    pub fn probe(&self) -> Result<(), StoreError> {
        if self.db().is_err() {
            self.reopen()?;
        }
        let damage = self
            .damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("; ");
        if !damage.is_empty() {
            return Err(StoreError::Damaged(damage));
        }
        let path = self.dir.join(PROBE_FILE);
        let written = write_probe(&path);
        let removed = fs::remove_file(&path);
        written.map_err(io("write", &path))?;
        removed.map_err(io("remove", &path))?;
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Whether the database still takes writes: once a write has failed anywhere in
    /// this process, redb refuses every later one. An empty commit that is not synced
    /// (so it costs no disk write) finds out.
    pub fn check(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(redb::Durability::None).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Whether every one of `chunks` is committed (durable), not merely written.
    pub fn holds_durably(&self, chunks: &[(Hash, u32)]) -> Result<bool, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CHUNKS).map_err(db_err)?;
        for (hash, _) in chunks {
            if table.get(&hash.0).map_err(db_err)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn write_probe(path: &Path) -> std::io::Result<()> {
    let f = File::create(path)?;
    let block = vec![0x5a_u8; 64 << 10];
    for i in 0..PROBE_BYTES / block.len() {
        f.write_all_at(&block, (i * block.len()) as u64)?;
    }
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8) -> (Hash, Vec<u8>) {
        let data = vec![i; 3000 + usize::from(i)];
        (Hash::of(&data), data)
    }

    #[test]
    fn a_reopen_keeps_committed_chunks_and_forgets_uncommitted_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path()).expect("create");
        let (a, b) = (chunk(1), chunk(2));
        let mut w = store.writer().expect("writer");
        w.put(a.0, &a.1).expect("put");
        w.flush().expect("flush");
        w.put(b.0, &b.1).expect("put");
        assert!(store.has_chunk(&b.0).expect("lookup"), "readable at once");
        assert_eq!(w.abandon(), vec![b.0]);
        store.reopen().expect("reopen");
        assert!(store.has_chunk(&a.0).expect("lookup"));
        assert!(!store.has_chunk(&b.0).expect("lookup"));
        assert!(store.holds_durably(&[(a.0, 0)]).expect("lookup"));
        assert!(!store.holds_durably(&[(a.0, 0), (b.0, 0)]).expect("lookup"));
        // Appending resumes at the committed end: nothing is left between records.
        let committed = store.packs().expect("packs")[0].1;
        let pack = dir.path().join(PACKS_DIR).join("00000000.pack");
        assert_eq!(fs::metadata(&pack).expect("stat").len(), committed);
        let mut w = store.writer().expect("writer");
        w.put(b.0, &b.1).expect("put");
        w.flush().expect("flush");
        drop(w);
        let loc = store.chunk_loc(&b.0).expect("lookup").expect("held");
        assert_eq!(loc.offset, committed + RECORD_HEADER as u64);
        store.probe().expect("probe");
        assert!(!dir.path().join(PROBE_FILE).exists());
    }

    /// A tmpfs of `mib` MiB at `at` for one test, always unmounted; `None` when not root.
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(at: &Path, mib: u32) -> Option<SmallDisk> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
                return None;
            }
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(at)
                .status()
                .expect("mount runs");
            assert!(mounted.success(), "mount failed");
            Some(SmallDisk(at.to_path_buf()))
        }

        /// Fills it but for `keep` bytes, with a file `fill` removes first.
        fn fill(&self, keep: u64) {
            let filler = self.0.join("filler");
            let _ = fs::remove_file(&filler);
            let path =
                std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).expect("no NUL");
            // SAFETY: a valid C string and a zeroed statvfs to fill.
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut s) }, 0);
            let free = s.f_bavail as u64 * s.f_frsize as u64;
            let _ = fs::write(&filler, vec![1u8; free.saturating_sub(keep) as usize]);
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    #[test]
    fn a_database_write_that_fails_on_a_full_disk_is_recovered_by_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(disk) = SmallDisk::mount(dir.path(), 16) else {
            return;
        };
        let store = Store::create(dir.path()).expect("create");
        // Room for pack records, not for the database's new pages.
        disk.fill(48 << 10);
        let (mut committed, mut failed) = (Vec::new(), None);
        let mut w = store.writer().expect("writer");
        'fill: for batch in 0..100u32 {
            let mut pending = Vec::new();
            for i in 0..50u32 {
                let data = [batch, i].map(u32::to_le_bytes).concat().repeat(25);
                if let Err(e) = w.put(Hash::of(&data), &data) {
                    failed = Some(e);
                    break 'fill;
                }
                pending.push(Hash::of(&data));
            }
            match w.flush() {
                Ok(()) => committed.extend(pending),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(w);
        let failed = failed.expect("the disk never filled").to_string();
        assert!(failed.contains("No space left on device"), "{failed}");
        assert!(
            !committed.is_empty(),
            "nothing committed: the test proves nothing"
        );
        // Space returns, but redb refuses every write until it is reopened.
        disk.fill(8 << 20);
        let refused = store
            .check()
            .expect_err("a database write failed")
            .to_string();
        assert!(refused.contains("Previous I/O error"), "{refused}");
        store.reopen().expect("reopen");
        store.check().expect("writable again");
        store.probe().expect("probe");
        for hash in &committed {
            assert!(
                store.holds_durably(&[(*hash, 0)]).expect("lookup"),
                "lost {hash}"
            );
        }
        let mut w = store.writer().expect("writer");
        let data = b"written after the reopen".to_vec();
        w.put(Hash::of(&data), &data).expect("put");
        w.flush().expect("flush");
    }

    #[test]
    fn a_store_whose_reopen_fails_answers_closed_and_recovers_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path()).expect("create");
        let (a, _) = chunk(1);
        let mut w = store.writer().expect("writer");
        w.put(a, &chunk(1).1).expect("put");
        w.flush().expect("flush");
        drop(w);
        let db = dir.path().join(DB_FILE);
        let aside = dir.path().join("aside");
        fs::rename(&db, &aside).expect("move the database away");
        let err = store.reopen().expect_err("no database to open");
        let closed = store.has_chunk(&a).expect_err("closed").to_string();
        assert!(closed.contains("closed after a failed write"), "{closed}");
        assert!(closed.contains(&err.to_string()), "{closed}");
        assert!(store.probe().is_err());
        fs::rename(&aside, &db).expect("move it back");
        store.probe().expect("the probe reopens it");
        assert!(store.has_chunk(&a).expect("lookup"));
    }
}
