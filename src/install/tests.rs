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

#[test]
fn installs_files_modes_metadata_and_link() {
    let dir = tmp();
    let (signed, chunks) = v1();
    let outcome = put(dir.path(), &signed, &chunks).expect("install");
    assert_eq!(
        outcome,
        Installed::New {
            update: signed.id,
            previous: None,
            files: 2,
            bytes: 30
        }
    );
    assert_eq!(read(dir.path(), "bin/viewer"), "#!/bin/sh\necho one\n");
    assert_eq!(read(dir.path(), "share/doc/README"), "version one");
    let link = module_dir(dir.path()).join("viewer");
    assert!(
        fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&link).expect("link").to_str(),
        Some(format!(".viewer.versions/{}/files", signed.id).as_str())
    );
    let mode = fs::metadata(link.join("bin/viewer"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let st = status(dir.path(), "acme", "plugins", "viewer").expect("status");
    let meta = st.current.expect("current");
    assert_eq!(st.previous, None);
    assert_eq!(
        (
            meta.tenant.as_str(),
            meta.category.as_str(),
            meta.id.as_str()
        ),
        ("acme", "plugins", "viewer")
    );
    assert_eq!(meta.version, "1.0");
    assert_eq!(meta.update_id, signed.id.to_hex());
    assert_eq!(meta.installed_at, 1_800_000_000);
    assert_eq!(meta.files[0].path, "bin/viewer");
    assert_eq!(
        meta.files[0].blake3,
        Hash::of(b"#!/bin/sh\necho one\n").to_hex()
    );
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        vec![]
    );
}

#[test]
fn the_current_update_is_never_installed_twice() {
    let dir = tmp();
    let (signed, chunks) = v1();
    put(dir.path(), &signed, &chunks).expect("install");
    let again = install(dir.path(), &signed, 0, |_| Err::<Vec<u8>, _>(Gone)).expect("again");
    assert_eq!(again, Installed::AlreadyInstalled { update: signed.id });
    assert_eq!(previous(dir.path()), None);
    assert_eq!(versions(dir.path()), vec![signed.id.to_hex()]);
}

#[test]
fn upgrade_keeps_the_previous_version_and_rollback_switches_back() {
    let dir = tmp();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(dir.path(), &one, &c1).expect("v1");
    let outcome = put(dir.path(), &two, &c2).expect("v2");
    assert!(matches!(outcome, Installed::New { previous: Some(p), .. } if p == one.id));
    assert_eq!(current(dir.path()).as_deref(), Some("2.0"));
    assert_eq!(previous(dir.path()).as_deref(), Some("1.0"));
    assert_eq!(read(dir.path(), "lib/extra.so"), "new in two");

    let back = rollback(dir.path(), "acme", "plugins", "viewer").expect("rollback");
    assert_eq!(
        back,
        RolledBack {
            current: one.id,
            previous: two.id
        }
    );
    assert_eq!(read(dir.path(), "bin/viewer"), "#!/bin/sh\necho one\n");
    assert!(!module_dir(dir.path()).join("viewer/lib").exists());
    assert_eq!(previous(dir.path()).as_deref(), Some("2.0"));

    rollback(dir.path(), "acme", "plugins", "viewer").expect("roll forward");
    assert_eq!(current(dir.path()).as_deref(), Some("2.0"));

    // A third version drops the first: only current and previous are kept.
    let (three, c3) = update("3.0", &[("bin/viewer", 0o755, b"three")]);
    put(dir.path(), &three, &c3).expect("v3");
    assert_eq!(previous(dir.path()).as_deref(), Some("2.0"));
    let mut kept = vec![two.id.to_hex(), three.id.to_hex()];
    kept.sort();
    assert_eq!(versions(dir.path()), kept);
}

#[test]
fn installing_the_previous_version_switches_back_without_writing() {
    let dir = tmp();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(dir.path(), &one, &c1).expect("v1");
    put(dir.path(), &two, &c2).expect("v2");
    let outcome = install(dir.path(), &one, 0, |_| Err::<Vec<u8>, _>(Gone)).expect("v1 again");
    assert_eq!(
        outcome,
        Installed::Reactivated {
            update: one.id,
            previous: two.id
        }
    );
    assert_eq!(current(dir.path()).as_deref(), Some("1.0"));
    assert_eq!(previous(dir.path()).as_deref(), Some("2.0"));
}

#[test]
fn rollback_needs_a_previous_version() {
    let dir = tmp();
    let err = rollback(dir.path(), "acme", "plugins", "viewer").unwrap_err();
    assert!(matches!(err, InstallError::NotInstalled { .. }), "{err}");
    let (one, c1) = v1();
    put(dir.path(), &one, &c1).expect("v1");
    let err = rollback(dir.path(), "acme", "plugins", "viewer").unwrap_err();
    assert!(matches!(err, InstallError::NoPrevious { .. }), "{err}");
    assert_eq!(current(dir.path()).as_deref(), Some("1.0"));
}

