use super::*;
use crate::publish::publish;

/// A root node in `dir` with one published update of a few files; returns it and the id.
fn published(dir: &Path) -> (Node, Hash, PathBuf) {
    let input = dir.join("input");
    fs::create_dir_all(input.join("bin")).expect("mkdir");
    let mut big = Vec::new();
    let mut x = 7u64;
    while big.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(input.join("bin/viewer"), &big).expect("write");
    fs::set_permissions(input.join("bin/viewer"), fs::Permissions::from_mode(0o755))
        .expect("chmod");
    fs::write(input.join("empty"), b"").expect("write");
    fs::write(input.join("notes <&> \"x\".txt"), b"odd name\n").expect("write");
    let node = Node::init_root(&dir.join("root")).expect("root");
    let req = PublishRequest {
        tenant: "acme".into(),
        category: "plugins".into(),
        id: "viewer".into(),
        version: "1.0 <beta> & \"co\"".into(),
        description: Some("line one\n\ttab & <markup>".into()),
        path: input.clone(),
        follow_symlinks: false,
        post_install: Some(vec![
            "./bin/viewer".into(),
            "--configure".into(),
            "<&>".into(),
        ]),
        created: None,
    };
    let out = publish(&node, &req, 1_767_225_600, &|_| {}).expect("publish");
    (node, out.update_id, input)
}

fn export_bytes(node: &Node, id: &Hash) -> Vec<u8> {
    let mut out = Vec::new();
    export(node, id, &mut out, 1_767_225_600).expect("export");
    out
}

#[test]
fn a_round_trip_is_byte_exact() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (node, id, input) = published(tmp.path());
    let xml = export_bytes(&node, &id);

    // Unpacked on another root and published there, it is the same module.
    let unpacked = tmp.path().join("unpacked");
    fs::create_dir(&unpacked).expect("mkdir");
    let req = unpack(xml.as_slice(), &unpacked, Limits::default()).expect("unpack");
    for rel in ["bin/viewer", "empty", "notes <&> \"x\".txt"] {
        assert_eq!(
            fs::read(input.join(rel)).expect("in"),
            fs::read(unpacked.join(rel)).expect("out"),
            "{rel}"
        );
    }
    let mode = fs::metadata(unpacked.join("bin/viewer"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(req.created, Some(1_767_225_600));
    assert_eq!(req.version, "1.0 <beta> & \"co\"");
    assert_eq!(
        req.description.as_deref(),
        Some("line one\n\ttab & <markup>")
    );
    let other = Node::init_root(&tmp.path().join("other")).expect("root");
    let out = publish(&other, &req, req.created.expect("created"), &|_| {}).expect("publish");
    // ... whose package is the same document, byte for byte.
    assert_eq!(export_bytes(&other, &out.update_id), xml);

    // On the same root it is the same update: nothing new.
    let again = tmp.path().join("again");
    fs::create_dir(&again).expect("mkdir");
    let req = unpack(xml.as_slice(), &again, Limits::default()).expect("unpack");
    let out = publish(&node, &req, req.created.expect("created"), &|_| {}).expect("publish");
    assert!(out.already_published);
    assert_eq!(out.update_id, id);
}

/// A minimal valid package around `files` (raw `<file>` elements) and `head` (raw
/// elements after `<module/>`).
fn doc(head: &str, files: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<arbor-package format=\"1\">\n<module tenant=\"acme\" category=\"plugins\" id=\"viewer\" version=\"1\" created=\"5\"/>\n{head}{files}</arbor-package>\n"
    )
}

/// A `<file>` element holding `content`, gzipped and base64-encoded, declaring
/// `size` and `blake3` as given (`None`: the true values).
fn file_el(path: &str, content: &[u8], size: Option<u64>, sum: Option<String>) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(content).expect("gzip");
    let data = BASE64.encode(gz.finish().expect("gzip"));
    format!(
        "<file path=\"{}\" mode=\"644\" size=\"{}\" blake3=\"{}\"><data>{data}</data></file>\n",
        esc(path),
        size.unwrap_or(content.len() as u64),
        sum.unwrap_or_else(|| Hash::of(content).to_hex())
    )
}

fn gzip(content: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(content).expect("gzip");
    gz.finish().expect("gzip")
}

