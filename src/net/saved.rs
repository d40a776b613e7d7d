//! The daemon's snapshot of an earlier run: what its redb store kept (its children,
//! the rule sets, the children's reports, the report sequence number, the manifests
//! and which of their chunks are held), read into an [`engine::Saved`] at start-up for
//! [`Engine::resume`](crate::engine::Engine::resume), which loads it in the one order
//! every driver uses. What cannot be read is said and left out; the engine drops what
//! no longer opens.

use super::reports::{META_REPORT_SEQ, SEQ_SKIP};
use super::writer::local_have;
use super::{NetError, Node};
use crate::engine::bitmap::Bitmap;
use crate::engine::{self, Millis, SavedChild};
use crate::store::StoreError;
use crate::trust::{PublicKey, SignedManifest};
use std::sync::Arc;

/// What `node`'s store kept, and the report sequence number it kept (the snapshot's is
/// well past it, as the number is kept only once a second).
pub(super) fn read(node: &Node, now: Millis) -> Result<(engine::Saved, u64), NetError> {
    let store = &node.store;
    let mut saved = engine::Saved::default();
    for (child, record) in store.children()? {
        if !record.revoked {
            saved.children.push(SavedChild {
                key: PublicKey(child),
                client: record.client,
                site: None,
            });
        }
    }
    saved.rules = by_key(store.rules(), "the stored rule sets");
    saved.reports = by_key(store.reports(), "the kept reports");
    let mut kept_seq = 0;
    match store.meta(META_REPORT_SEQ) {
        Ok(Some(bytes)) => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(b) => {
                kept_seq = u64::from_le_bytes(b);
                saved.report_seq = kept_seq.saturating_add(SEQ_SKIP);
            }
            Err(_) => tracing::warn!("the kept report sequence number is damaged; ignored"),
        },
        Ok(None) => {}
        Err(e) => tracing::error!("cannot read the report sequence number: {e}"),
    }
    for (id, bytes) in store.manifests()? {
        match SignedManifest::open(&bytes, &node.root_key, now / 1000) {
            Ok(m) => {
                let have = local_have(store, &m)?;
                let mut held = Bitmap::new(have.len() as u32);
                for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
                    held.set(i as u32);
                }
                saved.updates.push((Arc::new(m), held));
            }
            Err(e) => {
                tracing::error!(update = %id, "stored manifest refused: {e}; run arbor verify")
            }
        }
    }
    Ok((saved, kept_seq))
}

/// Bytes the store keeps per node key (rule sets by issuer, reports by child).
type KeptByKey = Vec<([u8; 32], Vec<u8>)>;

/// Kept bytes by node key; none, and said why, if they cannot be read.
fn by_key(kept: Result<KeptByKey, StoreError>, what: &str) -> Vec<(PublicKey, Arc<[u8]>)> {
    match kept {
        Ok(kept) => kept
            .into_iter()
            .map(|(key, bytes)| (PublicKey(key), bytes.into()))
            .collect(),
        Err(e) => {
            tracing::error!("cannot read {what}: {e}");
            Vec::new()
        }
    }
}
