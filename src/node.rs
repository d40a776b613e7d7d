//! A node directory: its layout, its creation, and opening it for use.
//!
//! ```text
//! DIR/node.key     the node's ed25519 key (its libp2p identity), mode 0600
//! DIR/root.key     the root (trust anchor) key, on the root node only, mode 0600
//! DIR/store.redb   metadata: chunk index, manifests, pinned root key (see `store`)
//! DIR/packs/       chunk bytes
//! DIR/admin.token the admin API's bearer token, mode 0600 (see `admin`)
//! DIR/admin.addr  where the running daemon's admin API answers
//! ```
//!
//! A node directory is created whole or not at all: it is built under a temporary name
//! next to DIR and renamed into place. A root node is ready at once; a joining node
//! holds its join token until its first run redeems it for a membership certificate
//! chain and the root key, which are then pinned in the store.

use crate::store::{Store, StoreError};
use crate::trust::member::{JoinToken, MAX_CHAIN_BYTES};
use crate::trust::{Envelope, KeyFileError, PublicKey, SecretKey};
use crate::wire;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

pub const NODE_KEY_FILE: &str = "node.key";
pub const ROOT_KEY_FILE: &str = "root.key";

/// Store metadata keys owned by this module.
const META_JOIN_TOKEN: &str = "join_token";
const META_CHAIN: &str = "chain";
const META_PARENT: &str = "parent";
const META_PARENT_ADDR: &str = "parent_addr";

/// Why a node directory could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0} already holds files; arbor init only creates new node directories")]
    Exists(String),
    #[error("{0} is not an arbor node directory (no {NODE_KEY_FILE}); create one with arbor init")]
    NotANode(String),
    #[error("cannot {action} {path}: {why}")]
    Io {
        action: &'static str,
        path: String,
        why: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the node's store has no pinned root key; the node directory is damaged")]
    NoRootKey,
    #[error(
        "this node has not joined its tree yet; start it with arbor run to redeem its join token"
    )]
    NotJoined,
    #[error("stored {0} is damaged")]
    BadMeta(&'static str),
    #[error("{ROOT_KEY_FILE} does not match the root key pinned in the store")]
    RootKeyMismatch,
    #[error("this node is not the root: only the root holds {ROOT_KEY_FILE} and can sign updates")]
    NotRoot,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |why| NodeError::Io {
        action,
        path: path.display().to_string(),
        why,
    }
}

/// An open node directory.
pub struct Node {
    pub dir: PathBuf,
    pub store: Store,
    pub node_key: SecretKey,
    /// The pinned trust anchor.
    pub root_key: PublicKey,
    /// Present on the root node only.
    root_secret: Option<SecretKey>,
}

impl Node {
    /// Creates a root node in `dir`: node key, root key, empty store.
    pub fn init_root(dir: &Path) -> Result<Node, NodeError> {
        let root_secret = SecretKey::generate()?;
        create(dir, |staging, store| {
            root_secret.write_new(&staging.join(ROOT_KEY_FILE))?;
            Ok(store.pin_root_key(&root_secret.public().0)?)
        })?;
        Node::open(dir)
    }

    /// Creates a node that will join under the parent named in `token` on its first
    /// run. Returns its node id.
    pub fn init_join(dir: &Path, token: &JoinToken) -> Result<String, NodeError> {
        let text = token.to_text();
        create(dir, |_, store| {
            Ok(store.update_meta(&[(META_JOIN_TOKEN, text.as_bytes())], &[])?)
        })
    }