/// A `<file>` for `content` whose data holds its gzip stream, then `after`.
fn gzip_then(content: &[u8], after: &[u8]) -> String {
    let mut data = gzip(content);
    data.extend_from_slice(after);
    format!(
        "<file path=\"x\" mode=\"644\" size=\"{}\" blake3=\"{}\"><data>{}</data></file>\n",
        content.len(),
        Hash::of(content).to_hex(),
        BASE64.encode(data)
    )
}

fn refused(xml: &str, limits: Limits) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack(xml.as_bytes(), tmp.path(), limits)
        .expect_err("a bad package was accepted")
        .to_string()
}

#[test]
fn a_valid_minimal_package_unpacks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let xml = doc("", &file_el("a/b.txt", b"hello", None, None));
    let req = unpack(xml.as_bytes(), tmp.path(), Limits::default()).expect("valid");
    assert_eq!(
        fs::read(tmp.path().join("a/b.txt")).expect("read"),
        b"hello"
    );
    assert_eq!((req.id.as_str(), req.created), ("viewer", Some(5)));
}

#[test]
fn hostile_and_malformed_packages_are_refused_with_the_reason() {
    let ok = file_el("x", b"data", None, None);
    let bomb = {
        // 64 MiB of zeros in a few KiB, declared as 10 bytes.
        let zeros = vec![0u8; 64 << 20];
        file_el("bomb", &zeros, Some(10), Some(Hash::of(b"").to_hex()))
    };
    let laughs = "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>\n<arbor-package format=\"1\"><description>&lol2;</description></arbor-package>";
    let external = "<?xml version=\"1.0\"?>\n<!DOCTYPE p [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n<arbor-package format=\"1\">&x;</arbor-package>";
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "empty"),
        ("not xml at all".into(), "unexpected text"),
        ("<html/>".into(), "not an <arbor-package>"),
        (
            "<arbor-package format=\"1\"><module".into(),
            "at byte 33: syntax error: tag not closed",
        ),
        (
            doc("<description>x</descr>\n", &ok),
            "expected `</description>`, but `</descr>` was found",
        ),
        (
            doc("", &ok).replace("id=\"viewer\"", "id=\"viewer\" id=\"x\""),
            "duplicated attribute",
        ),
        (laughs.into(), "DOCTYPE is not allowed"),
        (external.into(), "DOCTYPE is not allowed"),
        (
            doc("<description>&custom;</description>\n", &ok),
            "unknown entity &custom;",
        ),
        (
            doc("<description>&#0;</description>\n", &ok),
            "bad reference",
        ),
        (doc("<?php evil() ?>\n", &ok), "processing instructions"),
        (
            doc("<description><![CDATA[x]]></description>\n", &ok),
            "CDATA",
        ),
        (doc("<script/>\n", &ok), "unknown element <script>"),
        (
            doc(
                "",
                "<file path=\"x\" mode=\"644\" size=\"4\" blake3=\"00\" owner=\"root\"></file>",
            ),
            "unknown attribute \"owner\"",
        ),
        (
            doc("", "<file path=\"x\" mode=\"644\" size=\"4\"></file>"),
            "lacks the attribute \"blake3\"",
        ),
        (doc("", ""), "holds no files"),
        (doc("", &file_el("../escape", b"x", None, None)), "'..'"),
        (
            doc("", &file_el("/etc/passwd", b"x", None, None)),
            "absolute",
        ),
        (
            doc("", &file_el("a//b", b"x", None, None)),
            "empty path component",
        ),
        (doc("", &file_el("a\\b", b"x", None, None)), "backslash"),
        (doc("", &format!("{ok}{ok}")), "appears twice"),
        (
            doc(
                "",
                &format!(
                    "{}{}",
                    file_el("a", b"x", None, None),
                    file_el("a/b", b"y", None, None)
                ),
            ),
            "both a file and a directory",
        ),
        (
            doc(
                "",
                &format!(
                    "{}{}",
                    file_el("a/b", b"x", None, None),
                    file_el("a", b"y", None, None)
                ),
            ),
            "both a file and a directory",
        ),
        (
            doc("", &file_el("x", b"data", Some(3), None)),
            "longer than its declared size",
        ),
        (
            doc("", &file_el("x", b"data", Some(9), None)),
            "not the 9 it declares",
        ),
        (
            doc(
                "",
                &file_el("x", b"data", None, Some(Hash::of(b"other").to_hex())),
            ),
            "does not match its blake3",
        ),
        (
            doc(
                "",
                "<file path=\"x\" mode=\"644\" size=\"4\" blake3=\"0000000000000000000000000000000000000000000000000000000000000000\"><data>!!!</data></file>",
            ),
            "bad base64",
        ),
        (
            doc(
                "",
                "<file path=\"x\" mode=\"4755\" size=\"4\" blake3=\"0000000000000000000000000000000000000000000000000000000000000000\"></file>",
            ),
            "not octal 0 to 777",
        ),
        (doc("", &bomb), "longer than its declared size"),
        (
            doc("<post-install><arg>a\u{1}b</arg></post-install>\n", &ok),
            "control character",
        ),
        (
            doc("", &ok).replace("tenant=\"acme\"", "tenant=\"../etc\""),
            "tenant",
        ),
        (
            doc("", &ok).replace("format=\"1\"", "format=\"2\""),
            "format \"2\"",
        ),
        (
            doc("", &ok).replace("created=\"5\"", "created=\"yesterday\""),
            "not Unix seconds",
        ),
        (
            format!("{}<extra/>", doc("", &ok)),
            "follows </arbor-package>",
        ),
        (
            doc("", &ok).replace("</arbor-package>\n", ""),
            "ends before </arbor-package>",
        ),
        (
            doc("", &ok).replace("<module ", "<p:module "),
            "<module .../> must come first",
        ),
        (
            doc("", &ok).replace("<arbor-package ", "<arbor-package xmlns=\"x\" "),
            "unknown attribute \"xmlns\"",
        ),
        (
            doc(
                "",
                &format!(
                    "<file path=\"x\" mode=\"644\" size=\"0\" blake3=\"{}\"></file>",
                    Hash::of(b"").to_hex()
                ),
            ),
            "file \"x\" holds no <data>",
        ),
        (
            doc("", &gzip_then(b"data", b"trailing junk")),
            "data follows the end of its gzip stream",
        ),
        (
            doc("", &gzip_then(b"da", &gzip(b"ta"))),
            "data follows the end of its gzip stream",
        ),
        (doc("stray text\n", &ok), "unexpected text"),
    ];
    for (xml, expect) in cases {
        let err = refused(&xml, Limits::default());
        assert!(
            err.contains(expect),
            "{:?}...: {err} lacks {expect:?}",
            xml.chars().take(120).collect::<String>()
        );
    }
}

