//! The admin API: every node's HTTP + JSON interface for its operator, and the client
//! through which `arbor token`, `revoke`, `status`, `publish` and `wait` reach a
//! running daemon.
//!
//! The server listens where `arbor run --admin` says, loopback by default. It answers
//! only requests that carry the node's bearer token, kept in `DIR/admin.token` (mode
//! 0600, made on the first run), and it writes the URL it answers on to
//! `DIR/admin.addr` so that the commands find it from the node directory alone. This
//! module owns the routes, authentication, the mapping of refusals to HTTP statuses,
//! the two files and the client; what each request does is the daemon's (`net`).

mod client;
mod conns;
mod http;

use super::Handle;
use crate::publish::PublishRequest;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
pub use client::{Client, call};
pub use conns::{BODY_TIMEOUT, HEADER_TIMEOUT, MAX_HEADER, WRITE_TIMEOUT};
pub use http::{OPENAPI, Server};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The bearer token's file in the node directory.
pub const TOKEN_FILE: &str = "admin.token";
/// Where a running daemon's admin API answers, in the node directory.
pub const ADDR_FILE: &str = "admin.addr";
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest a `wait` request may hold its connection.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Where the admin API listens unless `--admin` says otherwise: loopback, any port.
pub const DEFAULT_ADDR: &str = "127.0.0.1:0";

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
    /// Answer once the update is complete on this node.
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

/// The body of `POST /api/groups`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
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

    fn status(&self) -> StatusCode {
        match self.kind {
            RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
            RefusalKind::NotFound => StatusCode::NOT_FOUND,
            RefusalKind::Conflict => StatusCode::CONFLICT,
            RefusalKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            RefusalKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The daemon's answer to a [`Request`].
pub type Answer = Result<serde_json::Value, Refusal>;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error_response(self.status(), &self.message)
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Why the admin API could not be set up or reached.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no arbor daemon is running for {0} (start it with: arbor run --data {0})")]
    NotRunning(String),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is damaged; delete it and restart the daemon to make a new one")]
    BadToken(String),
    #[error("cannot listen for the admin API on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon at {url}: {why}")]
    Transport { url: String, why: String },
    #[error("the daemon answered something unreadable: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Refused(String),
}

fn file_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AdminError {
    let path = path.display().to_string();
    move |source| AdminError::File { what, path, source }
}

/// Reads the node's admin token, making one (mode 0600) if there is none yet.
pub fn load_or_make_token(dir: &Path) -> Result<String, AdminError> {
    let path = dir.join(TOKEN_FILE);
    if path.exists() {
        return read_token(&path);
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .map_err(file_error("cannot make the admin token", &path))?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            let token = hex::encode(secret);
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(file_error("cannot write the admin token", &path))?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(&path),
        Err(e) => Err(file_error("cannot create the admin token", &path)(e)),
    }
}

fn read_token(path: &Path) -> Result<String, AdminError> {
    let meta = std::fs::metadata(path).map_err(file_error("cannot read", path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "{} can be read by other users; make it mode 0600",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).map_err(file_error("cannot read", path))?;
    let token = text.trim();
    if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AdminError::BadToken(path.display().to_string()));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_daemon_is_reported_as_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = call(dir.path(), &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, AdminError::NotRunning(_)), "{err}");
    }

    #[test]
    fn a_garbage_address_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        load_or_make_token(dir.path()).expect("token");
        std::fs::write(dir.path().join(ADDR_FILE), b"\xff\x00garbage").expect("write");
        let err = call(dir.path(), &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains(ADDR_FILE), "{err}");
        std::fs::write(dir.path().join(ADDR_FILE), "ftp://nowhere\n").expect("write");
        let err = call(dir.path(), &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("does not hold a URL"), "{err}");
    }

    #[test]
    fn the_token_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_make_token(dir.path()).expect("made");
        let second = load_or_make_token(dir.path()).expect("read");
        assert_eq!(first, second);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(TOKEN_FILE), "short\n").expect("write");
        assert!(matches!(
            load_or_make_token(dir.path()),
            Err(AdminError::BadToken(_))
        ));
    }
}
