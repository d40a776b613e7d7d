//! Managing a whole install directory: listing its modules, removing one, holding back
//! a version that was rolled back from, and the start-up probe that the directory is
//! usable. Same rules as the rest of `install`: names checked, no link below the root
//! followed, every change made durable.

use super::{InstallError, Module, io, remove_if_there, sync_dir};
use crate::content::Hash;
use crate::content::names;
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A module: where it goes under the install directory.
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

/// Every module with a current version under `root`, sorted. Entries that are not
/// safe names, dot-names and links are skipped, never followed.
pub fn list(root: &Path) -> Result<Vec<ModuleName>, InstallError> {
    let mut out = Vec::new();
    for tenant in plain_dirs(root)? {
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
                if let Some(module) = Module::locate(root, &tenant, &category, &id, false)?
                    && module.read_link(&module.current_link())?.is_some()
                {
                    out.push(ModuleName {
                        tenant: tenant.clone(),
                        category: category.clone(),
                        id,
                    });
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
/// installed. The `<id>` link goes first, in one rename, so the module disappears at
/// once; a crash after that leaves only dot-named leftovers, which the next install or
/// removal of the module clears.
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
        let gone = module.dir.join(format!(".{id}.removing"));
        fs::rename(module.current_link(), &gone).map_err(io("remove", &module.current_link()))?;
        sync_dir(&module.dir)?;
        remove_if_there(&gone)?;
    }
    remove_if_there(&module.previous_link())?;
    remove_if_there(&module.hold_file())?;
    // remove_dir_all removes links as links: nothing outside is touched.
    fs::remove_dir_all(module.versions()).map_err(io("remove", &module.versions()))?;
    sync_dir(&module.dir)?;
    Ok(current)
}

/// Holds `update` back: the installer does not install it again (it was rolled back
/// from). Written to a temporary file, fsynced and renamed into place.
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
    let tmp = module.dir.join(format!(".{id}.held-tmp"));
    remove_if_there(&tmp)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(update.to_hex().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("write", &tmp))?;
    fs::rename(&tmp, module.hold_file()).map_err(io("rename into place", &tmp))?;
    sync_dir(&module.dir)
}

/// The update held back for a module, if any. A damaged hold file holds nothing back.
pub fn held(
    root: &Path,
    tenant: &str,
    category: &str,
    id: &str,
) -> Result<Option<Hash>, InstallError> {
    let Some(module) = Module::locate(root, tenant, category, id, false)? else {
        return Ok(None);
    };
    let path = module.hold_file();
    let mut text = String::new();
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", &path)(e)),
        Ok(f) => {
            f.take(128)
                .read_to_string(&mut text)
                .map_err(io("read", &path))?;
        }
    }
    Ok(text.trim().parse().ok())
}

/// Lets the held-back version of a module be installed again.
pub fn release(root: &Path, tenant: &str, category: &str, id: &str) -> Result<(), InstallError> {
    match Module::locate(root, tenant, category, id, false)? {
        Some(module) => remove_if_there(&module.hold_file()),
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
