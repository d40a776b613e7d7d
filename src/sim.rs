//! The fleet simulator: `arbor simulate`. It runs the real [`crate::engine::Engine`]
//! for every node of a scenario's tree, in virtual time, over a modelled network, and
//! reports how long a rollout takes and what it costs the links.
//!
//! Owns the public entry point ([`simulate`]) and what a run hands back ([`Run`]);
//! the scenario format lives in `scenario`, the tree's fixed shape in `fleet`, the
//! event loop, the connections and what crosses the links in [`vnet`] (the virtual
//! network, public: the engine's tests run on it too), the links' queues in `network`
//! (their framing in `overhead`), what a module's new versions share and cost as
//! deltas in `versions`, the store, installer and script of each lane's nodes
//! in `lane`, the lanes run side by side in `world`, the figures in `summary` and
//! `chart`.

mod chart;
mod fleet;
mod lane;
mod network;
mod overhead;
mod queue;
pub mod scenario;
mod summary;
mod versions;
pub mod vnet;
mod world;

pub use scenario::{Scenario, ScenarioError};
pub use summary::{Counters, OutputError, Summary, UpdateResult, bytes};

use std::path::Path;

/// A run that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot make the scenario's updates: {0}")]
    Update(#[from] crate::trust::TrustError),
}

/// Where a running simulation is, for a progress display.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Virtual milliseconds simulated, and the scenario's limit.
    pub now: u64,
    pub until: u64,
    /// Leaf installs so far, and leaves × updates.
    pub installed: u64,
    pub wanted: u64,
}

/// A finished run.
pub struct Run {
    pub summary: Summary,
    tally: summary::Tally,
}

impl Run {
    /// Writes `summary.json`, `timeline.csv` and `rollout.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), OutputError> {
        self.summary.write(&self.tally, dir)
    }
}

/// Simulates `scenario` with `seed` (the same pair always gives the same summary).
/// `progress` is called at every timeline sample.
pub fn simulate(
    scenario: &Scenario,
    seed: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<Run, SimError> {
    // Thousands of engines check the very same signatures: check each once.
    crate::trust::memo::enable();
    let world = world::World::new(scenario, seed)?;
    let leaves = *scenario.tier_sizes().last().unwrap_or(&0);
    let wanted = leaves * scenario.updates.len() as u64;
    let tally = world.run(&mut |now, installed| {
        progress(Progress {
            now,
            until: scenario.until,
            installed,
            wanted,
        })
    });
    let sizes = world.fleet.summary_group_sizes();
    let sites = world.fleet.report_site_names();
    let summary = Summary::new(
        scenario,
        seed,
        &tally,
        &sizes,
        &sites,
        world.fleet.node_count(),
    );
    Ok(Run { summary, tally })
}
