//! The daemon's side of reports (PROTOCOL.md §15): children's reports and the report
//! sequence number kept in the store (read back at start-up by `saved`), and the views an admin reads of them: the roll-up, the
//! subtree as a tree (each node with its report's age, its failures proven or merely
//! claimed, and marked stale when it cannot be fresh), each update's rollout per group,
//! and the Prometheus metrics. Building, signing, sending and checking reports is the
//! engine's.

use super::{Daemon, module_name, now_ms};
use crate::content::Hash;
use crate::net::command::{
    Answer, GroupRollout, Reply, RolloutList, SubtreeReports, TreeNode, TreeUpdate, TreeView,
    UpdateRollout,
};
use crate::report::{NodeDetail, Report, ReportView, State};
use crate::rules::ALL;
use crate::trust::PublicKey;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

/// Where the last report sequence number sent is kept, in the store's metadata.
pub(super) const META_REPORT_SEQ: &str = "report_seq";
/// How far past the kept sequence number a new run starts: more reports than a node
/// sends in the second between two keeps.
pub(super) const SEQ_SKIP: u64 = 1000;
/// A node still downloading whose report is older than this is shown as stale. While
/// bytes arrive a node reports at least every few seconds, and each hop up adds its
/// own spacing (under a minute even for reports of 2,048 nodes' detail), so an older
/// one means the node, or a branch between, has stopped saying anything.
pub const STALE_AFTER_SECS: u64 = 300;

impl Daemon {
    /// Keeps the report sequence number, if it moved (on the tick).
    pub(super) fn keep_report_seq(&mut self) {
        let seq = self.engine.report_seq();
        if seq == self.kept_report_seq {
            return;
        }
        match self
            .node
            .store
            .update_meta(&[(META_REPORT_SEQ, &seq.to_le_bytes())], &[])
        {
            Ok(()) => self.kept_report_seq = seq,
            Err(e) => tracing::error!("cannot keep the report sequence number: {e}"),
        }
    }

