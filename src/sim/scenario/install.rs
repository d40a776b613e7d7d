//! What installing an update costs a leaf in a scenario: the installer's work (staging
//! the files from the store, writing and syncing them, switching the version in) at a
//! rate and a cost per file, with defaults measured on the real installer.

use super::{Checker, ScenarioError, Text, parse_size};
use serde::Deserialize;

/// What installing costs a leaf: the work of the installer (staging the files from the
/// store, writing and syncing them, switching the version in), one update at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct InstallCost {
    /// Bytes staged per second.
    pub rate: f64,
    /// Milliseconds per file, beyond its bytes.
    pub per_file: f64,
}

impl InstallCost {
    /// A daemon's installer on the development machine, from its store to a disk, by
    /// `cargo bench --bench install` (simulations/README.md, "Installs"): 680 MiB/s,
    /// 1 GiB in 1.5 s, and 1 ms per file.
    pub const MEASURED: InstallCost = InstallCost {
        rate: 680.0 * 1024.0 * 1024.0,
        per_file: 1.0,
    };

    /// Milliseconds to install `bytes` in `files` files.
    pub fn millis(&self, bytes: u64, files: u32) -> u64 {
        (bytes as f64 / self.rate * 1000.0 + f64::from(files) * self.per_file).ceil() as u64
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstall {
    #[serde(default)]
    pub rate: Option<Text>,
    #[serde(default)]
    pub per_file: Option<Text>,
}

impl Checker<'_> {
    pub(super) fn install(&self, raw: Option<&RawInstall>) -> Result<InstallCost, ScenarioError> {
        let mut cost = InstallCost::MEASURED;
        let Some(raw) = raw else { return Ok(cost) };
        if let Some(v) = &raw.rate {
            cost.rate = match parse_size(v.get_ref().trim().trim_end_matches("/s")) {
                Some(n) => n as f64,
                None => {
                    return self.err(
                        v.span(),
                        format!(
                            "install rate {:?} is not a rate such as \"200MiB/s\"",
                            v.get_ref()
                        ),
                    );
                }
            };
        }
        if let Some(v) = &raw.per_file {
            cost.per_file = match humantime::parse_duration(v.get_ref().trim()) {
                Ok(d) => d.as_secs_f64() * 1000.0,
                Err(_) => {
                    return self.err(
                        v.span(),
                        format!(
                            "per_file {:?} is not a duration such as \"300us\"",
                            v.get_ref()
                        ),
                    );
                }
            };
        }
        Ok(cost)
    }
}
