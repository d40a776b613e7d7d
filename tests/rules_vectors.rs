//! Checks the rules test vectors in protocol/vectors/rules-v1.json (PROTOCOL.md §14)
//! against the implementation.
//!
//! After a deliberate wire change, regenerate them with
//! `ARBOR_WRITE_VECTORS=1 cargo test --test rules_vectors` and update PROTOCOL.md to match.

mod common;

use arbor::content::Hash;
use arbor::rules::{
    ALL, Approval, Halt, RuleBook, Rules, SignedRules, TAG_RULES, availability_from_proof, bucket,
};
use arbor::trust::{Envelope, PublicKey, SecretKey};
use serde_json::{Value, json};

const VECTORS: &str = "protocol/vectors/rules-v1.json";
/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;
const DAY: u64 = 86_400;

fn seed_key(first: u8) -> SecretKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = first.wrapping_add(i as u8);
    }
    SecretKey::from_seed(seed)
}

/// The root node's (seed 20..3f) rules for its children, with the child (seed 40..5f)
/// in group `lab`: update A for `lab` in a 75% wave with a deadline and a halt
/// threshold; update B for `all`, subtree-wide, halted.
fn vector_rules() -> (SecretKey, SecretKey, Rules) {
    let (root_node, child) = (seed_key(0x20), seed_key(0x40));
    let mut rules = Rules::new(root_node.public(), T0);
    rules.create_group("lab").expect("group name");
    rules.assign("lab", child.public()).expect("group exists");
    let a = Approval {
        deadline: Some(T0 + 7 * DAY),
        halt: Some(Halt {
            failures: Some(5),
            fraction: Some(1000),
        }),
        ..Approval::wave(7500)
    };
    rules
        .approve(Hash::of(b"update-a"), "lab", a)
        .expect("valid approval");
    let b = Approval {
        subtree: true,
        ..Approval::wave(10_000)
    };
    rules
        .approve(Hash::of(b"update-b"), ALL, b)
        .expect("valid approval");
    rules
        .halt(
            &Hash::of(b"update-b"),
            ALL,
            T0 + 3600,
            "5 nodes failed, at or over the threshold of 5",
        )
        .expect("valid reason");
    (root_node, child, rules)
}

fn expected() -> Value {
    let root = seed_key(0x00);
    let (root_node, child, rules) = vector_rules();
    let signed =
        SignedRules::sign(&root_node, 3, T0 + 30 * DAY, rules.clone()).expect("vector signs");
    let envelope: Envelope =
        cbor4ii::serde::from_slice(&signed.bytes).expect("own encoding decodes");
    let path = [root_node.public(), child.public()];
    let avail = availability_from_proof(&[&signed.bytes], &path, T0 + 1).expect("opens");
    let available: Vec<String> = avail.updates().map(|(u, _)| u.to_hex()).collect();
    let waves: Vec<Value> = [b"update-a".as_slice(), b"update-b"]
        .iter()
        .map(|u| {
            let u = Hash::of(u);
            json!({
                "update": u.to_hex(),
                "node_key": child.public().to_string(),
                "bucket": bucket(&u, &child.public()),
            })
        })
        .collect();
    json!({
        "about": "A signed rule set (PROTOCOL.md §14). Keys: root seed 00..1f, root node (the issuer) seed 20..3f, child seed 40..5f. Every *_cbor field is the hex of a canonical CBOR encoding.",
        "root_key": root.public().to_string(),
        "issuer_key": root_node.public().to_string(),
        "child_key": child.public().to_string(),
        "tag": TAG_RULES,
        "version": 3,
        "expires": T0 + 30 * DAY,
        "rules": serde_json::to_value(&rules).expect("json"),
        "rules_cbor": hex::encode(&envelope.body),
        "signed_bytes_cbor": hex::encode(envelope.signed_bytes()),
        "signature": hex::encode(envelope.sig),
        "envelope_cbor": hex::encode(&signed.bytes),
        "waves": waves,
        "now": T0 + 1,
        "child_available": available,
    })
}

#[test]
fn rules_vector_matches() {
    let have = common::assert_vector_file(VECTORS, &expected());
    // The stored bytes open for the child and give the stored rules and availability.
    let bytes = |k: &str| hex::decode(have[k].as_str().expect("hex string")).expect("hex");
    let key = |k: &str| -> PublicKey { have[k].as_str().expect("hex").parse().expect("key") };
    let route = [key("issuer_key"), key("child_key")];
    let now = have["now"].as_u64().expect("now");
    let mut book = RuleBook::new();
    assert_eq!(book.receive(&bytes("envelope_cbor"), &route, now), Ok(true));
    let held = book.get(&route[0]).expect("held");
    assert_eq!(held.rules, vector_rules().2);
    assert_eq!(held.version, 3);
    let avail = book.availability(&route, now);
    let listed: Vec<String> = avail.updates().map(|(u, _)| u.to_hex()).collect();
    assert_eq!(json!(listed), have["child_available"]);
    for w in have["waves"].as_array().expect("array") {
        let u: Hash = w["update"].as_str().expect("hex").parse().expect("hash");
        let n: PublicKey = w["node_key"].as_str().expect("hex").parse().expect("key");
        assert_eq!(json!(bucket(&u, &n)), w["bucket"]);
    }
}

/// Every CBOR map in the vector file must have its keys in RFC 8949 deterministic order.
#[test]
fn rules_vector_maps_are_in_canonical_key_order() {
    common::assert_vector_maps_canonical(
        VECTORS,
        &["envelope_cbor", "rules_cbor", "signed_bytes_cbor"],
    );
}
