//! The commands that talk to a running node: `token`, `revoke`, `group`, `approve`,
//! `decline`, `approvals`, `status`, `wait`, `check` and `rollback` reach its daemon
//! through its admin API, which they find through the node directory.

use super::print_json;
use crate::admin;
use crate::install::Damage;
use crate::net::Withdrawn;
use crate::net::command::{
    ApprovalList, ApproveRequest, Approved, CheckOutcome, Declined, GroupCreated, GroupDeleted,
    GroupList, GroupRequest, IssuedToken, MembershipChange, NodeStatus, Request, RevokedChild,
    RollbackOutcome, TokenRequest, TreeNode, TreeView, WaitOutcome,
};
use crate::report::State;
use anyhow::{Context, Result, bail};
use indicatif::HumanBytes;
use std::path::Path;
use std::time::Duration;

/// How long a management command waits for the daemon's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks the daemon of node directory `data`, reading its answer as `A`.
fn call<A: serde::de::DeserializeOwned>(data: &Path, req: &Request, wait: Duration) -> Result<A> {
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
    let issued: IssuedToken = call(
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
        return print_json(&issued);
    }
    println!("{}", issued.token);
    eprintln!(
        "one-time join token for {}, valid for {}; on the new node run:\n  arbor init --data DIR --join <token>",
        issued.addr,
        humantime::format_duration(ttl)
    );
    Ok(())
}

pub fn revoke(data: &Path, node: &str, json: bool) -> Result<()> {
    let revoked: RevokedChild = call(data, &Request::Revoke { node: node.into() }, ANSWER_TIMEOUT)?;
    if json {
        return print_json(&revoked);
    }
    println!("revoked {node}: it is disconnected and refused from now on");
    Ok(())
}

pub fn group(data: &Path, req: GroupRequest, json: bool) -> Result<()> {
    let ask = Request::Group(req.clone());
    match req {
        GroupRequest::List => {
            let list: GroupList = call(data, &ask, ANSWER_TIMEOUT)?;
            if json {
                return print_json(&list);
            }
            for g in &list.groups {
                let n = g.members.len();
                println!(
                    "{:<24} {n} member{}{}",
                    g.name,
                    if n == 1 { "" } else { "s" },
                    if g.built_in {
                        " (built in: every child)"
                    } else {
                        ""
                    }
                );
                for m in &g.members {
                    println!("  {m}");
                }
            }
        }
        GroupRequest::Create { name } => {
            let created: GroupCreated = call(data, &ask, ANSWER_TIMEOUT)?;
            if json {
                return print_json(&created);
            }
            println!("created group {name}");
        }
        GroupRequest::Delete { name } => {
            let deleted: GroupDeleted = call(data, &ask, ANSWER_TIMEOUT)?;
            if json {
                return print_json(&deleted);
            }
            println!("deleted group {name}; its members left it");
        }
        GroupRequest::Assign { group, node } | GroupRequest::Unassign { group, node } => {
            let change: MembershipChange = call(data, &ask, ANSWER_TIMEOUT)?;
            if json {
                return print_json(&change);
            }
            match (change.member, change.changed) {
                (true, true) => println!("{node} is now in {group}"),
                (true, false) => println!("{node} already was in {group}"),
                (false, true) => println!("{node} left {group}"),
                (false, false) => println!("{node} was not in {group}"),
            }
        }
    }
    Ok(())
}

pub fn approve(data: &Path, req: ApproveRequest, json: bool) -> Result<()> {
    let a: Approved = call(data, &Request::Approve(req), ANSWER_TIMEOUT)?;
    if json {
        return print_json(&a);
    }
    println!(
        "approved {} for {} ({}% of the group{}{}); rules version {}",
        a.update_id,
        a.group,
        a.wave_percent,
        if a.subtree {
            ", and everything below it"
        } else {
            ""
        },
        a.deadline
            .map(|d| format!(", all of it from {}", show_time(d)))
            .unwrap_or_default(),
        a.rules_version
    );
    Ok(())
}

pub fn decline(data: &Path, update: &str, group: &str, json: bool) -> Result<()> {
    let d: Declined = call(
        data,
        &Request::Decline {
            update: update.into(),
            group: group.into(),
        },
        ANSWER_TIMEOUT,
    )?;
    if json {
        return print_json(&d);
    }
    println!(
        "withdrew the approval of {} for {group}; rules version {}",
        d.update_id, d.rules_version
    );
    Ok(())
}

