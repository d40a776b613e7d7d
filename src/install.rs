//! Install: the leaf client's file system side of installing a module version.
//!
//! Owns the install directory: staging an update's files from chunks, switching a
//! module from one version to the next atomically, keeping the previous version for
//! rollback, the per-version metadata file, and checking and repairing installed files
//! against it. Nothing here reads the clock, the store or the network: chunks come from
//! a closure and the install time is an argument. Callers serialise calls per install
//! directory (one installer at a time).
//!
//! # Layout
//!
//! ```text
//! <root>/<tenant>/<category>/
//!     <id>                    symlink -> .<id>.versions/<update-hex>/files   (current)
//!     .<id>.previous          symlink -> .<id>.versions/<update-hex>/files   (previous)
//!     .<id>.link-tmp          a new link, briefly, before it is renamed over one of the two
//!     .<id>.held              the update rolled back from, not to be installed again
//!     .<id>.versions/
//!         <update-hex>/       one complete version, never changed after its rename
//!             files/          the update's files at their manifest paths
//!             meta.json       [`Metadata`]: module, version, update id, install time,
//!                             blake3 and mode of every file
//!         .staging-<update-hex>/   an install in progress (same shape)
//! ```
//!
//! Tenant, category and id are safe names ([`names::check_name`]), which never start
//! with `.`, so the dot-names beside `<id>` cannot collide with another module.
//!
//! # Crash safety
//!
//! An install writes everything into the staging directory, fsyncs every file and
//! directory, renames the staging directory to `<update-hex>` and only then switches the
//! links. Each switch is one `rename(2)` of a freshly made symlink over the old one,
//! which replaces it atomically. `.previous` is switched first, then `<id>`, so a crash
//! between the two leaves `<id>` on the complete old version (with `.previous` briefly
//! equal to it). Whatever no link points to (a staging directory, a version renamed in
//! but never switched to, the version two installs back) is removed at the start of
//! the next install. A failed install (a chunk that cannot be read, a full disk)
//! removes its staging directory and leaves the links untouched.
//!
//! # Path safety
//!
//! Manifest paths and metadata paths are checked again here ([`names::check_rel_path`]:
//! no `..`, no absolute paths, no empty components). Below `<root>`, no existing
//! component is ever followed if it is a symlink: directories are inspected with
//! `symlink_metadata` and refused if they are links, files are opened with
//! `O_NOFOLLOW`, and the `<id>` and `.previous` links are accepted only if they point
//! exactly at `.<id>.versions/<64 hex digits>/files`. `<root>` itself is the caller's.

use crate::content::Hash;
use crate::content::manifest::FileEntry;
use crate::content::names::{self, NameError};
use crate::trust::SignedManifest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// The metadata file in every version directory.
pub const METADATA_FILE: &str = "meta.json";
/// The directory in every version directory that holds the update's files.
const FILES_DIR: &str = "files";
const STAGING_PREFIX: &str = ".staging-";
/// Where a repaired file is written before it is renamed into place (outside `files/`,
/// so it can never clash with a manifest path).
const REPAIR_TMP: &str = "repair.tmp";

/// Why an install, check, repair or rollback failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("file path {path:?} is refused: {source}")]
    UnsafePath {
        path: String,
        #[source]
        source: NameError,
    },
    #[error("{path} is a symbolic link; arbor never follows links inside the install directory")]
    Symlink { path: String },
    #[error("{path} is in the way: it is not a directory")]
    NotADirectory { path: String },
    #[error("{path} was not made by arbor: {why}")]
    Foreign { path: String, why: &'static str },
    #[error("cannot read chunk {chunk} of {file}: {source}")]
    ReadChunk {
        chunk: Hash,
        file: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("chunk {chunk} of {file} does not match its hash or length")]
    BadChunk { chunk: Hash, file: String },
    #[error("metadata {path} is refused: {why}")]
    Metadata { path: String, why: String },
    #[error("{module} is not installed")]
    NotInstalled { module: String },
    #[error("{module} has no previous version to roll back to")]
    NoPrevious { module: String },
    #[error("update {update} is not the current version of {module}")]
    NotCurrent { update: Hash, module: String },
    #[error("{given:?} is not a module: give TENANT/CATEGORY/ID")]
    NotAModule { given: String },
    #[error("install directory {path} is unusable: {why}")]
    Unusable { path: String, why: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// The metadata file of one installed version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub tenant: String,
    pub category: String,
    pub id: String,
    pub version: String,
    /// The update id, 64 hex digits.
    pub update_id: String,
    /// Seconds since the Unix epoch, as given to [`install`].
    pub installed_at: u64,
    pub files: Vec<FileSum>,
}

/// One installed file as it should be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub path: String,
    pub mode: u32,
    pub size: u64,
    /// blake3 of the whole file, 64 hex digits.
    pub blake3: String,
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The update was written and is now current; the old current is now previous.
    New {
        update: Hash,
        previous: Option<Hash>,
        files: usize,
        bytes: u64,
    },
    /// The update was the previous version: the two were switched, nothing written.
    Reactivated { update: Hash, previous: Hash },
    /// The update was already current: nothing done.
    AlreadyInstalled { update: Hash },
}

