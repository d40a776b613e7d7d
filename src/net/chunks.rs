//! Chunk streams: serving span requests to children and siblings, and the persistent
//! fetch streams to the parent and siblings that hash every chunk as it arrives.

use super::limits::{CHUNK_STREAM_IDLE, Permit};
use super::*;
use crate::engine::Offence;
use crate::store::Unreadable;

/// How to answer a chunk request; or why the peer is refused altogether.
pub(super) type ServeAnswer = Result<Serving, String>;

/// What to send for each chunk of a request.
pub(super) struct Serving {
    pub(super) chunks: Vec<Served>,
    /// The peer is a sibling: served under the local upload limit.
    pub(super) sibling: bool,
    /// The update and the request's base, when chunks may go as deltas against it.
    pub(super) delta: Option<(Arc<SignedManifest>, Arc<SignedManifest>)>,
}

/// A chunk span to fetch, with what each chunk must hash to.
pub(super) struct FetchJob {
    pub(super) id: FetchId,
    /// Whom it is asked of.
    pub(super) source: PublicKey,
    pub(super) update: Hash,
    pub(super) first: u32,
    pub(super) direct: bool,
    pub(super) expected: Vec<(Hash, u32)>,
    /// What the chunks may come as deltas against.
    pub(super) base: Option<Arc<delta::Base>>,
}

/// The upload limits: to children (the tree) and to siblings (the site's LAN).
pub(super) struct Uploads {
    pub(super) children: Option<Arc<Limiter>>,
    pub(super) siblings: Option<Arc<Limiter>>,
}

/// What every chunk stream a node serves shares.
pub(super) struct Server {
    pub(super) node: Arc<Node>,
    /// A test fault: damage the first this many chunks, and deltas, sent (one byte).
    pub(super) corrupt: [AtomicU32; 2],
    pub(super) uploads: Uploads,
    pub(super) deltas: delta::Deltas,
}

