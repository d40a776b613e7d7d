//! The store: chunk bytes in append-only pack files, metadata in redb.
//!
//! Owns everything under a node directory's `store.redb` and `packs/`. Chunks are
//! appended to pack files as self-describing records (`len | blake3 | bytes`), and
//! redb maps each chunk hash to its record. Signed manifests, the module-name index and
//! node metadata (the pinned root key, the publish counter) live in redb too.
//!
//! Crash safety: a batch of chunks becomes visible only when redb commits its index
//! entries, and that commit happens after the pack file has been synced. Each pack's
//! committed length is stored with the batch; on open, anything a crash left beyond it
//! is cut off. A manifest is committed in the same transaction as its last chunks, so
//! an update is either listed with all its chunks present or not listed at all.
//! Chunks committed by an interrupted publish stay as unreferenced, valid chunks that
//! the next publish of the same content reuses.
//!
//! This module stores what it is given: hashing and signature checks happen before
//! (`publish`, `trust`), and re-checks after (`verify`).

use crate::content::Hash;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

/// Chunk hash → location of its record (see [`Loc`]).
const CHUNKS: TableDefinition<&[u8; 32], &[u8; 16]> = TableDefinition::new("chunks");
/// Pack number → committed length in bytes.
const PACKS: TableDefinition<u32, u64> = TableDefinition::new("packs");
/// Update id → canonical envelope bytes of the signed manifest.
const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("manifests");
/// "tenant/category/id/version" → update id.
const NAMES: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("names");
/// Node metadata.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_ROOT_KEY: &str = "root_key";
const META_PUBLISH_SEQ: &str = "publish_seq";
const FORMAT_VERSION: &[u8] = b"arbor-store-1";

/// File name of the metadata database inside a node directory.
pub const DB_FILE: &str = "store.redb";
/// Folder of the pack files inside a node directory.
pub const PACKS_DIR: &str = "packs";
const PACK_MAGIC: &[u8; 8] = b"ARBORPK1";
/// Record header: chunk length (u32, little-endian) and blake3 hash.
pub const RECORD_HEADER: usize = 4 + 32;
/// A pack file is closed for appends once it is this large.
const PACK_TARGET_BYTES: u64 = 1 << 30;
/// New chunk bytes collected before a durable commit.
const BATCH_BYTES: u64 = 64 << 20;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {0} is in use by another arbor process")]
    Busy(String),
    #[error("the store database failed: {0}")]
    Db(#[from] redb::Error),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an arbor store ({why})")]
    NotAStore { path: String, why: String },
    #[error("no update matches {0:?}")]
    UnknownUpdate(String),
    #[error("{prefix:?} matches {count} updates; give more digits")]
    AmbiguousUpdate { prefix: String, count: usize },
    #[error("stored metadata {key} is damaged")]
    BadMeta { key: &'static str },
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => StoreError::Busy(DB_FILE.to_string()),
        other => StoreError::Db(other),
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Where a chunk's bytes are: pack number, byte offset of the chunk data (after its
/// record header) and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loc {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

impl Loc {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.pack.to_le_bytes());
        b[4..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; 16]) -> Loc {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[4..12]);
        Loc {
            pack: u32_at(0),
            offset: u64::from_le_bytes(off),
            len: u32_at(12),
        }
    }
}

/// The pack file currently open for appends.
struct Appender {
    pack: u32,
    file: Option<File>,
    /// Bytes written to `pack` so far, committed or not.
    len: u64,
}

/// A node's chunk and metadata store. Cheap to share across threads by reference.
pub struct Store {
    db: Database,
    packs_dir: PathBuf,
    appender: Mutex<Appender>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

impl Store {
    /// Creates an empty store in `dir` (which must exist).
    pub fn create(dir: &Path) -> Result<Store, StoreError> {
        let packs_dir = dir.join(PACKS_DIR);
        fs::create_dir(&packs_dir).map_err(io("create", &packs_dir))?;
        let db = Database::create(dir.join(DB_FILE)).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(CHUNKS).map_err(db_err)?;
            txn.open_table(PACKS).map_err(db_err)?;
            txn.open_table(MANIFESTS).map_err(db_err)?;
            txn.open_table(NAMES).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(META_FORMAT, FORMAT_VERSION).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Store::from_db(db, packs_dir)
    }

