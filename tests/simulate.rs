//! `arbor simulate` on the scenarios in simulations/: the same scenario and seed give
//! the same summary, every online client of a healthy fleet installs, sibling fetch
//! keeps the copies off the offices' WAN links and passes chunks on at the pace of the
//! WAN, churn and crashes are survived (a client back from a crash before its parent
//! noticed is served at once), and a broken scenario file is refused with the line at
//! fault. And the models behind the figures: a download limit holds a client to it, a
//! WAN window holds a site until it opens, an install costs its bytes at the stated
//! rate, every site is summed up, a failed install does not hide when the others
//! finished, the timeline counts bytes as they arrive, and clients upgrade to a new
//! version of a module moving only what changed (as deltas), or the newest version
//! whole when they come late.

use arbor::sim::{Scenario, Summary, UpdateResult, simulate};
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
    // 1,024 chunks of 64 KiB, 68,673 bytes each on a 40 Mbit/s wire with their framing.
    let wire = 1024 * 68_673u64;
    let bound = wire as f64 * 8.0 / 40e6;
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
    // The chunks, and the control messages beside them (offers, rules, announcements).
    assert!(
        s.root_egress > 4 * wire && s.root_egress < 4 * wire + (1 << 20),
        "root egress {}",
        s.root_egress
    );
    assert_eq!(s.not_installed, 0);
}

#[test]
fn branch_office_sites_without_a_branch_node_take_one_copy_each_and_keep_the_wan_busy() {
    let s = run(&scenario("branch-offices-siblings.toml"), 1);
    let all = &s.updates[0].groups[0];
    assert_eq!((all.members, all.installed), (16, 16));
    // 1,024 chunks of 64 KiB on each site's 40 Mbit/s wire, and the control messages.
    let wire = 1024 * 68_673u64;
    assert!(
        s.site_wan > 4 * wire && s.site_wan < 4 * wire + 4 * (1 << 20),
        "{} bytes across the sites' WAN links",
        s.site_wan
    );
    // Siblings pass on at once what they fetched (their LAN ports are not held up by
    // the chunks still crossing the WAN to them): the WAN's time, the install's, and
    // little more; no sibling given up for stalling.
    let bound = wire as f64 * 8.0 / 40e6 + 64.0 / 38.0;
    let done = all.p100_s.expect("everyone installed");
    assert!(
        done >= bound && done < bound * 1.1,
        "done at {done} s; bound {bound} s"
    );
    assert_eq!(s.failures.fetch_timeouts, 0);
}