/// Serves span requests on one chunk stream of `peer`.
pub(super) async fn serve_chunks(
    peer: PublicKey,
    mut stream: Stream,
    ev: mpsc::UnboundedSender<LoopInput>,
    server: Arc<Server>,
    _permit: Permit,
) {
    // One chunk answer, header then bytes, is one write: the header does not go out
    // as a frame of its own.
    let mut buf = Vec::new();
    const H: usize = proto::CHUNK_HEADER_LEN;
    let bad = |why: String| {
        let _ = ev.send(LoopInput::Offence {
            peer,
            offence: Offence::BadFrame,
            reason: format!("chunk stream: {why}"),
        });
    };
    loop {
        // A stream idle this long is closed: the fetching side opens another when it
        // next needs one.
        let read = proto::read_frame(&mut stream, proto::MAX_REQUEST_FRAME, "chunk request");
        let req: ChunkRequest = match timeout(CHUNK_STREAM_IDLE, read).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(proto::ProtoError::Io(_))) => return,
            Ok(Err(e)) => return bad(e.to_string()),
        };
        if let Err(e) = req.check() {
            return bad(e.to_string());
        }
        let (reply, rx) = oneshot::channel();
        if ev
            .send(LoopInput::Serve {
                peer,
                req: req.clone(),
                reply,
            })
            .is_err()
        {
            return;
        }
        let answer = match rx.await {
            Ok(a) => a,
            Err(_) => return,
        };
        let result: Result<u64, proto::ProtoError> = async {
            let serving = match answer {
                Ok(serving) => serving,
                Err(reason) => {
                    let reason = reason.as_bytes();
                    let reason = &reason[..reason.len().min(1024)];
                    proto::write_chunk_header(
                        &mut stream,
                        proto::CHUNK_REFUSED,
                        reason.len() as u32,
                    )
                    .await?;
                    stream.write_all(reason).await?;
                    stream.close().await?;
                    return Err(proto::ProtoError::Violation("refused".into()));
                }
            };
            let upload = if serving.sibling {
                &server.uploads.siblings
            } else {
                &server.uploads.children
            };
            let store = &server.node.store;
            let mut sent = 0u64;
            for (index, c) in (req.first..).zip(serving.chunks) {
                let (hash, len) = match c {
                    Served::Data { hash, len } => (hash, len),
                    Served::Missing => {
                        proto::write_chunk_header(&mut stream, proto::CHUNK_MISSING, 0).await?;
                        continue;
                    }
                    Served::Elsewhere { holder } => {
                        let mut answer = proto::chunk_header(proto::CHUNK_ELSEWHERE, 32).to_vec();
                        answer.extend_from_slice(&holder.0);
                        stream.write_all(&answer).await?;
                        continue;
                    }
                };
                // A delta made for an earlier requester goes as it is, unread.
                let known = serving
                    .delta
                    .as_ref()
                    .and_then(|(_, base)| server.deltas.known(&hash, &base.id));
                if let Some(Some(delta)) = &known {
                    buf.resize(H, 0);
                    buf.extend_from_slice(delta);
                    send_answer(&mut stream, &server, &mut buf, proto::CHUNK_DELTA, upload).await?;
                    sent += delta.len() as u64;
                    continue;
                }
                // A page-cache read and hash of one chunk: short enough to do in place.
                // Every byte after the header is overwritten by the read. A damaged
                // copy is never sent: it is quarantined and fetched again.
                buf.resize(H + len as usize, 0);
                if let Err(e) = store.read_checked(&hash, &mut buf[H..]) {
                    if let Unreadable::Damaged { loc, .. } = e {
                        let _ = ev.send(LoopInput::Damaged { chunk: hash, loc });
                    }
                    tracing::debug!(chunk = %hash, "a chunk to serve cannot be read: {e}");
                    proto::write_chunk_header(&mut stream, proto::CHUNK_MISSING, 0).await?;
                    continue;
                }
                let mut kind = proto::CHUNK_DATA;
                if let Some((update, base)) = serving.delta.as_ref().filter(|_| known.is_none()) {
                    // Matching is CPU work of a millisecond or so: off the async threads,
                    // a few at a time.
                    let turn = server.deltas.turn().await;
                    let (server, update, base) = (server.clone(), update.clone(), base.clone());
                    let data = std::mem::take(&mut buf);
                    let (data, delta, damaged) = tokio::task::spawn_blocking(move || {
                        let target = &data[H..];
                        let mut damaged = Vec::new();
                        let delta = server.deltas.encode(
                            &server.node.store,
                            (&update, &base),
                            index,
                            hash,
                            target,
                            &mut damaged,
                        );
                        (data, delta, damaged)
                    })
                    .await
                    .map_err(|e| proto::ProtoError::Io(std::io::Error::other(e)))?;
                    drop(turn);
                    for (chunk, loc) in damaged {
                        let _ = ev.send(LoopInput::Damaged { chunk, loc });
                    }
                    buf = data;
                    if let Some(delta) = delta {
                        kind = proto::CHUNK_DELTA;
                        buf.truncate(H);
                        buf.extend_from_slice(&delta);
                    }
                }
                send_answer(&mut stream, &server, &mut buf, kind, upload).await?;
                sent += (buf.len() - H) as u64;
            }
            stream.flush().await?;
            Ok(sent)
        }
        .await;
        match result {
            Ok(bytes) => {
                let _ = ev.send(LoopInput::Served {
                    peer,
                    update: req.update,
                    bytes,
                });
            }
            Err(_) => return,
        }
    }
}

/// Sends one chunk answer of `kind` whose payload follows the header room in `buf`, as
/// one write, paced by `upload`.
pub(super) async fn send_answer(
    stream: &mut Stream,
    server: &Server,
    buf: &mut [u8],
    kind: u8,
    upload: &Option<Arc<Limiter>>,
) -> Result<(), proto::ProtoError> {
    const H: usize = proto::CHUNK_HEADER_LEN;
    let payload = (buf.len() - H) as u32;
    if server.corrupt[usize::from(kind == proto::CHUNK_DELTA)]
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
        && let Some(b) = buf.get_mut(H)
    {
        *b ^= 0xff;
    }
    buf[..H].copy_from_slice(&proto::chunk_header(kind, payload));
    pace(upload, u64::from(payload)).await;
    stream.write_all(buf).await?;
    Ok(())
}

