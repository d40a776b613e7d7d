//! Publishing: how the root turns a provider's file or directory into a signed update.
//!
//! Owns reading the input (what is accepted: regular files, directories, symlinks only
//! on request), cutting and hashing it, storing new chunks, and signing and storing the
//! manifest. Reading and cutting run on one thread, hashing and storing on another, so
//! the two cores overlap; memory stays at a few segment buffers whatever the input size.
//! Everything about the input is validated before the first byte is stored.

use crate::content::Hash;
use crate::content::chunker::{ChunkParams, Segment, Segmenter};
use crate::content::manifest::{ChunkRef, FileEntry, MAX_FILES, MODE_MASK, Manifest};
use crate::content::names::{self, NameError};
use crate::node::{Node, NodeError};
use crate::store::{ModuleVersion, StoreError};
use crate::trust::{SignedManifest, TrustError};
use std::fs::File;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::SystemTime;

/// What to publish.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub tenant: String,
    pub category: String,
    pub id: String,
    pub version: String,
    pub description: Option<String>,
    /// A file or a directory.
    pub path: PathBuf,
    /// Store what symlinks inside `path` point to, instead of refusing them.
    #[serde(default)]
    pub follow_symlinks: bool,
    /// The command clients run after installing it, if their node allows hooks:
    /// program, then arguments (PROTOCOL.md §5).
    #[serde(default)]
    pub post_install: Option<Vec<String>>,
    /// The creation time to sign into the manifest (Unix seconds), if not now: a
    /// package (`crate::package`) keeps its own, so that its round trip is exact.
    #[serde(default)]
    pub created: Option<u64>,
}

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishOutcome {
    pub update_id: Hash,
    /// Total size of the update's files.
    pub bytes: u64,
    /// Bytes of chunks that were not in the store before.
    pub new_bytes: u64,
    /// Distinct chunks in the update.
    pub chunks: usize,
    /// True when this exact content was already published under this version.
    pub already_published: bool,
}