/// Installs v1, then a manifest whose first path is `path` (bypassing the manifest's
/// own validation), and checks it is refused with nothing written.
fn assert_path_refused(path: &str) {
    let dir = tmp();
    let root = dir.path().join("install");
    let (one, c1) = v1();
    put(&root, &one, &c1).expect("v1");
    let (mut bad, chunks) = v2();
    bad.manifest.files[0].path = path.into();
    let err = put(&root, &bad, &chunks).unwrap_err();
    assert!(
        matches!(err, InstallError::UnsafePath { .. }),
        "{path:?}: {err}"
    );
    assert_eq!(current(&root).as_deref(), Some("1.0"));
    assert_eq!(versions(&root), vec![one.id.to_hex()]);
    let outside: Vec<_> = fs::read_dir(dir.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(outside, vec!["install"], "{path:?} wrote outside the root");
}

#[test]
fn dot_dot_paths_are_refused() {
    assert_path_refused("../../../escaped");
    assert_path_refused("bin/../../escaped");
    assert_path_refused("..");
}

#[test]
fn absolute_paths_are_refused() {
    let target = tmp();
    let abs = target.path().join("escaped");
    assert_path_refused(abs.to_str().expect("utf-8"));
    assert!(!abs.exists());
    assert_path_refused("/etc/passwd");
}

#[test]
fn empty_paths_and_components_are_refused() {
    assert_path_refused("");
    assert_path_refused("bin//viewer");
    assert_path_refused("bin/");
    assert_path_refused("./bin");
}

#[test]
fn unsafe_module_names_are_refused() {
    let dir = tmp();
    type Rename = fn(&mut Manifest);
    let cases: [(Rename, &str); 4] = [
        (|m| m.tenant = "..".into(), "tenant"),
        (|m| m.category = "a/b".into(), "category"),
        (|m| m.id = ".hidden".into(), "id"),
        (|m| m.id = "/etc".into(), "id"),
    ];
    for (rename, field) in cases {
        let (mut bad, chunks) = v1();
        rename(&mut bad.manifest);
        let err = put(dir.path(), &bad, &chunks).unwrap_err();
        assert!(
            matches!(&err, InstallError::Name(e) if e.to_string().starts_with(field)),
            "{err}"
        );
    }
    assert!(status(dir.path(), "..", "plugins", "viewer").is_err());
    assert!(check(dir.path(), "acme", "a/b", "viewer").is_err());
    assert!(rollback(dir.path(), "acme", "plugins", "").is_err());
    assert!(is_empty(dir.path()));
}

#[test]
fn a_symlinked_tenant_directory_is_not_followed() {
    let dir = tmp();
    let outside = tmp();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("acme")).expect("symlink");
    let (one, c1) = v1();
    let err = put(dir.path(), &one, &c1).unwrap_err();
    assert!(matches!(err, InstallError::Symlink { .. }), "{err}");
    assert!(is_empty(outside.path()));
    assert!(status(dir.path(), "acme", "plugins", "viewer").is_err());
}

#[test]
fn a_symlinked_versions_directory_is_not_followed() {
    let dir = tmp();
    let outside = tmp();
    fs::create_dir_all(module_dir(dir.path())).expect("mkdir");
    std::os::unix::fs::symlink(
        outside.path(),
        module_dir(dir.path()).join(".viewer.versions"),
    )
    .expect("symlink");
    let (one, c1) = v1();
    let err = put(dir.path(), &one, &c1).unwrap_err();
    assert!(matches!(err, InstallError::Symlink { .. }), "{err}");
    assert!(is_empty(outside.path()));
}

#[test]
fn a_current_link_arbor_did_not_make_is_refused() {
    let dir = tmp();
    let outside = tmp();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(dir.path(), &one, &c1).expect("v1");
    let link = module_dir(dir.path()).join("viewer");
    fs::remove_file(&link).expect("rm");
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
    let err = put(dir.path(), &two, &c2).unwrap_err();
    assert!(matches!(err, InstallError::Foreign { .. }), "{err}");
    assert!(status(dir.path(), "acme", "plugins", "viewer").is_err());
    assert!(check(dir.path(), "acme", "plugins", "viewer").is_err());
    assert!(is_empty(outside.path()));

    // A real directory where the link belongs is not replaced either.
    fs::remove_file(&link).expect("rm");
    fs::create_dir(&link).expect("mkdir");
    fs::write(link.join("keep"), b"mine").expect("write");
    let err = put(dir.path(), &two, &c2).unwrap_err();
    assert!(matches!(err, InstallError::Foreign { .. }), "{err}");
    assert_eq!(fs::read(link.join("keep")).expect("kept"), b"mine");
}