pub fn approvals(data: &Path, json: bool) -> Result<()> {
    let list: ApprovalList = call(data, &Request::Approvals, ANSWER_TIMEOUT)?;
    if json {
        return print_json(&list);
    }
    let Some(version) = list.rules_version.filter(|_| !list.approvals.is_empty()) else {
        println!("no approvals: no update is available to this node's children");
        return Ok(());
    };
    println!("rules version {version}");
    for a in &list.approvals {
        println!(
            "{} {:<32} group {:<16} wave {}%{}{} reaches {}/{}",
            short(&a.update_id.to_hex()),
            a.module.as_deref().unwrap_or("(manifest not known here)"),
            a.group,
            a.effective_wave_percent,
            if a.subtree { " subtree" } else { "" },
            a.deadline
                .map(|d| format!(" deadline {}", show_time(d)))
                .unwrap_or_default(),
            a.reached,
            a.members,
        );
        if let Some(h) = &a.halted {
            println!("  HALTED at {}: {}", show_time(h.at), h.reason);
        }
    }
    Ok(())
}

/// Unix seconds as RFC 3339, for people.
fn show_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub fn wait(data: &Path, update: &str, limit: Duration, json: bool) -> Result<()> {
    let w: WaitOutcome = call(
        data,
        &Request::Wait {
            update: update.into(),
        },
        limit,
    )?;
    if json {
        print_json(&w)?;
    }
    if !w.complete {
        bail!(
            "update {update} was not complete after {}",
            humantime::format_duration(limit)
        );
    }
    if !json {
        println!("complete: {}", w.update_id);
    }
    Ok(())
}

pub fn status(data: &Path, json: bool) -> Result<()> {
    let v: NodeStatus = call(data, &Request::Status, ANSWER_TIMEOUT)?;
    if json {
        return print_json(&v);
    }
    println!("node     {}", v.node_id);
    if v.root {
        println!("role     root");
    }
    for a in &v.listen {
        println!("listen   {a}");
    }
    println!("admin    {}", v.admin.as_deref().unwrap_or("none"));
    if let Some(p) = &v.parent {
        let state = match (p.connected, p.unresponsive_since) {
            (true, _) => "connected".to_string(),
            (false, Some(since)) => format!("unresponsive since {}", local_time(since)),
            (false, None) => "NOT connected".to_string(),
        };
        println!(
            "parent   {} at {} ({state}), {} received",
            p.node_id,
            p.addr.as_deref().unwrap_or("an unknown address"),
            HumanBytes(p.bytes_received)
        );
        if let Some(note) = &p.clock_note {
            println!(
                "clock    {note}: set it right, or signed rules and certificates will be refused"
            );
        }
    }
    for b in &v.bans {
        println!(
            "banned   {} for {} s more, after {} offences; the last: {}",
            b.node_id, b.seconds_left, b.offences, b.reason
        );
    }
    if let Some(site) = &v.site {
        println!("site     {site}");
    }
    for s in &v.siblings {
        let state = if s.banned {
            "BANNED"
        } else if s.connected {
            "connected"
        } else {
            "offline"
        };
        println!(
            "sibling  {} {:<9} {} received, {} sent",
            s.node_id,
            state,
            HumanBytes(s.bytes_received),
            HumanBytes(s.bytes_sent)
        );
    }
    println!("children {}", v.children.len());
    for c in &v.children {
        let state = match (c.revoked, c.connected) {
            (true, _) => "revoked",
            (false, true) => "connected",
            (false, false) => "offline",
        };
        println!(
            "  {} {:<9} {}{}{} sent",
            c.node_id,
            state,
            if c.client { "client, " } else { "" },
            c.site
                .as_ref()
                .map(|s| format!("site {s}, "))
                .unwrap_or_default(),
            HumanBytes(c.bytes_sent)
        );
    }
    if v.updates.is_empty() {
        println!("updates  none");
    }
    for u in &v.updates {
        println!(
            "update   {} {:<40} {}/{} in {}/s out {}/s",
            short(&u.update_id.to_hex()),
            u.module,
            HumanBytes(u.bytes_held),
            HumanBytes(u.bytes),
            HumanBytes(u.rate_in),
            HumanBytes(u.rate_out),
        );
    }
    for h in &v.halted {
        println!(
            "HALTED   {} for {}: {}",
            short(&h.update_id.to_hex()),
            h.group,
            h.reason
        );
    }
    if let Some(c) = &v.installed {
        let withdrawn = match c.withdrawn {
            Withdrawn::Keep => "keep",
            Withdrawn::Remove => "remove",
        };
        println!(
            "installs into {} (hooks {}, withdrawn modules: {withdrawn})",
            c.install_dir.display(),
            if c.hooks { "on" } else { "off" },
        );
        for m in &c.modules {
            println!(
                "module   {:<40} {}{}{}",
                m.module,
                m.current.as_ref().map_or("-", |c| c.version.as_str()),
                m.previous
                    .as_ref()
                    .map_or(String::new(), |p| format!(" (previous {})", p.version)),
                if m.held.is_some() {
                    ", a rolled-back version is held back"
                } else {
                    ""
                }
            );
        }
    }
    if v.bad_chunks > 0 || v.refused > 0 {
        println!(
            "problems {} bad chunks received, {} peers or requests refused",
            v.bad_chunks, v.refused
        );
    }
    Ok(())
}

