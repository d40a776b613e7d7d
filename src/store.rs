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
//! (`publish`, `trust`), and re-checks after (`verify`), except that a chunk read to be
//! served is checked against its hash ([`Store::read_checked`]) and a damaged one is
//! quarantined (`quarantine`). After a failed write the store is reopened (`health`):
//! redb refuses every later write once one has failed.

mod groups;
mod health;
mod kept;
mod packs;
mod quarantine;

pub use packs::ChunkWriter;
use packs::*;

pub use groups::{ALL, GroupRecord, MemberChange};
pub use health::PROBE_BYTES;
pub use quarantine::{Quarantined, Unreadable};

use crate::content::Hash;
use crate::content::manifest::MAX_CHUNK_LEN;
use crate::wire;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, mpsc};

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
/// Child node key → CBOR [`ChildRecord`]: the children this node certified.
const CHILDREN: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("children");
/// blake3 of a join token's secret → CBOR [`TokenRecord`].
const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens");

const META_FORMAT: &str = "format";
pub const META_ROOT_KEY: &str = "root_key";
const META_PUBLISH_SEQ: &str = "publish_seq";
const META_STORE_ID: &str = "store_id";
const FORMAT_VERSION: &[u8] = b"arbor-store-1";

/// File name of the metadata database inside a node directory.
pub const DB_FILE: &str = "store.redb";
/// Folder of the pack files inside a node directory.
pub const PACKS_DIR: &str = "packs";
/// A pack starts with this magic and the 16-byte id of the store it belongs to, so
/// recovery never touches a pack that belongs to another store.
const PACK_MAGIC: &[u8; 8] = b"ARBORPK1";
const PACK_HEADER: usize = PACK_MAGIC.len() + 16;
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
    /// The OS reason is part of the message (and not a separate source), so that every
    /// message a user sees says why, once.
    #[error("cannot {action} {path}: {why}")]
    Io {
        action: &'static str,
        path: String,
        why: std::io::Error,
    },
    #[error("{path} is not an arbor store ({why})")]
    NotAStore { path: String, why: String },
    #[error("no update matches {0:?}")]
    UnknownUpdate(String),
    #[error("{0:?} is not an update id: give at least 4 of its hex digits")]
    BadUpdatePrefix(String),
    #[error("{prefix:?} matches {count} updates; give more digits")]
    AmbiguousUpdate { prefix: String, count: usize },
    #[error("a stored membership record is damaged: {0}")]
    BadRecord(String),
    #[error("stored metadata {key} is damaged")]
    BadMeta { key: &'static str },
    #[error("a chunk index entry is damaged (it claims {len} bytes); run arbor verify")]
    BadIndex { len: u32 },
    #[error("a chunk of {len} bytes is over the limit of {MAX_CHUNK_LEN} bytes")]
    ChunkTooLarge { len: usize },
    #[error("the store is damaged, so nothing is written to it: {0}; run arbor verify")]
    Damaged(String),
    #[error(
        "the store is closed after a failed write ({0}); it reopens once the disk takes writes again"
    )]
    Closed(String),
}

/// Opens a table that stores made before it existed do not have until it is first
/// written: `None` then, as if it were empty.
fn open_optional<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => StoreError::Busy(DB_FILE.to_string()),
        other => StoreError::Db(other),
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |why| StoreError::Io {
        action,
        path: path.display().to_string(),
        why,
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
    /// The pack file was created since the last commit: its directory entry must be
    /// made durable too.
    new_pack: bool,
}

/// A node's chunk and metadata store. Cheap to share across threads by reference.
pub struct Store {
    /// The node directory.
    dir: PathBuf,
    /// The open database, or why it is closed. Every transaction holds it for reading,
    /// so that a reopen ([`Store::reopen`]) waits for them and swaps it whole.
    db: RwLock<Result<Database, String>>,
    packs_dir: PathBuf,
    /// Written at the start of every pack of this store.
    pack_header: [u8; PACK_HEADER],
    /// Why writes are refused: committed packs that are missing or cut short.
    damage: Mutex<Vec<String>>,
    appender: Mutex<Appender>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    /// Chunks written to a pack but not yet committed: readable by this process at once,
    /// so a node serves a chunk to its children as soon as it has verified it.
    uncommitted: RwLock<HashMap<Hash, Loc>>,
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
            txn.open_table(CHILDREN).map_err(db_err)?;
            txn.open_table(TOKENS).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(META_FORMAT, FORMAT_VERSION).map_err(db_err)?;
            let mut id = [0u8; 16];
            getrandom::fill(&mut id).map_err(|e| StoreError::Io {
                action: "generate an id for",
                path: dir.display().to_string(),
                why: std::io::Error::other(e.to_string()),
            })?;
            meta.insert(META_STORE_ID, id.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Store::from_db(db, dir)
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
        Store::from_db(db, dir)
    }