#[test]
fn a_failed_chunk_read_leaves_the_current_version() {
    for fail_after in [0, 1, 5] {
        let dir = tmp();
        let (one, c1) = v1();
        let (two, c2) = v2();
        put(dir.path(), &one, &c1).expect("v1");
        let mut served = 0;
        let err = install(dir.path(), &two, 0, |h| {
            served += 1;
            if served > fail_after {
                Err(Gone)
            } else {
                c2.get(h).cloned().ok_or(Gone)
            }
        })
        .unwrap_err();
        assert!(matches!(err, InstallError::ReadChunk { .. }), "{err}");
        assert_eq!(current(dir.path()).as_deref(), Some("1.0"));
        assert_eq!(previous(dir.path()), None);
        assert_eq!(read(dir.path(), "bin/viewer"), "#!/bin/sh\necho one\n");
        // The failed staging directory is gone: only v1 remains.
        assert_eq!(versions(dir.path()), vec![one.id.to_hex()]);
    }
}

#[test]
fn a_corrupt_chunk_is_refused() {
    let dir = tmp();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(dir.path(), &one, &c1).expect("v1");
    let err = install(dir.path(), &two, 0, |h| {
        let mut data = c2.get(h).cloned().ok_or(Gone)?;
        data[0] ^= 1;
        Ok::<_, Gone>(data)
    })
    .unwrap_err();
    assert!(matches!(err, InstallError::BadChunk { .. }), "{err}");
    assert_eq!(current(dir.path()).as_deref(), Some("1.0"));
    assert_eq!(versions(dir.path()), vec![one.id.to_hex()]);
}

#[test]
fn a_crash_mid_install_leaves_the_current_version_and_the_next_install_cleans_up() {
    let dir = tmp();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(dir.path(), &one, &c1).expect("v1");

    // Crash: staging dies after 3 chunks and nothing cleans up after it.
    let Prepared::Stage { staging, .. } = prepare(dir.path(), &two).expect("prepare") else {
        panic!("v2 is not installed yet");
    };
    let mut served = 0;
    let crashed = stage(&staging, &two, 0, &mut |h: &Hash| {
        served += 1;
        if served > 3 {
            Err(Gone)
        } else {
            c2.get(h).cloned().ok_or(Gone)
        }
    });
    assert!(crashed.is_err());
    assert!(
        staging.join("files/bin/viewer").exists(),
        "a partial file was written"
    );
    assert_eq!(current(dir.path()).as_deref(), Some("1.0"));
    assert_eq!(read(dir.path(), "bin/viewer"), "#!/bin/sh\necho one\n");
    assert!(!module_dir(dir.path()).join("viewer/lib").exists());
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        vec![]
    );

    // Crash later: the new version was renamed in but the links never switched.
    let (three, c3) = update("3.0", &[("x", 0o644, b"three")]);
    let Prepared::Stage { module, staging } = prepare(dir.path(), &three).expect("prepare") else {
        panic!("v3 is not installed yet");
    };
    stage(&staging, &three, 0, &mut from(&c3)).expect("stage");
    fs::rename(&staging, module.version(&three.id)).expect("rename");
    assert_eq!(current(dir.path()).as_deref(), Some("1.0"));

    put(dir.path(), &two, &c2).expect("v2 after the crash");
    assert_eq!(current(dir.path()).as_deref(), Some("2.0"));
    assert_eq!(previous(dir.path()).as_deref(), Some("1.0"));
    let mut kept = vec![one.id.to_hex(), two.id.to_hex()];
    kept.sort();
    assert_eq!(versions(dir.path()), kept, "leftovers are cleaned");
}

#[test]
fn check_finds_damage_and_repair_restores_it() {
    let dir = tmp();
    let (signed, chunks) = update(
        "1.0",
        &[
            ("a", 0o644, b"alpha alpha"),
            ("b/c", 0o755, b"charlie"),
            ("d", 0o644, b"delta"),
            ("e", 0o644, b"echo"),
        ],
    );
    put(dir.path(), &signed, &chunks).expect("install");
    let files = module_dir(dir.path()).join("viewer");
    fs::write(files.join("a"), b"alpha alphb").expect("modify");
    fs::remove_dir_all(files.join("b")).expect("remove");
    fs::set_permissions(files.join("d"), fs::Permissions::from_mode(0o666)).expect("chmod");
    let damage = vec![
        Problem {
            path: "a".into(),
            damage: Damage::Modified,
        },
        Problem {
            path: "b/c".into(),
            damage: Damage::Missing,
        },
        Problem {
            path: "d".into(),
            damage: Damage::Mode {
                expected: 0o644,
                found: 0o666,
            },
        },
    ];
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        damage
    );
    assert_eq!(
        repair(dir.path(), &signed, from(&chunks)).expect("repair"),
        damage
    );
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        vec![]
    );
    assert_eq!(fs::read(files.join("b/c")).expect("read"), b"charlie");
    let mode = fs::metadata(files.join("d"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn a_file_replaced_by_a_symlink_is_replaced_not_written_through() {
    let dir = tmp();
    let outside = tmp();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"#!/bin/sh\necho one\n").expect("write");
    let (signed, chunks) = v1();
    put(dir.path(), &signed, &chunks).expect("install");
    let file = module_dir(dir.path()).join("viewer/bin/viewer");
    fs::remove_file(&file).expect("rm");
    std::os::unix::fs::symlink(&victim, &file).expect("symlink");
    let damage = vec![Problem {
        path: "bin/viewer".into(),
        damage: Damage::NotRegular,
    }];
    // Same content behind the link: still damage, because the link is not followed.
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        damage
    );
    assert_eq!(
        repair(dir.path(), &signed, from(&chunks)).expect("repair"),
        damage
    );
    assert!(
        fs::symlink_metadata(&file)
            .expect("meta")
            .file_type()
            .is_file()
    );
    assert_eq!(fs::read(&victim).expect("victim"), b"#!/bin/sh\necho one\n");
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        vec![]
    );
}