    /// Opens the store in `dir`, cutting off whatever a crash left uncommitted.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::NotAStore {
                path: dir.display().to_string(),
                why: format!("{DB_FILE} is missing"),
            });
        }
        let db = Database::open(&path).map_err(|e| match db_err(e) {
            StoreError::Busy(_) => StoreError::Busy(dir.display().to_string()),
            StoreError::Db(e) => StoreError::NotAStore {
                path: dir.display().to_string(),
                why: e.to_string(),
            },
            other => other,
        })?;
        let store = Store::from_db(db, dir.join(PACKS_DIR))?;
        if store.meta(META_FORMAT)?.as_deref() != Some(FORMAT_VERSION) {
            return Err(StoreError::NotAStore {
                path: dir.display().to_string(),
                why: "unknown store format".into(),
            });
        }
        Ok(store)
    }

    fn from_db(db: Database, packs_dir: PathBuf) -> Result<Store, StoreError> {
        let committed = {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(PACKS).map_err(db_err)?;
            let mut packs = HashMap::new();
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                packs.insert(k.value(), v.value());
            }
            packs
        };
        recover_packs(&packs_dir, &committed)?;
        let (pack, len) = committed
            .iter()
            .max_by_key(|(p, _)| **p)
            .map(|(p, l)| (*p, *l))
            .unwrap_or((0, 0));
        Ok(Store {
            db,
            packs_dir,
            appender: Mutex::new(Appender {
                pack,
                file: None,
                len,
            }),
            readers: Mutex::new(HashMap::new()),
        })
    }

    fn pack_path(&self, pack: u32) -> PathBuf {
        pack_path(&self.packs_dir, pack)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        Ok(table.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(META)
            .map_err(db_err)?
            .insert(key, value)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// The pinned root (trust anchor) public key, if this node has one.
    pub fn root_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        match self.meta(META_ROOT_KEY)? {
            None => Ok(None),
            Some(v) => v
                .try_into()
                .map(Some)
                .map_err(|_| StoreError::BadMeta { key: META_ROOT_KEY }),
        }
    }

    /// Pins the root key. Done once, when the node is created or joins.
    pub fn pin_root_key(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        self.set_meta(META_ROOT_KEY, key)
    }

    /// The highest publish sequence number used so far (0 if none).
    pub fn publish_seq(&self) -> Result<u64, StoreError> {
        match self.meta(META_PUBLISH_SEQ)? {
            None => Ok(0),
            Some(v) => v
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| StoreError::BadMeta {
                    key: META_PUBLISH_SEQ,
                }),
        }
    }

    /// Where a chunk is stored, if it is.
    pub fn chunk_loc(&self, hash: &Hash) -> Result<Option<Loc>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CHUNKS).map_err(db_err)?;
        Ok(table
            .get(&hash.0)
            .map_err(db_err)?
            .map(|v| Loc::from_bytes(v.value())))
    }

    pub fn has_chunk(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.chunk_loc(hash)?.is_some())
    }

    fn reader(&self, pack: u32) -> Result<Arc<File>, StoreError> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = readers.get(&pack) {
            return Ok(f.clone());
        }
        let path = self.pack_path(pack);
        let f = Arc::new(File::open(&path).map_err(io("open", &path))?);
        readers.insert(pack, f.clone());
        Ok(f)
    }

    /// Reads the bytes at `loc` into `buf` (replacing its contents). Not verified: the
    /// caller hashes what it reads when it matters.
    pub fn read_at(&self, loc: Loc, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        buf.clear();
        buf.resize(loc.len as usize, 0);
        let f = self.reader(loc.pack)?;
        f.read_exact_at(buf, loc.offset)
            .map_err(io("read", &self.pack_path(loc.pack)))
    }

    /// Reads a stored chunk (unverified), or `None` if it is not stored.
    pub fn read_chunk(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(loc) = self.chunk_loc(hash)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        self.read_at(loc, &mut buf)?;
        Ok(Some(buf))
    }

    /// Up to `limit` chunk index entries with hashes above `after`, in hash order.
    pub fn chunk_index_page(
        &self,
        after: Option<&Hash>,
        limit: usize,
    ) -> Result<Vec<(Hash, Loc)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CHUNKS).map_err(db_err)?;
        let range = match after {
            Some(h) => table
                .range::<&[u8; 32]>((std::ops::Bound::Excluded(&h.0), std::ops::Bound::Unbounded)),
            None => table.range::<&[u8; 32]>(..),
        }
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(limit.min(1 << 16));
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(db_err)?;
            out.push((Hash(*k.value()), Loc::from_bytes(v.value())));
        }
        Ok(out)
    }

    /// Each pack number with its committed length.
    pub fn packs(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(PACKS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((k.value(), v.value()));
        }
        Ok(out)
    }

    /// The signed manifest bytes of an update.
    pub fn manifest_bytes(&self, id: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MANIFESTS).map_err(db_err)?;
        Ok(table
            .get(&id.0)
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }

    /// Every stored update: id and signed manifest bytes, in id order.
    pub fn manifests(&self) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MANIFESTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((Hash(*k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The update published as this module version, if any.
    pub fn update_by_name(&self, name: &ModuleVersion) -> Result<Option<Hash>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(NAMES).map_err(db_err)?;
        Ok(table
            .get(name.key().as_str())
            .map_err(db_err)?
            .map(|v| Hash(*v.value())))
    }

    /// Finds the update whose id starts with `prefix` (at least 4 hex digits).
    pub fn resolve_update(&self, prefix: &str) -> Result<Hash, StoreError> {
        let unknown = || StoreError::UnknownUpdate(prefix.chars().take(80).collect());
        let lower = prefix.to_ascii_lowercase();
        if lower.len() < 4 || lower.len() > 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MANIFESTS).map_err(db_err)?;
        let mut matches = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let id = Hash(*entry.map_err(db_err)?.0.value());
            if id.to_hex().starts_with(&lower) {
                matches.push(id);
            }
        }
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(unknown()),
            many => Err(StoreError::AmbiguousUpdate {
                prefix: lower,
                count: many.len(),
            }),
        }
    }

    /// Starts a batch of chunk writes. One writer at a time; others wait.
    pub fn writer(&self) -> ChunkWriter<'_> {
        ChunkWriter {
            store: self,
            appender: self.appender.lock().unwrap_or_else(|p| p.into_inner()),
            pending: HashMap::new(),
            pending_bytes: 0,
            writeback: Writeback::start(),
            unsynced: 0,
        }
    }
}