    /// Checks that `db` is an arbor store, then recovers its packs from a crash.
    fn from_db(db: Database, dir: &Path) -> Result<Store, StoreError> {
        let opened = recover(&db, dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db: RwLock::new(Ok(db)),
            packs_dir: dir.join(PACKS_DIR),
            pack_header: opened.pack_header,
            damage: Mutex::new(opened.damage),
            appender: Mutex::new(opened.appender),
            readers: Mutex::new(HashMap::new()),
            uncommitted: RwLock::new(HashMap::new()),
        })
    }

    /// A hold on the open database for one transaction (hold it until the transaction
    /// ends). Never take a second hold in the same thread while one is held: a reopen
    /// waiting in between would wait forever.
    fn db(&self) -> Result<Db<'_>, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        match &*guard {
            Ok(_) => Ok(Db(guard)),
            Err(why) => Err(StoreError::Closed(why.clone())),
        }
    }

    fn pack_path(&self, pack: u32) -> PathBuf {
        pack_path(&self.packs_dir, pack)
    }

    /// A node metadata value (the node layer names its keys).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        Ok(table.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// Sets and removes node metadata values in one durable transaction.
    pub fn update_meta(&self, set: &[(&str, &[u8])], remove: &[&str]) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(META).map_err(db_err)?;
            for (k, v) in set {
                table.insert(*k, *v).map_err(db_err)?;
            }
            for k in remove {
                table.remove(*k).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.update_meta(&[(key, value)], &[])
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

    /// Where a chunk is stored, if it is (committed, or written by a live writer).
    pub fn chunk_loc(&self, hash: &Hash) -> Result<Option<Loc>, StoreError> {
        if let Some(loc) = self
            .uncommitted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            return Ok(Some(*loc));
        }
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
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
        // The length comes from the index; a damaged entry must not cause a huge allocation.
        if loc.len > MAX_CHUNK_LEN + RECORD_HEADER as u32 {
            return Err(StoreError::BadIndex { len: loc.len });
        }
        // Every byte is overwritten by the read: only a longer buffer is zero-filled.
        buf.resize(loc.len as usize, 0);
        self.read_into(loc, buf)
    }

    /// Reads the bytes at `loc` into `out`, which must be exactly `loc.len` long.
    pub fn read_into(&self, loc: Loc, out: &mut [u8]) -> Result<(), StoreError> {
        if out.len() != loc.len as usize {
            return Err(StoreError::BadIndex { len: loc.len });
        }
        let f = self.reader(loc.pack)?;
        f.read_exact_at(out, loc.offset)
            .map_err(io("read", &self.pack_path(loc.pack)))
    }

    /// Up to `limit` chunk index entries with hashes above `after`, in hash order.
    pub fn chunk_index_page(
        &self,
        after: Option<&Hash>,
        limit: usize,
    ) -> Result<Vec<(Hash, Loc)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
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
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
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
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MANIFESTS).map_err(db_err)?;
        Ok(table
            .get(&id.0)
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }

    /// Every stored update: id and signed manifest bytes, in id order.
    pub fn manifests(&self) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
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
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let table = txn.open_table(NAMES).map_err(db_err)?;
        Ok(table
            .get(name.key().as_str())
            .map_err(db_err)?
            .map(|v| Hash(*v.value())))
    }

    /// Finds the update whose id starts with `prefix` (at least 4 hex digits).
    pub fn resolve_update(&self, prefix: &str) -> Result<Hash, StoreError> {
        let shown: String = prefix.chars().take(80).collect();
        let lower = prefix.to_ascii_lowercase();
        if lower.len() < 4 || lower.len() > 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::BadUpdatePrefix(shown));
        }
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
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
            [] => Err(StoreError::UnknownUpdate(shown)),
            many => Err(StoreError::AmbiguousUpdate {
                prefix: lower,
                count: many.len(),
            }),
        }
    }

    /// Stores a signed manifest received from the parent, under its module name. The
    /// caller has verified it; its chunks arrive separately.
    pub fn put_manifest(
        &self,
        id: &Hash,
        bytes: &[u8],
        name: &ModuleVersion,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        insert_manifest(&txn, id, bytes, name)?;
        txn.commit().map_err(db_err)
    }

    /// Records a join token this node will redeem once.
    pub fn add_token(&self, secret_hash: &Hash, record: &TokenRecord) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(TOKENS)
            .map_err(db_err)?
            .insert(&secret_hash.0, wire::encode(record).as_slice())
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Redeems a join token for `child` at time `now`, atomically: the token is marked
    /// used and the child recorded in one transaction, so a token admits one node only.
    pub fn redeem_token(
        &self,
        secret_hash: &Hash,
        child: &[u8; 32],
        now: u64,
    ) -> Result<Result<ChildRecord, TokenRefusal>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        let outcome = {
            let mut tokens = txn.open_table(TOKENS).map_err(db_err)?;
            let record: Option<TokenRecord> = match tokens.get(&secret_hash.0).map_err(db_err)? {
                None => None,
                Some(v) => Some(decode_record(v.value(), "token record")?),
            };
            match record {
                None => Err(TokenRefusal::Unknown),
                Some(t) if t.used => Err(TokenRefusal::Used),
                Some(t) if t.expires <= now => Err(TokenRefusal::Expired { at: t.expires }),
                Some(mut t) => {
                    t.used = true;
                    tokens
                        .insert(&secret_hash.0, wire::encode(&t).as_slice())
                        .map_err(db_err)?;
                    // A group deleted since the token was issued is not joined.
                    let existing = txn.open_table(groups::GROUPS).map_err(db_err)?;
                    let mut joined_groups = Vec::new();
                    for g in t.groups {
                        if existing.get(g.as_str()).map_err(db_err)?.is_some() {
                            joined_groups.push(g);
                        }
                    }
                    drop(existing);
                    let child_record = ChildRecord {
                        client: t.client,
                        groups: joined_groups,
                        joined: now,
                        revoked: false,
                    };
                    txn.open_table(CHILDREN)
                        .map_err(db_err)?
                        .insert(child, wire::encode(&child_record).as_slice())
                        .map_err(db_err)?;
                    Ok(child_record)
                }
            }
        };
        if outcome.is_ok() {
            txn.commit().map_err(db_err)?;
        }
        Ok(outcome)
    }

    /// Every child this node has certified, revoked ones included.
    pub fn children(&self) -> Result<Vec<([u8; 32], ChildRecord)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CHILDREN).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((*k.value(), decode_record(v.value(), "child record")?));
        }
        Ok(out)
    }

    /// The record of one child, if this node certified it.
    pub fn child(&self, child: &[u8; 32]) -> Result<Option<ChildRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        read_child(&txn.open_table(CHILDREN).map_err(db_err)?, child)
    }

    /// Marks a child revoked. Returns false if it was never a child of this node.
    pub fn revoke_child(&self, child: &[u8; 32]) -> Result<bool, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        let found = {
            let mut table = txn.open_table(CHILDREN).map_err(db_err)?;
            match read_child(&table, child)? {
                None => false,
                Some(mut r) => {
                    r.revoked = true;
                    table
                        .insert(child, wire::encode(&r).as_slice())
                        .map_err(db_err)?;
                    true
                }
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(found)
    }
}

