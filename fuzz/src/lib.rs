//! What the fuzz targets share: the keys and times of `protocol/vectors/` (so that the
//! seeds built from the vectors verify), signing a fuzzed body the way its issuer
//! would, reading a stream of frames the way a peer's stream is read, and handing each
//! decoded message on to the checks its receiver runs on it.
//!
//! Each target in `fuzz_targets/` feeds the bytes to one decoder through the public
//! entry point that untrusted input reaches in the daemon or the command line, and
//! asserts what must hold of anything accepted. The harness panics only on a broken
//! property; a refusal is a good answer.

use arbor::content::Hash;
use arbor::content::delta::{Delta, MAX_REFERENCES};
use arbor::content::manifest::Manifest;
use arbor::content::names::check_name;
use arbor::net::parse_addrs;
use arbor::net::proto::{self, ControlFrame, SiblingAddr};
use arbor::report::Rollup;
use arbor::rules::availability_from_proof;
use arbor::trust::member::verify_chain;
use arbor::trust::{PublicKey, SecretKey, SignedManifest};
use arbor::wire;
use futures::executor::block_on;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::OnceLock;

/// "Now" for every check: the time of the rules vector, before any vector expires.
pub const NOW: u64 = 1_767_225_601;
/// The expiry of the rules vector.
pub const EXPIRES: u64 = 1_769_817_600;

/// The key with seed `first, first + 1, ..., first + 31`, as the vectors name them.
pub fn key(first: u8) -> SecretKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = first.wrapping_add(i as u8);
    }
    SecretKey::from_seed(seed)
}

/// The root key (trust anchor): seed 00..1f.
pub fn root() -> SecretKey {
    key(0x00)
}

/// The root node: seed 20..3f. It issues the rules vector.
pub fn root_node() -> SecretKey {
    key(0x20)
}

/// The root node's child: seed 40..5f. It signs the report vector.
pub fn child() -> SecretKey {
    key(0x40)
}

/// The child's child: seed 60..7f.
pub fn grandchild() -> SecretKey {
    key(0x60)
}

