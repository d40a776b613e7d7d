//! Checks the report test vectors in protocol/vectors/report-v1.json (PROTOCOL.md §15)
//! against the implementation.
//!
//! After a deliberate wire change, regenerate them with
//! `ARBOR_WRITE_VECTORS=1 cargo test --test report_vectors` and update PROTOCOL.md to match.

mod common;

use arbor::content::Hash;
use arbor::report::{
    NodeDetail, Received, Report, Rollup, RuleRefusal, SignedReport, State, TAG_REPORT, UpdateState,
};
use arbor::rules::RulesError;
use arbor::trust::{Envelope, PublicKey, SecretKey};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const VECTORS: &str = "protocol/vectors/report-v1.json";
/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;
const MIB: u64 = 1024 * 1024;

fn seed_key(first: u8) -> SecretKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = first.wrapping_add(i as u8);
    }
    SecretKey::from_seed(seed)
}

struct Keys {
    root: SecretKey,
    root_node: SecretKey,
    child: SecretKey,
    grandchild: SecretKey,
}

fn keys() -> Keys {
    Keys {
        root: seed_key(0x00),
        root_node: seed_key(0x20),
        child: seed_key(0x40),
        grandchild: seed_key(0x60),
    }
}

fn update_a() -> Hash {
    Hash::of(b"update-a")
}

fn update_b() -> Hash {
    Hash::of(b"update-b")
}

/// The grandchild (seed 60..7f, a leaf under the child, in the child's group `lab`)
/// installed update A and failed update B; its report, version 2.
fn leaf_report(k: &Keys) -> SignedReport {
    let me = NodeDetail {
        node: k.grandchild.public(),
        depth: 2,
        issued: T0 + 50,
        parent: Some(k.child.public()),
        updates: vec![
            UpdateState {
                from_parent: 8 * MIB,
                from_siblings: 24 * MIB,
                ..UpdateState::new(update_a(), State::Installed, 32 * MIB, 32 * MIB)
            },
            UpdateState::failed(update_b(), "disk full", 3 * MIB, 4 * MIB),
        ],
    };
    SignedReport::sign(&k.grandchild, 2, Report::leaf(me, &[])).expect("leaf signs")
}

/// The child (seed 40..5f, under the root node) has update A and is fetching B; it
/// refused an older rule set of the root node. Its roll-up report, version 7.
fn child_report(k: &Keys) -> (Rollup, Report) {
    let mut rollup = Rollup::new();
    let leaf = leaf_report(k);
    assert_eq!(
        rollup.receive(&k.grandchild.public(), &leaf.bytes),
        Ok(Received::Applied)
    );
    let me = NodeDetail {
        node: k.child.public(),
        depth: 1,
        issued: T0 + 60,
        parent: Some(k.root_node.public()),
        updates: vec![
            UpdateState {
                from_parent: 32 * MIB,
                ..UpdateState::new(update_a(), State::Downloaded, 32 * MIB, 32 * MIB)
            },
            UpdateState {
                from_parent: MIB,
                from_siblings: MIB,
                ..UpdateState::new(update_b(), State::Downloading, 2 * MIB, 4 * MIB)
            },
        ],
    };
    let groups = BTreeMap::from([("lab".to_string(), BTreeSet::from([k.grandchild.public()]))]);
    let refused = RulesError::Rollback {
        issuer: k.root_node.public(),
        held: 3,
        got: 2,
    };
    let refusal = RuleRefusal::new(
        k.child.public(),
        Some(k.root_node.public()),
        &refused.to_string(),
        T0 + 40,
    );
    let report = rollup.report(me, &groups, &[refusal]);
    (rollup, report)
}

