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

use super::Handle;
use crate::publish::PublishRequest;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
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

/// The admin API of one daemon: bound, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    url: String,
    addr_file: PathBuf,
    token: String,
}

impl Server {
    /// Binds `addr`, loads (or makes) the node's token and writes the URL it answers
    /// on to `DIR/admin.addr`.
    pub async fn bind(dir: &Path, addr: SocketAddr) -> Result<Server, AdminError> {
        let token = load_or_make_token(dir)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| AdminError::Listen { addr, source })?;
        if !bound.ip().is_loopback() {
            tracing::warn!(
                "the admin API listens on {bound}, reachable from the network over plain \
                 HTTP; anyone holding its token can manage this node"
            );
        }
        // Commands on this machine reach an unspecified address through loopback.
        let reach = match bound {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        let url = format!("http://{reach}");
        // Written before the node reports itself up, so that no command finds the
        // address of a daemon that ran here before.
        let addr_file = dir.join(ADDR_FILE);
        let tmp = addr_file.with_extension("addr.tmp");
        std::fs::write(&tmp, format!("{url}\n"))
            .and_then(|()| std::fs::rename(&tmp, &addr_file))
            .map_err(file_error("cannot write", &addr_file))?;
        Ok(Server {
            listener,
            url,
            addr_file,
            token,
        })
    }

    /// The URL the API answers on.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves until `stop` is cancelled, then removes `DIR/admin.addr`.
    pub async fn serve(
        self,
        handle: Handle,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(), AdminError> {
        let app = router(handle, &self.token);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        let _ = std::fs::remove_file(&self.addr_file);
        served.map_err(|e| AdminError::Transport {
            url: self.url,
            why: e.to_string(),
        })
    }
}

#[derive(Clone)]
struct App {
    handle: Handle,
    /// The token's hash: `blake3::Hash` compares in constant time.
    token: Arc<blake3::Hash>,
}

fn router(handle: Handle, token: &str) -> Router {
    let app = App {
        handle,
        token: Arc::new(blake3::hash(token.as_bytes())),
    };
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/tokens", post(issue_token))
        .route("/api/children/{node}/revoke", post(revoke))
        .route("/api/publish", post(publish))
        .route("/api/updates/{update}/wait", get(wait))
        .route("/api/groups", get(list_groups).post(create_group))
        .route("/api/groups/{group}", axum::routing::delete(delete_group))
        .route(
            "/api/groups/{group}/members/{node}",
            axum::routing::put(assign).delete(unassign),
        )
        .route("/api/reports", get(reports))
        .route("/api/tree", get(tree))
        .route("/api/updates", get(updates))
        .route("/metrics", get(metrics))
        .route("/api/approvals", get(list_approvals).post(approve))
        .route(
            "/api/approvals/{update}/{group}",
            axum::routing::delete(decline),
        )
        .route("/api/installed", get(installed))
        .route("/api/installed/check", post(check))
        .route(
            "/api/installed/{tenant}/{category}/{id}/rollback",
            post(rollback),
        )
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorise))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app);
    // The web UI and the API's description hold no secrets: served without the token,
    // which the UI asks for and sends with every API call.
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", UI_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", UI_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", UI_CSS) }),
        )
        // Browsers ask for it on their own; the UI has none.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/api/openapi.json",
            get(|| async { asset("application/json", OPENAPI) }),
        )
        .merge(api)
}

