//! Reports: what every node tells its parent about the updates it knows, and the
//! roll-ups that carry the whole subtree's state up to the root. Pure and sans-IO.
//!
//! Owns the report a node signs ([`Report`] in a [`SignedReport`], an envelope tagged
//! [`TAG_REPORT`]): its own state per update ([`UpdateState`]: available, downloading,
//! downloaded, installed or failed, with bytes by source), node counts per state and
//! update for its whole subtree and for each of its groups of children ([`Counts`]),
//! capped per-node detail for drill-down ([`NodeDetail`]), the recent rule refusals
//! in the subtree ([`RuleRefusal`]), and the proof of the failures in it
//! ([`proof::Proof`]). It owns the checks a parent makes on a child's report (a client's
//! may carry nothing about descendants), and the [`Rollup`] a parent keeps: the newest
//! report of each child, from which it builds its own report (PROTOCOL.md §15) and
//! decides halts (§14.7) on proven failures only.
//!
//! Reports are state snapshots, not events: each replaces the reporter's previous one,
//! and the envelope's `seq` orders them, so a report delivered twice counts once.
//!
//! Time comes in as an argument; nothing here reads a clock, a store or the network.
//! Persisting reports and sequence numbers, sending them and debouncing belong to the
//! store, the daemon and the engine.

use crate::content::Hash;
use crate::content::names::{NameError, check_name};
use crate::rules::{ALL, ApprovalKey, HaltReason, MAX_RULE_GROUPS, Outcomes, Rules};
use crate::trust::member::MAX_CHAIN_LEN;
use crate::trust::{Envelope, PublicKey, SecretKey, TrustError};
use crate::wire::{self, WireError};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// Domain-separation tag of reports.
pub const TAG_REPORT: &str = "arbor/report/v1";
/// Largest encoded report body. Large enough for the counts of 257 groups × 256 updates
/// with room to spare, so that a report built by [`Rollup::report`] always fits (its
/// detail is cut to the room left).
pub const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;
/// Largest encoded report envelope.
pub const MAX_REPORT_ENVELOPE_BYTES: usize = MAX_REPORT_BYTES + 256;
/// Most updates in one node's own list, in one [`NodeDetail`], and in each roll-up map
/// (`subtree`, and each group's).
pub const MAX_UPDATES: usize = 256;
/// Most per-node detail entries (descendants of the reporter) one report carries.
pub const MAX_DETAIL: usize = 2048;
/// Most groups one report counts, [`ALL`] included.
pub const MAX_GROUPS: usize = MAX_RULE_GROUPS + 1;
/// Most rule refusals one report carries.
pub const MAX_REFUSALS: usize = 32;
/// Longest failure or refusal reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Deepest place in the tree: the root node is at depth 0, and chains are at most
/// [`MAX_CHAIN_LEN`] certificates long.
pub const MAX_DEPTH: u32 = MAX_CHAIN_LEN as u32 - 1;

/// Where a node stands with one update. Text on the wire (`"available"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Known (offered and available to it), not being fetched.
    Available,
    /// Being fetched: some of its bytes are here.
    Downloading,
    /// Every byte is here and verified.
    Downloaded,
    /// Installed (clients).
    Installed,
    /// Gave up, with a reason.
    Failed,
}

impl State {
    /// Every state, in the order [`Counts`] holds them on the wire.
    pub const ALL: [State; 5] = [
        State::Available,
        State::Downloading,
        State::Downloaded,
        State::Installed,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Available => "available",
            State::Downloading => "downloading",
            State::Downloaded => "downloaded",
            State::Installed => "installed",
            State::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a [`State`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "not an update state: {0:?} (expected available, downloading, downloaded, installed or failed)"
)]
pub struct BadState(pub String);

impl FromStr for State {
    type Err = BadState;
    fn from_str(s: &str) -> Result<State, BadState> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| BadState(s.chars().take(40).collect()))
    }
}

