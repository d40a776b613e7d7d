//! Membership: certificates that chain every node back to the root key, and the join
//! tokens that let a new node obtain its first one.
//!
//! A chain is a list of [`Envelope`]s tagged [`TAG_MEMBER`]. Certificate 0 is signed by
//! the root key and names the root node; every later certificate is signed by the node
//! the previous one names, and names a child of that node. A node proves its place in
//! the tree by presenting its chain over a connection authenticated with its own key;
//! [`verify_chain`] is the only way to accept one. Time comes in as an argument.

use super::{Envelope, PublicKey, SecretKey, TrustError};
use crate::content::Hash;
use crate::content::names::{NameError, check_name};
use crate::wire::{self, WireError, fixed};
use serde::{Deserialize, Serialize};

/// Domain-separation tag of membership certificates.
pub const TAG_MEMBER: &str = "arbor/member/v1";
/// Most certificates in a chain: the deepest tree arbor accepts is this many levels.
pub const MAX_CHAIN_LEN: usize = 32;
/// Largest encoded chain accepted.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Most groups one certificate may name.
pub const MAX_GROUPS: usize = 64;
/// What a join token's text starts with.
pub const TOKEN_PREFIX: &str = "arbor-join-";

/// The body of a membership certificate. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The member: its node key, which is also its libp2p identity.
    pub node: PublicKey,
    /// The site it declared (a safe name, §7): its parent's other children at the
    /// same site are its siblings. Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// A leaf client: it installs updates and serves no children of its own.
    pub client: bool,
    /// Groups its parent put it in (the parent's rules use them).
    pub groups: Vec<String>,
    /// Unix seconds when it was issued.
    pub issued: u64,
    /// Who signed it: the root key for certificate 0, else the parent node's key.
    pub issuer: PublicKey,
}

/// Why a certificate chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("the certificate chain is empty")]
    Empty,
    #[error("the certificate chain has {0} certificates, over the limit of {MAX_CHAIN_LEN}")]
    TooLong(usize),
    #[error("certificate {index}: {source}")]
    Cert {
        index: usize,
        #[source]
        source: TrustError,
    },
    #[error("certificate {index} never expires; membership certificates must")]
    NoExpiry { index: usize },
    #[error("certificate {index} says it was issued by {claimed}, but {signer} signed it")]
    IssuerMismatch {
        index: usize,
        claimed: PublicKey,
        signer: PublicKey,
    },
    #[error("certificate {index} was issued by a client, and clients have no children")]
    IssuedByClient { index: usize },
    #[error("certificate {index} has a bad group name: {source}")]
    Group {
        index: usize,
        #[source]
        source: NameError,
    },
    #[error("certificate {index} names more than {MAX_GROUPS} groups")]
    TooManyGroups { index: usize },
    #[error("certificate {index} has a bad site name: {source}")]
    Site {
        index: usize,
        #[source]
        source: NameError,
    },
}

/// Signs a certificate for `member`, at `site` if it has one. `issuer` is the root key
/// (for the root node's own certificate) or the parent node's key.
pub fn issue(
    issuer: &SecretKey,
    member: PublicKey,
    client: bool,
    groups: Vec<String>,
    site: Option<String>,
    issued: u64,
    expires: u64,
) -> Envelope {
    let body = Membership {
        node: member,
        site,
        client,
        groups,
        issued,
        issuer: issuer.public(),
    };
    Envelope::sign(
        issuer,
        TAG_MEMBER,
        issued,
        Some(expires),
        wire::encode(&body),
    )
}