/// Why a publish was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{path:?}: {why}")]
    Input { path: String, why: String },
    #[error("nothing to publish: {path:?} holds no files")]
    Empty { path: String },
    #[error(
        "{path:?} is a symlink; arbor does not publish links (pass --follow-symlinks to publish what it points to)"
    )]
    Symlink { path: String },
    #[error("the input has more than {MAX_FILES} files")]
    TooManyFiles,
    #[error("{path:?} changed while it was being published; publish again once it is stable")]
    Changed { path: String },
    #[error(
        "{module} version {version} is already published with different content (update {existing}); publish it under a new version"
    )]
    Conflict {
        module: String,
        version: String,
        existing: Hash,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Trust(#[from] TrustError),
}

fn input_err(path: &Path, why: impl std::fmt::Display) -> PublishError {
    PublishError::Input {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// A regular file found in the input.
#[derive(Debug)]
pub struct InputFile {
    pub source: PathBuf,
    pub rel: String,
    pub mode: u32,
    pub size: u64,
    /// Modification time at scan, to notice a file rewritten while it is published.
    pub modified: Option<SystemTime>,
}

impl InputFile {
    fn new(source: &Path, rel: String, meta: &std::fs::Metadata) -> InputFile {
        InputFile {
            source: source.to_path_buf(),
            rel,
            mode: meta.permissions().mode() & MODE_MASK,
            size: meta.len(),
            modified: meta.modified().ok(),
        }
    }

    /// Whether `meta` (of the open file) still describes the file that was scanned.
    fn unchanged(&self, meta: &std::fs::Metadata) -> bool {
        meta.is_file() && meta.len() == self.size && meta.modified().ok() == self.modified
    }
}

/// Lists the regular files under `path` (or `path` itself), sorted by relative path.
///
/// `path` itself may be a symlink (it is followed). Inside a directory, a symlink is
/// refused unless `follow_symlinks`, in which case its target's content is published
/// as a regular file (or directory); symlink loops are refused. Special files (devices,
/// sockets, fifos) and names that are not UTF-8 are refused. Empty directories are not
/// carried.
pub fn scan_input(path: &Path, follow_symlinks: bool) -> Result<Vec<InputFile>, PublishError> {
    let meta = std::fs::metadata(path).map_err(|e| input_err(path, e))?;
    if meta.is_file() {
        let rel = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| input_err(path, "the file name is not valid UTF-8"))?
            .to_string();
        names::check_rel_path(&rel)?;
        return Ok(vec![InputFile::new(path, rel, &meta)]);
    }
    if !meta.is_dir() {
        return Err(input_err(path, "not a regular file or directory"));
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(path)
        .follow_links(follow_symlinks)
        .min_depth(1)
    {
        let entry = entry.map_err(|e| {
            let at = e.path().unwrap_or(path).to_path_buf();
            if e.loop_ancestor().is_some() {
                input_err(&at, "symlink loop")
            } else {
                input_err(&at, e)
            }
        })?;
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        if kind.is_symlink() {
            return Err(PublishError::Symlink {
                path: entry.path().display().to_string(),
            });
        }
        if !kind.is_file() {
            return Err(input_err(
                entry.path(),
                "not a regular file (device, socket or fifo)",
            ));
        }
        let rel = entry
            .path()
            .strip_prefix(path)
            .map_err(|e| input_err(entry.path(), e))?
            .iter()
            .map(|part| part.to_str())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| input_err(entry.path(), "the path is not valid UTF-8"))?
            .join("/");
        names::check_rel_path(&rel)?;
        let meta = entry.metadata().map_err(|e| input_err(entry.path(), e))?;
        files.push(InputFile::new(entry.path(), rel, &meta));
        if files.len() > MAX_FILES {
            return Err(PublishError::TooManyFiles);
        }
    }
    if files.is_empty() {
        return Err(PublishError::Empty {
            path: path.display().to_string(),
        });
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

/// Publishes `req` on the root node. `now` is the creation time written into the
/// manifest (Unix seconds); `progress` is called with the input bytes processed so far.
pub fn publish(
    node: &Node,
    req: &PublishRequest,
    now: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PublishOutcome, PublishError> {
    names::check_module(
        &req.tenant,
        &req.category,
        &req.id,
        &req.version,
        req.description.as_deref(),
    )?;
    if let Some(argv) = &req.post_install {
        names::check_post_install(argv)?;
    }
    let root = node.root_secret()?;
    let files = scan_input(&req.path, req.follow_symlinks)?;
    let name = ModuleVersion {
        tenant: &req.tenant,
        category: &req.category,
        id: &req.id,
        version: &req.version,
    };

    if let Some(existing) = node.store.update_by_name(&name)? {
        // Same version again: idempotent if the content is the same, refused otherwise.
        // Nothing is written either way.
        let entries = chunk_files(&files, None, req.follow_symlinks, progress)?.0;
        let bytes = node
            .store
            .manifest_bytes(&existing)?
            .ok_or(StoreError::UnknownUpdate(existing.to_hex()))?;
        let stored = SignedManifest::open(&bytes, &node.root_key, now)?;
        if stored.manifest.files != entries
            || stored.manifest.description != req.description
            || stored.manifest.post_install != req.post_install
        {
            return Err(PublishError::Conflict {
                module: stored.manifest.module().to_string(),
                version: req.version.clone(),
                existing,
            });
        }
        let (chunks, _) = stored.manifest.distinct_chunks();
        return Ok(PublishOutcome {
            update_id: existing,
            bytes: stored.manifest.total_size,
            new_bytes: 0,
            chunks,
            already_published: true,
        });
    }

    let mut writer = node.store.writer()?;
    let (entries, new_bytes) =
        chunk_files(&files, Some(&mut writer), req.follow_symlinks, progress)?;
    let total_size = entries.iter().map(|f| f.size).sum();
    let manifest = Manifest {
        id: req.id.clone(),
        files: entries,
        tenant: req.tenant.clone(),
        created: now,
        version: req.version.clone(),
        category: req.category.clone(),
        total_size,
        description: req.description.clone(),
        post_install: req.post_install.clone(),
    };
    let seq = node.store.publish_seq()? + 1;
    let signed = SignedManifest::sign(root, seq, manifest)?;
    writer.commit_manifest(&signed.id, &signed.bytes, &name, seq)?;
    let (chunks, _) = signed.manifest.distinct_chunks();
    tracing::info!(update = %signed.id, module = %signed.manifest.module(), version = %req.version,
        bytes = total_size, new_bytes, chunks, "published");
    Ok(PublishOutcome {
        update_id: signed.id,
        bytes: total_size,
        new_bytes,
        chunks,
        already_published: false,
    })
}

/// A message from the reading thread to the hashing thread.
enum Piece {
    Segment(Segment),
    /// The current file is complete; the next segments belong to the next file.
    EndOfFile,
}

/// Cuts and hashes every file; stores new chunks through `writer` when given. Returns
/// the manifest entries and the number of new bytes stored.
fn chunk_files(
    files: &[InputFile],
    mut writer: Option<&mut crate::store::ChunkWriter<'_>>,
    follow_symlinks: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<FileEntry>, u64), PublishError> {
    let (piece_tx, piece_rx) = mpsc::sync_channel::<Piece>(2);
    let (spare_tx, spare_rx) = mpsc::channel::<Segment>();
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_files(files, follow_symlinks, piece_tx, spare_rx));
        let mut entries = Vec::with_capacity(files.len());
        let mut new_bytes = 0u64;
        let mut done = 0u64;
        let mut current: Vec<ChunkRef> = Vec::new();
        let mut consume = || -> Result<(), PublishError> {
            for piece in piece_rx.iter() {
                let mut segment = match piece {
                    Piece::EndOfFile => {
                        let file = &files[entries.len()];
                        let chunks = std::mem::take(&mut current);
                        entries.push(FileEntry {
                            mode: file.mode,
                            path: file.rel.clone(),
                            size: file.size,
                            chunks,
                        });
                        continue;
                    }
                    Piece::Segment(s) => s,
                };
                segment.hash_all();
                for (hash, data) in segment.hashed_chunks() {
                    current.push(ChunkRef(hash, data.len() as u32));
                    if let Some(w) = writer.as_deref_mut()
                        && w.put(hash, data)?
                    {
                        new_bytes += data.len() as u64;
                    }
                }
                done += segment.bytes().len() as u64;
                progress(done);
                // The reader may have finished; then the buffer is simply dropped.
                let _ = spare_tx.send(segment);
            }
            Ok(())
        };
        let consumed = consume();
        // If hashing failed, the channel is closed and the reader stops at its next send.
        drop(piece_rx);
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        consumed?;
        read?;
        Ok((entries, new_bytes))
    })
}

/// Opens a scanned file and checks it is still the file that was scanned: the path may
/// have been replaced since by a symlink (not followed unless asked), a fifo (opening
/// does not block) or another file.
fn open_scanned(file: &InputFile, follow_symlinks: bool) -> Result<File, PublishError> {
    let mut flags = libc::O_NONBLOCK;
    if !follow_symlinks {
        flags |= libc::O_NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(&file.source)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                PublishError::Symlink {
                    path: file.source.display().to_string(),
                }
            } else {
                input_err(&file.source, e)
            }
        })?;
    let meta = f.metadata().map_err(|e| input_err(&file.source, e))?;
    if !file.unchanged(&meta) {
        return Err(PublishError::Changed {
            path: file.source.display().to_string(),
        });
    }
    Ok(f)
}

