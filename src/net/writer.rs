//! The store writer thread: the one place a running node writes chunks and manifests.
//! Chunks are stored in arrival order and reported to the event loop only once stored.
//!
//! It commits at least every [`COMMIT_AFTER`] while chunks arrive, so that a failure
//! loses at most that much. A failed write is a store fault: the chunks not yet
//! committed are given up and reported lost (only they are fetched again), the store
//! is reopened (redb refuses everything after a failed write), and the event loop is
//! told, so that the engine fetches nothing new and reports its incomplete updates
//! failed with the OS reason. The writer then probes the store, [`PROBE_FIRST`] after
//! the fault and doubling up to [`PROBE_MAX`], and clears the fault once a probe
//! writes and commits again. Chunks that arrive meanwhile are dropped unreported.

use super::*;
use crate::store::{ChunkWriter, Loc};
use std::time::Instant;

/// Longest a stored chunk waits for its commit while chunks keep arriving.
pub(super) const COMMIT_AFTER: Duration = Duration::from_secs(1);
/// First wait before probing a store that failed a write, and the longest (doubling
/// between). A probe writes [`crate::store::PROBE_BYTES`], so this bounds that I/O too.
pub(super) const PROBE_FIRST: Duration = Duration::from_secs(1);
pub(super) const PROBE_MAX: Duration = Duration::from_secs(30);
/// Manifests kept for storing once a fault clears; past this, the oldest is dropped
/// (it is offered again at the next connection to the parent).
const MAX_WAITING_MANIFESTS: usize = 256;