    /// The join token of a node that has not joined yet.
    pub fn pending_join(store: &Store) -> Result<Option<JoinToken>, NodeError> {
        match store.meta(META_JOIN_TOKEN)? {
            None => Ok(None),
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| JoinToken::parse(t).ok())
                .map(Some)
                .ok_or(NodeError::BadMeta(META_JOIN_TOKEN)),
        }
    }

    /// Records a redeemed join: pins the root key, keeps the certificate chain and the
    /// parent, and forgets the token, in one transaction.
    pub fn complete_join(
        store: &Store,
        root: &PublicKey,
        chain: &[Envelope],
        token: &JoinToken,
    ) -> Result<(), NodeError> {
        let chain_bytes = wire::encode(&chain);
        store.update_meta(
            &[
                (crate::store::META_ROOT_KEY, root.0.as_slice()),
                (META_CHAIN, &chain_bytes),
                (META_PARENT, token.parent.0.as_slice()),
                (META_PARENT_ADDR, token.addr.as_bytes()),
            ],
            &[META_JOIN_TOKEN],
        )?;
        Ok(())
    }

    /// Opens an existing node directory.
    pub fn open(dir: &Path) -> Result<Node, NodeError> {
        let key_path = dir.join(NODE_KEY_FILE);
        if !key_path.is_file() {
            return Err(NodeError::NotANode(dir.display().to_string()));
        }
        let node_key = SecretKey::read(&key_path)?;
        let store = Store::open(dir)?;
        let Some(root_key) = store.root_key()? else {
            return Err(match Node::pending_join(&store)? {
                Some(_) => NodeError::NotJoined,
                None => NodeError::NoRootKey,
            });
        };
        let root_key = PublicKey(root_key);
        let root_path = dir.join(ROOT_KEY_FILE);
        let root_secret = if root_path.exists() {
            let key = SecretKey::read(&root_path)?;
            if key.public() != root_key {
                return Err(NodeError::RootKeyMismatch);
            }
            Some(key)
        } else {
            None
        };
        Ok(Node {
            dir: dir.to_path_buf(),
            store,
            node_key,
            root_key,
            root_secret,
        })
    }

    /// The root signing key; only the root node has it.
    pub fn root_secret(&self) -> Result<&SecretKey, NodeError> {
        self.root_secret.as_ref().ok_or(NodeError::NotRoot)
    }

    /// This node's id (its libp2p PeerId).
    pub fn node_id(&self) -> String {
        self.node_key.public().node_id()
    }

    /// Whether this is the root node (it holds the root key).
    pub fn is_root(&self) -> bool {
        self.root_secret.is_some()
    }

    /// A member's parent: its key and last known address. `None` on the root.
    pub fn parent(&self) -> Result<Option<(PublicKey, String)>, NodeError> {
        let (Some(key), Some(addr)) = (
            self.store.meta(META_PARENT)?,
            self.store.meta(META_PARENT_ADDR)?,
        ) else {
            return Ok(None);
        };
        let key = key
            .try_into()
            .map_err(|_| NodeError::BadMeta(META_PARENT))?;
        let addr = String::from_utf8(addr).map_err(|_| NodeError::BadMeta(META_PARENT_ADDR))?;
        Ok(Some((PublicKey(key), addr)))
    }

    /// A member's certificate chain, as last issued by its parent.
    pub fn chain(&self) -> Result<Vec<Envelope>, NodeError> {
        let bytes = self
            .store
            .meta(META_CHAIN)?
            .ok_or(NodeError::BadMeta(META_CHAIN))?;
        wire::decode_canonical(&bytes, MAX_CHAIN_BYTES, "certificate chain")
            .map_err(|_| NodeError::BadMeta(META_CHAIN))
    }

    /// Keeps a renewed certificate chain.
    pub fn set_chain(&self, chain: &[Envelope]) -> Result<(), NodeError> {
        Ok(self
            .store
            .update_meta(&[(META_CHAIN, &wire::encode(&chain))], &[])?)
    }
}

/// Creates a node directory whole or not at all: a fresh node key and store are built
/// in a staging directory, `fill` adds what the kind of node needs, and the staging
/// directory is renamed into place. Returns the new node's id.
fn create(
    dir: &Path,
    fill: impl FnOnce(&Path, &Store) -> Result<(), NodeError>,
) -> Result<String, NodeError> {
    let shown = dir.display().to_string();
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(NodeError::Exists(shown));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("use", dir)(e)),
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".arbor-init-")
        .tempdir_in(&parent)
        .map_err(io("create a directory in", &parent))?;
    let node_key = SecretKey::generate()?;
    node_key.write_new(&staging.path().join(NODE_KEY_FILE))?;
    {
        let store = Store::create(staging.path())?;
        fill(staging.path(), &store)?;
    }
    fs::set_permissions(
        staging.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(io("set permissions on", staging.path()))?;
    // rename(2) replaces an empty directory and fails on a non-empty one, so a
    // directory that gained files since the check above is still never touched.
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, dir) {
        let _ = fs::remove_dir_all(&staged);
        let gained_files = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
        return Err(if gained_files {
            NodeError::Exists(shown)
        } else {
            io("create", dir)(e)
        });
    }
    // Make the new directory entry itself durable.
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", &parent))?;
    Ok(node_key.public().node_id())
}