    /// Keeps the children's reports that came since the last tick, in one commit.
    pub(super) fn keep_reports(&mut self) {
        if self.reports_to_keep.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.reports_to_keep);
        let entries = batch.iter().map(|(c, r)| (&c.0, &r[..]));
        if let Err(e) = self.node.store.put_reports(entries) {
            tracing::error!("cannot keep the children's reports: {e}");
        }
    }

    /// `GET /api/reports`: this node's roll-up of its subtree, and each child's report.
    pub(super) fn reports_view(&self) -> Reply {
        let rollup = self.engine.rollup();
        let children = rollup
            .children()
            .filter_map(|c| rollup.get(c))
            .map(ReportView::from)
            .collect();
        Ok(Answer::Reports(SubtreeReports {
            rollup: ReportView::from(&self.engine.report(now_ms())),
            children,
        }))
    }

    /// `GET /api/tree`: this node's subtree, each node with its state per update, the
    /// age of its report, and whether it is stale.
    pub(super) fn tree_view(&self) -> Reply {
        let now = now_ms();
        let report = self.engine.report(now);
        let proven = self.engine.rollup().proven(now / 1000);
        Ok(Answer::Tree(TreeView {
            truncated: report.truncated,
            tree: tree(&report, &proven, now / 1000),
        }))
    }

    /// `GET /api/updates`: every update this node took up, with its rollout per group
    /// of this node's children (each member counting with its whole subtree).
    pub(super) fn updates_view(&self) -> Reply {
        let report = self.engine.report(now_ms());
        let me = self.node.node_key.public();
        let own = self.engine.rules().get(&me).map(|r| &r.rules);
        let children: Vec<PublicKey> = self.engine.children().map(|(c, _)| *c).collect();
        let own_groups = own.map(|r| r.groups.clone()).unwrap_or_default();
        let now = now_ms() / 1000;
        let groups: Vec<String> = std::iter::once(ALL.to_string())
            .chain(own.into_iter().flat_map(|r| r.groups.keys().cloned()))
            .collect();
        let updates = self
            .engine
            .progress()
            .into_iter()
            .map(|p| {
                let rollout = groups
                    .iter()
                    .map(|g| {
                        let members = children
                            .iter()
                            .filter(|c| g == ALL || own.is_some_and(|r| r.is_member(g, c)))
                            .count();
                        let counts = report.group_counts(g, &p.update);
                        // Counts come from children: never trusted not to overflow.
                        let done = counts
                            .get(State::Downloaded)
                            .saturating_add(counts.get(State::Installed));
                        let total = counts.total();
                        let proven =
                            self.engine
                                .rollup()
                                .outcomes(&own_groups, &p.update, g, true, now);
                        let done_percent = (u128::from(done) * 100)
                            .checked_div(u128::from(total))
                            .unwrap_or(0);
                        GroupRollout {
                            group: g.clone(),
                            members,
                            total,
                            failed_proven: proven.failed,
                            done_percent: u64::try_from(done_percent).unwrap_or(u64::MAX),
                            available: counts.get(State::Available),
                            downloading: counts.get(State::Downloading),
                            downloaded: counts.get(State::Downloaded),
                            installed: counts.get(State::Installed),
                            failed: counts.get(State::Failed),
                        }
                    })
                    .collect();
                UpdateRollout {
                    update_id: p.update,
                    module: self.engine.manifest(&p.update).map(module_name),
                    bytes: p.bytes,
                    bytes_held: p.bytes_held,
                    available: p.available,
                    rollout,
                }
            })
            .collect();
        Ok(Answer::Updates(RolloutList { updates }))
    }

    /// `GET /metrics`: Prometheus text format.
    pub(super) fn metrics(&self) -> String {
        let stats = self.engine.stats();
        let report = self.engine.report(now_ms());
        let mut m = Metrics::default();
        m.family(
            "arbor_bytes_total",
            "counter",
            "Update bytes moved, by source and direction.",
        );
        m.sample(
            "arbor_bytes_total",
            &[("direction", "in"), ("source", "parent")],
            stats.bytes_from_parent,
        );
        m.sample(
            "arbor_bytes_total",
            &[("direction", "in"), ("source", "sibling")],
            0,
        );
        let sent: u64 = self.sent_to.values().sum();
        m.sample(
            "arbor_bytes_total",
            &[("direction", "out"), ("source", "children")],
            sent,
        );
        m.family(
            "arbor_chunks_verified_total",
            "counter",
            "Chunks received that hashed right.",
        );
        m.sample("arbor_chunks_verified_total", &[], stats.chunks_from_parent);
        m.family(
            "arbor_chunks_rejected_total",
            "counter",
            "Chunks received that failed verification.",
        );
        m.sample("arbor_chunks_rejected_total", &[], stats.bad_chunks);
        m.family("arbor_peers", "gauge", "Connected peers, by kind.");
        let connected_children = self.engine.children().filter(|(_, c)| *c).count() as u64;
        m.sample("arbor_peers", &[("kind", "children")], connected_children);
        let parent = u64::from(self.engine.parent_connected() == Some(true));
        m.sample("arbor_peers", &[("kind", "parent")], parent);
        m.family(
            "arbor_update_nodes",
            "gauge",
            "Nodes of this subtree (this node included) per update and state.",
        );
        for (update, counts) in &report.subtree {
            let id = update.to_hex();
            for state in State::ALL {
                m.sample(
                    "arbor_update_nodes",
                    &[("state", state.as_str()), ("update", &id)],
                    counts.get(state),
                );
            }
        }
        m.family(
            "arbor_update_failures_proven",
            "gauge",
            "Failures below this node per update that the failing node signed and whose \
             certificates chain through the child that reported them: what halts count.",
        );
        let mut proven: BTreeMap<Hash, u64> = BTreeMap::new();
        for (_, update) in self.engine.rollup().proven(now_ms() / 1000) {
            *proven.entry(update).or_default() += 1;
        }
        for (update, n) in &proven {
            m.sample(
                "arbor_update_failures_proven",
                &[("update", &update.to_hex())],
                *n,
            );
        }
        m.family(
            "arbor_report_signature_checks_total",
            "counter",
            "Signatures checked in children's proofs of failure (repeats cost none).",
        );
        m.sample(
            "arbor_report_signature_checks_total",
            &[],
            self.engine.rollup().signature_checks(),
        );
        m.family(
            "arbor_rules_version",
            "gauge",
            "Version of the rule set held from each node of this node's path.",
        );
        for issuer in self.engine.path() {
            if let Some(r) = self.engine.rules().get(issuer) {
                m.sample(
                    "arbor_rules_version",
                    &[("issuer", &issuer.node_id())],
                    r.version,
                );
            }
        }
        m.family(
            "arbor_rules_refused_total",
            "counter",
            "Rule sets from the parent that were refused.",
        );
        m.sample("arbor_rules_refused_total", &[], self.rules_refused);
        m.family(
            "arbor_reports_sent_total",
            "counter",
            "Reports sent to the parent.",
        );
        m.sample("arbor_reports_sent_total", &[], stats.reports_sent);
        self.conduct_metrics(&mut m);
        m.text
    }
}