/// A read hold on the open database (see [`Store::db`]).
struct Db<'a>(RwLockReadGuard<'a, Result<Database, String>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        match &*self.0 {
            Ok(db) => db,
            // Store::db hands out holds on an open database only, and a reopen cannot
            // close it while a hold exists.
            Err(_) => unreachable!("a hold on a closed database"),
        }
    }
}

/// What opening a store's database finds: its pack header, its damage, and where
/// appending resumes, after cutting off what a crash left uncommitted.
struct Opened {
    pack_header: [u8; PACK_HEADER],
    damage: Vec<String>,
    appender: Appender,
}

/// Checks that `db` is an arbor store, then recovers its packs from a crash.
fn recover(db: &Database, dir: &Path) -> Result<Opened, StoreError> {
    let not_a_store = |why: &str| StoreError::NotAStore {
        path: dir.display().to_string(),
        why: why.to_string(),
    };
    let (format, id, committed) = {
        let txn = db.begin_read().map_err(db_err)?;
        let meta = txn
            .open_table(META)
            .map_err(|_| not_a_store("no metadata table"))?;
        let get = |key| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
        };
        let (format, id) = (get(META_FORMAT)?, get(META_STORE_ID)?);
        let table = txn.open_table(PACKS).map_err(db_err)?;
        let mut packs = HashMap::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            packs.insert(k.value(), v.value());
        }
        (format, id, packs)
    };
    if format.as_deref() != Some(FORMAT_VERSION) {
        return Err(not_a_store("unknown store format"));
    }
    let id: [u8; 16] = id
        .and_then(|v| v.try_into().ok())
        .ok_or(StoreError::BadMeta { key: META_STORE_ID })?;
    let mut pack_header = [0u8; PACK_HEADER];
    pack_header[..PACK_MAGIC.len()].copy_from_slice(PACK_MAGIC);
    pack_header[PACK_MAGIC.len()..].copy_from_slice(&id);
    let damage = recover_packs(&dir.join(PACKS_DIR), &committed, &pack_header)?;
    for d in &damage {
        tracing::error!("{d}; run arbor verify");
    }
    let (pack, len) = committed
        .iter()
        .max_by_key(|(p, _)| **p)
        .map(|(p, l)| (*p, *l))
        .unwrap_or((0, 0));
    Ok(Opened {
        pack_header,
        damage,
        appender: Appender {
            pack,
            file: None,
            len,
            new_pack: false,
        },
    })
}

