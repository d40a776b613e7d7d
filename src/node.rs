//! A node directory: its layout, its creation, and opening it for use.
//!
//! ```text
//! DIR/node.key     the node's ed25519 key (its libp2p identity), mode 0600
//! DIR/root.key     the root (trust anchor) key, on the root node only, mode 0600
//! DIR/store.redb   metadata: chunk index, manifests, pinned root key (see `store`)
//! DIR/packs/       chunk bytes
//! ```
//!
//! A node directory is created whole or not at all: it is built under a temporary name
//! next to DIR and renamed into place.

use crate::store::{Store, StoreError};
use crate::trust::{KeyFileError, PublicKey, SecretKey};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

pub const NODE_KEY_FILE: &str = "node.key";
pub const ROOT_KEY_FILE: &str = "root.key";

/// Why a node directory could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0} already holds files; arbor init only creates new node directories")]
    Exists(String),
    #[error("{0} is not an arbor node directory (no {NODE_KEY_FILE}); create one with arbor init")]
    NotANode(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the node's store has no pinned root key; the node directory is damaged")]
    NoRootKey,
    #[error("{ROOT_KEY_FILE} does not match the root key pinned in the store")]
    RootKeyMismatch,
    #[error("this node is not the root: only the root holds {ROOT_KEY_FILE} and can sign updates")]
    NotRoot,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |source| NodeError::Io {
        action,
        path: path.display().to_string(),
        source,
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
        let root_secret = SecretKey::generate()?;
        node_key.write_new(&staging.path().join(NODE_KEY_FILE))?;
        root_secret.write_new(&staging.path().join(ROOT_KEY_FILE))?;
        {
            let store = Store::create(staging.path())?;
            store.pin_root_key(&root_secret.public().0)?;
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
        Node::open(dir)
    }

    /// Opens an existing node directory.
    pub fn open(dir: &Path) -> Result<Node, NodeError> {
        let key_path = dir.join(NODE_KEY_FILE);
        if !key_path.is_file() {
            return Err(NodeError::NotANode(dir.display().to_string()));
        }
        let node_key = SecretKey::read(&key_path)?;
        let store = Store::open(dir)?;
        let root_key = PublicKey(store.root_key()?.ok_or(NodeError::NoRootKey)?);
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
}
