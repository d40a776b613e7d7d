//! Accepting inbound streams: the four tree protocols, each handed to its own task.

use super::*;

/// Accepts the four stream protocols and hands each stream to its task.
pub(super) fn spawn_acceptors(
    tasks: &Tasks,
    mut control: libp2p_stream::Control,
    ev: mpsc::UnboundedSender<Ev>,
    node: Arc<Node>,
    corrupt_first: [u32; 2],
    uploads: Uploads,
) -> Result<(), NetError> {
    let taken = |_| NetError::Transport("a protocol was registered twice".into());
    let mut joins = control.accept(proto::JOIN).map_err(taken)?;
    let mut controls = control.accept(proto::CONTROL).map_err(taken)?;
    let mut chunks = control.accept(proto::CHUNKS).map_err(taken)?;
    let mut siblings = control.accept(proto::SIBLINGS).map_err(taken)?;
    let (e, t) = (ev.clone(), tasks.clone());
    tasks.spawn(async move {
        while let Some((peer, stream)) = siblings.next().await {
            if let Some(peer) = PublicKey::from_peer_id(&peer) {
                t.spawn(accept_hello(peer, stream, e.clone(), true));
            }
        }
    });
    let (e, t) = (ev.clone(), tasks.clone());
    tasks.spawn(async move {
        while let Some((peer, stream)) = joins.next().await {
            if let Some(peer) = PublicKey::from_peer_id(&peer) {
                t.spawn(serve_join(peer, stream, e.clone()));
            }
        }
    });
    let (e, t) = (ev.clone(), tasks.clone());
    tasks.spawn(async move {
        while let Some((peer, stream)) = controls.next().await {
            if let Some(peer) = PublicKey::from_peer_id(&peer) {
                t.spawn(accept_hello(peer, stream, e.clone(), false));
            }
        }
    });
    let server = Arc::new(Server {
        node,
        corrupt: corrupt_first.map(AtomicU32::new),
        uploads,
        deltas: delta::Deltas::default(),
    });
    let t = tasks.clone();
    tasks.spawn(async move {
        while let Some((peer, stream)) = chunks.next().await {
            if let Some(peer) = PublicKey::from_peer_id(&peer) {
                t.spawn(serve_chunks(peer, stream, ev.clone(), server.clone()));
            }
        }
    });
    Ok(())
}
