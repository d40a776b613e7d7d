//! Checks the wire test vectors in protocol/vectors/ against the implementation.
//!
//! A second implementation that reproduces these bytes interoperates with this one.
//! After a deliberate wire change, regenerate them with
//! `ARBOR_WRITE_VECTORS=1 cargo test --test vectors` and update PROTOCOL.md to match.

mod common;

use arbor::content::Hash;
use arbor::content::manifest::{ChunkRef, FileEntry, Manifest};
use arbor::trust::{Envelope, SecretKey, SignedManifest};
use serde_json::{Value, json};

const VECTORS: &str = "protocol/vectors/manifest-v1.json";

fn test_root_key() -> SecretKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = i as u8;
    }
    SecretKey::from_seed(seed)
}

fn small_manifest() -> Manifest {
    let hello = b"hello, arbor\n";
    let part1 = vec![b'a'; 3];
    let part2 = vec![b'b'; 2];
    Manifest {
        id: "report-viewer".into(),
        files: vec![
            FileEntry {
                mode: 0o755,
                path: "bin/start.sh".into(),
                size: 5,
                chunks: vec![ChunkRef(Hash::of(&part1), 3), ChunkRef(Hash::of(&part2), 2)],
            },
            FileEntry {
                mode: 0o644,
                path: "readme.txt".into(),
                size: hello.len() as u64,
                chunks: vec![ChunkRef(Hash::of(hello), hello.len() as u32)],
            },
        ],
        tenant: "acme".into(),
        created: 1_767_225_600,
        version: "1.0.0".into(),
        category: "plugins".into(),
        total_size: 5 + hello.len() as u64,
        description: Some("test vector".into()),
        post_install: None,
    }
}

fn expected() -> Value {
    let root = test_root_key();
    let signed =
        SignedManifest::sign(&root, 1, small_manifest()).expect("the vector manifest is valid");
    let envelope: Envelope =
        cbor4ii::serde::from_slice(&signed.bytes).expect("own encoding decodes");
    json!({
        "about": "A small signed manifest. root_seed is the ed25519 secret seed; every *_cbor field is the hex of a canonical CBOR encoding; see protocol/PROTOCOL.md.",
        "root_seed": hex::encode((0u8..32).collect::<Vec<_>>()),
        "root_key": root.public().to_string(),
        "manifest": serde_json::to_value(small_manifest()).expect("json"),
        "manifest_cbor": hex::encode(&envelope.body),
        "signed_bytes_cbor": hex::encode(envelope.signed_bytes()),
        "signature": hex::encode(envelope.sig),
        "envelope_cbor": hex::encode(&signed.bytes),
        "update_id": signed.id.to_hex(),
        "hook_manifest": serde_json::to_value(hook_manifest()).expect("json"),
        "hook_manifest_cbor": hex::encode(arbor::wire::encode(&hook_manifest())),
    })
}

/// The same manifest with a post-install command: the optional key is present.
fn hook_manifest() -> Manifest {
    Manifest {
        post_install: Some(vec!["bin/start.sh".into(), "--configure".into()]),
        ..small_manifest()
    }
}

#[test]
fn manifest_vector_matches() {
    let have = common::assert_vector_file(VECTORS, &expected());
    // The stored bytes open under the stored key and give the stored id.
    let bytes = hex::decode(have["envelope_cbor"].as_str().expect("hex string")).expect("hex");
    let key = have["root_key"]
        .as_str()
        .expect("hex string")
        .parse()
        .expect("root key");
    let opened = SignedManifest::open(&bytes, &key, 0).expect("vector opens");
    assert_eq!(
        opened.id.to_hex(),
        have["update_id"].as_str().expect("hex string")
    );
    assert_eq!(opened.manifest, small_manifest());
    let hook = hex::decode(have["hook_manifest_cbor"].as_str().expect("hex string")).expect("hex");
    let decoded: Manifest =
        arbor::wire::decode_canonical(&hook, usize::MAX, "manifest").expect("hook vector decodes");
    assert_eq!(decoded, hook_manifest());
}

/// Every CBOR map in the vector file must have its keys in RFC 8949 deterministic order.
#[test]
fn vector_maps_are_in_canonical_key_order() {
    common::assert_vector_maps_canonical(
        VECTORS,
        &[
            "envelope_cbor",
            "manifest_cbor",
            "signed_bytes_cbor",
            "hook_manifest_cbor",
        ],
    );
}

const TREE_VECTORS: &str = "protocol/vectors/tree-v1.json";

