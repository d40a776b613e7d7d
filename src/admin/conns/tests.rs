//! The admin API's connection limits against a server on loopback with production
//! timeouts, and a daemon stand-in that answers every request but `wait`, which it
//! holds.

use super::*;
use crate::net::Handle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// Bound on anything a test waits for: generous, only there to catch a hang.
const HANG: Duration = Duration::from_secs(60);

struct Server {
    addr: SocketAddr,
    conns: Arc<Connections>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(cap: usize) -> Server {
        let (handle, mut requests) = Handle::stand_in();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((req, reply)) = requests.recv().await {
                match req {
                    Request::Wait { .. } => held.push(reply),
                    _ => {
                        let _ = reply.send(Ok(Answer::Metrics("ok".into())));
                    }
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(Connections::new(cap));
        let stop = CancellationToken::new();
        let app = super::super::http::router(handle, TOKEN);
        let served = tokio::spawn(run(listener, app, conns.clone(), stop.clone()));
        Server {
            addr,
            conns,
            stop,
            served,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }

    fn open(&self) -> usize {
        self.conns.lock().open.len()
    }

    /// Waits until at most `n` connections are open; how long that took.
    async fn until_open_at_most(&self, n: usize) -> Duration {
        let t0 = Instant::now();
        while self.open() > n {
            assert!(
                t0.elapsed() < HANG,
                "{} connections still open",
                self.open()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t0.elapsed()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(HANG, self.served)
            .await
            .expect("the server stops")
            .expect("the server task ends");
    }
}

fn status_request() -> String {
    format!("GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
}

/// Reads one answer's head and body (by its Content-Length); the status code and body.
async fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("content-length"));
            if buf.len() >= end + 4 + len {
                let code = head[9..12].parse().expect("status code");
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (code, body);
            }
        }
        let n = tokio::time::timeout(HANG, s.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before a whole answer: {buf:?}");
        buf.extend_from_slice(&byte[..n]);
    }
}

/// Reads until the server closes; how long that took.
async fn until_closed(s: &mut TcpStream) -> Duration {
    let t0 = Instant::now();
    let mut sink = [0u8; 4096];
    loop {
        match tokio::time::timeout(HANG, s.read(&mut sink)).await {
            Err(_) => panic!("the connection was still open after {HANG:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_header_never_finished_is_cut_after_the_header_timeout() {
    let server = Server::start(8).await;
    let mut slow = server.connect().await;
    slow.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut silent = server.connect().await;
    let took = until_closed(&mut slow).await;
    assert!(
        took >= HEADER_TIMEOUT - Duration::from_secs(1) && took < HEADER_TIMEOUT * 3,
        "an unfinished header was cut after {took:?}"
    );
    let took = until_closed(&mut silent).await;
    assert!(
        took < HEADER_TIMEOUT * 3,
        "a silent connection lived {took:?}"
    );
    server.until_open_at_most(0).await;
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = Server::start(8).await;
    let mut s = server.connect().await;
    s.write_all(status_request().as_bytes())
        .await
        .expect("write");
    assert_eq!(read_answer(&mut s).await.0, 200);
    let took = until_closed(&mut s).await;
    assert!(
        took >= HEADER_TIMEOUT - Duration::from_secs(1) && took < HEADER_TIMEOUT * 3,
        "an idle keep-alive connection was closed after {took:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_trickled_body_is_cut_after_the_body_timeout() {
    let server = Server::start(8).await;
    let head = |token: &str| {
        format!(
            "POST /api/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        )
    };
    // Without the token, the body is never read: 401 at once, and the connection goes.
    let mut stranger = server.connect().await;
    stranger
        .write_all(head("wrong").as_bytes())
        .await
        .expect("write");
    let t0 = Instant::now();
    assert_eq!(read_answer(&mut stranger).await.0, 401);
    until_closed(&mut stranger).await;
    assert!(t0.elapsed() < BODY_TIMEOUT / 2, "took {:?}", t0.elapsed());

    // With it, a body that trickles is answered 408 once the body timeout passes.
    let mut s = server.connect().await;
    s.write_all(head(TOKEN).as_bytes()).await.expect("write");
    let t0 = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        while wr.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(HANG, rd.read_to_end(&mut answer))
        .await
        .expect("the connection closes in time")
        .ok();
    let took = t0.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    assert!(
        took >= BODY_TIMEOUT - Duration::from_secs(1) && took < BODY_TIMEOUT * 3,
        "a trickled body was cut after {took:?}"
    );
    trickle.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_cut() {
    let server = Server::start(8).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let s = socket.connect(server.addr).await.expect("connect");
    // Pipelined requests for the UI's script (20 KiB each), never read.
    let (_rd, mut wr) = s.into_split();
    let requests = "GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(requests.as_bytes()).await;
        wr
    });
    // Wait for the server to be stuck writing, then for it to give up.
    let t0 = Instant::now();
    while server.open() == 0 {
        assert!(t0.elapsed() < HANG, "the connection never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = server.until_open_at_most(0).await;
    assert!(
        took < WRITE_TIMEOUT * 3,
        "a client that reads nothing held its connection {took:?}"
    );
    writer.abort();
    server.stop().await;
}

#[tokio::test]
async fn over_the_cap_the_longest_idle_connection_makes_room_for_the_operator() {
    let server = Server::start(4).await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = server.connect().await;
        s.write_all(b"GET /api/status HTTP/1.1\r\n")
            .await
            .expect("write");
        slow.push(s);
        // Each is admitted before the next, so that their order is known.
        let n = slow.len();
        let t0 = Instant::now();
        while server.open() < n {
            assert!(t0.elapsed() < HANG);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let t0 = Instant::now();
    let mut operator = server.connect().await;
    operator
        .write_all(status_request().as_bytes())
        .await
        .expect("write");
    let (code, body) = read_answer(&mut operator).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        t0.elapsed() < HEADER_TIMEOUT / 2,
        "the operator waited {:?} behind slow connections",
        t0.elapsed()
    );
    // The oldest slow connection was closed for it, well before its header timeout.
    let took = until_closed(&mut slow[0]).await;
    assert!(took < HEADER_TIMEOUT / 2, "{took:?}");
    assert!(server.open() <= 4);
    server.stop().await;
}

#[tokio::test]
async fn when_every_connection_is_answering_a_newcomer_gets_503() {
    let server = Server::start(2).await;
    let mut waits = Vec::new();
    for _ in 0..2 {
        let mut s = server.connect().await;
        s.write_all(
            format!(
                "GET /api/updates/ab/wait HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        waits.push(s);
    }
    let t0 = Instant::now();
    while server.conns.lock().open.values().filter(|s| s.busy).count() < 2 {
        assert!(t0.elapsed() < HANG, "the waits never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut late = server.connect().await;
    let (code, body) = read_answer(&mut late).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("try again"), "{body}");
    assert_eq!(server.open(), 2);
    drop(waits);
    server.stop().await;
}

#[test]
fn strangers_and_slow_connections_are_warned_of_at_most_once_a_minute() {
    let mut refused = super::super::http::Refused::default();
    let warned = (0..1000).filter(|_| refused.note("/api/status")).count();
    assert_eq!(warned, 1, "warnings of 1,000 requests without the token");
    let mut table = Table::default();
    let warned = (0..1000)
        .filter(|_| {
            table.tally.evicted += 1;
            table.warn(4)
        })
        .count();
    assert_eq!(
        warned, 1,
        "warnings of 1,000 connections closed to make room"
    );
}
