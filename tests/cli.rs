//! The command line as a root operator uses it: init, publish, updates, verify, export,
//! and every kind of bad input refused with a clear one-line error and nothing stored.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// A provider's module: a large binary, a script and a nested text file.
fn sample(dir: &Path, seed: u64) -> String {
    fs::create_dir_all(dir.join("bin")).expect("mkdir");
    fs::create_dir_all(dir.join("share/doc")).expect("mkdir");
    fs::write(dir.join("bin/engine"), noise(3 << 20, seed)).expect("write");
    fs::write(dir.join("bin/start.sh"), "#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(dir.join("bin/start.sh"), fs::Permissions::from_mode(0o750))
        .expect("chmod");
    fs::write(dir.join("share/doc/readme.txt"), "read me\n").expect("write");
    fs::write(dir.join("empty.cfg"), "").expect("write");
    dir.to_str().expect("utf-8").to_string()
}

fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut v: Vec<_> = walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .map(|e| e.expect("walk"))
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(root).expect("prefix").to_path_buf())
            .collect();
        v.sort();
        v
    };
    let files = list(a);
    assert_eq!(files, list(b));
    for f in files {
        assert_eq!(
            fs::read(a.join(&f)).expect("read"),
            fs::read(b.join(&f)).expect("read"),
            "{f:?} differs"
        );
        assert_eq!(mode(&a.join(&f)), mode(&b.join(&f)), "{f:?} mode differs");
    }
}

fn updates(data: &str) -> Vec<serde_json::Value> {
    arbor_json(&["updates", "--data", data])
        .as_array()
        .expect("array")
        .clone()
}

/// Bytes stored in the pack files.
fn pack_bytes(data: &str) -> u64 {
    fs::read_dir(Path::new(data).join("packs"))
        .expect("packs dir")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .sum()
}

#[test]
fn init_creates_keys_and_refuses_existing_dirs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("root");
    let d = data.to_str().expect("utf-8");
    let out = arbor_json(&["init", "--data", d, "--root"]);
    assert!(
        out["node_id"]
            .as_str()
            .expect("node_id")
            .starts_with("12D3KooW")
    );
    assert_eq!(out["root_key"].as_str().expect("root_key").len(), 64);
    assert_eq!(mode(&data.join("node.key")), 0o600);
    assert_eq!(mode(&data.join("root.key")), 0o600);
    let key_before = fs::read(data.join("node.key")).expect("read");

    let err = arbor_err(&["init", "--data", d, "--root"]);
    assert!(err.contains("already holds files"), "{err}");
    assert_eq!(
        fs::read(data.join("node.key")).expect("read"),
        key_before,
        "init touched an existing node"
    );

    let other = tmp.path().join("other");
    fs::create_dir(&other).expect("mkdir");
    fs::write(other.join("keep.txt"), "mine").expect("write");
    let err = arbor_err(&["init", "--data", other.to_str().expect("utf-8"), "--root"]);
    assert!(err.contains("already holds files"), "{err}");
    assert_eq!(fs::read_dir(&other).expect("ls").count(), 1);
}

