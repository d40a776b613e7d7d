//! Wire encoding: canonical CBOR for every object arbor signs, hashes or sends.
//!
//! Owns the rules that make an encoding *canonical* (one byte string per value) and the
//! size limits applied before anything is decoded. Every decode of untrusted bytes goes
//! through [`decode_canonical`]: it bounds the input, never panics, and refuses any
//! encoding that is not the one [`encode`] would produce, so that hashes and signatures
//! over encodings are unambiguous. The rules themselves are specified in
//! `protocol/PROTOCOL.md`; this module must not know about keys, stores or the network.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why bytes could not be decoded as a wire object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{what} is {len} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{what} is not valid CBOR for its schema: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} is not in canonical CBOR form")]
    NonCanonical { what: &'static str },
}

/// Encodes a value as canonical CBOR.
///
/// Canonical form follows RFC 8949 §4.2.1 (deterministic encoding): shortest integer
/// heads, definite lengths, map keys in bytewise order of their encodings. Struct fields
/// are declared in that order in this crate, and `decode_canonical` re-checks it.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding into a Vec only fails when memory cannot be reserved, which aborts anyway.
    match cbor4ii::serde::to_vec(Vec::new(), value) {
        Ok(bytes) => bytes,
        Err(e) => panic!("CBOR encoding into memory failed: {e:?}"),
    }
}

/// The length of `value`'s encoding, counted without keeping the bytes.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    /// Counts what is written to it.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Counting never fails, so neither does the encoding.
    match cbor4ii::serde::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(e) => panic!("CBOR encoding into a counter failed: {e:?}"),
    }
}

/// Decodes untrusted bytes, enforcing `limit` and canonical form.
///
/// `what` names the object in error messages ("manifest", "envelope", ...).
pub fn decode_canonical<T>(bytes: &[u8], limit: usize, what: &'static str) -> Result<T, WireError>
where
    T: Serialize + DeserializeOwned,
{
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            what,
            len: bytes.len(),
            limit,
        });
    }
    let value: T = cbor4ii::serde::from_slice(bytes).map_err(|e| WireError::Malformed {
        what,
        reason: short_reason(&e),
    })?;
    // Re-encoding is the canonical check: it also rejects trailing bytes, unknown
    // fields, non-shortest integers and indefinite lengths in one comparison.
    if !encodes_to(&value, bytes) {
        return Err(WireError::NonCanonical { what });
    }
    Ok(value)
}

/// Whether `value` encodes to exactly `bytes`: compared as it is encoded, without
/// keeping a copy, and given up at the first byte that differs.
fn encodes_to<T: Serialize>(value: &T, bytes: &[u8]) -> bool {
    /// Checks what is written to it against the rest of the expected bytes.
    struct Compare<'a>(&'a [u8]);
    impl std::io::Write for Compare<'_> {
        fn write(&mut self, written: &[u8]) -> std::io::Result<usize> {
            match self.0.strip_prefix(written) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(written.len())
                }
                None => Err(std::io::ErrorKind::InvalidData.into()),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut rest = Compare(bytes);
    cbor4ii::serde::to_writer(&mut rest, value).is_ok() && rest.0.is_empty()
}

fn short_reason(e: &dyn std::fmt::Debug) -> String {
    let mut s = format!("{e:?}");
    s.truncate(200);
    s
}

/// Serde adapter for fixed-size byte arrays (hashes, keys, signatures): CBOR byte
/// strings on the wire, lowercase hex in human-readable formats such as JSON output.
pub mod fixed {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                let mut out = [0u8; N];
                hex::decode_to_slice(v, &mut out)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))?;
                Ok(out)
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V::<N>)
        } else {
            d.deserialize_bytes(V::<N>)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        n: u64,
        #[serde(with = "fixed")]
        key: [u8; 4],
        name: String,
    }

    fn sample() -> Sample {
        Sample {
            n: 7,
            key: [1, 2, 3, 4],
            name: "x".into(),
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let bytes = encode(&sample());
        assert_eq!(
            decode_canonical::<Sample>(&bytes, 1024, "sample"),
            Ok(sample())
        );
    }

    #[test]
    fn fixed_arrays_are_byte_strings() {
        let bytes = encode(&sample());
        // 0x44 = byte string of length 4, followed by the key itself.
        let pos = bytes.windows(5).position(|w| w == [0x44, 1, 2, 3, 4]);
        assert!(pos.is_some(), "{}", hex::encode(&bytes));
    }

    #[test]
    fn rejects_over_limit_before_decoding() {
        let bytes = encode(&sample());
        let err = decode_canonical::<Sample>(&bytes, bytes.len() - 1, "sample").unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }));
    }

    #[test]
    fn the_canonical_check_wants_every_byte_and_no_more() {
        let bytes = encode(&sample());
        assert!(encodes_to(&sample(), &bytes));
        assert!(!encodes_to(&sample(), &[&bytes[..], &[0]].concat()));
        assert!(!encodes_to(&sample(), &bytes[..bytes.len() - 1]));
        let mut other = bytes.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        assert!(!encodes_to(&sample(), &other));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode(&sample());
        bytes.push(0);
        assert!(decode_canonical::<Sample>(&bytes, 1024, "sample").is_err());
    }

    #[test]
    fn rejects_non_shortest_integer() {
        // The same map with n encoded as a 1-byte-argument integer (0x18 0x07) instead of 0x07.
        let canonical = encode(&sample());
        let i = canonical
            .iter()
            .position(|&b| b == 0x07)
            .expect("n is encoded");
        let mut long = canonical[..i].to_vec();
        long.extend_from_slice(&[0x18, 0x07]);
        long.extend_from_slice(&canonical[i + 1..]);
        assert_eq!(
            decode_canonical::<Sample>(&long, 1024, "sample"),
            Err(WireError::NonCanonical { what: "sample" })
        );
    }

    #[test]
    fn rejects_wrong_length_fixed_bytes() {
        #[derive(Serialize)]
        struct Short {
            n: u64,
            #[serde(with = "serde_bytes")]
            key: Vec<u8>,
            name: String,
        }
        let bytes = encode(&Short {
            n: 7,
            key: vec![1, 2, 3],
            name: "x".into(),
        });
        assert!(matches!(
            decode_canonical::<Sample>(&bytes, 1024, "sample"),
            Err(WireError::Malformed { .. })
        ));
    }
}
