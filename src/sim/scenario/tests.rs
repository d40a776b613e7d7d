use super::*;

const GOOD: &str = r#"
name = "t"
until = "1h"

[root]
up = "1Gbit"

[[tier]]
name = "branch"
fanout = 2
down = "100Mbit"
up = "1Gbit"
latency = "20ms"

[[tier]]
name = "client"
fanout = 4
down = "1Gbit"
up = "1Gbit"
latency = "1ms"
site = { size = 2, down = "50Mbit", up = "10Mbit", latency = "10ms" }

[[group]]
name = "pilot"
tier = "client"
share = "25%"

[[update]]
name = "os"
size = "8MiB"

[[approval]]
by = "root"
update = "os"

[[approval]]
by = "branch"
update = "os"
group = "pilot"
"#;

/// The error for `GOOD` with `from` replaced by `to`.
fn error_with(from: &str, to: &str) -> ScenarioError {
    assert!(GOOD.contains(from), "{from:?} is in the base scenario");
    Scenario::parse("t.toml", &GOOD.replacen(from, to, 1)).expect_err("refused")
}

/// `GOOD` with `from` replaced by `to` is refused for what `says`, at the line of the
/// last line of `to`.
fn refused_at_its_line(from: &str, to: &str, says: &str) {
    let e = error_with(from, to);
    assert!(e.message.contains(says), "{to}: {e}");
    let expected = line_of_text(
        &GOOD.replacen(from, to, 1),
        to.lines().last().expect("a line"),
    );
    assert_eq!(e.line, expected, "{to}: {e}");
}

fn line_of_text(text: &str, needle: &str) -> usize {
    1 + text[..text.find(needle).expect("present")]
        .matches('\n')
        .count()
}

#[test]
fn a_good_scenario_parses_into_simulator_units() {
    let sc = Scenario::parse("t.toml", GOOD).expect("valid");
    assert_eq!(sc.until, 3_600_000);
    assert_eq!(sc.root_up, 125_000_000.0);
    assert_eq!(sc.tier_sizes(), vec![2, 8]);
    assert_eq!(sc.node_count(), 11);
    assert_eq!(sc.chunk, 1 << 20);
    assert_eq!(sc.updates[0].size, 8 << 20);
    let site = sc.tiers[1].site.as_ref().expect("a site");
    assert_eq!(site.size, 2);
    assert!(site.siblings);
    assert_eq!(sc.approvals[1].by, Some(0));
    assert_eq!(sc.groups[0].share, 0.25);
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let e = error_with("latency = \"1ms\"", "latency = \"1ms\"\nlatncy = 3");
    assert_eq!(e.line, line_of_text(GOOD, "latency = \"1ms\"") + 1, "{e}");
    assert!(e.message.contains("latncy"), "{e}");
    assert!(e.to_string().starts_with("t.toml:"), "{e}");
}

#[test]
fn impossible_values_are_refused_at_their_line() {
    for (from, to, says) in [
        ("down = \"100Mbit\"", "down = \"-3Mbit\"", "not a rate"),
        ("down = \"100Mbit\"", "down = \"0Mbit\"", "above zero"),
        ("fanout = 2", "fanout = 0", "out of range"),
        ("until = \"1h\"", "until = \"soon\"", "not a duration"),
        ("share = \"25%\"", "share = \"125%\"", "percentage"),
        ("size = \"8MiB\"", "size = \"8 parsecs\"", "not a size"),
        (
            "group = \"pilot\"",
            "group = \"pilot\"\nwave = \"120%\"",
            "wave",
        ),
        (
            "latency = \"20ms\"",
            "latency = \"20ms\"\njitter = \"30ms\"",
            "jitter",
        ),
    ] {
        refused_at_its_line(from, to, says);
    }
}

#[test]
fn an_inconsistent_topology_is_refused_with_the_line_at_fault() {
    // (replace, with, the error says, at the line of)
    for (from, to, says, at) in [
        ("size = 2,", "size = 3,", "does not divide", "size = 3,"),
        (
            "tier = \"client\"",
            "tier = \"desk\"",
            "no tier",
            "tier = \"desk\"",
        ),
        (
            "update = \"os\"\ngroup",
            "update = \"nope\"\ngroup",
            "no [[update]]",
            "\"nope\"",
        ),
        (
            "by = \"branch\"",
            "by = \"client\"",
            "no children",
            "by = \"client\"",
        ),
        // The group is of clients; the root approves for branches.
        (
            "by = \"branch\"",
            "by = \"root\"",
            "only their parents",
            "group = \"pilot\"",
        ),
        (
            "group = \"pilot\"",
            "group = \"ghosts\"",
            "no [[group]]",
            "\"ghosts\"",
        ),
    ] {
        let e = error_with(from, to);
        assert!(e.message.contains(says), "{to}: {e}");
        let text = GOOD.replacen(from, to, 1);
        assert_eq!(e.line, line_of_text(&text, at), "{to}: {e}");
    }
}