#[test]
fn sibling_fetch_takes_one_copy_across_each_offices_wan_link() {
    let on = run(&scenario("sibling-fetch-on.toml"), 1);
    let off = run(&scenario("sibling-fetch-off.toml"), 1);
    // 256 chunks of 1 MiB, 1,097,517 bytes each with their framing; and the control
    // messages both ways (offers, announcements, reports).
    let update = 256 * 1_097_517u64;
    let copies = |wan: u64| wan as f64 / update as f64;
    let with = copies(on.site_wan);
    assert!((20.0..20.5).contains(&with), "{with} copies with siblings");
    let without = copies(off.site_wan);
    assert!(
        (200.0..201.0).contains(&without),
        "{without} copies without"
    );
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

/// A scenario of one tier of `clients` under the root, with `extra` lines for the
/// tier, one update of `size`, and `top` lines at the top of the file.
fn one_tier(top: &str, extra: &str, clients: u32, size: &str) -> Scenario {
    let text = format!(
        r#"name = "one-tier"
until = "4h"
sample = "1s"
{top}
[root]
up = "1Gbit"
[[tier]]
name = "client"
fanout = {clients}
down = "1Gbit"
up = "1Gbit"
latency = "1ms"
{extra}
[[update]]
name = "u"
size = "{size}"
[[approval]]
by = "root"
update = "u"
"#
    );
    Scenario::parse("one-tier.toml", &text).expect("a valid scenario")
}

#[test]
fn a_download_limit_holds_a_client_to_it_on_a_fast_link() {
    let free = run(&one_tier("", "", 1, "8MiB"), 1);
    let limited = run(
        &one_tier("", "limits = { max_download = \"8Mbit\" }", 1, "8MiB"),
        1,
    );
    let took = |s: &Summary| s.updates[0].groups[0].p100_s.expect("installed");
    // At 1 Gbit/s the 8 MiB take 70 ms; at 1 MB/s the 7 MiB after the bucket's first
    // (one chunk) take 7.34 s.
    assert!(took(&free) < 1.0, "{} s unlimited", took(&free));
    assert!(
        (7.34..7.6).contains(&took(&limited)),
        "{} s limited",
        took(&limited)
    );
}

#[test]
fn a_wan_window_holds_a_sites_fetching_until_it_opens() {
    // The run starts at 18:00; the office fetches from 19:00.
    let sc = one_tier(
        "starts_at = \"18:00\"",
        "site = { size = 4, down = \"100Mbit\", up = \"100Mbit\", \
         limits = { wan_window = [\"19:00-07:00\"] } }",
        8,
        "16MiB",
    );
    let s = run(&sc, 1);
    let all = &s.updates[0].groups[0];
    assert_eq!(all.installed, 8, "{all:?}");
    let first = all.p50_s.expect("installed");
    let last = all.p100_s.expect("installed");
    assert!(
        first >= 3600.0 && last < 3600.0 + 60.0,
        "{first} s to {last} s"
    );
    // Nothing crossed the offices' links before the window opened but the offers.
    assert!(s.sites.iter().all(|site| site.done_s >= Some(3600.0)));
}

#[test]
fn an_install_costs_its_bytes_and_files_at_the_stated_rate() {
    let install = |rate: &str| {
        let top = format!("[install]\nrate = \"{rate}\"\nper_file = \"1ms\"");
        // [install] is a table: it goes after the top-level keys, before [root].
        let sc = one_tier(&top, "", 2, "64MiB");
        run(&sc, 1).updates[0].groups[0].p100_s.expect("installed")
    };
    // 64 MiB at 10 MiB/s is 6.4 s, at 20 MiB/s 3.2 s; the transfer is the same.
    let slow = install("10MiB/s");
    let fast = install("20MiB/s");
    assert!(
        (slow - fast - 3.2).abs() < 0.01,
        "{slow} s against {fast} s"
    );
}

#[test]
fn every_site_is_summed_up_and_a_failed_install_hides_no_finish() {
    let text = r#"
name = "sites"
until = "1h"
[root]
up = "1Gbit"
[[tier]]
name = "branch"
fanout = 3
down = "100Mbit"
up = "1Gbit"
latency = "10ms"
[[tier]]
name = "client"
fanout = 4
down = "1Gbit"
up = "1Gbit"
latency = "1ms"
[[update]]
name = "u"
size = "8MiB"
fail = "20%"
[[approval]]
by = "root"
update = "u"
subtree = true
"#;
    let s = run(&Scenario::parse("sites.toml", text).expect("valid"), 1);
    assert_eq!(s.sites.len(), 3);
    let text = s.text();
    for site in &s.sites {
        assert_eq!(site.leaves, 4);
        assert!(text.contains(&site.site), "{} in:\n{text}", site.site);
        // Each branch's copy crossed its WAN once, with its framing.
        assert!(site.bytes_in > 8 << 20, "{site:?}");
    }
    let all = &s.updates[0].groups[0];
    assert!(
        s.failures.install_failures > 0 && all.installed > 0,
        "{s:?}"
    );
    assert_eq!(all.p100_s, None, "some installs failed");
    let last = s.last_install_s.expect("the others installed");
    assert!(last > 0.0 && last < 10.0, "{last} s");
    assert!(text.contains("the last successful install at"), "{text}");
    // A site with a failed install is never done; the others are, by the last install.
    let done: Vec<Option<f64>> = s.sites.iter().map(|site| site.done_s).collect();
    assert!(done.iter().flatten().all(|d| *d <= last), "{done:?}");
    assert_eq!(
        s.sites.iter().map(|site| site.installed).sum::<u64>(),
        all.installed
    );
}

#[test]
fn the_timeline_counts_bytes_as_they_arrive() {
    // 8 MiB from a root that sends at 8 Mbit/s (1 MB/s): 9 s or so on the wire. The
    // client is at a site, so that it hears of each chunk as it lands.
    let mut sc = one_tier("", "site = { size = 1 }", 1, "8MiB");
    sc.root_up = 1_000_000.0;
    let run = simulate(&sc, 1, &mut |_| {}).expect("runs");
    let out = tempfile::tempdir().expect("a temporary directory");
    run.write(out.path()).expect("written");
    let csv = std::fs::read_to_string(out.path().join("timeline.csv")).expect("timeline.csv");
    let header: Vec<&str> = csv.lines().next().expect("a header").split(',').collect();
    let egress = header
        .iter()
        .position(|h| *h == "root_egress")
        .expect("a root_egress column");
    let at = |secs: &str| -> u64 {
        let row = csv
            .lines()
            .find(|l| l.split(',').next() == Some(secs))
            .unwrap_or_else(|| panic!("a row at {secs} s in\n{csv}"));
        row.split(',')
            .nth(egress)
            .expect("a value")
            .parse()
            .expect("a number")
    };
    // After 3 s about 3 MB has arrived, not the 8 MiB queued at once.
    let three = at("3");
    assert!(
        (2_000_000..3_100_000).contains(&three),
        "{three} bytes at 3 s"
    );
    assert!(at("20") > 8 << 20);
}

/// The bytes moved for `u`, as a share of a full download by every node that holds it.
fn moved_share(u: &UpdateResult) -> f64 {
    u.bytes_moved as f64 / (u.bytes * u.holders.max(1)) as f64
}

#[test]
fn clients_upgrade_through_the_installer_and_move_only_what_changed() {
    let s = run(&scenario("upgrade.toml"), 1);
    let (v1, v2) = (&s.updates[0], &s.updates[1]);
    assert_eq!(v2.base.as_deref(), Some("app"));
    // Every client installed version 1, then version 2 once it was out (at 30 min).
    for u in [v1, v2] {
        let all = &u.groups[0];
        assert_eq!((all.members, all.installed), (300, 300), "{u:?}");
    }
    assert!(v2.groups[0].p50_s > Some(1800.0), "{v2:?}");
    assert_eq!(s.not_installed, 0);
    // Version 1 moved whole, once, to each of the 310 nodes below the root.
    assert_eq!((v1.holders, v2.holders), (310, 310));
    assert!(
        (1.0..1.001).contains(&moved_share(v1)),
        "{}",
        moved_share(v1)
    );
    // Version 2 rewrote 5% of the bytes in 50 runs: the chunks no run touched stayed
    // where they were (a run touches one or two of the 256 chunks), the touched ones
    // moved as deltas of their rewritten bytes (whole, they would have been a fifth of
    // the update).
    assert!(
        v2.chunks_moved <= 310 * 100 && v2.chunks_moved >= 310 * 50,
        "{} chunks",
        v2.chunks_moved
    );
    assert!(
        (0.05..0.0505).contains(&moved_share(v2)),
        "{}",
        moved_share(v2)
    );
    assert!(
        s.text().contains("5.00% of a full download"),
        "{}",
        s.text()
    );
}

#[test]
fn a_client_that_comes_after_a_new_version_takes_the_newest_whole() {
    // upgrade.toml, with a tenth of the clients first online after version 2 is out.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations/upgrade.toml");
    let text = std::fs::read_to_string(path).expect("reads")
        + "\n[[churn]]\nkind = \"join\"\ntier = \"client\"\nshare = \"10%\"\nwithin = \"40m..45m\"\n";
    let s = run(&Scenario::parse("late.toml", &text).expect("valid"), 1);
    let (v1, v2) = (&s.updates[0], &s.updates[1]);
    let late = v1.skipped;
    assert!(late > 10 && late < 60, "{v1:?}");
    // The late clients installed version 2 only: version 1 is not missing for them,
    // and their offices are done (once they are).
    assert_eq!(v1.groups[0].installed + late, 300);
    assert_eq!(v2.groups[0].installed, 300);
    assert_eq!(s.not_installed, 0);
    assert!(
        s.sites.iter().all(|site| site.done_s.is_some())
            && s.sites.iter().any(|site| site.done_s > Some(2400.0)),
        "{:?}",
        s.sites
    );
    // Holding no version to draw on, the late ones took version 2 whole; the others,
    // and the branches, took 5% of it.
    let size = 256u64 << 20;
    let expected = (late * size) as f64 + (310 - late) as f64 * size as f64 * 0.05;
    let moved = v2.bytes_moved as f64;
    assert!(
        moved >= expected && moved < expected * 1.001,
        "{moved} bytes for {late} late clients, {expected} expected"
    );
}
