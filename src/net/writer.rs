//! The store writer thread: the one place a running node writes chunks and manifests.
//! Chunks are stored in arrival order and reported to the event loop only once stored.

use super::*;

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
    /// Once a second: commit and release the store if no chunk came since the last tick.
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

/// The store writer thread: stores verified chunks and received manifests, in arrival
/// order, and reports each chunk only once it is stored.
pub(super) fn write_loop(
    node: &Node,
    mut rx: mpsc::Receiver<WriteJob>,
    ev: &mpsc::UnboundedSender<Ev>,
) {
    let store = &node.store;
    let mut writer = None;
    let mut wrote = false;
    let mut damaged_logged = false;
    while let Some(job) = rx.blocking_recv() {
        match job {
            WriteJob::Chunk {
                fetch,
                index,
                hash,
                data,
                wire,
            } => {
                if writer.is_none() {
                    match store.writer() {
                        Ok(w) => writer = Some(w),
                        Err(e) => {
                            if !damaged_logged {
                                tracing::error!("cannot store chunks: {e}");
                                damaged_logged = true;
                            }
                            continue;
                        }
                    }
                }
                if let Some(w) = writer.as_mut() {
                    match w.put(hash, &data) {
                        Ok(_) => {
                            wrote = true;
                            let _ = ev.send(Ev::Verdict {
                                fetch,
                                index,
                                verdict: ChunkVerdict::Stored { wire },
                            });
                        }
                        Err(e) => tracing::error!(chunk = %hash, "cannot store a chunk: {e}"),
                    }
                }
            }
            WriteJob::Bad { fetch, index } => {
                let _ = ev.send(Ev::Verdict {
                    fetch,
                    index,
                    verdict: ChunkVerdict::Bad,
                });
            }
            WriteJob::Missing { fetch, index } => {
                let _ = ev.send(Ev::Verdict {
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
                let _ = ev.send(Ev::Elsewhere {
                    fetch,
                    index,
                    holder,
                });
            }
            WriteJob::End { fetch } => {
                let _ = ev.send(Ev::FetchEnd { fetch });
            }
            WriteJob::Manifest { manifest } => {
                let m = &manifest.manifest;
                let name = ModuleVersion {
                    tenant: &m.tenant,
                    category: &m.category,
                    id: &m.id,
                    version: &m.version,
                };
                let stored = store
                    .put_manifest(&manifest.id, &manifest.bytes, &name)
                    .and_then(|()| local_have(store, &manifest));
                match stored {
                    Ok(have) => {
                        let _ = ev.send(Ev::LocalHave {
                            update: manifest.id,
                            have,
                        });
                    }
                    Err(e) => {
                        tracing::error!(update = %manifest.id, "cannot store a manifest: {e}")
                    }
                }
            }
            WriteJob::Sync { done } => {
                let synced = match writer.as_mut() {
                    Some(w) if w.has_pending() => w.flush().map_err(|e| e.to_string()),
                    _ => Ok(()),
                };
                let _ = done.send(synced);
            }
            WriteJob::Tick => {
                if !wrote && let Some(mut w) = writer.take() {
                    // Idle: make what arrived durable and let publish use the store.
                    if let Err(e) = w.flush() {
                        tracing::error!("cannot commit received chunks: {e}");
                    }
                }
                wrote = false;
            }
        }
    }
    if let Some(mut w) = writer
        && let Err(e) = w.flush()
    {
        tracing::error!("cannot commit received chunks at shutdown: {e}");
    }
}