#[test]
fn a_directory_replaced_by_a_symlink_is_refused_by_repair() {
    let dir = tmp();
    let outside = tmp();
    fs::write(outside.path().join("viewer"), b"untouched").expect("write");
    let (signed, chunks) = v1();
    put(dir.path(), &signed, &chunks).expect("install");
    let bin = module_dir(dir.path()).join("viewer/bin");
    fs::remove_dir_all(&bin).expect("rm");
    std::os::unix::fs::symlink(outside.path(), &bin).expect("symlink");
    let damage = vec![Problem {
        path: "bin/viewer".into(),
        damage: Damage::NotRegular,
    }];
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        damage
    );
    let err = repair(dir.path(), &signed, from(&chunks)).unwrap_err();
    assert!(matches!(err, InstallError::Symlink { .. }), "{err}");
    assert_eq!(
        fs::read(outside.path().join("viewer")).expect("read"),
        b"untouched"
    );
}

#[test]
fn repair_needs_the_current_manifest() {
    let dir = tmp();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(dir.path(), &one, &c1).expect("v1");
    let err = repair(dir.path(), &two, from(&c2)).unwrap_err();
    assert!(matches!(err, InstallError::NotCurrent { .. }), "{err}");
}

#[test]
fn tampered_metadata_paths_are_refused() {
    let dir = tmp();
    let (signed, chunks) = v1();
    put(dir.path(), &signed, &chunks).expect("install");
    let meta_path = module_dir(dir.path())
        .join(".viewer.versions")
        .join(signed.id.to_hex())
        .join(METADATA_FILE);
    let text = fs::read_to_string(&meta_path).expect("read");
    fs::write(
        &meta_path,
        text.replace("share/doc/README", "../../../../x"),
    )
    .expect("write");
    let err = check(dir.path(), "acme", "plugins", "viewer").unwrap_err();
    assert!(matches!(err, InstallError::UnsafePath { .. }), "{err}");
}

#[test]
fn list_finds_installed_modules_and_skips_everything_else() {
    let root = tmp();
    let (s, c) = v1();
    put(root.path(), &s, &c).expect("install");
    // Leftovers and strangers beside real modules are not modules.
    fs::create_dir_all(root.path().join("acme/plugins/empty-dir")).expect("mkdir");
    fs::create_dir_all(root.path().join(".hidden/x")).expect("mkdir");
    fs::write(root.path().join("acme/stray-file"), b"x").expect("write");
    symlink("/etc", root.path().join("linked-tenant")).expect("symlink");
    let found = list(root.path()).expect("list");
    assert_eq!(
        found,
        vec![ModuleName {
            tenant: "acme".into(),
            category: "plugins".into(),
            id: "viewer".into(),
        }]
    );
}

#[test]
fn remove_takes_the_module_away_and_nothing_else() {
    let root = tmp();
    let (s1, c1) = v1();
    let (s2, c2) = v2();
    put(root.path(), &s1, &c1).expect("v1");
    put(root.path(), &s2, &c2).expect("v2");
    // A link inside the installed files must be removed as a link, not followed.
    let outside = root.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("keep"), b"x").expect("write");
    let files = module_dir(root.path()).join(format!(".viewer.versions/{}/files", s2.id.to_hex()));
    symlink(&outside, files.join("escape")).expect("symlink");

    assert_eq!(
        remove(root.path(), "acme", "plugins", "viewer").expect("remove"),
        Some(s2.id)
    );
    assert!(is_empty(&module_dir(root.path())), "leftovers after remove");
    assert!(outside.join("keep").exists(), "remove followed a link");
    assert_eq!(list(root.path()).expect("list"), vec![]);
    assert_eq!(
        remove(root.path(), "acme", "plugins", "viewer").expect("again"),
        None
    );
    // And it installs again from scratch.
    put(root.path(), &s1, &c1).expect("reinstall");
    assert_eq!(current(root.path()).as_deref(), Some("1.0"));
}