/// The root node's (seed 20..3f) roll-up once the child reported: it has update A.
fn root_report(k: &Keys, child: &SignedReport) -> Report {
    let mut rollup = Rollup::new();
    assert_eq!(
        rollup.receive(&k.child.public(), &child.bytes),
        Ok(Received::Applied)
    );
    assert_eq!(
        rollup.receive(&k.child.public(), &child.bytes),
        Ok(Received::Duplicate)
    );
    let me = NodeDetail {
        node: k.root_node.public(),
        depth: 0,
        issued: T0 + 70,
        parent: None,
        updates: vec![UpdateState::new(
            update_a(),
            State::Downloaded,
            32 * MIB,
            32 * MIB,
        )],
    };
    rollup.report(me, &BTreeMap::new(), &[])
}

fn expected() -> Value {
    let k = keys();
    let leaf = leaf_report(&k);
    let (_, report) = child_report(&k);
    let signed = SignedReport::sign(&k.child, 7, report.clone()).expect("vector signs");
    let envelope: Envelope =
        cbor4ii::serde::from_slice(&signed.bytes).expect("own encoding decodes");
    let root = root_report(&k, &signed);
    let root_json = serde_json::to_value(&root).expect("json");
    json!({
        "about": "A node's signed report with its roll-up (PROTOCOL.md §15). Keys: root seed 00..1f, root node seed 20..3f, child (the reporter) seed 40..5f, grandchild seed 60..7f. Every *_cbor field is the hex of a canonical CBOR encoding.",
        "root_key": k.root.public().to_string(),
        "root_node_key": k.root_node.public().to_string(),
        "child_key": k.child.public().to_string(),
        "grandchild_key": k.grandchild.public().to_string(),
        "tag": TAG_REPORT,
        "leaf_seq": 2,
        "leaf_envelope_cbor": hex::encode(&leaf.bytes),
        "seq": 7,
        "report": serde_json::to_value(&report).expect("json"),
        "report_cbor": hex::encode(&envelope.body),
        "signed_bytes_cbor": hex::encode(envelope.signed_bytes()),
        "signature": hex::encode(envelope.sig),
        "envelope_cbor": hex::encode(&signed.bytes),
        "root_subtree": root_json["subtree"],
        "root_nodes": root_json["nodes"],
    })
}

#[test]
fn report_vector_matches() {
    let have = common::assert_vector_file(VECTORS, &expected());
    // The stored bytes open as the child's and the grandchild's reports, and roll up at
    // the root node to the stored counts.
    let bytes = |k: &str| hex::decode(have[k].as_str().expect("hex string")).expect("hex");
    let key = |k: &str| -> PublicKey { have[k].as_str().expect("hex").parse().expect("key") };
    let leaf = SignedReport::open(&bytes("leaf_envelope_cbor"), &key("grandchild_key"))
        .expect("the leaf report opens");
    assert_eq!(leaf.seq, 2);
    let child = SignedReport::open(&bytes("envelope_cbor"), &key("child_key"))
        .expect("the child's report opens");
    assert_eq!(child.seq, 7);
    assert_eq!(child.report, child_report(&keys()).1);
    assert!(SignedReport::open(&bytes("envelope_cbor"), &key("grandchild_key")).is_err());
    let root = root_report(&keys(), &child);
    let root_json = serde_json::to_value(&root).expect("json");
    assert_eq!(root_json["subtree"], have["root_subtree"]);
    assert_eq!(root_json["nodes"], have["root_nodes"]);
}

/// Every CBOR map in the vector file must have its keys in RFC 8949 deterministic order.
#[test]
fn report_vector_maps_are_in_canonical_key_order() {
    let have = common::assert_vector_maps_canonical(
        VECTORS,
        &[
            "envelope_cbor",
            "report_cbor",
            "signed_bytes_cbor",
            "leaf_envelope_cbor",
        ],
    );
    // The body nested in the leaf's envelope too.
    let leaf = hex::decode(have["leaf_envelope_cbor"].as_str().expect("hex")).expect("hex");
    let envelope: Envelope = cbor4ii::serde::from_slice(&leaf).expect("envelope");
    common::assert_maps_canonical(&envelope.body);
}
