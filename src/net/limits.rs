//! Limits on what a peer can make this node hold (PROTOCOL.md §10.3), before and after
//! it proves its membership.
//!
//! A connection and its streams pass three gates:
//! - the transport: at most [`MAX_PENDING_INCOMING`] connections in their handshake,
//!   [`MAX_CONNECTIONS_PER_PEER`] per peer, [`MAX_STREAMS_PER_CONNECTION`] streams on
//!   one connection and [`MAX_NEGOTIATING_STREAMS`] of them choosing their protocol
//!   (libp2p's connection limits and yamux);
//! - the event loop, for each connection: a peer that is neither this node's parent,
//!   nor one of its children, nor a sibling its parent listed is a stranger; at most
//!   [`MAX_STRANGER_CONNECTIONS`] strangers are connected at once (the oldest goes
//!   first), and a stranger that is still one [`STRANGER_GRACE`] after it connected
//!   (a join takes milliseconds) is disconnected;
//! - [`StreamGate`], for each stream: a protocol the peer's place in the tree does not
//!   use is refused at once and counted against it; strangers share
//!   [`MAX_STRANGER_STREAMS`] streams for the join and the refusals they are owed, at
//!   most [`MAX_STREAMS_PER_STRANGER`] each; members have [`MAX_HANDSHAKES_PER_PEER`]
//!   control or sibling streams and [`MAX_CHUNK_STREAMS_PER_PEER`] chunk streams each.
//!
//! Every frame's buffer grows with the bytes that arrive, not with the length its
//! prefix announces, and each protocol's first frame is limited to the largest
//! legitimate one of its kind (`proto`). Every handshake has [`HELLO_TIMEOUT`]; a chunk
//! stream idle for [`CHUNK_STREAM_IDLE`] is closed. So a stranger can make this node
//! hold at most about `MAX_STRANGER_STREAMS` × the largest first frame (2.3 MiB) of
//! frame buffers, plus the transport's buffers for its connections.

use crate::engine::Standing;
use crate::trust::PublicKey;
use libp2p::swarm::ConnectionId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Inbound connections in their transport handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Connections one peer may have at once (a reconnect briefly overlaps the old one).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Streams on one connection: two siblings each keep a fetch window of chunk streams
/// and a sibling stream open to the other.
pub const MAX_STREAMS_PER_CONNECTION: usize = 48;
/// Inbound streams of one connection still choosing their protocol.
pub const MAX_NEGOTIATING_STREAMS: usize = 16;
/// Strangers connected at once.
pub const MAX_STRANGER_CONNECTIONS: usize = 64;
/// How long a stranger may stay connected without becoming a member.
pub const STRANGER_GRACE: Duration = Duration::from_secs(10);
/// Inbound streams waiting for the event loop's decision.
pub const MAX_UNDECIDED_STREAMS: usize = 256;
/// Streams open at once for all strangers together: joins, and the refusals owed to
/// a node that is not (or no longer) a member.
pub const MAX_STRANGER_STREAMS: usize = 32;
/// Streams open at once for one stranger.
pub const MAX_STREAMS_PER_STRANGER: usize = 2;
/// Control or sibling streams open at once for one member.
pub const MAX_HANDSHAKES_PER_PEER: usize = 2;
/// Chunk streams open at once for one child or sibling (its fetch window is 8 by
/// default).
pub const MAX_CHUNK_STREAMS_PER_PEER: usize = 32;
/// Control or sibling frames one session may send a second on average, and at once: a
/// member flooding frames (pings, say) is slowed to this by its stream's flow control
/// instead of taking the event loop. A parent's offers to a new child, a burst of
/// `Have`s and reports fit well within it.
pub const FRAMES_PER_SEC: u64 = 200;
pub const FRAME_BURST: u64 = 2_000;
/// How long a peer has to send its first frame (a hello, a join request), and to take
/// our answer.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a chunk stream may sit between requests before it is closed. A fetching
/// node opens a new one when it next needs one.
pub const CHUNK_STREAM_IDLE: Duration = Duration::from_secs(120);

/// The four stream protocols, as the limits count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Join,
    Control,
    Siblings,
    Chunks,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Join => "join",
            Proto::Control => "control",
            Proto::Siblings => "siblings",
            Proto::Chunks => "chunks",
        }
    }
}

/// The streams open now, per peer and protocol, and for all strangers.
#[derive(Default)]
struct Open {
    per_peer: HashMap<(PublicKey, Proto), usize>,
    strangers: usize,
}

