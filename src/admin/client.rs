//! The admin API's HTTP client: how management commands reach a running daemon.

use super::*;
use serde::de::DeserializeOwned;

/// A management command's connection to the daemon of a node directory.
pub struct Client {
    dir: String,
    url: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// Finds the running daemon of `dir` through `DIR/admin.addr` and `DIR/admin.token`.
    pub fn open(dir: &Path) -> Result<Client, AdminError> {
        let shown = dir.display().to_string();
        let addr_file = dir.join(ADDR_FILE);
        let url = match std::fs::read_to_string(&addr_file) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AdminError::NotRunning(shown));
            }
            Err(e) => return Err(file_error("cannot read", &addr_file)(e)),
        };
        if !url.starts_with("http://") {
            return Err(AdminError::BadAnswer(format!(
                "{} does not hold a URL",
                addr_file.display()
            )));
        }
        let token = read_token(&dir.join(TOKEN_FILE))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The daemon is on this machine: never through a proxy from the environment.
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        Ok(Client {
            dir: shown,
            url,
            token,
            agent,
        })
    }

    /// Sends one request and waits up to `limit` for the answer, read as `A`: the
    /// request's answer type in `net::command` (`String` for the metrics), or any type
    /// that reads its JSON.
    pub fn call<A: DeserializeOwned>(
        &self,
        req: &Request,
        limit: Duration,
    ) -> Result<A, AdminError> {
        let json = |v: serde_json::Result<serde_json::Value>| {
            v.map(Some)
                .map_err(|e| AdminError::BadAnswer(format!("cannot encode the request: {e}")))
        };
        let (method, path, body) = match req {
            Request::Status => ("GET", "/api/status".to_string(), None),
            Request::Wait { update } => (
                "GET",
                format!(
                    "/api/updates/{}/wait?timeout_secs={}",
                    segment(update),
                    limit.as_secs()
                ),
                None,
            ),
            Request::Token(t) => ("POST", "/api/tokens".into(), json(serde_json::to_value(t))?),
            Request::Revoke { node } => (
                "POST",
                format!("/api/children/{}/revoke", segment(node)),
                None,
            ),
            Request::Publish(p) => (
                "POST",
                "/api/publish".into(),
                json(serde_json::to_value(p))?,
            ),
            Request::Group(GroupRequest::List) => ("GET", "/api/groups".into(), None),
            Request::Group(GroupRequest::Create { name }) => (
                "POST",
                "/api/groups".into(),
                Some(serde_json::json!({ "name": name })),
            ),
            Request::Group(GroupRequest::Delete { name }) => {
                ("DELETE", format!("/api/groups/{}", segment(name)), None)
            }
            Request::Group(GroupRequest::Assign { group, node }) => (
                "PUT",
                format!("/api/groups/{}/members/{}", segment(group), segment(node)),
                None,
            ),
            Request::Group(GroupRequest::Unassign { group, node }) => (
                "DELETE",
                format!("/api/groups/{}/members/{}", segment(group), segment(node)),
                None,
            ),
            Request::Approve(a) => (
                "POST",
                "/api/approvals".into(),
                json(serde_json::to_value(a))?,
            ),
            Request::Decline { update, group } => (
                "DELETE",
                format!("/api/approvals/{}/{}", segment(update), segment(group)),
                None,
            ),
            Request::Approvals => ("GET", "/api/approvals".into(), None),
            Request::Reports => ("GET", "/api/reports".into(), None),
            Request::Tree => ("GET", "/api/tree".into(), None),
            Request::Updates => ("GET", "/api/updates".into(), None),
            Request::Metrics => ("GET", "/metrics".into(), None),
            Request::Installed => ("GET", "/api/installed".into(), None),
            Request::Check { repair } => (
                "POST",
                "/api/installed/check".into(),
                Some(serde_json::json!({ "repair": repair })),
            ),
            Request::Rollback { module } => (
                "POST",
                format!("/api/installed/{}/rollback", module_segments(module)),
                None,
            ),
        };
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .body(bytes)
            .map_err(|e| AdminError::Transport {
                url: self.url.clone(),
                why: e.to_string(),
            })?;
        // A wait is answered by the daemon at its own timeout; leave it room to.
        let request = self
            .agent
            .configure_request(request)
            .timeout_global(Some(limit + Duration::from_secs(30)))
            .build();
        let mut resp = self.agent.run(request).map_err(|e| match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                AdminError::NotRunning(self.dir.clone())
            }
            e => AdminError::Transport {
                url: self.url.clone(),
                why: e.to_string(),
            },
        })?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| AdminError::BadAnswer(format!("{status}: {e}")))?;
        let unreadable = |e: serde_json::Error| AdminError::BadAnswer(format!("{status}: {e}"));
        if status.is_success() {
            return if matches!(req, Request::Metrics) {
                A::deserialize(serde_json::Value::String(text)).map_err(unreadable)
            } else {
                serde_json::from_str(&text).map_err(unreadable)
            };
        }
        let refused: ErrorBody = serde_json::from_str(&text).map_err(unreadable)?;
        Err(AdminError::Refused(refused.error))
    }
}

/// Percent-encodes one URL path segment.
/// `tenant/category/id` as three path segments.
pub(super) fn module_segments(module: &str) -> String {
    module.split('/').map(segment).collect::<Vec<_>>().join("/")
}

pub(super) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends one request to the daemon of node directory `dir`.
pub fn call<A: DeserializeOwned>(
    dir: &Path,
    req: &Request,
    limit: Duration,
) -> Result<A, AdminError> {
    Client::open(dir)?.call(req, limit)
}