/// One node's state for one update. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    pub state: State,
    /// Why it is in this state (1 to [`MAX_REASON_LEN`] bytes, no control characters):
    /// required for [`State::Failed`], optional otherwise (an installer's note).
    pub reason: Option<String>,
    /// The update id.
    pub update: Hash,
    /// Bytes of the update held here and verified.
    pub bytes_done: u64,
    /// Bytes of the update in all (its distinct chunks); at least `bytes_done`.
    pub bytes_total: u64,
    /// Bytes of it received from the parent.
    pub from_parent: u64,
    /// Bytes of it received from siblings.
    pub from_siblings: u64,
}

impl UpdateState {
    /// A state without failure reason or bytes received.
    pub fn new(update: Hash, state: State, bytes_done: u64, bytes_total: u64) -> UpdateState {
        UpdateState {
            state,
            reason: None,
            update,
            bytes_done,
            bytes_total,
            from_parent: 0,
            from_siblings: 0,
        }
    }

    /// A failure, its reason made fit for the wire ([`sanitize_reason`]).
    pub fn failed(update: Hash, reason: &str, bytes_done: u64, bytes_total: u64) -> UpdateState {
        UpdateState {
            reason: Some(sanitize_reason(reason)),
            ..UpdateState::new(update, State::Failed, bytes_done, bytes_total)
        }
    }
}

/// Nodes per state for one update. On the wire an array of five counts, in the order of
/// [`State::ALL`]. Sums saturate: a count never wraps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "[u64; 5]", into = "[u64; 5]")]
pub struct Counts {
    pub available: u64,
    pub downloading: u64,
    pub downloaded: u64,
    pub installed: u64,
    pub failed: u64,
}

impl From<[u64; 5]> for Counts {
    fn from(a: [u64; 5]) -> Counts {
        let [available, downloading, downloaded, installed, failed] = a;
        Counts {
            available,
            downloading,
            downloaded,
            installed,
            failed,
        }
    }
}

impl From<Counts> for [u64; 5] {
    fn from(c: Counts) -> [u64; 5] {
        [
            c.available,
            c.downloading,
            c.downloaded,
            c.installed,
            c.failed,
        ]
    }
}

impl From<Counts> for Outcomes {
    fn from(c: Counts) -> Outcomes {
        c.outcomes()
    }
}

impl Counts {
    /// Counts of one node in `state`.
    pub fn one(state: State) -> Counts {
        let mut c = Counts::default();
        c.count(state);
        c
    }

    /// The nodes in `state`.
    pub fn get(&self, state: State) -> u64 {
        <[u64; 5]>::from(*self)[state.index()]
    }

    /// Counts one more node in `state`.
    pub fn count(&mut self, state: State) {
        let mut a = <[u64; 5]>::from(*self);
        a[state.index()] = a[state.index()].saturating_add(1);
        *self = a.into();
    }

    /// Adds `other`, state by state.
    pub fn add(&mut self, other: &Counts) {
        let mut a = <[u64; 5]>::from(*self);
        for (x, y) in a.iter_mut().zip(<[u64; 5]>::from(*other)) {
            *x = x.saturating_add(y);
        }
        *self = a.into();
    }

    /// The nodes counted, in any state.
    pub fn total(&self) -> u64 {
        <[u64; 5]>::from(*self)
            .into_iter()
            .fold(0, u64::saturating_add)
    }

    /// The nodes that failed.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    pub fn is_zero(&self) -> bool {
        self.total() == 0
    }

    /// What halting (PROTOCOL.md §14.7) looks at: failed and total.
    pub fn outcomes(&self) -> Outcomes {
        Outcomes {
            failed: self.failed,
            total: self.total(),
        }
    }

    /// Whether every count is at most `other`'s.
    fn within(&self, other: &Counts) -> bool {
        <[u64; 5]>::from(*self)
            .into_iter()
            .zip(<[u64; 5]>::from(*other))
            .all(|(a, b)| a <= b)
    }
}

