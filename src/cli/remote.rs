//! The commands that talk to a running node: `token`, `revoke`, `group`, `approve`,
//! `decline`, `approvals`, `status`, `wait`, `check` and `rollback` reach its daemon
//! through its admin API, which they find through the node directory.

use super::print_json;
use crate::admin;
use crate::net::command::{ApproveRequest, GroupRequest, Request, TokenRequest};
use anyhow::{Context, Result, bail};
use indicatif::HumanBytes;
use std::path::Path;
use std::time::Duration;

/// How long a management command waits for the daemon's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

fn call(data: &Path, req: &Request, wait: Duration) -> Result<serde_json::Value> {
    Ok(admin::call(data, req, wait)?)
}

pub fn token(
    data: &Path,
    groups: Vec<String>,
    client: bool,
    ttl: Duration,
    addr: Option<String>,
    site: Option<String>,
    json: bool,
) -> Result<()> {
    let v = call(
        data,
        &Request::Token(TokenRequest {
            groups,
            client,
            ttl_secs: ttl.as_secs().max(1),
            addr,
            site,
        }),
        ANSWER_TIMEOUT,
    )?;
    if json {
        return print_json(&v);
    }
    let token = v["token"].as_str().context("the daemon sent no token")?;
    println!("{token}");
    eprintln!(
        "one-time join token for {}, valid for {}; on the new node run:\n  arbor init --data DIR --join <token>",
        v["addr"].as_str().unwrap_or("?"),
        humantime::format_duration(ttl)
    );
    Ok(())
}

pub fn revoke(data: &Path, node: &str, json: bool) -> Result<()> {
    let v = call(data, &Request::Revoke { node: node.into() }, ANSWER_TIMEOUT)?;
    if json {
        return print_json(&v);
    }
    println!("revoked {node}: it is disconnected and refused from now on");
    Ok(())
}

pub fn group(data: &Path, req: GroupRequest, json: bool) -> Result<()> {
    let listing = matches!(req, GroupRequest::List);
    let v = call(data, &Request::Group(req.clone()), ANSWER_TIMEOUT)?;
    if json {
        return print_json(&v);
    }
    if listing {
        for g in v["groups"].as_array().cloned().unwrap_or_default() {
            let members = g["members"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<24} {} member{}{}",
                g["name"].as_str().unwrap_or("?"),
                members.len(),
                if members.len() == 1 { "" } else { "s" },
                if g["built_in"].as_bool() == Some(true) {
                    " (built in: every child)"
                } else {
                    ""
                }
            );
            for m in members {
                println!("  {}", m.as_str().unwrap_or("?"));
            }
        }
        return Ok(());
    }
    let changed = v["changed"].as_bool() != Some(false);
    match req {
        GroupRequest::List => {}
        GroupRequest::Create { name } => println!("created group {name}"),
        GroupRequest::Delete { name } => println!("deleted group {name}; its members left it"),
        GroupRequest::Assign { group, node } if changed => println!("{node} is now in {group}"),
        GroupRequest::Assign { group, node } => println!("{node} already was in {group}"),
        GroupRequest::Unassign { group, node } if changed => println!("{node} left {group}"),
        GroupRequest::Unassign { group, node } => println!("{node} was not in {group}"),
    }
    Ok(())
}

pub fn approve(data: &Path, req: ApproveRequest, json: bool) -> Result<()> {
    let v = call(data, &Request::Approve(req), ANSWER_TIMEOUT)?;
    if json {
        return print_json(&v);
    }
    println!(
        "approved {} for {} ({}% of the group{}{}); rules version {}",
        v["update_id"].as_str().unwrap_or("?"),
        v["group"].as_str().unwrap_or("?"),
        v["wave_percent"],
        if v["subtree"].as_bool() == Some(true) {
            ", and everything below it"
        } else {
            ""
        },
        v["deadline"]
            .as_u64()
            .map(|d| format!(", all of it from {}", show_time(d)))
            .unwrap_or_default(),
        v["rules_version"]
    );
    Ok(())
}

pub fn decline(data: &Path, update: &str, group: &str, json: bool) -> Result<()> {
    let v = call(
        data,
        &Request::Decline {
            update: update.into(),
            group: group.into(),
        },
        ANSWER_TIMEOUT,
    )?;
    if json {
        return print_json(&v);
    }
    println!(
        "withdrew the approval of {} for {group}; rules version {}",
        v["update_id"].as_str().unwrap_or("?"),
        v["rules_version"]
    );
    Ok(())
}

