//! Rules: what a node lets its own children have, as signed, versioned messages, and
//! what follows from them for any node in the tree. Pure and sans-IO.
//!
//! Owns the rule set a node sets for its children ([`Rules`]: groups of children and
//! approvals of updates for groups, with waves, deadlines, subtree scope and halts),
//! its signed form ([`SignedRules`], an envelope tagged [`TAG_RULES`]), the checks a
//! receiver makes on one, the [`RuleBook`] of the newest rule set per issuer that a
//! node holds, and [`Availability`]: which updates a node, or one of its children, may
//! have. Availability is computed down the node's certificate path, one level at a
//! time, and each level is clipped to what the level above had: that is the "subset"
//! rule, and because every receiver computes it from rule sets signed by its own
//! ancestors, a parent cannot widen what it was given (PROTOCOL.md §14).
//!
//! Time comes in as an argument; nothing here reads a clock, a store or the network.
//! Persisting rule sets and the highest version seen, sending them, and acting on
//! availability belong to the store, the daemon and the engine.

mod book;
pub mod wave;

pub use book::RuleBook;

pub use wave::{BadWave, HaltReason, Outcomes, bucket, in_wave, parse_wave, should_halt};

use crate::content::Hash;
use crate::content::names::{NameError, check_name};
use crate::trust::member::Membership;
use crate::trust::{Envelope, PublicKey, SecretKey, TrustError, memo};
use crate::wire::{self, WireError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Domain-separation tag of rule sets.
pub const TAG_RULES: &str = "arbor/rules/v1";
/// Largest encoded rule set body.
pub const MAX_RULES_BYTES: usize = 1024 * 1024;
/// Largest encoded rule set envelope.
pub const MAX_RULES_ENVELOPE_BYTES: usize = MAX_RULES_BYTES + 256;
/// Most groups one rule set may define (besides the built-in [`ALL`]).
pub const MAX_RULE_GROUPS: usize = 256;
/// Most approvals one rule set may hold.
pub const MAX_APPROVALS: usize = 4096;
/// Longest halt reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// A whole group, in basis points: waves run from 0 to this.
pub const FULL_WAVE: u16 = 10_000;
/// The built-in group of every child. Never stored, never created or deleted.
pub const ALL: &str = "all";

/// A node's rules for its own children: the body of an `arbor/rules/v1` envelope.
///
/// The version and the expiry are the envelope's `seq` and `expires`. On the wire
/// `groups` and `approvals` are arrays sorted by their keys (PROTOCOL.md §14.2), so
/// that the maps here have exactly one encoding. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Group name → the children in it (node keys). [`ALL`] is never listed.
    #[serde(with = "group_list")]
    pub groups: BTreeMap<String, BTreeSet<PublicKey>>,
    /// Unix seconds when this version was set.
    pub issued: u64,
    /// The node that set them: its node key, which must have signed the envelope.
    pub issuer: PublicKey,
    /// Update and group → the terms of its approval.
    #[serde(with = "approval_list")]
    pub approvals: BTreeMap<ApprovalKey, Approval>,
}

/// What an approval approves: an update, for a group of the issuer's children.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApprovalKey {
    pub update: Hash,
    /// A group of the rule set, or [`ALL`].
    pub group: String,
}

/// The terms of one approval. (On the wire it is one entry of the `approvals` array,
/// together with its key: see `approval_list`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Basis points of the group it reaches, 0 to [`FULL_WAVE`] (see [`in_wave`]).
    pub wave: u16,
    /// Unix seconds from which the wave counts as [`FULL_WAVE`]: the time by which the
    /// whole group is to have the update.
    pub deadline: Option<u64>,
    /// Applies to the whole subtree below each member, whatever the members' own rules.
    pub subtree: bool,
    /// Stop automatically when failure reports pass this threshold.
    pub halt: Option<Halt>,
    /// Stopped: the approval makes nothing available while this is set.
    pub halted: Option<Halted>,
}

impl Approval {
    /// An approval of a wave of `wave` basis points, without deadline, scope or halts.
    pub fn wave(wave: u16) -> Approval {
        Approval {
            wave,
            deadline: None,
            subtree: false,
            halt: None,
            halted: None,
        }
    }

    /// The wave in force at `now`: [`FULL_WAVE`] from the deadline on.
    pub fn effective_wave(&self, now: u64) -> u16 {
        match self.deadline {
            Some(deadline) if now >= deadline => FULL_WAVE,
            _ => self.wave,
        }
    }

