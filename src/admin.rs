//! The admin API: every node's HTTP + JSON interface for its operator, and the client
//! through which `arbor token`, `revoke`, `status`, `publish` and `wait` reach a
//! running daemon.
//!
//! The server listens where `arbor run --admin` says, loopback by default. It answers
//! only requests that carry the node's bearer token, kept in `DIR/admin.token` (mode
//! 0600, made on the first run), and it writes the URL it answers on to
//! `DIR/admin.addr` so that the commands find it from the node directory alone. This
//! module owns the routes, authentication, the connection limits (`conns`), the
//! mapping of refusals to HTTP statuses, the two files and the client; what can be
//! asked, and what each request does, is the daemon's (`net::command`, `net`).

mod client;
mod conns;
mod http;

use crate::net::command::{
    Answer, ApproveRequest, GroupRequest, Refusal, RefusalKind, Request, TokenRequest, WaitOutcome,
};
use crate::net::{self, Daemon, Handle, NetError};
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
/// [`DEFAULT_ADDR`] as an address.
pub const LOOPBACK: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));

/// Starts the node in `opts.dir` ([`net::start`]) with its admin API listening on
/// `admin`. The API is served for as long as the node runs.
pub async fn start(opts: net::Options, admin: SocketAddr) -> Result<Daemon, AdminError> {
    let mut daemon = net::start(opts).await?;
    let server = Server::bind(daemon.dir(), admin, daemon.admin_connections()).await?;
    let url = server.url().to_string();
    daemon.serve_admin(url, |handle, stop| server.serve(handle, stop));
    Ok(daemon)
}

/// The body of `POST /api/groups`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
}

/// The HTTP status of a refusal.
fn http_status(refusal: &Refusal) -> StatusCode {
    match refusal.kind {
        RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
        RefusalKind::NotFound => StatusCode::NOT_FOUND,
        RefusalKind::Conflict => StatusCode::CONFLICT,
        RefusalKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        RefusalKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error_response(http_status(&self), &self.message)
    }
}

/// The body of every refusal the admin API sends.
#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody {
        error: message.to_string(),
    };
    (status, Json(body)).into_response()
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
    #[error(transparent)]
    Node(#[from] NetError),
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
    use crate::net::command::NodeStatus;

    #[test]
    fn a_missing_daemon_is_reported_as_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            call::<NodeStatus>(dir.path(), &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, AdminError::NotRunning(_)), "{err}");
    }

    #[test]
    fn a_garbage_address_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        load_or_make_token(dir.path()).expect("token");
        std::fs::write(dir.path().join(ADDR_FILE), b"\xff\x00garbage").expect("write");
        let err =
            call::<NodeStatus>(dir.path(), &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains(ADDR_FILE), "{err}");
        std::fs::write(dir.path().join(ADDR_FILE), "ftp://nowhere\n").expect("write");
        let err =
            call::<NodeStatus>(dir.path(), &Request::Status, Duration::from_secs(1)).unwrap_err();
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