#[test]
fn publish_list_verify_export_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let input = sample(&tmp.path().join("v1"), 1);
    let total: u64 = (3 << 20) + 18 + 8;

    let first = arbor_json(&publish_args(&data, "1.0", &input));
    assert_eq!(first["bytes"], total);
    assert_eq!(first["new_bytes"], total);
    assert!(first["chunks"].as_u64().expect("chunks") >= 4);
    let id = update_id(&first);
    assert_eq!(id.len(), 64);

    // Idempotent: same content, same version, same id, nothing stored.
    let packs = pack_bytes(&data);
    let again = arbor_json(&publish_args(&data, "1.0", &input));
    assert_eq!(again["update_id"], first["update_id"]);
    assert_eq!(again["new_bytes"], 0);
    assert_eq!(pack_bytes(&data), packs);

    let list = updates(&data);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["update_id"], first["update_id"]);
    assert_eq!(list[0]["version"], "1.0");
    assert_eq!(list[0]["files"], 4);
    let text = arbor_ok(&["updates", "--data", &data]);
    assert!(
        text.contains("acme/plugins/viewer") && text.contains(&id[..12]),
        "{text}"
    );

    assert!(arbor_ok(&["verify", "--data", &data]).starts_with("ok:"));
    assert!(arbor_ok(&["verify", "--data", &data, &id[..8]]).starts_with("ok:"));

    let out = tmp.path().join("out");
    arbor_ok(&export_args(&data, &id, &out));
    assert_same_tree(Path::new(&input), &out);
    let err = arbor_err(&export_args(&data, &id, &out));
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn a_second_version_stores_only_changed_chunks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let v1 = sample(&tmp.path().join("v1"), 1);
    let v2 = sample(&tmp.path().join("v2"), 1);
    let engine = Path::new(&v2).join("bin/engine");
    let mut bytes = fs::read(&engine).expect("read");
    bytes[1 << 20..(1 << 20) + 100].fill(0xAA);
    fs::write(&engine, bytes).expect("write");

    arbor_json(&publish_args(&data, "1.0", &v1));
    let second = arbor_json(&publish_args(&data, "2.0", &v2));
    let new = second["new_bytes"].as_u64().expect("new_bytes");
    assert!(
        new > 0 && new <= 2 * 256 * 1024,
        "a 100-byte edit stored {new} new bytes"
    );
    assert_eq!(updates(&data).len(), 2);
    let out = tmp.path().join("out");
    let id = update_id(&second);
    arbor_ok(&export_args(&data, &id, &out));
    assert_same_tree(Path::new(&v2), &out);
}

#[test]
fn republishing_a_version_with_other_content_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let v1 = sample(&tmp.path().join("v1"), 1);
    let other = sample(&tmp.path().join("other"), 2);
    arbor_json(&publish_args(&data, "1.0", &v1));
    let packs = pack_bytes(&data);
    let err = arbor_err(&publish_args(&data, "1.0", &other));
    assert!(
        err.contains("already published with different content"),
        "{err}"
    );
    assert_eq!(pack_bytes(&data), packs, "a refused publish stored chunks");
}

#[test]
fn bad_input_is_refused_with_one_line_and_nothing_stored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let input = sample(&tmp.path().join("v1"), 1);
    let long = "x".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--tenant", "../etc"], "tenant"),
        (vec!["--tenant", "a/b"], "path separator"),
        (vec!["--category", "a\\b"], "path separator"),
        (vec!["--category", ".."], "category"),
        (vec!["--id", "bad\u{1}id"], "control character"),
        (vec!["--id", &long], "limit is 64"),
        (vec!["--id", ""], "id is empty"),
        (vec!["--version", ""], "version is empty"),
        (vec!["--version", &long], "version is 65 bytes"),
        (vec!["--description", "a\u{7}b"], "description"),
    ];
    for (overrides, expect) in cases {
        let mut args = publish_args(&data, "1.0", &input);
        for pair in overrides.chunks(2) {
            match args.iter().position(|a| *a == pair[0]) {
                Some(at) => args[at + 1] = pair[1],
                None => args.splice(1..1, [pair[0], pair[1]]).for_each(drop),
            }
        }
        let err = arbor_err(&args);
        assert!(
            err.contains(expect),
            "{overrides:?}: {err:?} lacks {expect:?}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    }

    let missing = tmp.path().join("missing");
    let err = arbor_err(&publish_args(
        &data,
        "1.0",
        missing.to_str().expect("utf-8"),
    ));
    assert!(
        err.contains("missing") && err.contains("No such file"),
        "{err}"
    );

    assert!(updates(&data).is_empty());
    assert_eq!(pack_bytes(&data), 0, "bad input stored chunks");
}

#[test]
fn symlinks_are_refused_unless_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let input = tmp.path().join("in");
    sample(&input, 1);
    std::os::unix::fs::symlink("bin/start.sh", input.join("link.sh")).expect("symlink");
    let dir = input.to_str().expect("utf-8");

    let err = arbor_err(&publish_args(&data, "1.0", dir));
    assert!(err.contains("link.sh\" is a symlink"), "{err}");
    assert!(updates(&data).is_empty());

    let mut args = publish_args(&data, "1.0", dir);
    args.push("--follow-symlinks");
    let id = update_id(&arbor_json(&args));
    let out = tmp.path().join("out");
    arbor_ok(&export_args(&data, &id, &out));
    assert_eq!(
        fs::read(out.join("link.sh")).expect("read"),
        b"#!/bin/sh\necho hi\n"
    );
    assert!(
        !fs::symlink_metadata(out.join("link.sh"))
            .expect("stat")
            .file_type()
            .is_symlink()
    );

    // A loop is refused even when following.
    std::os::unix::fs::symlink("..", input.join("bin/up")).expect("symlink");
    let mut args = publish_args(&data, "2.0", dir);
    args.push("--follow-symlinks");
    let err = arbor_err(&args);
    assert!(err.contains("symlink loop"), "{err}");
}

