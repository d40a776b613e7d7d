//! The installer's hands on a leaf in a lane: the jobs of its engine's installer
//! (the one the daemon runs) carried out at the cost the scenario states. An install
//! takes its bytes at the install rate plus a cost per file, then succeeds, or fails on
//! the leaves the scenario's share of failures draws.

use super::*;

impl Lane<'_> {
    /// A leaf's install job of update `u` is done: it fails on the leaves the
    /// scenario's share of failures draws (every time it is tried), else it replaces
    /// the module's current version.
    pub(super) fn install(&mut self, i: u32, u: usize) {
        let fleet = self.fleet;
        let now = self.now();
        let Some(engine) = self.vnet.engine(i) else {
            return;
        };
        let manifest = &fleet.manifests[u];
        let replaced = engine
            .installed_modules()
            .and_then(|m| m.get(&manifest.manifest.module()))
            .and_then(|s| s.current.as_ref())
            .map(|c| c.update)
            .filter(|c| *c != manifest.id);
        let fails =
            draw(fleet.seed, &format!("install-{u}"), u64::from(i)) < fleet.sc.updates[u].fail;
        let node = &mut self.nodes[i as usize];
        let first = !node.failed[u] && node.installed[u].is_none();
        let result = if fails {
            node.failed[u] = true;
            if first {
                self.tally.counters.install_failures += 1;
                self.last_change = now;
            }
            Err("the simulated install failed".to_string())
        } else {
            if node.installed[u].is_none() {
                node.installed[u] = Some(now);
                let groups = fleet.summary_groups_of(i);
                self.tally.installed(u, &groups, fleet.report_site(i), now);
                self.last_change = now;
            }
            Ok(replaced)
        };
        let done = InstallDone::Installed {
            update: manifest.id,
            result,
            hook: None,
        };
        self.drive(i, |e, now| {
            if fails {
                fleet.certify(e, i);
            }
            e.handle_install_done(done, None, now);
        });
    }

    /// Carries out a leaf's install job: an install costs what the scenario states (its
    /// bytes at the install rate, and a cost per file; the engine hands out one job at
    /// a time, as to the daemon's installer);
    /// the rest (removals and the admin's checks and rollbacks, which no scenario
    /// asks for) are done at once.
    pub(super) fn install_job(&mut self, i: u32, job: InstallJob, engine: &mut Engine) {
        let fleet = self.fleet;
        let now = self.vnet.engine_now();
        let done = match job {
            InstallJob::Install { manifest } => {
                if let Some(u) = fleet.manifests.iter().position(|m| m.id == manifest.id) {
                    let up = &fleet.sc.updates[u];
                    let at = self.now() + fleet.sc.install.millis(up.size, up.files);
                    let boot = self.nodes[i as usize].boots;
                    let update = u as u32;
                    self.at(
                        at,
                        Script::Install {
                            node: i,
                            update,
                            boot,
                        },
                    );
                }
                return;
            }
            InstallJob::Remove { module } => {
                let current = engine
                    .installed_modules()
                    .and_then(|m| m.get(&module))
                    .and_then(|s| s.current.as_ref())
                    .map(|c| c.update);
                InstallDone::Removed {
                    module,
                    result: Ok(current),
                }
            }
            InstallJob::Check { .. } | InstallJob::Repair { .. } => InstallDone::Checked {
                settled: Vec::new(),
                waiting: Vec::new(),
            },
            InstallJob::Rollback { module } => InstallDone::RolledBack {
                module,
                result: Err("the simulator has no admins to roll back".into()),
                hook: None,
            },
        };
        engine.handle_install_done(done, None, now);
    }
}
