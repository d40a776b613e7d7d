//! What the admin sees of peers' conduct: the bans in force in status, and offences and
//! bans in the metrics. The decisions are the engine's (`engine::conduct`).

use super::command::BanStatus;
use super::reports::Metrics;
use super::{Daemon, now_ms};

impl Daemon {
    /// The bans in force, for `status`.
    pub(super) fn bans_view(&self) -> Vec<BanStatus> {
        let now = now_ms();
        self.engine
            .bans(now)
            .into_iter()
            .map(|b| BanStatus {
                node_id: b.peer.node_id(),
                until: b.until / 1000,
                seconds_left: b.until.saturating_sub(now).div_ceil(1000),
                offences: b.offences,
                reason: b.reason,
            })
            .collect()
    }

    /// Offences by kind and the bans in force, for `/metrics`.
    pub(super) fn conduct_metrics(&self, m: &mut Metrics) {
        m.family(
            "arbor_offences_total",
            "counter",
            "Offences of peers against this node, by kind.",
        );
        let mut offences: Vec<_> = self.engine.offences().collect();
        offences.sort_by_key(|(o, _)| o.as_str());
        for (offence, n) in offences {
            m.sample("arbor_offences_total", &[("kind", offence.as_str())], n);
        }
        m.family("arbor_peers_banned", "gauge", "Peers banned now.");
        m.sample(
            "arbor_peers_banned",
            &[],
            self.engine.bans(now_ms()).len() as u64,
        );
    }
}