/// A module's installed versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub current: Option<Metadata>,
    pub previous: Option<Metadata>,
}

/// How an installed file differs from its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Damage {
    Missing,
    /// A link, directory or other non-file, or reachable only through a link.
    NotRegular,
    /// Other size or content.
    Modified,
    Mode {
        expected: u32,
        found: u32,
    },
    /// A file, directory or link the version does not have.
    Extra,
}

/// One damaged file of the current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub damage: Damage,
}

/// After a rollback: the new current and previous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolledBack {
    pub current: Hash,
    pub previous: Hash,
}

/// Writes `signed`'s files under `<root>/<tenant>/<category>/<id>/` and makes them the
/// current version; the old current becomes the previous one. `read_chunk` supplies
/// each chunk; every chunk is checked against its hash and length.
pub fn install<E>(
    root: &Path,
    signed: &SignedManifest,
    installed_at: u64,
    read_chunk: impl FnMut(&Hash) -> Result<Vec<u8>, E>,
) -> Result<Installed, InstallError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    install_pausing(root, signed, installed_at, read_chunk, || {})
}

/// [`install`], calling `at_switch` between switching `.previous` and `<id>`: the
/// point where a crash tests the crash safety hardest.
pub fn install_pausing<E>(
    root: &Path,
    signed: &SignedManifest,
    installed_at: u64,
    mut read_chunk: impl FnMut(&Hash) -> Result<Vec<u8>, E>,
    at_switch: impl FnOnce(),
) -> Result<Installed, InstallError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let (module, staging) = match prepare(root, signed)? {
        Prepared::Done(outcome) => return Ok(outcome),
        Prepared::Stage { module, staging } => (module, staging),
    };
    let (files, bytes) = match stage(&staging, signed, installed_at, &mut read_chunk) {
        Ok(done) => done,
        Err(e) => {
            if let Err(clean) = fs::remove_dir_all(&staging) {
                tracing::warn!(dir = %staging.display(), error = %clean, "cannot remove a failed install's staging directory; the next install will");
            }
            return Err(e);
        }
    };
    let version = module.version(&signed.id);
    fs::rename(&staging, &version).map_err(io("rename into place", &staging))?;
    sync_dir(&module.versions())?;
    let current = module.read_link(&module.current_link())?;
    let previous = current.or(module.read_link(&module.previous_link())?);
    if let Some(p) = previous {
        module.set_link(&module.previous_link(), &p)?;
    }
    at_switch();
    module.set_link(&module.current_link(), &signed.id)?;
    if let Err(e) = module.collect(Some(signed.id), previous) {
        tracing::warn!(module = %module.name, error = %e, "cannot remove an old version; the next install will");
    }
    Ok(Installed::New {
        update: signed.id,
        previous,
        files,
        bytes,
    })
}

enum Prepared {
    Done(Installed),
    Stage { module: Module, staging: PathBuf },
}

/// Everything before staging: checks, the already-installed cases, removing leftovers.
fn prepare(root: &Path, signed: &SignedManifest) -> Result<Prepared, InstallError> {
    let m = &signed.manifest;
    for f in &m.files {
        safe_rel(&f.path)?;
    }
    fs::create_dir_all(root).map_err(io("create", root))?;
    let module = Module::locate(root, &m.tenant, &m.category, &m.id, true)?
        .ok_or_else(|| InstallError::NotInstalled { module: m.module() })?;
    let current = module.read_link(&module.current_link())?;
    let previous = module
        .read_link(&module.previous_link())?
        .filter(|p| Some(*p) != current);
    if current == Some(signed.id) {
        return Ok(Prepared::Done(Installed::AlreadyInstalled {
            update: signed.id,
        }));
    }
    if let (Some(cur), Some(prev)) = (current, previous)
        && prev == signed.id
    {
        module.switch(prev, cur)?;
        return Ok(Prepared::Done(Installed::Reactivated {
            update: prev,
            previous: cur,
        }));
    }
    module.collect(current, previous)?;
    let staging = module
        .versions()
        .join(format!("{STAGING_PREFIX}{}", signed.id.to_hex()));
    Ok(Prepared::Stage { module, staging })
}

