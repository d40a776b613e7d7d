//! The install directory's file-system steps, each checked: a version's files
//! compared with its metadata, extra entries found and removed, files written and
//! synced, parent directories walked without following a link, directories synced.

use super::*;

/// The problems of a version's `files` directory: damaged files in metadata order,
/// then extra entries sorted by path. Also the extra entries' own paths, in the same
/// order (a name that is not UTF-8 is shown lossily but removed by its real name).
pub(super) fn check_files(
    files: &Path,
    meta: &Metadata,
) -> Result<(Vec<Problem>, Vec<PathBuf>), InstallError> {
    if !dir_step(files, false)? {
        let missing = meta.files.iter().map(|sum| Problem {
            path: sum.path.clone(),
            damage: Damage::Missing,
        });
        return Ok((missing.collect(), Vec::new()));
    }
    let mut problems = Vec::new();
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
    let (shown, extras): (Vec<String>, Vec<PathBuf>) = extras(files, meta)?.into_iter().unzip();
    problems.extend(shown.into_iter().map(|path| Problem {
        path,
        damage: Damage::Extra,
    }));
    Ok((problems, extras))
}

/// The entries below `files` that the metadata does not list, sorted, each shown and
/// on disk. Links are never followed: only real directories at listed paths are looked
/// into; an unlisted directory is one entry, and a listed directory that is now a link
/// or a file is already a damaged file.
fn extras(files: &Path, meta: &Metadata) -> Result<Vec<(String, PathBuf)>, InstallError> {
    let listed: BTreeSet<&str> = meta.files.iter().map(|f| f.path.as_str()).collect();
    let dirs: BTreeSet<&str> = meta
        .files
        .iter()
        .flat_map(|f| f.path.match_indices('/').map(|(at, _)| &f.path[..at]))
        .collect();
    let mut found = Vec::new();
    let mut todo = vec![(String::new(), files.to_path_buf())];
    while let Some((rel, dir)) = todo.pop() {
        for entry in fs::read_dir(&dir).map_err(io("read", &dir))? {
            let entry = entry.map_err(io("read", &dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                // Metadata paths are UTF-8: this cannot be a listed one.
                found.push((format!("{rel}{}", name.to_string_lossy()), path));
                continue;
            };
            let child = format!("{rel}{name}");
            if listed.contains(child.as_str()) || dirs.contains(child.as_str()) {
                // A real directory is looked into, even where a file should be: what
                // it holds is extra (the directory itself is a damaged file then).
                // DirEntry::file_type does not follow links.
                if entry.file_type().map_err(io("inspect", &path))?.is_dir() {
                    todo.push((format!("{child}/"), path));
                }
                continue;
            }
            found.push((child, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes a file, link or whole directory without following links.
pub(super) fn remove_entry(path: &Path) -> Result<(), InstallError> {
    let m = fs::symlink_metadata(path).map_err(io("inspect", path))?;
    if m.is_dir() {
        // remove_dir_all removes the links inside as links.
        fs::remove_dir_all(path).map_err(io("remove", path))
    } else {
        fs::remove_file(path).map_err(io("remove", path))
    }
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
pub(super) fn write_file<E>(
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
pub(super) fn safe_rel(path: &str) -> Result<Vec<&str>, InstallError> {
    names::check_rel_path(path).map_err(|source| InstallError::UnsafePath {
        path: path.chars().take(80).collect(),
        source,
    })?;
    Ok(path.split('/').collect())
}

/// `base/rel`, after walking its parent directories without following links (created
/// if `create`); `None` if one is missing.
pub(super) fn walk_parents(
    base: &Path,
    rel: &str,
    create: bool,
) -> Result<Option<PathBuf>, InstallError> {
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
pub(super) fn dir_step(path: &Path, create: bool) -> Result<bool, InstallError> {
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

pub(super) fn make_dir(path: &Path) -> Result<(), InstallError> {
    DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(io("create", path))
}

pub(super) fn new_file(path: &Path, mode: u32) -> Result<File, InstallError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("create", path))
}

pub(super) fn open_nofollow(path: &Path) -> Result<File, InstallError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("open", path))
}

pub(super) fn remove_if_there(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

pub(super) fn sync_dir(path: &Path) -> Result<(), InstallError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", path))
}