#[test]
fn oversized_documents_elements_and_contents_are_refused() {
    let ok = file_el("x", b"data", None, None);
    let small = Limits {
        max_document: 300,
        ..Limits::default()
    };
    let padded = doc(&"<!-- padding -->\n".repeat(40), &ok);
    let err = refused(&padded, small);
    assert!(err.contains("over its limit of 300 bytes"), "{err}");

    let tight = Limits {
        max_unpacked: 3,
        ..Limits::default()
    };
    let err = refused(&doc("", &ok), tight);
    assert!(err.contains("more than the limit of 3 bytes"), "{err}");

    // One text node or attribute larger than any element may be: refused before it is
    // buffered.
    let huge = format!("<description>{}</description>\n", "a".repeat(3 << 20));
    let err = refused(&doc(&huge, &ok), Limits::default());
    assert!(
        err.contains("an element or text is over 2097152 bytes"),
        "{err}"
    );
    let huge = file_el(&"a".repeat(3 << 20), b"data", None, None);
    let err = refused(&doc("", &huge), Limits::default());
    assert!(
        err.contains("an element or text is over 2097152 bytes"),
        "{err}"
    );

    let few = Limits {
        max_files: 2,
        ..Limits::default()
    };
    let three: String = ["a", "b", "c"]
        .iter()
        .map(|p| file_el(p, b"x", None, None))
        .collect();
    let err = refused(&doc("", &three), few);
    assert!(err.contains("more than 2 files"), "{err}");
}