/// One node's own state, as carried up the tree for drill-down. Fields in canonical
/// key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDetail {
    /// Unix seconds since when its parent has not been connected to it (the parent's
    /// clock; its start, if it has not been since): what it says is stale. Absent
    /// while connected. Added after the first version: omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// The node's key.
    pub node: PublicKey,
    /// Its place in the tree: 0 for the root node, its parent's plus 1 below.
    pub depth: u32,
    /// Unix seconds when the node made the report this comes from.
    pub issued: u64,
    /// Its parent; none only for the root node.
    pub parent: Option<PublicKey>,
    /// Its state per update it knows, sorted by update id, at most [`MAX_UPDATES`].
    pub updates: Vec<UpdateState>,
}

impl NodeDetail {}

/// A rule set a node refused (PROTOCOL.md §14.3), reported up so that admins see
/// forgeries, expiries and rollbacks anywhere below them. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRefusal {
    /// Unix seconds when it was refused.
    pub at: u64,
    /// The node that refused it.
    pub node: PublicKey,
    /// The envelope's signer, when it could be read.
    pub issuer: Option<PublicKey>,
    /// Why (the refusal's error message): 1 to [`MAX_REASON_LEN`] bytes, no control
    /// characters.
    pub reason: String,
}

impl RuleRefusal {
    /// A refusal by `node` at `at`, its reason made fit for the wire
    /// ([`sanitize_reason`]); pass a [`crate::rules::RulesError`]'s message.
    pub fn new(node: PublicKey, issuer: Option<PublicKey>, reason: &str, at: u64) -> RuleRefusal {
        RuleRefusal {
            at,
            node,
            issuer,
            reason: sanitize_reason(reason),
        }
    }

    /// The order of refusals on the wire: newest first, then by node, issuer, reason.
    fn order_key(&self) -> (Reverse<u64>, &PublicKey, &Option<PublicKey>, &str) {
        (Reverse(self.at), &self.node, &self.issuer, &self.reason)
    }
}

/// Makes a reason fit for the wire: control characters become spaces, it is cut to
/// [`MAX_REASON_LEN`] bytes at a character boundary, and an empty one says so.
pub fn sanitize_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(MAX_REASON_LEN));
    for c in reason.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_REASON_LEN {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        out.push_str("no reason given");
    }
    out
}

/// A node's report to its parent: the body of an `arbor/report/v1` envelope.
///
/// Its own state, and roll-ups of its whole subtree. The sequence number is the
/// envelope's `seq`. On the wire `subtree` and `groups` are arrays sorted by their keys
/// (PROTOCOL.md §15.2), so that the maps here have exactly one encoding. Fields in
/// canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The reporter's own state per update it knows, sorted by update id.
    pub own: Vec<UpdateState>,
    /// The reporter: its node key, which must have signed the envelope.
    pub node: PublicKey,
    /// The reporter's place in the tree: 0 for the root node.
    pub depth: u32,
    /// The reporter's descendants, each with its own state, sorted by (depth, node) and
    /// cut to at most [`MAX_DETAIL`] (and to what fits the size limit).
    pub nodes: Vec<NodeDetail>,
    /// The failures in the subtree, each signed by the node that failed, with the
    /// certificates that chain it through the reporter (PROTOCOL.md §15.7). Absent when
    /// there is nothing to prove. Added after the first version: omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
    /// Group name → update → nodes per state in the subtrees of the group's members:
    /// [`ALL`] (always present: every child) and the reporter's groups of children.
    #[serde(with = "group_list")]
    pub groups: BTreeMap<String, BTreeMap<Hash, Counts>>,
    /// Unix seconds when it was made.
    pub issued: u64,
    /// The reporter's parent; none only for the root node.
    pub parent: Option<PublicKey>,
    /// Update → nodes per state in the reporter's whole subtree, the reporter included.
    #[serde(with = "count_list")]
    pub subtree: BTreeMap<Hash, Counts>,
    /// Rule refusals in the subtree, newest first, at most [`MAX_REFUSALS`].
    pub refusals: Vec<RuleRefusal>,
    /// Something was left out: detail entries (here or further down), updates past
    /// [`MAX_UPDATES`] from the roll-ups, or failures past the proof's caps.
    pub truncated: bool,
}