/// The name under which a module version is indexed.
pub struct ModuleVersion<'a> {
    pub tenant: &'a str,
    pub category: &'a str,
    pub id: &'a str,
    pub version: &'a str,
}

impl ModuleVersion<'_> {
    /// `/` cannot occur in any of the parts (see `content::names`), so the key is unique.
    fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.tenant, self.category, self.id, self.version
        )
    }
}

fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("{pack:08}.pack"))
}

/// Cuts every pack back to its committed length and removes packs never committed.
fn recover_packs(dir: &Path, committed: &HashMap<u32, u64>) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let path = entry.path();
        let pack = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pack"))
            .and_then(|n| n.parse::<u32>().ok());
        let Some(pack) = pack else {
            tracing::warn!(path = %path.display(), "ignoring a file that is not a pack");
            continue;
        };
        match committed.get(&pack) {
            None => {
                tracing::info!(path = %path.display(), "removing a pack file a crash left uncommitted");
                fs::remove_file(&path).map_err(io("remove", &path))?;
            }
            Some(&len) => {
                let actual = entry.metadata().map_err(io("stat", &path))?.len();
                if actual > len {
                    tracing::info!(path = %path.display(), committed = len, found = actual,
                        "cutting off bytes a crash left uncommitted");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io("open", &path))?;
                    f.set_len(len).map_err(io("truncate", &path))?;
                    f.sync_all().map_err(io("sync", &path))?;
                } else if actual < len {
                    tracing::error!(path = %path.display(), committed = len, found = actual,
                        "pack file is shorter than committed: chunks are missing; run arbor verify");
                }
            }
        }
    }
    Ok(())
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
const WRITEBACK_BYTES: u64 = 16 << 20;

/// A thread that syncs pack files in the background while chunks are still being
/// appended, so the disk writes overlap the hashing and the sync before each commit
/// finds little left to do. Without it, every batch would first fill the page cache
/// and then wait for the disk.
struct Writeback {
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

