//! Transfers on the virtual network: a chunk request answered through the serving
//! engine, its bytes carried over the modelled links (through the rate limits on its
//! way) and the chunks handed to the requester as they land; control messages carried
//! at their encoded size.

use super::{Driver, Ev, Sent, Shape, overhead};
use crate::content::Hash;
use crate::engine::{Control, Engine, FetchId, Millis, PeerId, Served};
use crate::net::proto::ControlFrame;

/// The address a sibling is given at in a `Siblings` message: one of the length a node
/// usually listens at.
const SIBLING_ADDR: &str = "/ip4/192.0.2.10/tcp/7077";

/// What every driver's network does with a chunk request and a control message.
pub(super) trait Transfer: Driver {
    /// Answers a chunk request: each chunk through [`Engine::serve`], the bytes through
    /// the links; a chunk of a version that the client names a base for goes as a delta
    /// against it ([`Shape::delta_len`]) where the server may send one.
    #[allow(clippy::too_many_arguments)]
    fn serve(
        &mut self,
        server: u32,
        client: u32,
        epoch: u64,
        fetch: FetchId,
        (update, base): (Hash, Option<u32>),
        span: std::ops::Range<u32>,
        direct: bool,
    ) {
        let peer = self.shape().key(client);
        let delta = base.and_then(|b| self.delta(server, &update, b));
        let Some(engine) = self.vnet().stations[server as usize].engine.as_mut() else {
            return;
        };
        let answers = span.clone().zip(engine.serve(&peer, &update, span, direct));
        let shape = self.shape();
        let lat = shape.latency(server, client);
        let path = shape.path(server, client);
        let limits = shape.limits(server, client);
        let chunkwise = shape.hears_each_chunk(client);
        // Without a rate limit in the way, an answer handed over whole crosses the links
        // as one transfer: the time it takes chunk by chunk, in one step.
        let whole = !chunkwise && limits.is_empty();
        let mut whole_wire = 0u64;
        let start = self.now();
        let now = start as f64;
        let mut last = now;
        let mut batch: Vec<Sent> = Vec::new();
        let mut pending: Option<(Millis, Sent)> = None;
        for (index, answer) in answers {
            match answer {
                Served::Data { len, .. } => {
                    let good = self.sends_good(server, client);
                    let len = delta.map_or(len, |(u, b)| self.shape().delta_len(u, b, index, len));
                    let wire = overhead::chunk(len);
                    if whole {
                        whole_wire += wire;
                    } else {
                        last = self.vnet().net.send_limited(&limits, &path, now, len, wire);
                    }
                    let sent = Sent { index, len, good };
                    if chunkwise {
                        if let Some((at, s)) = pending.take() {
                            self.chunks_at(
                                at,
                                client,
                                server,
                                epoch,
                                fetch,
                                update,
                                vec![s],
                                false,
                            );
                        }
                        pending = Some((last.ceil() as Millis + lat, sent));
                    } else {
                        batch.push(sent);
                    }
                }
                Served::Missing => {}
                Served::Elsewhere { holder } => {
                    self.at(
                        start + lat,
                        Ev::Elsewhere {
                            to: client,
                            from: server,
                            epoch,
                            fetch,
                            index,
                            holder,
                        },
                    );
                }
            }
        }
        if whole_wire > 0 {
            last = self.vnet().net.send(&path, now, whole_wire);
        }
        let end = (last.ceil() as Millis).max(start) + lat;
        match pending {
            Some((at, s)) => {
                self.chunks_at(at, client, server, epoch, fetch, update, vec![s], true)
            }
            None => self.chunks_at(end, client, server, epoch, fetch, update, batch, true),
        }
    }

    /// The base a request of `engine`'s for chunks of `update` names for deltas: the
    /// newest other version of its module it holds whole, as the daemon asks its engine
    /// ([`Engine::delta_base`]), by the shape's number.
    fn delta_base(&self, engine: &Engine, update: &Hash) -> Option<u32> {
        let shape = self.shape();
        shape.version(update)?;
        let (base, _) = engine.delta_base(update)?;
        shape.version(&base)
    }

    /// The versions (`update`'s number, `base`) a chunk of `update` goes as a delta
    /// between, when its client names `base` and `server` may answer with deltas
    /// against it ([`Engine::delta_pair`]).
    fn delta(&self, server: u32, update: &Hash, base: u32) -> Option<(u32, u32)> {
        let shape = self.shape();
        let engine = self.vnet_ref().engine(server)?;
        engine.delta_pair(update, &shape.version_id(base)?)?;
        Some((shape.version(update)?, base))
    }

    /// Sends control message `msg` from node `i` to `peer` over the links, arriving
    /// after its time on them and the latency; nothing if `i` holds no connection with
    /// it.
    fn send_control(&mut self, i: u32, peer: &PeerId, msg: Control) {
        let Some(j) = self.shape().node_of(peer) else {
            return;
        };
        let epoch = self.conn(i, j);
        if epoch == 0 {
            return;
        }
        let frame = ControlFrame::of(msg.clone(), |_| vec![SIBLING_ADDR.to_string()]);
        let wire = overhead::control(crate::wire::encoded_len(&frame));
        let now = self.now();
        let path = self.shape().path(i, j);
        let sent = self.vnet().net.send_control(&path, now as f64, wire);
        let at = (sent.ceil() as Millis).max(now) + self.shape().latency(i, j);
        self.at(
            at,
            Ev::Deliver {
                to: j,
                from: i,
                epoch,
                msg,
                wire: u32::try_from(wire).unwrap_or(u32::MAX),
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn chunks_at(
        &mut self,
        at: Millis,
        to: u32,
        from: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        chunks: Vec<Sent>,
        end: bool,
    ) {
        self.at(
            at,
            Ev::Chunks {
                to,
                from,
                epoch,
                fetch,
                update,
                chunks,
                end,
            },
        );
    }
}

impl<D: Driver> Transfer for D {}