/// A report whose content breaks the rules of §15.2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidReport {
    #[error("{count} {what}, over the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("{what} are not sorted, or repeat an entry")]
    Unsorted { what: &'static str },
    #[error("update {update} failed without a reason")]
    MissingReason { update: Hash },
    #[error("a reason must be 1 to {MAX_REASON_LEN} bytes without control characters")]
    Reason,
    #[error("update {update}: {done} bytes done of {total}")]
    BytesDone { update: Hash, done: u64, total: u64 },
    #[error("bad group name: {0}")]
    GroupName(#[source] NameError),
    #[error("the built-in group {ALL:?} is missing")]
    NoAllGroup,
    #[error("update {update} is counted with no node in any state")]
    ZeroCounts { update: Hash },
    #[error("the counts of update {update} do not add up: {why}")]
    Rollup { update: Hash, why: &'static str },
    #[error("bad place in the tree: {0}")]
    Tree(&'static str),
    #[error("bad proof: {0}")]
    Proof(#[from] ProofError),
}

/// Why a report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// Over the size limit, not canonical CBOR, or not the schema: garbage.
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("signed object has tag {found:?}, expected {TAG_REPORT:?}")]
    WrongTag { found: String },
    #[error("report signed by {signer}, expected one from {expected}")]
    WrongSigner {
        signer: PublicKey,
        expected: PublicKey,
    },
    #[error("the report's signature does not verify")]
    BadSignature,
    #[error("reports never expire, but this one says it expires at {expires}")]
    Expires { expires: u64 },
    #[error("report says it is from {claimed}, but {signer} signed it")]
    NodeMismatch {
        claimed: PublicKey,
        signer: PublicKey,
    },
    #[error("invalid report: {0}")]
    Invalid(#[from] InvalidReport),
    /// A client's report that says something about descendants: clients have none.
    #[error("a client reported {0}, but clients have no descendants")]
    Client(&'static str),
    #[error(transparent)]
    Trust(TrustError),
}

impl From<TrustError> for ReportError {
    fn from(e: TrustError) -> ReportError {
        match e {
            TrustError::Wire(w) => ReportError::Wire(w),
            TrustError::WrongTag { found, .. } => ReportError::WrongTag { found },
            TrustError::UnknownSigner { signer, trusted } => ReportError::WrongSigner {
                signer,
                expected: trusted,
            },
            TrustError::BadSignature => ReportError::BadSignature,
            TrustError::Expired { expires, .. } => ReportError::Expires { expires },
            other => ReportError::Trust(other),
        }
    }
}

impl Report {
    /// The report of a node without children (or before any reported): its own state,
    /// counted once.
    pub fn leaf(me: NodeDetail, refusals: &[RuleRefusal]) -> Report {
        Rollup::new(Vec::new()).report(Own::new(me, &BTreeMap::new(), refusals))
    }

    /// The reporter's own detail, as its parent carries it up.
    pub fn detail(&self) -> NodeDetail {
        NodeDetail {
            lost: None,
            node: self.node,
            depth: self.depth,
            issued: self.issued,
            parent: self.parent,
            updates: self.own.clone(),
        }
    }

    /// The reporter's detail, then its descendants'.
    pub fn details(&self) -> impl Iterator<Item = NodeDetail> + '_ {
        std::iter::once(self.detail()).chain(self.nodes.iter().cloned())
    }

    /// Nodes per state for `update` in the whole subtree.
    pub fn subtree_counts(&self, update: &Hash) -> Counts {
        self.subtree.get(update).copied().unwrap_or_default()
    }

    /// Nodes per state for `update` in the subtrees of `group`'s members ([`ALL`]: every
    /// child's). Zero for a group or update not counted.
    pub fn group_counts(&self, group: &str, update: &Hash) -> Counts {
        self.groups
            .get(group)
            .and_then(|g| g.get(update))
            .copied()
            .unwrap_or_default()
    }

    /// Checks the invariants of §15.2.
    pub fn validate(&self) -> Result<(), InvalidReport> {
        // The reporter's place.
        if self.depth > MAX_DEPTH {
            return Err(InvalidReport::Tree("deeper than the longest chain"));
        }
        if (self.depth == 0) != self.parent.is_none() {
            return Err(InvalidReport::Tree(
                "a parent is given exactly for nodes below the root",
            ));
        }
        if self.parent == Some(self.node) {
            return Err(InvalidReport::Tree("a node is not its own parent"));
        }
        check_updates("own updates", &self.own)?;

        // Detail: descendants only, sorted by (depth, node), each node once.
        check_limit("detail entries", self.nodes.len(), MAX_DETAIL)?;
        let mut seen = BTreeSet::from([self.node]);
        let mut last: Option<(u32, &PublicKey)> = None;
        for d in &self.nodes {
            if d.depth <= self.depth || d.depth > MAX_DEPTH {
                return Err(InvalidReport::Tree(
                    "a detail entry is not below the reporter",
                ));
            }
            if d.parent.is_none() || d.parent == Some(d.node) {
                return Err(InvalidReport::Tree("a detail entry has no proper parent"));
            }
            let key = (d.depth, &d.node);
            if last.is_some_and(|l| l >= key) || !seen.insert(d.node) {
                return Err(InvalidReport::Unsorted {
                    what: "detail entries",
                });
            }
            last = Some(key);
            check_updates("a detail entry's updates", &d.updates)?;
        }

        // Roll-ups: subtree = every child's (`all`) + the reporter's own.
        check_limit(
            "updates counted in the subtree",
            self.subtree.len(),
            MAX_UPDATES,
        )?;
        check_limit("groups", self.groups.len(), MAX_GROUPS)?;
        let all = self.groups.get(ALL).ok_or(InvalidReport::NoAllGroup)?;
        for (name, counts) in &self.groups {
            if name != ALL {
                check_name("group", name).map_err(InvalidReport::GroupName)?;
            }
            check_limit("updates counted in a group", counts.len(), MAX_UPDATES)?;
            for (update, c) in counts {
                if c.is_zero() {
                    return Err(InvalidReport::ZeroCounts { update: *update });
                }
                let in_all = all.get(update).copied().unwrap_or_default();
                if !self.subtree.contains_key(update) || !c.within(&in_all) {
                    return Err(InvalidReport::Rollup {
                        update: *update,
                        why: "a group counts more than the subtree",
                    });
                }
            }
        }
        for (update, c) in &self.subtree {
            let mut expect = all.get(update).copied().unwrap_or_default();
            if let Ok(i) = self.own.binary_search_by(|s| s.update.cmp(update)) {
                expect.count(self.own[i].state);
            }
            if c.is_zero() {
                return Err(InvalidReport::ZeroCounts { update: *update });
            }
            if *c != expect {
                return Err(InvalidReport::Rollup {
                    update: *update,
                    why: "the subtree is not the children's plus the reporter's own",
                });
            }
        }
        if !self.truncated
            && let Some(s) = self
                .own
                .iter()
                .find(|s| !self.subtree.contains_key(&s.update))
        {
            return Err(InvalidReport::Rollup {
                update: s.update,
                why: "an update of the reporter's own is not counted",
            });
        }

        // Proof: what can be checked without keys (PROTOCOL.md §15.7).
        if let Some(p) = &self.proof {
            proof::check_shape(p, (MAX_DEPTH - self.depth) as usize + 1)?;
        }

        // Refusals: newest first, each once.
        check_limit("rule refusals", self.refusals.len(), MAX_REFUSALS)?;
        for r in &self.refusals {
            check_reason(&r.reason)?;
        }
        if self
            .refusals
            .windows(2)
            .any(|w| w[0].order_key() >= w[1].order_key())
        {
            return Err(InvalidReport::Unsorted {
                what: "rule refusals",
            });
        }
        Ok(())
    }

    /// Checks that a client's report says nothing about descendants (PROTOCOL.md §15.3):
    /// no detail, no counts but its own, no refusals but its own, nothing cut, and a
    /// proof of its own failures only.
    pub fn check_client(&self) -> Result<(), ReportError> {
        if !self.nodes.is_empty() {
            return Err(ReportError::Client("detail entries"));
        }
        if self.groups.values().any(|g| !g.is_empty()) {
            return Err(ReportError::Client("counts of children"));
        }
        if self.refusals.iter().any(|r| r.node != self.node) {
            return Err(ReportError::Client("rule refusals of other nodes"));
        }
        if self.truncated {
            return Err(ReportError::Client("detail left out"));
        }
        if self.proof.as_ref().is_some_and(|p| !p.below.is_empty()) {
            return Err(ReportError::Client("failures of other nodes"));
        }
        Ok(())
    }
}

fn check_limit(what: &'static str, count: usize, limit: usize) -> Result<(), InvalidReport> {
    if count > limit {
        return Err(InvalidReport::TooMany { what, count, limit });
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<(), InvalidReport> {
    if reason.is_empty() || reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(InvalidReport::Reason);
    }
    Ok(())
}

fn check_updates(what: &'static str, updates: &[UpdateState]) -> Result<(), InvalidReport> {
    check_limit(what, updates.len(), MAX_UPDATES)?;
    if updates.windows(2).any(|w| w[0].update >= w[1].update) {
        return Err(InvalidReport::Unsorted { what });
    }
    for s in updates {
        match (&s.reason, s.state) {
            (None, State::Failed) => return Err(InvalidReport::MissingReason { update: s.update }),
            (Some(r), _) => check_reason(r)?,
            (None, _) => {}
        }
        if s.bytes_done > s.bytes_total {
            return Err(InvalidReport::BytesDone {
                update: s.update,
                done: s.bytes_done,
                total: s.bytes_total,
            });
        }
    }
    Ok(())
}

/// A report whose signature, tag, signer, encoding and invariants have been checked (or
/// that this node signed itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReport {
    /// The canonical encoding of the envelope: what is stored and sent.
    pub bytes: Vec<u8>,
    /// The envelope's `seq`: higher is newer, per reporter.
    pub seq: u64,
    pub report: Report,
}

impl SignedReport {
    /// Signs `report` with the reporter's node key, as its `seq`th report (higher than
    /// any it signed before). Reports never expire: the envelope's `expires` is null.
    pub fn sign(key: &SecretKey, seq: u64, report: Report) -> Result<SignedReport, ReportError> {
        if report.node != key.public() {
            return Err(ReportError::NodeMismatch {
                claimed: report.node,
                signer: key.public(),
            });
        }
        report.validate()?;
        let body = wire::encode(&report);
        // Refuse here what every receiver would refuse.
        if body.len() > MAX_REPORT_BYTES {
            return Err(WireError::TooLarge {
                what: "report",
                len: body.len(),
                limit: MAX_REPORT_BYTES,
            }
            .into());
        }
        let envelope = Envelope::sign(key, TAG_REPORT, seq, None, body);
        Ok(SignedReport {
            bytes: wire::encode(&envelope),
            seq,
            report,
        })
    }

    /// Decodes and checks untrusted bytes that should be a report of `expected_signer`:
    /// the child the connection they came on is authenticated as. Checks run in the
    /// order of PROTOCOL.md §15.3; the sequence number is checked by
    /// [`Rollup::apply`].
    pub fn open(bytes: &[u8], expected_signer: &PublicKey) -> Result<SignedReport, ReportError> {
        let envelope: Envelope =
            wire::decode_canonical(bytes, MAX_REPORT_ENVELOPE_BYTES, "report envelope")?;
        if envelope.tag != TAG_REPORT {
            return Err(ReportError::WrongTag {
                found: envelope.tag.chars().take(64).collect(),
            });
        }
        if envelope.signer != *expected_signer {
            return Err(ReportError::WrongSigner {
                signer: envelope.signer,
                expected: *expected_signer,
            });
        }
        // At time 0 nothing has expired: this checks the signature.
        envelope.verify(TAG_REPORT, expected_signer, 0)?;
        if let Some(expires) = envelope.expires {
            return Err(ReportError::Expires { expires });
        }
        let report: Report = wire::decode_canonical(&envelope.body, MAX_REPORT_BYTES, "report")?;
        if report.node != envelope.signer {
            return Err(ReportError::NodeMismatch {
                claimed: report.node,
                signer: envelope.signer,
            });
        }
        report.validate()?;
        Ok(SignedReport {
            bytes: bytes.to_vec(),
            seq: envelope.seq,
            report,
        })
    }

    /// The node that made the report.
    pub fn node(&self) -> PublicKey {
        self.report.node
    }
}

/// Counts per update on the wire: an array of `{counts, update}` sorted by update.
/// Duplicates or disorder re-encode differently and are refused as non-canonical.
mod count_list {
    use super::Counts;
    use crate::content::Hash;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    /// Fields in canonical key order.
    #[derive(Serialize, Deserialize)]
    struct Entry {
        counts: Counts,
        update: Hash,
    }

    pub fn serialize<S: Serializer>(
        counts: &BTreeMap<Hash, Counts>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<Entry> = counts
            .iter()
            .map(|(update, counts)| Entry {
                counts: *counts,
                update: *update,
            })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Hash, Counts>, D::Error> {
        let list = Vec::<Entry>::deserialize(d)?;
        Ok(list.into_iter().map(|e| (e.update, e.counts)).collect())
    }
}

/// Group counts on the wire: an array of `{name, counts}` sorted by name, each `counts`
/// as in `count_list`.
mod group_list {
    use super::Counts;
    use crate::content::Hash;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    struct Out<'a> {
        name: &'a str,
        #[serde(serialize_with = "counts_ref")]
        counts: &'a BTreeMap<Hash, Counts>,
    }

    fn counts_ref<S: Serializer>(c: &&BTreeMap<Hash, Counts>, s: S) -> Result<S::Ok, S::Error> {
        super::count_list::serialize(c, s)
    }

    #[derive(Deserialize)]
    struct In {
        name: String,
        #[serde(with = "super::count_list")]
        counts: BTreeMap<Hash, Counts>,
    }

    pub fn serialize<S: Serializer>(
        groups: &BTreeMap<String, BTreeMap<Hash, Counts>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<Out> = groups
            .iter()
            .map(|(name, counts)| Out { name, counts })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, BTreeMap<Hash, Counts>>, D::Error> {
        let list = Vec::<In>::deserialize(d)?;
        Ok(list.into_iter().map(|g| (g.name, g.counts)).collect())
    }
}

pub mod proof;
mod rollup;
mod view;

use proof::{Proof, ProofError};
pub use rollup::{Own, Received, Rollup};
pub use view::{CountsView, GroupCountsView, NodeView, RefusalView, ReportView, StateView};

/// Adds every count of `from` into `into`.
fn sum_into(into: &mut BTreeMap<Hash, Counts>, from: &BTreeMap<Hash, Counts>) {
    for (u, c) in from {
        into.entry(*u).or_default().add(c);
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