/// Asserts that `value` encodes to exactly `bytes`: what a canonical decoder accepted
/// must re-encode to what it was given.
pub fn assert_canonical<T: Serialize + std::fmt::Debug>(value: &T, bytes: &[u8]) {
    let again = wire::encode(value);
    assert!(
        again == bytes,
        "accepted bytes do not re-encode to themselves: {value:?}\n in:  {}\n out: {}",
        hex(bytes),
        hex(&again)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads frames of at most `limit` bytes from `data` as from a peer's stream until it
/// ends or a frame is refused, and returns those read. Each one must re-encode to the
/// very bytes it was read from (length prefix included).
pub fn read_frames<T>(data: &[u8], limit: usize, what: &'static str) -> Vec<T>
where
    T: Serialize + DeserializeOwned + std::fmt::Debug,
{
    let mut stream = futures::io::Cursor::new(data);
    let mut frames = Vec::new();
    loop {
        let start = stream.position() as usize;
        match block_on(proto::read_frame::<_, T>(&mut stream, limit, what)) {
            Ok(Some(frame)) => {
                let end = stream.position() as usize;
                let mut again = Vec::new();
                if let Err(e) = block_on(proto::write_frame(&mut again, &frame)) {
                    panic!("a frame read cannot be written back: {e}");
                }
                assert!(
                    again == data[start..end],
                    "a frame read does not write back to its bytes: {frame:?}"
                );
                frames.push(frame);
            }
            Ok(None) | Err(_) => return frames,
        }
    }
}

/// Hands a control or sibling frame to the checks its receiver runs on it: the chain of
/// a `Hello` or `Welcome` against the root key, an offered manifest, the rule sets of a
/// subset proof (received by the child), a child's report (received by the root node),
/// the addresses of siblings. Refusals are fine; a panic is not.
pub fn receive_control(frame: &ControlFrame) {
    let root = root().public();
    match frame {
        ControlFrame::Hello { site, addrs, chain } => {
            if let Some(site) = site {
                let _ = check_name("site", site);
            }
            let _ = parse_addrs(addrs);
            let _ = verify_chain(chain, &root, NOW);
        }
        ControlFrame::Welcome { chain, .. } => {
            let _ = verify_chain(chain, &root, NOW);
        }
        ControlFrame::Refused { reason, .. } => {
            let _ = arbor::report::sanitize_reason(reason);
        }
        ControlFrame::Offer { manifest } => {
            let _ = SignedManifest::open(manifest, &root, NOW);
        }
        ControlFrame::Have { ranges, update } => {
            // The engine takes at most MAX_RANGES ranges; each names chunk indices.
            let _ = (ranges.len() <= proto::MAX_RANGES, update.short());
        }
        ControlFrame::Rules { sets } => {
            let proof: Vec<&[u8]> = sets.iter().map(|s| s.as_slice()).collect();
            let path = [root_node().public(), child().public()];
            let _ = availability_from_proof(&proof, &path, NOW);
        }
        ControlFrame::Report { report } => {
            let path = vec![root_node().public()];
            let _ = Rollup::new(path).receive(&child().public(), false, report, NOW);
        }
        ControlFrame::Siblings { peers } => {
            for SiblingAddr { node, addrs } in peers {
                let _ = (node.peer_id(), parse_addrs(addrs));
            }
        }
        ControlFrame::Ping { time } => {
            let _ = arbor::engine::clock_note(*time as i64 - (NOW * 1000) as i64);
        }
    }
}

/// A node id as the daemon prints it, and its PeerId, for keys read off the wire.
pub fn show_key(key: &PublicKey) {
    let _ = (key.node_id(), key.peer_id());
}

/// The chunks of the base a delta is rebuilt against, by index in the base's
/// distinct-chunk list: ten chunks of known lengths and pseudo-random bytes (so that a
/// delta can name more than the eight chunks allowed, and chunk 2 has the 200 bytes the
/// vector's delta copies from).
pub fn base_chunks() -> &'static [Vec<u8>] {
    static BASE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASE.get_or_init(|| {
        [64usize, 512, 300, 4096, 1000, 256, 2048, 128, 700, 32]
            .iter()
            .enumerate()
            .map(|(i, &len)| noise(i as u64 + 1, len))
            .collect()
    })
}

/// The chunks a requester expects in answer to a chunk request: (hash, bytes). Chunk 0
/// is what the vector's delta answer builds (`new`, then bytes 100..200 of base
/// chunk 2); the others are the base's chunks 3, 0 and 5, as an update that kept them.
pub fn expected_chunks() -> &'static [(Hash, Vec<u8>)] {
    static EXPECTED: OnceLock<Vec<(Hash, Vec<u8>)>> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let base = base_chunks();
        let mut first = b"new".to_vec();
        first.extend_from_slice(&base[2][100..200]);
        [first, base[3].clone(), base[0].clone(), base[5].clone()]
            .into_iter()
            .map(|c| (Hash::of(&c), c))
            .collect()
    })
}

/// `len` pseudo-random bytes from `seed` (xorshift64*): fixed across runs.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Rebuilds a chunk of `len` bytes from a received delta against [`base_chunks`], as the
/// requester does (`net::delta::rebuild`): parse against the base's chunk lengths, then
/// apply to the base chunks the delta names. A delta that parses must name at most
/// [`MAX_REFERENCES`] chunks of the base and build exactly `len` bytes.
pub fn rebuild(bytes: &[u8], len: u32) -> Option<Vec<u8>> {
    let base = base_chunks();
    let delta = Delta::parse(bytes, len, |i| base.get(i as usize).map(|c| c.len() as u32)).ok()?;
    assert!(delta.bases().len() <= MAX_REFERENCES);
    let named: HashMap<u32, Vec<u8>> = delta
        .bases()
        .iter()
        .map(|&i| (i, base[i as usize].clone()))
        .collect();
    let built = match delta.apply(&named) {
        Ok(built) => built,
        Err(e) => panic!("a delta that parsed does not apply: {e}"),
    };
    assert_eq!(built.len(), len as usize, "a delta builds the wrong length");
    Some(built)
}

/// The manifest of `protocol/vectors/manifest-v1.json`.
pub fn vector_manifest() -> &'static Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST.get_or_init(|| {
        let vector: serde_json::Value =
            serde_json::from_str(include_str!("../../protocol/vectors/manifest-v1.json"))
                .expect("the manifest vector is JSON");
        let cbor = vector["manifest_cbor"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .expect("the manifest vector has manifest_cbor in hex");
        wire::decode_canonical(&cbor, cbor.len(), "manifest").expect("the vector decodes")
    })
}
