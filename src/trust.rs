//! Trust: keys, signatures and the signed envelope every signed object travels in.
//!
//! Owns ed25519 keys and their files, the [`Envelope`] (domain-separation tag, signer,
//! sequence number, expiry, body, signature) and [`SignedManifest`], the only way to get
//! a manifest that may be acted on: by signing one as the root, or by opening bytes
//! whose signature, tag, expiry, encoding and content invariants all check out against
//! the pinned root key. Time comes in as an argument; this module reads no clock.

pub mod member;
pub mod memo;

use crate::content::Hash;
use crate::content::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::wire::{self, WireError, fixed};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// Domain-separation tag of update manifests.
pub const TAG_MANIFEST: &str = "arbor/manifest/v1";
/// Room an envelope needs beyond its body.
const ENVELOPE_OVERHEAD: usize = 256;
/// How far apart two nodes' clocks may be before expiries bite: a signed object is
/// taken as expired only this many seconds after its expiry (PROTOCOL.md §5).
pub const CLOCK_TOLERANCE: u64 = 300;

/// Whether something that expires at `expires` has expired at `now` (Unix seconds),
/// allowing for [`CLOCK_TOLERANCE`].
pub fn expired(expires: u64, now: u64) -> bool {
    expires.saturating_add(CLOCK_TOLERANCE) <= now
}

/// Why a signed object was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("signed object has tag {found:?}, expected {expected:?}")]
    WrongTag {
        expected: &'static str,
        found: String,
    },
    #[error("signed by {signer}, which is not the trusted key {trusted}")]
    UnknownSigner {
        signer: PublicKey,
        trusted: PublicKey,
    },
    #[error("the signature does not verify")]
    BadSignature,
    #[error("expired at {expires} (Unix seconds); now is {now}")]
    Expired { expires: u64, now: u64 },
    #[error("invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
}

/// An ed25519 public key: a node's identity or the root (trust anchor) key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "fixed")] pub [u8; 32]);

impl PublicKey {
    /// The libp2p PeerId of this key, which is how arbor names nodes.
    pub fn node_id(&self) -> String {
        match libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0) {
            Ok(pk) => libp2p_identity::PublicKey::from(pk)
                .to_peer_id()
                .to_string(),
            // Not a valid curve point: it cannot sign anything, show it as hex.
            Err(_) => format!("invalid-key-{}", hex::encode(self.0)),
        }
    }

    /// The key behind a libp2p PeerId, if it is an ed25519 one (arbor's only kind).
    pub fn from_peer_id(peer: &libp2p_identity::PeerId) -> Option<PublicKey> {
        let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
        // Identity multihash (code 0): ed25519 keys are inlined in their PeerId.
        if mh.code() != 0 {
            return None;
        }
        let key = libp2p_identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
        Some(PublicKey(key.try_into_ed25519().ok()?.to_bytes()))
    }

    /// This key as a libp2p PeerId.
    pub fn peer_id(&self) -> Option<libp2p_identity::PeerId> {
        let pk = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0).ok()?;
        Some(libp2p_identity::PublicKey::from(pk).to_peer_id())
    }

    fn verifying_key(&self) -> Result<VerifyingKey, TrustError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| TrustError::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.0[..6]))
    }
}

/// A string that is not a public key in hex.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an ed25519 public key (64 hex digits): {0:?}")]
pub struct BadPublicKey(pub String);

impl FromStr for PublicKey {
    type Err = BadPublicKey;
    fn from_str(s: &str) -> Result<PublicKey, BadPublicKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| BadPublicKey(s.chars().take(80).collect()))?;
        VerifyingKey::from_bytes(&out).map_err(|_| BadPublicKey(s.chars().take(80).collect()))?;
        Ok(PublicKey(out))
    }
}

/// A key file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot {action} key file {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} is not an arbor key file (expected one line 'ed25519:' followed by 64 hex digits)"
    )]
    Format { path: String },
    #[error("cannot generate a key: the system random source failed: {0}")]
    Random(String),
}

const KEY_FILE_PREFIX: &str = "ed25519:";