pub fn approvals(data: &Path, json: bool) -> Result<()> {
    let v = call(data, &Request::Approvals, ANSWER_TIMEOUT)?;
    if json {
        return print_json(&v);
    }
    let list = v["approvals"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no approvals: no update is available to this node's children");
        return Ok(());
    }
    println!("rules version {}", v["rules_version"]);
    for a in &list {
        let id = a["update_id"].as_str().unwrap_or("?");
        println!(
            "{} {:<32} group {:<16} wave {}%{}{} reaches {}/{}",
            &id[..id.len().min(12)],
            a["module"].as_str().unwrap_or("?"),
            a["group"].as_str().unwrap_or("?"),
            a["effective_wave_percent"],
            if a["subtree"].as_bool() == Some(true) {
                " subtree"
            } else {
                ""
            },
            a["deadline"]
                .as_u64()
                .map(|d| format!(" deadline {}", show_time(d)))
                .unwrap_or_default(),
            a["reached"],
            a["members"],
        );
        if let Some(h) = a["halted"].as_object() {
            println!(
                "  HALTED at {}: {}",
                h["at"].as_u64().map(show_time).unwrap_or_default(),
                h["reason"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// Unix seconds as RFC 3339, for people.
fn show_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub fn wait(data: &Path, update: &str, limit: Duration, json: bool) -> Result<()> {
    let v = call(
        data,
        &Request::Wait {
            update: update.into(),
        },
        limit,
    )?;
    if json {
        print_json(&v)?;
    }
    if v["complete"].as_bool() != Some(true) {
        bail!(
            "update {update} was not complete after {}",
            humantime::format_duration(limit)
        );
    }
    if !json {
        println!("complete: {}", v["update_id"].as_str().unwrap_or(update));
    }
    Ok(())
}

pub fn status(data: &Path, json: bool) -> Result<()> {
    let v = call(data, &Request::Status, ANSWER_TIMEOUT)?;
    if json {
        return print_json(&v);
    }
    println!("node     {}", v["node_id"].as_str().unwrap_or("?"));
    if v["root"].as_bool() == Some(true) {
        println!("role     root");
    }
    if let Some(listen) = v["listen"].as_array() {
        for a in listen {
            println!("listen   {}", a.as_str().unwrap_or("?"));
        }
    }
    println!("admin    {}", v["admin"].as_str().unwrap_or("?"));
    if let Some(p) = v["parent"].as_object() {
        let state = match (p["connected"].as_bool(), p["unresponsive_since"].as_u64()) {
            (Some(true), _) => "connected".to_string(),
            (_, Some(since)) => format!("unresponsive since {}", local_time(since)),
            _ => "NOT connected".to_string(),
        };
        println!(
            "parent   {} at {} ({state}), {} received",
            p["node_id"].as_str().unwrap_or("?"),
            p["addr"].as_str().unwrap_or("?"),
            HumanBytes(p["bytes_received"].as_u64().unwrap_or(0))
        );
        if let Some(note) = p["clock_note"].as_str() {
            println!(
                "clock    {note}: set it right, or signed rules and certificates will be refused"
            );
        }
    }
    for b in v["bans"].as_array().into_iter().flatten() {
        println!(
            "banned   {} for {} s more, after {} offences; the last: {}",
            b["node_id"].as_str().unwrap_or("?"),
            b["seconds_left"].as_u64().unwrap_or(0),
            b["offences"].as_u64().unwrap_or(0),
            b["reason"].as_str().unwrap_or("?")
        );
    }
    if let Some(site) = v["site"].as_str() {
        println!("site     {site}");
    }
    for s in v["siblings"].as_array().into_iter().flatten() {
        let state = if s["banned"].as_bool() == Some(true) {
            "BANNED"
        } else if s["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "offline"
        };
        println!(
            "sibling  {} {:<9} {} received, {} sent",
            s["node_id"].as_str().unwrap_or("?"),
            state,
            HumanBytes(s["bytes_received"].as_u64().unwrap_or(0)),
            HumanBytes(s["bytes_sent"].as_u64().unwrap_or(0))
        );
    }
    let children = v["children"].as_array().cloned().unwrap_or_default();
    println!("children {}", children.len());
    for c in &children {
        let state = match (c["revoked"].as_bool(), c["connected"].as_bool()) {
            (Some(true), _) => "revoked",
            (_, Some(true)) => "connected",
            _ => "offline",
        };
        println!(
            "  {} {:<9} {}{}{} sent",
            c["node_id"].as_str().unwrap_or("?"),
            state,
            if c["client"].as_bool() == Some(true) {
                "client, "
            } else {
                ""
            },
            c["site"]
                .as_str()
                .map(|s| format!("site {s}, "))
                .unwrap_or_default(),
            HumanBytes(c["bytes_sent"].as_u64().unwrap_or(0))
        );
    }
    let updates = v["updates"].as_array().cloned().unwrap_or_default();
    if updates.is_empty() {
        println!("updates  none");
    }
    for u in &updates {
        let id = u["update_id"].as_str().unwrap_or("?");
        println!(
            "update   {} {:<40} {}/{} in {}/s out {}/s",
            &id[..id.len().min(12)],
            u["module"].as_str().unwrap_or("?"),
            HumanBytes(u["bytes_held"].as_u64().unwrap_or(0)),
            HumanBytes(u["bytes"].as_u64().unwrap_or(0)),
            HumanBytes(u["rate_in"].as_u64().unwrap_or(0)),
            HumanBytes(u["rate_out"].as_u64().unwrap_or(0)),
        );
    }
    for h in v["halted"].as_array().into_iter().flatten() {
        let id = h["update_id"].as_str().unwrap_or("?");
        println!(
            "HALTED   {} for {}: {}",
            &id[..id.len().min(12)],
            h["group"].as_str().unwrap_or("?"),
            h["reason"].as_str().unwrap_or("?")
        );
    }
    if let Some(c) = v["installed"].as_object() {
        println!(
            "installs into {} (hooks {}, withdrawn modules: {})",
            c["install_dir"].as_str().unwrap_or("?"),
            if c["hooks"].as_bool() == Some(true) {
                "on"
            } else {
                "off"
            },
            c["withdrawn"].as_str().unwrap_or("?")
        );
        for m in c["modules"].as_array().into_iter().flatten() {
            let version = |k: &str| m[k]["version"].as_str().map(str::to_string);
            println!(
                "module   {:<40} {}{}{}",
                m["module"].as_str().unwrap_or("?"),
                version("current").unwrap_or_else(|| "-".into()),
                version("previous").map_or(String::new(), |p| format!(" (previous {p})")),
                if m["held"].is_string() {
                    ", a rolled-back version is held back"
                } else {
                    ""
                }
            );
        }
    }
    let bad = v["bad_chunks"].as_u64().unwrap_or(0);
    let refused = v["refused"].as_u64().unwrap_or(0);
    if bad > 0 || refused > 0 {
        println!("problems {bad} bad chunks received, {refused} peers or requests refused");
    }
    Ok(())
}

/// `arbor check [--repair]`: exits 1 if a damaged file is left unrepaired.
pub fn check(data: &Path, repair: bool, json: bool) -> Result<std::process::ExitCode> {
    let v = call(data, &Request::Check { repair }, ANSWER_TIMEOUT)?;
    let modules = v["modules"].as_array().cloned().unwrap_or_default();
    let mut unrepaired = 0;
    for m in &modules {
        let problems = m["problems"].as_array().cloned().unwrap_or_default();
        let fine = problems.is_empty() && m["error"].is_null();
        if !fine && m["repaired"].as_bool() != Some(true) {
            unrepaired += 1;
        }
        if json {
            continue;
        }
        let name = m["module"].as_str().unwrap_or("?");
        let version = m["version"].as_str().unwrap_or("?");
        if let Some(e) = m["error"].as_str() {
            println!("{name} {version}: cannot check: {e}");
            continue;
        }
        if fine {
            println!("{name} {version}: ok");
            continue;
        }
        let outcome = if m["repaired"].as_bool() == Some(true) {
            "repaired"
        } else if m["waiting_for_parent"].as_bool() == Some(true) {
            "its chunks are being fetched from the parent; the repair completes when they arrive"
        } else {
            "run arbor check --repair to restore it"
        };
        println!("{name} {version}: {} damaged; {outcome}", problems.len());
        for p in &problems {
            println!(
                "  {} {}",
                p["path"].as_str().unwrap_or("?"),
                damage(&p["damage"])
            );
        }
    }
    if json {
        print_json(&v)?;
    } else if modules.is_empty() {
        println!("no modules installed");
    }
    Ok(if unrepaired == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// How a damage reads: "modified", "missing", "mode 600, should be 644".
fn damage(d: &serde_json::Value) -> String {
    match d {
        serde_json::Value::String(s) => s.to_lowercase(),
        serde_json::Value::Object(o) => match o.get("Mode") {
            Some(m) => format!(
                "mode {:o}, should be {:o}",
                m["found"].as_u64().unwrap_or(0),
                m["expected"].as_u64().unwrap_or(0)
            ),
            None => d.to_string(),
        },
        other => other.to_string(),
    }
}

/// `arbor rollback TENANT/CATEGORY/ID`.
pub fn rollback(data: &Path, module: &str, json: bool) -> Result<()> {
    if module.split('/').count() != 3 {
        bail!("{module:?} is not a module: give TENANT/CATEGORY/ID");
    }
    let v = call(
        data,
        &Request::Rollback {
            module: module.into(),
        },
        ANSWER_TIMEOUT,
    )?;
    if json {
        return print_json(&v);
    }
    println!(
        "{module} is back on {} ({}); {} is held back until a newer version comes",
        v["current"]["version"].as_str().unwrap_or("?"),
        short(v["current"]["update_id"].as_str().unwrap_or("?")),
        v["held"]["version"].as_str().unwrap_or("?"),
    );
    if let Some(h) = v["hook"].as_str() {
        println!("post-install hook: {h}");
    }
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// `arbor status --tree`: the subtree, one node a line, indented by depth, each with
/// its state per update.
pub fn status_tree(data: &Path, json: bool) -> Result<()> {
    let v = call(data, &Request::Tree, ANSWER_TIMEOUT)?;
    if json {
        return print_json(&v);
    }
    print_node(&v["tree"], 0);
    if v["truncated"].as_bool() == Some(true) {
        println!("(the subtree is larger than reports carry in detail: some nodes are left out)");
    }
    Ok(())
}

fn print_node(node: &serde_json::Value, indent: usize) {
    let states: Vec<String> = node["updates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let id = u["update_id"].as_str().unwrap_or("?");
            let state = u["state"].as_str().unwrap_or("?");
            let mut detail = match state {
                "downloading" => {
                    let (done, total) = (
                        u["bytes_done"].as_u64().unwrap_or(0),
                        u["bytes_total"].as_u64().unwrap_or(0).max(1),
                    );
                    format!(" {}%", u128::from(done) * 100 / u128::from(total))
                }
                _ => String::new(),
            };
            // Why it failed, or an installer's note ("installed in place of 1.0").
            if let Some(reason) = u["reason"].as_str() {
                detail.push_str(&format!(" ({reason})"));
            }
            // A failure its node did not sign, or not through this part of the tree:
            // shown, but no halt counts it.
            if u["proven"].as_bool() == Some(false) {
                detail.push_str(" [not proven]");
            }
            format!("{} {state}{detail}", &id[..id.len().min(12)])
        })
        .collect();
    // How old its report is, and why what it shows may no longer hold.
    let mut news = format!(" ({} ago)", ago(node["age_secs"].as_u64().unwrap_or(0)));
    if let Some(stale) = node["stale"].as_str() {
        news.push_str(&format!(" STALE: {stale}"));
    }
    println!(
        "{:indent$}{}  {}{news}",
        "",
        node["node_id"].as_str().unwrap_or("?"),
        if states.is_empty() {
            "no updates".to_string()
        } else {
            states.join(", ")
        },
    );
    for child in node["children"].as_array().into_iter().flatten() {
        print_node(child, indent + 2);
    }
}

/// A number of seconds as people read it: `45s`, `12m 5s`.
fn ago(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Parses `--ttl` values such as `30m`, `2h`, `7d`.
pub fn parse_ttl(s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{s:?} is not a duration (examples: 30m, 2h, 7d)"))?;
    if d.is_zero() {
        bail!("the token lifetime must be more than zero");
    }
    Ok(d)
}

/// Unix seconds as local time, "2026-12-07 14:03:05".
fn local_time(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| format!("{secs} (Unix seconds)"))
}
