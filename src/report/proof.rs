//! Proofs of failure (PROTOCOL.md §15.7): what lets a node count a failure towards a
//! halt only when the failing node signed it itself and its certificates chain through
//! the child whose report carries it.
//!
//! Owns the statement a failing node signs ([`sign_failure`], tagged [`TAG_FAILURE`]),
//! the proof a report carries ([`Proof`]: the reporter's certificate, its own
//! statements, and the proofs of its descendants below it, each certificate once), the
//! checks a parent makes on a child's proof ([`check`], with [`Verified`], the cache
//! that makes a repeated proof cost no new signature check), and the choice of what a
//! node forwards up under [`MAX_PROOF_FAILURES`] and [`MAX_PROOF_CERTS`]
//! ([`assemble`]). Pure: time comes in as an argument.

use crate::content::Hash;
use crate::trust::member::{MAX_CHAIN_BYTES, MAX_CHAIN_LEN, Membership, TAG_MEMBER};
use crate::trust::{Envelope, PublicKey, SecretKey, TrustError};
use crate::wire::{self, WireError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Domain-separation tag of failure statements.
pub const TAG_FAILURE: &str = "arbor/failure/v1";
/// Domain-separation prefix of the path hash a statement is bound to.
pub const PATH_DOMAIN: &[u8] = b"arbor/path/v1";
/// Most failure statements one report's proof carries. With a node's children each
/// proving up to this many, a fraction threshold can still halt on a large fleet (20
/// children: 20,480 proven failures, 20% of 100,000 nodes); past it, failures are
/// counted but no longer proven. At about 535 bytes a failure (statement and
/// certificate), a full proof is about 550 KB.
pub const MAX_PROOF_FAILURES: usize = 1024;
/// Most certificates one report's proof carries (each costs its receiver a signature
/// check the first time): room for every failure under a node of its own plus the
/// branches above them.
pub const MAX_PROOF_CERTS: usize = 2 * MAX_PROOF_FAILURES;
/// How long a failure statement is good for: a statement older than this proves
/// nothing, which bounds how long an old one can be replayed.
pub const FAILURE_TTL: u64 = 7 * 24 * 3600;
/// A node still failed signs its statement again once it is this old.
pub const FAILURE_RENEW: u64 = 24 * 3600;
/// Largest encoded failure statement body.
const MAX_FAILURE_BYTES: usize = 256;

/// The body of a failure statement: "I, the signer, at this place in the tree, failed
/// this update". Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// [`path_hash`] of the signer's certificate path, root node first, itself last:
    /// a statement counts only where it was made.
    pub path: Hash,
    /// The update that failed.
    pub update: Hash,
}

/// blake3(`arbor/path/v1` ‖ the 32-byte node keys of a path, root node first).
pub fn path_hash(path: &[PublicKey]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(PATH_DOMAIN);
    for k in path {
        h.update(&k.0);
    }
    Hash(*h.finalize().as_bytes())
}

/// Signs `key`'s failure of `update` at `path` (its own, itself last), at `now` (Unix
/// seconds, also the envelope's `seq`); good for [`FAILURE_TTL`].
pub fn sign_failure(key: &SecretKey, path: &[PublicKey], update: Hash, now: u64) -> Envelope {
    let body = Failure {
        path: path_hash(path),
        update,
    };
    Envelope::sign(
        key,
        TAG_FAILURE,
        now,
        Some(now.saturating_add(FAILURE_TTL)),
        wire::encode(&body),
    )
}

/// A report's proof: one node of the tree of failing nodes below the reporter. Fields
/// in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// This node's membership certificate, signed by its parent (for the reporter, by
    /// the node its report goes to).
    pub cert: Envelope,
    /// Proofs of this node's children with failures in their subtrees, sorted by the
    /// node each certificate names, each once.
    pub below: Vec<Proof>,
    /// This node's own failure statements, sorted by update, each update once.
    pub failed: Vec<Envelope>,
}

impl Proof {
    /// The failure statements in it and below.
    pub fn failures(&self) -> usize {
        self.failed.len() + self.below.iter().map(Proof::failures).sum::<usize>()
    }
}

/// Why a proof was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("{count} {what} in the proof, over the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("the proof goes deeper than the longest certificate chain")]
    TooDeep,
    #[error("a proof entry proves nothing (no failure in it or below)")]
    Empty,
    #[error("{0} in the proof are not sorted, or repeat one")]
    Unsorted(&'static str),
    #[error("a certificate in the proof is refused: {0}")]
    Certificate(TrustError),
    #[error("a certificate in the proof says it was issued by {claimed}, but {signer} signed it")]
    IssuerMismatch {
        claimed: PublicKey,
        signer: PublicKey,
    },
    #[error("a certificate or failure statement in the proof never expires")]
    NoExpiry,
    #[error("the proof's certificate names {named}, not the reporter {reporter}")]
    NotTheReporter {
        named: PublicKey,
        reporter: PublicKey,
    },
    #[error("{0} appears twice on one path of the proof")]
    Loop(PublicKey),
    #[error("the proof has nodes below {0}, a client, and clients certify nobody")]
    BelowClient(PublicKey),
    #[error("a failure statement of {node} is refused: {source}")]
    Statement {
        node: PublicKey,
        #[source]
        source: TrustError,
    },
    #[error("the failure statement of {node} was made at another place in the tree")]
    WrongPath { node: PublicKey },
    #[error("this node has no certificate path to check proofs against")]
    NoPath,
}

