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
//!     .<id>.swap              symlink to the version being switched away from, only
//!                             while `<id>` and `.previous` trade places
//!     .<id>.link-tmp          a new link, briefly, before it is renamed over another
//!     .<id>.held              the update rolled back from (64 hex digits), which the
//!                             installer does not install again; see [`rollback`]
//!     .<id>.held-tmp          a new hold, briefly, before it is renamed over `.held`
//!     .<id>.removing          the `<id>` link of a module being removed, briefly
//!     .<id>.versions/
//!         <update-hex>/       one complete version, never changed after its rename
//!             files/          the update's files at their manifest paths
//!             meta.json       [`Metadata`]: module, version, update id, install time,
//!                             blake3 and mode of every file
//!         .staging-<update-hex>/   an install in progress (same shape)
//! ```
//!
//! Tenant, category and id are safe names ([`names::check_name`]), which never start
//! with `.`, so the dot-names beside `<id>` cannot collide with another module (the
//! suffixes hold no `.`, so `.<id>.<suffix>` names one module's file only). A module
//! without an `<id>` link is not installed, whatever else is there.
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
//! A rollback, and an install of the previous version, make `<id>` and `.previous`
//! trade places. No single rename does that, so the order is: link the version being
//! left from `.swap`, switch `<id>` to the other one, switch `.previous` to the one
//! left, remove `.swap`. A crash at any point leaves `<id>` on one of the two complete
//! versions and the other one linked from `.previous` or `.swap`: readers take `.swap`
//! as the previous version whenever it differs from `<id>`, and the next change
//! finishes the trade before anything else, so neither version is ever collected.
//! A rollback writes its hold before it touches the links: a crash in between leaves
//! the version rolled back from current and held (the rollback can be repeated); the
//! other order could leave it rolled back but not held, and the installer would put
//! the version back.
//!
//! A removal renames `<id>` to `.<id>.removing` first, so the module disappears in one
//! step, then deletes the other dot-names and the versions directory last. After a
//! crash in between the module is not installed: [`list`] skips it, [`status`] shows
//! nothing, and the next install or removal deletes what is left.
//!
//! # Path safety
//!
//! Manifest paths and metadata paths are checked again here ([`names::check_rel_path`]:
//! no `..`, no absolute paths, no empty components). Below `<root>`, no existing
//! component is ever followed if it is a symlink: directories are inspected with
//! `symlink_metadata` and refused if they are links, files are opened with
//! `O_NOFOLLOW`, and the `<id>`, `.previous` and `.swap` links are accepted only if
//! they point exactly at `.<id>.versions/<64 hex digits>/files`. Walking a version's
//! files for entries the metadata does not list, and deleting them or a whole module,
//! removes links as links and never descends through one. `<root>` itself is the
//! caller's.

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

/// A module's installed versions; all `None` if it is not installed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub current: Option<Metadata>,
    pub previous: Option<Metadata>,
    /// The update rolled back from, not to be installed again ([`rollback`]).
    pub held: Option<Hash>,
}

/// How an installed file differs from its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A file, directory or link in `files/` that the metadata does not list (an
    /// unlisted directory is one problem, whatever it holds).
    Extra,
}

/// One damaged file of the current version, or an extra entry beside them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        Prepared::Done(module, outcome) => {
            module.end_hold(&outcome);
            return Ok(outcome);
        }
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
    let (current, previous) = module.links()?;
    let previous = current.or(previous);
    if let Some(p) = previous {
        module.set_link(&module.previous_link(), &p)?;
    }
    at_switch();
    module.set_link(&module.current_link(), &signed.id)?;
    if let Err(e) = module.collect(Some(signed.id), previous) {
        tracing::warn!(module = %module.name, error = %e, "cannot remove an old version; the next install will");
    }
    let outcome = Installed::New {
        update: signed.id,
        previous,
        files,
        bytes,
    };
    module.end_hold(&outcome);
    Ok(outcome)
}

enum Prepared {
    Done(Module, Installed),
    Stage { module: Module, staging: PathBuf },
}

