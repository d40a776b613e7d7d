#!/usr/bin/env python3
"""Builds the fuzz targets' seed corpora and dictionaries from the repository's own
files, so that no binary blob is kept in git.

    python3 fuzz/seeds.py OUT

writes OUT/seeds/TARGET/* (one directory per target in fuzz/fuzz_targets) and
OUT/dict/{cbor,xml,toml}.dict (libFuzzer dictionaries). Sources: the hex fields of
protocol/vectors/*.json (envelopes, bodies, tree messages, framed as the streams carry
them), protocol/vectors/package-v1.xml, simulations/*.toml and the TOML examples of
README.md. Standard library only.
"""

import json
import pathlib
import re
import shutil
import struct
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
VECTORS = REPO / "protocol" / "vectors"


def vector(name):
    return json.loads((VECTORS / f"{name}-v1.json").read_text())


def cbor_head(major, n):
    """The head of a CBOR item: major type and argument, shortest form."""
    if n < 24:
        return bytes([major << 5 | n])
    for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | extra]) + struct.pack(fmt, n)
    raise ValueError(n)


class Raw(bytes):
    """An item already encoded as CBOR."""


def cbor(value):
    """Canonical CBOR of text, bytes, unsigned ints, lists and maps with text keys
    (keys sorted by their encodings, as PROTOCOL.md §2 orders them)."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return cbor_head(0, value)
    if isinstance(value, bytes):
        return cbor_head(2, len(value)) + value
    if isinstance(value, str):
        data = value.encode()
        return cbor_head(3, len(data)) + data
    if isinstance(value, list):
        return cbor_head(4, len(value)) + b"".join(cbor(v) for v in value)
    if isinstance(value, dict):
        items = sorted((cbor(k), cbor(v)) for k, v in value.items())
        return cbor_head(5, len(items)) + b"".join(k + v for k, v in items)
    raise TypeError(value)


def frame(message):
    """One frame of a stream: big-endian u32 length, then the message."""
    return struct.pack(">I", len(message)) + message


def main(out):
    out = pathlib.Path(out)
    seeds = out / "seeds"
    if seeds.exists():
        shutil.rmtree(seeds)
    corpora = {}

    def add(target, name, data):
        if isinstance(data, str):
            data = data.encode()
        corpora.setdefault(target, {})[name] = data

    manifest, rules, report, tree = (vector(n) for n in ("manifest", "rules", "report", "tree"))
    h = bytes.fromhex

    envelopes = {
        "manifest": h(manifest["envelope_cbor"]),
        "rules": h(rules["envelope_cbor"]),
        "report": h(report["envelope_cbor"]),
        "leaf-report": h(report["leaf_envelope_cbor"]),
    }
    for name, data in envelopes.items():
        add("envelope", name, data)
    add("envelope", "manifest-signed-bytes", h(manifest["signed_bytes_cbor"]))

    add("manifest", "envelope", envelopes["manifest"])
    add("manifest", "body", h(manifest["manifest_cbor"]))
    add("manifest", "hook-body", h(manifest["hook_manifest_cbor"]))

    add("rules", "envelope", envelopes["rules"])
    add("rules", "body", h(rules["rules_cbor"]))

    add("report", "envelope", envelopes["report"])
    add("report", "leaf-envelope", envelopes["leaf-report"])
    add("report", "body", h(report["report_cbor"]))

    add("join_token", "token", tree["join_token_text"])
    add("join_token", "site-token", tree["site_join_token_text"])

    chain = h(tree["chain_cbor"])
    add("chain", "chain", chain)
    add("chain", "membership", h(tree["membership_cbor"]))
    add("chain", "site-membership", h(tree["site_membership_cbor"]))

    # The control stream: every kind of frame, one per seed, and all in one stream.
    control = {
        "hello": h(tree["hello_cbor"]),
        "site-hello": h(tree["site_hello_cbor"]),
        "welcome": cbor({"Welcome": {"chain": Raw(chain)}}),
        "refused": cbor({"Refused": {"reason": "not a child of this node"}}),
        "offer": cbor({"Offer": {"manifest": envelopes["manifest"]}}),
        "have": h(tree["have_cbor"]),
        "rules": cbor({"Rules": {"sets": [envelopes["rules"]]}}),
        "report": cbor({"Report": {"report": envelopes["report"]}}),
        "siblings": h(tree["siblings_cbor"]),
    }
    for name, message in control.items():
        add("control_frame", name, frame(message))
    add("control_frame", "stream", b"".join(frame(m) for m in control.values()))
    sibling = ("site-hello", "welcome", "refused", "have")
    for name in sibling:
        add("sibling_frame", name, frame(control[name]))
    add("sibling_frame", "stream", b"".join(frame(control[n]) for n in sibling))

    for name in ("join_request", "join_accepted", "join_refused"):
        add("join_frame", name, frame(h(tree[f"{name}_cbor"])))

    # Chunk streams: requests as the server reads them, answers as the requester does
    # (for the four chunks the target expects: a delta, then whole, missing, elsewhere).
    for name in ("chunk_request", "delta_chunk_request", "direct_chunk_request"):
        add("chunk_frame", name, frame(h(tree[f"{name}_cbor"])))
    delta_answer, elsewhere = h(tree["delta_answer"]), h(tree["elsewhere_answer"])
    missing = bytes([1, 0, 0, 0, 0])
    refused = bytes([2]) + struct.pack(">I", 7) + b"refused"
    add("chunk_frame", "delta-answer", delta_answer)
    add("chunk_frame", "answers", delta_answer + missing + missing + elsewhere)
    add("chunk_frame", "refused", missing + refused)

    # A delta seed: the chunk's length (103), then the vector's payload (past the
    # answer's five-byte header).
    add("delta", "vector", struct.pack(">I", 103) + delta_answer[5:])
    add("delta", "literal", struct.pack(">I", 5) + bytes([0]) + struct.pack(">I", 5) + b"hello")

    add("package_xml", "package", (VECTORS / "package-v1.xml").read_bytes())

    for path in sorted((REPO / "simulations").glob("*.toml")):
        add("scenario", path.stem, path.read_bytes())
    readme = (REPO / "README.md").read_text()
    for i, block in enumerate(re.findall(r"```toml\n(.*?)```", readme, re.S)):
        add("config", f"readme-{i}", block)
    config_doc = (REPO / "src" / "cli" / "config.rs").read_text()
    example = re.search(r"//! ```toml\n(.*?)//! ```", config_doc, re.S)
    if example:
        add("config", "module-doc", re.sub(r"(?m)^//! ?", "", example.group(1)))

    targets = sorted(p.stem for p in (REPO / "fuzz" / "fuzz_targets").glob("*.rs"))
    missing_seeds = [t for t in targets if t not in corpora]
    if missing_seeds:
        sys.exit(f"no seeds for {', '.join(missing_seeds)}")
    for target, files in corpora.items():
        d = seeds / target
        d.mkdir(parents=True)
        for name, data in files.items():
            (d / name).write_bytes(data)

    write_dicts(out / "dict", [manifest, rules, report, tree], readme)
    print(f"seeds: {sum(len(f) for f in corpora.values())} files for {len(corpora)} targets in {seeds}")


def dict_entry(data):
    """One libFuzzer dictionary line: the bytes as a quoted string with \\xNN escapes."""
    body = "".join(
        chr(b) if 0x20 <= b < 0x7F and chr(b) not in '"\\' else f"\\x{b:02x}" for b in data
    )
    return f'"{body}"'


def json_keys(value, keys):
    if isinstance(value, dict):
        for k, v in value.items():
            keys.add(k)
            json_keys(v, keys)
    elif isinstance(value, list):
        for v in value:
            json_keys(v, keys)


def write_dicts(out, vectors, readme):
    out.mkdir(parents=True, exist_ok=True)
    # CBOR: the map keys and enum variants of every wire object (most appear as keys of
    # the vectors' JSON), the tags, the states, and the heads of fixed-size values.
    keys = set()
    for v in vectors:
        json_keys(v, keys)
    keys = {k for k in keys if not k.endswith(("_cbor", "_text", "_key", "_seed", "_answer"))}
    keys |= {
        "seq", "sig", "tag", "body", "signer", "expires", "post_install", "halted",
        "Hello", "Welcome", "Refused", "Offer", "Have", "Rules", "Report", "Siblings",
        "Accepted", "chain", "addrs", "site", "ranges", "sets", "peers", "base", "count",
        "first", "direct", "secret", "addr", "root", "parent", "client", "issuer",
        "available", "downloading", "downloaded", "installed", "failed", "all",
        "arbor/manifest/v1", "arbor/member/v1", "arbor/rules/v1", "arbor/report/v1",
        "/ip4/127.0.0.1/tcp/4040", "/ip6/::1/tcp/4040",
    }
    keys.discard("about")
    lines = [dict_entry(cbor(k)) for k in sorted(keys)]
    lines += [dict_entry(b) for b in (b"\x58\x20", b"\x58\x40", b"\xf6", b"\xf5", b"\xf4",
                                      b"\x1a\x69\x55\xb9\x00", b"\x19\x27\x10", b"\x00\x00\x00")]
    (out / "cbor.dict").write_text("\n".join(lines) + "\n")

    # XML: the package format's elements and attributes, and markup a reader must refuse.
    xml = (VECTORS / "package-v1.xml").read_text()
    names = set(re.findall(r"</?([a-z][a-z0-9-]*)", xml)) | set(re.findall(r" ([a-z0-9]+)=", xml))
    tokens = sorted(names) + [f"<{n}>" for n in sorted(names)] + [f"</{n}>" for n in sorted(names)]
    tokens += ['<?xml version="1.0"?>', "<!DOCTYPE", "<!ENTITY", "<![CDATA[", "]]>", "<!--",
               "-->", "&amp;", "&lt;", "&#x41;", "&#65;", "/>", '="', "H4sI"]
    (out / "xml.dict").write_text("\n".join(dict_entry(t.encode()) for t in tokens) + "\n")

    # TOML: the keys of the scenario files and of config.toml, and TOML's own syntax.
    toml_keys = set()
    for path in (REPO / "simulations").glob("*.toml"):
        toml_keys |= set(re.findall(r"(?m)^\s*([a-z_]+)\s*=", path.read_text()))
        toml_keys |= set(re.findall(r"(?m)^\s*\[\[?([a-z_.]+)\]\]?", path.read_text()))
    toml_keys |= set(re.findall(r"(?m)^\s*([a-z_]+)\s*=", readme))
    tokens = sorted(toml_keys) + [f"[[{k}]]" for k in ("tier", "group", "update", "approval", "churn")]
    tokens += ["[engine]", "[root]", "= true", "= false", '= "', "= [", "'''", '"""', "Mbit",
               "Gbit", "MiB", "GiB", "ms", "s", "m", "h", "%", "19:00-07:00", "127.0.0.1:4041"]
    (out / "toml.dict").write_text("\n".join(dict_entry(t.encode()) for t in tokens) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