/// A child this node certified. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub client: bool,
    pub groups: Vec<String>,
    /// Unix seconds when it redeemed its join token.
    pub joined: u64,
    /// Revoked children are refused; the record stays so the refusal can say why.
    pub revoked: bool,
}

/// A join token this node issued. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub used: bool,
    pub client: bool,
    pub groups: Vec<String>,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

/// Why a join token was not accepted.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefusal {
    #[error("the join token is not one this parent issued (wrong token, or wrong parent)")]
    Unknown,
    #[error("the join token was already used; ask the parent's admin for a new one")]
    Used,
    #[error("the join token expired at {at} (Unix seconds); ask the parent's admin for a new one")]
    Expired { at: u64 },
}

/// One child's record from the CHILDREN table of a read or write transaction.
fn read_child(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    child: &[u8; 32],
) -> Result<Option<ChildRecord>, StoreError> {
    match table.get(child).map_err(db_err)? {
        None => Ok(None),
        Some(v) => Ok(Some(decode_record(v.value(), "child record")?)),
    }
}

fn decode_record<T: Serialize + serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    wire::decode_canonical(bytes, 1 << 16, what).map_err(|e| StoreError::BadRecord(e.to_string()))
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

/// Indexes a signed manifest by id and by module name.
fn insert_manifest(
    txn: &redb::WriteTransaction,
    id: &Hash,
    bytes: &[u8],
    name: &ModuleVersion,
) -> Result<(), StoreError> {
    txn.open_table(MANIFESTS)
        .map_err(db_err)?
        .insert(&id.0, bytes)
        .map_err(db_err)?;
    txn.open_table(NAMES)
        .map_err(db_err)?
        .insert(name.key().as_str(), &id.0)
        .map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(store: &Store, hash: &Hash) -> Option<Vec<u8>> {
        let loc = store.chunk_loc(hash).expect("lookup")?;
        let mut buf = Vec::new();
        store.read_at(loc, &mut buf).expect("read");
        Some(buf)
    }

    /// A store with one committed chunk; returns the path of its pack.
    fn one_chunk_store(dir: &Path) -> PathBuf {
        let store = Store::create(dir).expect("create");
        let mut w = store.writer().expect("writer");
        let (h, d) = chunk(1);
        w.put(h, &d).expect("put");
        w.flush().expect("flush");
        dir.join(PACKS_DIR).join("00000000.pack")
    }

    fn chunk(i: u8) -> (Hash, Vec<u8>) {
        let data = vec![i; 1000 + usize::from(i)];
        (Hash::of(&data), data)
    }

    #[test]
    fn committed_chunks_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::create(dir.path()).expect("create");
            let mut w = store.writer().expect("writer");
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
            assert_eq!(read(&store, &h), Some(d));
        }
    }

    #[test]
    fn uncommitted_appends_are_cut_off_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committed_len = {
            let store = Store::create(dir.path()).expect("create");
            let mut w = store.writer().expect("writer");
            let (h, d) = chunk(1);
            w.put(h, &d).expect("put");
            w.flush().expect("flush");
            let (h, d) = chunk(2);
            w.put(h, &d).expect("put"); // never committed: as if the process died here
            store.packs().expect("packs")[0].1
        };
        let pack = dir.path().join(PACKS_DIR).join("00000000.pack");
        assert!(fs::metadata(&pack).expect("stat").len() > committed_len);
        // A pack of this store that was never committed at all.
        let mut uncommitted = fs::read(&pack).expect("read")[..PACK_HEADER].to_vec();
        uncommitted.extend_from_slice(b"junk");
        fs::write(
            dir.path().join(PACKS_DIR).join("00000001.pack"),
            uncommitted,
        )
        .expect("write");

        let store = Store::open(dir.path()).expect("open");
        assert_eq!(fs::metadata(&pack).expect("stat").len(), committed_len);
        assert!(!dir.path().join(PACKS_DIR).join("00000001.pack").exists());
        assert!(store.has_chunk(&chunk(1).0).expect("lookup"));
        assert!(!store.has_chunk(&chunk(2).0).expect("lookup"));
        // Appending resumes at the committed end.
        let mut w = store.writer().expect("writer");
        let (h, d) = chunk(3);
        w.put(h, &d).expect("put");
        w.flush().expect("flush");
        drop(w);
        assert_eq!(read(&store, &h), Some(d));
        assert_eq!(read(&store, &chunk(1).0), Some(chunk(1).1));
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

    #[test]
    fn a_missing_or_short_pack_blocks_writes() {
        for damage in ["missing", "short"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let pack = one_chunk_store(dir.path());
            if damage == "missing" {
                fs::remove_file(&pack).expect("rm");
            } else {
                let f = OpenOptions::new().write(true).open(&pack).expect("open");
                f.set_len(30).expect("truncate");
            }
            let store = Store::open(dir.path()).expect("a damaged store still opens for verify");
            let err = store.writer().err().expect("writes refused").to_string();
            assert!(
                err.contains("damaged") && err.contains("00000000.pack"),
                "{damage}: {err}"
            );
            assert!(!pack.exists() || fs::metadata(&pack).expect("stat").len() == 30);
        }
    }

    #[test]
    fn another_stores_packs_are_left_alone() {
        let mine = tempfile::tempdir().expect("tempdir");
        let theirs = tempfile::tempdir().expect("tempdir");
        one_chunk_store(mine.path());
        let their_pack = one_chunk_store(theirs.path());
        let their_bytes = fs::read(&their_pack).expect("read");
        // Their pack in our packs folder, under a number our store never committed.
        let stray = mine.path().join(PACKS_DIR).join("00000007.pack");
        fs::copy(&their_pack, &stray).expect("copy");
        // Our database in their folder: their committed pack 0 is not ours.
        fs::copy(mine.path().join(DB_FILE), theirs.path().join(DB_FILE)).expect("copy");

        drop(Store::open(mine.path()).expect("open"));
        assert_eq!(fs::read(&stray).expect("still there"), their_bytes);
        let store = Store::open(theirs.path()).expect("open");
        assert_eq!(fs::read(&their_pack).expect("still there"), their_bytes);
        assert!(store.writer().is_err(), "wrote into another store's pack");
    }

    #[test]
    fn update_prefixes_resolve_or_say_why_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path()).expect("create");
        for (i, first) in [[0xab, 0xcd, 0x01], [0xab, 0xcd, 0x02]].iter().enumerate() {
            let mut id = [0u8; 32];
            id[..3].copy_from_slice(first);
            let version = i.to_string();
            let name = ModuleVersion {
                tenant: "t",
                category: "c",
                id: "m",
                version: &version,
            };
            store
                .writer()
                .expect("writer")
                .commit_manifest(&Hash(id), b"m", &name, 1)
                .expect("commit");
        }
        assert!(matches!(
            store.resolve_update("abcd"),
            Err(StoreError::AmbiguousUpdate { count: 2, .. })
        ));
        assert_eq!(store.resolve_update("ABCD01").expect("unique").0[2], 1);
        assert!(matches!(
            store.resolve_update("abcd03"),
            Err(StoreError::UnknownUpdate(_))
        ));
        assert!(matches!(
            store.resolve_update("abc"),
            Err(StoreError::BadUpdatePrefix(_))
        ));
        assert!(matches!(
            store.resolve_update("wxyz"),
            Err(StoreError::BadUpdatePrefix(_))
        ));
    }
}
