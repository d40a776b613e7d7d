//! What a simulation found: the counts kept while it runs ([`Tally`]), the
//! [`Summary`] made of them at the end, and its three renderings: the text on stdout,
//! `summary.json`, and in `--out` a `timeline.csv` and a `rollout.svg` chart.

use super::scenario::Scenario;
use crate::engine::Millis;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Things that went wrong, or away, during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub install_failures: u64,
    pub halts: u64,
    pub fetch_timeouts: u64,
    pub bad_chunks: u64,
    pub redirects: u64,
    pub siblings_banned: u64,
    pub misbehaved: u64,
    pub rules_refused: u64,
    /// Rule sets an admin could not set because their node was down.
    pub rules_missed: u64,
    pub crashes: u64,
    pub leaves: u64,
}

impl Counters {
    /// Adds the counts of `other` (another lane's).
    fn add(&mut self, other: &Counters) {
        // Taken apart whole, so that a new counter cannot be left out.
        let Counters {
            install_failures,
            halts,
            fetch_timeouts,
            bad_chunks,
            redirects,
            siblings_banned,
            misbehaved,
            rules_refused,
            rules_missed,
            crashes,
            leaves,
        } = other;
        self.install_failures += install_failures;
        self.halts += halts;
        self.fetch_timeouts += fetch_timeouts;
        self.bad_chunks += bad_chunks;
        self.redirects += redirects;
        self.siblings_banned += siblings_banned;
        self.misbehaved += misbehaved;
        self.rules_refused += rules_refused;
        self.rules_missed += rules_missed;
        self.crashes += crashes;
        self.leaves += leaves;
    }
}

/// One row of the timeline: the counts so far at one time.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    at: Millis,
    /// Installs so far, per summary group (all leaves first).
    installed: Vec<u64>,
    failed: u64,
    /// Bytes received so far per tier (from parents and siblings together).
    tier_bytes: Vec<u64>,
    root_egress: u64,
    site_wan: u64,
}

impl Row {
    /// Nothing counted yet, at `at`.
    pub fn empty(at: Millis) -> Row {
        Row {
            at,
            installed: Vec::new(),
            failed: 0,
            tier_bytes: Vec::new(),
            root_egress: 0,
            site_wan: 0,
        }
    }

    /// Adds the counts of `other` (another lane's, at the same time).
    pub fn add(&mut self, other: &Row) {
        add_each(&mut self.installed, &other.installed);
        add_each(&mut self.tier_bytes, &other.tier_bytes);
        self.failed += other.failed;
        self.root_egress += other.root_egress;
        self.site_wan += other.site_wan;
    }

    /// Installs so far across all leaves.
    pub fn installed_of_all(&self) -> u64 {
        self.installed.first().copied().unwrap_or(0)
    }
}