/// Checks what can be checked of a proof without keys or time (PROTOCOL.md §15.7): at
/// most [`MAX_PROOF_FAILURES`] statements and [`MAX_PROOF_CERTS`] certificates, at most
/// `levels` levels deep, and no entry without a failure in it or below.
pub fn check_shape(proof: &Proof, levels: usize) -> Result<(), ProofError> {
    fn walk(
        p: &Proof,
        level: usize,
        levels: usize,
        n: &mut (usize, usize),
    ) -> Result<(), ProofError> {
        if level > levels {
            return Err(ProofError::TooDeep);
        }
        if p.failed.is_empty() && p.below.is_empty() {
            return Err(ProofError::Empty);
        }
        n.0 += p.failed.len();
        n.1 += 1;
        for b in &p.below {
            walk(b, level + 1, levels, n)?;
        }
        Ok(())
    }
    let mut n = (0, 0);
    walk(proof, 1, levels, &mut n)?;
    let limit = |what, count, limit| {
        if count > limit {
            Err(ProofError::TooMany { what, count, limit })
        } else {
            Ok(())
        }
    };
    limit("failure statements", n.0, MAX_PROOF_FAILURES)?;
    limit("certificates", n.1, MAX_PROOF_CERTS)
}

/// The membership a certificate signed by `signer` states, once its signature, issuer
/// and expiry are checked; not whether it expired by now (an expired certificate is
/// left out of a proof, not refused).
pub fn open_certificate(cert: &Envelope, signer: &PublicKey) -> Result<Membership, ProofError> {
    cert.verify(TAG_MEMBER, signer, 0)
        .map_err(ProofError::Certificate)?;
    let m: Membership = wire::decode_canonical(&cert.body, MAX_CHAIN_BYTES, "membership")
        .map_err(|e| ProofError::Certificate(e.into()))?;
    if m.issuer != cert.signer {
        return Err(ProofError::IssuerMismatch {
            claimed: m.issuer,
            signer: cert.signer,
        });
    }
    if cert.expires.is_none() {
        return Err(ProofError::NoExpiry);
    }
    Ok(m)
}

/// A failure statement whose signature, signer and place were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub update: Hash,
    /// When it stops counting: its own expiry or its chain's, whichever is first.
    pub expires: u64,
    pub envelope: Envelope,
}

/// One node of a checked proof: what its parent holds and forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub node: PublicKey,
    pub cert: Envelope,
    /// The earliest expiry of the certificates from the reporter down to this one.
    pub expires: u64,
    pub failed: Vec<Statement>,
    pub below: Vec<Checked>,
}

impl Checked {
    /// Every statement in it and below, with the node that signed it.
    pub fn statements(&self) -> Vec<(&PublicKey, &Statement)> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(c) = stack.pop() {
            out.extend(c.failed.iter().map(|s| (&c.node, s)));
            stack.extend(&c.below);
        }
        out
    }
}

/// What a signature check found, kept by the blake3 of the envelope's encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Cert(Membership),
    Failure(Failure),
}

/// Signed objects of a proof already checked: a report that repeats them costs no new
/// signature check. A parent keeps one per child, replaced by what each new report of
/// the child used, so it holds no more than the child's newest proof.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    seen: HashMap<Hash, Seen>,
}

/// A child's proof, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckedProof {
    /// The proof less what hangs below an expired certificate; none if nothing is
    /// left.
    pub checked: Option<Checked>,
    /// The checks this proof used: the cache for the child's next report.
    pub verified: Verified,
}