/// Checks a chain against the pinned root key at time `now` and returns its
/// memberships, the root node's first. The last one is the presenter's own.
pub fn verify_chain(
    chain: &[Envelope],
    root: &PublicKey,
    now: u64,
) -> Result<Vec<Membership>, ChainError> {
    if chain.is_empty() {
        return Err(ChainError::Empty);
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(ChainError::TooLong(chain.len()));
    }
    let mut out: Vec<Membership> = Vec::with_capacity(chain.len());
    for (index, cert) in chain.iter().enumerate() {
        let cert_err = |source| ChainError::Cert { index, source };
        let trusted = match out.last() {
            None => *root,
            Some(prev) if prev.client => return Err(ChainError::IssuedByClient { index }),
            Some(prev) => prev.node,
        };
        cert.verify(TAG_MEMBER, &trusted, now).map_err(cert_err)?;
        if cert.expires.is_none() {
            return Err(ChainError::NoExpiry { index });
        }
        let m: Membership = wire::decode_canonical(&cert.body, MAX_CHAIN_BYTES, "membership")
            .map_err(|e| cert_err(e.into()))?;
        if m.issuer != cert.signer {
            return Err(ChainError::IssuerMismatch {
                index,
                claimed: m.issuer,
                signer: cert.signer,
            });
        }
        if m.groups.len() > MAX_GROUPS {
            return Err(ChainError::TooManyGroups { index });
        }
        for g in &m.groups {
            check_name("group", g).map_err(|source| ChainError::Group { index, source })?;
        }
        if let Some(site) = &m.site {
            check_name("site", site).map_err(|source| ChainError::Site { index, source })?;
        }
        out.push(m);
    }
    Ok(out)
}

/// The expiry of a chain: the earliest of its certificates'.
pub fn chain_expires(chain: &[Envelope]) -> Option<u64> {
    chain.iter().filter_map(|c| c.expires).min()
}

/// A one-time invitation to join under a parent. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Where the parent listens (a multiaddr).
    pub addr: String,
    /// Fingerprint of the root key: blake3 of its 32 bytes.
    pub root: Hash,
    /// The site the joining node is placed at, preset by the parent's admin. Absent
    /// when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The parent's node key.
    pub parent: PublicKey,
    /// The secret the parent redeems; it stores only its blake3 hash.
    #[serde(with = "fixed")]
    pub secret: [u8; 32],
}