#[test]
fn a_hold_survives_until_released_and_garbage_holds_nothing() {
    let root = tmp();
    let (s1, c1) = v1();
    put(root.path(), &s1, &c1).expect("v1");
    assert_eq!(
        held(root.path(), "acme", "plugins", "viewer").expect("held"),
        None
    );
    hold(root.path(), "acme", "plugins", "viewer", &s1.id).expect("hold");
    assert_eq!(
        held(root.path(), "acme", "plugins", "viewer").expect("held"),
        Some(s1.id)
    );
    fs::write(module_dir(root.path()).join(".viewer.held"), b"not a hash").expect("damage");
    assert_eq!(
        held(root.path(), "acme", "plugins", "viewer").expect("held"),
        None
    );
    release(root.path(), "acme", "plugins", "viewer").expect("release");
    assert!(!module_dir(root.path()).join(".viewer.held").exists());
    let err = hold(root.path(), "acme", "plugins", "nothing", &s1.id).expect_err("not installed");
    assert!(err.to_string().contains("not installed"), "{err}");
}

#[test]
fn extra_files_links_and_directories_are_found_and_removed_by_repair() {
    let root = tmp();
    let (s, c) = v1();
    put(root.path(), &s, &c).expect("install");
    let files = root.path().join("acme/plugins/viewer");
    let outside = root.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("precious"), b"x").expect("write");
    fs::write(files.join("planted.sh"), b"evil").expect("write");
    symlink(&outside, files.join("share/escape")).expect("symlink");
    fs::create_dir_all(files.join("junk/deeper")).expect("mkdir");
    fs::write(files.join("junk/deeper/x"), b"x").expect("write");
    // A directory where a file should be.
    fs::remove_file(files.join("share/doc/README")).expect("rm");
    fs::create_dir(files.join("share/doc/README")).expect("mkdir");
    fs::write(files.join("share/doc/README/inside"), b"x").expect("write");

    let problems = check(root.path(), "acme", "plugins", "viewer").expect("check");
    let found: Vec<(String, Damage)> = problems
        .iter()
        .map(|p| (p.path.clone(), p.damage))
        .collect();
    for want in [
        ("planted.sh", Damage::Extra),
        ("share/escape", Damage::Extra),
        ("junk", Damage::Extra),
        ("share/doc/README/inside", Damage::Extra),
        ("share/doc/README", Damage::NotRegular),
    ] {
        assert!(
            found.contains(&(want.0.to_string(), want.1)),
            "{want:?} not in {found:?}"
        );
    }
    assert!(
        !found.iter().any(|(p, _)| p.starts_with("junk/")),
        "an extra directory is one problem: {found:?}"
    );

    repair(root.path(), &s, from(&c)).expect("repair");
    assert_eq!(
        check(root.path(), "acme", "plugins", "viewer").expect("check"),
        vec![]
    );
    assert_eq!(read(root.path(), "share/doc/README"), "version one");
    assert!(
        outside.join("precious").exists(),
        "repair followed a link out"
    );
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

#[test]
fn list_is_sorted_and_skips_links_strangers_and_half_removed_modules() {
    let dir = tmp();
    let root = dir.path();
    assert_eq!(list(&root.join("missing")).expect("no root"), vec![]);
    for m in [
        ["acme", "plugins", "viewer"],
        ["acme", "apps", "zeta"],
        ["acme", "apps", "alpha"],
        ["beta", "x", "y"],
        ["beta", "x", "gone"],
    ] {
        let (s, c) = update_of(m, "1.0", &[("f", 0o644, b"data")], 4);
        put(root, &s, &c).expect("install");
    }
    // A removal that crashed right after its first step: not installed.
    fs::rename(root.join("beta/x/gone"), root.join("beta/x/.gone.removing")).expect("rename");
    // Links to directories at the tenant and category levels would list modules twice.
    symlink(root.join("acme"), root.join("linked-tenant")).expect("symlink");
    symlink(root.join("acme/apps"), root.join("acme/linked-category")).expect("symlink");
    // Strangers at the id level: a file, a directory, bad names, a dot-name.
    fs::write(root.join("acme/plugins/a-file"), b"x").expect("write");
    fs::create_dir(root.join("acme/plugins/a-dir")).expect("mkdir");
    symlink("viewer", root.join("acme/plugins/bad name")).expect("symlink");
    symlink("viewer", root.join("acme/plugins/.dotted")).expect("symlink");
    // Modules arbor would refuse: an `<id>` pointing elsewhere, a linked versions dir.
    fs::create_dir(root.join("acme/plugins/.foreign.versions")).expect("mkdir");
    symlink("/etc", root.join("acme/plugins/foreign")).expect("symlink");
    symlink(
        root.join("acme/plugins/.viewer.versions"),
        root.join("acme/plugins/.twin.versions"),
    )
    .expect("symlink");
    symlink(
        fs::read_link(root.join("acme/plugins/viewer")).expect("link"),
        root.join("acme/plugins/twin"),
    )
    .expect("symlink");
    fs::write(root.join("stray-file"), b"x").expect("write");
    fs::create_dir(root.join(".hidden")).expect("mkdir");

    assert_eq!(
        list(root).expect("list"),
        vec![
            module("acme", "apps", "alpha"),
            module("acme", "apps", "zeta"),
            module("acme", "plugins", "viewer"),
            module("beta", "x", "y"),
        ]
    );
}

