//! Starting again from a snapshot: what a node's store kept of an earlier run
//! ([`Saved`]: its children, the rule sets of its path and its own, its children's
//! newest reports, its report sequence number, and the updates it holds with which of
//! their chunks), and the one order it is loaded in ([`Engine::resume`]). Every driver
//! builds a `Saved` from its own store (the daemon from redb, the simulator and the test
//! harness from memory) and hands it over, so a node comes back the same way whichever
//! drives it.

use super::*;
use crate::report::ReportError;

/// What a node's store kept of an earlier run.
#[derive(Clone, Debug, Default)]
pub struct Saved {
    /// Its certified children (not the revoked).
    pub children: Vec<SavedChild>,
    /// The newest rule set kept of each issuer: the path's and this node's own.
    pub rules: Vec<(PublicKey, Arc<[u8]>)>,
    /// The newest report kept of each child.
    pub reports: Vec<(PeerId, Arc<[u8]>)>,
    /// Report sequence numbers continue above this one.
    pub report_seq: u64,
    /// The updates held, each with the chunks the store holds of it.
    pub updates: Vec<(Arc<SignedManifest>, Bitmap)>,
}

/// A certified child in a [`Saved`] snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedChild {
    pub key: PeerId,
    /// Its certificate says it is a client.
    pub client: bool,
    /// The site it is known to be at, if the driver knows it before it connects.
    pub site: Option<String>,
}

/// Something a snapshot held that no longer opens: dropped, and said why.
#[derive(Debug, thiserror::Error)]
pub enum Dropped {
    #[error("the kept rule set of {} is refused and ignored: {error}", issuer.node_id())]
    Rules {
        issuer: PublicKey,
        error: RulesError,
    },
    #[error("the kept report of {} is refused and dropped: {error}", child.node_id())]
    Report { child: PeerId, error: ReportError },
}

impl Saved {
    /// Keeps `rules` as the newest of `issuer`'s, in place of any earlier (a driver that
    /// keeps its snapshot in memory).
    pub fn keep_rules(&mut self, issuer: PublicKey, rules: Arc<[u8]>) {
        self.rules.retain(|(k, _)| *k != issuer);
        self.rules.push((issuer, rules));
    }

    /// Keeps `report` as `child`'s newest, in place of any earlier.
    pub fn keep_report(&mut self, child: PeerId, report: Arc<[u8]>) {
        self.reports.retain(|(k, _)| *k != child);
        self.reports.push((child, report));
    }

    /// The chunks held of `update`, if it is held.
    pub fn update_mut(&mut self, update: &Hash) -> Option<&mut Bitmap> {
        self.updates
            .iter_mut()
            .find(|(m, _)| m.id == *update)
            .map(|(_, have)| have)
    }
}

impl Engine {
    /// Loads what the store kept of an earlier run into a new engine, in the one order
    /// every driver uses: the children first (reports and rules are about them), then
    /// the rule sets (an expired one still holds its issuer's version, so that older
    /// ones stay refused), the report sequence number, the children's reports (a
    /// threshold crossed just before the restart still halts), and last the updates
    /// held. Returns what no longer opens, which is dropped; everything else is loaded.
    pub fn resume(&mut self, saved: &Saved, now: Millis) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        for child in &saved.children {
            self.add_child(child.key, child.client, now);
            if child.site.is_some() {
                self.set_child_site(child.key, child.site.as_deref());
            }
        }
        for (issuer, rules) in &saved.rules {
            if let Err(error) = self.restore_rules(rules, now) {
                dropped.push(Dropped::Rules {
                    issuer: *issuer,
                    error,
                });
            }
        }
        self.set_report_seq(saved.report_seq);
        for (child, report) in &saved.reports {
            if let Err(error) = self.restore_report(child, report, now) {
                dropped.push(Dropped::Report {
                    child: *child,
                    error,
                });
            }
        }
        for (manifest, have) in &saved.updates {
            let held: Vec<bool> = (0..have.len()).map(|c| have.get(c)).collect();
            self.add_local_update(manifest.clone(), &held, now);
        }
        dropped
    }
}