/// A string that is not a join token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadToken {
    #[error("a join token starts with {TOKEN_PREFIX:?}; ask the parent's admin for one")]
    Prefix,
    #[error("the join token is damaged (not hex); copy it again in full")]
    Hex,
    #[error("the join token is damaged: {0}")]
    Wire(#[from] WireError),
    #[error("the join token names a bad site: {0}")]
    Site(#[from] NameError),
}

impl JoinToken {
    /// The text form handed to the joining node's admin.
    pub fn to_text(&self) -> String {
        format!("{TOKEN_PREFIX}{}", hex::encode(wire::encode(self)))
    }

    /// Parses untrusted text.
    pub fn parse(text: &str) -> Result<JoinToken, BadToken> {
        let hex_part = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(BadToken::Prefix)?;
        if hex_part.len() > 2 * 4096 {
            return Err(BadToken::Hex);
        }
        let bytes = hex::decode(hex_part).map_err(|_| BadToken::Hex)?;
        let token: JoinToken = wire::decode_canonical(&bytes, 4096, "join token")?;
        if let Some(site) = &token.site {
            check_name("site", site)?;
        }
        Ok(token)
    }

    /// What the parent stores to recognise this token.
    pub fn secret_hash(secret: &[u8; 32]) -> Hash {
        Hash::of(secret)
    }
}

/// The fingerprint of a root key, as join tokens carry it.
pub fn root_fingerprint(root: &PublicKey) -> Hash {
    Hash::of(&root.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    /// root key 1 → root node 2 → branch 3 → leaf 4 (client).
    fn chain() -> Vec<Envelope> {
        vec![
            issue(&key(1), key(2).public(), false, vec![], None, 10, 1000),
            issue(
                &key(2),
                key(3).public(),
                false,
                vec!["lab".into()],
                Some("berlin".into()),
                10,
                1000,
            ),
            issue(&key(3), key(4).public(), true, vec![], None, 10, 900),
        ]
    }

    #[test]
    fn a_good_chain_verifies_to_its_members() {
        let ms = verify_chain(&chain(), &key(1).public(), 50).expect("valid");
        let nodes: Vec<PublicKey> = ms.iter().map(|m| m.node).collect();
        assert_eq!(
            nodes,
            vec![key(2).public(), key(3).public(), key(4).public()]
        );
        assert_eq!(ms[1].groups, vec!["lab".to_string()]);
        assert_eq!(chain_expires(&chain()), Some(900));
    }

    #[test]
    fn chains_of_another_root_expired_or_broken_are_refused() {
        let root = key(1).public();
        assert!(matches!(
            verify_chain(&chain(), &key(9).public(), 50),
            Err(ChainError::Cert {
                index: 0,
                source: TrustError::UnknownSigner { .. }
            })
        ));
        assert!(matches!(
            verify_chain(&chain(), &root, 900 + crate::trust::CLOCK_TOLERANCE),
            Err(ChainError::Cert {
                index: 2,
                source: TrustError::Expired { .. }
            })
        ));
        // A link skipped: the leaf's certificate is not signed by the root node.
        let mut skipped = chain();
        skipped.remove(1);
        assert!(matches!(
            verify_chain(&skipped, &root, 50),
            Err(ChainError::Cert {
                index: 1,
                source: TrustError::UnknownSigner { .. }
            })
        ));
        // A client cannot vouch for anyone.
        let mut below_client = chain();
        below_client.push(issue(
            &key(4),
            key(5).public(),
            false,
            vec![],
            None,
            10,
            1000,
        ));
        assert_eq!(
            verify_chain(&below_client, &root, 50),
            Err(ChainError::IssuedByClient { index: 3 })
        );
        assert_eq!(verify_chain(&[], &root, 50), Err(ChainError::Empty));
        let long: Vec<Envelope> = (0..=MAX_CHAIN_LEN).map(|_| chain()[0].clone()).collect();
        assert_eq!(
            verify_chain(&long, &root, 50),
            Err(ChainError::TooLong(MAX_CHAIN_LEN + 1))
        );
    }

    #[test]
    fn certificates_without_expiry_or_with_a_false_issuer_are_refused() {
        let body = Membership {
            node: key(2).public(),
            site: None,
            client: false,
            groups: vec![],
            issued: 1,
            issuer: key(1).public(),
        };
        let forever = Envelope::sign(&key(1), TAG_MEMBER, 1, None, wire::encode(&body));
        assert_eq!(
            verify_chain(&[forever], &key(1).public(), 5),
            Err(ChainError::NoExpiry { index: 0 })
        );
        let lying = Membership {
            issuer: key(7).public(),
            ..body
        };
        let cert = Envelope::sign(&key(1), TAG_MEMBER, 1, Some(9), wire::encode(&lying));
        assert!(matches!(
            verify_chain(&[cert], &key(1).public(), 5),
            Err(ChainError::IssuerMismatch { index: 0, .. })
        ));
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = JoinToken {
            addr: "/ip4/127.0.0.1/tcp/4001".into(),
            root: root_fingerprint(&key(1).public()),
            site: None,
            parent: key(2).public(),
            secret: [5; 32],
        };
        assert_eq!(JoinToken::parse(&t.to_text()), Ok(t.clone()));
        assert_eq!(JoinToken::parse("hello"), Err(BadToken::Prefix));
        assert_eq!(JoinToken::parse("arbor-join-zz"), Err(BadToken::Hex));
        let text = t.to_text();
        assert!(matches!(
            JoinToken::parse(&text[..text.len() - 2]),
            Err(BadToken::Wire(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_token_text_never_panics(s in "\\PC{0,300}") {
            let _ = JoinToken::parse(&s);
            let _ = JoinToken::parse(&format!("{TOKEN_PREFIX}{s}"));
        }

        #[test]
        fn arbitrary_certificate_bodies_are_refused_cleanly(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let cert = Envelope::sign(&key(1), TAG_MEMBER, 1, Some(9), body);
            prop_assert!(verify_chain(&[cert], &key(1).public(), 5).is_err());
        }
    }
}