/// Counts open streams and refuses those over their limit; see the module docs.
#[derive(Default)]
pub struct StreamGate {
    open: Mutex<Open>,
}

/// One admitted stream: its count is given back when this is dropped (when the task
/// that serves the stream ends).
pub struct Permit {
    gate: Arc<StreamGate>,
    peer: PublicKey,
    proto: Proto,
    stranger: bool,
}

impl StreamGate {
    /// Admits one more stream of `proto` from `peer`, or says which limit it is over.
    pub fn admit(
        self: &Arc<Self>,
        peer: PublicKey,
        proto: Proto,
        stranger: bool,
    ) -> Result<Permit, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.per_peer.get(&(peer, proto)).copied().unwrap_or(0);
        let limit = match (stranger, proto) {
            (true, _) => MAX_STREAMS_PER_STRANGER,
            (false, Proto::Chunks) => MAX_CHUNK_STREAMS_PER_PEER,
            (false, _) => MAX_HANDSHAKES_PER_PEER,
        };
        if mine >= limit {
            return Err("too many streams of this protocol from this peer at once");
        }
        if stranger && open.strangers >= MAX_STRANGER_STREAMS {
            return Err("too many streams from strangers at once");
        }
        *open.per_peer.entry((peer, proto)).or_default() += 1;
        if stranger {
            open.strangers += 1;
        }
        Ok(Permit {
            gate: self.clone(),
            peer,
            proto,
            stranger,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.per_peer.get_mut(&(self.peer, self.proto)) {
            *n -= 1;
            if *n == 0 {
                open.per_peer.remove(&(self.peer, self.proto));
            }
        }
        if self.stranger {
            open.strangers = open.strangers.saturating_sub(1);
        }
    }
}

impl super::Daemon {
    /// A connection came up: a banned peer's is closed at once; a stranger's is
    /// counted, and the oldest stranger's closed when there are too many.
    pub(super) fn admit_connection(&mut self, peer: PublicKey, id: ConnectionId) -> bool {
        let now = super::now_ms();
        match self.engine.standing(&peer, now) {
            Standing::Banned => {
                self.swarm.close_connection(id);
                false
            }
            Standing::Stranger => {
                if self.strangers.len() >= MAX_STRANGER_CONNECTIONS
                    && let Some(oldest) = self
                        .strangers
                        .iter()
                        .min_by_key(|(_, (_, since))| *since)
                        .map(|(id, _)| *id)
                {
                    self.strangers.remove(&oldest);
                    self.swarm.close_connection(oldest);
                }
                self.strangers.insert(id, (peer, Instant::now()));
                true
            }
            _ => true,
        }
    }

    /// Closes the connections of strangers that did not become members in
    /// [`STRANGER_GRACE`] (on the tick).
    pub(super) fn expire_strangers(&mut self) {
        let now = super::now_ms();
        let mut expired = Vec::new();
        self.strangers.retain(|id, (peer, since)| {
            if self.engine.standing(peer, now) != Standing::Stranger {
                // It joined: a member now.
                return false;
            }
            if since.elapsed() < STRANGER_GRACE {
                return true;
            }
            expired.push(*id);
            false
        });
        for id in expired {
            self.swarm.close_connection(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_peer_and_for_all_strangers() {
        let gate = Arc::new(StreamGate::default());
        let a = PublicKey([1; 32]);
        let held: Vec<Permit> = (0..MAX_STREAMS_PER_STRANGER)
            .map(|_| gate.admit(a, Proto::Join, true).expect("within the limit"))
            .collect();
        assert!(gate.admit(a, Proto::Join, true).is_err());
        // Others share what is left of the strangers' streams.
        let mut others = Vec::new();
        for i in 0..MAX_STRANGER_STREAMS {
            let mut k = [2u8; 32];
            k[0] = i as u8;
            if let Ok(p) = gate.admit(PublicKey(k), Proto::Control, true) {
                others.push(p);
            }
        }
        assert_eq!(others.len() + held.len(), MAX_STRANGER_STREAMS);
        // A member's chunk streams do not count against strangers.
        let member = PublicKey([3; 32]);
        let chunks: Vec<Permit> = (0..MAX_CHUNK_STREAMS_PER_PEER)
            .map(|_| gate.admit(member, Proto::Chunks, false).expect("member"))
            .collect();
        assert!(gate.admit(member, Proto::Chunks, false).is_err());
        drop(chunks);
        drop(held);
        assert!(gate.admit(a, Proto::Join, true).is_ok());
        assert!(gate.admit(member, Proto::Chunks, false).is_ok());
    }
}
