//! The roll-up a parent keeps: the newest report of each child, with the failures its
//! proof proves, from which it builds its own report (PROTOCOL.md §15.4) and decides
//! halts on proven failures only (§14.7, §15.7).

use super::proof::{self, Checked, Verified};
use super::*;

/// What [`Rollup::receive`] did with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Newer than the one held (or the first): it replaced it.
    Applied,
    /// The very report held, delivered again: nothing changed.
    Duplicate,
    /// Not newer than the one held (an older `seq`, or another report with the same
    /// `seq`): ignored, nothing changed. Not an error: a report can arrive late.
    Stale { held: u64, got: u64 },
}

/// A child's report as held, with what its proof proves.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    report: SignedReport,
    /// Its proof, checked, less what hung below an expired certificate.
    checked: Option<Checked>,
    /// The signed objects its proof used: what the child's next report need not have
    /// checked again.
    verified: Verified,
    /// Proven failures by update: the node, and until when it counts.
    proven: BTreeMap<Hash, Vec<(PublicKey, u64)>>,
}

/// What a node brings to its own report besides its children's (see
/// [`Rollup::report`]).
#[derive(Clone, Debug)]
pub struct Own<'a> {
    /// Its key, parent, depth, the time (`issued`, Unix seconds: also the time against
    /// which what expired is left out) and its own states.
    pub me: NodeDetail,
    /// Its groups of children (`Rules.groups` of its own rules; [`ALL`] is added).
    pub groups: &'a BTreeMap<String, BTreeSet<PublicKey>>,
    /// The rule refusals it made itself.
    pub refusals: &'a [RuleRefusal],
    /// Its membership certificate: without one (the root node) no proof goes up.
    pub cert: Option<&'a Envelope>,
    /// Its own failure statements, sorted by update.
    pub failures: &'a [Envelope],
    /// Its children that are not connected, and since when (Unix seconds).
    pub lost: &'a BTreeMap<PublicKey, u64>,
}

static NONE_LOST: BTreeMap<PublicKey, u64> = BTreeMap::new();

impl<'a> Own<'a> {
    /// A node without certificate, failure statements or lost children.
    pub fn new(
        me: NodeDetail,
        groups: &'a BTreeMap<String, BTreeSet<PublicKey>>,
        refusals: &'a [RuleRefusal],
    ) -> Own<'a> {
        Own {
            me,
            groups,
            refusals,
            cert: None,
            failures: &[],
            lost: &NONE_LOST,
        }
    }
}

/// What a parent keeps of its children's reports: the newest of each, from which it
/// builds its own report and decides halts.
///
/// Reports are snapshots: the newest replaces the one held, so resending it after a
/// reconnect counts once. A child's report stays until [`Rollup::remove`] (the child
/// was revoked or moved), also while the child is offline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    held: BTreeMap<PublicKey, Held>,
    /// This node's certificate path, root node first, itself last: proofs are checked
    /// against it.
    path: Vec<PublicKey>,
    /// Signature checks made on children's proofs so far.
    signature_checks: u64,
}

impl Rollup {
    /// The roll-up of the node whose certificate path is `path` (root node first,
    /// itself last; empty: it can prove nothing, and refuses every proof).
    pub fn new(path: Vec<PublicKey>) -> Rollup {
        Rollup {
            path,
            ..Rollup::default()
        }
    }

    /// Opens untrusted bytes from `child` ([`SignedReport::open`]; a client's may say
    /// nothing about descendants, [`Report::check_client`]), checks its proof at `now`
    /// (Unix seconds, [`proof::check`]) if it is newer than the report held, and keeps
    /// it. A refused report changes nothing. The very bytes held cost no check at all,
    /// and a proof repeating what the last one held costs no signature check.
    pub fn receive(
        &mut self,
        child: &PublicKey,
        client: bool,
        bytes: &[u8],
        now: u64,
    ) -> Result<Received, ReportError> {
        let held = self.held.get(child);
        if held.is_some_and(|h| h.report.bytes == bytes) {
            return Ok(Received::Duplicate);
        }
        let report = SignedReport::open(bytes, child)?;
        if client {
            report.report.check_client()?;
        }
        if let Some(h) = held
            && report.seq <= h.report.seq
        {
            return Ok(Received::Stale {
                held: h.report.seq,
                got: report.seq,
            });
        }
        let checked = match &report.report.proof {
            Some(p) => {
                let cache = held.map(|h| &h.verified);
                let empty = Verified::default();
                proof::check(
                    p,
                    child,
                    &self.path,
                    now,
                    cache.unwrap_or(&empty),
                    &mut self.signature_checks,
                )
                .map_err(|e| ReportError::Invalid(e.into()))?
            }
            None => proof::CheckedProof::default(),
        };
        let mut proven: BTreeMap<Hash, Vec<(PublicKey, u64)>> = BTreeMap::new();
        for (node, s) in checked.checked.iter().flat_map(Checked::statements) {
            proven.entry(s.update).or_default().push((*node, s.expires));
        }
        self.held.insert(
            *child,
            Held {
                report,
                checked: checked.checked,
                verified: checked.verified,
                proven,
            },
        );
        Ok(Received::Applied)
    }

