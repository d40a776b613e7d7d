//! What an installer refuses: unsafe paths and names, links it did not make, and tampered metadata.

use super::*;

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