#[test]
fn a_crash_during_remove_leaves_the_module_absent_and_the_next_call_cleans_up() {
    // How far the removal got: after renaming `<id>` away, after the other dot-names,
    // halfway through the versions directory.
    for reached in 1..=3 {
        for then_install in [false, true] {
            let dir = tmp();
            let root = dir.path();
            let (one, c1) = v1();
            let (two, c2) = v2();
            put(root, &one, &c1).expect("v1");
            put(root, &two, &c2).expect("v2");
            rollback(root, "acme", "plugins", "viewer").expect("rollback: a hold too");
            let m = viewer(root);
            fs::rename(m.current_link(), m.removing_link()).expect("rename");
            if reached >= 2 {
                m.remove_dot_files().expect("dot-names");
            }
            if reached >= 3 {
                fs::remove_dir_all(m.version(&one.id)).expect("one version");
            }

            assert_eq!(list(root).expect("list"), vec![], "at {reached}");
            assert_eq!(
                status(root, "acme", "plugins", "viewer").expect("status"),
                Status::default()
            );
            for err in [
                check(root, "acme", "plugins", "viewer").unwrap_err(),
                rollback(root, "acme", "plugins", "viewer").unwrap_err(),
            ] {
                assert!(matches!(err, InstallError::NotInstalled { .. }), "{err}");
            }
            if then_install {
                // A fresh install: nothing of the removed module comes back.
                let outcome = put(root, &two, &c2).expect("install after the crash");
                assert!(
                    matches!(outcome, Installed::New { previous: None, .. }),
                    "{outcome:?}"
                );
                assert_eq!(module_entries(root), vec![".viewer.versions", "viewer"]);
                assert_eq!(versions(root), vec![two.id.to_hex()]);
                let st = status(root, "acme", "plugins", "viewer").expect("status");
                assert_eq!((st.previous, st.held), (None, None));
            } else {
                assert_eq!(
                    remove(root, "acme", "plugins", "viewer").expect("remove again"),
                    None
                );
                assert!(
                    is_empty(&module_dir(root)),
                    "leftovers: {:?}",
                    module_entries(root)
                );
            }
        }
    }
}

#[test]
fn remove_refuses_an_id_link_arbor_did_not_make() {
    let dir = tmp();
    let outside = tmp();
    fs::write(outside.path().join("keep"), b"x").expect("write");
    let (one, c1) = v1();
    put(dir.path(), &one, &c1).expect("v1");
    let link = module_dir(dir.path()).join("viewer");
    fs::remove_file(&link).expect("rm");
    symlink(outside.path(), &link).expect("symlink");
    let err = remove(dir.path(), "acme", "plugins", "viewer").unwrap_err();
    assert!(matches!(err, InstallError::Foreign { .. }), "{err}");
    assert!(outside.path().join("keep").exists());
    assert_eq!(fs::read_link(&link).expect("still there"), outside.path());
}

#[test]
fn rollback_holds_the_update_rolled_back_from_until_a_new_version_is_installed() {
    let dir = tmp();
    let root = dir.path();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(root, &one, &c1).expect("v1");
    put(root, &two, &c2).expect("v2");
    assert_eq!(held(root, "acme", "plugins", "viewer").expect("held"), None);

    rollback(root, "acme", "plugins", "viewer").expect("rollback");
    assert_eq!(
        held(root, "acme", "plugins", "viewer").expect("held"),
        Some(two.id)
    );
    let st = status(root, "acme", "plugins", "viewer").expect("status");
    assert_eq!(st.held, Some(two.id));
    assert_eq!(
        fs::read_to_string(module_dir(root).join(".viewer.held")).expect("hold file"),
        two.id.to_hex()
    );
    assert_eq!(
        module_entries(root),
        vec![
            ".viewer.held",
            ".viewer.previous",
            ".viewer.versions",
            "viewer"
        ],
        "no temporary file or swap link is left"
    );

    // Rolling back again (forward) holds the other one.
    rollback(root, "acme", "plugins", "viewer").expect("roll forward");
    assert_eq!(
        held(root, "acme", "plugins", "viewer").expect("held"),
        Some(one.id)
    );

    let (three, c3) = update("3.0", &[("bin/viewer", 0o755, b"three")]);
    put(root, &three, &c3).expect("v3");
    assert_eq!(held(root, "acme", "plugins", "viewer").expect("held"), None);
    assert!(!module_dir(root).join(".viewer.held").exists());
}

