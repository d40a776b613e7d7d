//! Content: what an update *is*, independent of where it is stored or how it travels.
//!
//! Owns content hashes ([`Hash`]), the chunker that cuts files into content-defined
//! chunks ([`chunker`]), the manifest that lists an update's files and chunks
//! ([`manifest`]), chunk deltas against an earlier version ([`delta`]), and the rules
//! for safe names and relative paths ([`names`]).
//! Nothing here touches the store, keys or the network.

pub mod chunker;
pub mod delta;
pub mod manifest;
pub mod names;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A blake3 hash: the identity of a chunk, and of an update (the hash of its signed
/// manifest's canonical encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(#[serde(with = "crate::wire::fixed")] pub [u8; 32]);

impl Hash {
    /// Hashes `data` with blake3.
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits: enough to tell chunks apart in messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

/// Hashes map keys that are uniformly random already (blake3 digests, node keys) by
/// their first bytes, where SipHash would spend more time than the lookup.
///
/// Only for maps no peer can fill with keys of its choosing: an engine inserts an
/// update id (the hash of a manifest it verified) and nothing a message merely names.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(b);
    }
}

/// The [`std::hash::BuildHasher`] of [`DigestHasher`]s.
pub type DigestState = std::hash::BuildHasherDefault<DigestHasher>;

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a blake3 hash (64 hex digits): {0:?}")]
pub struct BadHash(pub String);

impl FromStr for Hash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Hash, BadHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadHash(s.chars().take(80).collect()))?;
        Ok(Hash(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"arbor");
        assert_eq!(h.to_hex().parse::<Hash>(), Ok(h));
        assert_eq!(h.to_hex(), blake3::hash(b"arbor").to_hex().as_str());
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("zz".parse::<Hash>().is_err());
        assert!("ab".repeat(31).parse::<Hash>().is_err());
        assert!("ab".repeat(33).parse::<Hash>().is_err());
    }
}
