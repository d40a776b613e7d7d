//! The local management socket: how `arbor token`, `revoke`, `status`, `publish` and
//! `wait` reach a running daemon, which they find at `DIR/arbor.sock`.
//!
//! One JSON request per connection, one JSON line back. The socket lives in the node
//! directory (mode 0700) and is itself mode 0600, so only the node's owner can use it.
//! This module owns the socket and the message types; what each request does is the
//! daemon's (`net`).

use crate::node::CONTROL_SOCKET;
use crate::publish::PublishRequest;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What a management command asks of the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Issue a one-time join token.
    Token {
        groups: Vec<String>,
        client: bool,
        ttl_secs: u64,
        /// The address to put in the token; default: where this node listens.
        addr: Option<String>,
    },
    Revoke {
        node: String,
    },
    /// Publish on the root; the path must be absolute (the daemon has its own cwd).
    Publish(PublishRequest),
    /// Answer once the update is complete on this node.
    Wait {
        update: String,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// Why a management command could not talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no arbor daemon is running for {0} (start it with: arbor run --data {0})")]
    NotRunning(String),
    #[error("talking to the daemon at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon answered something unreadable: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Refused(String),
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(CONTROL_SOCKET)
}

/// Sends one request to the daemon of node directory `dir` and waits up to `timeout`
/// for its answer.
pub fn call(
    dir: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, LocalError> {
    let path = socket_path(dir);
    let shown = dir.display().to_string();
    let io = |source| LocalError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(LocalError::NotRunning(shown));
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| LocalError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    // Bound what is read: a status of a large node is big, but not unbounded.
    BufReader::new(std::io::Read::take(stream, 64 << 20))
        .read_line(&mut answer)
        .map_err(io)?;
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Error(e)) => Err(LocalError::Refused(e)),
        Err(e) => Err(LocalError::BadAnswer(e.to_string())),
    }
}

/// Parses one request line from an untrusted client.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request over {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(line).map_err(|e| format!("not a request arbor understands: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_is_refused() {
        let r = parse_request(br#"{"cmd":"revoke","node":"12D3KooW"}"#).expect("parses");
        assert!(matches!(r, Request::Revoke { node } if node == "12D3KooW"));
        assert!(parse_request(b"{").is_err());
        assert!(parse_request(br#"{"cmd":"format_disk"}"#).is_err());
        assert!(parse_request(&vec![b' '; MAX_REQUEST + 1]).is_err());
    }

    #[test]
    fn a_missing_daemon_is_reported_as_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = call(dir.path(), &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, LocalError::NotRunning(_)), "{err}");
    }
}