/// Work for the store writer thread, in order.
pub(super) enum WriteJob {
    Chunk {
        fetch: FetchId,
        index: u32,
        hash: Hash,
        data: Vec<u8>,
        /// Bytes that crossed the link for it.
        wire: u32,
    },
    Bad {
        fetch: FetchId,
        index: u32,
    },
    /// The source does not hold the chunk.
    Missing {
        fetch: FetchId,
        index: u32,
    },
    Elsewhere {
        fetch: FetchId,
        index: u32,
        holder: PublicKey,
    },
    End {
        fetch: FetchId,
    },
    Manifest {
        manifest: Arc<SignedManifest>,
    },
    /// A chunk found damaged at `loc` when read: quarantine it and report it lost.
    Quarantine {
        chunk: Hash,
        loc: Loc,
    },
    /// Once a second: commit, release the store if no chunk came since the last tick,
    /// and probe a store that failed.
    Tick,
    /// Commit what was stored so far, then answer.
    Sync {
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Which distinct chunks of `m` the store holds, in distinct-chunk order.
pub(super) fn local_have(store: &Store, m: &SignedManifest) -> Result<Vec<bool>, StoreError> {
    m.chunks
        .iter()
        .map(|(hash, _)| store.has_chunk(hash))
        .collect()
}

/// Whether every chunk of `chunks` is durable: the writer commits what it holds, then
/// the committed index is asked. What the engine holds may be uncommitted yet, or lost
/// by a failed write it has not heard of.
pub(super) async fn is_durable(
    writer: &mpsc::Sender<WriteJob>,
    node: &Arc<Node>,
    chunks: crate::trust::ChunkList,
) -> Result<bool, String> {
    let stopping = || "the daemon is stopping".to_string();
    let (done, synced) = oneshot::channel();
    writer
        .send(WriteJob::Sync { done })
        .await
        .map_err(|_| stopping())?;
    if synced.await.map_err(|_| stopping())?.is_err() {
        return Ok(false);
    }
    let node = node.clone();
    let held = tokio::task::spawn_blocking(move || node.store.holds_durably(&chunks))
        .await
        .map_err(|_| stopping())?;
    Ok(held.unwrap_or(false))
}

/// A failed write, and when to probe the store next.
struct Fault {
    why: String,
    probe_at: Instant,
    /// Chunks dropped since the fault.
    dropped: u64,
}

/// The writer thread's state.
struct Writer<'n> {
    store: &'n Store,
    /// The root has no parent to fetch a lost chunk from.
    root: bool,
    ev: &'n mpsc::UnboundedSender<LoopInput>,
    writer: Option<ChunkWriter<'n>>,
    /// When the oldest chunk not yet committed was stored.
    pending_since: Option<Instant>,
    /// A chunk was stored since the last tick.
    wrote: bool,
    fault: Option<Fault>,
    /// Faults since a chunk batch last committed: the probe backoff.
    strikes: u32,
    /// Manifests a fault kept from being stored: stored once it clears.
    waiting: Vec<Arc<SignedManifest>>,
}

/// The store writer thread: stores verified chunks and received manifests, in arrival
/// order, and reports each chunk only once it is stored.
pub(super) fn write_loop(
    node: &Node,
    mut rx: mpsc::Receiver<WriteJob>,
    ev: &mpsc::UnboundedSender<LoopInput>,
) {
    let mut w = Writer {
        store: &node.store,
        root: node.is_root(),
        ev,
        writer: None,
        pending_since: None,
        wrote: false,
        fault: None,
        strikes: 0,
        waiting: Vec::new(),
    };
    while let Some(job) = rx.blocking_recv() {
        match job {
            WriteJob::Chunk {
                fetch,
                index,
                hash,
                data,
                wire,
            } => w.chunk(fetch, index, hash, &data, wire),
            WriteJob::Bad { fetch, index } => {
                let _ = ev.send(LoopInput::Verdict {
                    fetch,
                    index,
                    verdict: ChunkVerdict::Bad,
                });
            }
            WriteJob::Missing { fetch, index } => {
                let _ = ev.send(LoopInput::Verdict {
                    fetch,
                    index,
                    verdict: ChunkVerdict::Missing,
                });
            }
            WriteJob::Elsewhere {
                fetch,
                index,
                holder,
            } => {
                let _ = ev.send(LoopInput::Elsewhere {
                    fetch,
                    index,
                    holder,
                });
            }
            WriteJob::End { fetch } => {
                let _ = ev.send(LoopInput::FetchEnd { fetch });
            }
            WriteJob::Manifest { manifest } => w.manifest(manifest),
            WriteJob::Quarantine { chunk, loc } => w.quarantine(chunk, loc),
            WriteJob::Sync { done } => {
                let _ = done.send(w.commit());
            }
            WriteJob::Tick => w.tick(),
        }
    }
    if let Some(mut writer) = w.writer.take()
        && let Err(e) = writer.flush()
    {
        tracing::error!("cannot commit received chunks at shutdown: {e}");
    }
}

impl<'n> Writer<'n> {
    fn chunk(&mut self, fetch: FetchId, index: u32, hash: Hash, data: &[u8], wire: u32) {
        if let Some(f) = self.fault.as_mut() {
            f.dropped += 1;
            return;
        }
        if self.writer.is_none() {
            match self.store.writer() {
                Ok(w) => self.writer = Some(w),
                Err(e) => return self.fail(&e),
            }
        }
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        match w.put(hash, data) {
            Ok(_) => {
                self.wrote = true;
                let _ = self.ev.send(LoopInput::Verdict {
                    fetch,
                    index,
                    verdict: ChunkVerdict::Stored { wire },
                });
                let since = *self.pending_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= COMMIT_AFTER {
                    let _ = self.commit();
                }
            }
            Err(e) => self.fail(&e),
        }
    }

    fn manifest(&mut self, manifest: Arc<SignedManifest>) {
        if self.fault.is_some() {
            return self.keep_waiting(manifest);
        }
        let m = &manifest.manifest;
        let name = ModuleVersion {
            tenant: &m.tenant,
            category: &m.category,
            id: &m.id,
            version: &m.version,
        };
        let stored = self
            .store
            .put_manifest(&manifest.id, &manifest.bytes, &name)
            .and_then(|()| local_have(self.store, &manifest));
        match stored {
            Ok(have) => {
                let _ = self.ev.send(LoopInput::LocalHave {
                    update: manifest.id,
                    have,
                });
            }
            Err(e) => {
                self.fail(&e);
                self.keep_waiting(manifest);
            }
        }
    }

    fn keep_waiting(&mut self, manifest: Arc<SignedManifest>) {
        if self.waiting.iter().any(|m| m.id == manifest.id) {
            return;
        }
        if self.waiting.len() >= MAX_WAITING_MANIFESTS {
            self.waiting.remove(0);
        }
        self.waiting.push(manifest);
    }