/// An ed25519 signing key. (Cloned only to hand the node key to the engine, which
/// signs the node's reports and halts.)
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, KeyFileError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(seed))
    }

    /// The key with this 32-byte seed (test vectors use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// The same key as a libp2p identity.
    pub fn to_keypair(&self) -> libp2p_identity::Keypair {
        match libp2p_identity::Keypair::ed25519_from_bytes(self.0.to_bytes()) {
            Ok(k) => k,
            // 32 bytes are always a valid ed25519 secret key.
            Err(e) => unreachable!("ed25519 seed rejected: {e}"),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Writes the key to a new file with mode 0600; refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |action, source| KeyFileError::Io {
            action,
            path: path.display().to_string(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("create", e))?;
        let text = format!("{KEY_FILE_PREFIX}{}\n", hex::encode(self.0.to_bytes()));
        f.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))
    }

    /// Reads a key file written by [`SecretKey::write_new`].
    pub fn read(path: &Path) -> Result<SecretKey, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            action: "read",
            path: shown.clone(),
            source,
        })?;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %shown, "key file is readable by other users; run chmod 600 on it");
        }
        let hex_seed = text
            .trim_end()
            .strip_prefix(KEY_FILE_PREFIX)
            .ok_or_else(|| KeyFileError::Format {
                path: shown.clone(),
            })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hex_seed, &mut seed)
            .map_err(|_| KeyFileError::Format { path: shown })?;
        Ok(SecretKey::from_seed(seed))
    }
}

/// A signed object: the body is the canonical CBOR of the payload, and the signature
/// covers the canonical CBOR of this map without its `sig` key (see PROTOCOL.md).
/// Fields are in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Signer-scoped sequence number: higher is newer.
    pub seq: u64,
    #[serde(with = "fixed")]
    pub sig: [u8; 64],
    /// Domain-separation tag: what kind of object the body is.
    pub tag: String,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub signer: PublicKey,
    /// Unix seconds after which the object is stale; `None` for never.
    pub expires: Option<u64>,
}

/// The signed part of an [`Envelope`].
#[derive(Serialize)]
struct SigningInput<'a> {
    seq: u64,
    tag: &'a str,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
    signer: &'a PublicKey,
    expires: Option<u64>,
}

impl Envelope {
    pub fn sign(
        key: &SecretKey,
        tag: &str,
        seq: u64,
        expires: Option<u64>,
        body: Vec<u8>,
    ) -> Envelope {
        let mut envelope = Envelope {
            seq,
            sig: [0; 64],
            tag: tag.to_string(),
            body,
            signer: key.public(),
            expires,
        };
        let signed = envelope.signed_bytes();
        envelope.sig = key.sign(&signed);
        if memo::enabled() {
            // A signature this process just made is good: nobody needs to check it again.
            memo::remember_signature(memo::signature_key(
                &envelope.signer,
                &envelope.sig,
                &signed,
            ));
        }
        envelope
    }

    /// The bytes the signature covers: the canonical encoding without `sig`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        wire::encode(&SigningInput {
            seq: self.seq,
            tag: &self.tag,
            body: &self.body,
            signer: &self.signer,
            expires: self.expires,
        })
    }

    /// Checks tag, signer, signature and expiry.
    pub fn verify(
        &self,
        tag: &'static str,
        trusted: &PublicKey,
        now: u64,
    ) -> Result<(), TrustError> {
        if self.tag != tag {
            return Err(TrustError::WrongTag {
                expected: tag,
                found: self.tag.chars().take(64).collect(),
            });
        }
        if self.signer != *trusted {
            return Err(TrustError::UnknownSigner {
                signer: self.signer,
                trusted: *trusted,
            });
        }
        let signed = self.signed_bytes();
        let memo_key = memo::enabled().then(|| memo::signature_key(trusted, &self.sig, &signed));
        if !memo_key.is_some_and(|k| memo::signature_known(&k)) {
            let sig = ed25519_dalek::Signature::from_bytes(&self.sig);
            trusted
                .verifying_key()?
                .verify_strict(&signed, &sig)
                .map_err(|_| TrustError::BadSignature)?;
            if let Some(k) = memo_key {
                memo::remember_signature(k);
            }
        }
        match self.expires {
            Some(expires) if expired(expires, now) => Err(TrustError::Expired { expires, now }),
            _ => Ok(()),
        }
    }
}

/// A manifest opened once, as the [`memo`] keeps it: the root key it was checked
/// against, its envelope's expiry and the shared result.
struct OpenedManifest {
    root: PublicKey,
    expires: Option<u64>,
    manifest: Arc<SignedManifest>,
}