fn seed_key(first: u8) -> SecretKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = first.wrapping_add(i as u8);
    }
    SecretKey::from_seed(seed)
}

/// The tree protocol's messages (PROTOCOL.md §10–§13), built from fixed keys and times.
fn tree_expected() -> Value {
    use arbor::net::proto::{
        self, ChunkRequest, ControlFrame, JoinReply, JoinRequest, SiblingAddr,
    };
    use arbor::trust::member::{self, JoinToken};
    let (root, root_node, child) = (test_root_key(), seed_key(0x20), seed_key(0x40));
    // A chunk answer as a delta: 3 literal bytes, then 100 bytes of base chunk 2 from
    // offset 100 (PROTOCOL.md §13.2): 21 bytes for a chunk of 103.
    let ops = arbor::content::delta::write(&[
        arbor::content::delta::Op::Literal(b"new"),
        arbor::content::delta::Op::Copy {
            base: 2,
            offset: 100,
            len: 100,
        },
    ]);
    let mut delta_answer = proto::chunk_header(proto::CHUNK_DELTA, ops.len() as u32).to_vec();
    delta_answer.extend_from_slice(&ops);
    // A chunk answer "elsewhere": the header, then the sibling's node key.
    let mut elsewhere = proto::chunk_header(proto::CHUNK_ELSEWHERE, 32).to_vec();
    elsewhere.extend_from_slice(&root_node.public().0);
    let chain = vec![
        member::issue(
            &root,
            root_node.public(),
            false,
            vec![],
            None,
            1_767_225_600,
            1_769_817_600,
        ),
        member::issue(
            &root_node,
            child.public(),
            true,
            vec!["lab".into()],
            None,
            1_767_225_600,
            1_769_817_600,
        ),
    ];
    // The same child placed at a site, as its parent certifies it (§13.1).
    let site_cert = member::issue(
        &root_node,
        child.public(),
        true,
        vec!["lab".into()],
        Some("berlin".into()),
        1_767_225_600,
        1_769_817_600,
    );
    let site_token = JoinToken {
        site: Some("berlin".into()),
        ..token_at(&root, &root_node)
    };
    let token = token_at(&root, &root_node);
    let cbor = |v: &dyn erased::Encode| hex::encode(v.encode());
    json!({
        "about": "Tree protocol messages. Keys: root seed 00..1f, root node seed 20..3f, child seed 40..5f. Every *_cbor field is the hex of a canonical CBOR encoding; see protocol/PROTOCOL.md §10-§13.",
        "root_key": root.public().to_string(),
        "root_node_key": root_node.public().to_string(),
        "child_key": child.public().to_string(),
        "child_node_id": child.public().node_id(),
        "membership_cbor": hex::encode(&chain[1].body),
        "chain_cbor": cbor(&chain),
        "join_token_text": token.to_text(),
        "join_request_cbor": cbor(&JoinRequest { secret: [7; 32] }),
        "join_accepted_cbor": cbor(&JoinReply::Accepted { chain: chain.clone(), root: root.public(), time: 1_767_225_600_000 }),
        "welcome_cbor": cbor(&ControlFrame::Welcome { chain: chain.clone(), time: 1_767_225_600_000 }),
        "ping_cbor": cbor(&ControlFrame::Ping { time: 1_767_225_600_000 }),
        "refused_cbor": cbor(&ControlFrame::Refused { time: 1_767_225_600_000, reason: "its membership was revoked".into() }),
        "join_refused_cbor": cbor(&JoinReply::Refused { reason: "the join token was already used".into() }),
        "hello_cbor": cbor(&ControlFrame::Hello { site: None, addrs: vec![], chain: chain.clone() }),
        "have_cbor": cbor(&ControlFrame::Have { update: Hash::of(b"update"), ranges: vec![(0, 16), (32, 40)] }),
        "chunk_request_cbor": cbor(&ChunkRequest { base: None, count: 16, first: 32, direct: false, update: Hash::of(b"update") }),
        "site_membership_cbor": hex::encode(&site_cert.body),
        "site_join_token_text": site_token.to_text(),
        "site_hello_cbor": cbor(&ControlFrame::Hello { site: Some("berlin".into()), addrs: vec!["/ip4/192.0.2.7/tcp/4041".into()], chain: vec![chain[0].clone(), site_cert] }),
        "siblings_cbor": cbor(&ControlFrame::Siblings { peers: vec![SiblingAddr { node: root_node.public(), addrs: vec!["/ip4/192.0.2.8/tcp/4041".into()] }] }),
        "direct_chunk_request_cbor": cbor(&ChunkRequest { base: None, count: 16, first: 32, direct: true, update: Hash::of(b"update") }),
        "elsewhere_answer": hex::encode(elsewhere),
        "delta_chunk_request_cbor": cbor(&ChunkRequest { base: Some(Hash::of(b"base")), count: 16, first: 32, direct: false, update: Hash::of(b"update") }),
        "delta_answer": hex::encode(delta_answer),
    })
}

