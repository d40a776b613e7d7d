//! The admin API's connections: how many may be open, how long each may take over a
//! request, and which one goes when a newcomer needs room. Nothing here trusts the
//! client; every state a connection can be in ends by itself:
//!
//! - waiting for a request's header (a new connection, or an idle keep-alive one after
//!   an answer): closed after [`HEADER_TIMEOUT`];
//! - sending a body: answered 408 after [`BODY_TIMEOUT`] (bodies are read only once
//!   the token is checked; without it the answer is 401 and the connection closes);
//! - not reading its answer: closed after [`WRITE_TIMEOUT`] without progress;
//! - being answered: as long as the request takes (`wait` up to a day); only the token
//!   holder gets this far.
//!
//! At most `cap` connections are open at once, a figure derived from the open-files
//! limit (`net::fds`) so that the admin API never takes the descriptors the tree and
//! the store need. When all are open and another arrives, the one that has waited
//! longest for a request is closed to make room: slow or idle connections cannot keep
//! out the operator, whose commands send their request as soon as they connect. A
//! bounded queue would make the operator wait behind every slow connection, and
//! closing newcomers at once would refuse the operator outright. Only if every
//! connection is in the middle of a request is the newcomer answered 503 and closed.

use super::*;
use axum::body::Body;
use futures::StreamExt;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a connection may take to send a request's header, counted from when it
/// opens or from the previous answer (so idle keep-alive connections close too).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an authorised request's body ([`MAX_BODY`] at most) may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may wait for the client to read any of it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request header: a header that does not fit is answered 431.
pub const MAX_HEADER: usize = 32 * 1024;
/// Longest the accept loop waits for a connection it closed to make room to go.
const EVICT_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of descriptors), so that it is not retried in a
/// tight loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning about connections closed or refused per this period.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves `app` on `listener`, at most `cap` connections at once, until `stop` is
/// cancelled; then stops accepting, lets every request in progress finish and waits
/// for the connections to close.
pub(super) async fn serve(listener: TcpListener, app: Router, cap: usize, stop: CancellationToken) {
    run(listener, app, Arc::new(Connections::new(cap)), stop).await
}

async fn run(listener: TcpListener, app: Router, conns: Arc<Connections>, stop: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The client went before it was accepted.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                conns.accept_failed(&e);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let ticket = tokio::select! {
            _ = stop.cancelled() => break,
            ticket = conns.admit() => ticket,
        };
        match ticket {
            Some(ticket) => {
                tasks.spawn(connection(stream, app.clone(), ticket, stop.clone()));
            }
            None => refuse(stream),
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Serves one connection until it closes, is closed to make room, or the server stops.
async fn connection(stream: TcpStream, app: Router, ticket: Ticket, stop: CancellationToken) {
    let ticket = Arc::new(ticket);
    let evicted = ticket.close.clone();
    let service = {
        let ticket = ticket.clone();
        let inner = TowerToHyperService::new(app);
        hyper::service::service_fn(move |req| {
            let busy = Busy::enter(&ticket);
            let answer = inner.call(req);
            async move {
                let answer = answer.await;
                drop(busy);
                answer
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER);
    let conn = http.serve_connection(TokioIo::new(WriteDeadline::new(stream)), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!("admin API connection closed: {e}");
                }
                break;
            }
            _ = evicted.cancelled() => break,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection there is no room for, as far as its socket takes it at once.
fn refuse(stream: TcpStream) {
    let body = r#"{"error":"the admin API is answering as many requests as it may hold at once; try again later"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Reads an authorised request's body, at most [`MAX_BODY`] bytes within
/// [`BODY_TIMEOUT`], before the handler sees it: a body that trickles or never comes
/// is answered 408 and its connection closed.
pub(super) async fn read_body(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let mut chunks = body.into_data_stream();
    let read = async {
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| {
                error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                )
            })?;
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(refused)) => refused,
        Err(_) => {
            let mut resp = error_response(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            );
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            resp
        }
    }
}

fn too_large() -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than {MAX_BODY} bytes"),
    )
}

/// The open connections.
struct Connections {
    cap: usize,
    table: Mutex<Table>,
    /// Signalled whenever a connection closes.
    freed: Notify,
}

#[derive(Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Slot>,
    tally: Tally,
}

