//! The branch-office topology on network namespaces, CI-sized: 2 sites of 2 leaves
//! with no branch node, each site behind one 20 Mbit/s WAN link (`tc tbf`), an 8 MiB
//! update. It runs `benches/branch-offices.sh` (which builds the namespaces and always
//! removes them) with this test's own binary, and asserts that every leaf installed
//! the update and that no site's WAN link carried more than 1.05 update sizes.
//!
//! It needs root (it creates namespaces), so it is ignored by a plain `cargo test`;
//! `.ci/test` runs it as root with `--ignored`.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
#[ignore = "needs root and network namespaces: .ci/test runs it"]
fn leaves_of_a_site_pull_the_update_across_their_wan_link_once() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/branch-offices.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script)
        .env("ARBOR_BIN", env!("CARGO_BIN_EXE_arbor"))
        .env("ARBOR_BENCH_SITES", "2")
        .env("ARBOR_BENCH_LEAVES", "2")
        .env("ARBOR_BENCH_MIB", "8")
        .env("ARBOR_BENCH_WAN", "20mbit")
        .env("ARBOR_BENCH_LAN", "200mbit")
        .env("ARBOR_BENCH_RUNS", "B")
        // Every wait in the script is bounded by this.
        .env("ARBOR_BENCH_LIMIT_SECS", "300")
        .env("ARBOR_BENCH_MAX_WAN", "1.05")
        .output()
        .expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the branch-office run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("arbor B"))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}\n{stderr}"));
    // "... WAN bytes per site / update size: 1.003 1.002 (worst 1.003)"
    let worst: f64 = line
        .rsplit_once("(worst ")
        .and_then(|(_, w)| w.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no worst WAN figure in {line:?}"));
    assert!(worst <= 1.05, "{line}");
    assert!(
        worst >= 1.0,
        "less than the update crossed a WAN link: {line}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(600),
        "took {:?}",
        started.elapsed()
    );
    // The namespaces are gone: the script removes its own on every exit.
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("-s1l1"),
        "the script left namespaces behind"
    );
    println!("{line}");
}
