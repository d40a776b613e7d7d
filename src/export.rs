//! Export: reassembling an update's files from the store, byte for byte.
//!
//! Owns writing an update out to a plain directory: every file at its manifest path,
//! with its mode, each chunk checked against its hash on the way out. It only writes
//! into a directory that is new or empty, so it never overwrites anything. It also owns
//! reading a stored update back ([`stored_manifest`], [`read_chunk`]), which module
//! packages and the client's installer share.

use crate::content::Hash;
use crate::node::Node;
use crate::store::StoreError;
use crate::trust::{SignedManifest, TrustError};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored manifest of update {update} is refused: {source}")]
    Manifest { update: Hash, source: TrustError },
    #[error("{0} exists and is not empty; export writes only into a new or empty directory")]
    NotEmpty(String),
    #[error("chunk {chunk} of {file} is {why}; run arbor verify")]
    BadChunk {
        chunk: Hash,
        file: String,
        why: &'static str,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// What an export wrote.
#[derive(Debug, serde::Serialize)]
pub struct ExportOutcome {
    pub update_id: Hash,
    pub files: usize,
    pub bytes: u64,
}

/// The signed manifest of stored update `id`, checked against the node's root key.
pub fn stored_manifest(node: &Node, id: &Hash, now: u64) -> Result<SignedManifest, ExportError> {
    let bytes = node
        .store
        .manifest_bytes(id)?
        .ok_or(StoreError::UnknownUpdate(id.to_hex()))?;
    SignedManifest::open(&bytes, &node.root_key, now).map_err(|source| ExportError::Manifest {
        update: *id,
        source,
    })
}

/// Reads stored chunk `chunk` of `file` into `buf`, checked against its hash.
pub fn read_chunk(
    node: &Node,
    chunk: &Hash,
    file: &str,
    buf: &mut Vec<u8>,
) -> Result<(), ExportError> {
    let bad = |why| ExportError::BadChunk {
        chunk: *chunk,
        file: file.to_string(),
        why,
    };
    let loc = node
        .store
        .chunk_loc(chunk)?
        .ok_or_else(|| bad("missing from the store"))?;
    node.store.read_at(loc, buf)?;
    if Hash::of(buf) != *chunk {
        return Err(bad("corrupt in the store"));
    }
    Ok(())
}

/// Writes update `id` into `out`.
pub fn export(node: &Node, id: &Hash, out: &Path, now: u64) -> Result<ExportOutcome, ExportError> {
    let signed = stored_manifest(node, id, now)?;
    match fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ExportError::NotEmpty(out.display().to_string()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(out).map_err(io("create", out))?
        }
        Err(e) => return Err(io("read", out)(e)),
    }
    let mut buf = Vec::new();
    for file in &signed.manifest.files {
        // Paths were validated when the manifest was opened: relative, no `..`.
        let path = out.join(&file.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("create", &path))?;
        for c in &file.chunks {
            read_chunk(node, &c.hash(), &file.path, &mut buf)?;
            f.write_all(&buf).map_err(io("write", &path))?;
        }
        f.set_permissions(fs::Permissions::from_mode(file.mode))
            .map_err(io("set the mode of", &path))?;
    }
    Ok(ExportOutcome {
        update_id: *id,
        files: signed.manifest.files.len(),
        bytes: signed.manifest.total_size,
    })
}