/// Checks `proof`, carried by the report of `reporter`, at the node whose certificate
/// path is `path` (root node first, itself last), at `now` (Unix seconds), reusing what
/// `cache` holds (PROTOCOL.md §15.7):
///
/// - every certificate is signed by the node named above it (the first by this node),
///   names a node not above it on its path, expires, and is not below a client's;
/// - the first names the reporter;
/// - every statement is signed by the node its entry's certificate names, and is bound
///   to that node's path: this node's path and the certificates down to it;
/// - entries and statements are sorted, each once.
///
/// A certificate or statement that expired is no error, but counts for nothing: what
/// hangs below an expired certificate is left out unchecked, and an expired statement
/// is kept with its expiry, which counting and forwarding compare with their own time.
/// Anything else refuses the whole proof. `checks` counts the signature
/// checks made (those the cache did not spare), refused or not.
pub fn check(
    proof: &Proof,
    reporter: &PublicKey,
    path: &[PublicKey],
    now: u64,
    cache: &Verified,
    checks: &mut u64,
) -> Result<CheckedProof, ProofError> {
    let anchor = *path.last().ok_or(ProofError::NoPath)?;
    let mut c = Checker {
        now,
        cache,
        out: Verified::default(),
        checks,
    };
    let mut path = path.to_vec();
    let (_, checked) = c.node(proof, anchor, &mut path, Some(reporter), u64::MAX)?;
    Ok(CheckedProof {
        checked,
        verified: c.out,
    })
}

struct Checker<'a> {
    now: u64,
    cache: &'a Verified,
    out: Verified,
    checks: &'a mut u64,
}

impl Checker<'_> {
    /// Checks one entry, signed by `anchor`, with `path` the path down to `anchor`.
    /// Returns the node it names and what of it still counts.
    fn node(
        &mut self,
        p: &Proof,
        anchor: PublicKey,
        path: &mut Vec<PublicKey>,
        expect: Option<&PublicKey>,
        expires_above: u64,
    ) -> Result<(PublicKey, Option<Checked>), ProofError> {
        let m = self.cert(&p.cert, &anchor)?;
        if let Some(reporter) = expect
            && m.node != *reporter
        {
            return Err(ProofError::NotTheReporter {
                named: m.node,
                reporter: *reporter,
            });
        }
        if path.contains(&m.node) {
            return Err(ProofError::Loop(m.node));
        }
        if path.len() >= MAX_CHAIN_LEN {
            return Err(ProofError::TooDeep);
        }
        if m.client && !p.below.is_empty() {
            return Err(ProofError::BelowClient(m.node));
        }
        let expires = expires_above.min(p.cert.expires.unwrap_or(0));
        if expires <= self.now {
            // Expired: nothing here or below counts, so nothing more is checked.
            return Ok((m.node, None));
        }
        path.push(m.node);
        let here = path_hash(path);
        let mut failed = Vec::with_capacity(p.failed.len());
        let mut last: Option<Hash> = None;
        for e in &p.failed {
            let f = self.statement(e, &m.node)?;
            if last.is_some_and(|l| l >= f.update) {
                return Err(ProofError::Unsorted("failure statements"));
            }
            last = Some(f.update);
            if f.path != here {
                return Err(ProofError::WrongPath { node: m.node });
            }
            // Kept even if expired by now: what counts is filtered by time where it is
            // counted or forwarded, as time passes anyway.
            failed.push(Statement {
                update: f.update,
                expires: e.expires.unwrap_or(0).min(expires),
                envelope: e.clone(),
            });
        }
        let mut below = Vec::with_capacity(p.below.len());
        let mut last: Option<PublicKey> = None;
        for b in &p.below {
            let (node, checked) = self.node(b, m.node, path, None, expires)?;
            if last.is_some_and(|l| l >= node) {
                return Err(ProofError::Unsorted("proof entries"));
            }
            last = Some(node);
            below.extend(checked);
        }
        path.pop();
        let checked = (!failed.is_empty() || !below.is_empty()).then(|| Checked {
            node: m.node,
            cert: p.cert.clone(),
            expires,
            failed,
            below,
        });
        Ok((m.node, checked))
    }

    /// The membership a certificate signed by `anchor` states.
    fn cert(&mut self, cert: &Envelope, anchor: &PublicKey) -> Result<Membership, ProofError> {
        let id = Hash::of(&wire::encode(cert));
        let m = match self.cache.seen.get(&id).or_else(|| self.out.seen.get(&id)) {
            // The very bytes checked before: signed by the signer they name.
            Some(Seen::Cert(m)) if cert.tag == TAG_MEMBER && cert.signer == *anchor => m.clone(),
            _ => {
                *self.checks += 1;
                open_certificate(cert, anchor)?
            }
        };
        self.out.seen.insert(id, Seen::Cert(m.clone()));
        Ok(m)
    }

    /// The failure a statement signed by `node` states.
    fn statement(&mut self, e: &Envelope, node: &PublicKey) -> Result<Failure, ProofError> {
        let err = |source| ProofError::Statement {
            node: *node,
            source,
        };
        let id = Hash::of(&wire::encode(e));
        let f = match self.cache.seen.get(&id).or_else(|| self.out.seen.get(&id)) {
            Some(Seen::Failure(f)) if e.tag == TAG_FAILURE && e.signer == *node => f.clone(),
            _ => {
                *self.checks += 1;
                e.verify(TAG_FAILURE, node, 0).map_err(err)?;
                let f: Failure =
                    wire::decode_canonical(&e.body, MAX_FAILURE_BYTES, "failure statement")
                        .map_err(|w: WireError| err(w.into()))?;
                f
            }
        };
        if e.expires.is_none() {
            return Err(ProofError::NoExpiry);
        }
        self.out.seen.insert(id, Seen::Failure(f.clone()));
        Ok(f)
    }
}

