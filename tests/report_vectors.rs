//! Checks the report test vectors in protocol/vectors/report-v1.json (PROTOCOL.md §15)
//! against the implementation.
//!
//! After a deliberate wire change, regenerate them with
//! `ARBOR_WRITE_VECTORS=1 cargo test --test report_vectors` and update PROTOCOL.md to match.

mod common;

use arbor::content::Hash;
use arbor::report::proof::{self, Proof, TAG_FAILURE};
use arbor::report::{
    NodeDetail, Own, Received, Report, Rollup, RuleRefusal, SignedReport, State, TAG_REPORT,
    UpdateState,
};
use arbor::rules::RulesError;
use arbor::trust::member::{self, TAG_MEMBER};
use arbor::trust::{Envelope, PublicKey, SecretKey};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const VECTORS: &str = "protocol/vectors/report-v1.json";
/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;
const MIB: u64 = 1024 * 1024;
/// Certificates last 30 days (§11).
const CERT_TTL: u64 = 30 * 24 * 3600;

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

/// The child's certificate, signed by the root node at T0.
fn child_cert(k: &Keys) -> Envelope {
    let child = k.child.public();
    member::issue(&k.root_node, child, false, vec![], None, T0, T0 + CERT_TTL)
}

/// The grandchild's certificate, a client's, signed by the child at T0 + 10.
fn grandchild_cert(k: &Keys) -> Envelope {
    let grandchild = k.grandchild.public();
    member::issue(
        &k.child,
        grandchild,
        true,
        vec![],
        None,
        T0 + 10,
        T0 + 10 + CERT_TTL,
    )
}

/// The grandchild's path: root node, child, grandchild.
fn grandchild_path(k: &Keys) -> Vec<PublicKey> {
    vec![
        k.root_node.public(),
        k.child.public(),
        k.grandchild.public(),
    ]
}

/// The grandchild's statement that it failed update B, signed at T0 + 45.
fn failure(k: &Keys) -> Envelope {
    proof::sign_failure(&k.grandchild, &grandchild_path(k), update_b(), T0 + 45)
}

/// The grandchild (seed 60..7f, a leaf under the child, in the child's group `lab`)
/// installed update A and failed update B; its report, version 2.
fn leaf_report(k: &Keys) -> SignedReport {
    let me = NodeDetail {
        lost: None,
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
    let mut report = Report::leaf(me, &[]);
    report.proof = Some(Proof {
        cert: grandchild_cert(k),
        below: vec![],
        failed: vec![failure(k)],
    });
    SignedReport::sign(&k.grandchild, 2, report).expect("leaf signs")
}

/// The child (seed 40..5f, under the root node) has update A and is fetching B; it
/// refused an older rule set of the root node, and lost its connection to the
/// grandchild at T0 + 55. Its roll-up report, version 7.
fn child_report(k: &Keys) -> (Rollup, Report) {
    let mut rollup = Rollup::new(vec![k.root_node.public(), k.child.public()]);
    let leaf = leaf_report(k);
    assert_eq!(
        rollup.receive(&k.grandchild.public(), true, &leaf.bytes, T0 + 60),
        Ok(Received::Applied)
    );
    let me = NodeDetail {
        lost: None,
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
    let cert = child_cert(k);
    let lost = BTreeMap::from([(k.grandchild.public(), T0 + 55)]);
    let refusals = [refusal];
    let report = rollup.report(Own {
        cert: Some(&cert),
        lost: &lost,
        ..Own::new(me, &groups, &refusals)
    });
    (rollup, report)
}

/// The root node's (seed 20..3f) roll-up once the child reported: it has update A.
/// Also the failures the child's proof proves there, as `[node, update]` in hex.
fn root_report(k: &Keys, child: &SignedReport) -> (Report, Value) {
    let mut rollup = Rollup::new(vec![k.root_node.public()]);
    assert_eq!(
        rollup.receive(&k.child.public(), false, &child.bytes, T0 + 70),
        Ok(Received::Applied)
    );
    assert_eq!(
        rollup.receive(&k.child.public(), false, &child.bytes, T0 + 70),
        Ok(Received::Duplicate)
    );
    let proven: Vec<Value> = rollup
        .proven(T0 + 70)
        .into_iter()
        .map(|(node, update)| json!([node.to_string(), update.to_hex()]))
        .collect();
    let me = NodeDetail {
        lost: None,
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
    let report = rollup.report(Own::new(me, &BTreeMap::new(), &[]));
    (report, Value::Array(proven))
}

fn expected() -> Value {
    let k = keys();
    let leaf = leaf_report(&k);
    let (_, report) = child_report(&k);
    let signed = SignedReport::sign(&k.child, 7, report.clone()).expect("vector signs");
    let envelope: Envelope =
        cbor4ii::serde::from_slice(&signed.bytes).expect("own encoding decodes");
    let (root, root_proven) = root_report(&k, &signed);
    let root_json = serde_json::to_value(&root).expect("json");
    json!({
        "about": "A node's signed report with its roll-up (PROTOCOL.md §15). Keys: root seed 00..1f, root node seed 20..3f, child (the reporter) seed 40..5f, grandchild seed 60..7f. Every *_cbor field is the hex of a canonical CBOR encoding.",
        "root_key": k.root.public().to_string(),
        "root_node_key": k.root_node.public().to_string(),
        "child_key": k.child.public().to_string(),
        "grandchild_key": k.grandchild.public().to_string(),
        "tag": TAG_REPORT,
        "member_tag": TAG_MEMBER,
        "failure_tag": TAG_FAILURE,
        "child_cert_cbor": hex::encode(cbor(&child_cert(&k))),
        "grandchild_cert_cbor": hex::encode(cbor(&grandchild_cert(&k))),
        "grandchild_path_hash": proof::path_hash(&grandchild_path(&k)).to_hex(),
        "failure_cbor": hex::encode(cbor(&failure(&k))),
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
        "root_proven": root_proven,
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
    let (root, proven) = root_report(&keys(), &child);
    let root_json = serde_json::to_value(&root).expect("json");
    assert_eq!(root_json["subtree"], have["root_subtree"]);
    assert_eq!(root_json["nodes"], have["root_nodes"]);
    assert_eq!(proven, have["root_proven"]);
    // The grandchild's failure is proven at the root node by the stored statement.
    let statement: Envelope =
        cbor4ii::serde::from_slice(&bytes("failure_cbor")).expect("statement decodes");
    assert_eq!(statement.tag, TAG_FAILURE);
    assert_eq!(
        have["root_proven"][0][0].as_str(),
        Some(statement.signer.to_string().as_str())
    );
    let body: proof::Failure = cbor4ii::serde::from_slice(&statement.body).expect("body");
    assert_eq!(
        body.path.to_hex(),
        have["grandchild_path_hash"].as_str().expect("hex")
    );
}

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    cbor4ii::serde::to_vec(Vec::new(), value).expect("encodes")
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
            "child_cert_cbor",
            "grandchild_cert_cbor",
            "failure_cbor",
        ],
    );
    // The body nested in the leaf's envelope too.
    for key in ["leaf_envelope_cbor", "failure_cbor", "grandchild_cert_cbor"] {
        let bytes = hex::decode(have[key].as_str().expect("hex")).expect("hex");
        let envelope: Envelope = cbor4ii::serde::from_slice(&bytes).expect("envelope");
        common::assert_maps_canonical(&envelope.body);
    }
}
