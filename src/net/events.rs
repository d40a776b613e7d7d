//! The event loop's handling of what its tasks report: handshakes, sessions, control
//! frames, chunk verdicts, serve requests and finished jobs.

use super::*;
use crate::engine::Offence;

impl Daemon {
    pub(super) fn on_event(&mut self, ev: LoopInput) {
        let now = now_ms();
        match ev {
            LoopInput::Inbound(inbound) => self.on_inbound(inbound),
            LoopInput::Offence {
                peer,
                offence,
                reason,
            } => self.engine.handle_offence(peer, offence, &reason, now),
            LoopInput::Local { req, reply } => self.on_local(req, reply),
            LoopInput::Join {
                peer,
                secret,
                reply,
            } => {
                let _ = reply.send(self.on_join(peer, secret));
            }
            LoopInput::Hello {
                peer,
                chain,
                site,
                addrs,
                reply,
            } => {
                let verdict = self.check_child(&peer, &chain, site.as_deref(), &addrs);
                match &verdict {
                    Ok(_) => self.engine.set_child_site(peer, site.as_deref()),
                    Err(reason) => self.refuse_hello(peer, reason, now),
                }
                let _ = reply.send(verdict);
            }
            LoopInput::SiblingHello { peer, chain, reply } => {
                let verdict = match self.sibling_check() {
                    Some(check) => {
                        check_sibling(&peer, &chain, &check).map(|()| self.chain.clone())
                    }
                    None => Err("this node has no site, so it has no siblings".to_string()),
                };
                if let Err(reason) = &verdict {
                    self.refuse_hello(peer, reason, now);
                }
                let _ = reply.send(verdict);
            }
            LoopInput::Renewed { chain, time } => {
                self.engine.set_parent_clock(time, now);
                if let Err(e) = self.node.set_chain(&chain) {
                    tracing::error!("cannot keep the renewed certificate chain: {e}");
                }
                if let Some(cert) = chain.last()
                    && let Err(e) = self.engine.set_certificate(cert.clone())
                {
                    tracing::warn!("the renewed certificate cannot prove failures: {e}");
                }
                self.chain = chain;
            }
            LoopInput::ControlUp { peer, sibling, tx } => {
                if sibling {
                    if self.sessions.contains_key(&peer) {
                        // Both sides dialled at once: one session is enough.
                        return;
                    }
                    self.sessions.insert(peer, tx);
                    self.sibling_sessions.insert(peer);
                    self.start_fetchers(peer, self.local_download.clone());
                    if !self.engine.handle_sibling_connected(peer, now) {
                        self.end_session(peer, "a banned sibling");
                        self.disconnect(peer);
                    } else {
                        crate::peer_info!(peer, "session up", "sibling session up");
                    }
                    return;
                }
                self.sessions.insert(peer, tx);
                if Some(&peer) == self.engine.parent() {
                    self.start_fetchers(peer, self.download.clone());
                }
                self.engine.handle_connected(peer, now);
            }
            LoopInput::ControlMsg { peer, frame, held } => {
                // Handled here: its bytes no longer count against the session's queue.
                drop(held);
                let msg = match frame {
                    ControlFrame::Offer { manifest } => Control::Offer {
                        manifest: manifest.into(),
                    },
                    ControlFrame::Have { update, ranges } if ranges.len() <= proto::MAX_RANGES => {
                        Control::Have { update, ranges }
                    }
                    ControlFrame::Ping { time } => Control::Ping { time },
                    ControlFrame::Rules { sets } => Control::Rules {
                        sets: sets.into_iter().map(|b| b.into_vec().into()).collect(),
                    },
                    ControlFrame::Report { report } => Control::Report {
                        report: report.into_vec().into(),
                    },
                    ControlFrame::Siblings { peers } if Some(&peer) == self.engine.parent() => {
                        match self.take_sibling_addrs(peers) {
                            Ok(peers) => Control::Siblings { peers },
                            Err(why) => {
                                let why = format!("bad sibling list: {why}");
                                self.engine
                                    .handle_offence(peer, Offence::BadFrame, &why, now);
                                self.disconnect(peer);
                                return;
                            }
                        }
                    }
                    other => {
                        // A handshake frame mid-session, an oversized `Have`, or a
                        // sibling list from a peer that is not the parent.
                        let why = format!("sent an unexpected {} frame", frame_kind(&other));
                        self.engine
                            .handle_offence(peer, Offence::WrongRole, &why, now);
                        return;
                    }
                };
                self.engine.handle_message(peer, msg, now);
            }
            LoopInput::ControlDown { peer, why } => {
                let is_parent = Some(&peer) == self.engine.parent();
                let came_up =
                    self.sessions.contains_key(&peer) || self.sibling_sessions.contains(&peer);
                if is_parent && !came_up {
                    tracing::error!("{why}");
                }
                self.end_session(peer, &why);
                if !is_parent && !came_up {
                    // A sibling session that never came up (say, the sibling still had
                    // the certificate of its join, without the site): the dial is over.
                    // The engine is told, so that it dials again after its backoff
                    // instead of waiting on this dial forever.
                    self.engine.handle_disconnected(peer, now);
                }
                self.disconnect(peer);
            }
            LoopInput::Verdict {
                fetch,
                index,
                verdict,
            } => {
                let source = self.engine.fetch_source(fetch);
                if let (ChunkVerdict::Stored { wire }, Some((from, update))) = (verdict, source) {
                    let wire = u64::from(wire);
                    self.transfers.entry(update).or_default().bytes_in += wire;
                    *self.received_from.entry(from).or_default() += wire;
                }
                self.engine.handle_chunk(fetch, index, verdict, now);
                if let Some((_, update)) = source
                    && self.engine.is_complete(&update)
                {
                    self.delta_bases.remove(&update);
                }
            }
            LoopInput::FetchEnd { fetch } => self.engine.handle_fetch_end(fetch, now),
            LoopInput::Elsewhere {
                fetch,
                index,
                holder,
            } => self.engine.handle_elsewhere(fetch, index, holder, now),
            LoopInput::Serve { peer, req, reply } => {
                let answer = if self.engine.may_request(&peer) {
                    let span = req.first..req.first + req.count;
                    let chunks = self.engine.serve(&peer, &req.update, span, req.direct);
                    Ok(Serving {
                        chunks,
                        sibling: self.engine.is_connected_sibling(&peer),
                        delta: req
                            .base
                            .and_then(|base| self.engine.delta_pair(&req.update, &base)),
                    })
                } else {
                    self.refused += 1;
                    crate::peer_warn!(
                        peer,
                        "chunks refused",
                        "refused a chunk request: not a connected child or sibling"
                    );
                    Err(
                        "this node serves chunks only to its own connected children and siblings"
                            .to_string(),
                    )
                };
                let _ = reply.send(answer);
            }
            LoopInput::Served {
                peer,
                update,
                bytes,
            } => {
                self.transfers.entry(update).or_default().bytes_out += bytes;
                *self.sent_to.entry(peer).or_default() += bytes;
            }
            LoopInput::LocalHave { update, have } => {
                self.engine.handle_local_have(update, &have, now);
            }
            LoopInput::StoreFault { fault } => self.engine.set_store_fault(fault, now),
            LoopInput::LocalLost { chunks } => {
                self.engine.handle_local_lost(&chunks, now);
            }
            LoopInput::Damaged { chunk, loc } => {
                let job = WriteJob::Quarantine { chunk, loc };
                if let Err(mpsc::error::TrySendError::Full(job)) = self.writer_tx.try_send(job) {
                    let tx = self.writer_tx.clone();
                    self.tasks.spawn(async move {
                        let _ = tx.send(job).await;
                    });
                }
            }
            LoopInput::Installer { done } => {
                let done = *done;
                let Some(hands) = self.installer.as_mut() else {
                    return;
                };
                let states = installer::states(&done.installed);
                hands.installed = done.installed;
                if let (Some(answer), Some(reply)) = (done.answer, hands.answering.take()) {
                    let _ = reply.send(answer);
                }
                self.engine
                    .handle_install_done(done.done, Some(states), now);
            }
            LoopInput::Published { result, reply } => {
                let response = match result {
                    Ok(outcome) => {
                        if let Err(e) = self.add_published(&outcome.update_id, now) {
                            tracing::error!("published update cannot be offered: {e}");
                        }
                        Ok(Answer::Published(outcome))
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(response);
            }
        }
    }

    /// The base this node names when it fetches chunks of `update`, kept per update
    /// so that every span names the same one.
    pub(super) fn delta_base(&mut self, update: &Hash) -> Option<Arc<delta::Base>> {
        if let Some(base) = self.delta_bases.get(update) {
            return Some(base.clone());
        }
        let (id, chunks) = self.engine.delta_base(update)?;
        let base = Arc::new(delta::Base {
            id,
            chunks,
            broken: Default::default(),
        });
        self.delta_bases.insert(*update, base.clone());
        Some(base)
    }

    pub(super) fn add_published(&mut self, id: &Hash, now: u64) -> Result<(), String> {
        let bytes = self
            .node
            .store
            .manifest_bytes(id)
            .map_err(|e| e.to_string())?
            .ok_or("the manifest is not in the store")?;
        let m = SignedManifest::open(&bytes, &self.node.root_key, now / 1000)
            .map_err(|e| e.to_string())?;
        let have = local_have(&self.node.store, &m).map_err(|e| e.to_string())?;
        self.engine.add_local_update(Arc::new(m), &have, now);
        Ok(())
    }

    /// Starts the chunk streams to a source (the parent or a sibling), paced by `limit`.
    pub(super) fn start_fetchers(&mut self, source: PublicKey, limit: Option<Arc<Limiter>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..self.opts.engine.window {
            self.tasks.spawn(fetch_worker(
                self.control.clone(),
                source,
                rx.clone(),
                self.writer_tx.clone(),
                Duration::from_millis(self.engine.config().fetch_timeout),
                limit.clone(),
                self.node.clone(),
            ));
        }
        self.fetchers.insert(source, tx);
    }

    /// The parent's list of siblings: checked, their addresses kept for dialling.
    pub(super) fn take_sibling_addrs(
        &mut self,
        peers: Vec<SiblingAddr>,
    ) -> Result<Vec<PublicKey>, String> {
        if peers.len() > engine::MAX_SIBLINGS {
            return Err(format!(
                "{} siblings, over the limit of {}",
                peers.len(),
                engine::MAX_SIBLINGS
            ));
        }
        let mut keys = Vec::with_capacity(peers.len());
        for p in peers {
            let addrs = parse_addrs(&p.addrs)?;
            self.peer_addrs.insert(p.node, addrs);
            keys.push(p.node);
        }
        Ok(keys)
    }

    pub(super) fn disconnect(&mut self, peer: PublicKey) {
        if let Some(pid) = peer.peer_id() {
            let _ = self.swarm.disconnect_peer_id(pid);
        }
    }

    /// A hello was refused: counted, logged within the peer's share, and held against a
    /// stranger (a member refused for, say, a site name is misconfigured, not hostile).
    pub(super) fn refuse_hello(&mut self, peer: PublicKey, reason: &str, now: u64) {
        self.refused += 1;
        crate::peer_warn!(peer, "hello refused", "refused: {reason}");
        if self.engine.standing(&peer, now) == crate::engine::Standing::Stranger {
            self.engine
                .handle_offence(peer, crate::engine::Offence::Unauthorised, reason, now);
        }
    }
}
