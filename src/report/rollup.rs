//! The roll-up a parent keeps: the newest report of each child, from which it builds
//! its own report (PROTOCOL.md §15.4) and decides halts (§14.7).

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

/// What a parent keeps of its children's reports: the newest of each, from which it
/// builds its own report and decides halts.
///
/// Reports are snapshots: the newest replaces the one held, so resending it after a
/// reconnect counts once. A child's report stays until [`Rollup::remove`] (the child
/// was revoked or moved), also while the child is offline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    held: BTreeMap<PublicKey, SignedReport>,
}

impl Rollup {
    pub fn new() -> Rollup {
        Rollup::default()
    }

    /// Takes a verified report if it is newer than the one held from its reporter.
    pub fn apply(&mut self, report: SignedReport) -> Received {
        if let Some(held) = self.held.get(&report.node()) {
            if held.bytes == report.bytes {
                return Received::Duplicate;
            }
            if report.seq <= held.seq {
                return Received::Stale {
                    held: held.seq,
                    got: report.seq,
                };
            }
        }
        self.held.insert(report.node(), report);
        Received::Applied
    }

    /// Opens untrusted bytes from `child` ([`SignedReport::open`]) and applies them. A
    /// refused report changes nothing.
    pub fn receive(&mut self, child: &PublicKey, bytes: &[u8]) -> Result<Received, ReportError> {
        Ok(self.apply(SignedReport::open(bytes, child)?))
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
        self.held.get(child)
    }

    /// The sequence number held from `child`: what the store persists with it.
    pub fn seq(&self, child: &PublicKey) -> Option<u64> {
        self.held.get(child).map(|r| r.seq)
    }

    /// Builds this node's report from its own detail `me` (its key, parent, depth, the
    /// time and its own states; unsorted states are sorted), its groups of children
    /// (`Rules.groups` of its own rules; [`ALL`] is added) and the rule refusals it made
    /// itself (PROTOCOL.md §15.4):
    ///
    /// - `subtree`: its own states, each counted once, plus every child's `subtree`;
    /// - `groups`: for [`ALL`] and each group, the sum of the `subtree`s of the member
    ///   children that have reported (a child in two groups counts in both);
    /// - `nodes`: each child's detail and its `nodes`, their depths re-based below this
    ///   node, sorted by (depth, node), each node once, cut to [`MAX_DETAIL`] and to the
    ///   room left under [`MAX_REPORT_BYTES`];
    /// - `refusals`: its own and every child's, newest first, each once, cut to
    ///   [`MAX_REFUSALS`];
    /// - `truncated`: detail or updates were cut here, or a child's report was cut.
    ///
    /// If more than [`MAX_UPDATES`] updates are counted, the roll-ups keep those with
    /// the most nodes (then the lowest ids). Given valid `me`, `groups` and refusals the
    /// result is valid whatever the children reported.
    pub fn report(
        &self,
        mut me: NodeDetail,
        groups: &BTreeMap<String, BTreeSet<PublicKey>>,
        own_refusals: &[RuleRefusal],
    ) -> Report {
        me.updates.sort_by_key(|s| s.update);
        let mut truncated = false;

        // `all`, and the caller's groups of children (at most MAX_GROUPS in all).
        let mut rolled: BTreeMap<String, BTreeMap<Hash, Counts>> = BTreeMap::new();
        let mut all = BTreeMap::new();
        for r in self.held.values() {
            sum_into(&mut all, &r.report.subtree);
        }
        for (name, members) in groups
            .iter()
            .filter(|(name, _)| *name != ALL)
            .take(MAX_GROUPS - 1)
        {
            let mut sum = BTreeMap::new();
            for r in members.iter().filter_map(|m| self.held.get(m)) {
                sum_into(&mut sum, &r.report.subtree);
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
            .chain(self.held.values().flat_map(|r| &r.report.refusals))
            .collect();
        refusals.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        refusals.dedup();
        truncated |= self.held.values().any(|r| r.report.truncated);

        let mut report = Report {
            own: me.updates,
            node: me.node,
            depth: me.depth,
            nodes: Vec::new(),
            groups: rolled,
            issued: me.issued,
            parent: me.parent,
            subtree,
            refusals: refusals.into_iter().take(MAX_REFUSALS).cloned().collect(),
            truncated,
        };
        let (nodes, cut) = self.detail(&report);
        report.nodes = nodes;
        report.truncated |= cut;
        report
    }

    /// The detail of this node's descendants for `base` (the report without detail),
    /// and whether any was cut.
    fn detail(&self, base: &Report) -> (Vec<NodeDetail>, bool) {
        let below = base.depth.saturating_add(1);
        if below > MAX_DEPTH {
            // No valid tree goes deeper: counted, but not detailed.
            return (Vec::new(), !self.held.is_empty());
        }
        // Every candidate as (depth, node, its report, the entry in that report's detail
        // or none for the reporter itself), depths re-based below this node: a child's
        // claimed depth does not matter, only how far below it each entry is.
        let mut all: Vec<(u32, &PublicKey, &Report, Option<&NodeDetail>)> = Vec::new();
        for r in self.held.values().map(|r| &r.report) {
            all.push((below, &r.node, r, None));
            all.extend(r.nodes.iter().filter_map(|d| {
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
    /// halting counts them (PROTOCOL.md §14.7): for a `subtree` approval the members'
    /// whole subtrees, otherwise the members' own states only. `groups` are this node's
    /// groups of children.
    pub fn outcomes(
        &self,
        groups: &BTreeMap<String, BTreeSet<PublicKey>>,
        update: &Hash,
        group: &str,
        subtree: bool,
    ) -> Outcomes {
        let members: Vec<&SignedReport> = if group == ALL {
            self.held.values().collect()
        } else {
            groups
                .get(group)
                .into_iter()
                .flatten()
                .filter_map(|c| self.held.get(c))
                .collect()
        };
        let mut counts = Counts::default();
        for r in members {
            if subtree {
                counts.add(&r.report.subtree_counts(update));
            } else if let Ok(i) = r.report.own.binary_search_by(|s| s.update.cmp(update)) {
                counts.count(r.report.own[i].state);
            }
        }
        counts.outcomes()
    }

    /// The approvals of `rules` (this node's own) that the children's reports say should
    /// halt now, with why: those with a threshold, not halted yet, past it.
    pub fn due_halts(&self, rules: &Rules) -> Vec<(ApprovalKey, HaltReason)> {
        rules
            .approvals
            .iter()
            // Counting costs a pass over the children: only for a threshold that can halt.
            .filter(|(_, approval)| approval.halt.is_some() && approval.halted.is_none())
            .filter_map(|(key, approval)| {
                let outcomes =
                    self.outcomes(&rules.groups, &key.update, &key.group, approval.subtree);
                approval
                    .should_halt(outcomes)
                    .map(|reason| (key.clone(), reason))
            })
            .collect()
    }
}
