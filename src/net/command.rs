//! What an operator can ask of a running daemon, and how it refuses: the requests, their
//! bodies, the refusals and the daemon's answers. The daemon answers them (`net`); the
//! admin API (`crate::admin`) carries them over HTTP, and the command line and the web
//! UI read the answers.

mod answer;

use crate::publish::PublishRequest;
pub use answer::*;
use serde::{Deserialize, Serialize};

/// What an operator asks of the daemon, whether through HTTP or in-process.
#[derive(Clone, Debug)]
pub enum Request {
    Status,
    /// Issue a one-time join token.
    Token(TokenRequest),
    Revoke {
        node: String,
    },
    /// Publish on the root; the path must be absolute (the daemon has its own cwd).
    Publish(PublishRequest),
    /// Reply once the update is complete on this node.
    Wait {
        update: String,
    },
    Group(GroupRequest),
    /// Approve an update for a group of this node's children (or change the terms).
    Approve(ApproveRequest),
    /// Withdraw an approval.
    Decline {
        update: String,
        group: String,
    },
    /// This node's approvals, with how far each has reached.
    Approvals,
    /// This node's roll-up of its subtree, and its children's reports.
    Reports,
    /// This node's subtree, each node with its state per update.
    Tree,
    /// The updates this node took up, with their rollout per group.
    Updates,
    /// Prometheus text (a JSON string).
    Metrics,
    /// A client's installed modules.
    Installed,
    /// Check every installed module's files against its metadata; with `repair`,
    /// restore what is damaged.
    Check {
        repair: bool,
    },
    /// Switch a module (`tenant/category/id`) back to its previous version.
    Rollback {
        module: String,
    },
}

/// A percentage as people and programs give it: `12.5`, `"12.5"` or `"12.5%"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Percent {
    Number(f64),
    Text(String),
}

impl Percent {
    /// Basis points (PROTOCOL.md §14.5), at most two decimals.
    pub fn basis_points(&self) -> Result<u16, crate::rules::BadWave> {
        match self {
            Percent::Number(n) => crate::rules::parse_wave(&n.to_string()),
            Percent::Text(t) => crate::rules::parse_wave(t),
        }
    }
}

/// A time as given: Unix seconds, RFC 3339 (`2026-12-01T18:00:00Z`), or `+DURATION`
/// from now (`+90m`, `+2h`, `+7d`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum When {
    Unix(u64),
    Text(String),
}

impl When {
    /// Unix seconds, or why the text is not a time.
    pub fn unix_secs(&self, now: u64) -> Result<u64, String> {
        let text = match self {
            When::Unix(t) => return Ok(*t),
            When::Text(t) => t.trim(),
        };
        if let Ok(t) = text.parse::<u64>() {
            return Ok(t);
        }
        if let Some(rest) = text.strip_prefix('+') {
            return humantime::parse_duration(rest)
                .map(|d| now.saturating_add(d.as_secs()))
                .map_err(|e| format!("{text:?} is not a duration after +: {e}"));
        }
        humantime::parse_rfc3339_weak(text)
            .map_err(|_| {
                format!(
                    "{text:?} is not a time: give Unix seconds, RFC 3339 \
                     (2026-12-01T18:00:00Z) or +DURATION (+2h)"
                )
            })
            .and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .map_err(|_| format!("{text:?} is before 1970"))
            })
    }
}

/// The body of `POST /api/approvals`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// Update id (or a prefix of at least 4 hex digits).
    pub update: String,
    pub group: String,
    /// The share of the group it reaches; default 100%.
    #[serde(default)]
    pub wave: Option<Percent>,
    /// From then on the whole group.
    #[serde(default)]
    pub deadline: Option<When>,
    /// Applies to every node below the group's members too.
    #[serde(default)]
    pub subtree: bool,
    /// Halt once this many nodes failed.
    #[serde(default)]
    pub halt_failures: Option<u64>,
    /// Halt once this share of the nodes reported failed.
    #[serde(default)]
    pub halt_fraction: Option<Percent>,
}

/// Managing the groups of this node's children.
#[derive(Clone, Debug)]
pub enum GroupRequest {
    List,
    Create { name: String },
    Delete { name: String },
    Assign { group: String, node: String },
    Unassign { group: String, node: String },
}

/// The body of `POST /api/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Groups the child joins.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The child is a leaf client.
    #[serde(default)]
    pub client: bool,
    /// How long the token stays valid.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// The address to put in the token; default: where this node listens.
    #[serde(default)]
    pub addr: Option<String>,
    /// The site to place the child at (its siblings are the children at the same site).
    #[serde(default)]
    pub site: Option<String>,
}

fn default_ttl() -> u64 {
    3600
}

/// Why the daemon refused a request; each kind is one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The request itself is wrong (400).
    BadRequest,
    /// It names something this node does not have (404).
    NotFound,
    /// It cannot be done in this node's state, e.g. publishing on a non-root (409).
    Conflict,
    /// The daemon is stopping (503).
    Unavailable,
    /// The node failed, e.g. its store (500).
    Internal,
}

/// A refused request, with a message for the operator.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::BadRequest, message)
    }
    pub fn internal(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Internal, message)
    }
}
