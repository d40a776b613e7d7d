//! Tests of the installer, by concern; the helpers they share are here.

mod disk;
mod install;
mod modules;
mod paths;
mod repair;
mod rollback;

use super::*;
use crate::content::manifest::{ChunkRef, Manifest};
use crate::trust::SecretKey;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use tempfile::TempDir;

type Chunks = HashMap<Hash, Vec<u8>>;

#[derive(Debug, thiserror::Error)]
#[error("chunk not available")]
struct Gone;

/// A signed update of acme/plugins/viewer with these (sorted) files, cut into 4-byte
/// chunks, and its chunks.
fn update(version: &str, files: &[(&str, u32, &[u8])]) -> (SignedManifest, Chunks) {
    update_of(["acme", "plugins", "viewer"], version, files, 4)
}

/// A signed update of `tenant/category/id` with these (sorted) files, cut into chunks
/// of `chunk_len` bytes, and its chunks.
fn update_of(
    [tenant, category, id]: [&str; 3],
    version: &str,
    files: &[(&str, u32, &[u8])],
    chunk_len: usize,
) -> (SignedManifest, Chunks) {
    let mut chunks = Chunks::new();
    let mut entries = Vec::new();
    for (path, mode, content) in files {
        let refs = content
            .chunks(chunk_len)
            .map(|c| {
                chunks.insert(Hash::of(c), c.to_vec());
                ChunkRef(Hash::of(c), c.len() as u32)
            })
            .collect();
        entries.push(FileEntry {
            mode: *mode,
            path: path.to_string(),
            size: content.len() as u64,
            chunks: refs,
        });
    }
    let manifest = Manifest {
        id: id.into(),
        total_size: entries.iter().map(|f| f.size).sum(),
        files: entries,
        tenant: tenant.into(),
        created: 1_700_000_000,
        version: version.into(),
        category: category.into(),
        description: None,
        post_install: None,
    };
    let signed = SignedManifest::sign(&SecretKey::from_seed([7; 32]), 1, manifest).expect("valid");
    (signed, chunks)
}

fn v1() -> (SignedManifest, Chunks) {
    update(
        "1.0",
        &[
            ("bin/viewer", 0o755, b"#!/bin/sh\necho one\n"),
            ("share/doc/README", 0o644, b"version one"),
        ],
    )
}

fn v2() -> (SignedManifest, Chunks) {
    update(
        "2.0",
        &[
            ("bin/viewer", 0o755, b"#!/bin/sh\necho two\n"),
            ("lib/extra.so", 0o644, b"new in two"),
        ],
    )
}

fn from(chunks: &Chunks) -> impl FnMut(&Hash) -> Result<Vec<u8>, Gone> + '_ {
    |h| chunks.get(h).cloned().ok_or(Gone)
}

fn put(root: &Path, signed: &SignedManifest, chunks: &Chunks) -> Result<Installed, InstallError> {
    install(root, signed, 1_800_000_000, from(chunks))
}

fn module_dir(root: &Path) -> PathBuf {
    root.join("acme/plugins")
}

fn current(root: &Path) -> Option<String> {
    status(root, "acme", "plugins", "viewer")
        .expect("status")
        .current
        .map(|m| m.version)
}

fn previous(root: &Path) -> Option<String> {
    status(root, "acme", "plugins", "viewer")
        .expect("status")
        .previous
        .map(|m| m.version)
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join("acme/plugins/viewer").join(rel)).expect("read")
}

fn tmp() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).expect("read dir").next().is_none()
}

fn versions(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(module_dir(root).join(".viewer.versions"))
        .expect("versions")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn module(tenant: &str, category: &str, id: &str) -> ModuleName {
    ModuleName {
        tenant: tenant.into(),
        category: category.into(),
        id: id.into(),
    }
}

fn viewer(root: &Path) -> Module {
    Module::locate(root, "acme", "plugins", "viewer", false)
        .expect("locate")
        .expect("installed")
}

/// The names in the module directory, sorted.
fn module_entries(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(module_dir(root))
        .expect("module dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