#[test]
fn switching_back_keeps_the_hold_and_asking_for_the_held_update_ends_it() {
    let dir = tmp();
    let root = dir.path();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(root, &one, &c1).expect("v1");
    put(root, &two, &c2).expect("v2");

    // A rollback that crashed after its hold, before the links: switching to the
    // previous version finishes it, and the hold stays.
    hold(root, "acme", "plugins", "viewer", &two.id).expect("hold");
    let outcome = put(root, &one, &c1).expect("v1 again");
    assert!(
        matches!(outcome, Installed::Reactivated { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        held(root, "acme", "plugins", "viewer").expect("held"),
        Some(two.id)
    );
    // The current one asked for again: nothing changes.
    put(root, &one, &c1).expect("v1 once more");
    assert_eq!(
        held(root, "acme", "plugins", "viewer").expect("held"),
        Some(two.id)
    );
    // The held update asked for by hand: the hold ends.
    let outcome = put(root, &two, &c2).expect("v2 by hand");
    assert!(
        matches!(outcome, Installed::Reactivated { .. }),
        "{outcome:?}"
    );
    assert_eq!(held(root, "acme", "plugins", "viewer").expect("held"), None);
}

/// The steps of a rollback from v2 to v1, in their order (see the module doc).
fn rollback_step(m: &Module, step: usize, from: &Hash, to: &Hash) {
    match step {
        0 => m.write_hold(from),
        1 => m.set_link(&m.swap_link(), from),
        2 => m.set_link(&m.current_link(), to),
        3 => m.set_link(&m.previous_link(), from),
        _ => remove_if_there(&m.swap_link()),
    }
    .expect("rollback step");
}

#[test]
fn a_crash_at_any_point_of_a_rollback_keeps_both_versions() {
    for crash_after in 0..=5 {
        for then in ["status", "install", "rollback"] {
            let dir = tmp();
            let root = dir.path();
            let (one, c1) = v1();
            let (two, c2) = v2();
            put(root, &one, &c1).expect("v1");
            put(root, &two, &c2).expect("v2");
            let m = viewer(root);
            for step in 0..crash_after {
                rollback_step(&m, step, &two.id, &one.id);
            }
            // `<id>` is switched by the third step: before, nothing seems done.
            let (cur, prev) = if crash_after >= 3 {
                (&one, &two)
            } else {
                (&two, &one)
            };
            let at = format!("crash after {crash_after} steps, then {then}");
            match then {
                "status" => {
                    let st = status(root, "acme", "plugins", "viewer").expect("status");
                    assert_eq!(
                        st.current.map(|c| c.update_id),
                        Some(cur.id.to_hex()),
                        "{at}"
                    );
                    assert_eq!(
                        st.previous.map(|p| p.update_id),
                        Some(prev.id.to_hex()),
                        "{at}"
                    );
                    let hold = (crash_after >= 1).then_some(two.id);
                    assert_eq!(st.held, hold, "{at}");
                    assert_eq!(
                        check(root, "acme", "plugins", "viewer").expect("check"),
                        vec![],
                        "{at}"
                    );
                    let mut both = vec![one.id.to_hex(), two.id.to_hex()];
                    both.sort();
                    assert_eq!(versions(root), both, "{at}");
                }
                "install" => {
                    let (three, c3) = update("3.0", &[("x", 0o644, b"three")]);
                    let outcome = put(root, &three, &c3).expect("v3");
                    assert!(
                        matches!(outcome, Installed::New { previous: Some(p), .. } if p == cur.id),
                        "{at}: {outcome:?}"
                    );
                    let mut kept = vec![cur.id.to_hex(), three.id.to_hex()];
                    kept.sort();
                    assert_eq!(versions(root), kept, "{at}");
                    assert!(!module_dir(root).join(".viewer.swap").exists(), "{at}");
                }
                _ => {
                    let back = rollback(root, "acme", "plugins", "viewer").expect("rollback");
                    assert_eq!(
                        back,
                        RolledBack {
                            current: prev.id,
                            previous: cur.id
                        },
                        "{at}"
                    );
                    assert_eq!(
                        held(root, "acme", "plugins", "viewer").expect("held"),
                        Some(cur.id),
                        "{at}"
                    );
                    assert_eq!(
                        module_entries(root),
                        vec![
                            ".viewer.held",
                            ".viewer.previous",
                            ".viewer.versions",
                            "viewer"
                        ],
                        "{at}"
                    );
                    assert_eq!(
                        check(root, "acme", "plugins", "viewer").expect("check"),
                        vec![],
                        "{at}"
                    );
                }
            }
        }
    }
}

#[test]
fn check_reports_extra_entries_and_repair_removes_them_without_following_links() {
    let dir = tmp();
    let outside = tmp();
    fs::create_dir(outside.path().join("dir")).expect("mkdir");
    fs::write(outside.path().join("dir/keep"), b"keep").expect("write");
    fs::write(outside.path().join("victim"), b"victim").expect("write");
    let (signed, chunks) = v1();
    put(dir.path(), &signed, &chunks).expect("install");
    let files = module_dir(dir.path()).join("viewer");
    fs::write(files.join("new.txt"), b"added").expect("write");
    symlink(outside.path().join("dir"), files.join("bin/escape")).expect("symlink");
    symlink(
        outside.path().join("victim"),
        files.join("share/doc/to-file"),
    )
    .expect("symlink");
    fs::create_dir_all(files.join("junk/deeper")).expect("mkdir");
    fs::write(files.join("junk/deeper/x"), b"x").expect("write");
    symlink(outside.path(), files.join("junk/out")).expect("symlink");
    let extra = |path: &str| Problem {
        path: path.into(),
        damage: Damage::Extra,
    };
    let found = vec![
        extra("bin/escape"),
        extra("junk"),
        extra("new.txt"),
        extra("share/doc/to-file"),
    ];
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        found
    );
    assert_eq!(
        repair(dir.path(), &signed, from(&chunks)).expect("repair"),
        found
    );
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        vec![]
    );
    for gone in ["bin/escape", "junk", "new.txt", "share/doc/to-file"] {
        assert!(
            fs::symlink_metadata(files.join(gone)).is_err(),
            "{gone} left"
        );
    }
    assert_eq!(read(dir.path(), "bin/viewer"), "#!/bin/sh\necho one\n");
    assert_eq!(
        fs::read(outside.path().join("dir/keep")).expect("kept"),
        b"keep"
    );
    assert_eq!(
        fs::read(outside.path().join("victim")).expect("kept"),
        b"victim"
    );
}