/// Everything before staging: checks, the already-installed cases, removing leftovers.
fn prepare(root: &Path, signed: &SignedManifest) -> Result<Prepared, InstallError> {
    let m = &signed.manifest;
    for f in &m.files {
        safe_rel(&f.path)?;
    }
    fs::create_dir_all(root).map_err(io("create", root))?;
    let module = Module::locate(root, &m.tenant, &m.category, &m.id, true)?.ok_or_else(|| {
        InstallError::NotInstalled {
            module: m.module().to_string(),
        }
    })?;
    let (current, previous) = module.settle()?;
    if current == Some(signed.id) {
        let done = Installed::AlreadyInstalled { update: signed.id };
        return Ok(Prepared::Done(module, done));
    }
    if let (Some(cur), Some(prev)) = (current, previous)
        && prev == signed.id
    {
        module.switch(prev, cur)?;
        let done = Installed::Reactivated {
            update: prev,
            previous: cur,
        };
        return Ok(Prepared::Done(module, done));
    }
    if current.is_none() {
        // Not installed: whatever is here was left by a removal.
        module.remove_dot_files()?;
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
    let (current, previous) = module.links()?;
    let Some(current) = current else {
        return Ok(Status::default());
    };
    Ok(Status {
        current: Some(module.read_meta(&current)?),
        previous: previous.map(|p| module.read_meta(&p)).transpose()?,
        held: module.read_hold()?,
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
    let (problems, _) = check_files(&module.version(&current).join(FILES_DIR), &meta)?;
    Ok(problems)
}

/// Rewrites the damaged files of the current version, which must be `signed`, from
/// chunks, and removes extra entries; returns what was repaired. A parent directory
/// that has become a link is refused, never followed; a file that has become a link or
/// a directory is replaced, not written through; an extra link is removed as a link.
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
    dir_step(&files, true)?;
    let (problems, extras) = check_files(&files, &meta)?;
    for path in &extras {
        remove_entry(path)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
    }
    let tmp = version.join(REPAIR_TMP);
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
        remove_if_there(&tmp)?;
        let written = write_file(&tmp, entry, &mut read_chunk)?;
        if written.to_hex() != sum.blake3 || entry.mode != sum.mode {
            remove_if_there(&tmp)?;
            return Err(mismatch("the manifest and the metadata disagree"));
        }
        // A file is replaced by the rename; a directory in its place has to go first.
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            remove_entry(&dest)?;
        }
        fs::rename(&tmp, &dest).map_err(io("replace", &dest))?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(problems)
}

/// Makes the previous version current and the current one previous, and holds the
/// update rolled back from: it stays in `.<id>.held` (see [`held`]) until an install
/// writes another version or asks for the held one. A crash leaves both versions
/// installed (see the module doc).
pub fn rollback(
    root: &Path,
    tenant: &str,
    category: &str,
    id: &str,
) -> Result<RolledBack, InstallError> {
    let (module, _) = current_of(root, tenant, category, id)?;
    // An interrupted trade is finished first, or `.swap` would be overwritten below.
    let (Some(current), Some(previous)) = module.settle()? else {
        return Err(InstallError::NoPrevious {
            module: module.name.clone(),
        });
    };
    module.read_meta(&previous)?;
    module.write_hold(&current)?;
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

    fn previous_link(&self) -> PathBuf {
        self.dot("previous")
    }

    fn swap_link(&self) -> PathBuf {
        self.dot("swap")
    }

    /// Names the update held back after a rollback.
    fn hold_file(&self) -> PathBuf {
        self.dot("held")
    }

    fn removing_link(&self) -> PathBuf {
        self.dot("removing")
    }

    /// `.<id>.<suffix>` beside `<id>`; no suffix holds a `.` (see the module doc).
    fn dot(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!(".{}.{suffix}", self.id))
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
        let tmp = self.dot("link-tmp");
        remove_if_there(&tmp)?;
        symlink(self.link_target(update), &tmp).map_err(io("create the link", &tmp))?;
        fs::rename(&tmp, link).map_err(io("switch the link", link))?;
        sync_dir(&self.dir)
    }

    /// The current and previous versions, as the links say. While `.swap` differs from
    /// `<id>`, a trade of the two links was interrupted after `<id>` switched and
    /// `.swap` names the previous version. Without `<id>` there is no previous version
    /// either: the rest is a removal's leftovers.
    fn links(&self) -> Result<(Option<Hash>, Option<Hash>), InstallError> {
        let Some(current) = self.read_link(&self.current_link())? else {
            return Ok((None, None));
        };
        let previous = match self.read_link(&self.swap_link())? {
            Some(left) if left != current => Some(left),
            _ => self.read_link(&self.previous_link())?,
        };
        Ok((Some(current), previous.filter(|p| *p != current)))
    }

    /// [`Module::links`], after finishing an interrupted trade of the links.
    fn settle(&self) -> Result<(Option<Hash>, Option<Hash>), InstallError> {
        let (current, previous) = self.links()?;
        if current.is_some() && self.read_link(&self.swap_link())?.is_some() {
            if let Some(p) = previous
                && self.read_link(&self.previous_link())? != Some(p)
            {
                self.set_link(&self.previous_link(), &p)?;
            }
            remove_if_there(&self.swap_link())?;
            sync_dir(&self.dir)?;
        }
        Ok((current, previous))
    }

    /// Makes `to` current and `from` previous when they are the other way round, with
    /// `from` linked from `.swap` meanwhile (see the module doc for why).
    fn switch(&self, to: Hash, from: Hash) -> Result<(), InstallError> {
        self.set_link(&self.swap_link(), &from)?;
        self.set_link(&self.current_link(), &to)?;
        self.set_link(&self.previous_link(), &from)?;
        remove_if_there(&self.swap_link())?;
        sync_dir(&self.dir)
    }

    /// Removes the dot-names beside `<id>` but the versions directory: links as links.
    fn remove_dot_files(&self) -> Result<(), InstallError> {
        for suffix in [
            "removing", "previous", "swap", "link-tmp", "held", "held-tmp",
        ] {
            remove_if_there(&self.dot(suffix))?;
        }
        sync_dir(&self.dir)
    }

    /// Holds `update` back: a new file, fsynced, renamed over the old hold.
    fn write_hold(&self, update: &Hash) -> Result<(), InstallError> {
        let tmp = self.dot("held-tmp");
        remove_if_there(&tmp)?;
        let mut f = new_file(&tmp, 0o644)?;
        f.write_all(update.to_hex().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io("write", &tmp))?;
        fs::rename(&tmp, self.hold_file()).map_err(io("rename into place", &tmp))?;
        sync_dir(&self.dir)
    }

    /// The update held back, if any. A damaged hold file holds nothing back.
    fn read_hold(&self) -> Result<Option<Hash>, InstallError> {
        let path = self.hold_file();
        let f = match open_nofollow(&path) {
            Err(InstallError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Ok(None);
            }
            other => other?,
        };
        let mut text = String::new();
        // 64 hex digits and maybe a newline; more is not a hold.
        f.take(128)
            .read_to_string(&mut text)
            .map_err(io("read", &path))?;
        Ok(text.trim().parse().ok())
    }

    fn clear_hold(&self) -> Result<(), InstallError> {
        let path = self.hold_file();
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// After an install: the hold ends when a new version was written, or when the held
    /// update itself was asked for (only by hand; the installer never asks). Switching
    /// back to the previous version keeps it: that is what a rollback does, and it may
    /// finish one that was interrupted after its hold was written. The version is in
    /// place by now, so a failure only leaves the hold; it is logged, not returned.
    fn end_hold(&self, outcome: &Installed) {
        let ends = match outcome {
            Installed::New { .. } => Ok(true),
            Installed::Reactivated { update, .. } | Installed::AlreadyInstalled { update } => {
                self.read_hold().map(|held| held == Some(*update))
            }
        };
        if let Err(e) = ends.and_then(|ends| if ends { self.clear_hold() } else { Ok(()) }) {
            tracing::warn!(module = %self.name, error = %e, "cannot end the hold of a module");
        }
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

mod files;
use files::{
    check_files, dir_step, make_dir, new_file, open_nofollow, remove_entry, remove_if_there,
    safe_rel, sync_dir, walk_parents, write_file,
};
mod manage;
pub use manage::{ModuleName, held, hold, list, probe, release, remove};

#[cfg(test)]
mod tests;
