//! Transfers in a lane: a chunk request answered through the serving engine, its bytes
//! carried over the modelled links, and the chunks handed to the requester as they land.

use super::*;

impl Lane<'_> {
    /// Answers a chunk request: each chunk through [`Engine::serve`], the bytes through
    /// the links.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve(
        &mut self,
        server: u32,
        client: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        span: std::ops::Range<u32>,
        direct: bool,
    ) {
        let fleet = self.fleet;
        let Some(engine) = self.nodes[server as usize].engine.as_mut() else {
            return;
        };
        let peer = fleet.keys[client as usize];
        let answers = span.clone().zip(engine.serve(&peer, &update, span, direct));
        let lat = fleet.latency(server, client);
        let path = fleet.path(server, client);
        // A node that serves others hears of every chunk as it lands, so that it can
        // pass it on at once; a leaf without siblings only needs the whole answer.
        let chunkwise = !fleet.children_of(client).is_empty() || fleet.site_of(client).is_some();
        let now = self.now as f64;
        let mut last = now;
        let mut batch: Vec<(u32, u32)> = Vec::new();
        let mut pending: Option<(Millis, u32, u32)> = None;
        let mut sent = 0u64;
        for (index, answer) in answers {
            match answer {
                Served::Data { len, .. } => {
                    last = self.net.send(&path, now, len);
                    sent += u64::from(len);
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
        if server == 0 {
            self.tally.root_egress += sent;
        }
        if fleet.crosses_site(server, client) {
            self.tally.site_wan += sent;
        }
        let end = (last.ceil() as Millis).max(self.now) + lat;
        match pending {
            Some((at, i, l)) => {
                self.chunks_at(at, client, server, epoch, fetch, update, vec![(i, l)], true)
            }
            None => self.chunks_at(end, client, server, epoch, fetch, update, batch, true),
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
