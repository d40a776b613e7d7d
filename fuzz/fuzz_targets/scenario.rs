//! Fuzz target: simulation scenario files (`simulations/*.toml`), through
//! `sim::scenario::Scenario::parse`, which reads and checks one before `arbor simulate`
//! builds its fleet. Refusals must name a line within the file.
#![no_main]

use arbor::sim::scenario::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Scenario::parse("fuzz.toml", text) {
        assert!(
            e.line <= text.lines().count() + 1,
            "an error names line {}",
            e.line
        );
    }
});
