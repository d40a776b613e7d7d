//! `arbor run`: starts the node's daemon, with its admin API, by its settings and runs
//! it until a signal stops it.

use super::config::{self, RunFlags};
use crate::admin;
use crate::net::Options;
use anyhow::{Context, Result};
use std::path::Path;

/// `arbor run`: runs the node until SIGINT or SIGTERM.
pub fn run(data: &Path, flags: RunFlags) -> Result<()> {
    let settings = config::settings(config::load(data)?, flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("arbor")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Watched before the node starts: a signal during the start stops it cleanly
        // once it is up, instead of killing it.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
        let daemon = admin::start(
            Options {
                installer: settings.installer,
                bandwidth: settings.bandwidth,
                site: settings.site,
                ..Options::new(data, settings.listen)
            },
            settings.admin,
        )
        .await
        .with_context(|| format!("cannot start the node in {}", data.display()))?;
        let shutdown = async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        };
        daemon.run(shutdown).await?;
        Ok(())
    })
}
