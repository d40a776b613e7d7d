//! Transfers in a lane: a chunk request answered through the serving engine, its bytes
//! carried over the modelled links (through the rate limits on its way) and the
//! chunks handed to the requester as they land; control messages carried at their
//! encoded size; and the bytes counted where they arrive.

use super::*;
use crate::net::proto::ControlFrame;

/// The address a sibling is given at in a `Siblings` message: one of the length a node
/// usually listens at.
const SIBLING_ADDR: &str = "/ip4/192.0.2.10/tcp/7077";

impl Lane<'_> {
    /// Answers a chunk request: each chunk through [`Engine::serve`], the bytes through
    /// the links; a chunk of a version that the requester names a base for goes as a
    /// delta against it ([`crate::sim::versions`]) where the server may send one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve(
        &mut self,
        server: u32,
        client: u32,
        epoch: u64,
        fetch: FetchId,
        (update, base): (Hash, Option<u32>),
        span: std::ops::Range<u32>,
        direct: bool,
    ) {
        let fleet = self.fleet;
        let Some(engine) = self.nodes[server as usize].engine.as_mut() else {
            return;
        };
        let delta = base
            .map(|b| b as usize)
            .filter(|b| {
                engine
                    .delta_pair(&update, &fleet.manifests[*b].id)
                    .is_some()
            })
            .and_then(|b| Some((fleet.update_index(&update)?, b)));
        let peer = fleet.keys[client as usize];
        let answers = span.clone().zip(engine.serve(&peer, &update, span, direct));
        let lat = fleet.latency(server, client);
        let path = fleet.path(server, client);
        let limits = fleet.limits(server, client);
        // A node that serves others hears of every chunk as it lands, so that it can
        // pass it on at once; a leaf without siblings only needs the whole answer.
        let chunkwise = !fleet.children_of(client).is_empty() || fleet.site_of(client).is_some();
        let now = self.now as f64;
        let mut last = now;
        let mut batch: Vec<(u32, u32)> = Vec::new();
        let mut pending: Option<(Millis, u32, u32)> = None;
        for (index, answer) in answers {
            match answer {
                Served::Data { len, .. } => {
                    let len = delta.map_or(len, |(u, b)| fleet.versions.payload(u, b, index, len));
                    let wire = overhead::chunk(len);
                    last = self.net.send_limited(&limits, &path, now, len, wire);
                    if chunkwise {
                        if let Some((at, i, l)) = pending.take() {
                            self.chunks_at(
                                at,
                                client,
                                server,
                                epoch,
                                fetch,
                                update,
                                vec![(i, l)],
                                false,
                            );
                        }
                        pending = Some((last.ceil() as Millis + lat, index, len));
                    } else {
                        batch.push((index, len));
                    }
                }
                Served::Missing => {}
                Served::Elsewhere { holder } => {
                    self.at(
                        self.now + lat,
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
        let end = (last.ceil() as Millis).max(self.now) + lat;
        match pending {
            Some((at, i, l)) => {
                self.chunks_at(at, client, server, epoch, fetch, update, vec![(i, l)], true)
            }
            None => self.chunks_at(end, client, server, epoch, fetch, update, batch, true),
        }
    }

    /// Sends control message `msg` from node `i` to `peer` over the links, arriving
    /// after its time on them and the latency; nothing if `i` holds no connection with
    /// it.
    pub(super) fn send_control(&mut self, i: u32, peer: &PeerId, msg: Control) {
        let fleet = self.fleet;
        let Some(j) = fleet.node_of(peer) else {
            return;
        };
        let epoch = self.conn(i, j);
        if epoch == 0 {
            return;
        }
        let frame = ControlFrame::of(msg.clone(), |_| vec![SIBLING_ADDR.to_string()]);
        let wire = overhead::control(crate::wire::encoded_len(&frame));
        let sent = self
            .net
            .send_control(&fleet.path(i, j), self.now as f64, wire);
        let at = (sent.ceil() as Millis).max(self.now) + fleet.latency(i, j);
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

    /// `wire` bytes from `from` reached `to`: counted as the root's egress, across a
    /// site's WAN link, and into `to`'s site, as they apply.
    pub(super) fn crossed(&mut self, from: u32, to: u32, wire: u64) {
        let fleet = self.fleet;
        if from == 0 {
            self.tally.root_egress += wire;
        }
        if fleet.crosses_site(from, to) {
            self.tally.site_wan += wire;
        }
        if let Some(site) = fleet.report_site(to)
            && fleet.report_site(from) != Some(site)
        {
            self.tally.site_received(site, wire);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn chunks_at(
        &mut self,
        at: Millis,
        to: u32,
        from: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        chunks: Vec<(u32, u32)>,
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
