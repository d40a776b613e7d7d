//! Installing onto a full disk or an unusable install directory (tmpfs mounts; run as root).

use super::*;

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