    /// Signature checks made on children's proofs so far: what the caller paces a
    /// child's reports by.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
    }

    /// Forgets `child`'s report; false if none was held.
    pub fn remove(&mut self, child: &PublicKey) -> bool {
        self.held.remove(child).is_some()
    }

    /// The children with a report held, in key order.
    pub fn children(&self) -> impl Iterator<Item = &PublicKey> {
        self.held.keys()
    }

    /// The report held from `child`.
    pub fn get(&self, child: &PublicKey) -> Option<&SignedReport> {
        self.held.get(child).map(|h| &h.report)
    }

    /// The sequence number held from `child`: what the store persists with it.
    pub fn seq(&self, child: &PublicKey) -> Option<u64> {
        self.held.get(child).map(|h| h.report.seq)
    }

    /// Every failure the children's proofs prove at `now`, as (node, update).
    pub fn proven(&self, now: u64) -> BTreeSet<(PublicKey, Hash)> {
        self.held
            .values()
            .flat_map(|h| &h.proven)
            .flat_map(|(u, nodes)| {
                nodes
                    .iter()
                    .filter(move |(_, until)| *until > now)
                    .map(move |(n, _)| (*n, *u))
            })
            .collect()
    }

    /// Builds this node's report from `own` (PROTOCOL.md §15.4; unsorted own states are
    /// sorted):
    ///
    /// - `subtree`: its own states, each counted once, plus every child's `subtree`;
    /// - `groups`: for [`ALL`] and each group, the sum of the `subtree`s of the member
    ///   children that have reported (a child in two groups counts in both);
    /// - `nodes`: each child's detail (marked `lost` if the child is not connected) and
    ///   those entries of its `nodes` whose parent links lead to the child, their depths
    ///   re-based below this node, sorted by (depth, node), each node once, cut to
    ///   [`MAX_DETAIL`] and to the room left under [`MAX_REPORT_BYTES`];
    /// - `proof`: its own certificate and failure statements, and its children's
    ///   checked proofs less what expired, cut to the caps ([`proof::assemble`]);
    /// - `refusals`: its own and every child's, newest first, each once, cut to
    ///   [`MAX_REFUSALS`];
    /// - `truncated`: detail, updates or proven failures were cut here, or a child's
    ///   report was cut.
    ///
    /// If more than [`MAX_UPDATES`] updates are counted, the roll-ups keep those with
    /// the most nodes (then the lowest ids). Given a valid `own` the result is valid
    /// whatever the children reported.
    pub fn report(&self, own: Own<'_>) -> Report {
        let Own {
            mut me,
            groups,
            refusals: own_refusals,
            cert,
            failures,
            lost,
        } = own;
        me.updates.sort_by_key(|s| s.update);
        let mut truncated = false;

        // `all`, and the caller's groups of children (at most MAX_GROUPS in all).
        let mut rolled: BTreeMap<String, BTreeMap<Hash, Counts>> = BTreeMap::new();
        let mut all = BTreeMap::new();
        for h in self.held.values() {
            sum_into(&mut all, &h.report.report.subtree);
        }
        for (name, members) in groups
            .iter()
            .filter(|(name, _)| *name != ALL)
            .take(MAX_GROUPS - 1)
        {
            let mut sum = BTreeMap::new();
            for h in members.iter().filter_map(|m| self.held.get(m)) {
                sum_into(&mut sum, &h.report.report.subtree);
            }
            rolled.insert(name.clone(), sum);
        }
        let mut subtree = all.clone();
        for s in &me.updates {
            subtree.entry(s.update).or_default().count(s.state);
        }
        rolled.insert(ALL.to_string(), all);

        // Too many updates: keep the most counted, and only those.
        if subtree.len() > MAX_UPDATES {
            let mut ranked: Vec<(&Hash, u64)> =
                subtree.iter().map(|(u, c)| (u, c.total())).collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let keep: BTreeSet<Hash> = ranked
                .into_iter()
                .take(MAX_UPDATES)
                .map(|(u, _)| *u)
                .collect();
            subtree.retain(|u, _| keep.contains(u));
            for g in rolled.values_mut() {
                g.retain(|u, _| keep.contains(u));
            }
            truncated = true;
        }

        let mut refusals: Vec<&RuleRefusal> = own_refusals
            .iter()
            .chain(self.held.values().flat_map(|h| &h.report.report.refusals))
            .collect();
        refusals.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        refusals.dedup();
        truncated |= self.held.values().any(|h| h.report.report.truncated);

        let below: BTreeMap<PublicKey, &Checked> = self
            .held
            .iter()
            .filter_map(|(c, h)| h.checked.as_ref().map(|p| (*c, p)))
            .collect();
        let (proof, cut) = proof::assemble(cert, failures, &below, me.issued);
        truncated |= cut;

        let mut report = Report {
            own: me.updates,
            node: me.node,
            depth: me.depth,
            nodes: Vec::new(),
            proof,
            groups: rolled,
            issued: me.issued,
            parent: me.parent,
            subtree,
            refusals: refusals.into_iter().take(MAX_REFUSALS).cloned().collect(),
            truncated,
        };
        let (nodes, cut) = self.detail(&report, lost);
        report.nodes = nodes;
        report.truncated |= cut;
        report
    }

    /// The detail of this node's descendants for `base` (the report without detail),
    /// with the children in `lost` marked, and whether any was cut.
    fn detail(&self, base: &Report, lost: &BTreeMap<PublicKey, u64>) -> (Vec<NodeDetail>, bool) {
        let below = base.depth.saturating_add(1);
        if below > MAX_DEPTH {
            // No valid tree goes deeper: counted, but not detailed.
            return (Vec::new(), !self.held.is_empty());
        }
        // Every candidate as (depth, node, its report, the entry in that report's detail
        // or none for the reporter itself), depths re-based below this node: a child's
        // claimed depth does not matter, only how far below it each entry is. A child
        // speaks only for its own subtree: entries whose parent links do not lead to it
        // are left out.
        let mut all: Vec<(u32, &PublicKey, &Report, Option<&NodeDetail>)> = Vec::new();
        for r in self.held.values().map(|h| &h.report.report) {
            all.push((below, &r.node, r, None));
            if r.nodes.is_empty() {
                continue;
            }
            let mut reach = BTreeSet::from([r.node]);
            all.extend(r.nodes.iter().filter_map(|d| {
                if !d.parent.is_some_and(|p| reach.contains(&p)) {
                    return None;
                }
                reach.insert(d.node);
                let depth = i64::from(d.depth) - i64::from(r.depth) + i64::from(below);
                u32::try_from(depth)
                    .ok()
                    .filter(|depth| (below + 1..=MAX_DEPTH).contains(depth))
                    .map(|depth| (depth, &d.node, r, Some(d)))
            }));
        }
        all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));

        let room = MAX_REPORT_BYTES.saturating_sub(wire::encoded_len(base) + 16);
        let mut used = 0usize;
        let mut seen = BTreeSet::from([base.node]);
        let mut out = Vec::new();
        for (depth, node, r, entry) in all {
            if !seen.insert(*node) {
                continue;
            }
            let detail = match entry {
                None => NodeDetail {
                    lost: lost.get(node).copied(),
                    parent: Some(base.node),
                    depth,
                    ..r.detail()
                },
                Some(d) => NodeDetail { depth, ..d.clone() },
            };
            let len = wire::encoded_len(&detail);
            if out.len() == MAX_DETAIL || used + len > room {
                return (out, true);
            }
            used += len;
            out.push(detail);
        }
        (out, false)
    }

    /// The outcomes of `update` among `group`'s members ([`ALL`]: every child), as
    /// halting counts them at `now` (PROTOCOL.md §14.7): for a `subtree` approval the
    /// members' whole subtrees, otherwise the members' own states only. `total` is
    /// what the reports claim; `failed` counts only failures their proofs prove, each
    /// node once. `groups` are this node's groups of children.
    pub fn outcomes(
        &self,
        groups: &BTreeMap<String, BTreeSet<PublicKey>>,
        update: &Hash,
        group: &str,
        subtree: bool,
        now: u64,
    ) -> Outcomes {
        let members: Vec<(&PublicKey, &Held)> = if group == ALL {
            self.held.iter().collect()
        } else {
            groups
                .get(group)
                .into_iter()
                .flatten()
                .filter_map(|c| self.held.get_key_value(c))
                .collect()
        };
        let mut total = 0u64;
        let mut failed: BTreeSet<&PublicKey> = BTreeSet::new();
        for (child, h) in members {
            let proven = h
                .proven
                .get(update)
                .into_iter()
                .flatten()
                .filter(|(_, until)| *until > now)
                .map(|(node, _)| node);
            let r = &h.report.report;
            if subtree {
                total = total.saturating_add(r.subtree_counts(update).total());
                failed.extend(proven);
            } else if r.own.binary_search_by(|s| s.update.cmp(update)).is_ok() {
                total = total.saturating_add(1);
                failed.extend(proven.filter(|node| *node == child));
            }
        }
        Outcomes {
            failed: failed.len() as u64,
            total,
        }
    }

    /// The approvals of `rules` (this node's own) that the children's proven failures
    /// say should halt at `now`, with why: those with a threshold, not halted yet, past
    /// it.
    pub fn due_halts(&self, rules: &Rules, now: u64) -> Vec<(ApprovalKey, HaltReason)> {
        rules
            .approvals
            .iter()
            // Counting costs a pass over the children: only for a threshold that can halt.
            .filter(|(_, approval)| approval.halt.is_some() && approval.halted.is_none())
            .filter_map(|(key, approval)| {
                let outcomes = self.outcomes(
                    &rules.groups,
                    &key.update,
                    &key.group,
                    approval.subtree,
                    now,
                );
                approval
                    .should_halt(outcomes)
                    .map(|reason| (key.clone(), reason))
            })
            .collect()
    }
}
