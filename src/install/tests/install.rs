//! Installing and upgrading a module: files, modes, metadata, the current link, and what a failed or interrupted install leaves.

use super::*;

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
