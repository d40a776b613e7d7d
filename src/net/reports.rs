//! The daemon's side of reports (PROTOCOL.md §15): children's reports kept in the store
//! and reloaded at start-up, and the views an admin reads of them: the roll-up, the
//! subtree as a tree, each update's rollout per group, and the Prometheus metrics.
//! Building, signing, sending and checking reports is the engine's.

use super::{Daemon, module_name, now_ms};
use crate::content::Hash;
use crate::net::admin::Answer;
use crate::report::{NodeDetail, Report, State, UpdateState};
use crate::rules::ALL;
use crate::trust::PublicKey;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Where the last report sequence number sent is kept, in the store's metadata.
const META_REPORT_SEQ: &str = "report_seq";
/// How far past the kept sequence number a new run starts: more reports than a node
/// sends in the second between two keeps.
const SEQ_SKIP: u64 = 1000;

impl Daemon {
    /// Loads the children's reports kept in the store into the engine, at start-up.
    pub(super) fn restore_reports(&mut self) {
        let kept = match self.node.store.reports() {
            Ok(kept) => kept,
            Err(e) => {
                tracing::error!("cannot read the kept reports: {e}");
                return;
            }
        };
        for (child, bytes) in kept {
            if let Err(e) = self
                .engine
                .restore_report(&PublicKey(child), &bytes, now_ms())
            {
                tracing::warn!(
                    child = %PublicKey(child).node_id(),
                    "a kept report is refused and dropped: {e}"
                );
            }
        }
    }

    /// Continues this node's report sequence numbers above the last run's. The number
    /// is kept once a second, so the last second's may not be: skip well past them.
    pub(super) fn restore_report_seq(&mut self) {
        match self.node.store.meta(META_REPORT_SEQ) {
            Ok(Some(bytes)) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                Ok(b) => {
                    self.kept_report_seq = u64::from_le_bytes(b);
                    self.engine
                        .set_report_seq(self.kept_report_seq.saturating_add(SEQ_SKIP));
                }
                Err(_) => tracing::warn!("the kept report sequence number is damaged; ignored"),
            },
            Ok(None) => {}
            Err(e) => tracing::error!("cannot read the report sequence number: {e}"),
        }
    }

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
    pub(super) fn reports_view(&self) -> Answer {
        let rollup = self.engine.rollup();
        let children: Vec<Value> = rollup
            .children()
            .filter_map(|c| rollup.get(c))
            .map(|r| r.to_json())
            .collect();
        Ok(json!({
            "rollup": self.engine.report(now_ms()).to_json(),
            "children": children,
        }))
    }

    /// `GET /api/tree`: this node's subtree, each node with its state per update.
    pub(super) fn tree_view(&self) -> Answer {
        let report = self.engine.report(now_ms());
        Ok(json!({
            "truncated": report.truncated,
            "tree": tree(&report),
        }))
    }

    /// `GET /api/updates`: every update this node took up, with its rollout per group
    /// of this node's children (each member counting with its whole subtree).
    pub(super) fn updates_view(&self) -> Answer {
        let report = self.engine.report(now_ms());
        let me = self.node.node_key.public();
        let own = self.engine.rules().get(&me).map(|r| &r.rules);
        let children: Vec<PublicKey> = self.engine.children().map(|(c, _)| *c).collect();
        let groups: Vec<String> = std::iter::once(ALL.to_string())
            .chain(own.into_iter().flat_map(|r| r.groups.keys().cloned()))
            .collect();
        let updates: Vec<Value> = self
            .engine
            .progress()
            .into_iter()
            .map(|p| {
                let rollout: Vec<Value> = groups
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
                        let mut v = json!({
                            "group": g,
                            "members": members,
                            "total": total,
                            "done_percent": (u128::from(done) * 100)
                                .checked_div(u128::from(total))
                                .unwrap_or(0),
                        });
                        for state in State::ALL {
                            v[state.as_str()] = json!(counts.get(state));
                        }
                        v
                    })
                    .collect();
                json!({
                    "update_id": p.update,
                    "module": self.engine.manifest(&p.update).map(module_name),
                    "bytes": p.bytes,
                    "bytes_held": p.bytes_held,
                    "available": p.available,
                    "rollout": rollout,
                })
            })
            .collect();
        Ok(json!({ "updates": updates }))
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

/// The report's nodes as a tree, the reporter at its root.
fn tree(report: &Report) -> Value {
    let mut below: BTreeMap<PublicKey, Vec<NodeDetail>> = BTreeMap::new();
    for d in &report.nodes {
        if let Some(parent) = d.parent {
            below.entry(parent).or_default().push(d.clone());
        }
    }
    node_json(&report.detail(), &below)
}

fn node_json(d: &NodeDetail, below: &BTreeMap<PublicKey, Vec<NodeDetail>>) -> Value {
    let children: Vec<Value> = below
        .get(&d.node)
        .map(|c| c.iter().map(|c| node_json(c, below)).collect())
        .unwrap_or_default();
    json!({
        "node_id": d.node.node_id(),
        "depth": d.depth,
        "issued": d.issued,
        "updates": d.updates.iter().map(state_json).collect::<Vec<_>>(),
        "children": children,
    })
}

fn state_json(s: &UpdateState) -> Value {
    json!({
        "update_id": Hash::to_hex(&s.update),
        "state": s.state.as_str(),
        "bytes_done": s.bytes_done,
        "bytes_total": s.bytes_total,
        "from_parent": s.from_parent,
        "from_siblings": s.from_siblings,
        "reason": s.reason,
    })
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