#[test]
fn a_single_file_is_published_under_its_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let file = tmp.path().join("tool.bin");
    fs::write(&file, noise(700_000, 5)).expect("write");
    let id = update_id(&arbor_json(&publish_args(
        &data,
        "1",
        file.to_str().expect("utf-8"),
    )));
    let out = tmp.path().join("out");
    arbor_ok(&export_args(&data, &id, &out));
    assert_eq!(
        fs::read(out.join("tool.bin")).expect("read"),
        fs::read(&file).expect("read")
    );
}

#[test]
fn verify_names_the_corrupt_chunk_and_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let input = sample(&tmp.path().join("v1"), 1);
    let id = update_id(&arbor_json(&publish_args(&data, "1.0", &input)));

    // Flip one byte in the middle of the pack: inside some chunk of bin/engine.
    let pack = Path::new(&data).join("packs/00000000.pack");
    let mut bytes = fs::read(&pack).expect("read pack");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    fs::write(&pack, bytes).expect("write pack");

    for args in [
        vec!["verify", "--data", &data],
        vec!["verify", "--data", &data, &id],
    ] {
        let out = arbor(&args);
        assert!(!out.status.success(), "verify passed a corrupt store");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let bad: Vec<_> = text.lines().filter(|l| l.starts_with("BAD")).collect();
        assert_eq!(bad.len(), 1, "{text}");
        assert!(
            bad[0].contains(&id[..12]) && bad[0].contains("file bin/engine, chunk"),
            "{text}"
        );
        assert!(bad[0].contains("do not match the chunk hash"), "{text}");
    }
    let report = arbor(&["verify", "--data", &data, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).expect("json");
    assert_eq!(json["problems"][0]["update"], id.as_str());
    assert_eq!(json["problems"][0]["file"], "bin/engine");

    let out = tmp.path().join("out");
    let err = arbor_err(&export_args(&data, &id, &out));
    assert!(err.contains("corrupt in the store"), "{err}");
}

#[test]
fn a_replaced_root_key_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let input = sample(&tmp.path().join("v1"), 1);
    arbor_json(&publish_args(&data, "1.0", &input));
    // Replace the pinned root key file and store by another root's: the stored manifest
    // no longer verifies against the node's trust anchor.
    let other = tmp.path().join("other");
    arbor_ok(&["init", "--data", other.to_str().expect("utf-8"), "--root"]);
    let theirs = fs::read(other.join("root.key")).expect("read");
    fs::remove_file(Path::new(&data).join("root.key")).expect("rm");
    fs::write(Path::new(&data).join("root.key"), theirs).expect("write");
    let err = arbor_err(&["verify", "--data", &data]);
    assert!(err.contains("does not match the root key pinned"), "{err}");
}

