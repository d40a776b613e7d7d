//! The manifest: the signed description of one update.
//!
//! A manifest names the module (tenant, category, id, version), lists its files with
//! their modes, sizes and chunk lists, and states the total size and creation time.
//! [`Manifest::validate`] enforces every invariant a receiver relies on (safe paths,
//! consistent sizes, bounded counts); it runs on every manifest that is decoded, so a
//! manifest that passed it can be used to write files without further checks.
//! Signing and the update id live in `trust`, which wraps the manifest's encoding.

use super::Hash;
use super::names::{self, NameError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Largest chunk any node accepts, whatever chunking parameters the root used.
pub const MAX_CHUNK_LEN: u32 = 1024 * 1024;
/// Most files one update may hold.
pub const MAX_FILES: usize = 1_000_000;
/// Largest encoded manifest body accepted (about 1.5 million chunk references).
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;

/// The permission bits kept for a file: rwx for user, group, other. setuid, setgid and
/// sticky bits are never published, so installing an update cannot create them.
pub const MODE_MASK: u32 = 0o777;

/// One chunk of a file: its blake3 hash and length. Encoded as a two-element array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef(pub Hash, pub u32);

impl ChunkRef {
    pub fn hash(&self) -> Hash {
        self.0
    }
    pub fn size(&self) -> u32 {
        self.1
    }
}

/// One regular file of an update. Fields are in canonical CBOR key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Permission bits (see [`MODE_MASK`]).
    pub mode: u32,
    /// Relative, `/`-separated path (see [`names::check_rel_path`]).
    pub path: String,
    /// Size in bytes: the sum of the chunk lengths.
    pub size: u64,
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
}

/// The unsigned body of an update's manifest. Fields are in canonical CBOR key order
/// (shorter keys first, then bytewise), which `wire::decode_canonical` enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    /// Files sorted by path, bytewise.
    pub files: Vec<FileEntry>,
    pub tenant: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    pub version: String,
    pub category: String,
    /// Sum of the file sizes.
    pub total_size: u64,
    pub description: Option<String>,
    /// The command a client runs after switching this version in, if its node allows
    /// hooks: program, then arguments ([`names::check_post_install`]). Absent from the
    /// encoding when none, so manifests without a hook keep their bytes and ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<Vec<String>>,
}

/// A manifest that breaks an invariant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("the manifest lists {0} files; the limit is {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("file {path:?} is also a directory of another file")]
    PathClash { path: String },
    #[error("files are not sorted by path, or a path repeats, at {path:?}")]
    Unsorted { path: String },
    #[error("file {path:?} has mode {mode:o}, outside the permission bits 0777")]
    BadMode { path: String, mode: u32 },
    #[error("file {path:?} has a chunk of {len} bytes; chunks are 1 to {MAX_CHUNK_LEN} bytes")]
    BadChunkLen { path: String, len: u32 },
    #[error("file {path:?} says {size} bytes but its chunks add up to {sum}")]
    SizeMismatch { path: String, size: u64, sum: u64 },
    #[error("total_size says {claimed} bytes but the files add up to {sum}")]
    TotalMismatch { claimed: u64, sum: u64 },
}

/// A module: a manifest's (tenant, category, id), and where it goes under a client's
/// install directory. Each version of a module is an update of its own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ModuleName {
    pub tenant: String,
    pub category: String,
    pub id: String,
}

impl std::fmt::Display for ModuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.category, self.id)
    }
}

impl Manifest {
    /// The module this manifest is a version of (shown `tenant/category/id`).
    pub fn module(&self) -> ModuleName {
        ModuleName {
            tenant: self.tenant.clone(),
            category: self.category.clone(),
            id: self.id.clone(),
        }
    }

