//! Joining: the first run of a new node redeems its join token at the parent it names,
//! and the one-shot exchanges made before a node runs.

use super::*;

/// The first and longest wait between two tries to join (doubling between, with
/// jitter): a parent that is down or busy is tried again, never given up on.
const JOIN_RETRY_MIN: Duration = Duration::from_secs(1);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(60);

/// Redeems `token`, trying again with backoff while the parent cannot be reached or
/// drops the exchange; a refusal (a wrong, used or expired token) is final.
pub(super) async fn join_with_retries(
    swarm: &mut Swarm<Behaviour>,
    control: libp2p_stream::Control,
    key: &SecretKey,
    store: &Store,
    token: &JoinToken,
) -> Result<(), NetError> {
    let mut wait = JOIN_RETRY_MIN;
    loop {
        match join(swarm, control.clone(), key, store, token).await {
            Err(NetError::Join { addr, why }) if why.starts_with(TRANSIENT) => {
                // Spread over the upper half, so that many nodes joining at once do not
                // come back at once.
                let jitter = rand_below(wait.as_millis() as u64 / 2 + 1);
                let pause = wait / 2 + Duration::from_millis(jitter);
                tracing::warn!(
                    "joining through {addr} failed: {why}; trying again in {:.1} s",
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
                wait = (wait * 2).min(JOIN_RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// What a join failure worth another try starts with.
const TRANSIENT: &str = "cannot reach the parent";

/// A number below `n` from the system's random source (0 if it fails).
fn rand_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b) % n.max(1),
        Err(_) => 0,
    }
}

/// Redeems `token` at the parent it names: the first run of a joining node.
async fn join(
    swarm: &mut Swarm<Behaviour>,
    mut control: libp2p_stream::Control,
    key: &SecretKey,
    store: &Store,
    token: &JoinToken,
) -> Result<(), NetError> {
    let fail = |why: String| NetError::Join {
        addr: token.addr.clone(),
        why,
    };
    let addr: Multiaddr = token
        .addr
        .parse()
        .map_err(|e| fail(format!("not a multiaddr: {e}")))?;
    let parent = peer_of(&token.parent)?;
    tracing::info!(parent = %token.parent.node_id(), addr = %token.addr, "joining");
    let reply = exchange(swarm, addr, parent, async move {
        let mut s = control
            .open_stream(parent, proto::JOIN)
            .await
            .map_err(|e| e.to_string())?;
        proto::write_frame(
            &mut s,
            &JoinRequest {
                secret: token.secret,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let reply: Option<JoinReply> =
            proto::read_frame(&mut s, proto::MAX_JOIN_FRAME, "join reply")
                .await
                .map_err(|e| e.to_string())?;
        reply.ok_or_else(|| "the parent closed the stream without an answer".to_string())
    })
    .await
    .map_err(|e| fail(format!("{TRANSIENT}: {e}")))?;
    match reply {
        JoinReply::Refused { reason } => Err(NetError::JoinRefused(reason)),
        JoinReply::Accepted { chain, root, time } => {
            if root_fingerprint(&root) != token.root {
                return Err(fail(
                    "the parent's root key does not match the fingerprint in the token".into(),
                ));
            }
            // The token names the parent, and the connection proved it: a chain that
            // only this node's clock finds out of date is taken at the parent's time
            // (the token is used now), and the clock is called out.
            let members = verify_chain(&chain, &root, now_secs()).or_else(|e| {
                let note = crate::engine::clock_note(time as i64 - now_ms() as i64);
                match (&e, note) {
                    (member::ChainError::Cert { .. }, Some(note)) => {
                        let members = verify_chain(&chain, &root, time / 1000);
                        if members.is_ok() {
                            tracing::warn!("{note}: the new certificate looks out of date to this node; set the clock right");
                        }
                        members.map_err(|_| {
                            fail(format!("the certificate chain is refused: {e} ({note})"))
                        })
                    }
                    _ => Err(fail(format!("the certificate chain is refused: {e}"))),
                }
            })?;
            let mine = members.last();
            if mine.map(|m| (m.node, m.issuer)) != Some((key.public(), token.parent)) {
                return Err(fail(
                    "the certificate chain is not for this node under this parent".into(),
                ));
            }
            Node::complete_join(store, &root, &chain, token)?;
            tracing::info!(parent = %token.parent.node_id(), "joined; root key pinned");
            Ok(())
        }
    }
}

/// Dials `peer` at `addr` and runs `talk` while driving the swarm, within the
/// handshake timeout: the one-shot exchanges made before a node runs (joining, probes).
pub(super) async fn exchange<T>(
    swarm: &mut Swarm<Behaviour>,
    addr: Multiaddr,
    peer: Libp2pPeerId,
    talk: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    if !swarm.is_connected(&peer) {
        swarm
            .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build())
            .map_err(|e| e.to_string())?;
    }
    let driven = async {
        tokio::pin!(talk);
        loop {
            tokio::select! {
                r = &mut talk => return r,
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::OutgoingConnectionError { error, .. } = ev {
                        return Err(format!("cannot reach the peer: {error}"));
                    }
                }
            }
        }
    };
    timeout(HANDSHAKE_TIMEOUT, driven)
        .await
        .map_err(|_| "the peer did not answer in time".to_string())?
}