fn token_at(root: &SecretKey, parent: &SecretKey) -> arbor::trust::member::JoinToken {
    arbor::trust::member::JoinToken {
        addr: "/ip4/192.0.2.1/tcp/4040".into(),
        root: arbor::trust::member::root_fingerprint(&root.public()),
        site: None,
        parent: parent.public(),
        secret: [7; 32],
    }
}

/// Lets the vector table above encode values of different types.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            arbor::wire::encode(self)
        }
    }
}

#[test]
fn tree_vectors_match_and_decode() {
    use arbor::net::proto::{ChunkRequest, ControlFrame, JoinReply};
    use arbor::trust::member::{JoinToken, verify_chain};
    let have = common::assert_vector_file(TREE_VECTORS, &tree_expected());
    let obj = have.as_object().expect("object");
    let bytes = |k: &str| hex::decode(have[k].as_str().expect("hex")).expect("hex");
    // The stored bytes decode canonically and the chain verifies under the stored root.
    let chain: Vec<Envelope> =
        arbor::wire::decode_canonical(&bytes("chain_cbor"), 1 << 16, "chain").expect("chain");
    let root = have["root_key"]
        .as_str()
        .expect("hex")
        .parse()
        .expect("key");
    let members = verify_chain(&chain, &root, 1_767_225_601).expect("chain verifies");
    assert_eq!(members[1].groups, vec!["lab".to_string()]);
    let _: JoinReply =
        arbor::wire::decode_canonical(&bytes("join_accepted_cbor"), 1 << 16, "reply")
            .expect("reply");
    let _: ControlFrame =
        arbor::wire::decode_canonical(&bytes("have_cbor"), 1 << 16, "have").expect("have");
    let _: ChunkRequest =
        arbor::wire::decode_canonical(&bytes("chunk_request_cbor"), 256, "req").expect("req");
    JoinToken::parse(have["join_token_text"].as_str().expect("text")).expect("token");
    let token =
        JoinToken::parse(have["site_join_token_text"].as_str().expect("text")).expect("token");
    assert_eq!(token.site.as_deref(), Some("berlin"));
    let hello: ControlFrame =
        arbor::wire::decode_canonical(&bytes("site_hello_cbor"), 1 << 16, "hello").expect("hello");
    let ControlFrame::Hello { site, chain, .. } = hello else {
        panic!("not a hello")
    };
    assert_eq!(site.as_deref(), Some("berlin"));
    let members = verify_chain(&chain, &root, 1_767_225_601).expect("site chain verifies");
    assert_eq!(members[1].site.as_deref(), Some("berlin"));
    let req: ChunkRequest =
        arbor::wire::decode_canonical(&bytes("direct_chunk_request_cbor"), 256, "req")
            .expect("req");
    assert!(req.direct);
    // `direct: false` is the absent key, so requests without it are unchanged.
    let plain: ChunkRequest =
        arbor::wire::decode_canonical(&bytes("chunk_request_cbor"), 256, "req").expect("req");
    assert!(!plain.direct);
    assert_eq!(plain.base, None);
    let with_base: ChunkRequest =
        arbor::wire::decode_canonical(&bytes("delta_chunk_request_cbor"), 256, "req").expect("req");
    assert_eq!(with_base.base, Some(Hash::of(b"base")));
    // The delta answer parses as 3 literal bytes and a copy of 100 from base chunk 2.
    let answer = bytes("delta_answer");
    assert_eq!(answer[0], arbor::net::proto::CHUNK_DELTA);
    let payload = &answer[5..];
    let delta = arbor::content::delta::Delta::parse(payload, 103, |i| (i == 2).then_some(200))
        .expect("the delta parses");
    assert_eq!(delta.bases(), &[2]);
    assert!(payload.len() < 103, "a delta is smaller than its chunk");
    for key in obj.keys().filter(|k| k.ends_with("_cbor")) {
        common::assert_maps_canonical(&bytes(key));
    }
}
