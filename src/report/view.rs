//! A report as people and the admin API read it (`GET /api/reports`): ids in their text
//! forms (node ids as libp2p PeerIds, update ids in hex), counts by state name with
//! their total, and groups with [`ALL`] first. The wire form is [`Report`]'s own.

use super::{Counts, NodeDetail, Report, RuleRefusal, SignedReport, State, UpdateState};
use crate::content::Hash;
use crate::rules::ALL;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One report, and its sequence number when it is a signed one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportView {
    pub node_id: String,
    pub parent: Option<String>,
    pub depth: u32,
    pub issued: u64,
    /// The reporter's own state per update.
    pub own: Vec<StateView>,
    /// Nodes per state, per update, in the reporter's whole subtree.
    pub subtree: Vec<CountsView>,
    /// The same per group of the reporter's children.
    pub groups: Vec<GroupCountsView>,
    /// Per-node detail for drill-down.
    pub nodes: Vec<NodeView>,
    pub proven_failures: usize,
    /// Detail was left out.
    pub truncated: bool,
    pub refusals: Vec<RefusalView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateView {
    pub update: Hash,
    pub state: State,
    pub reason: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub from_parent: u64,
    pub from_siblings: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CountsView {
    pub update: Hash,
    pub available: u64,
    pub downloading: u64,
    pub downloaded: u64,
    pub installed: u64,
    pub failed: u64,
    pub total: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupCountsView {
    pub name: String,
    pub counts: Vec<CountsView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub parent: Option<String>,
    pub depth: u32,
    pub issued: u64,
    pub lost: Option<u64>,
    pub updates: Vec<StateView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefusalView {
    pub at: u64,
    pub node_id: String,
    pub issuer: Option<String>,
    pub reason: String,
}

impl From<&UpdateState> for StateView {
    fn from(s: &UpdateState) -> StateView {
        StateView {
            update: s.update,
            state: s.state,
            reason: s.reason.clone(),
            bytes_done: s.bytes_done,
            bytes_total: s.bytes_total,
            from_parent: s.from_parent,
            from_siblings: s.from_siblings,
        }
    }
}

fn counts(m: &BTreeMap<Hash, Counts>) -> Vec<CountsView> {
    m.iter()
        .map(|(u, c)| CountsView {
            update: *u,
            available: c.available,
            downloading: c.downloading,
            downloaded: c.downloaded,
            installed: c.installed,
            failed: c.failed,
            total: c.total(),
        })
        .collect()
}

impl From<&NodeDetail> for NodeView {
    fn from(d: &NodeDetail) -> NodeView {
        NodeView {
            node_id: d.node.node_id(),
            parent: d.parent.map(|p| p.node_id()),
            depth: d.depth,
            issued: d.issued,
            lost: d.lost,
            updates: d.updates.iter().map(StateView::from).collect(),
        }
    }
}

impl From<&RuleRefusal> for RefusalView {
    fn from(r: &RuleRefusal) -> RefusalView {
        RefusalView {
            at: r.at,
            node_id: r.node.node_id(),
            issuer: r.issuer.map(|i| i.node_id()),
            reason: r.reason.clone(),
        }
    }
}

impl From<&Report> for ReportView {
    fn from(r: &Report) -> ReportView {
        let groups = r
            .groups
            .get_key_value(ALL)
            .into_iter()
            .chain(r.groups.iter().filter(|(g, _)| *g != ALL))
            .map(|(name, m)| GroupCountsView {
                name: name.clone(),
                counts: counts(m),
            })
            .collect();
        ReportView {
            node_id: r.node.node_id(),
            parent: r.parent.map(|p| p.node_id()),
            depth: r.depth,
            issued: r.issued,
            own: r.own.iter().map(StateView::from).collect(),
            subtree: counts(&r.subtree),
            groups,
            nodes: r.nodes.iter().map(NodeView::from).collect(),
            proven_failures: r.proof.as_ref().map_or(0, super::proof::Proof::failures),
            truncated: r.truncated,
            refusals: r.refusals.iter().map(RefusalView::from).collect(),
            seq: None,
        }
    }
}

impl From<&SignedReport> for ReportView {
    fn from(s: &SignedReport) -> ReportView {
        ReportView {
            seq: Some(s.seq),
            ..ReportView::from(&s.report)
        }
    }
}