/// How often a chunk stream that fails before its first answer is opened, and the
/// wait before the second attempt (doubling after each).
pub(super) const OPEN_ATTEMPTS: u32 = 6;
pub(super) const REOPEN_AFTER: Duration = Duration::from_millis(10);

/// One of a node's persistent chunk streams to a source (its parent or a sibling).
pub(super) async fn fetch_worker(
    mut control: libp2p_stream::Control,
    source: PublicKey,
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<FetchJob>>>,
    writer: mpsc::Sender<WriteJob>,
    fetch_timeout: Duration,
    download: Option<Arc<Limiter>>,
    node: Arc<Node>,
) {
    let Some(pid) = source.peer_id() else { return };
    let mut stream: Option<Stream> = None;
    loop {
        let job = { jobs.lock().await.recv().await };
        let Some(job) = job else { return };
        // A peer drops inbound streams it cannot accept fast enough (libp2p-stream's
        // accept queue holds one), so a stream that fails before its first answer is
        // opened again, a few times and further apart each time (a burst of new
        // streams from a whole site at once takes a while to be accepted), before the
        // fetch is given up and its chunks are asked of another source. A kept stream
        // that fails at once was closed by the source while idle: another is opened.
        for attempt in 0..OPEN_ATTEMPTS {
            let fresh = stream.is_none();
            if fresh {
                match timeout(HANDSHAKE_TIMEOUT, control.open_stream(pid, proto::CHUNKS)).await {
                    Ok(Ok(s)) => stream = Some(s),
                    Ok(Err(e)) => crate::peer_warn!(
                        source,
                        "chunk stream not opened",
                        "cannot open a chunk stream: {e}"
                    ),
                    Err(_) => crate::peer_warn!(
                        source,
                        "chunk stream not opened",
                        "opening a chunk stream timed out"
                    ),
                }
            }
            let Some(s) = stream.as_mut() else { break };
            let outcome = timeout(
                fetch_timeout,
                fetch_span(s, &job, &writer, &download, &node),
            )
            .await;
            let (span, n) = (job.first, job.expected.len());
            match outcome {
                Ok(Ok(())) => break,
                Ok(Err(proto::ProtoError::Io(e))) if attempt + 1 < OPEN_ATTEMPTS => {
                    tracing::debug!("a chunk stream failed ({e}); opening another");
                    stream = None;
                    if fresh {
                        tokio::time::sleep(REOPEN_AFTER * (1 << attempt)).await;
                    }
                }
                Ok(Err(e)) => {
                    crate::peer_warn!(
                        source, "fetch failed", update = %job.update,
                        "fetch of chunks {span}+{n} failed: {e}"
                    );
                    stream = None;
                    break;
                }
                Err(_) => {
                    crate::peer_warn!(
                        source, "fetch failed", update = %job.update,
                        "fetch of chunks {span}+{n} timed out"
                    );
                    stream = None;
                    break;
                }
            }
        }
        if writer.send(WriteJob::End { fetch: job.id }).await.is_err() {
            return;
        }
    }
}