/// protocol/vectors/package-v1.xml is what this code writes for a small module; a
/// second implementation that writes the same bytes and reads them back interoperates.
/// `ARBOR_WRITE_VECTORS=1` rewrites it after a deliberate format change.
#[test]
fn the_package_vector_matches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("input");
    fs::create_dir_all(input.join("bin")).expect("mkdir");
    fs::write(input.join("bin/start.sh"), b"#!/bin/sh\necho started\n").expect("write");
    fs::set_permissions(
        input.join("bin/start.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    fs::write(input.join("readme.txt"), b"hello, arbor\n").expect("write");
    let node = Node::init_root(&tmp.path().join("root")).expect("root");
    let req = PublishRequest {
        tenant: "acme".into(),
        category: "plugins".into(),
        id: "report-viewer".into(),
        version: "1.0.0".into(),
        description: Some("test vector".into()),
        path: input,
        follow_symlinks: false,
        post_install: Some(vec!["bin/start.sh".into(), "--configure".into()]),
        created: None,
    };
    let out = publish(&node, &req, 1_767_225_600, &|_| {}).expect("publish");
    let xml = export_bytes(&node, &out.update_id);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/vectors/package-v1.xml");
    if std::env::var_os("ARBOR_WRITE_VECTORS").is_some() {
        fs::write(&file, &xml).expect("write the vector");
    }
    let want = fs::read(&file).expect("protocol/vectors/package-v1.xml");
    assert!(
        want == xml,
        "the package format changed; see PROTOCOL.md §16"
    );
    let back = tmp.path().join("back");
    fs::create_dir(&back).expect("mkdir");
    let req = unpack(want.as_slice(), &back, Limits::default()).expect("the vector unpacks");
    assert_eq!(req.post_install.as_deref().map(<[String]>::len), Some(2));
    assert_eq!(
        fs::read(back.join("readme.txt")).expect("read"),
        b"hello, arbor\n"
    );
}

/// Names that look like links, devices or markup are only names: each is unpacked as a
/// regular file at exactly that path, inside the directory.
#[test]
fn names_that_look_like_links_are_plain_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let names = [
        "lib/libx.so -> /etc/passwd",
        "link@",
        "dev/null",
        "etc/passwd",
        "..hidden/x..",
        "a b/<c>&'d'",
    ];
    let files: String = names
        .iter()
        .map(|p| file_el(p, p.as_bytes(), None, None))
        .collect();
    unpack(doc("", &files).as_bytes(), tmp.path(), Limits::default()).expect("valid");
    for name in names {
        let path = tmp.path().join(name);
        let meta = fs::symlink_metadata(&path).expect("unpacked");
        assert!(meta.is_file(), "{name} is not a regular file");
        assert_eq!(fs::read(&path).expect("read"), name.as_bytes());
    }
    let count = walkdir::WalkDir::new(tmp.path())
        .into_iter()
        .filter(|e| e.as_ref().expect("walk").file_type().is_file())
        .count();
    assert_eq!(count, names.len(), "something was written elsewhere");
}

/// `import` publishes a valid package once (again: nothing new), refuses an invalid one
/// without storing anything, and leaves no temporary directory behind either way.
#[test]
fn import_publishes_whole_packages_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (node, id, _) = published(tmp.path());
    let xml = export_bytes(&node, &id);
    let other = Node::init_root(&tmp.path().join("other")).expect("root");
    let leftovers = |node: &Node| {
        fs::read_dir(&node.dir)
            .expect("node dir")
            .filter(|e| {
                e.as_ref()
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".import-")
            })
            .count()
    };

    let first = import(&other, xml.as_slice(), Limits::default(), &|_| {}).expect("import");
    assert!(!first.already_published);
    assert_eq!(export_bytes(&other, &first.update_id), xml);
    let again = import(&other, xml.as_slice(), Limits::default(), &|_| {}).expect("again");
    assert!(again.already_published);
    assert_eq!(again.update_id, first.update_id);
    // Where it was exported from, it is the update it came from.
    let home = import(&node, xml.as_slice(), Limits::default(), &|_| {}).expect("home");
    assert_eq!((home.update_id, home.already_published), (id, true));

    // The last file is bad: nothing at all is published, not even the good files.
    let fresh = Node::init_root(&tmp.path().join("fresh")).expect("root");
    let bad = doc(
        "",
        &format!(
            "{}{}",
            file_el("good", b"fine", None, None),
            file_el("bad", b"data", None, Some(Hash::of(b"other").to_hex()))
        ),
    );
    let err = import(&fresh, bad.as_bytes(), Limits::default(), &|_| {})
        .expect_err("a bad package was published")
        .to_string();
    assert!(err.contains("does not match its blake3"), "{err}");
    assert!(fresh.store.manifests().expect("list").is_empty());
    assert_eq!(leftovers(&fresh), 0);
    assert_eq!(leftovers(&other), 0);
    assert_eq!(leftovers(&node), 0);
}
