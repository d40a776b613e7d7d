//! Sessions: the join, control and sibling handshakes, and the live control and sibling
//! sessions that carry frames between the event loop and a peer.

use super::limits::{HELLO_TIMEOUT, Permit};
use super::*;
use crate::engine::Offence;

/// Tells the event loop that `peer` broke the protocol on a stream.
fn offend(
    ev: &mpsc::UnboundedSender<LoopInput>,
    peer: PublicKey,
    offence: Offence,
    reason: String,
) {
    let _ = ev.send(LoopInput::Offence {
        peer,
        offence,
        reason,
    });
}

/// The answering side of a join: one request, within [`HELLO_TIMEOUT`] and
/// [`proto::MAX_JOIN_REQUEST_FRAME`], then the event loop's verdict.
pub(super) async fn serve_join(
    peer: PublicKey,
    mut stream: Stream,
    ev: mpsc::UnboundedSender<LoopInput>,
    _permit: Permit,
) {
    let read = proto::read_frame(&mut stream, proto::MAX_JOIN_REQUEST_FRAME, "join request");
    let req: Result<Option<JoinRequest>, _> = match timeout(HELLO_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => return,
    };
    let reply = match req {
        Ok(Some(JoinRequest { secret })) => {
            let (reply, rx) = oneshot::channel();
            if ev
                .send(LoopInput::Join {
                    peer,
                    secret,
                    reply,
                })
                .is_err()
            {
                return;
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
        Ok(None) => return,
        Err(e) => {
            let reason = format!("bad join request: {e}");
            offend(&ev, peer, Offence::BadFrame, reason.clone());
            JoinReply::Refused { reason }
        }
    };
    let _ = timeout(HELLO_TIMEOUT, async {
        proto::write_frame(&mut stream, &reply).await?;
        stream.close().await?;
        Ok::<_, proto::ProtoError>(())
    })
    .await;
}

/// The answering side of a control stream (from a child) or a sibling stream (from a
/// sibling): the hello must come within [`HELLO_TIMEOUT`] and
/// [`proto::MAX_HELLO_FRAME`]; the event loop checks its chain; the answer is `Welcome`
/// and the session, or `Refused` with the reason.
pub(super) async fn accept_hello(
    peer: PublicKey,
    mut stream: Stream,
    ev: mpsc::UnboundedSender<LoopInput>,
    sibling: bool,
    _permit: Permit,
) {
    let read = proto::read_frame::<_, ControlFrame>(&mut stream, proto::MAX_HELLO_FRAME, "hello");
    let verdict = match timeout(HELLO_TIMEOUT, read).await {
        Ok(Ok(Some(ControlFrame::Hello { site, addrs, chain }))) => {
            let (reply, rx) = oneshot::channel();
            let check = if sibling {
                LoopInput::SiblingHello { peer, chain, reply }
            } else {
                LoopInput::Hello {
                    peer,
                    chain,
                    site,
                    addrs,
                    reply,
                }
            };
            if ev.send(check).is_err() {
                return;
            }
            rx.await
                .unwrap_or_else(|_| Err("the node is shutting down".into()))
        }
        Ok(Ok(None)) => return,
        Ok(Ok(_)) => {
            let reason = "the first frame must be Hello".to_string();
            offend(&ev, peer, Offence::BadFrame, reason.clone());
            Err(reason)
        }
        Ok(Err(e)) => {
            let reason = format!("bad hello: {e}");
            offend(&ev, peer, Offence::BadFrame, reason.clone());
            Err(reason)
        }
        Err(_) => Err("no hello in time".to_string()),
    };
    match verdict {
        Ok(chain) => {
            let welcome = ControlFrame::Welcome {
                chain,
                time: now_ms(),
            };
            if proto::write_frame(&mut stream, &welcome).await.is_ok() {
                let from = if sibling { Side::Sibling } else { Side::Child };
                run_control(peer, from, stream, ev).await;
            }
        }
        Err(reason) => {
            let _ = timeout(HELLO_TIMEOUT, async {
                let refused = ControlFrame::Refused {
                    time: now_ms(),
                    reason,
                };
                proto::write_frame(&mut stream, &refused).await?;
                stream.close().await?;
                Ok::<_, proto::ProtoError>(())
            })
            .await;
        }
    }
}

/// The control stream to the parent, child side: present the chain, check the renewed
/// one, then run the session.
pub(super) async fn open_control(
    mut control: libp2p_stream::Control,
    parent: PublicKey,
    me: PublicKey,
    root: PublicKey,
    hello: ControlFrame,
    ev: mpsc::UnboundedSender<LoopInput>,
) {
    let handshake = async {
        let pid = parent.peer_id().ok_or("bad parent key")?;
        let mut s = control
            .open_stream(pid, proto::CONTROL)
            .await
            .map_err(|e| e.to_string())?;
        proto::write_frame(&mut s, &hello)
            .await
            .map_err(|e| e.to_string())?;
        match proto::read_frame(&mut s, proto::MAX_JOIN_FRAME, "welcome").await {
            Ok(Some(ControlFrame::Welcome { chain, time })) => {
                let members = verify_chain(&chain, &root, now_secs()).map_err(|e| {
                    with_clock_note(
                        format!("the parent sent a chain that is refused: {e}"),
                        time,
                    )
                })?;
                if members.last().map(|m| (m.node, m.issuer)) != Some((me, parent)) {
                    return Err("the parent sent a chain for another node".to_string());
                }
                Ok((s, chain, time))
            }
            Ok(Some(ControlFrame::Refused { reason, time })) => Err(with_clock_note(
                format!("the parent refused this node: {reason}"),
                time,
            )),
            Ok(_) => Err("the parent broke the protocol".to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok((stream, chain, time))) => {
            let _ = ev.send(LoopInput::Renewed { chain, time });
            run_control(parent, Side::Parent, stream, ev).await;
        }
        Ok(Err(why)) => {
            let _ = ev.send(LoopInput::ControlDown { peer: parent, why });
        }
        Err(_) => {
            let _ = ev.send(LoopInput::ControlDown {
                peer: parent,
                why: "the control handshake timed out".into(),
            });
        }
    }
}

/// What a node checks a sibling's chain against: the pinned root, its own parent (the
/// sibling's must be the same) and its own site (likewise).
#[derive(Clone)]
pub(super) struct SiblingCheck {
    pub(super) root: PublicKey,
    pub(super) parent: PublicKey,
    pub(super) site: String,
}

/// Accepts `chain` from `peer` as a sibling's, or says why not.
pub(super) fn check_sibling(
    peer: &PublicKey,
    chain: &[Envelope],
    check: &SiblingCheck,
) -> Result<(), String> {
    let members = verify_chain(chain, &check.root, now_secs())
        .map_err(|e| format!("its certificate chain is refused: {e}"))?;
    let last = members.last().ok_or("empty chain")?;
    if last.node != *peer {
        return Err("it presented the certificate chain of another node".into());
    }
    if last.issuer != check.parent {
        return Err("it is not a child of this node's parent".into());
    }
    if last.site.as_deref() != Some(check.site.as_str()) {
        return Err(format!(
            "its parent certified it at site {:?}, not at {:?}",
            last.site.as_deref().unwrap_or("(none)"),
            check.site
        ));
    }
    Ok(())
}

/// The sibling stream to a sibling this node dialled: present our chain, check theirs.
pub(super) async fn open_sibling(
    mut control: libp2p_stream::Control,
    peer: PublicKey,
    chain: Vec<Envelope>,
    check: SiblingCheck,
    ev: mpsc::UnboundedSender<LoopInput>,
) {
    // As for chunk streams, a peer drops an inbound stream it cannot accept fast enough:
    // a stream that fails before any answer is opened again, a few times. A refusal or
    // a chain that is not a sibling's is final.
    let mut why = String::new();
    for _ in 0..3 {
        let handshake = async {
            let pid = peer
                .peer_id()
                .ok_or((false, "bad sibling key".to_string()))?;
            let io = |e: &dyn std::fmt::Display| (true, e.to_string());
            let mut s = control
                .open_stream(pid, proto::SIBLINGS)
                .await
                .map_err(|e| io(&e))?;
            let hello = ControlFrame::Hello {
                site: None,
                addrs: Vec::new(),
                chain: chain.clone(),
            };
            proto::write_frame(&mut s, &hello)
                .await
                .map_err(|e| io(&e))?;
            match proto::read_frame(&mut s, proto::MAX_JOIN_FRAME, "sibling welcome").await {
                Ok(Some(ControlFrame::Welcome { chain, .. })) => {
                    check_sibling(&peer, &chain, &check).map_err(|e| (false, e))?;
                    Ok(s)
                }
                Ok(Some(ControlFrame::Refused { reason, .. })) => {
                    Err((false, format!("the sibling refused this node: {reason}")))
                }
                Ok(_) => Err((false, "the sibling broke the protocol".to_string())),
                Err(e) => Err(io(&e)),
            }
        };
        match timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => return run_control(peer, Side::Sibling, stream, ev).await,
            Ok(Err((retry, e))) => {
                why = e;
                if !retry {
                    break;
                }
            }
            Err(_) => {
                why = "the sibling handshake timed out".into();
                break;
            }
        }
    }
    crate::peer_warn!(peer, "no sibling session", "no sibling session: {why}");
    let _ = ev.send(LoopInput::ControlDown { peer, why });
}

/// Who is at the other end of a session, which sets how large its frames may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Parent,
    Child,
    Sibling,
}

impl Side {
    /// The largest frame this side sends: an offer from a parent, a report from a
    /// child, a `Have` from a sibling.
    fn frame_limit(self) -> usize {
        match self {
            Side::Parent => proto::MAX_CONTROL_FRAME,
            Side::Child => proto::MAX_FROM_CHILD_FRAME,
            Side::Sibling => proto::MAX_FROM_SIBLING_FRAME,
        }
    }
}

/// Bytes of a session's frames that may wait for the event loop at once: a peer that
/// sends faster than the node handles its frames waits on its stream's flow control.
/// Twice its largest frame, so that one large frame never waits on itself.
fn queue_budget(side: Side) -> usize {
    (2 * side.frame_limit()).max(4 << 20)
}

/// A live control or sibling session: frames out from the event loop, frames in to it.
pub(super) async fn run_control(
    peer: PublicKey,
    from: Side,
    stream: Stream,
    ev: mpsc::UnboundedSender<LoopInput>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<ControlFrame>();
    let sibling = from == Side::Sibling;
    if ev.send(LoopInput::ControlUp { peer, sibling, tx }).is_err() {
        return;
    }
    let (mut r, mut w) = stream.split();
    let writer = async {
        while let Some(frame) = rx.recv().await {
            proto::write_frame(&mut w, &frame).await?;
        }
        // The event loop ended the session.
        w.close().await?;
        Ok::<_, proto::ProtoError>(())
    };
    let budget = Arc::new(tokio::sync::Semaphore::new(queue_budget(from)));
    let origin = tokio::time::Instant::now();
    let mut pace = crate::bandwidth::Bucket::new(
        crate::bandwidth::Rate(limits::FRAMES_PER_SEC),
        limits::FRAME_BURST,
        0,
    );
    let reader = async {
        loop {
            let elapsed = origin.elapsed().as_millis() as u64;
            if let Some(wait) = pace.take(1, elapsed) {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let read = proto::read_frame_sized::<_, ControlFrame>(
                &mut r,
                from.frame_limit(),
                "control frame",
            );
            match read.await? {
                Some((frame, len)) => {
                    let Ok(held) = budget.clone().acquire_many_owned(len.max(1) as u32).await
                    else {
                        return Ok(());
                    };
                    if ev
                        .send(LoopInput::ControlMsg { peer, frame, held })
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                None => return Ok::<_, proto::ProtoError>(()),
            }
        }
    };
    let why = tokio::select! {
        r = writer => match r { Ok(()) => "closed".to_string(), Err(e) => e.to_string() },
        r = reader => match r {
            Ok(()) => "closed by the peer".to_string(),
            Err(e) => {
                if matches!(e, proto::ProtoError::TooLarge { .. } | proto::ProtoError::Wire(_)) {
                    offend(&ev, peer, Offence::BadFrame, e.to_string());
                }
                e.to_string()
            }
        },
    };
    let _ = ev.send(LoopInput::ControlDown { peer, why });
}

impl Daemon {
    pub(super) fn open_parent_session(&self, parent: PublicKey) {
        let hello = ControlFrame::Hello {
            site: self.opts.site.clone(),
            addrs: self
                .listen_addrs
                .iter()
                .take(proto::MAX_ADDRS)
                .map(|a| a.to_string())
                .collect(),
            chain: self.chain.clone(),
        };
        self.tasks.spawn(open_control(
            self.control.clone(),
            parent,
            self.node.node_key.public(),
            self.node.root_key,
            hello,
            self.ev_tx.clone(),
        ));
    }

    /// What a sibling's chain must show: this node's root, parent and site.
    pub(super) fn sibling_check(&self) -> Option<SiblingCheck> {
        Some(SiblingCheck {
            root: self.node.root_key,
            parent: *self.engine.parent()?,
            site: self.opts.site.clone()?,
        })
    }

    pub(super) fn open_sibling_session(&self, peer: PublicKey) {
        let Some(check) = self.sibling_check() else {
            return;
        };
        self.tasks.spawn(open_sibling(
            self.control.clone(),
            peer,
            self.chain.clone(),
            check,
            self.ev_tx.clone(),
        ));
    }

    /// A session with `peer` is over (or never started): the engine hears of it once.
    pub(super) fn end_session(&mut self, peer: PublicKey, why: &str) {
        let had_session = self.sessions.remove(&peer).is_some();
        let was_sibling = self.sibling_sessions.remove(&peer);
        let is_parent = Some(&peer) == self.engine.parent();
        self.fetchers.remove(&peer);
        if was_sibling {
            crate::peer_info!(peer, "session ended", "sibling session ended: {why}");
            self.engine.handle_disconnected(peer, now_ms());
        } else if had_session || is_parent {
            crate::peer_info!(
                peer,
                "session ended",
                parent = is_parent,
                "session ended: {why}"
            );
            self.engine.handle_disconnected(peer, now_ms());
        }
    }

    /// Dials a sibling the engine asked for, at the addresses the parent gave.
    pub(super) fn dial_sibling(&mut self, peer: PublicKey, now: u64) {
        let Ok(pid) = peer_of(&peer) else { return };
        if self.swarm.is_connected(&pid) {
            if !self.sessions.contains_key(&peer) {
                self.open_sibling_session(peer);
            }
            return;
        }
        let addrs = self.peer_addrs.get(&peer).cloned().unwrap_or_default();
        if addrs.is_empty() {
            self.engine.handle_disconnected(peer, now);
            return;
        }
        if let Err(e) = self
            .swarm
            .dial(DialOpts::peer_id(pid).addresses(addrs).build())
        {
            crate::peer_warn!(peer, "dial failed", "cannot dial a sibling: {e}");
            self.engine.handle_disconnected(peer, now);
        }
    }
}

/// `why`, with what this node's clock has to do with it when it is far from the
/// parent's `time` (Unix ms).
pub(super) fn with_clock_note(why: String, time: u64) -> String {
    match crate::engine::clock_note(time as i64 - now_ms() as i64) {
        Some(note) => format!("{why} ({note}: set it right)"),
        None => why,
    }
}