/// Adds `b` to `a` element by element, `a` growing to `b`'s length.
fn add_each(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// What one site received and installed.
#[derive(Clone, Copy, Debug, Default)]
struct SiteCount {
    /// Bytes on the wire into the site from outside it.
    bytes_in: u64,
    /// Leaf installs in it, and when the last was.
    installs: u64,
    last_install: Millis,
    /// Versions its leaves skipped for a newer one of the module (leaf × update).
    skipped: u64,
}

/// One rule batch's spread through the tree.
#[derive(Clone, Debug, Default)]
struct RuleSpread {
    issued_at: Option<Millis>,
    issuers: u64,
    /// When each receiving node stored it.
    arrived: Vec<Millis>,
}

/// Counts kept while the simulation runs.
#[derive(Clone, Debug)]
pub struct Tally {
    tiers: Vec<String>,
    tier_nodes: Vec<u64>,
    /// Summary groups: "all" (every leaf) then the scenario's groups.
    groups: Vec<String>,
    pub counters: Counters,
    from_parent: Vec<u64>,
    from_siblings: Vec<u64>,
    pub root_egress: u64,
    pub site_wan: u64,
    /// Install times per update per group.
    installs: Vec<Vec<Vec<Millis>>>,
    /// Per update: chunks received for it and their bytes (the payload: a delta's, for
    /// a chunk sent as one), the nodes below the root that hold it whole at the end,
    /// and the leaves that skipped it for a newer version of its module.
    update_chunks: Vec<u64>,
    update_bytes: Vec<u64>,
    holders: Vec<u64>,
    skipped: Vec<u64>,
    installed_now: Vec<u64>,
    /// The last successful leaf install.
    last_install: Option<Millis>,
    /// By the fleet's report sites; grows as sites are first counted.
    sites: Vec<SiteCount>,
    rules: Vec<RuleSpread>,
    rows: Vec<Row>,
    peaks: Vec<(String, f64)>,
    pub never_online: u64,
    pub ended: Millis,
    pub last_change: Millis,
}

impl Tally {
    /// Counts for scenario `sc` with its nodes numbered from `tier_start` and `batches`
    /// rule batches.
    pub fn new(sc: &Scenario, tier_start: &[u32], batches: usize) -> Tally {
        let groups: Vec<String> = std::iter::once(crate::rules::ALL.to_string())
            .chain(sc.groups.iter().map(|g| g.name.clone()))
            .collect();
        let n = sc.tiers.len();
        Tally {
            tiers: sc.tiers.iter().map(|t| t.name.clone()).collect(),
            tier_nodes: tier_start
                .windows(2)
                .map(|w| u64::from(w[1] - w[0]))
                .collect(),
            installs: vec![vec![Vec::new(); groups.len()]; sc.updates.len()],
            update_chunks: vec![0; sc.updates.len()],
            update_bytes: vec![0; sc.updates.len()],
            holders: vec![0; sc.updates.len()],
            skipped: vec![0; sc.updates.len()],
            installed_now: vec![0; groups.len()],
            last_install: None,
            sites: Vec::new(),
            groups,
            counters: Counters::default(),
            from_parent: vec![0; n],
            from_siblings: vec![0; n],
            root_egress: 0,
            site_wan: 0,
            rules: vec![RuleSpread::default(); batches],
            rows: Vec::new(),
            peaks: Vec::new(),
            never_online: 0,
            ended: 0,
            last_change: 0,
        }
    }

    pub fn received(&mut self, tier: usize, sibling: bool, bytes: u64) {
        if sibling {
            self.from_siblings[tier] += bytes;
        } else {
            self.from_parent[tier] += bytes;
        }
    }

    /// `chunks` chunks of update `u` arrived, in `bytes`.
    pub fn received_for(&mut self, u: usize, chunks: u64, bytes: u64) {
        self.update_chunks[u] += chunks;
        self.update_bytes[u] += bytes;
    }

    /// A node holds update `u` whole at the end.
    pub fn held(&mut self, u: usize) {
        self.holders[u] += 1;
    }

    /// A leaf (counted in `site`) never installed update `u`: it installed a newer
    /// version of the module.
    pub fn skipped(&mut self, u: usize, site: Option<u32>) {
        self.skipped[u] += 1;
        if let Some(s) = site {
            self.site(s).skipped += 1;
        }
    }

    fn site(&mut self, s: u32) -> &mut SiteCount {
        let s = s as usize;
        if self.sites.len() <= s {
            self.sites.resize(s + 1, SiteCount::default());
        }
        &mut self.sites[s]
    }

    /// `wire` bytes arrived from outside into site `s`.
    pub fn site_received(&mut self, s: u32, wire: u64) {
        self.site(s).bytes_in += wire;
    }

    /// A leaf installed update `u`; `groups` marks the summary groups it is in, `site`
    /// the site it is counted in.
    pub fn installed(&mut self, u: usize, groups: &[bool], site: Option<u32>, at: Millis) {
        for (g, member) in groups.iter().enumerate() {
            if *member {
                self.installs[u][g].push(at);
                self.installed_now[g] += 1;
            }
        }
        self.last_install = Some(self.last_install.map_or(at, |l| l.max(at)));
        if let Some(s) = site {
            let site = self.site(s);
            site.installs += 1;
            site.last_install = site.last_install.max(at);
        }
    }

    pub fn rules_issued(&mut self, batch: usize, at: Millis) {
        let r = &mut self.rules[batch];
        r.issued_at.get_or_insert(at);
        r.issuers += 1;
    }

    pub fn rules_arrived(&mut self, batch: usize, at: Millis) {
        self.rules[batch].arrived.push(at);
    }

    /// The busiest second of one link, by its class ("branch down", "root up").
    pub fn note_peak(&mut self, class: String, peak: f64) {
        match self.peaks.iter_mut().find(|(c, _)| *c == class) {
            Some((_, p)) => *p = p.max(peak),
            None => self.peaks.push((class, peak)),
        }
    }

    /// The counts so far, as a timeline row at `at`.
    pub fn row(&self, at: Millis) -> Row {
        Row {
            at,
            installed: self.installed_now.clone(),
            failed: self.counters.install_failures,
            tier_bytes: self
                .from_parent
                .iter()
                .zip(&self.from_siblings)
                .map(|(p, s)| p + s)
                .collect(),
            root_egress: self.root_egress,
            site_wan: self.site_wan,
        }
    }

    /// Adds a timeline row at `at` (`last`: the end of the run, even if a row was
    /// taken at that time).
    pub fn record(&mut self, at: Millis, last: bool) {
        if last && self.rows.last().is_some_and(|r| r.at == at) {
            self.rows.pop();
        }
        self.rows.push(self.row(at));
    }

    /// Sets the timeline (taken across lanes while they ran).
    pub fn set_rows(&mut self, rows: Vec<Row>) {
        self.rows = rows;
    }

    /// Adds the counts of `other`, another lane's share of the same fleet. Timeline
    /// rows, link peaks and the end of the run are not lanes' to keep.
    pub fn absorb(&mut self, other: Tally) {
        self.counters.add(&other.counters);
        add_each(&mut self.from_parent, &other.from_parent);
        add_each(&mut self.from_siblings, &other.from_siblings);
        self.root_egress += other.root_egress;
        self.site_wan += other.site_wan;
        for (mine, theirs) in self.installs.iter_mut().zip(other.installs) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                m.extend(t);
            }
        }
        add_each(&mut self.installed_now, &other.installed_now);
        add_each(&mut self.update_chunks, &other.update_chunks);
        add_each(&mut self.update_bytes, &other.update_bytes);
        add_each(&mut self.holders, &other.holders);
        add_each(&mut self.skipped, &other.skipped);
        self.last_install = self.last_install.max(other.last_install);
        for (s, theirs) in other.sites.iter().enumerate() {
            let mine = self.site(s as u32);
            mine.bytes_in += theirs.bytes_in;
            mine.installs += theirs.installs;
            mine.last_install = mine.last_install.max(theirs.last_install);
            mine.skipped += theirs.skipped;
        }
        for (mine, theirs) in self.rules.iter_mut().zip(other.rules) {
            mine.issued_at = match (mine.issued_at, theirs.issued_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            mine.issuers += theirs.issuers;
            mine.arrived.extend(theirs.arrived);
        }
        self.never_online += other.never_online;
        self.last_change = self.last_change.max(other.last_change);
    }
}