#[test]
fn garbage_is_refused_not_panicked_on() {
    for text in [
        "",
        "\u{0}\u{1}",
        "name = 3",
        "[[tier]]\nname = \"x\"",
        "name = \"x\"\nuntil = \"1h\"\n[root]\nup = \"1Gbit\"\n",
    ] {
        assert!(Scenario::parse("g.toml", text).is_err(), "{text:?}");
    }
}

#[test]
fn units_mean_what_people_write() {
    assert_eq!(parse_size("1GiB"), Some(1 << 30));
    assert_eq!(parse_size("500MB"), Some(500_000_000));
    assert_eq!(parse_size("12"), Some(12));
    assert_eq!(parse_size("1.5KiB"), Some(1536));
    assert_eq!(parse_size("GiB"), None);
    assert_eq!(parse_rate("100Mbit"), Some(12_500_000.0));
    assert_eq!(parse_rate("1Gbit/s"), Some(125_000_000.0));
    assert_eq!(parse_rate("8kbit"), Some(1000.0));
    assert_eq!(parse_rate("fast"), None);
}

#[test]
fn engine_tunables_are_read_and_checked() {
    let text = format!(
        "{GOOD}\n[engine]\nspan = 8\nwindow = 4\nfetch_timeout = \"90s\"\n\
         report_interval = \"30s\"\nreport_rate = \"256kbit\"\nannounce_interval = \"100ms\"\n"
    );
    let sc = Scenario::parse("t.toml", &text).expect("valid");
    assert_eq!(sc.engine.span, Some(8));
    assert_eq!(sc.engine.window, Some(4));
    assert_eq!(sc.engine.fetch_timeout, Some(90_000));
    assert_eq!(sc.engine.report_interval, Some(30_000));
    assert_eq!(sc.engine.report_rate, Some(32_000));
    assert_eq!(sc.engine.announce_interval, Some(100));
    for (key, value) in [("announce_interval", "soon"), ("report_rate", "0kbit")] {
        let bad = format!("{GOOD}\n[engine]\n{key} = \"{value}\"\n");
        let err = Scenario::parse("t.toml", &bad).expect_err("refused");
        let line = line_of_text(&bad, key);
        assert!(
            err.to_string().contains(&format!("t.toml:{line}:")) && err.to_string().contains(value),
            "{err}"
        );
    }
}

#[test]
fn approvals_are_batched_by_time_and_issuer_in_file_order() {
    let text = GOOD.replacen(
        "[[approval]]\nby = \"branch\"",
        "[[approval]]\nat = \"10m\"\nby = \"branch\"\nupdate = \"os\"\n\n[[approval]]\nby = \"branch\"",
        1,
    );
    let sc = Scenario::parse("t.toml", &text).expect("valid");
    let batches = sc.rule_batches();
    let shape: Vec<(u64, Option<usize>, Vec<usize>)> = batches
        .into_iter()
        .map(|b| (b.at, b.by, b.approvals))
        .collect();
    assert_eq!(
        shape,
        vec![
            (0, None, vec![0]),
            (600_000, Some(0), vec![1]),
            (0, Some(0), vec![2]),
        ]
    );
}

#[test]
fn limits_windows_and_install_costs_are_read_as_the_daemon_reads_them() {
    let text = GOOD
        .replacen(
            "latency = \"20ms\"",
            "latency = \"20ms\"\nlimits = { max_download = \"40Mbit\", max_upload = \"5MiB/s\", \
             wan_window = [\"19:00-07:00\", \"12:00-13:00\"] }",
            1,
        )
        .replacen(
            "latency = \"10ms\" }",
            "latency = \"10ms\", limits = { max_download = \"20Mbit\", wan_window = [\"22:00-06:00\"] } }",
            1,
        )
        .replacen("size = \"8MiB\"", "size = \"8MiB\"\nfiles = 40", 1)
        + "\nstarts_at = \"18:30\"\n[install]\nrate = \"100MiB/s\"\nper_file = \"2ms\"\n";
    // `starts_at` went under [install]: put it at the top instead.
    let text = text
        .replacen("\nstarts_at = \"18:30\"\n", "\n", 1)
        .replacen("until = \"1h\"", "until = \"1h\"\nstarts_at = \"18:30\"", 1);
    let sc = Scenario::parse("t.toml", &text).expect("valid");
    let branch = &sc.tiers[0].limits;
    assert_eq!(branch.max_download, Some(crate::bandwidth::Rate(5_000_000)));
    assert_eq!(branch.max_upload, Some(crate::bandwidth::Rate(5 << 20)));
    assert_eq!(branch.wan_windows.len(), 2);
    assert!(branch.wan_open(12 * 60 + 30) && !branch.wan_open(9 * 60));
    let site = &sc.tiers[1].site.as_ref().expect("a site").limits;
    assert_eq!(site.max_download, Some(crate::bandwidth::Rate(2_500_000)));
    assert_eq!(sc.starts_at, 18 * 60 + 30);
    assert_eq!(sc.updates[0].files, 40);
    assert_eq!(sc.install.rate, 100.0 * 1024.0 * 1024.0);
    // 8 MiB at 100 MiB/s and 40 files at 2 ms.
    assert_eq!(sc.install.millis(8 << 20, 40), 80 + 80);
    let defaults = Scenario::parse("t.toml", GOOD).expect("valid");
    assert_eq!(defaults.install, InstallCost::MEASURED);
    assert_eq!(defaults.starts_at, 0);
    assert!(defaults.tiers[0].limits.wan_open(0));
    for (from, to, says) in [
        (
            "latency = \"20ms\"",
            "latency = \"20ms\"\nlimits = { max_download = \"fast\" }",
            "max_download",
        ),
        (
            "latency = \"20ms\"",
            "latency = \"20ms\"\nlimits = { wan_window = [\"25:00-07:00\"] }",
            "hours run",
        ),
        (
            "latency = \"10ms\" }",
            "latency = \"10ms\", limits = { max_upload = \"1Mbit\" } }",
            "on its tier",
        ),
        (
            "until = \"1h\"",
            "until = \"1h\"\nstarts_at = \"7pm\"",
            "time of day",
        ),
        (
            "size = \"8MiB\"",
            "size = \"8MiB\"\nfiles = 0",
            "out of range",
        ),
        (
            "until = \"1h\"",
            "until = \"1h\"\n[install]\nrate = \"quick\"",
            "not a rate",
        ),
    ] {
        refused_at_its_line(from, to, says);
    }
}

