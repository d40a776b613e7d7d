//! Managing a whole install directory: listing its modules, removing one, holding back
//! a version that was rolled back from, and the start-up probe that the directory is
//! usable. Same rules as the rest of `install`: names checked, no link below the root
//! followed, every change made durable.

use super::{InstallError, Module, current_of, io, sync_dir};
use crate::content::Hash;
use crate::content::names;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use crate::content::manifest::ModuleName;

impl std::str::FromStr for ModuleName {
    type Err = InstallError;

    /// Parses `tenant/category/id`, each a safe name.
    fn from_str(s: &str) -> Result<ModuleName, InstallError> {
        let parts: Vec<&str> = s.split('/').collect();
        let [tenant, category, id] = parts.as_slice() else {
            return Err(InstallError::NotAModule {
                given: s.chars().take(80).collect(),
            });
        };
        names::check_name("tenant", tenant)?;
        names::check_name("category", category)?;
        names::check_name("id", id)?;
        Ok(ModuleName {
            tenant: tenant.to_string(),
            category: category.to_string(),
            id: id.to_string(),
        })
    }
}

/// Every module with a current version under `root`, sorted; nothing if `root` does
/// not exist.
///
/// A listing, not a check: what cannot be a module arbor installed is skipped, never
/// followed and never an error. That is every name that is not a safe name (dot-names
/// included), anything at the tenant and category levels but a real directory (a link
/// to one too, as everywhere below the root), anything at the id level but a link, and
/// a module that [`status`](super::status) would refuse (its `<id>` link points
/// elsewhere, its versions directory is a link): installing or checking that module
/// says why. Only a directory that cannot be read is an error.
pub fn list(root: &Path) -> Result<Vec<ModuleName>, InstallError> {
    let mut out = Vec::new();
    let tenants = match plain_dirs(root) {
        Err(InstallError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(out);
        }
        other => other?,
    };
    for tenant in tenants {
        for category in plain_dirs(&root.join(&tenant))? {
            let dir = root.join(&tenant).join(&category);
            for entry in fs::read_dir(&dir).map_err(io("read", &dir))? {
                let entry = entry.map_err(io("read", &dir))?;
                let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let kind = entry.file_type().map_err(io("inspect", &entry.path()))?;
                if !kind.is_symlink() || names::check_name("id", &id).is_err() {
                    continue;
                }
                let module = ModuleName {
                    tenant: tenant.clone(),
                    category: category.clone(),
                    id,
                };
                match current_of(root, &module.tenant, &module.category, &module.id) {
                    Ok(_) => out.push(module),
                    Err(InstallError::NotInstalled { .. }) => {}
                    Err(
                        e @ (InstallError::Symlink { .. }
                        | InstallError::NotADirectory { .. }
                        | InstallError::Foreign { .. }),
                    ) => {
                        tracing::debug!(%module, error = %e, "not listed: arbor refuses it");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The names of the real directories (not links) in `dir` that are safe names.
fn plain_dirs(dir: &Path) -> Result<Vec<String>, InstallError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        // DirEntry::file_type does not follow links.
        let kind = entry.file_type().map_err(io("inspect", &entry.path()))?;
        if let Some(name) = entry.file_name().to_str()
            && kind.is_dir()
            && names::check_name("name", name).is_ok()
        {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// Uninstalls a module; returns the update that was current, `None` if it was not
/// installed (what a crashed removal left is deleted all the same). `<id>` goes first,
/// in one rename, so the module disappears at once; then the other dot-names, then the
/// versions directory (see the module doc). Links are removed as links, never
/// followed; an `<id>` arbor did not make is refused and left alone.
pub fn remove(
    root: &Path,
    tenant: &str,
    category: &str,
    id: &str,
) -> Result<Option<Hash>, InstallError> {
    let Some(module) = Module::locate(root, tenant, category, id, false)? else {
        return Ok(None);
    };
    let current = module.read_link(&module.current_link())?;
    if current.is_some() {
        let link = module.current_link();
        fs::rename(&link, module.removing_link()).map_err(io("remove", &link))?;
        sync_dir(&module.dir)?;
    }
    module.remove_dot_files()?;
    let versions = module.versions();
    // remove_dir_all removes links as links: nothing outside is touched.
    fs::remove_dir_all(&versions).map_err(io("remove", &versions))?;
    sync_dir(&module.dir)?;
    Ok(current)
}

/// Holds `update` back: the installer does not install it again. [`rollback`] holds
/// the update it rolled back from by itself; this is for holding another one by hand.
/// Written to a temporary file, fsynced and renamed into place.
///
/// [`rollback`]: super::rollback
pub fn hold(
    root: &Path,
    tenant: &str,
    category: &str,
    id: &str,
    update: &Hash,
) -> Result<(), InstallError> {
    let module = Module::locate(root, tenant, category, id, false)?.ok_or_else(|| {
        InstallError::NotInstalled {
            module: format!("{tenant}/{category}/{id}"),
        }
    })?;
    module.write_hold(update)
}

/// The update held back for a module, if any (also in [`Status`](super::Status)). A
/// damaged hold file holds nothing back.
pub fn held(
    root: &Path,
    tenant: &str,
    category: &str,
    id: &str,
) -> Result<Option<Hash>, InstallError> {
    match Module::locate(root, tenant, category, id, false)? {
        Some(module) => module.read_hold(),
        None => Ok(None),
    }
}

/// Lets the held-back version of a module be installed again. An install that writes
/// a new version does this by itself.
pub fn release(root: &Path, tenant: &str, category: &str, id: &str) -> Result<(), InstallError> {
    match Module::locate(root, tenant, category, id, false)? {
        Some(module) => module.clear_hold(),
        None => Ok(()),
    }
}

/// Checks at start-up that `root` is a usable install directory: created if missing,
/// a directory, and writable (a probe file is created, fsynced and removed).
pub fn probe(root: &Path) -> Result<(), InstallError> {
    let unusable = |why: String| InstallError::Unusable {
        path: root.display().to_string(),
        why,
    };
    // The root itself is the operator's: it may be a link to a directory.
    if root.exists() && !root.is_dir() {
        return Err(unusable("it is not a directory".into()));
    }
    fs::create_dir_all(root).map_err(|e| unusable(format!("cannot create it: {e}")))?;
    let probe = root.join(".arbor-probe");
    let _ = fs::remove_file(&probe);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .and_then(|f| f.sync_all())
        .map_err(|e| unusable(format!("it is not writable: {e}")))?;
    fs::remove_file(&probe).map_err(|e| unusable(format!("it is not writable: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_parse_and_refuse_tricks() {
        let m: ModuleName = "acme/plugins/viewer".parse().expect("valid");
        assert_eq!(m.to_string(), "acme/plugins/viewer");
        for bad in [
            "acme/plugins",
            "a/b/c/d",
            "acme/../x",
            "/a/b",
            "acme/plugins/.x",
            "",
        ] {
            assert!(bad.parse::<ModuleName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn probe_creates_and_refuses_what_is_not_a_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        probe(&dir).expect("created");
        assert!(dir.is_dir());
        let file = tmp.path().join("file");
        fs::write(&file, b"x").expect("write");
        let err = probe(&file).expect_err("a file").to_string();
        assert!(err.contains("not a directory"), "{err}");
        let err = probe(&file.join("sub"))
            .expect_err("under a file")
            .to_string();
        assert!(err.contains("cannot create it"), "{err}");
    }
}
