//! The admin API's HTTP server: routes, authentication, the web UI's assets, and the
//! mapping of each route to a daemon request.

use super::*;

/// The admin API of one daemon: bound, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    url: String,
    addr_file: PathBuf,
    token: String,
    max_connections: usize,
}

impl Server {
    /// Binds `addr`, loads (or makes) the node's token and writes the URL it answers
    /// on to `DIR/admin.addr`. It will hold at most `max_connections` connections
    /// (`net::fds` derives the figure from the open-files limit).
    pub async fn bind(
        dir: &Path,
        addr: SocketAddr,
        max_connections: usize,
    ) -> Result<Server, AdminError> {
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
            max_connections,
        })
    }

    /// The URL the API answers on.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves until `stop` is cancelled, then removes `DIR/admin.addr`.
    pub async fn serve(self, handle: Handle, stop: tokio_util::sync::CancellationToken) {
        let app = router(handle, &self.token);
        conns::serve(self.listener, app, self.max_connections, stop).await;
        let _ = std::fs::remove_file(&self.addr_file);
    }
}

#[derive(Clone)]
pub(super) struct App {
    handle: Handle,
    /// The token's hash: `blake3::Hash` compares in constant time.
    token: Arc<blake3::Hash>,
    /// Requests refused for want of the token since the last warning of them.
    refused: Arc<std::sync::Mutex<Refused>>,
}

/// At most one warning of refused requests per [`Refused::EVERY`]: a stranger's
/// requests cannot flood the log.
#[derive(Default)]
pub(super) struct Refused {
    count: u64,
    warned: Option<std::time::Instant>,
}

impl Refused {
    const EVERY: Duration = Duration::from_secs(60);

    /// Counts a refusal; warns unless it did within [`Refused::EVERY`]. Whether it did.
    pub(super) fn note(&mut self, path: &str) -> bool {
        self.count += 1;
        if self.warned.is_some_and(|at| at.elapsed() < Refused::EVERY) {
            return false;
        }
        tracing::warn!(
            "admin API: {} request(s) without the right bearer token refused, the latest \
             for {path} (warned at most once a minute)",
            self.count
        );
        self.count = 0;
        self.warned = Some(std::time::Instant::now());
        true
    }
}

pub(super) fn router(handle: Handle, token: &str) -> Router {
    let app = App {
        handle,
        token: Arc::new(blake3::hash(token.as_bytes())),
        refused: Arc::default(),
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
        // Inside authorise: only the token holder's bodies are read.
        .layer(axum::middleware::from_fn(conns::read_body))
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
pub(super) const UI_HTML: &str = include_str!("ui/index.html");
pub(super) const UI_JS: &str = include_str!("ui/app.js");
pub(super) const UI_CSS: &str = include_str!("ui/style.css");
/// The admin API's OpenAPI 3.1 description.
pub const OPENAPI: &str = include_str!("openapi.json");

pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
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

pub(super) async fn authorise(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = bearer(req.headers());
    if given.is_some_and(|t| blake3::hash(t.as_bytes()) == *app.token) {
        return next.run(req).await;
    }
    app.refused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .note(req.uri().path());
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

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub(super) async fn answer(app: &App, req: Request) -> Response {
    match app.handle.call(req).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r.into_response(),
    }
}

pub(super) async fn status(State(app): State<App>) -> Response {
    answer(&app, Request::Status).await
}

pub(super) async fn issue_token(
    State(app): State<App>,
    parsed: Result<Json<TokenRequest>, JsonRejection>,
) -> Response {
    match parsed {
        Ok(Json(t)) => answer(&app, Request::Token(t)).await,
        Err(e) => error_response(e.status(), &e.body_text()),
    }
}

pub(super) async fn revoke(State(app): State<App>, UrlPath(node): UrlPath<String>) -> Response {
    answer(&app, Request::Revoke { node }).await
}

pub(super) async fn publish(
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

pub(super) async fn reports(State(app): State<App>) -> Response {
    answer(&app, Request::Reports).await
}

pub(super) async fn tree(State(app): State<App>) -> Response {
    answer(&app, Request::Tree).await
}

pub(super) async fn updates(State(app): State<App>) -> Response {
    answer(&app, Request::Updates).await
}

pub(super) async fn metrics(State(app): State<App>) -> Response {
    match app.handle.call(Request::Metrics).await {
        Ok(Answer::Metrics(text)) => (
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

pub(super) async fn list_approvals(State(app): State<App>) -> Response {
    answer(&app, Request::Approvals).await
}

pub(super) async fn approve(
    State(app): State<App>,
    parsed: Result<Json<ApproveRequest>, JsonRejection>,
) -> Response {
    match parsed {
        Ok(Json(a)) => answer(&app, Request::Approve(a)).await,
        Err(e) => error_response(e.status(), &e.body_text()),
    }
}

pub(super) async fn decline(
    State(app): State<App>,
    UrlPath((update, group)): UrlPath<(String, String)>,
) -> Response {
    answer(&app, Request::Decline { update, group }).await
}

pub(super) async fn installed(State(app): State<App>) -> Response {
    answer(&app, Request::Installed).await
}

/// The body of `POST /api/installed/check`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckBody {
    #[serde(default)]
    repair: bool,
}

pub(super) async fn check(
    State(app): State<App>,
    parsed: Result<Json<CheckBody>, JsonRejection>,
) -> Response {
    match parsed {
        Ok(Json(CheckBody { repair })) => answer(&app, Request::Check { repair }).await,
        Err(e) => error_response(e.status(), &e.body_text()),
    }
}

pub(super) async fn rollback(
    State(app): State<App>,
    UrlPath((tenant, category, id)): UrlPath<(String, String, String)>,
) -> Response {
    let module = format!("{tenant}/{category}/{id}");
    answer(&app, Request::Rollback { module }).await
}

pub(super) async fn list_groups(State(app): State<App>) -> Response {
    answer(&app, Request::Group(GroupRequest::List)).await
}

pub(super) async fn create_group(
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

pub(super) async fn delete_group(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    answer(&app, Request::Group(GroupRequest::Delete { name })).await
}

pub(super) async fn assign(
    State(app): State<App>,
    UrlPath((group, node)): UrlPath<(String, String)>,
) -> Response {
    answer(&app, Request::Group(GroupRequest::Assign { group, node })).await
}

pub(super) async fn unassign(
    State(app): State<App>,
    UrlPath((group, node)): UrlPath<(String, String)>,
) -> Response {
    answer(&app, Request::Group(GroupRequest::Unassign { group, node })).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    timeout_secs: Option<u64>,
}

/// Long poll: answers `complete: true` when the update is complete, or
/// `complete: false` when the timeout passes first.
pub(super) async fn wait(
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
        Err(_) => Json(WaitOutcome {
            update_id: update,
            complete: false,
        })
        .into_response(),
    }
}