    /// Asks for a background sync of `file`, unless one is already running.
    fn kick(&self, file: &File) {
        if let (Some(tx), Ok(dup)) = (&self.files, file.try_clone()) {
            let _ = tx.try_send(dup);
        }
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
        let len = u32::try_from(data.len()).map_err(|_| StoreError::BadMeta {
            key: "chunk length",
        })?;
        let offset = self.append(&hash, data)?;
        self.pending.insert(
            hash,
            Loc {
                pack: self.appender.pack,
                offset,
                len,
            },
        );
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
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                if a.len == 0 {
                    f.write_all_at(PACK_MAGIC, 0).map_err(io("write", &path))?;
                    a.len = PACK_MAGIC.len() as u64;
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

    /// Makes the pending chunks durable and visible.
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
        let txn = self.store.db.begin_write().map_err(db_err)?;
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            for (hash, loc) in &self.pending {
                chunks.insert(&hash.0, &loc.to_bytes()).map_err(db_err)?;
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
        self.pending.clear();
        self.pending_bytes = 0;
        if a.len >= PACK_TARGET_BYTES {
            a.file = None;
        }
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
            txn.open_table(MANIFESTS)
                .map_err(db_err)?
                .insert(&id.0, bytes)
                .map_err(db_err)?;
            txn.open_table(NAMES)
                .map_err(db_err)?
                .insert(name.key().as_str(), &id.0)
                .map_err(db_err)?;
            txn.open_table(META)
                .map_err(db_err)?
                .insert(META_PUBLISH_SEQ, seq.to_le_bytes().as_slice())
                .map_err(db_err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8) -> (Hash, Vec<u8>) {
        let data = vec![i; 1000 + usize::from(i)];
        (Hash::of(&data), data)
    }

    #[test]
    fn committed_chunks_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::create(dir.path()).expect("create");
            let mut w = store.writer();
            for i in 0..3 {
                let (h, d) = chunk(i);
                assert!(w.put(h, &d).expect("put"));
                assert!(
                    !w.put(h, &d).expect("put again"),
                    "a pending duplicate was stored twice"
                );
            }
            w.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("open");
        for i in 0..3 {
            let (h, d) = chunk(i);
            assert_eq!(store.read_chunk(&h).expect("read"), Some(d));
        }
    }

    #[test]
    fn uncommitted_appends_are_cut_off_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committed_len = {
            let store = Store::create(dir.path()).expect("create");
            let mut w = store.writer();
            let (h, d) = chunk(1);
            w.put(h, &d).expect("put");
            w.flush().expect("flush");
            let (h, d) = chunk(2);
            w.put(h, &d).expect("put"); // never committed: as if the process died here
            store.packs().expect("packs")[0].1
        };
        let pack = dir.path().join(PACKS_DIR).join("00000000.pack");
        assert!(fs::metadata(&pack).expect("stat").len() > committed_len);
        // A pack file that was never committed at all.
        fs::write(dir.path().join(PACKS_DIR).join("00000001.pack"), b"junk").expect("write");

        let store = Store::open(dir.path()).expect("open");
        assert_eq!(fs::metadata(&pack).expect("stat").len(), committed_len);
        assert!(!dir.path().join(PACKS_DIR).join("00000001.pack").exists());
        assert!(store.has_chunk(&chunk(1).0).expect("lookup"));
        assert!(!store.has_chunk(&chunk(2).0).expect("lookup"));
        // Appending resumes at the committed end.
        let mut w = store.writer();
        let (h, d) = chunk(3);
        w.put(h, &d).expect("put");
        w.flush().expect("flush");
        drop(w);
        assert_eq!(store.read_chunk(&h).expect("read"), Some(d));
        assert_eq!(
            store.read_chunk(&chunk(1).0).expect("read"),
            Some(chunk(1).1)
        );
    }

    #[test]
    fn a_second_open_is_refused_while_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _store = Store::create(dir.path()).expect("create");
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Busy(_))));
    }

    #[test]
    fn locations_round_trip() {
        let loc = Loc {
            pack: 7,
            offset: 1 << 40,
            len: 65536,
        };
        assert_eq!(Loc::from_bytes(&loc.to_bytes()), loc);
    }
}
