//! Checking an installed module against its metadata, and repairing what is damaged without following links out.

use super::*;

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
