//! `arbor simulate` on the scenarios in simulations/: the same scenario and seed give
//! the same summary, every online client of a healthy fleet installs, sibling fetch
//! keeps the copies off the offices' WAN links, churn and crashes are survived (a
//! client back from a crash before its parent noticed is served at once), and a
//! broken scenario file is refused with the line at fault.

use arbor::sim::{Scenario, Summary, simulate};
use std::path::Path;
use std::process::Command;

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("simulations")
        .join(name);
    Scenario::load(&path).expect("the scenario in simulations/ is valid")
}

fn run(sc: &Scenario, seed: u64) -> Summary {
    simulate(sc, seed, &mut |_| {}).expect("runs").summary
}

#[test]
fn the_same_scenario_and_seed_give_an_identical_summary() {
    let sc = scenario("churn-and-failures.toml");
    let first = run(&sc, 7);
    let second = run(&sc, 7);
    assert_eq!(first, second);
    assert_eq!(
        serde_json::to_string(&first).expect("encodes"),
        serde_json::to_string(&second).expect("encodes")
    );
    // The seed matters: another draws other nodes to churn and fail.
    assert_ne!(first, run(&sc, 8));
}

#[test]
fn every_client_of_the_branch_office_fleet_installs_and_each_branch_takes_one_copy() {
    let sc = scenario("branch-offices.toml");
    let s = run(&sc, 1);
    let all = &s.updates[0].groups[0];
    assert_eq!((all.members, all.installed), (16, 16));
    let bound = 64.0 * 1024.0 * 1024.0 * 8.0 / 38.26e6;
    let done = all.p100_s.expect("everyone installed");
    assert!(
        done >= bound && done < bound * 1.5,
        "done at {done} s; bound {bound} s"
    );
    let branch = &s.tiers[0];
    assert_eq!(
        branch.bytes_from_parents,
        4 * (64 << 20),
        "one copy per branch"
    );
    assert_eq!(s.root_egress, 4 * (64 << 20));
    assert_eq!(s.not_installed, 0);
}

#[test]
fn sibling_fetch_takes_one_copy_across_each_offices_wan_link() {
    let on = run(&scenario("sibling-fetch-on.toml"), 1);
    let off = run(&scenario("sibling-fetch-off.toml"), 1);
    let update = 256u64 << 20;
    assert_eq!(
        on.site_wan,
        20 * update,
        "one copy per office with siblings"
    );
    assert_eq!(off.site_wan, 200 * update, "one copy per client without");
    let (t_on, t_off) = (
        on.updates[0].groups[0].p100_s.expect("all installed"),
        off.updates[0].groups[0].p100_s.expect("all installed"),
    );
    assert!(t_on * 3.0 < t_off, "siblings: {t_on} s, none: {t_off} s");
    assert!(on.tiers[0].bytes_from_siblings > 0 || on.tiers[1].bytes_from_siblings > 0);
}

#[test]
fn churn_and_crashes_are_survived_and_failures_counted() {
    let s = run(&scenario("churn-and-failures.toml"), 1);
    let f = &s.failures;
    assert!(
        f.crashes > 0 && f.leaves > 0 && f.install_failures > 0,
        "{f:?}"
    );
    assert!(s.never_online > 0);
    assert!(
        f.halts > 0,
        "a branch with four failed installs halts its approval"
    );
    let all = &s.updates[0].groups[0];
    // Most clients installed; the ones missing are the never-online, the failed and
    // those behind a halted approval.
    assert!(all.installed * 10 > all.members * 8, "{all:?}");
    assert!(all.installed + s.never_online + f.install_failures <= all.members);
    assert_eq!(f.misbehaved, 0, "no engine saw a peer break the protocol");
    assert_eq!(f.rules_refused, 0);
}

#[test]
fn the_cli_writes_the_summary_the_timeline_and_the_chart() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations/branch-offices.toml");
    let result = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .arg("simulate")
        .arg(&path)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("arbor runs");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stdout = String::from_utf8_lossy(&result.stdout);
    for heading in [
        "Installed: bench",
        "root egress",
        "Peak link utilisation",
        "Rule propagation",
        "Failures",
    ] {
        assert!(stdout.contains(heading), "{heading} in:\n{stdout}");
    }
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("summary.json")).expect("summary.json"),
    )
    .expect("JSON");
    assert_eq!(summary["updates"][0]["groups"][0]["installed"], 16);
    let csv = std::fs::read_to_string(out.path().join("timeline.csv")).expect("timeline.csv");
    let header = csv.lines().next().expect("a header");
    assert!(header.starts_with("time_s,installed_all,"), "{header}");
    assert!(csv.lines().count() > 10);
    let last: Vec<&str> = csv.lines().last().expect("rows").split(',').collect();
    assert_eq!(last[1], "16");
    let svg = std::fs::read_to_string(out.path().join("rollout.svg")).expect("rollout.svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "an SVG with lines"
    );
}

#[test]
fn a_broken_scenario_file_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations/branch-offices.toml"),
    )
    .expect("reads")
    .replace("fanout = 4\n", "fanout = 4\nfanuot = 5\n");
    std::fs::write(&path, &text).expect("writes");
    let line = 1 + text[..text.find("fanuot").expect("present")]
        .matches('\n')
        .count();
    let result = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .arg("simulate")
        .arg(&path)
        .output()
        .expect("arbor runs");
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains(&format!("broken.toml:{line}:")), "{stderr}");
    assert!(stderr.contains("fanuot"), "{stderr}");
}

#[test]
fn a_client_that_crashes_and_restarts_before_its_parent_notices_is_served_at_once() {
    // Half the clients crash a second into the download and are back half a second to
    // a second later, long before their branch would notice the crash (10 s). Their
    // new connection replaces the one the branch still holds, so they go on at once
    // rather than after the notice and a backoff.
    let sc = Scenario::parse(
        "crash-and-back.toml",
        r#"
name = "crash-and-back"
until = "10m"
[root]
up = "1Gbit"
[[tier]]
name = "branch"
fanout = 1
down = "100Mbit"
up = "1Gbit"
latency = "10ms"
[[tier]]
name = "client"
fanout = 8
down = "1Gbit"
up = "1Gbit"
latency = "1ms"
[[churn]]
kind = "crash"
tier = "client"
share = "50%"
within = "1s..2s"
downtime = "500ms..1s"
[[update]]
name = "u"
size = "64MiB"
install = "1s"
[[approval]]
by = "root"
update = "u"
subtree = true
"#,
    )
    .expect("a valid scenario");
    let s = run(&sc, 1);
    assert!(s.failures.crashes >= 2, "{:?}", s.failures);
    let all = &s.updates[0].groups[0];
    assert_eq!((all.members, all.installed), (8, 8), "{all:?}");
    // 64 MiB over the branch's 100 Mbit/s link takes 5.4 s; the crashed clients lose
    // a second or two, not the ten it takes to notice a crash.
    let done = all.p100_s.expect("everyone installed");
    assert!(done < 10.0, "done at {done} s");
    assert_eq!(s.failures.misbehaved, 0);
}