/// `GOOD` with `extra` lines after its update "os" (8 MiB).
fn with_versions(extra: &str) -> String {
    GOOD.replacen("size = \"8MiB\"\n", &format!("size = \"8MiB\"\n{extra}"), 1)
}

#[test]
fn a_new_version_takes_its_bases_size_and_files_and_says_what_changed() {
    let text = with_versions(
        "\n[[update]]\nname = \"os-2\"\nbase = \"os\"\nchange = \"5%\"\nedits = 16\nat = \"2h\"\n\n[[update]]\nname = \"os-3\"\nbase = \"os-2\"\nchange = \"0%\"\n",
    );
    let sc = Scenario::parse("t.toml", &text).expect("valid");
    let (v2, v3) = (&sc.updates[1], &sc.updates[2]);
    assert_eq!((v2.size, v2.files, v2.at), (8 << 20, 1, 7_200_000));
    let new = v2.version_of.as_ref().expect("a new version");
    assert_eq!((new.base, new.change, new.edits), (0, 0.05, 16));
    let new = v3.version_of.as_ref().expect("a new version");
    assert_eq!((new.base, new.change, new.edits), (1, 0.0, 1));
    assert_eq!(sc.updates[0].version_of, None);
}

#[test]
fn a_new_version_that_cannot_be_is_refused_with_the_line_at_fault() {
    let v = "\n[[update]]\nname = \"os-2\"\n";
    // (lines after "os", the error says, at the line of)
    for (extra, says, at) in [
        (
            format!("{v}base = \"os\"\nchange = \"150%\""),
            "from 0% to 100%",
            "\"150%\"",
        ),
        (
            format!("{v}change = \"5%\"\nbase = \"app\""),
            "base \"app\": no [[update]] of that name",
            "\"app\"",
        ),
        (
            format!("{v}change = \"5%\"\nbase = \"os-2\""),
            "cannot be a new version of itself",
            "base = \"os-2\"",
        ),
        (
            format!(
                "{v}change = \"5%\"\nbase = \"os-3\"\n[[update]]\nname = \"os-3\"\nchange = \"5%\"\nbase = \"os-2\""
            ),
            "listed after \"os-2\"",
            "base = \"os-3\"",
        ),
        (
            format!("{v}change = \"5%\""),
            "name the version it replaces with `base`",
            "\"5%\"",
        ),
        (
            format!("{v}edits = 3"),
            "name the version it replaces with `base`",
            "edits = 3",
        ),
        (
            format!("{v}base = \"os\""),
            "needs `change`",
            "base = \"os\"",
        ),
        (
            format!("{v}base = \"os\"\nchange = \"5%\"\nsize = \"1GiB\""),
            "leave `size` and `files` out",
            "\"1GiB\"",
        ),
        (
            format!(
                "{v}base = \"os\"\nchange = \"5%\"\n[[update]]\nname = \"os-2b\"\nchange = \"5%\"\nbase = \"os\""
            ),
            "already replaced by \"os-2\"",
            "base = \"os\"",
        ),
        (
            format!("{v}base = \"os\"\nchange = \"0.001%\"\nedits = 100"),
            "at most one edit per changed byte",
            "edits = 100",
        ),
        (
            format!("{v}base = \"os\"\nchange = \"1%\"\nedits = 0"),
            "out of range",
            "edits = 0",
        ),
    ] {
        let text = with_versions(&extra);
        let e = Scenario::parse("t.toml", &text).expect_err("refused");
        assert!(e.message.contains(says), "{extra}: {e}");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
        // The line of the last occurrence of `at` (the base's own lines come first).
        let line = 1 + text[..text.rfind(at).expect("present")]
            .matches('\n')
            .count();
        assert_eq!(e.line, line, "{extra}: {e}");
    }
}