/// Requests one span and checks every chunk of the answer against its expected hash.
pub(super) async fn fetch_span(
    s: &mut Stream,
    job: &FetchJob,
    writer: &mpsc::Sender<WriteJob>,
    download: &Option<Arc<Limiter>>,
    node: &Arc<Node>,
) -> Result<(), proto::ProtoError> {
    let count = job.expected.len() as u32;
    let base = job
        .base
        .as_ref()
        .filter(|b| !b.broken.load(Ordering::Relaxed));
    proto::write_frame(
        s,
        &ChunkRequest {
            base: base.map(|b| b.id),
            count,
            first: job.first,
            direct: job.direct,
            update: job.update,
        },
    )
    .await?;
    for (k, (hash, len)) in job.expected.iter().enumerate() {
        let index = job.first + k as u32;
        let (kind, n) = proto::read_chunk_header(s).await?;
        match kind {
            proto::CHUNK_DATA => {
                if n != *len {
                    let why = format!("chunk {index} sent with {n} bytes; the manifest says {len}");
                    return Err(bad_answer(writer, job.id, index, why).await);
                }
                // Read no faster than the limit: the parent's sending waits on the
                // streams' flow control, so the link carries no more either.
                pace(download, u64::from(n)).await;
                let mut data = vec![0u8; n as usize];
                s.read_exact(&mut data).await?;
                // The one hash of this chunk on this node: it is the verification.
                let job = if Hash::of(&data) == *hash {
                    WriteJob::Chunk {
                        fetch: job.id,
                        index,
                        hash: *hash,
                        data,
                        wire: n,
                    }
                } else {
                    WriteJob::Bad {
                        fetch: job.id,
                        index,
                    }
                };
                if writer.send(job).await.is_err() {
                    return Ok(());
                }
            }
            proto::CHUNK_DELTA => {
                let Some(base) = base.filter(|_| n < *len) else {
                    let asked = if base.is_some() {
                        "whole"
                    } else {
                        "without a base"
                    };
                    let why = format!(
                        "chunk {index} sent as a delta of {n} bytes; it has {len} bytes and was asked for {asked}"
                    );
                    return Err(bad_answer(writer, job.id, index, why).await);
                };
                pace(download, u64::from(n)).await;
                let mut bytes = vec![0u8; n as usize];
                s.read_exact(&mut bytes).await?;
                // Reading up to 8 base chunks and hashing: off the async threads.
                let (node, base, expected) = (node.clone(), base.clone(), (*hash, *len));
                let rebuilt = tokio::task::spawn_blocking(move || {
                    delta::rebuild(&node.store, &base, &bytes, expected)
                })
                .await
                .map_err(|e| proto::ProtoError::Io(std::io::Error::other(e)))?;
                let verdict = match rebuilt {
                    Ok(data) => Some(WriteJob::Chunk {
                        fetch: job.id,
                        index,
                        hash: *hash,
                        data,
                        wire: n,
                    }),
                    Err(delta::Rebuild::Bad(why)) => {
                        crate::peer_warn!(
                            job.source, "bad delta", update = %job.update,
                            "chunk {index}: a bad delta: {why}"
                        );
                        Some(WriteJob::Bad {
                            fetch: job.id,
                            index,
                        })
                    }
                    // Not the sender's fault: left unanswered, asked again without a base.
                    Err(delta::Rebuild::Local { why, damaged }) => {
                        tracing::error!(
                            "cannot rebuild chunk {index} of update {}: {why}",
                            job.update
                        );
                        damaged.map(|(chunk, loc)| WriteJob::Quarantine { chunk, loc })
                    }
                };
                if let Some(verdict) = verdict
                    && writer.send(verdict).await.is_err()
                {
                    return Ok(());
                }
            }
            proto::CHUNK_MISSING => {
                let missing = WriteJob::Missing {
                    fetch: job.id,
                    index,
                };
                if writer.send(missing).await.is_err() {
                    return Ok(());
                }
            }
            proto::CHUNK_ELSEWHERE => {
                let mut key = [0u8; 32];
                s.read_exact(&mut key).await?;
                let elsewhere = WriteJob::Elsewhere {
                    fetch: job.id,
                    index,
                    holder: PublicKey(key),
                };
                if writer.send(elsewhere).await.is_err() {
                    return Ok(());
                }
            }
            _ => {
                let mut reason = vec![0u8; n as usize];
                s.read_exact(&mut reason).await?;
                return Err(proto::ProtoError::Violation(format!(
                    "refused: {}",
                    String::from_utf8_lossy(&reason)
                )));
            }
        }
    }
    Ok(())
}

/// A chunk answer that breaks the protocol: counted as a bad chunk from its sender, and
/// the stream is given up.
pub(super) async fn bad_answer(
    writer: &mpsc::Sender<WriteJob>,
    fetch: FetchId,
    index: u32,
    why: String,
) -> proto::ProtoError {
    let _ = writer.send(WriteJob::Bad { fetch, index }).await;
    proto::ProtoError::Violation(why)
}