/// Builds the proof a node sends up: its own certificate `cert`, its own statements
/// `own` (sorted by update), and as much of its children's checked proofs (`below`,
/// by child) as the caps allow, leaving out what expired by `now`. Returns the proof
/// (none without a certificate, or with nothing to prove) and whether failures were
/// left out for the caps.
///
/// When it must cut, it takes failures round-robin over children and updates (the
/// first of each update of each child, then the second, ...), so that one child, or
/// one update failing everywhere, cannot crowd out the others.
pub fn assemble(
    cert: Option<&Envelope>,
    own: &[Envelope],
    below: &BTreeMap<PublicKey, &Checked>,
    now: u64,
) -> (Option<Proof>, bool) {
    let Some(cert) = cert.filter(|_| !own.is_empty() || !below.is_empty()) else {
        return (None, false);
    };
    // Every live node below, numbered in walk order, with its parent's number.
    struct Node<'a> {
        c: &'a Checked,
        up: Option<usize>,
    }
    let mut nodes: Vec<Node> = Vec::new();
    // Candidates: (rank within its child and update, update, child, node number, statement).
    let mut cands: Vec<(usize, Hash, usize, usize, &Statement)> = Vec::new();
    for (child_no, root) in below.values().enumerate() {
        let mut rank: HashMap<Hash, usize> = HashMap::new();
        let mut stack = vec![(*root, None)];
        while let Some((c, up)) = stack.pop() {
            if c.expires <= now {
                continue;
            }
            let no = nodes.len();
            nodes.push(Node { c, up });
            for s in c.failed.iter().filter(|s| s.expires > now) {
                let r = rank.entry(s.update).or_default();
                cands.push((*r, s.update, child_no, no, s));
                *r += 1;
            }
            stack.extend(c.below.iter().rev().map(|b| (b, Some(no))));
        }
    }
    cands.sort_by_key(|c| (c.0, c.1, c.2, c.3));

    let mut room_failures = MAX_PROOF_FAILURES.saturating_sub(own.len());
    let mut room_certs = MAX_PROOF_CERTS - 1;
    let mut taken = vec![false; nodes.len()];
    let mut chosen: HashMap<usize, Vec<&Statement>> = HashMap::new();
    let mut cut = false;
    for (_, _, _, no, s) in cands {
        // The certificates this failure needs that are not taken yet.
        let mut new = Vec::new();
        let mut at = Some(no);
        while let Some(n) = at.filter(|n| !taken[*n]) {
            new.push(n);
            at = nodes[n].up;
        }
        if room_failures == 0 || new.len() > room_certs {
            cut = true;
            continue;
        }
        room_failures -= 1;
        room_certs -= new.len();
        for n in new {
            taken[n] = true;
        }
        chosen.entry(no).or_default().push(s);
    }

    fn build(
        no: usize,
        nodes: &[Node],
        children: &HashMap<usize, Vec<usize>>,
        chosen: &HashMap<usize, Vec<&Statement>>,
    ) -> Proof {
        let mut failed: Vec<&Statement> = chosen.get(&no).cloned().unwrap_or_default();
        failed.sort_by_key(|s| s.update);
        let mut below: Vec<(PublicKey, Proof)> = children
            .get(&no)
            .into_iter()
            .flatten()
            .map(|k| (nodes[*k].c.node, build(*k, nodes, children, chosen)))
            .collect();
        below.sort_by_key(|(node, _)| *node);
        Proof {
            cert: nodes[no].c.cert.clone(),
            below: below.into_iter().map(|(_, p)| p).collect(),
            failed: failed.into_iter().map(|s| s.envelope.clone()).collect(),
        }
    }
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut tops = Vec::new();
    for (no, node) in nodes.iter().enumerate().filter(|(no, _)| taken[*no]) {
        match node.up {
            Some(up) => children.entry(up).or_default().push(no),
            None => tops.push(no),
        }
    }
    let mut tops: Vec<(PublicKey, Proof)> = tops
        .into_iter()
        .map(|no| (nodes[no].c.node, build(no, &nodes, &children, &chosen)))
        .collect();
    tops.sort_by_key(|(node, _)| *node);
    let tops: Vec<Proof> = tops.into_iter().map(|(_, p)| p).collect();
    if own.is_empty() && tops.is_empty() {
        return (None, cut);
    }
    (
        Some(Proof {
            cert: cert.clone(),
            below: tops,
            failed: own.to_vec(),
        }),
        cut,
    )
}
