//! A minimal client of the tree protocols, for the tests and for troubleshooting a
//! refusal: connects to `node` at `addr` as `key` and makes one request.

use super::*;

/// Connects as `key` to `node` at `addr`, opens one stream of `protocol` and runs
/// `talk` on it.
async fn one_stream<T, Fut>(
    key: &SecretKey,
    addr: Multiaddr,
    node: PublicKey,
    protocol: libp2p::StreamProtocol,
    talk: impl FnOnce(Stream) -> Fut,
) -> Result<T, String>
where
    Fut: std::future::Future<Output = Result<T, proto::ProtoError>>,
{
    let mut swarm = build_swarm(key).map_err(|e| e.to_string())?;
    let mut control = swarm.behaviour().streams.new_control();
    let peer = node.peer_id().ok_or("bad node key")?;
    exchange(&mut swarm, addr, peer, async move {
        let s = control
            .open_stream(peer, protocol)
            .await
            .map_err(|e| e.to_string())?;
        talk(s).await.map_err(|e| e.to_string())
    })
    .await
}

/// Sends `hello` on a stream of `protocol` (the control or the sibling stream);
/// returns the node's first answer.
pub async fn hello(
    key: &SecretKey,
    addr: Multiaddr,
    node: PublicKey,
    protocol: libp2p::StreamProtocol,
    hello: ControlFrame,
) -> Result<ControlFrame, String> {
    one_stream(key, addr, node, protocol, |mut s| async move {
        proto::write_frame(&mut s, &hello).await?;
        proto::read_frame(&mut s, proto::MAX_CONTROL_FRAME, "control frame")
            .await?
            .ok_or_else(|| proto::ProtoError::Violation("no answer".into()))
    })
    .await
}

/// Sends one chunk request; returns the kind of the first answer and its payload.
pub async fn chunks(
    key: &SecretKey,
    addr: Multiaddr,
    node: PublicKey,
    req: ChunkRequest,
) -> Result<(u8, Vec<u8>), String> {
    one_stream(key, addr, node, proto::CHUNKS, |mut s| async move {
        proto::write_frame(&mut s, &req).await?;
        let (kind, len) = proto::read_chunk_header(&mut s).await?;
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await?;
        Ok((kind, payload))
    })
    .await
}
