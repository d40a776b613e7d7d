//! A module's versions in a lane, as a daemon's store treats them: the chunks of a new
//! version that a node holds already, as chunks of another version (its store finds
//! them by hash when it stores the manifest, and tells its engine); and, at the end,
//! who holds each update and which versions a leaf skipped for a newer one. The base a
//! chunk request names for deltas (PROTOCOL.md §13.2) is the virtual network's
//! ([`super::vnet`]); what a chunk costs as a delta is [`crate::sim::versions`]'s.

use super::*;

impl Lane<'_> {
    /// Node `i` stored the manifest of update `id`: the chunks its store holds as
    /// chunks of other versions of the module are held for this one too.
    pub(super) fn held_elsewhere(&mut self, i: u32, id: &Hash) {
        let fleet = self.fleet;
        let versions = &fleet.versions;
        let Some(u) = fleet.update_index(id).filter(|u| versions.has_versions(*u)) else {
            return;
        };
        let saved = &mut self.nodes[i as usize].saved;
        let Some(pos) = saved.updates.iter().position(|(m, _)| m.id == *id) else {
            return;
        };
        let mut have = std::mem::replace(&mut saved.updates[pos].1, Bitmap::new(0));
        for (m, bits) in &saved.updates {
            let Some(v) = fleet.update_index(&m.id) else {
                continue;
            };
            if v == u || versions.first_of(v) != versions.first_of(u) {
                continue;
            }
            for k in 0..have.len() {
                if bits.get(k) && versions.shares(u, v, k) {
                    have.set(k);
                }
            }
        }
        saved.updates[pos].1 = have;
    }

    /// Counts, at the end of the run, the nodes (below the root) that hold each update
    /// whole, and each version a leaf never installed because it installed a newer one
    /// of the module (a leaf that came late takes the newest only).
    pub(super) fn count_versions(&mut self) {
        let fleet = self.fleet;
        let versions = &fleet.versions;
        for i in 1..self.nodes.len() as u32 {
            if !self.owns(i) {
                continue;
            }
            let node = &self.nodes[i as usize];
            for (m, have) in &node.saved.updates {
                if let Some(u) = fleet.update_index(&m.id).filter(|_| have.is_full()) {
                    self.tally.held(u);
                }
            }
            if !fleet.is_leaf(i) {
                continue;
            }
            let installed = &self.nodes[i as usize].installed;
            for u in 0..installed.len() {
                let newer = || {
                    (0..installed.len()).any(|v| installed[v].is_some() && versions.is_newer(v, u))
                };
                if installed[u].is_none() && newer() {
                    self.tally.skipped(u, fleet.report_site(i));
                }
            }
        }
    }
}
