//! Accepting inbound streams: the four tree protocols, each admitted by the event loop
//! according to who the peer is to this node (the engine's [`Standing`]) and the
//! stream limits (`limits`), then handed to its own task.

use super::limits::{MAX_UNDECIDED_STREAMS, Permit, Proto};
use super::*;
use crate::engine::{Offence, Standing};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An inbound stream waiting for the event loop's decision. Its slot bounds how many
/// can wait ([`MAX_UNDECIDED_STREAMS`]).
pub(super) struct Inbound {
    pub(super) peer: PublicKey,
    pub(super) proto: Proto,
    pub(super) stream: Stream,
    pub(super) _slot: OwnedSemaphorePermit,
}

/// Accepts the four stream protocols and hands each stream to the event loop. A stream
/// that finds every waiting slot taken is dropped (reset) at once.
pub(super) fn spawn_acceptors(
    tasks: &Tasks,
    mut control: libp2p_stream::Control,
    ev: mpsc::UnboundedSender<LoopInput>,
) -> Result<(), NetError> {
    let taken = |_| NetError::Transport("a protocol was registered twice".into());
    let slots = Arc::new(Semaphore::new(MAX_UNDECIDED_STREAMS));
    for (protocol, proto) in [
        (proto::JOIN, Proto::Join),
        (proto::CONTROL, Proto::Control),
        (proto::CHUNKS, Proto::Chunks),
        (proto::SIBLINGS, Proto::Siblings),
    ] {
        let mut incoming = control.accept(protocol).map_err(taken)?;
        let (ev, slots) = (ev.clone(), slots.clone());
        tasks.spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                let (Some(peer), Ok(slot)) = (
                    PublicKey::from_peer_id(&peer),
                    slots.clone().try_acquire_owned(),
                ) else {
                    continue;
                };
                let inbound = Inbound {
                    peer,
                    proto,
                    stream,
                    _slot: slot,
                };
                if ev.send(LoopInput::Inbound(inbound)).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// Whether a peer of this standing uses this protocol towards this node, and as a
/// stranger (under the strangers' shared limit) or as a member.
fn may_open(standing: Standing, proto: Proto) -> Option<bool> {
    match (standing, proto) {
        (Standing::Banned, _) => None,
        // A stranger joins; one that is not (or no longer) a member is told why its
        // hello or chunk request is refused, and counted for it.
        (Standing::Stranger, _) => Some(true),
        (Standing::Child, Proto::Control | Proto::Chunks | Proto::Join) => Some(false),
        (Standing::Sibling, Proto::Siblings | Proto::Chunks) => Some(false),
        _ => None,
    }
}

impl Daemon {
    /// Admits an inbound stream and starts its task, or drops it.
    pub(super) fn on_inbound(&mut self, inbound: Inbound) {
        let Inbound {
            peer,
            proto,
            stream,
            ..
        } = inbound;
        let now = now_ms();
        let standing = self.engine.standing(&peer, now);
        let Some(stranger) = may_open(standing, proto) else {
            if standing != Standing::Banned {
                let why = format!(
                    "opened a {} stream its place in the tree does not use",
                    proto.as_str()
                );
                self.engine
                    .handle_offence(peer, Offence::WrongRole, &why, now);
            }
            return;
        };
        let permit = match self.gate.admit(peer, proto, stranger) {
            Ok(p) => p,
            Err(why) => {
                self.engine.handle_offence(peer, Offence::Flood, why, now);
                return;
            }
        };
        let ev = self.ev_tx.clone();
        match proto {
            Proto::Join => self.tasks.spawn(serve_join(peer, stream, ev, permit)),
            Proto::Control => self
                .tasks
                .spawn(accept_hello(peer, stream, ev, false, permit)),
            Proto::Siblings => self
                .tasks
                .spawn(accept_hello(peer, stream, ev, true, permit)),
            Proto::Chunks if self.engine.may_request(&peer) => {
                let server = self.server.clone();
                self.tasks
                    .spawn(serve_chunks(peer, stream, ev, server, permit));
            }
            Proto::Chunks => {
                // A member whose session just ended may still open one: only a
                // stranger's is counted against it.
                self.refused += 1;
                let why = "this node serves chunks only to its own connected children and siblings";
                if stranger {
                    self.engine
                        .handle_offence(peer, Offence::Unauthorised, why, now);
                }
                self.tasks.spawn(refuse_chunks(stream, why, permit));
            }
        }
    }
}

/// Tells a peer that may not fetch from this node why, and closes the stream.
async fn refuse_chunks(mut stream: Stream, reason: &'static str, _permit: Permit) {
    let _ = timeout(limits::HELLO_TIMEOUT, async {
        proto::write_chunk_header(&mut stream, proto::CHUNK_REFUSED, reason.len() as u32).await?;
        stream.write_all(reason.as_bytes()).await?;
        stream.close().await?;
        Ok::<_, proto::ProtoError>(())
    })
    .await;
}