/// Writes a complete version into `staging`, fsynced; returns files and bytes written.
fn stage<E>(
    staging: &Path,
    signed: &SignedManifest,
    installed_at: u64,
    read_chunk: &mut impl FnMut(&Hash) -> Result<Vec<u8>, E>,
) -> Result<(usize, u64), InstallError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let m = &signed.manifest;
    make_dir(staging)?;
    let files = staging.join(FILES_DIR);
    make_dir(&files)?;
    let mut dirs = BTreeSet::new();
    let mut sums = Vec::with_capacity(m.files.len());
    for f in &m.files {
        let path = walk_parents(&files, &f.path, true)?.ok_or_else(|| InstallError::Foreign {
            path: files.display().to_string(),
            why: "a directory vanished during the install",
        })?;
        for dir in path.ancestors().skip(1) {
            if !dir.starts_with(&files) || !dirs.insert(dir.to_path_buf()) {
                break;
            }
        }
        let sum = write_file(&path, f, read_chunk)?;
        sums.push(FileSum {
            path: f.path.clone(),
            mode: f.mode,
            size: f.size,
            blake3: sum.to_hex(),
        });
    }
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    let meta = Metadata {
        tenant: m.tenant.clone(),
        category: m.category.clone(),
        id: m.id.clone(),
        version: m.version.clone(),
        update_id: signed.id.to_hex(),
        installed_at,
        files: sums,
    };
    let meta_path = staging.join(METADATA_FILE);
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| InstallError::Metadata {
        path: meta_path.display().to_string(),
        why: e.to_string(),
    })?;
    let mut out = new_file(&meta_path, 0o644)?;
    out.write_all(&json).map_err(io("write", &meta_path))?;
    out.sync_all().map_err(io("sync", &meta_path))?;
    sync_dir(staging)?;
    Ok((m.files.len(), m.total_size))
}

/// The installed versions of a module; both `None` if it is not installed.
pub fn status(root: &Path, tenant: &str, category: &str, id: &str) -> Result<Status, InstallError> {
    let Some(module) = Module::locate(root, tenant, category, id, false)? else {
        return Ok(Status::default());
    };
    let current = module.read_link(&module.current_link())?;
    let previous = module
        .read_link(&module.previous_link())?
        .filter(|p| Some(*p) != current);
    Ok(Status {
        current: current.map(|c| module.read_meta(&c)).transpose()?,
        previous: previous.map(|p| module.read_meta(&p)).transpose()?,
    })
}

/// The files of the current version that are missing or differ from its metadata.
pub fn check(
    root: &Path,
    tenant: &str,
    category: &str,
    id: &str,
) -> Result<Vec<Problem>, InstallError> {
    let (module, current) = current_of(root, tenant, category, id)?;
    let meta = module.read_meta(&current)?;
    check_files(&module.version(&current).join(FILES_DIR), &meta)
}

