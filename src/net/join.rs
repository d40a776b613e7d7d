//! Joining: the first run of a new node redeems its join token at the parent it names,
//! and the one-shot exchanges made before a node runs.

use super::*;

/// Redeems `token` at the parent it names: the first run of a joining node.
pub(super) async fn join(
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
    .map_err(fail)?;
    match reply {
        JoinReply::Refused { reason } => Err(NetError::JoinRefused(reason)),
        JoinReply::Accepted { root, chain } => {
            if root_fingerprint(&root) != token.root {
                return Err(fail(
                    "the parent's root key does not match the fingerprint in the token".into(),
                ));
            }
            let members = verify_chain(&chain, &root, now_secs())
                .map_err(|e| fail(format!("the certificate chain is refused: {e}")))?;
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
    swarm
        .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build())
        .map_err(|e| e.to_string())?;
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
