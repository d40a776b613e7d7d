//! Fuzz target: module packages (PROTOCOL.md §16), the XML of `arbor publish
//! --from-xml`, through `package::unpack_temp` (what the command line calls), with
//! limits small enough for a fuzzer. An accepted package must have unpacked only
//! regular files and directories (no links), within the limits, into the directory the
//! request names; and the temporary directory must be gone once it is dropped, or at
//! once when the package is refused.
#![no_main]

use arbor::package::{Limits, unpack_temp};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

/// At most this many files and bytes unpacked from one input.
const LIMITS: Limits = Limits {
    max_document: 1 << 20,
    max_unpacked: 1 << 20,
    max_files: 64,
};

fuzz_target!(|data: &[u8]| {
    let parent = parent();
    if let Ok((req, dir)) = unpack_temp(data, parent, LIMITS) {
        assert_eq!(req.path, dir.path());
        let (files, bytes) = walk(dir.path());
        assert!((1..=LIMITS.max_files).contains(&files));
        assert!(bytes <= LIMITS.max_unpacked);
    }
    let left = std::fs::read_dir(parent).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "a package left its temporary directory behind");
});

/// Where the temporary directories go: one directory per process, in `TMPDIR`.
fn parent() -> &'static Path {
    static PARENT: OnceLock<std::path::PathBuf> = OnceLock::new();
    PARENT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("arbor-fuzz-xml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the unpacked packages");
        dir
    })
}

/// The regular files under `dir` and their bytes; anything else is a broken property.
fn walk(dir: &Path) -> (usize, u64) {
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir).expect("the unpacked directory reads") {
        let entry = entry.expect("an entry reads");
        let kind = entry.file_type().expect("an entry has a type");
        if kind.is_dir() {
            let (f, b) = walk(&entry.path());
            files += f;
            bytes += b;
        } else {
            assert!(kind.is_file(), "a package unpacked a {kind:?}");
            files += 1;
            bytes += entry.metadata().expect("a file has metadata").len();
        }
    }
    (files, bytes)
}