#[test]
fn garbage_node_files_give_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let store = Path::new(&data).join("store.redb");
    let key = Path::new(&data).join("node.key");

    let original_key = fs::read(&key).expect("read");
    fs::write(&key, "not a key").expect("write");
    let err = arbor_err(&["updates", "--data", &data]);
    assert!(err.contains("node.key is not an arbor key file"), "{err}");
    fs::write(&key, original_key).expect("write");

    fs::write(&store, noise(100_000, 3)).expect("write");
    let err = arbor_err(&["updates", "--data", &data]);
    assert!(err.contains("not an arbor store"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let err = arbor_err(&[
        "updates",
        "--data",
        tmp.path().join("nope").to_str().expect("utf-8"),
    ]);
    assert!(err.contains("not an arbor node directory"), "{err}");
}

#[test]
fn unknown_and_malformed_update_ids_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let out = tmp.path().join("out");
    for (id, expect) in [
        ("abcdef", "no update matches"),
        ("xyz!", "give at least 4 of its hex digits"),
        ("abc", "give at least 4 of its hex digits"),
    ] {
        let err = arbor_err(&["verify", "--data", &data, id]);
        assert!(err.contains(expect), "{id}: {err}");
        let err = arbor_err(&export_args(&data, id, &out));
        assert!(err.contains(expect), "{id}: {err}");
    }
    assert!(
        !out.exists(),
        "a refused export created its output directory"
    );
}

#[test]
fn fifos_non_utf8_names_and_empty_inputs_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());

    let fifo_dir = tmp.path().join("fifo");
    sample(&fifo_dir, 1);
    let status = std::process::Command::new("mkfifo")
        .arg(fifo_dir.join("pipe"))
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    let err = arbor_err(&publish_args(&data, "1", fifo_dir.to_str().expect("utf-8")));
    assert!(
        err.contains("pipe") && err.contains("not a regular file"),
        "{err}"
    );

    let odd = tmp.path().join("odd");
    sample(&odd, 1);
    fs::write(odd.join(std::ffi::OsStr::from_bytes(b"bad\xff.txt")), "x").expect("write");
    let err = arbor_err(&publish_args(&data, "1", odd.to_str().expect("utf-8")));
    assert!(err.contains("not valid UTF-8"), "{err}");

    let empty = tmp.path().join("empty");
    fs::create_dir_all(empty.join("sub/dir")).expect("mkdir");
    let err = arbor_err(&publish_args(&data, "1", empty.to_str().expect("utf-8")));
    assert!(err.contains("nothing to publish"), "{err}");

    assert!(updates(&data).is_empty());
    assert_eq!(pack_bytes(&data), 0);
}

#[test]
fn a_damaged_pack_is_reported_and_blocks_publishing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let v1 = sample(&tmp.path().join("v1"), 1);
    arbor_json(&publish_args(&data, "1.0", &v1));
    let pack = Path::new(&data).join("packs/00000000.pack");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .expect("open");
    f.set_len(2_000_000).expect("truncate");
    drop(f);

    let v2 = sample(&tmp.path().join("v2"), 2);
    let err = arbor_err(&publish_args(&data, "2.0", &v2));
    assert!(
        err.contains("store is damaged") && err.contains("shorter than"),
        "{err}"
    );
    assert_eq!(
        fs::metadata(&pack).expect("stat").len(),
        2_000_000,
        "publish wrote into a damaged pack"
    );
    let verify = arbor(&["verify", "--data", &data]);
    assert!(!verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("BAD"));

    fs::remove_file(&pack).expect("rm");
    let err = arbor_err(&publish_args(&data, "2.0", &v2));
    assert!(err.contains("missing"), "{err}");
    assert!(!pack.exists(), "publish recreated a missing pack");
}

#[test]
fn demo_runs_a_seven_node_tree_end_to_end() {
    let out = arbor_ok(&["demo"]);
    for step in [
        "1. started a tree of 7 nodes",
        "every node holds 1.0.0",
        "every node holds 1.1.0",
        "branch-2  -> leaf-2b   32.00 MiB",
        "all byte-identical",
    ] {
        assert!(out.contains(step), "{out}");
    }
    // The second version sent only its changed chunks over each link.
    let v2 = out.split("every node holds 1.1.0").nth(1).expect("step 3");
    assert!(!v2.contains("32.00 MiB"), "{out}");
}