/// The reading thread: cuts each file and sends its segments, then an end marker.
fn read_files(
    files: &[InputFile],
    follow_symlinks: bool,
    out: mpsc::SyncSender<Piece>,
    spare: mpsc::Receiver<Segment>,
) -> Result<(), PublishError> {
    for file in files {
        let f = open_scanned(file, follow_symlinks)?;
        let mut segmenter = Segmenter::new(&f, ChunkParams::default());
        let mut read = 0u64;
        loop {
            while let Ok(used) = spare.try_recv() {
                segmenter.recycle(used);
            }
            let Some(segment) = segmenter
                .next_segment()
                .map_err(|e| input_err(&file.source, e))?
            else {
                break;
            };
            read += segment.bytes().len() as u64;
            if read > file.size {
                break;
            }
            // If the hashing thread is behind, hash here rather than wait for it.
            let piece = match out.try_send(Piece::Segment(segment)) {
                Ok(()) => continue,
                Err(mpsc::TrySendError::Full(Piece::Segment(mut segment))) => {
                    segment.hash_all();
                    Piece::Segment(segment)
                }
                Err(_) => return Ok(()), // the hashing side stopped and reports why
            };
            if out.send(piece).is_err() {
                return Ok(());
            }
        }
        let after = f.metadata().map_err(|e| input_err(&file.source, e))?;
        if read != file.size || !file.unchanged(&after) {
            return Err(PublishError::Changed {
                path: file.source.display().to_string(),
            });
        }
        if out.send(Piece::EndOfFile).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_swapped_after_the_scan_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in");
        std::fs::create_dir(&input).expect("mkdir");
        std::fs::write(input.join("b"), "abc").expect("write");
        std::fs::write(dir.path().join("secret"), "SEC").expect("write");
        let files = scan_input(&input, false).expect("scan");

        // Replaced by a symlink of the same size: not followed.
        std::fs::remove_file(input.join("b")).expect("rm");
        std::os::unix::fs::symlink(dir.path().join("secret"), input.join("b")).expect("symlink");
        assert!(matches!(
            open_scanned(&files[0], false),
            Err(PublishError::Symlink { .. })
        ));

        // Replaced by a fifo: opening does not block, and it is not the scanned file.
        std::fs::remove_file(input.join("b")).expect("rm");
        let status = std::process::Command::new("mkfifo")
            .arg(input.join("b"))
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        assert!(matches!(
            open_scanned(&files[0], false),
            Err(PublishError::Changed { .. })
        ));

        // Rewritten with other content of another size.
        std::fs::remove_file(input.join("b")).expect("rm");
        std::fs::write(input.join("b"), "abcd").expect("write");
        assert!(matches!(
            open_scanned(&files[0], false),
            Err(PublishError::Changed { .. })
        ));
    }
}