/// Rewrites the damaged files of the current version, which must be `signed`, from
/// chunks; returns what was repaired. A parent directory that has become a link is
/// refused, never followed; a file that has become a link is replaced, not written
/// through.
pub fn repair<E>(
    root: &Path,
    signed: &SignedManifest,
    mut read_chunk: impl FnMut(&Hash) -> Result<Vec<u8>, E>,
) -> Result<Vec<Problem>, InstallError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let m = &signed.manifest;
    let (module, current) = current_of(root, &m.tenant, &m.category, &m.id)?;
    if current != signed.id {
        return Err(InstallError::NotCurrent {
            update: signed.id,
            module: module.name,
        });
    }
    let version = module.version(&current);
    let files = version.join(FILES_DIR);
    let meta = module.read_meta(&current)?;
    let problems = check_files(&files, &meta)?;
    let tmp = version.join(REPAIR_TMP);
    // What the version does not have goes: links as links, directories whole (neither
    // followed), so a link planted here cannot point the removal elsewhere.
    for p in problems.iter().filter(|p| p.damage == Damage::Extra) {
        let path = files.join(&p.path);
        let is_dir = fs::symlink_metadata(&path)
            .map_err(io("inspect", &path))?
            .is_dir();
        if is_dir {
            fs::remove_dir_all(&path).map_err(io("remove", &path))?;
        } else {
            fs::remove_file(&path).map_err(io("remove", &path))?;
        }
    }
    for p in problems.iter().filter(|p| p.damage != Damage::Extra) {
        let mismatch = |why: &str| InstallError::Metadata {
            path: version.join(METADATA_FILE).display().to_string(),
            why: format!("{why} for {:?}", p.path),
        };
        let entry = m
            .files
            .iter()
            .find(|f| f.path == p.path)
            .ok_or_else(|| mismatch("the manifest has no file"))?;
        let sum = meta
            .files
            .iter()
            .find(|f| f.path == p.path)
            .ok_or_else(|| mismatch("no checksum"))?;
        let dest =
            walk_parents(&files, &p.path, true)?.ok_or_else(|| mismatch("a directory vanished"))?;
        // A directory where the file should be: its content was reported extra and is
        // gone; the directory itself goes too.
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&dest).map_err(io("remove", &dest))?;
        }
        remove_if_there(&tmp)?;
        let written = write_file(&tmp, entry, &mut read_chunk)?;
        if written.to_hex() != sum.blake3 || entry.mode != sum.mode {
            remove_if_there(&tmp)?;
            return Err(mismatch("the manifest and the metadata disagree"));
        }
        fs::rename(&tmp, &dest).map_err(io("replace", &dest))?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(problems)
}

/// Makes the previous version current and the current one previous, atomically per
/// link (see the module doc).
pub fn rollback(
    root: &Path,
    tenant: &str,
    category: &str,
    id: &str,
) -> Result<RolledBack, InstallError> {
    let (module, current) = current_of(root, tenant, category, id)?;
    let previous = module
        .read_link(&module.previous_link())?
        .filter(|p| *p != current)
        .ok_or_else(|| InstallError::NoPrevious {
            module: module.name.clone(),
        })?;
    module.read_meta(&previous)?;
    module.switch(previous, current)?;
    Ok(RolledBack {
        current: previous,
        previous: current,
    })
}

fn current_of(
    root: &Path,
    tenant: &str,
    category: &str,
    id: &str,
) -> Result<(Module, Hash), InstallError> {
    let not_installed = || InstallError::NotInstalled {
        module: format!("{tenant}/{category}/{id}"),
    };
    let module = Module::locate(root, tenant, category, id, false)?.ok_or_else(not_installed)?;
    let current = module
        .read_link(&module.current_link())?
        .ok_or_else(not_installed)?;
    Ok((module, current))
}

/// One module's directory `<root>/<tenant>/<category>` and id.
struct Module {
    dir: PathBuf,
    id: String,
    name: String,
}

impl Module {
    /// Checks the names and walks to the module's directory without following links;
    /// `None` if part of it is missing and `create` is false.
    fn locate(
        root: &Path,
        tenant: &str,
        category: &str,
        id: &str,
        create: bool,
    ) -> Result<Option<Module>, InstallError> {
        names::check_name("tenant", tenant)?;
        names::check_name("category", category)?;
        names::check_name("id", id)?;
        let mut dir = root.to_path_buf();
        for part in [tenant, category] {
            dir.push(part);
            if !dir_step(&dir, create)? {
                return Ok(None);
            }
        }
        let module = Module {
            dir,
            id: id.to_string(),
            name: format!("{tenant}/{category}/{id}"),
        };
        if !dir_step(&module.versions(), create)? {
            return Ok(None);
        }
        Ok(Some(module))
    }

    fn versions(&self) -> PathBuf {
        self.dir.join(format!(".{}.versions", self.id))
    }

    fn version(&self, update: &Hash) -> PathBuf {
        self.versions().join(update.to_hex())
    }

    fn current_link(&self) -> PathBuf {
        self.dir.join(&self.id)
    }

    /// Names the update held back after a rollback ([`manage::hold`]).
    fn hold_file(&self) -> PathBuf {
        self.dir.join(format!(".{}.held", self.id))
    }

    fn previous_link(&self) -> PathBuf {
        self.dir.join(format!(".{}.previous", self.id))
    }

    fn link_target(&self, update: &Hash) -> String {
        format!(".{}.versions/{}/{FILES_DIR}", self.id, update.to_hex())
    }