    /// Whether this approval makes `update` available to the issuer's child `member`,
    /// given that `member` is in the approval's group: not halted, and in the wave.
    pub fn reaches(&self, update: &Hash, member: &PublicKey, now: u64) -> bool {
        self.halted.is_none() && in_wave(update, member, self.effective_wave(now))
    }

    /// Whether `outcomes` should halt this approval (never when it has no threshold or
    /// is halted already).
    pub fn should_halt(&self, outcomes: Outcomes) -> Option<HaltReason> {
        match (&self.halt, &self.halted) {
            (Some(halt), None) => should_halt(halt, outcomes),
            _ => None,
        }
    }
}

/// An automatic halt threshold; at least one field is set. Fields in canonical order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// Halt once at least this many nodes failed (at least 1).
    pub failures: Option<u64>,
    /// Halt once failed / reported nodes reaches this many basis points (1 to 10,000).
    pub fraction: Option<u16>,
}

/// Why and when an approval was halted. Fields in canonical order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halted {
    /// Unix seconds.
    pub at: u64,
    /// For people: 1 to [`MAX_REASON_LEN`] bytes, no control characters.
    pub reason: String,
}

/// A rule set whose content breaks the rules of §14.2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRules {
    #[error("bad group name: {0}")]
    GroupName(#[source] NameError),
    #[error("group {ALL:?} is built in: it cannot be created, deleted or listed")]
    BuiltInGroup,
    #[error("{0} groups, over the limit of {MAX_RULE_GROUPS}")]
    TooManyGroups(usize),
    #[error("{0} approvals, over the limit of {MAX_APPROVALS}")]
    TooManyApprovals(usize),
    #[error("no group {group:?}: create it first")]
    NoSuchGroup { group: String },
    #[error("wave of {0} basis points, over the limit of {FULL_WAVE} (100%)")]
    Wave(u16),
    #[error(
        "a halt threshold needs a failure count of at least 1 or a fraction from 0.01% to 100%"
    )]
    Threshold,
    #[error("a halt reason must be 1 to {MAX_REASON_LEN} bytes without control characters")]
    Reason,
    #[error("expires at {expires}, not after it was issued at {issued}")]
    ExpiresBeforeIssued { issued: u64, expires: u64 },
}

/// Why a rule set, or an offer checked against rules, was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    /// Over the size limit, not canonical CBOR, or not the schema: garbage.
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("signed object has tag {found:?}, expected {TAG_RULES:?}")]
    WrongTag { found: String },
    #[error("rules signed by {signer}, which is not an ancestor of this node")]
    WrongSigner { signer: PublicKey },
    #[error("the rules' signature does not verify")]
    BadSignature,
    #[error("rules never expire; rules must")]
    NoExpiry,
    #[error("rules expired at {expires} (Unix seconds); now is {now}")]
    Expired { expires: u64, now: u64 },
    #[error("rules say they were issued by {claimed}, but {signer} signed them")]
    IssuerMismatch {
        claimed: PublicKey,
        signer: PublicKey,
    },
    #[error(
        "rules version {got} from {issuer} is not newer than version {held}, which this node holds (rollback refused)"
    )]
    Rollback {
        issuer: PublicKey,
        held: u64,
        got: u64,
    },
    #[error(
        "rules version {version} is more than a day ahead of the time they say they were issued ({issued}): forged or misdated, refused"
    )]
    VersionAhead { version: u64, issued: u64 },
    #[error(
        "rules say they were issued at {issued} (Unix seconds), more than a day ahead of this node's clock ({now})"
    )]
    IssuedAhead { issued: u64, now: u64 },
    #[error("invalid rules: {0}")]
    Invalid(#[from] InvalidRules),
    #[error("update {update} is not available to this node")]
    NotAvailable { update: Hash },
    #[error(
        "approving update {update} for group {group:?} would widen what this node has: it is not available here"
    )]
    Widens { update: Hash, group: String },
    #[error(transparent)]
    Trust(TrustError),
}

impl From<TrustError> for RulesError {
    fn from(e: TrustError) -> RulesError {
        match e {
            TrustError::Wire(w) => RulesError::Wire(w),
            TrustError::WrongTag { found, .. } => RulesError::WrongTag { found },
            TrustError::UnknownSigner { signer, .. } => RulesError::WrongSigner { signer },
            TrustError::BadSignature => RulesError::BadSignature,
            TrustError::Expired { expires, now } => RulesError::Expired { expires, now },
            other => RulesError::Trust(other),
        }
    }
}

