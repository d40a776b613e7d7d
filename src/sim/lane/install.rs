//! The installer of a leaf in a lane: an update, once complete, is installed at the
//! cost the scenario states (its bytes at the install rate, and a cost per file), one
//! update at a time, as the daemon's installer works; then it succeeds or fails.

use super::*;

impl Lane<'_> {
    /// Leaf `i` holds all of update `u`: its installer takes it up once through with
    /// the installs before it.
    pub(super) fn install_later(&mut self, i: u32, u: usize) {
        let up = &self.fleet.sc.updates[u];
        let cost = self.fleet.sc.install.millis(up.size, up.files);
        let node = &mut self.nodes[i as usize];
        let done = node.install_free.max(self.now) + cost;
        node.install_free = done;
        self.at(
            done,
            Ev::Install {
                node: i,
                update: u as u32,
            },
        );
    }

    /// A leaf's installer finished with `update`.
    pub(super) fn install(&mut self, i: u32, u: usize) {
        let fleet = self.fleet;
        let node = &self.nodes[i as usize];
        if node.installed[u].is_some() || node.failed[u] || node.engine.is_none() {
            return;
        }
        let fails =
            draw(fleet.seed, &format!("install-{u}"), u64::from(i)) < fleet.sc.updates[u].fail;
        let id = fleet.manifests[u].id;
        let outcome = if fails {
            self.nodes[i as usize].failed[u] = true;
            self.tally.counters.install_failures += 1;
            Outcome::Failed("the simulated install failed".into())
        } else {
            self.nodes[i as usize].installed[u] = Some(self.now);
            let groups = fleet.summary_groups_of(i);
            self.tally
                .installed(u, &groups, fleet.report_site(i), self.now);
            Outcome::Installed(None)
        };
        self.last_change = self.now;
        self.drive(i, |e, now| {
            if fails {
                fleet.certify(e, i);
            }
            e.set_outcome(&id, outcome, now);
            e.set_needed(&id, false, now);
        });
    }
}
