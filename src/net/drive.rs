//! Carrying out the engine's outputs: sends, fetches, stores, dials, and the log of its
//! events; and answering waits once an update is durable.

use super::*;
use command::WaitOutcome;

impl Daemon {
    /// Carries out everything the engine asked for.
    pub(super) fn drain(&mut self, now: u64) {
        self.drain_engine(now);
        self.answer_waiters();
    }

    /// Starts a job of the engine's installer, off the loop.
    fn start_install_job(&mut self, job: InstallJob) {
        let Some(hands) = self.installer.as_mut() else {
            tracing::error!("an install job on a node without an install directory");
            return;
        };
        // An admin's check or rollback runs in its turn: its answer goes to the
        // oldest request waiting.
        if matches!(job, InstallJob::Check { .. } | InstallJob::Rollback { .. }) {
            hands.answering = hands.replies.pop_front();
        }
        let ctx = installer::JobContext {
            node: self.node.clone(),
            writer: self.writer_tx.clone(),
            opts: hands.opts.clone(),
            hook_logs: self.opts.dir.join("hook-logs"),
        };
        self.tasks
            .spawn(installer::run(job, ctx, self.ev_tx.clone()));
    }

    pub(super) fn drain_engine(&mut self, now: u64) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    let frame = ControlFrame::of(msg, |node| {
                        self.peer_addrs
                            .get(node)
                            .map(|a| a.iter().map(|a| a.to_string()).collect())
                            .unwrap_or_default()
                    });
                    if let Some(tx) = self.sessions.get(&to) {
                        let _ = tx.send(frame);
                    }
                }
                Output::Fetch {
                    id,
                    from,
                    update,
                    first,
                    count,
                    direct,
                } => {
                    let expected: Vec<(Hash, u32)> = (first..first + count)
                        .filter_map(|i| self.engine.chunk(&update, i))
                        .collect();
                    let job = FetchJob {
                        id,
                        source: from,
                        update,
                        first,
                        direct,
                        expected,
                        base: self.delta_base(&update),
                    };
                    let sent = self
                        .fetchers
                        .get(&from)
                        .is_some_and(|tx| tx.send(job).is_ok());
                    if !sent {
                        self.engine.handle_fetch_end(id, now);
                    }
                }
                Output::StoreManifest { manifest } => {
                    tracing::info!(update = %manifest.id, module = %module_name(&manifest), "new update offered");
                    if self
                        .writer_tx
                        .try_send(WriteJob::Manifest {
                            manifest: manifest.clone(),
                        })
                        .is_err()
                    {
                        // The queue is full of chunks: wait for room off the event loop.
                        let tx = self.writer_tx.clone();
                        self.tasks.spawn(async move {
                            let _ = tx.send(WriteJob::Manifest { manifest }).await;
                        });
                    }
                }
                Output::Dial { peer } if Some(&peer) != self.engine.parent() => {
                    self.dial_sibling(peer, now);
                }
                Output::Dial { peer } => {
                    let (Ok(pid), Some(addr)) = (peer_of(&peer), self.parent_addr.clone()) else {
                        continue;
                    };
                    if self.swarm.is_connected(&pid) {
                        // Still connected (after joining, or a session that broke on
                        // its own): only the control session needs to start again.
                        self.open_parent_session(peer);
                        continue;
                    }
                    tracing::info!(addr = %addr, "dialling the parent");
                    if let Err(e) = self
                        .swarm
                        .dial(DialOpts::peer_id(pid).addresses(vec![addr]).build())
                    {
                        tracing::warn!("cannot dial the parent: {e}");
                        self.engine.handle_disconnected(peer, now);
                    }
                }
                Output::Disconnect { peer, reason } => {
                    crate::peer_info!(peer, "disconnecting", "disconnecting: {reason}");
                    self.sessions.remove(&peer);
                    self.disconnect(peer);
                }
                Output::StoreRules { issuer, rules } => self.keep_rules(&issuer, &rules),
                Output::StoreReport { child, report } => {
                    self.reports_to_keep.insert(child, report);
                }
                Output::Installer(job) => self.start_install_job(job),
                Output::Event(e) => self.log_event(e),
            }
        }
    }

    pub(super) fn log_event(&mut self, e: Event) {
        match e {
            Event::UpdateComplete { update } => {
                tracing::info!(update = %update, "update complete")
            }
            Event::BadChunk {
                peer,
                update,
                index,
            } => crate::peer_warn!(
                peer, "bad chunk", update = %update, index,
                "chunk failed verification: discarded, will be fetched again"
            ),
            Event::Misbehaved {
                peer,
                offence,
                reason,
            } => crate::peer_warn!(
                peer,
                offence.as_str(),
                offence = offence.as_str(),
                "misbehaving peer: {reason}"
            ),
            Event::Banned {
                peer,
                until,
                reason,
            } => crate::peer_warn!(
                peer,
                "banned",
                "banned for {}s after repeated offences; the last: {reason}",
                until.saturating_sub(now_ms()) / 1000
            ),
            Event::Error { reason } => tracing::error!("{reason}"),
            Event::InstallFailed {
                update,
                reason,
                retry_in,
            } => {
                let (module, version) = self
                    .engine
                    .manifest(&update)
                    .map(|m| (m.manifest.module().to_string(), m.manifest.version.clone()))
                    .unwrap_or_default();
                tracing::error!(module = %module, version = %version, update = %update, "install failed: {reason}; trying again in {} s", retry_in / 1000)
            }
            Event::Refused { peer } => {
                self.refused += 1;
                crate::peer_warn!(
                    peer,
                    "refused",
                    "refused a peer outside this node's part of the tree"
                )
            }
            Event::Unresponsive { peer, since } => crate::peer_warn!(
                peer,
                "unresponsive",
                "nothing heard since {} s ago: the session is ended and the peer taken for gone",
                now_ms().saturating_sub(since) / 1000
            ),
            Event::ParentLost => tracing::warn!(
                "lost the parent; serving children what this node has, retrying with backoff"
            ),
            Event::ParentConnected => tracing::info!("connected to the parent"),
            Event::RulesRefused { peer, reason } => {
                self.rules_refused += 1;
                crate::peer_warn!(peer, "rules refused", "rule set refused: {reason}")
            }
            Event::RulesApplied => tracing::debug!("availability re-evaluated"),
            Event::Halted {
                update,
                group,
                reason,
            } => tracing::warn!(update = %update, group = %group, "rollout halted: {reason}"),
            Event::OfferWithheld { peer, update } => crate::peer_warn!(
                peer, "offer withheld", update = %update,
                "the parent offered an update not available to this node by its rules; kept aside"
            ),
        }
    }

    pub(super) fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(u, _)| self.engine.is_complete(u));
        self.waiters = waiting;
        for (u, reply) in done {
            // Complete means durable: the writer commits what it holds, and the store's
            // committed index must hold every chunk. Until it does (a failed write took
            // some), the wait goes on.
            let (writer, node, ev) = (
                self.writer_tx.clone(),
                self.node.clone(),
                self.ev_tx.clone(),
            );
            let chunks = self.engine.manifest(&u).map(|m| m.chunks.clone());
            self.tasks.spawn(async move {
                let durable = match chunks {
                    Some(chunks) => is_durable(&writer, &node, chunks).await,
                    None => Ok(false),
                };
                match durable {
                    Ok(true) => {
                        let _ = reply.send(Ok(Answer::Wait(WaitOutcome {
                            update_id: u.to_hex(),
                            complete: true,
                        })));
                    }
                    Ok(false) => {
                        tokio::time::sleep(RECHECK_DURABLE).await;
                        let req = Request::Wait { update: u.to_hex() };
                        let _ = ev.send(LoopInput::Local { req, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Refusal::new(RefusalKind::Unavailable, e)));
                    }
                }
            });
        }
    }
}

/// How long a wait whose update is complete but not yet durable waits before the
/// engine is asked again: a failed write takes chunks the engine then fetches again.
const RECHECK_DURABLE: Duration = Duration::from_secs(1);