impl Rules {
    /// An empty rule set of `issuer`, set at `issued`.
    pub fn new(issuer: PublicKey, issued: u64) -> Rules {
        Rules {
            groups: BTreeMap::new(),
            issued,
            issuer,
            approvals: BTreeMap::new(),
        }
    }

    /// Checks the invariants of §14.2 (the expiry is checked with the envelope).
    pub fn validate(&self) -> Result<(), InvalidRules> {
        if self.groups.len() > MAX_RULE_GROUPS {
            return Err(InvalidRules::TooManyGroups(self.groups.len()));
        }
        for name in self.groups.keys() {
            check_group_name(name)?;
        }
        if self.approvals.len() > MAX_APPROVALS {
            return Err(InvalidRules::TooManyApprovals(self.approvals.len()));
        }
        for (key, approval) in &self.approvals {
            if key.group != ALL && !self.groups.contains_key(&key.group) {
                return Err(InvalidRules::NoSuchGroup {
                    group: key.group.chars().take(80).collect(),
                });
            }
            check_approval(approval)?;
        }
        Ok(())
    }

    /// Whether `member` is in `group` ([`ALL`] holds every child).
    pub fn is_member(&self, group: &str, member: &PublicKey) -> bool {
        group == ALL || self.groups.get(group).is_some_and(|m| m.contains(member))
    }

    /// The groups `member` is in, [`ALL`] first.
    pub fn groups_of(&self, member: &PublicKey) -> Vec<&str> {
        std::iter::once(ALL)
            .chain(
                self.groups
                    .iter()
                    .filter(|(_, m)| m.contains(member))
                    .map(|(g, _)| g.as_str()),
            )
            .collect()
    }

    /// Creates an empty group; false if it exists.
    pub fn create_group(&mut self, name: &str) -> Result<bool, InvalidRules> {
        check_group_name(name)?;
        if self.groups.contains_key(name) {
            return Ok(false);
        }
        if self.groups.len() >= MAX_RULE_GROUPS {
            return Err(InvalidRules::TooManyGroups(self.groups.len() + 1));
        }
        self.groups.insert(name.to_string(), BTreeSet::new());
        Ok(true)
    }

    /// Deletes a group and declines every approval for it; false if there was none.
    pub fn delete_group(&mut self, name: &str) -> Result<bool, InvalidRules> {
        if name == ALL {
            return Err(InvalidRules::BuiltInGroup);
        }
        self.approvals.retain(|k, _| k.group != name);
        Ok(self.groups.remove(name).is_some())
    }

    /// Puts a child in a group; false if it already was.
    pub fn assign(&mut self, group: &str, member: PublicKey) -> Result<bool, InvalidRules> {
        Ok(self.group_mut(group)?.insert(member))
    }

    /// Takes a child out of a group; false if it was not in it.
    pub fn unassign(&mut self, group: &str, member: &PublicKey) -> Result<bool, InvalidRules> {
        Ok(self.group_mut(group)?.remove(member))
    }

    fn group_mut(&mut self, group: &str) -> Result<&mut BTreeSet<PublicKey>, InvalidRules> {
        if group == ALL {
            return Err(InvalidRules::BuiltInGroup);
        }
        self.groups
            .get_mut(group)
            .ok_or_else(|| InvalidRules::NoSuchGroup {
                group: group.chars().take(80).collect(),
            })
    }

    /// Approves `update` for `group`, replacing any earlier terms for the pair.
    pub fn approve(
        &mut self,
        update: Hash,
        group: &str,
        approval: Approval,
    ) -> Result<(), InvalidRules> {
        if group != ALL && !self.groups.contains_key(group) {
            return Err(InvalidRules::NoSuchGroup {
                group: group.chars().take(80).collect(),
            });
        }
        check_approval(&approval)?;
        let key = ApprovalKey {
            update,
            group: group.to_string(),
        };
        if !self.approvals.contains_key(&key) && self.approvals.len() >= MAX_APPROVALS {
            return Err(InvalidRules::TooManyApprovals(self.approvals.len() + 1));
        }
        self.approvals.insert(key, approval);
        Ok(())
    }

    /// Withdraws an approval; false if there was none.
    pub fn decline(&mut self, update: &Hash, group: &str) -> bool {
        self.approvals
            .remove(&ApprovalKey {
                update: *update,
                group: group.to_string(),
            })
            .is_some()
    }