/// Time to reach a share of a group.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupResult {
    pub group: String,
    pub members: u64,
    pub installed: u64,
    /// Seconds from the start to 50%, 90%, 99% and 100% of members installed; `None`
    /// where that share was never reached.
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub p100_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpdateResult {
    pub update: String,
    pub bytes: u64,
    /// For a new version of a module: the version it replaces, and the share of its
    /// bytes that changed.
    pub base: Option<String>,
    pub change: Option<f64>,
    /// Chunks every node received for it, and their bytes (a delta's for a chunk sent
    /// as one); and the nodes below the root that hold it whole at the end: a full
    /// download each would have been `bytes × holders`.
    pub chunks_moved: u64,
    pub bytes_moved: u64,
    pub holders: u64,
    /// Leaves that never installed it because they installed a newer version.
    pub skipped: u64,
    pub groups: Vec<GroupResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TierResult {
    pub tier: String,
    pub nodes: u64,
    pub bytes_from_parents: u64,
    pub bytes_from_siblings: u64,
}

/// What one site received, and when it was done.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteResult {
    pub site: String,
    pub leaves: u64,
    /// Leaf installs in it (leaf × update).
    pub installed: u64,
    /// Bytes on the wire into the site from outside it (chunks and control, with their
    /// framing).
    pub bytes_in: u64,
    /// When its last leaf installed the last update; `None` if some never did.
    pub done_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleResult {
    pub at_s: f64,
    pub by: String,
    pub what: String,
    pub issuers: u64,
    /// Nodes that stored the rule sets, and how long after they were set.
    pub reached: u64,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub max_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkPeak {
    pub link: String,
    /// The busiest one-second window of the busiest link of the class, 0 to 1.
    pub peak: f64,
}

/// What a run found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub nodes: u64,
    pub leaves: u64,
    /// When the last thing changed (an install, a chunk, a rule set), in seconds.
    pub settled_s: f64,
    /// The virtual time the run stopped at, in seconds.
    pub simulated_s: f64,
    pub updates: Vec<UpdateResult>,
    pub tiers: Vec<TierResult>,
    pub root_egress: u64,
    pub site_wan: u64,
    /// Each site's bytes and completion: the sites a scenario declares, else the nodes
    /// above the leaves with their leaves.
    pub sites: Vec<SiteResult>,
    pub peak_utilisation: Vec<LinkPeak>,
    pub rules: Vec<RuleResult>,
    pub failures: Counters,
    /// When the last successful leaf install happened, in seconds.
    pub last_install_s: Option<f64>,
    pub never_online: u64,
    /// Leaf installs that did not happen by the end (leaf × update).
    pub not_installed: u64,
}

/// Most sites the printed summary lists one by one.
const SITES_SHOWN: usize = 20;

fn secs(ms: Millis) -> f64 {
    ms as f64 / 1000.0
}

/// The time by which `share` of `members` had an entry in `times` (sorted).
fn time_to(times: &[Millis], members: u64, share: f64) -> Option<f64> {
    let need = ((members as f64 * share).ceil() as u64).max(1);
    (times.len() as u64 >= need).then(|| secs(times[need as usize - 1]))
}

fn quantile(sorted: &[Millis], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(secs(sorted[i]))
}

impl Summary {
    /// Builds the summary; `members` is the size of each summary group, `sites` the
    /// names of the sites reported on and the leaves in each.
    pub fn new(
        sc: &Scenario,
        seed: u64,
        tally: &Tally,
        members: &[u64],
        sites: &(Vec<String>, u64),
        nodes: u64,
    ) -> Summary {
        let leaves = *tally.tier_nodes.last().unwrap_or(&0);
        let mut not_installed = 0;
        let updates = sc
            .updates
            .iter()
            .enumerate()
            .map(|(u, up)| {
                not_installed +=
                    leaves.saturating_sub(tally.installs[u][0].len() as u64 + tally.skipped[u]);
                let groups = tally
                    .groups
                    .iter()
                    .enumerate()
                    .map(|(g, name)| {
                        let mut times = tally.installs[u][g].clone();
                        times.sort_unstable();
                        let m = members[g];
                        GroupResult {
                            group: name.clone(),
                            members: m,
                            installed: times.len() as u64,
                            p50_s: time_to(&times, m, 0.5),
                            p90_s: time_to(&times, m, 0.9),
                            p99_s: time_to(&times, m, 0.99),
                            p100_s: time_to(&times, m, 1.0),
                        }
                    })
                    .collect();
                UpdateResult {
                    update: up.name.clone(),
                    bytes: up.size,
                    base: up
                        .version_of
                        .as_ref()
                        .map(|v| sc.updates[v.base].name.clone()),
                    change: up.version_of.as_ref().map(|v| v.change),
                    chunks_moved: tally.update_chunks[u],
                    bytes_moved: tally.update_bytes[u],
                    holders: tally.holders[u],
                    skipped: tally.skipped[u],
                    groups,
                }
            })
            .collect();
        let tiers = tally
            .tiers
            .iter()
            .enumerate()
            .map(|(t, name)| TierResult {
                tier: name.clone(),
                nodes: tally.tier_nodes[t],
                bytes_from_parents: tally.from_parent[t],
                bytes_from_siblings: tally.from_siblings[t],
            })
            .collect();
        let describe = |a: &super::scenario::Approval| {
            format!(
                "{} for {} at {}%{}",
                sc.updates[a.update].name,
                a.group,
                f64::from(a.wave) / 100.0,
                a.deadline.map_or(String::new(), |d| format!(
                    ", deadline {}",
                    humantime::format_duration(std::time::Duration::from_millis(d))
                ))
            )
        };
        let rules = sc
            .rule_batches()
            .iter()
            .zip(&tally.rules)
            .map(|(batch, spread)| {
                // How long after the batch was set each receiving node stored it.
                let mut d: Vec<Millis> = spread
                    .issued_at
                    .map(|set| {
                        spread
                            .arrived
                            .iter()
                            .map(|a| a.saturating_sub(set))
                            .collect()
                    })
                    .unwrap_or_default();
                d.sort_unstable();
                let what: Vec<String> = batch
                    .approvals
                    .iter()
                    .map(|&a| describe(&sc.approvals[a]))
                    .collect();
                RuleResult {
                    at_s: secs(batch.at),
                    by: batch
                        .by
                        .map_or("root".to_string(), |t| sc.tiers[t].name.clone()),
                    what: what.join("; "),
                    issuers: spread.issuers,
                    reached: d.len() as u64,
                    p50_s: quantile(&d, 0.5),
                    p99_s: quantile(&d, 0.99),
                    max_s: d.last().map(|m| secs(*m)),
                }
            })
            .collect();
        let (site_names, site_leaves) = sites;
        let wanted = site_leaves * sc.updates.len() as u64;
        let sites = site_names
            .iter()
            .enumerate()
            .map(|(s, name)| {
                let count = tally.sites.get(s).copied().unwrap_or_default();
                SiteResult {
                    site: name.clone(),
                    leaves: *site_leaves,
                    installed: count.installs,
                    bytes_in: count.bytes_in,
                    done_s: (count.installs + count.skipped >= wanted)
                        .then(|| secs(count.last_install)),
                }
            })
            .collect();
        Summary {
            scenario: sc.name.clone(),
            seed,
            nodes,
            leaves,
            settled_s: secs(tally.last_change),
            simulated_s: secs(tally.ended),
            updates,
            tiers,
            root_egress: tally.root_egress,
            site_wan: tally.site_wan,
            sites,
            peak_utilisation: tally
                .peaks
                .iter()
                .map(|(link, peak)| LinkPeak {
                    link: link.clone(),
                    peak: (peak * 1000.0).round() / 1000.0,
                })
                .collect(),
            rules,
            failures: tally.counters.clone(),
            last_install_s: tally.last_install.map(secs),
            never_online: tally.never_online,
            not_installed,
        }
    }

    /// The summary for people, as printed on stdout.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} nodes, {} leaves, seed {}; settled at {}, stopped at {} of virtual time",
            self.scenario,
            self.nodes,
            self.leaves,
            self.seed,
            clock(Some(self.settled_s)),
            clock(Some(self.simulated_s)),
        );
        for u in &self.updates {
            let _ = writeln!(s, "\nInstalled: {} ({})", u.update, bytes(u.bytes));
            if let (Some(base), Some(change)) = (&u.base, u.change) {
                let full = u.bytes.saturating_mul(u.holders).max(1);
                let _ = writeln!(
                    s,
                    "  a new version of {base} with {:.1}% changed: moved {} in {} chunks to the {} nodes that hold it, {:.2}% of a full download",
                    change * 100.0,
                    bytes(u.bytes_moved),
                    u.chunks_moved,
                    u.holders,
                    u.bytes_moved as f64 * 100.0 / full as f64,
                );
            }
            if u.skipped > 0 {
                let _ = writeln!(
                    s,
                    "  {} leaves installed a newer version instead",
                    u.skipped
                );
            }
            let _ = writeln!(
                s,
                "  {:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
                "group", "members", "installed", "50%", "90%", "99%", "100%"
            );
            for g in &u.groups {
                let _ = writeln!(
                    s,
                    "  {:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
                    g.group,
                    g.members,
                    g.installed,
                    clock(g.p50_s),
                    clock(g.p90_s),
                    clock(g.p99_s),
                    clock(g.p100_s)
                );
            }
        }
        let _ = writeln!(s, "\nBytes received, by tier");
        let _ = writeln!(
            s,
            "  {:<16} {:>9} {:>14} {:>14} {:>12}",
            "tier", "nodes", "from parents", "from siblings", "per node"
        );
        for t in &self.tiers {
            let total = t.bytes_from_parents + t.bytes_from_siblings;
            let _ = writeln!(
                s,
                "  {:<16} {:>9} {:>14} {:>14} {:>12}",
                t.tier,
                t.nodes,
                bytes(t.bytes_from_parents),
                bytes(t.bytes_from_siblings),
                bytes(total / t.nodes.max(1))
            );
        }
        let _ = writeln!(s, "  root egress: {}", bytes(self.root_egress));
        if self.site_wan > 0 {
            let _ = writeln!(s, "  across site WAN links: {}", bytes(self.site_wan));
        }
        self.sites_text(&mut s);
        let _ = writeln!(
            s,
            "\nPeak link utilisation (busiest second of the busiest link)"
        );
        for p in &self.peak_utilisation {
            let _ = writeln!(s, "  {:<24} {:>5.1}%", p.link, p.peak * 100.0);
        }
        let _ = writeln!(s, "\nRule propagation (from set to stored, per node)");
        for r in &self.rules {
            let _ = writeln!(
                s,
                "  at {} by {} ({} issuers): {}\n    reached {} nodes: median {}, 99% {}, last {}",
                clock(Some(r.at_s)),
                r.by,
                r.issuers,
                r.what,
                r.reached,
                span(r.p50_s),
                span(r.p99_s),
                span(r.max_s)
            );
        }
        let f = &self.failures;
        let _ = writeln!(s, "\nFailures and churn");
        let _ = writeln!(
            s,
            "  install failures {} (the last successful install at {}), halts {}, fetch timeouts {}, bad chunks {}, rules refused {}, misbehaving peers {}",
            f.install_failures,
            clock(self.last_install_s),
            f.halts,
            f.fetch_timeouts,
            f.bad_chunks,
            f.rules_refused,
            f.misbehaved
        );
        let _ = writeln!(
            s,
            "  crashes {}, leaves {}, never online {}, rule sets not set (admin's node down) {}",
            f.crashes, f.leaves, self.never_online, f.rules_missed
        );
        let _ = writeln!(
            s,
            "  leaf installs missing at the end: {}",
            self.not_installed
        );
        s
    }

    /// The per-site table: every site, or the slowest [`SITES_SHOWN`] of a fleet of
    /// more (all of them are in `summary.json`).
    fn sites_text(&self, s: &mut String) {
        if self.sites.is_empty() {
            return;
        }
        let mut shown: Vec<&SiteResult> = self.sites.iter().collect();
        if shown.len() > SITES_SHOWN {
            // Never done first, then the latest.
            shown.sort_by(|a, b| {
                let key = |r: &SiteResult| r.done_s.unwrap_or(f64::INFINITY);
                key(b).total_cmp(&key(a))
            });
            shown.truncate(SITES_SHOWN);
            let _ = writeln!(
                s,
                "\nSites: the {SITES_SHOWN} slowest of {} (all in summary.json)",
                self.sites.len()
            );
        } else {
            let _ = writeln!(s, "\nSites");
        }
        let _ = writeln!(
            s,
            "  {:<24} {:>7} {:>9} {:>14} {:>10}",
            "site", "leaves", "installed", "bytes in", "done"
        );
        for r in shown {
            let _ = writeln!(
                s,
                "  {:<24} {:>7} {:>9} {:>14} {:>10}",
                r.site,
                r.leaves,
                r.installed,
                bytes(r.bytes_in),
                clock(r.done_s)
            );
        }
    }

    /// Writes `summary.json`, `timeline.csv` and `rollout.svg` into `dir`.
    pub fn write(&self, tally: &Tally, dir: &Path) -> Result<(), OutputError> {
        std::fs::create_dir_all(dir).map_err(|e| OutputError::io(dir, e))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| OutputError::Json(e.to_string()))?;
        let path = dir.join("summary.json");
        std::fs::write(&path, json).map_err(|e| OutputError::io(&path, e))?;
        let path = dir.join("timeline.csv");
        std::fs::write(&path, timeline_csv(tally)).map_err(|e| OutputError::io(&path, e))?;
        let path = dir.join("rollout.svg");
        super::chart::draw(&path, &self.scenario, tally.chart_series(), self.leaves)
            .map_err(|e| OutputError::Chart(e.to_string()))?;
        Ok(())
    }
}