/// A manifest whose root signature and invariants have been checked, with its update id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    /// blake3 of `bytes`.
    pub id: Hash,
    /// The canonical encoding of the envelope: what is stored and sent, shared by
    /// every offer of it (a parent offers the same bytes to each child).
    pub bytes: Arc<[u8]>,
    /// The root's publish sequence number.
    pub seq: u64,
    pub manifest: Manifest,
    /// The manifest's distinct chunks in order, listed once for every engine and
    /// store that works on it.
    pub chunks: ChunkList,
}

impl SignedManifest {
    /// Signs `manifest` with the root key. `seq` is the root's publish counter.
    pub fn sign(
        root: &SecretKey,
        seq: u64,
        manifest: Manifest,
    ) -> Result<SignedManifest, TrustError> {
        manifest.validate()?;
        let body = wire::encode(&manifest);
        // Refuse here what every receiver would refuse (PROTOCOL.md §3).
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(WireError::TooLarge {
                what: "manifest",
                len: body.len(),
                limit: MAX_MANIFEST_BYTES,
            }
            .into());
        }
        let envelope = Envelope::sign(root, TAG_MANIFEST, seq, None, body);
        let bytes = wire::encode(&envelope);
        Ok(SignedManifest {
            id: Hash::of(&bytes),
            bytes: bytes.into(),
            seq,
            chunks: chunk_list(&manifest),
            manifest,
        })
    }

    /// Decodes and checks untrusted bytes against the pinned root key.
    pub fn open(bytes: &[u8], root: &PublicKey, now: u64) -> Result<SignedManifest, TrustError> {
        Self::open_envelope(bytes, root, now).map(|(_, m)| m)
    }

    /// [`SignedManifest::open`], shared: with the [`memo`] on, bytes opened before
    /// against the same root key give the same manifest (its expiry checked at `now`).
    pub fn open_shared(
        bytes: &[u8],
        root: &PublicKey,
        now: u64,
    ) -> Result<Arc<SignedManifest>, TrustError> {
        if !memo::enabled() {
            return Self::open(bytes, root, now).map(Arc::new);
        }
        let id = Hash::of(bytes);
        if let Some(known) = memo::opened::<OpenedManifest>(&id)
            && known.root == *root
        {
            return match known.expires {
                Some(expires) if expired(expires, now) => Err(TrustError::Expired { expires, now }),
                _ => Ok(known.manifest.clone()),
            };
        }
        let (expires, manifest) = Self::open_envelope(bytes, root, now)?;
        let manifest = Arc::new(manifest);
        let known = OpenedManifest {
            root: *root,
            expires,
            manifest: manifest.clone(),
        };
        memo::remember_opened(id, Arc::new(known));
        Ok(manifest)
    }

    /// Opens the bytes, with the envelope's expiry.
    fn open_envelope(
        bytes: &[u8],
        root: &PublicKey,
        now: u64,
    ) -> Result<(Option<u64>, SignedManifest), TrustError> {
        let envelope: Envelope = wire::decode_canonical(
            bytes,
            MAX_MANIFEST_BYTES + ENVELOPE_OVERHEAD,
            "manifest envelope",
        )?;
        envelope.verify(TAG_MANIFEST, root, now)?;
        let manifest: Manifest =
            wire::decode_canonical(&envelope.body, MAX_MANIFEST_BYTES, "manifest")?;
        manifest.validate()?;
        let signed = SignedManifest {
            id: Hash::of(bytes),
            bytes: bytes.into(),
            seq: envelope.seq,
            chunks: chunk_list(&manifest),
            manifest,
        };
        Ok((envelope.expires, signed))
    }
}

/// An update's distinct chunks in manifest order: (hash, length).
pub type ChunkList = Arc<[(Hash, u32)]>;