    /// Marks an approval halted; false if there is no such approval.
    pub fn halt(
        &mut self,
        update: &Hash,
        group: &str,
        at: u64,
        reason: &str,
    ) -> Result<bool, InvalidRules> {
        let halted = Halted {
            at,
            reason: reason.to_string(),
        };
        check_reason(&halted.reason)?;
        let key = ApprovalKey {
            update: *update,
            group: group.to_string(),
        };
        Ok(match self.approvals.get_mut(&key) {
            Some(a) => {
                a.halted = Some(halted);
                true
            }
            None => false,
        })
    }

    /// Refuses these rules if any approval that is not halted names an update that is
    /// not in `own`, the issuer's own availability: a node cannot widen what it has.
    /// (Receivers clip such approvals anyway; this is the sender's early refusal.)
    pub fn check_within(&self, own: &Availability) -> Result<(), RulesError> {
        match self
            .approvals
            .iter()
            .find(|(k, a)| a.halted.is_none() && !own.is_available(&k.update))
        {
            Some((k, _)) => Err(RulesError::Widens {
                update: k.update,
                group: k.group.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn check_group_name(name: &str) -> Result<(), InvalidRules> {
    if name == ALL {
        return Err(InvalidRules::BuiltInGroup);
    }
    check_name("group", name).map_err(InvalidRules::GroupName)
}

fn check_approval(a: &Approval) -> Result<(), InvalidRules> {
    if a.wave > FULL_WAVE {
        return Err(InvalidRules::Wave(a.wave));
    }
    if let Some(h) = &a.halt {
        let failures_ok = h.failures.is_none_or(|n| n >= 1);
        let fraction_ok = h.fraction.is_none_or(|f| (1..=FULL_WAVE).contains(&f));
        if !failures_ok || !fraction_ok || (h.failures.is_none() && h.fraction.is_none()) {
            return Err(InvalidRules::Threshold);
        }
    }
    if let Some(h) = &a.halted {
        check_reason(&h.reason)?;
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<(), InvalidRules> {
    if reason.is_empty() || reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(InvalidRules::Reason);
    }
    Ok(())
}

/// A rule set whose signature, tag, signer, expiry, encoding and invariants have been
/// checked (or that this node signed itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRules {
    /// The canonical encoding of the envelope: what is stored and sent.
    pub bytes: Vec<u8>,
    /// The envelope's `seq`: higher is newer, per issuer.
    pub version: u64,
    /// The envelope's `expires`: the rules apply while `now < expires`.
    pub expires: u64,
    pub rules: Rules,
}

impl SignedRules {
    /// Signs `rules` with the issuer's node key.
    pub fn sign(
        key: &SecretKey,
        version: u64,
        expires: u64,
        rules: Rules,
    ) -> Result<SignedRules, RulesError> {
        if rules.issuer != key.public() {
            return Err(RulesError::IssuerMismatch {
                claimed: rules.issuer,
                signer: key.public(),
            });
        }
        check_body(&rules, expires)?;
        let body = wire::encode(&rules);
        // Refuse here what every receiver would refuse.
        if body.len() > MAX_RULES_BYTES {
            return Err(WireError::TooLarge {
                what: "rules",
                len: body.len(),
                limit: MAX_RULES_BYTES,
            }
            .into());
        }
        let envelope = Envelope::sign(key, TAG_RULES, version, Some(expires), body);
        Ok(SignedRules {
            bytes: wire::encode(&envelope),
            version,
            expires,
            rules,
        })
    }

    /// Decodes and checks untrusted bytes received by the last node of `path` (the node
    /// keys of its verified certificate chain, root node first: see [`path`]). The
    /// signer must be one of that node's ancestors. Checks run in the order of
    /// PROTOCOL.md §14.3; the version is checked by [`RuleBook::apply`].
    pub fn open(bytes: &[u8], path: &[PublicKey], now: u64) -> Result<SignedRules, RulesError> {
        let ancestors = path.split_last().map_or(&[][..], |(_, a)| a);
        open_inner(bytes, ancestors, now, true)
    }

    /// [`SignedRules::open`], sharing the result with every other opener of the very
    /// same bytes when the verification memo is on ([`crate::trust::memo`]). What the
    /// bytes alone decide (encoding, tag, signature, body) was checked when they were
    /// first opened; what depends on the receiver (a signer on its path, the expiry at
    /// `now`) is checked on every open, in the same order, so the verdict is the same.
    pub fn open_shared(
        bytes: &[u8],
        path: &[PublicKey],
        now: u64,
    ) -> Result<Arc<SignedRules>, RulesError> {
        if !memo::enabled() {
            return SignedRules::open(bytes, path, now).map(Arc::new);
        }
        let id = Hash::of(bytes);
        let Some(known) = memo::opened::<SignedRules>(&id) else {
            let opened = Arc::new(SignedRules::open(bytes, path, now)?);
            memo::remember_opened(id, opened.clone());
            return Ok(opened);
        };
        let ancestors = path.split_last().map_or(&[][..], |(_, a)| a);
        let signer = known.issuer();
        if !ancestors.contains(&signer) {
            return Err(RulesError::WrongSigner { signer });
        }
        check_issued(&known.rules, now)?;
        if crate::trust::expired(known.expires, now) {
            return Err(RulesError::Expired {
                expires: known.expires,
                now,
            });
        }
        Ok(known)
    }

    /// The node that set these rules.
    pub fn issuer(&self) -> PublicKey {
        self.rules.issuer
    }

    /// Whether the rules apply at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        !crate::trust::expired(self.expires, now)
    }
}

fn check_body(rules: &Rules, expires: u64) -> Result<(), InvalidRules> {
    rules.validate()?;
    if expires <= rules.issued {
        return Err(InvalidRules::ExpiresBeforeIssued {
            issued: rules.issued,
            expires,
        });
    }
    Ok(())
}

/// How far a rule set's version may be ahead of the time it says it was issued. Versions
/// follow the issuer's clock (PROTOCOL.md §14.1), so a version far ahead of it was
/// forged or misdated, and would lock out the issuer's real rules until it lapsed.
pub const MAX_VERSION_AHEAD: u64 = 86_400;
/// How far ahead of the receiver's clock a rule set may say it was issued.
pub const MAX_ISSUED_AHEAD: u64 = 86_400;

/// Refuses rules issued further ahead of `now` (Unix seconds) than clocks drift.
fn check_issued(rules: &Rules, now: u64) -> Result<(), RulesError> {
    if rules.issued > now.saturating_add(MAX_ISSUED_AHEAD) {
        return Err(RulesError::IssuedAhead {
            issued: rules.issued,
            now,
        });
    }
    Ok(())
}

/// Opens a rule set signed by one of `signers`; `expiry: false` skips the expiry check
/// (for rule sets restored from the store, kept for their version).
fn open_inner(
    bytes: &[u8],
    signers: &[PublicKey],
    now: u64,
    expiry: bool,
) -> Result<SignedRules, RulesError> {
    let envelope: Envelope =
        wire::decode_canonical(bytes, MAX_RULES_ENVELOPE_BYTES, "rules envelope")?;
    if envelope.tag != TAG_RULES {
        return Err(RulesError::WrongTag {
            found: envelope.tag.chars().take(64).collect(),
        });
    }
    if !signers.contains(&envelope.signer) {
        return Err(RulesError::WrongSigner {
            signer: envelope.signer,
        });
    }
    // Without the expiry, check at time 0: the signature, and nothing expires.
    envelope.verify(TAG_RULES, &envelope.signer, if expiry { now } else { 0 })?;
    let expires = envelope.expires.ok_or(RulesError::NoExpiry)?;
    let rules: Rules = wire::decode_canonical(&envelope.body, MAX_RULES_BYTES, "rules")?;
    if rules.issuer != envelope.signer {
        return Err(RulesError::IssuerMismatch {
            claimed: rules.issuer,
            signer: envelope.signer,
        });
    }
    check_body(&rules, expires)?;
    if envelope.seq > rules.issued.saturating_add(MAX_VERSION_AHEAD) {
        return Err(RulesError::VersionAhead {
            version: envelope.seq,
            issued: rules.issued,
        });
    }
    check_issued(&rules, now)?;
    Ok(SignedRules {
        bytes: bytes.to_vec(),
        version: envelope.seq,
        expires,
        rules,
    })
}

/// The node keys of a verified certificate chain ([`crate::trust::member::verify_chain`]'s
/// output), root node first: the `path` every function here takes.
pub fn path(members: &[Membership]) -> Vec<PublicKey> {
    members.iter().map(|m| m.node).collect()
}

/// What an update's availability to a node carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The earliest deadline among the approvals that grant it: the node is to have
    /// (and a client to install) the update by then.
    pub deadline: Option<u64>,
    /// Granted by a subtree approval: it is available to every node below too.
    pub subtree: bool,
}

impl Grant {
    fn merge(self, other: Grant) -> Grant {
        let deadline = match (self.deadline, other.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Grant {
            deadline,
            subtree: self.subtree || other.subtree,
        }
    }
}

fn grant_into(map: &mut BTreeMap<Hash, Grant>, update: Hash, grant: Grant) {
    let merged = match map.get(&update) {
        Some(old) => old.merge(grant),
        None => grant,
    };
    map.insert(update, merged);
}

/// The updates a node may have: fetch, serve on to its children within their own
/// availability, and (a client) install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Availability {
    /// The root node's: every update the root publishes.
    everything: bool,
    updates: BTreeMap<Hash, Grant>,
}

impl Availability {
    /// The root node's availability: everything.
    pub fn everything() -> Availability {
        Availability {
            everything: true,
            updates: BTreeMap::new(),
        }
    }

    /// Nothing at all.
    pub fn none() -> Availability {
        Availability {
            everything: false,
            updates: BTreeMap::new(),
        }
    }

    pub fn is_everything(&self) -> bool {
        self.everything
    }

    pub fn is_available(&self, update: &Hash) -> bool {
        self.everything || self.updates.contains_key(update)
    }

    /// The grant of an update, if it is listed (never for [`Availability::everything`]).
    pub fn grant(&self, update: &Hash) -> Option<&Grant> {
        self.updates.get(update)
    }

    /// The updates listed, in update id order (none for [`Availability::everything`]).
    pub fn updates(&self) -> impl Iterator<Item = (&Hash, &Grant)> {
        self.updates.iter()
    }

    /// Adds another availability: a branch node fetches in advance the union of its
    /// children's.
    pub fn union(&mut self, other: &Availability) {
        self.everything |= other.everything;
        for (u, g) in &other.updates {
            grant_into(&mut self.updates, *u, *g);
        }
    }
}

/// Checks a subset proof in one go: opens every rule set in `proof` for the last node
/// of `path` (at most one per issuer) and returns that node's availability.
pub fn availability_from_proof(
    proof: &[&[u8]],
    path: &[PublicKey],
    now: u64,
) -> Result<Availability, RulesError> {
    let mut book = RuleBook::new();
    for bytes in proof {
        book.receive(bytes, path, now)?;
    }
    Ok(book.availability(path, now))
}

/// Rule groups on the wire: an array of `{name, members}` sorted by name, members
/// sorted. Duplicates or disorder re-encode differently and are refused as
/// non-canonical.
mod group_list {
    use crate::trust::PublicKey;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Serialize)]
    struct Out<'a> {
        name: &'a str,
        members: &'a BTreeSet<PublicKey>,
    }

