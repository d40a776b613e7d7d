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
    let mut swarm = build_swarm(key, None).map_err(|e| e.to_string())?;
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

/// A dial a [`Peer`] asks its swarm for, and where to say how it went.
type Dial = (Libp2pPeerId, Multiaddr, oneshot::Sender<Result<(), String>>);

/// A peer that stays connected and opens or accepts raw streams of any protocol, for
/// tests that play a stranger, a child, a parent or a sibling against real daemons (and
/// may misbehave in any way the wire allows). Its swarm runs on a task of its own.
pub struct Peer {
    control: libp2p_stream::Control,
    dials: mpsc::UnboundedSender<Dial>,
    listening: Vec<Multiaddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// A peer keyed by `key`, listening on `listen` if given.
    pub async fn new(key: &SecretKey, listen: Option<Multiaddr>) -> Result<Peer, String> {
        let mut swarm = build_swarm(key, None).map_err(|e| e.to_string())?;
        let mut listening = Vec::new();
        if let Some(addr) = listen {
            swarm.listen_on(addr).map_err(|e| e.to_string())?;
            loop {
                match timeout(HANDSHAKE_TIMEOUT, swarm.select_next_some()).await {
                    Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                        listening.push(address);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => return Err("no listening address came up".into()),
                }
            }
        }
        let control = swarm.behaviour().streams.new_control();
        let (dials, mut asked) = mpsc::unbounded_channel::<Dial>();
        let task = tokio::spawn(async move {
            let mut waiting: Vec<(Libp2pPeerId, oneshot::Sender<Result<(), String>>)> = Vec::new();
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            for (_, reply) in waiting.extract_if(.., |(p, _)| *p == peer_id) {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        SwarmEvent::OutgoingConnectionError { peer_id: Some(peer_id), error, .. } => {
                            for (_, reply) in waiting.extract_if(.., |(p, _)| *p == peer_id) {
                                let _ = reply.send(Err(error.to_string()));
                            }
                        }
                        _ => {}
                    },
                    dial = asked.recv() => {
                        let Some((peer, addr, reply)) = dial else { return };
                        if swarm.is_connected(&peer) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        match swarm.dial(DialOpts::peer_id(peer).addresses(vec![addr]).build()) {
                            Ok(()) => waiting.push((peer, reply)),
                            Err(e) => { let _ = reply.send(Err(e.to_string())); }
                        }
                    }
                }
            }
        });
        Ok(Peer {
            control,
            dials,
            listening,
            task,
        })
    }

    /// Where it listens.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listening
    }

    /// Connects to `node` at `addr` (at once if already connected).
    pub async fn connect(&self, node: PublicKey, addr: Multiaddr) -> Result<(), String> {
        let peer = node.peer_id().ok_or("bad node key")?;
        let (reply, answer) = oneshot::channel();
        self.dials
            .send((peer, addr, reply))
            .map_err(|_| "the peer stopped")?;
        timeout(HANDSHAKE_TIMEOUT, answer)
            .await
            .map_err(|_| "the node did not answer in time".to_string())?
            .map_err(|_| "the peer stopped".to_string())?
    }

    /// Opens a stream of `protocol` to `node` (connected first).
    pub async fn open(
        &mut self,
        node: PublicKey,
        protocol: libp2p::StreamProtocol,
    ) -> Result<Stream, String> {
        let peer = node.peer_id().ok_or("bad node key")?;
        timeout(HANDSHAKE_TIMEOUT, self.control.open_stream(peer, protocol))
            .await
            .map_err(|_| "opening the stream timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    /// The streams of `protocol` other peers open to this one.
    pub fn accept(
        &mut self,
        protocol: libp2p::StreamProtocol,
    ) -> Result<libp2p_stream::IncomingStreams, String> {
        self.control.accept(protocol).map_err(|e| e.to_string())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
