//! Fuzz target: the node's configuration file (`DIR/config.toml`), through
//! `cli::config::parse` and then `cli::config::settings`, which checks every value
//! (addresses, rates, WAN windows, durations, site) as `arbor run` does before it
//! starts.
#![no_main]

use arbor::cli::config::{RunFlags, parse, settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = parse(text) else {
        return;
    };
    let _ = settings(file, RunFlags::default());
});