    #[derive(Deserialize)]
    struct In {
        name: String,
        members: BTreeSet<PublicKey>,
    }

    pub fn serialize<S: Serializer>(
        groups: &BTreeMap<String, BTreeSet<PublicKey>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<Out> = groups
            .iter()
            .map(|(name, members)| Out { name, members })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, BTreeSet<PublicKey>>, D::Error> {
        let list = Vec::<In>::deserialize(d)?;
        Ok(list.into_iter().map(|g| (g.name, g.members)).collect())
    }
}

/// Approvals on the wire: an array of maps sorted by (update, group), each the key's
/// two fields and the terms'.
mod approval_list {
    use super::{Approval, ApprovalKey, Halt, Halted};
    use crate::content::Hash;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    /// Fields in canonical key order.
    #[derive(Serialize, Deserialize)]
    struct Entry {
        halt: Option<Halt>,
        wave: u16,
        group: String,
        halted: Option<Halted>,
        update: Hash,
        subtree: bool,
        deadline: Option<u64>,
    }

    pub fn serialize<S: Serializer>(
        approvals: &BTreeMap<ApprovalKey, Approval>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<Entry> = approvals
            .iter()
            .map(|(k, a)| Entry {
                halt: a.halt,
                wave: a.wave,
                group: k.group.clone(),
                halted: a.halted.clone(),
                update: k.update,
                subtree: a.subtree,
                deadline: a.deadline,
            })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<ApprovalKey, Approval>, D::Error> {
        let list = Vec::<Entry>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(|e| {
                (
                    ApprovalKey {
                        update: e.update,
                        group: e.group,
                    },
                    Approval {
                        wave: e.wave,
                        deadline: e.deadline,
                        subtree: e.subtree,
                        halt: e.halt,
                        halted: e.halted,
                    },
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