/// The web UI, embedded so that nothing is built or installed beside the binary.
const UI_HTML: &str = include_str!("ui/index.html");
const UI_JS: &str = include_str!("ui/app.js");
const UI_CSS: &str = include_str!("ui/style.css");
/// The admin API's OpenAPI 3.1 description.
pub const OPENAPI: &str = include_str!("openapi.json");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Only this server's own scripts and styles, never inside another page.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn authorise(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = bearer(req.headers());
    if given.is_some_and(|t| blake3::hash(t.as_bytes()) == *app.token) {
        return next.run(req).await;
    }
    tracing::warn!(path = %req.uri().path(), "admin API request without the right bearer token refused");
    let mut resp = error_response(
        StatusCode::UNAUTHORIZED,
        "this needs the node's admin token: send Authorization: Bearer <contents of DIR/admin.token>",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn answer(app: &App, req: Request) -> Response {
    match app.handle.call(req).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn status(State(app): State<App>) -> Response {
    answer(&app, Request::Status).await
}

async fn issue_token(
    State(app): State<App>,
    parsed: Result<Json<TokenRequest>, JsonRejection>,
) -> Response {
    match parsed {
        Ok(Json(t)) => answer(&app, Request::Token(t)).await,
        Err(e) => error_response(e.status(), &e.body_text()),
    }
}

async fn revoke(State(app): State<App>, UrlPath(node): UrlPath<String>) -> Response {
    answer(&app, Request::Revoke { node }).await
}

async fn publish(
    State(app): State<App>,
    parsed: Result<Json<PublishRequest>, JsonRejection>,
) -> Response {
    match parsed {
        Ok(Json(p)) if !p.path.is_absolute() => error_response(
            StatusCode::BAD_REQUEST,
            "the path to publish must be absolute: the daemon has its own working directory",
        ),
        Ok(Json(p)) => answer(&app, Request::Publish(p)).await,
        Err(e) => error_response(e.status(), &e.body_text()),
    }
}

async fn reports(State(app): State<App>) -> Response {
    answer(&app, Request::Reports).await
}

async fn tree(State(app): State<App>) -> Response {
    answer(&app, Request::Tree).await
}

async fn updates(State(app): State<App>) -> Response {
    answer(&app, Request::Updates).await
}

async fn metrics(State(app): State<App>) -> Response {
    match app.handle.call(Request::Metrics).await {
        Ok(serde_json::Value::String(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(other) => Json(other).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn list_approvals(State(app): State<App>) -> Response {
    answer(&app, Request::Approvals).await
}

async fn approve(
    State(app): State<App>,
    parsed: Result<Json<ApproveRequest>, JsonRejection>,
) -> Response {
    match parsed {
        Ok(Json(a)) => answer(&app, Request::Approve(a)).await,
        Err(e) => error_response(e.status(), &e.body_text()),
    }
}

async fn decline(
    State(app): State<App>,
    UrlPath((update, group)): UrlPath<(String, String)>,
) -> Response {
    answer(&app, Request::Decline { update, group }).await
}

async fn installed(State(app): State<App>) -> Response {
    answer(&app, Request::Installed).await
}

/// The body of `POST /api/installed/check`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    repair: bool,
}

async fn check(State(app): State<App>, parsed: Result<Json<CheckBody>, JsonRejection>) -> Response {
    match parsed {
        Ok(Json(CheckBody { repair })) => answer(&app, Request::Check { repair }).await,
        Err(e) => error_response(e.status(), &e.body_text()),
    }
}

async fn rollback(
    State(app): State<App>,
    UrlPath((tenant, category, id)): UrlPath<(String, String, String)>,
) -> Response {
    let module = format!("{tenant}/{category}/{id}");
    answer(&app, Request::Rollback { module }).await
}

async fn list_groups(State(app): State<App>) -> Response {
    answer(&app, Request::Group(GroupRequest::List)).await
}

async fn create_group(
    State(app): State<App>,
    parsed: Result<Json<NewGroup>, JsonRejection>,
) -> Response {
    match parsed {
        Ok(Json(NewGroup { name })) => {
            answer(&app, Request::Group(GroupRequest::Create { name })).await
        }
        Err(e) => error_response(e.status(), &e.body_text()),
    }
}

async fn delete_group(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Response {
    answer(&app, Request::Group(GroupRequest::Delete { name })).await
}

async fn assign(
    State(app): State<App>,
    UrlPath((group, node)): UrlPath<(String, String)>,
) -> Response {
    answer(&app, Request::Group(GroupRequest::Assign { group, node })).await
}

async fn unassign(
    State(app): State<App>,
    UrlPath((group, node)): UrlPath<(String, String)>,
) -> Response {
    answer(&app, Request::Group(GroupRequest::Unassign { group, node })).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    timeout_secs: Option<u64>,
}

/// Long poll: answers `complete: true` when the update is complete, or
/// `complete: false` when the timeout passes first.
async fn wait(
    State(app): State<App>,
    UrlPath(update): UrlPath<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Response {
    let limit = match query {
        Ok(Query(q)) => q
            .timeout_secs
            .map_or(MAX_WAIT, |s| Duration::from_secs(s).min(MAX_WAIT)),
        Err(e) => return error_response(e.status(), &e.body_text()),
    };
    match tokio::time::timeout(
        limit,
        app.handle.call(Request::Wait {
            update: update.clone(),
        }),
    )
    .await
    {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(r)) => r.into_response(),
        Err(_) => {
            Json(serde_json::json!({ "update_id": update, "complete": false })).into_response()
        }
    }
}

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

    /// Sends one request and waits up to `limit` for the answer.
    pub fn call(&self, req: &Request, limit: Duration) -> Result<serde_json::Value, AdminError> {
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
        if status.is_success() && matches!(req, Request::Metrics) {
            return Ok(serde_json::Value::String(text));
        }
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| AdminError::BadAnswer(format!("{status}: {e}")))?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .map_or_else(|| format!("the daemon answered {status}"), str::to_string);
        Err(AdminError::Refused(message))
    }
}

/// Percent-encodes one URL path segment.
/// `tenant/category/id` as three path segments.
fn module_segments(module: &str) -> String {
    module.split('/').map(segment).collect::<Vec<_>>().join("/")
}

fn segment(s: &str) -> String {
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
pub fn call(dir: &Path, req: &Request, limit: Duration) -> Result<serde_json::Value, AdminError> {
    Client::open(dir)?.call(req, limit)
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