    /// Checks every invariant; see the module doc.
    pub fn validate(&self) -> Result<(), ManifestError> {
        names::check_module(
            &self.tenant,
            &self.category,
            &self.id,
            &self.version,
            self.description.as_deref(),
        )?;
        if let Some(argv) = &self.post_install {
            names::check_post_install(argv)?;
        }
        if self.files.len() > MAX_FILES {
            return Err(ManifestError::TooManyFiles(self.files.len()));
        }
        let mut total = 0u64;
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut files: HashSet<&str> = HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            names::check_rel_path(&f.path)?;
            if i > 0 && self.files[i - 1].path.as_str() >= f.path.as_str() {
                return Err(ManifestError::Unsorted {
                    path: f.path.clone(),
                });
            }
            if f.mode & !MODE_MASK != 0 {
                return Err(ManifestError::BadMode {
                    path: f.path.clone(),
                    mode: f.mode,
                });
            }
            let mut sum = 0u64;
            for c in &f.chunks {
                if c.size() == 0 || c.size() > MAX_CHUNK_LEN {
                    return Err(ManifestError::BadChunkLen {
                        path: f.path.clone(),
                        len: c.size(),
                    });
                }
                sum += u64::from(c.size());
            }
            if sum != f.size {
                return Err(ManifestError::SizeMismatch {
                    path: f.path.clone(),
                    size: f.size,
                    sum,
                });
            }
            total = total.saturating_add(sum);
            // A file may not also be a directory of another file ("a" and "a/b").
            let mut parent = f.path.as_str();
            while let Some((dir, _)) = parent.rsplit_once('/') {
                dirs.insert(dir);
                parent = dir;
            }
            files.insert(&f.path);
        }
        if let Some(clash) = files.intersection(&dirs).next() {
            return Err(ManifestError::PathClash {
                path: clash.to_string(),
            });
        }
        if total != self.total_size {
            return Err(ManifestError::TotalMismatch {
                claimed: self.total_size,
                sum: total,
            });
        }
        Ok(())
    }

    /// Whether `other` is a version of the same module.
    pub fn same_module_as(&self, other: &Manifest) -> bool {
        self.tenant == other.tenant && self.category == other.category && self.id == other.id
    }

    /// Every chunk reference, in manifest order (with repeats).
    pub fn chunk_refs(&self) -> impl Iterator<Item = &ChunkRef> {
        self.files.iter().flat_map(|f| f.chunks.iter())
    }

    /// The distinct chunks, in order of first use: the chunk numbering the engine and
    /// the wire use ("chunk 12 of update U").
    pub fn distinct_chunk_list(&self) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        self.chunk_refs()
            .filter(|c| seen.insert(c.hash()))
            .copied()
            .collect()
    }

    /// The number of distinct chunks and their total size.
    pub fn distinct_chunks(&self) -> (usize, u64) {
        let list = self.distinct_chunk_list();
        (list.len(), list.iter().map(|c| u64::from(c.size())).sum())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn two_files() -> Manifest {
        let a = ChunkRef(Hash::of(b"a"), 1);
        let bc = ChunkRef(Hash::of(b"bc"), 2);
        Manifest {
            id: "viewer".into(),
            files: vec![
                FileEntry {
                    mode: 0o644,
                    path: "bin/x".into(),
                    size: 3,
                    chunks: vec![a, bc],
                },
                FileEntry {
                    mode: 0o755,
                    path: "run.sh".into(),
                    size: 1,
                    chunks: vec![a],
                },
            ],
            tenant: "acme".into(),
            created: 1_700_000_000,
            version: "1.0".into(),
            category: "plugins".into(),
            total_size: 4,
            description: None,
            post_install: None,
        }
    }

    #[test]
    fn valid_manifest_passes() {
        assert_eq!(two_files().validate(), Ok(()));
        assert_eq!(two_files().distinct_chunks(), (2, 3));
    }

    #[test]
    fn each_broken_invariant_is_named() {
        type Breakage = (fn(&mut Manifest), &'static str);
        let cases: Vec<Breakage> = vec![
            (|m| m.tenant = "../x".into(), "path separator"),
            (|m| m.files[0].path = "../x".into(), "not allowed"),
            (|m| m.files[0].path = "/etc/x".into(), "absolute"),
            (|m| m.files.swap(0, 1), "not sorted"),
            (
                |m| {
                    m.files[0].path = "bin".into();
                    m.files[1].path = "bin/run.sh".into();
                },
                "directory of another file",
            ),
            (|m| m.files[0].mode = 0o4755, "mode"),
            (|m| m.files[0].chunks[0].1 = 0, "chunk of 0 bytes"),
            (|m| m.files[0].size = 9, "add up"),
            (|m| m.total_size = 5, "total_size"),
            (|m| m.post_install = Some(vec![]), "post-install"),
            (
                |m| m.post_install = Some(vec!["run.sh".into(), "a\0b".into()]),
                "control character",
            ),
        ];
        for (break_it, expect) in cases {
            let mut m = two_files();
            break_it(&mut m);
            let err = m.validate().expect_err(expect).to_string();
            assert!(err.contains(expect), "{err:?} lacks {expect:?}");
        }
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let mut m = two_files();
        m.files[1].path = "bin/x".into();
        let err = m.validate().expect_err("duplicate accepted").to_string();
        assert!(err.contains("repeats"), "{err}");
    }
}