/// The distinct-chunk list of `manifest` (what [`SignedManifest::chunks`] holds).
pub(crate) fn chunk_list(manifest: &Manifest) -> ChunkList {
    manifest
        .distinct_chunk_list()
        .iter()
        .map(|c| (c.hash(), c.size()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::manifest::FileEntry;
    use crate::content::manifest::tests::two_files;
    use proptest::prelude::*;

    fn root() -> SecretKey {
        SecretKey::from_seed([7; 32])
    }

    #[test]
    fn signed_manifest_opens_with_the_root_key() {
        let signed = SignedManifest::sign(&root(), 1, two_files()).expect("valid");
        let opened = SignedManifest::open(&signed.bytes, &root().public(), 0).expect("opens");
        assert_eq!(opened.id, signed.id);
        assert_eq!(opened.manifest, two_files());
    }

    #[test]
    fn other_signer_is_refused() {
        let signed =
            SignedManifest::sign(&SecretKey::from_seed([8; 32]), 1, two_files()).expect("valid");
        let err = SignedManifest::open(&signed.bytes, &root().public(), 0).unwrap_err();
        assert!(matches!(err, TrustError::UnknownSigner { .. }));
    }

    #[test]
    fn wrong_tag_is_refused_even_with_a_good_signature() {
        let env = Envelope::sign(
            &root(),
            "arbor/other/v1",
            1,
            None,
            wire::encode(&two_files()),
        );
        let err = SignedManifest::open(&wire::encode(&env), &root().public(), 0).unwrap_err();
        assert!(matches!(err, TrustError::WrongTag { .. }));
    }

    #[test]
    fn expired_objects_are_refused() {
        let env = Envelope::sign(
            &root(),
            TAG_MANIFEST,
            1,
            Some(100),
            wire::encode(&two_files()),
        );
        // Expiries allow for clocks that are a little apart.
        let lapse = 100 + CLOCK_TOLERANCE;
        assert_eq!(
            env.verify(TAG_MANIFEST, &root().public(), lapse - 1),
            Ok(())
        );
        assert_eq!(
            env.verify(TAG_MANIFEST, &root().public(), lapse),
            Err(TrustError::Expired {
                expires: 100,
                now: lapse
            })
        );
    }

    #[test]
    fn tampered_fields_break_the_signature() {
        let env = Envelope::sign(&root(), TAG_MANIFEST, 1, None, wire::encode(&two_files()));
        let mut seq = env.clone();
        seq.seq = 2;
        let mut body = env.clone();
        body.body[3] ^= 1;
        let mut exp = env.clone();
        exp.expires = Some(u64::MAX);
        for e in [seq, body, exp] {
            assert_eq!(
                e.verify(TAG_MANIFEST, &root().public(), 0),
                Err(TrustError::BadSignature)
            );
        }
    }

    #[test]
    fn invalid_manifest_is_refused_even_when_signed() {
        let mut m = two_files();
        m.files[0].path = "../../etc/passwd".into();
        let env = Envelope::sign(&root(), TAG_MANIFEST, 1, None, wire::encode(&m));
        let err = SignedManifest::open(&wire::encode(&env), &root().public(), 0).unwrap_err();
        assert!(matches!(err, TrustError::Manifest(_)), "{err}");
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let key = SecretKey::generate().expect("random");
        key.write_new(&path).expect("write");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(SecretKey::read(&path).expect("read").public(), key.public());
        assert!(key.write_new(&path).is_err(), "overwrote a key file");
    }

    #[test]
    fn garbage_key_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, text) in [
            "",
            "ed25519:zz",
            "ed25519:00",
            "rsa:00",
            &"ed25519:".repeat(9),
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path().join(format!("k{i}"));
            std::fs::write(&path, text).expect("write");
            assert!(
                matches!(SecretKey::read(&path), Err(KeyFileError::Format { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn an_over_limit_manifest_is_not_signed() {
        let mut m = two_files();
        let template = m.files[1].clone();
        let long = vec!["p".repeat(240); 4].join("/");
        m.files = (0..70_000)
            .map(|i| FileEntry {
                path: format!("{i:07}/{long}"),
                ..template.clone()
            })
            .collect();
        m.total_size = 70_000;
        let err = SignedManifest::sign(&root(), 1, m).unwrap_err();
        assert!(
            matches!(err, TrustError::Wire(WireError::TooLarge { .. })),
            "{err}"
        );
    }

    #[test]
    fn node_id_is_a_libp2p_peer_id() {
        let id = root().public().node_id();
        assert!(id.starts_with("12D3KooW"), "{id}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = SignedManifest::open(&bytes, &root().public(), 0);
        }

        #[test]
        fn mutated_manifests_never_open(pos in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let signed = SignedManifest::sign(&root(), 1, two_files()).expect("valid");
            let mut bytes = signed.bytes.to_vec();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(SignedManifest::open(&bytes, &root().public(), 0).is_err());
        }

        #[test]
        fn truncated_manifests_never_open(cut in 0usize..400) {
            let signed = SignedManifest::sign(&root(), 1, two_files()).expect("valid");
            let end = cut.min(signed.bytes.len() - 1);
            prop_assert!(SignedManifest::open(&signed.bytes[..end], &root().public(), 0).is_err());
        }
    }
}