struct Slot {
    /// In the middle of a request: never closed to make room.
    busy: bool,
    /// Since when it has been waiting for a request.
    idle_since: Instant,
    /// Cancelled to close it.
    close: CancellationToken,
}

/// What the operator is warned of, at most once per [`LOG_EVERY`].
#[derive(Default)]
struct Tally {
    evicted: u64,
    refused: u64,
    accept_failed: u64,
    accept_error: String,
    last_warned: Option<Instant>,
}

impl Connections {
    fn new(cap: usize) -> Connections {
        Connections {
            cap: cap.max(1),
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn accept_failed(&self, e: &std::io::Error) {
        let mut table = self.lock();
        table.tally.accept_failed += 1;
        table.tally.accept_error = e.to_string();
        table.warn(self.cap);
    }

    /// A slot for a new connection: a free one, or one made by closing the connection
    /// that has waited longest for a request. None if every connection is busy.
    async fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let deadline = Instant::now() + EVICT_WAIT;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut table = self.lock();
                if table.open.len() < self.cap {
                    return Some(table.open_slot(self));
                }
                let closing = table.open.values().any(|s| s.close.is_cancelled());
                if !closing {
                    let Table { open, tally, .. } = &mut *table;
                    let oldest = open
                        .values()
                        .filter(|s| !s.busy)
                        .min_by_key(|s| s.idle_since);
                    match oldest {
                        Some(slot) => {
                            slot.close.cancel();
                            tally.evicted += 1;
                        }
                        None => tally.refused += 1,
                    }
                    let refused = oldest.is_none();
                    table.warn(self.cap);
                    if refused {
                        return None;
                    }
                }
            }
            // The closed connection's task drops its socket, then its ticket.
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }
}

impl Table {
    fn open_slot(&mut self, conns: &Arc<Connections>) -> Ticket {
        let id = self.next;
        self.next += 1;
        let close = CancellationToken::new();
        self.open.insert(
            id,
            Slot {
                busy: false,
                idle_since: Instant::now(),
                close: close.clone(),
            },
        );
        Ticket {
            id,
            conns: conns.clone(),
            close,
        }
    }

    /// Warns of what the tally counted, unless it did within [`LOG_EVERY`]; whether
    /// it did.
    fn warn(&mut self, cap: usize) -> bool {
        let now = Instant::now();
        let t = &mut self.tally;
        if t.last_warned.is_some_and(|at| now - at < LOG_EVERY) {
            return false;
        }
        if t.evicted + t.refused > 0 {
            tracing::warn!(
                "admin API: all {cap} connections open; closed {} that had sent no request \
                 to make room, refused {} while all were answering requests (warned at most \
                 once a minute)",
                t.evicted,
                t.refused
            );
        }
        if t.accept_failed > 0 {
            tracing::warn!(
                "the admin API could not accept {} connections: {}",
                t.accept_failed,
                t.accept_error
            );
        }
        *t = Tally {
            last_warned: Some(now),
            ..Tally::default()
        };
        true
    }
}

/// A connection's slot, freed when the connection's task ends.
struct Ticket {
    id: u64,
    conns: Arc<Connections>,
    close: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.conns.lock().open.remove(&self.id);
        self.conns.freed.notify_one();
    }
}

/// A request in progress on a connection.
struct Busy(Arc<Ticket>);

impl Busy {
    fn enter(ticket: &Arc<Ticket>) -> Busy {
        if let Some(slot) = ticket.conns.lock().open.get_mut(&ticket.id) {
            slot.busy = true;
        }
        Busy(ticket.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(slot) = self.0.conns.lock().open.get_mut(&self.0.id) {
            slot.busy = false;
            slot.idle_since = Instant::now();
        }
    }
}

/// A socket whose writes fail once they have made no progress for [`WRITE_TIMEOUT`]:
/// a client that never reads its answer cannot hold its connection.
struct WriteDeadline {
    io: TcpStream,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteDeadline {
    fn new(io: TcpStream) -> WriteDeadline {
        WriteDeadline { io, stalled: None }
    }

    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing of its answer for {} s",
                    WRITE_TIMEOUT.as_secs()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests;