    /// The update a link points to; `None` if there is no link.
    fn read_link(&self, link: &Path) -> Result<Option<Hash>, InstallError> {
        let foreign = |why| InstallError::Foreign {
            path: link.display().to_string(),
            why,
        };
        match fs::symlink_metadata(link) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("inspect", link)(e)),
            Ok(m) if !m.file_type().is_symlink() => return Err(foreign("it is not a link")),
            Ok(_) => {}
        }
        let target = fs::read_link(link).map_err(io("read the link", link))?;
        let prefix = format!(".{}.versions/", self.id);
        let suffix = format!("/{FILES_DIR}");
        let update = target
            .to_str()
            .and_then(|t| t.strip_prefix(&prefix))
            .and_then(|t| t.strip_suffix(&suffix))
            .and_then(|h| h.parse::<Hash>().ok())
            .filter(|h| target.to_str() == Some(self.link_target(h).as_str()))
            .ok_or_else(|| foreign("it points outside the module's versions"))?;
        Ok(Some(update))
    }

    /// Points `link` at `update`: a new link under a temporary name, renamed over it.
    fn set_link(&self, link: &Path, update: &Hash) -> Result<(), InstallError> {
        let tmp = self.dir.join(format!(".{}.link-tmp", self.id));
        remove_if_there(&tmp)?;
        symlink(self.link_target(update), &tmp).map_err(io("create the link", &tmp))?;
        fs::rename(&tmp, link).map_err(io("switch the link", link))?;
        sync_dir(&self.dir)
    }

    /// Makes `current` current and `previous` previous.
    fn switch(&self, current: Hash, previous: Hash) -> Result<(), InstallError> {
        self.set_link(&self.current_link(), &current)?;
        self.set_link(&self.previous_link(), &previous)
    }

    /// Removes everything in the versions directory but `keep`'s two versions.
    fn collect(&self, keep: Option<Hash>, keep_too: Option<Hash>) -> Result<(), InstallError> {
        let versions = self.versions();
        let kept: Vec<String> = [keep, keep_too]
            .iter()
            .flatten()
            .map(Hash::to_hex)
            .collect();
        for entry in fs::read_dir(&versions).map_err(io("read", &versions))? {
            let entry = entry.map_err(io("read", &versions))?;
            if kept
                .iter()
                .any(|k| entry.file_name().to_str() == Some(k.as_str()))
            {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type().map_err(io("inspect", &path))?;
            if kind.is_dir() {
                // remove_dir_all does not follow links.
                fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            } else {
                fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
        sync_dir(&versions)
    }

    fn read_meta(&self, update: &Hash) -> Result<Metadata, InstallError> {
        let path = self.version(update).join(METADATA_FILE);
        let refused = |why: String| InstallError::Metadata {
            path: path.display().to_string(),
            why,
        };
        if !dir_step(&self.version(update), false)? {
            return Err(refused("its version directory is missing".into()));
        }
        let mut text = Vec::new();
        open_nofollow(&path)?
            .read_to_end(&mut text)
            .map_err(io("read", &path))?;
        let meta: Metadata =
            serde_json::from_slice(&text).map_err(|e| refused(format!("unreadable: {e}")))?;
        if meta.update_id != update.to_hex() {
            return Err(refused(format!("it names update {}", meta.update_id)));
        }
        if self.name != format!("{}/{}/{}", meta.tenant, meta.category, meta.id) {
            return Err(refused("it names another module".into()));
        }
        Ok(meta)
    }
}

fn check_files(files: &Path, meta: &Metadata) -> Result<Vec<Problem>, InstallError> {
    let mut problems = extra_entries(files, meta)?;
    for sum in &meta.files {
        let damage = match walk_parents(files, &sum.path, false) {
            Ok(Some(path)) => file_damage(&path, sum)?,
            Ok(None) => Some(Damage::Missing),
            Err(InstallError::Symlink { .. } | InstallError::NotADirectory { .. }) => {
                Some(Damage::NotRegular)
            }
            Err(e) => return Err(e),
        };
        if let Some(damage) = damage {
            problems.push(Problem {
                path: sum.path.clone(),
                damage,
            });
        }
    }
    Ok(problems)
}

/// Whatever is under `files` that the metadata does not list (links not followed, an
/// extra directory reported once, not entry by entry), sorted.
fn extra_entries(files: &Path, meta: &Metadata) -> Result<Vec<Problem>, InstallError> {
    let mut expected: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for f in &meta.files {
        expected.insert(&f.path);
        let mut parent = f.path.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            expected.insert(dir);
            parent = dir;
        }
    }
    let mut extra = Vec::new();
    let mut walk = walkdir::WalkDir::new(files)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| InstallError::Io {
            action: "read",
            path: files.display().to_string(),
            source: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(files)
            .ok()
            .and_then(|r| r.to_str())
            .map(str::to_string);
        match rel {
            Some(rel) if expected.contains(rel.as_str()) => {}
            _ => {
                if entry.file_type().is_dir() {
                    walk.skip_current_dir();
                }
                extra.push(Problem {
                    path: entry
                        .path()
                        .strip_prefix(files)
                        .unwrap_or(entry.path())
                        .display()
                        .to_string(),
                    damage: Damage::Extra,
                });
            }
        }
    }
    Ok(extra)
}

fn file_damage(path: &Path, sum: &FileSum) -> Result<Option<Damage>, InstallError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Some(Damage::Missing)),
        Err(e) => return Err(io("inspect", path)(e)),
        Ok(m) if !m.file_type().is_file() => return Ok(Some(Damage::NotRegular)),
        Ok(m) if m.len() != sum.size => return Ok(Some(Damage::Modified)),
        Ok(_) => {}
    }
    let mut f = open_nofollow(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.finalize().to_hex().as_str() != sum.blake3 {
        return Ok(Some(Damage::Modified));
    }
    let found = f
        .metadata()
        .map_err(io("inspect", path))?
        .permissions()
        .mode()
        & 0o7777;
    if found != sum.mode {
        return Ok(Some(Damage::Mode {
            expected: sum.mode,
            found,
        }));
    }
    Ok(None)
}