impl Tally {
    /// For the chart: each summary group's name, size-independent, as (seconds,
    /// installs so far) points.
    pub fn chart_series(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        self.groups
            .iter()
            .enumerate()
            .map(|(g, name)| {
                let points = self
                    .rows
                    .iter()
                    .map(|r| (secs(r.at), r.installed[g] as f64))
                    .collect();
                (name.clone(), points)
            })
            .collect()
    }
}

fn timeline_csv(tally: &Tally) -> String {
    let mut s = String::from("time_s");
    for g in &tally.groups {
        let _ = write!(s, ",installed_{g}");
    }
    s.push_str(",install_failures");
    for t in &tally.tiers {
        let _ = write!(s, ",bytes_{t}");
    }
    s.push_str(",root_egress,site_wan\n");
    for r in &tally.rows {
        let _ = write!(s, "{}", secs(r.at));
        for i in &r.installed {
            let _ = write!(s, ",{i}");
        }
        let _ = write!(s, ",{}", r.failed);
        for b in &r.tier_bytes {
            let _ = write!(s, ",{b}");
        }
        let _ = writeln!(s, ",{},{}", r.root_egress, r.site_wan);
    }
    s
}

/// Output that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the summary: {0}")]
    Json(String),
    #[error("cannot draw the chart: {0}")]
    Chart(String),
}

impl OutputError {
    fn io(path: &Path, source: std::io::Error) -> OutputError {
        OutputError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// "1h 02m 03s", "4m 05.2s", "12.3s", "—" for never.
fn clock(s: Option<f64>) -> String {
    let Some(s) = s else {
        return "never".into();
    };
    let whole = s as u64;
    if whole >= 3600 {
        format!(
            "{}h {:02}m {:02}s",
            whole / 3600,
            whole / 60 % 60,
            whole % 60
        )
    } else if whole >= 60 {
        format!("{}m {:04.1}s", whole / 60, s - (whole / 60 * 60) as f64)
    } else {
        format!("{s:.1}s")
    }
}

fn span(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) => clock(Some(s)),
    }
}

/// "1.00 GiB", "512.0 MiB", "12 B".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}