/// What the tree view marks nodes with: the failures proven here (this node's own
/// count as proven: it knows them first hand), and the time (Unix seconds).
struct Marks<'a> {
    me: PublicKey,
    proven: &'a BTreeSet<(PublicKey, Hash)>,
    now: u64,
}

/// The report's nodes as a tree, the reporter at its root, each node with the age of
/// its report, `lost_since` (when its parent lost the connection, if it has), and
/// `stale`: why what it shows may no longer hold (null if nothing says so): its parent
/// lost it, a node above it was lost, or it is downloading and has not reported for
/// [`STALE_AFTER_SECS`]. Failed states say whether their failure is proven here.
fn tree(report: &Report, proven: &BTreeSet<(PublicKey, Hash)>, now: u64) -> TreeNode {
    let mut below: BTreeMap<PublicKey, Vec<NodeDetail>> = BTreeMap::new();
    for d in &report.nodes {
        if let Some(parent) = d.parent {
            below.entry(parent).or_default().push(d.clone());
        }
    }
    let marks = Marks {
        me: report.node,
        proven,
        now,
    };
    tree_node(&report.detail(), &below, &marks, None)
}

fn ago(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn tree_node(
    d: &NodeDetail,
    below: &BTreeMap<PublicKey, Vec<NodeDetail>>,
    marks: &Marks,
    lost_above: Option<&str>,
) -> TreeNode {
    let age = marks.now.saturating_sub(d.issued);
    let lost = d.lost.map(|since| {
        format!(
            "its parent lost the connection to it {} ago",
            ago(marks.now.saturating_sub(since))
        )
    });
    let stalled = (age >= STALE_AFTER_SECS
        && d.updates.iter().any(|s| s.state == State::Downloading))
    .then(|| format!("downloading, with no news for {}", ago(age)));
    let stale = lost
        .clone()
        .or_else(|| lost_above.map(str::to_string))
        .or(stalled);
    let lost_here = lost.map(|_| {
        format!(
            "a node above it ({}) is not connected to its parent",
            d.node.node_id()
        )
    });
    let lost_below = lost_here.as_deref().or(lost_above);
    let children = below
        .get(&d.node)
        .map(|c| {
            c.iter()
                .map(|c| tree_node(c, below, marks, lost_below))
                .collect()
        })
        .unwrap_or_default();
    let updates = d
        .updates
        .iter()
        .map(|s| TreeUpdate {
            update_id: s.update,
            state: s.state,
            bytes_done: s.bytes_done,
            bytes_total: s.bytes_total,
            from_parent: s.from_parent,
            from_siblings: s.from_siblings,
            reason: s.reason.clone(),
            proven: (s.state == State::Failed)
                .then(|| d.node == marks.me || marks.proven.contains(&(d.node, s.update))),
        })
        .collect();
    TreeNode {
        node_id: d.node.node_id(),
        depth: d.depth,
        issued: d.issued,
        age_secs: age,
        lost_since: d.lost,
        stale,
        updates,
        children,
    }
}

/// Prometheus text exposition, written as it goes.
#[derive(Default)]
pub(super) struct Metrics {
    text: String,
}

impl Metrics {
    pub(super) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let list: Vec<String> = labels
                .iter()
                // Label values here are hex, node ids and fixed words: nothing to escape.
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            let _ = write!(self.text, "{{{}}}", list.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::UpdateState;
    use crate::trust::SecretKey;
    use serde_json::{Value, json};

    const NOW: u64 = 1_800_000_000;

    fn pk(n: u8) -> PublicKey {
        SecretKey::from_seed([n; 32]).public()
    }

    fn entry(
        n: u8,
        parent: u8,
        depth: u32,
        issued: u64,
        lost: Option<u64>,
        s: State,
    ) -> NodeDetail {
        let update = Hash::of(b"u");
        NodeDetail {
            lost,
            node: pk(n),
            depth,
            issued,
            parent: Some(pk(parent)),
            updates: vec![match s {
                State::Failed => UpdateState::failed(update, "hook exited 1", 0, 10),
                _ => UpdateState::new(update, s, 5, 10),
            }],
        }
    }

    /// Finds a node of the tree view by key.
    fn find(v: &Value, n: u8) -> &Value {
        if v["node_id"] == json!(pk(n).node_id()) {
            return v;
        }
        v["children"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| find(c, n))
            .find(|c| !c.is_null())
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn the_tree_shows_ages_marks_stale_states_and_proven_failures() {
        // Root node 1 → branch 3 (lost 2 minutes ago) → leaf 5, downloading;
        // root node 1 → branch 4 → leaf 6 downloading for 10 minutes, leaf 7 failed
        // (proven), leaf 8 failed (claimed only), leaf 9 downloading a minute ago.
        let mut report = Report::leaf(
            NodeDetail {
                lost: None,
                node: pk(1),
                depth: 0,
                issued: NOW,
                parent: None,
                updates: vec![],
            },
            &[],
        );
        report.nodes = vec![
            entry(3, 1, 1, NOW - 130, Some(NOW - 120), State::Downloaded),
            entry(4, 1, 1, NOW - 5, None, State::Downloaded),
            entry(5, 3, 2, NOW - 140, None, State::Downloading),
            entry(6, 4, 2, NOW - 600, None, State::Downloading),
            entry(7, 4, 2, NOW - 10, None, State::Failed),
            entry(8, 4, 2, NOW - 10, None, State::Failed),
            entry(9, 4, 2, NOW - 60, None, State::Downloading),
        ];
        let proven = BTreeSet::from([(pk(7), Hash::of(b"u"))]);
        // The JSON the admin API sends.
        let view = |now| serde_json::to_value(tree(&report, &proven, now)).expect("json");
        let v = view(NOW);
        assert_eq!(find(&v, 3)["age_secs"], json!(130));
        assert_eq!(find(&v, 3)["lost_since"], json!(NOW - 120));
        assert_eq!(
            find(&v, 3)["stale"],
            json!("its parent lost the connection to it 2m ago")
        );
        let below_lost = find(&v, 5)["stale"].as_str().expect("stale");
        assert!(below_lost.contains(&pk(3).node_id()), "{below_lost}");
        assert_eq!(find(&v, 4)["stale"], Value::Null);
        assert_eq!(
            find(&v, 6)["stale"],
            json!("downloading, with no news for 10m")
        );
        assert_eq!(find(&v, 9)["stale"], Value::Null);
        assert_eq!(find(&v, 9)["age_secs"], json!(60));
        assert_eq!(find(&v, 7)["updates"][0]["proven"], json!(true));
        assert_eq!(find(&v, 8)["updates"][0]["proven"], json!(false));
        assert_eq!(find(&v, 9)["updates"][0].get("proven"), None);
        // A clock behind its child's shows no negative age.
        assert_eq!(view(NOW - 1000)["age_secs"], json!(0));
    }
}
