//! Listing and removing installed modules, and the hold that keeps a rolled-back version from coming back.

use super::*;

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