/// `arbor check [--repair]`: exits 1 if a damaged file is left unrepaired.
pub fn check(data: &Path, repair: bool, json: bool) -> Result<std::process::ExitCode> {
    let outcome: CheckOutcome = call(data, &Request::Check { repair }, ANSWER_TIMEOUT)?;
    let mut unrepaired = 0;
    for m in &outcome.modules {
        let fine = m.problems.is_empty() && m.error.is_none();
        if !fine && !m.repaired {
            unrepaired += 1;
        }
        if json {
            continue;
        }
        let (name, version) = (&m.module, &m.version);
        if let Some(e) = &m.error {
            println!("{name} {version}: cannot check: {e}");
            continue;
        }
        if fine {
            println!("{name} {version}: ok");
            continue;
        }
        let next = if m.repaired {
            "repaired"
        } else if m.waiting_for_parent {
            "its chunks are being fetched from the parent; the repair completes when they arrive"
        } else {
            "run arbor check --repair to restore it"
        };
        println!("{name} {version}: {} damaged; {next}", m.problems.len());
        for p in &m.problems {
            println!("  {} {}", p.path, damage(&p.damage));
        }
    }
    if json {
        print_json(&outcome)?;
    } else if outcome.modules.is_empty() {
        println!("no modules installed");
    }
    Ok(if unrepaired == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// How a damage reads: "modified", "missing", "mode 600, should be 644".
fn damage(d: &Damage) -> String {
    match d {
        Damage::Missing => "missing".into(),
        Damage::NotRegular => "notregular".into(),
        Damage::Modified => "modified".into(),
        Damage::Mode { expected, found } => format!("mode {found:o}, should be {expected:o}"),
        Damage::Extra => "extra".into(),
    }
}

/// `arbor rollback TENANT/CATEGORY/ID`.
pub fn rollback(data: &Path, module: &str, json: bool) -> Result<()> {
    if module.split('/').count() != 3 {
        bail!("{module:?} is not a module: give TENANT/CATEGORY/ID");
    }
    let r: RollbackOutcome = call(
        data,
        &Request::Rollback {
            module: module.into(),
        },
        ANSWER_TIMEOUT,
    )?;
    if json {
        return print_json(&r);
    }
    println!(
        "{module} is back on {} ({}); {} is held back until a newer version comes",
        r.current.version,
        short(&r.current.update_id.to_hex()),
        r.held.version,
    );
    if let Some(h) = &r.hook {
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
    let v: TreeView = call(data, &Request::Tree, ANSWER_TIMEOUT)?;
    if json {
        return print_json(&v);
    }
    print_node(&v.tree, 0);
    if v.truncated {
        println!("(the subtree is larger than reports carry in detail: some nodes are left out)");
    }
    Ok(())
}

fn print_node(node: &TreeNode, indent: usize) {
    let states: Vec<String> = node
        .updates
        .iter()
        .map(|u| {
            let mut detail = match u.state {
                State::Downloading => {
                    let (done, total) = (u.bytes_done, u.bytes_total.max(1));
                    format!(" {}%", u128::from(done) * 100 / u128::from(total))
                }
                _ => String::new(),
            };
            // Why it failed, or an installer's note ("installed in place of 1.0").
            if let Some(reason) = &u.reason {
                detail.push_str(&format!(" ({reason})"));
            }
            // A failure its node did not sign, or not through this part of the tree:
            // shown, but no halt counts it.
            if u.proven == Some(false) {
                detail.push_str(" [not proven]");
            }
            format!(
                "{} {}{detail}",
                short(&u.update_id.to_hex()),
                u.state.as_str()
            )
        })
        .collect();
    // How old its report is, and why what it shows may no longer hold.
    let mut news = format!(" ({} ago)", ago(node.age_secs));
    if let Some(stale) = &node.stale {
        news.push_str(&format!(" STALE: {stale}"));
    }
    println!(
        "{:indent$}{}  {}{news}",
        "",
        node.node_id,
        if states.is_empty() {
            "no updates".to_string()
        } else {
            states.join(", ")
        },
    );
    for child in &node.children {
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