#[test]
fn a_file_replaced_by_a_directory_holding_a_link_is_replaced() {
    let dir = tmp();
    let outside = tmp();
    fs::write(outside.path().join("keep"), b"keep").expect("write");
    let (signed, chunks) = v1();
    put(dir.path(), &signed, &chunks).expect("install");
    let readme = module_dir(dir.path()).join("viewer/share/doc/README");
    fs::remove_file(&readme).expect("rm");
    fs::create_dir(&readme).expect("mkdir");
    symlink(outside.path(), readme.join("out")).expect("symlink");
    // The directory is a damaged file; the link in it is extra, removed as a link.
    let damage = vec![
        Problem {
            path: "share/doc/README".into(),
            damage: Damage::NotRegular,
        },
        Problem {
            path: "share/doc/README/out".into(),
            damage: Damage::Extra,
        },
    ];
    assert_eq!(
        check(dir.path(), "acme", "plugins", "viewer").expect("check"),
        damage
    );
    assert_eq!(
        repair(dir.path(), &signed, from(&chunks)).expect("repair"),
        damage
    );
    assert_eq!(read(dir.path(), "share/doc/README"), "version one");
    assert!(outside.path().join("keep").exists());
}

/// A tmpfs mounted on a fresh temporary directory, unmounted (lazily) on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// `None`, with a message, unless this runs as root (CI does).
    fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tmp();
        // A directory this process just made is owned by its effective uid.
        let uid = fs::metadata(dir.path()).expect("tempdir").uid();
        if uid != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root and this runs as uid {uid}");
            return None;
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs -o {options}: {status}");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let done = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
        if !done.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("cannot unmount {}: {done:?}", self.dir.path().display());
        }
    }
}

#[test]
fn a_full_disk_fails_the_install_and_keeps_the_current_version() {
    let Some(disk) = Tmpfs::mount("size=2m") else {
        return;
    };
    let root = disk.path();
    let (one, c1) = v1();
    put(root, &one, &c1).expect("v1");
    let mut big = vec![0u8; 3 << 20];
    blake3::Hasher::new().finalize_xof().fill(&mut big);
    let (two, c2) = update_of(
        ["acme", "plugins", "viewer"],
        "2.0",
        &[("big", 0o644, &big)],
        64 << 10,
    );

    let err = put(root, &two, &c2).unwrap_err();
    let InstallError::Io { source, .. } = &err else {
        panic!("not an I/O error: {err}");
    };
    assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}: {source}");
    assert!(
        source.to_string().contains("No space left on device"),
        "{source}"
    );
    assert_eq!(current(root).as_deref(), Some("1.0"));
    assert_eq!(previous(root), None);
    assert_eq!(
        check(root, "acme", "plugins", "viewer").expect("check"),
        vec![]
    );
    assert_eq!(versions(root), vec![one.id.to_hex()], "staging left behind");

    let (small, cs) = v2();
    put(root, &small, &cs).expect("a small update fits");
    assert_eq!(current(root).as_deref(), Some("2.0"));
    assert_eq!(previous(root).as_deref(), Some("1.0"));
}

#[test]
fn probe_refuses_a_read_only_mount_and_a_file() {
    let dir = tmp();
    let file = dir.path().join("file");
    fs::write(&file, b"x").expect("write");
    let err = probe(&file).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "install directory {} is unusable: it is not a directory",
            file.display()
        )
    );

    let Some(disk) = Tmpfs::mount("ro,size=1m") else {
        return;
    };
    let err = probe(disk.path()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "install directory {} is unusable: it is not writable: \
             Read-only file system (os error 30)",
            disk.path().display()
        )
    );
    let below = disk.path().join("install");
    let err = probe(&below).unwrap_err().to_string();
    assert!(
        err.contains("cannot create it: Read-only file system"),
        "{err}"
    );
}