    fn quarantine(&mut self, chunk: Hash, loc: Loc) {
        // The damaged copy may be among the chunks waiting for their commit.
        if self.commit().is_err() {
            // Found again when it is next read, after the store recovers.
            return;
        }
        match self.store.quarantine(&chunk, loc, now_secs()) {
            Ok(true) => {
                if self.root {
                    tracing::error!(chunk = %chunk, "a stored chunk is damaged: quarantined; the root has no parent to fetch it from, so publish its update again");
                } else {
                    tracing::error!(chunk = %chunk, "a stored chunk is damaged: quarantined, it is fetched again");
                }
                let _ = self.ev.send(LoopInput::LocalLost {
                    chunks: vec![chunk],
                });
            }
            Ok(false) => {}
            Err(e) => self.fail(&e),
        }
    }

    /// Commits the chunks stored so far; a failure is a fault.
    fn commit(&mut self) -> Result<(), String> {
        self.pending_since = None;
        let Some(w) = self.writer.as_mut().filter(|w| w.has_pending()) else {
            return Ok(());
        };
        match w.flush() {
            Ok(()) => {
                self.strikes = 0;
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
                Err(e.to_string())
            }
        }
    }

    fn tick(&mut self) {
        if self.fault.is_some() {
            return self.probe();
        }
        let _ = self.commit();
        if !std::mem::take(&mut self.wrote) {
            // Idle: let publish use the store.
            self.writer = None;
            // A write that failed elsewhere (the event loop keeps rules and reports)
            // leaves the database refusing everything: found here, and recovered.
            if let Err(e) = self.store.check() {
                self.fail(&e);
            }
        }
    }

    /// A write failed: the chunks not committed are given up and reported lost, the
    /// store is reopened, and fetching pauses until a probe succeeds.
    fn fail(&mut self, e: &StoreError) {
        let why = e.to_string();
        self.pending_since = None;
        let lost = match self.writer.take() {
            // What was appended before the failure may still commit.
            Some(mut w) => match w.has_pending() && w.flush().is_err() {
                true => w.abandon(),
                false => Vec::new(),
            },
            None => Vec::new(),
        };
        tracing::error!(
            lost = lost.len(),
            "cannot write the store: {why}; fetching pauses until it can"
        );
        if !lost.is_empty() {
            let _ = self.ev.send(LoopInput::LocalLost { chunks: lost });
        }
        if self.fault.is_none() {
            let _ = self.ev.send(LoopInput::StoreFault {
                fault: Some(why.clone()),
            });
        }
        // Committed chunks stay readable (and served) through the fault.
        if let Err(e) = self.store.reopen() {
            tracing::warn!("cannot reopen the store yet: {e}");
        }
        self.strikes = self.strikes.saturating_add(1);
        self.fault = Some(Fault {
            why,
            probe_at: Instant::now() + probe_delay(self.strikes),
            dropped: 0,
        });
    }

    fn probe(&mut self) {
        let Some(f) = self.fault.as_mut() else {
            return;
        };
        if Instant::now() < f.probe_at {
            return;
        }
        if let Err(e) = self.store.probe() {
            self.strikes = self.strikes.saturating_add(1);
            let wait = probe_delay(self.strikes);
            tracing::warn!("the store still cannot be written: {e}; next try in {wait:?}");
            f.probe_at = Instant::now() + wait;
            return;
        }
        tracing::info!(
            dropped = f.dropped,
            "the store takes writes again (it failed: {}); fetching resumes",
            f.why
        );
        self.fault = None;
        let _ = self.ev.send(LoopInput::StoreFault { fault: None });
        for m in std::mem::take(&mut self.waiting) {
            self.manifest(m);
        }
    }
}

/// The wait before the next probe after `strikes` failures: [`PROBE_FIRST`], doubling,
/// at most [`PROBE_MAX`].
fn probe_delay(strikes: u32) -> Duration {
    PROBE_FIRST
        .saturating_mul(1 << strikes.saturating_sub(1).min(16))
        .min(PROBE_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_back_off_from_a_second_to_half_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|s| probe_delay(s).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(probe_delay(u32::MAX), PROBE_MAX);
    }
}