#[test]
fn a_module_package_round_trips_between_roots_and_garbage_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = sample(&tmp.path().join("input"), 21);
    let first = root_node(&tmp.path().join("a"));
    let id = update_id(&arbor_json(&publish_args(&first, "1.0", &input)));
    let package = tmp.path().join("viewer-1.0.xml");
    let package_str = package.to_str().expect("utf-8");
    arbor_ok(&[
        "package",
        "export",
        "--data",
        &first,
        &id,
        "--out",
        package_str,
    ]);
    let err = arbor_err(&[
        "package",
        "export",
        "--data",
        &first,
        &id,
        "--out",
        package_str,
    ]);
    assert!(err.contains("must not exist"), "{err}");

    // Imported on a second root, it is the same module: same files, same package.
    let second = root_node(&tmp.path().join("b"));
    let imported = update_id(&arbor_json(&[
        "publish",
        "--data",
        &second,
        "--from-xml",
        package_str,
    ]));
    let (out_a, out_b) = (tmp.path().join("out-a"), tmp.path().join("out-b"));
    arbor_ok(&export_args(&first, &id, &out_a));
    arbor_ok(&export_args(&second, &imported, &out_b));
    assert_same_tree(&out_a, &out_b);
    assert_same_tree(Path::new(&input), &out_b);
    let again = tmp.path().join("again.xml");
    arbor_ok(&[
        "package",
        "export",
        "--data",
        &second,
        &imported,
        "--out",
        again.to_str().expect("utf-8"),
    ]);
    assert!(
        fs::read(&package).expect("read") == fs::read(&again).expect("read"),
        "the package changed in a round trip"
    );
    assert!(
        fs::read_dir(&second).expect("node dir").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .starts_with(".import-")),
        "the import left its temporary directory behind"
    );

    // Garbage and hostile packages: one clear line, nothing stored.
    let before = updates(&second);
    for (content, expect) in [
        ("<arbor-package format=\"1\"><module", "cannot import"),
        (
            "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><arbor-package format=\"1\">&a;</arbor-package>",
            "DOCTYPE is not allowed",
        ),
        ("\u{0}\u{1}\u{2}binary", "refused"),
    ] {
        let bad = tmp.path().join("bad.xml");
        fs::write(&bad, content).expect("write");
        let err = arbor_err(&[
            "publish",
            "--data",
            &second,
            "--from-xml",
            bad.to_str().expect("utf-8"),
        ]);
        assert!(err.contains(expect), "{content:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let err = arbor_err(&[
        "publish",
        "--data",
        &second,
        "--from-xml",
        "/nonexistent.xml",
    ]);
    assert!(err.contains("cannot open"), "{err}");
    let err = arbor_err(&[
        "publish",
        "--data",
        &second,
        "--from-xml",
        package_str,
        "--version",
        "2",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    assert_eq!(
        updates(&second),
        before,
        "a refused package stored something"
    );
}

#[test]
fn unparsable_rates_and_windows_are_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = root_node(tmp.path());
    let run = |flag: &str, value: &str| {
        arbor_err(&[
            "run",
            "--data",
            &data,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            flag,
            value,
        ])
    };
    for (flag, value, expect) in [
        ("--max-download", "fast", "is not a rate"),
        ("--max-download", "5 parsecs", "is not a rate"),
        ("--max-upload", "0MiB/s", "is zero"),
        ("--wan-window", "19:00", "is not a time window"),
        ("--wan-window", "19:00-24:30", "hours run 00 to 23"),
        ("--max-local-download", "lots", "is not a rate"),
        ("--max-local-upload", "1.5.2Mbit", "is not a rate"),
        ("--site", "berlin office", "a space"),
        ("--site", "../hq", "path separator"),
        ("--site", "", "site"),
        ("--withdrawn", "maybe", "is neither keep nor remove"),
    ] {
        let err = run(flag, value);
        assert!(err.contains(expect), "{flag} {value}: {err}");
    }
    assert!(
        !Path::new(&data).join("admin.addr").exists(),
        "the node started"
    );
}