/// Writes one file from its chunks, checking each; returns the file's blake3.
fn write_file<E>(
    path: &Path,
    entry: &FileEntry,
    read_chunk: &mut impl FnMut(&Hash) -> Result<Vec<u8>, E>,
) -> Result<Hash, InstallError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut f = new_file(path, 0o600)?;
    let mut hasher = blake3::Hasher::new();
    for c in &entry.chunks {
        let data = read_chunk(&c.hash()).map_err(|e| InstallError::ReadChunk {
            chunk: c.hash(),
            file: entry.path.clone(),
            source: Box::new(e),
        })?;
        if data.len() != c.size() as usize || Hash::of(&data) != c.hash() {
            return Err(InstallError::BadChunk {
                chunk: c.hash(),
                file: entry.path.clone(),
            });
        }
        hasher.update(&data);
        f.write_all(&data).map_err(io("write", path))?;
    }
    f.set_permissions(fs::Permissions::from_mode(entry.mode))
        .map_err(io("set the mode of", path))?;
    f.sync_all().map_err(io("sync", path))?;
    Ok(Hash(*hasher.finalize().as_bytes()))
}

/// The components of a manifest or metadata path, refused unless every one is a plain
/// name.
fn safe_rel(path: &str) -> Result<Vec<&str>, InstallError> {
    names::check_rel_path(path).map_err(|source| InstallError::UnsafePath {
        path: path.chars().take(80).collect(),
        source,
    })?;
    Ok(path.split('/').collect())
}

/// `base/rel`, after walking its parent directories without following links (created
/// if `create`); `None` if one is missing.
fn walk_parents(base: &Path, rel: &str, create: bool) -> Result<Option<PathBuf>, InstallError> {
    let parts = safe_rel(rel)?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(InstallError::UnsafePath {
            path: rel.into(),
            source: NameError::Empty { field: "file path" },
        });
    };
    let mut path = base.to_path_buf();
    for dir in dirs {
        path.push(dir);
        if !dir_step(&path, create)? {
            return Ok(None);
        }
    }
    path.push(name);
    Ok(Some(path))
}

/// Whether `path` is a directory (not a link to one), creating it if missing and
/// `create`.
fn dir_step(path: &Path, create: bool) -> Result<bool, InstallError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(InstallError::Symlink {
            path: path.display().to_string(),
        }),
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(InstallError::NotADirectory {
            path: path.display().to_string(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound && create => {
            make_dir(path)?;
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("inspect", path)(e)),
    }
}

fn make_dir(path: &Path) -> Result<(), InstallError> {
    DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(io("create", path))
}

fn new_file(path: &Path, mode: u32) -> Result<File, InstallError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("create", path))
}

fn open_nofollow(path: &Path) -> Result<File, InstallError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("open", path))
}

fn remove_if_there(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(path: &Path) -> Result<(), InstallError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", path))
}

mod manage;
pub use manage::{ModuleName, held, hold, list, probe, release, remove};

#[cfg(test)]
mod tests;
