//! Scenario files: the TOML a planner writes, parsed and checked into a [`Scenario`].
//!
//! Owns the file format (documented in simulations/README.md), its units (durations,
//! sizes, bit rates, percentages) and every check on it. Each error names the line it
//! is about: an unknown key, a value that cannot be (a negative rate, a wave over
//! 100%), or a topology that does not hold together (a group of a tier that does not
//! exist, an approval by a tier that is not the group's parents).

mod install;
mod limits;
mod updates;

pub use install::InstallCost;
pub use updates::NewVersion;

use crate::net::BandwidthOptions;
use crate::rules::{FULL_WAVE, parse_wave};
use install::RawInstall;
use limits::RawLimits;
use serde::Deserialize;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;
use updates::RawUpdate;

/// Most nodes a scenario may describe.
pub const MAX_NODES: u64 = 10_000_000;
/// Most tiers below the root (the certificate path limits depth).
pub const MAX_TIERS: usize = 16;
/// Smallest and largest chunk size the simulator models.
pub const MIN_CHUNK: u64 = 64 * 1024;
pub const MAX_CHUNK: u64 = crate::content::manifest::MAX_CHUNK_LEN as u64;
/// Most chunks one update may have in a simulation.
pub const MAX_UPDATE_CHUNKS: u64 = 1 << 20;
/// Most siblings one site may hold (the engine's limit).
pub const MAX_SITE: u32 = crate::engine::MAX_SIBLINGS as u32 + 1;

/// A scenario file that cannot be run, and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct ScenarioError {
    pub file: String,
    /// 1-based; 0 when the error is about the file as a whole.
    pub line: usize,
    pub message: String,
}

/// A checked scenario, in the simulator's units: bytes, bytes per second, milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    /// The local time of day the run starts at, in minutes past midnight: where the
    /// WAN windows fall.
    pub starts_at: u16,
    /// The run stops at this virtual time whatever is left to do.
    pub until: u64,
    /// How often the timeline is sampled.
    pub sample: u64,
    pub chunk: u32,
    /// The root's sending rate.
    pub root_up: f64,
    pub tiers: Vec<Tier>,
    pub groups: Vec<Group>,
    pub updates: Vec<Update>,
    pub approvals: Vec<Approval>,
    pub churn: Vec<Churn>,
    pub engine: EngineTuning,
    pub install: InstallCost,
}

/// One level of the tree below the root.
#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub name: String,
    /// Children per node of the tier above.
    pub fanout: u32,
    /// What each node receives with (its link from its parent), and sends with (to its
    /// children and siblings), in bytes per second.
    pub down: f64,
    pub up: f64,
    /// One-way latency to its parent, and the spread around it (uniform, per node).
    pub latency: u64,
    pub jitter: u64,
    /// Each node's rates vary by up to this fraction around the tier's.
    pub spread: f64,
    pub site: Option<Site>,
    /// What each node's operator set (`arbor run --max-download ...`).
    pub limits: BandwidthOptions,
}

/// The nodes of one tier under one parent, grouped into sites of `size`.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    pub size: u32,
    /// The site's shared link to the outside (its WAN), if it has one of its own.
    pub link: Option<SiteLink>,
    /// Whether the parent declares the site to the engine (sibling fetch on).
    pub siblings: bool,
    /// A download limit for all its members together, and WAN windows they keep
    /// (instead of their tier's).
    pub limits: BandwidthOptions,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SiteLink {
    pub down: f64,
    pub up: f64,
    pub latency: u64,
}

/// A named group of a tier's nodes, drawn per parent.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub name: String,
    /// Index into [`Scenario::tiers`].
    pub tier: usize,
    pub share: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub name: String,
    pub size: u64,
    /// The files it holds, of equal size.
    pub files: u32,
    /// When the root publishes it.
    pub at: u64,
    /// The share of installs that fail.
    pub fail: f64,
    /// The version of a module it replaces, and what changed since; `None` for a
    /// module's first version (each update without `base` is a module of its own).
    pub version_of: Option<NewVersion>,
}

/// An approval set at `at` by every node of a tier (or the root).
#[derive(Clone, Debug, PartialEq)]
pub struct Approval {
    pub at: u64,
    /// `None` for the root, else an index into [`Scenario::tiers`].
    pub by: Option<usize>,
    /// Index into [`Scenario::updates`].
    pub update: usize,
    /// A group name, or `all`.
    pub group: String,
    pub wave: u16,
    /// Relative to the start of the run.
    pub deadline: Option<u64>,
    pub subtree: bool,
    pub halt_failures: Option<u64>,
    pub halt_fraction: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChurnKind {
    /// Offline for the whole run.
    Offline,
    /// Comes online for the first time at a moment in `within`.
    Join,
    /// Leaves at a moment in `within`, back after `downtime`.
    Leave,
    /// Crashes at a moment in `within` (loses what it held in memory), restarts after
    /// `downtime` from what it had stored.
    Crash,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Churn {
    pub kind: ChurnKind,
    pub tier: usize,
    pub share: f64,
    pub within: Range<u64>,
    pub downtime: Range<u64>,
}

/// Engine tunables the scenario may override.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineTuning {
    pub span: Option<u32>,
    pub window: Option<usize>,
    pub fetch_timeout: Option<u64>,
    pub sibling_stall: Option<u64>,
    pub report_interval: Option<u64>,
    /// Bytes per second.
    pub report_rate: Option<u64>,
    pub announce_interval: Option<u64>,
}

/// The rule sets one tier's admins (or the root's) set at one moment: the approvals
/// of a scenario with the same `at` and `by`, in the order the file lists them.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleBatch {
    pub at: u64,
    pub by: Option<usize>,
    /// Indices into the scenario's approvals.
    pub approvals: Vec<usize>,
}

impl Scenario {
    /// The approvals grouped into the batches that set them, in order of first
    /// appearance.
    pub fn rule_batches(&self) -> Vec<RuleBatch> {
        let mut batches: Vec<RuleBatch> = Vec::new();
        for (i, a) in self.approvals.iter().enumerate() {
            match batches.iter_mut().find(|b| b.at == a.at && b.by == a.by) {
                Some(b) => b.approvals.push(i),
                None => batches.push(RuleBatch {
                    at: a.at,
                    by: a.by,
                    approvals: vec![i],
                }),
            }
        }
        batches
    }

    /// Nodes below the root in each tier.
    pub fn tier_sizes(&self) -> Vec<u64> {
        let mut n = 1u64;
        self.tiers
            .iter()
            .map(|t| {
                n = n.saturating_mul(u64::from(t.fanout));
                n
            })
            .collect()
    }

    /// Every node, the root included.
    pub fn node_count(&self) -> u64 {
        1 + self.tier_sizes().iter().sum::<u64>()
    }

    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read the scenario: {e}"),
        })?;
        Scenario::parse(&file, &text)
    }

    /// Checks scenario text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let at = |span: Option<Range<usize>>, message: String| ScenarioError {
            file: file.to_string(),
            line: span.map_or(0, |s| line_of(text, s.start)),
            message,
        };
        let raw: RawScenario =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().into()))?;
        Checker { at: &at }.scenario(raw)
    }
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

type Text = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Text,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    starts_at: Option<Text>,
    until: Text,
    #[serde(default)]
    sample: Option<Text>,
    #[serde(default)]
    chunk: Option<Text>,
    root: RawRoot,
    #[serde(default)]
    tier: Vec<Spanned<RawTier>>,
    #[serde(default)]
    group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    update: Vec<Spanned<RawUpdate>>,
    #[serde(default)]
    approval: Vec<Spanned<RawApproval>>,
    #[serde(default)]
    churn: Vec<Spanned<RawChurn>>,
    #[serde(default)]
    engine: Option<RawEngine>,
    #[serde(default)]
    install: Option<RawInstall>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoot {
    up: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: Text,
    fanout: Spanned<i64>,
    down: Text,
    up: Text,
    latency: Text,
    #[serde(default)]
    jitter: Option<Text>,
    #[serde(default)]
    spread: Option<Text>,
    #[serde(default)]
    site: Option<Spanned<RawSite>>,
    #[serde(default)]
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    size: Spanned<i64>,
    #[serde(default)]
    down: Option<Text>,
    #[serde(default)]
    up: Option<Text>,
    #[serde(default)]
    latency: Option<Text>,
    #[serde(default = "yes")]
    siblings: bool,
    #[serde(default)]
    limits: Option<Spanned<RawLimits>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Text,
    tier: Text,
    share: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    #[serde(default)]
    at: Option<Text>,
    by: Text,
    update: Text,
    #[serde(default)]
    group: Option<Text>,
    #[serde(default)]
    wave: Option<Text>,
    #[serde(default)]
    deadline: Option<Text>,
    #[serde(default)]
    subtree: bool,
    #[serde(default)]
    halt_failures: Option<Spanned<i64>>,
    #[serde(default)]
    halt_fraction: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChurn {
    kind: Text,
    tier: Text,
    share: Text,
    #[serde(default)]
    within: Option<Text>,
    #[serde(default)]
    downtime: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    #[serde(default)]
    span: Option<Spanned<i64>>,
    #[serde(default)]
    window: Option<Spanned<i64>>,
    #[serde(default)]
    fetch_timeout: Option<Text>,
    #[serde(default)]
    sibling_stall: Option<Text>,
    #[serde(default)]
    report_interval: Option<Text>,
    #[serde(default)]
    report_rate: Option<Text>,
    #[serde(default)]
    announce_interval: Option<Text>,
}

/// Turns raw values into checked ones, each error placed at its value's line.
struct Checker<'a> {
    at: &'a dyn Fn(Option<Range<usize>>, String) -> ScenarioError,
}

impl Checker<'_> {
    fn err<T>(&self, span: Range<usize>, message: impl Into<String>) -> Result<T, ScenarioError> {
        Err((self.at)(Some(span), message.into()))
    }

    fn duration(&self, v: &Text, what: &str) -> Result<u64, ScenarioError> {
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(_) => self.err(
                v.span(),
                format!(
                    "{what} {:?} is not a duration such as \"30ms\", \"5m\" or \"2h\"",
                    v.get_ref()
                ),
            ),
        }
    }

    fn duration_range(&self, v: &Text, what: &str) -> Result<Range<u64>, ScenarioError> {
        let text = v.get_ref();
        let (lo, hi) = text.split_once("..").unwrap_or((text, text));
        let parse = |s: &str| humantime::parse_duration(s.trim()).map(|d| d.as_millis() as u64);
        match (parse(lo), parse(hi)) {
            (Ok(lo), Ok(hi)) if lo <= hi => Ok(lo..hi),
            (Ok(_), Ok(_)) => self.err(v.span(), format!("{what} {text:?} ends before it starts")),
            _ => self.err(
                v.span(),
                format!("{what} {text:?} is not a duration or a range such as \"5m..30m\""),
            ),
        }
    }

    fn size(&self, v: &Text, what: &str) -> Result<u64, ScenarioError> {
        match parse_size(v.get_ref()) {
            Some(n) if n > 0 => Ok(n),
            _ => self.err(
                v.span(),
                format!(
                    "{what} {:?} is not a size such as \"1GiB\", \"64KiB\" or \"500MB\"",
                    v.get_ref()
                ),
            ),
        }
    }

    fn rate(&self, v: &Text, what: &str) -> Result<f64, ScenarioError> {
        match parse_rate(v.get_ref()) {
            Some(r) if r > 0.0 => Ok(r),
            _ => self.err(
                v.span(),
                format!(
                    "{what} {:?} is not a rate above zero such as \"100Mbit\", \"1Gbit\" or \"512kbit\"",
                    v.get_ref()
                ),
            ),
        }
    }

    fn share(&self, v: &Text, what: &str) -> Result<f64, ScenarioError> {
        let t = v.get_ref().trim();
        match t
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<f64>().ok())
        {
            Some(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
            _ => self.err(
                v.span(),
                format!("{what} {t:?} is not a percentage from 0% to 100%"),
            ),
        }
    }

    fn count(&self, v: &Spanned<i64>, what: &str, range: Range<i64>) -> Result<u64, ScenarioError> {
        let n = *v.get_ref();
        if !range.contains(&n) {
            return self.err(
                v.span(),
                format!(
                    "{what} {n} is out of range: it must be {} to {}",
                    range.start,
                    range.end - 1
                ),
            );
        }
        Ok(n as u64)
    }

    fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let until = self.duration(&raw.until, "until")?;
        if until == 0 {
            return self.err(raw.until.span(), "until must be after the start");
        }
        let sample = match &raw.sample {
            Some(v) => self.duration(v, "sample")?,
            None => (until / 500).clamp(1000, 60_000),
        };
        if sample == 0 {
            return self.err(
                raw.sample.as_ref().map_or(0..0, Spanned::span),
                "sample must be above zero",
            );
        }
        let chunk = match &raw.chunk {
            Some(v) => {
                let c = self.size(v, "chunk")?;
                if !(MIN_CHUNK..=MAX_CHUNK).contains(&c) {
                    return self.err(
                        v.span(),
                        format!("chunk must be from 64KiB to {}MiB", MAX_CHUNK >> 20),
                    );
                }
                c as u32
            }
            None => MAX_CHUNK as u32,
        };
        if raw.tier.is_empty() {
            return self.err(
                raw.name.span(),
                "a scenario needs at least one [[tier]] below the root",
            );
        }
        if raw.tier.len() > MAX_TIERS {
            return self.err(
                raw.tier[MAX_TIERS].span(),
                format!("at most {MAX_TIERS} tiers"),
            );
        }
        let mut tiers: Vec<Tier> = Vec::new();
        let mut nodes = 1u64;
        let mut level = 1u64;
        for t in &raw.tier {
            let span = t.span();
            let t = t.get_ref();
            let name = t.name.get_ref().clone();
            if name == "root" || tiers.iter().any(|o| o.name == name) {
                return self.err(t.name.span(), format!("tier name {name:?} is taken"));
            }
            let fanout = self.count(&t.fanout, "fanout", 1..1_000_001)? as u32;
            level = level.saturating_mul(u64::from(fanout));
            nodes = nodes.saturating_add(level);
            if nodes > MAX_NODES {
                return self.err(span, format!("the tree would have over {MAX_NODES} nodes"));
            }
            let site = match &t.site {
                None => None,
                Some(s) => Some(self.site(s, fanout)?),
            };
            let spread = match &t.spread {
                Some(v) => {
                    let s = self.share(v, "spread")?;
                    if s >= 1.0 {
                        return self.err(v.span(), "spread must be below 100%");
                    }
                    s
                }
                None => 0.0,
            };
            let latency = self.duration(&t.latency, "latency")?;
            let jitter = match &t.jitter {
                Some(v) => self.duration(v, "jitter")?,
                None => 0,
            };
            if jitter > latency {
                return self.err(
                    t.jitter.as_ref().map_or(span, Spanned::span),
                    "jitter cannot be larger than the latency it varies",
                );
            }
            tiers.push(Tier {
                name,
                fanout,
                down: self.rate(&t.down, "down")?,
                up: self.rate(&t.up, "up")?,
                latency,
                jitter,
                spread,
                site,
                limits: match &t.limits {
                    Some(l) => self.limits(l)?,
                    None => BandwidthOptions::default(),
                },
            });
        }
        let tier_of = |v: &Text| -> Result<usize, ScenarioError> {
            match tiers.iter().position(|t| &t.name == v.get_ref()) {
                Some(i) => Ok(i),
                None => self.err(
                    v.span(),
                    format!(
                        "no tier {:?}; the tiers are {}",
                        v.get_ref(),
                        tiers
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        };
        let mut groups: Vec<Group> = Vec::new();
        for g in &raw.group {
            let g = g.get_ref();
            let name = g.name.get_ref().clone();
            if let Err(e) = crate::content::names::check_name("group name", &name) {
                return self.err(g.name.span(), e.to_string());
            }
            if name == crate::rules::ALL || groups.iter().any(|o| o.name == name) {
                return self.err(g.name.span(), format!("group name {name:?} is taken"));
            }
            groups.push(Group {
                name,
                tier: tier_of(&g.tier)?,
                share: self.share(&g.share, "share")?,
            });
        }
        let updates = self.updates(&raw.update, chunk)?;
        if updates.is_empty() {
            return self.err(raw.name.span(), "a scenario needs at least one [[update]]");
        }
        let mut approvals = Vec::new();
        for a in &raw.approval {
            approvals.push(self.approval(a, &tiers, &groups, &updates, &tier_of)?);
        }
        let mut churn = Vec::new();
        for c in &raw.churn {
            let span = c.span();
            let c = c.get_ref();
            let kind = match c.kind.get_ref().as_str() {
                "offline" => ChurnKind::Offline,
                "join" => ChurnKind::Join,
                "leave" => ChurnKind::Leave,
                "crash" => ChurnKind::Crash,
                other => {
                    return self.err(
                        c.kind.span(),
                        format!("churn kind {other:?} is not one of offline, join, leave, crash"),
                    );
                }
            };
            let within = match &c.within {
                Some(v) => self.duration_range(v, "within")?,
                None if kind == ChurnKind::Offline => 0..0,
                None => return self.err(span, "this churn needs `within`: when it happens"),
            };
            let downtime = match &c.downtime {
                Some(v) => self.duration_range(v, "downtime")?,
                None if matches!(kind, ChurnKind::Leave | ChurnKind::Crash) => {
                    return self.err(
                        span,
                        "this churn needs `downtime`: how long nodes stay away",
                    );
                }
                None => 0..0,
            };
            churn.push(Churn {
                kind,
                tier: tier_of(&c.tier)?,
                share: self.share(&c.share, "share")?,
                within,
                downtime,
            });
        }
        let engine = match &raw.engine {
            None => EngineTuning::default(),
            Some(e) => EngineTuning {
                span: e
                    .span
                    .as_ref()
                    .map(|v| self.count(v, "span", 1..1025))
                    .transpose()?
                    .map(|n| n as u32),
                window: e
                    .window
                    .as_ref()
                    .map(|v| self.count(v, "window", 1..257))
                    .transpose()?
                    .map(|n| n as usize),
                fetch_timeout: e
                    .fetch_timeout
                    .as_ref()
                    .map(|v| self.duration(v, "fetch_timeout"))
                    .transpose()?,
                sibling_stall: e
                    .sibling_stall
                    .as_ref()
                    .map(|v| self.duration(v, "sibling_stall"))
                    .transpose()?,
                report_interval: e
                    .report_interval
                    .as_ref()
                    .map(|v| self.duration(v, "report_interval"))
                    .transpose()?,
                report_rate: e
                    .report_rate
                    .as_ref()
                    .map(|v| self.rate(v, "report_rate"))
                    .transpose()?
                    .map(|r| (r.round() as u64).max(1)),
                announce_interval: e
                    .announce_interval
                    .as_ref()
                    .map(|v| self.duration(v, "announce_interval"))
                    .transpose()?,
            },
        };
        let install = self.install(raw.install.as_ref())?;
        Ok(Scenario {
            name: raw.name.into_inner(),
            description: raw.description.unwrap_or_default(),
            seed: raw.seed.unwrap_or(1),
            starts_at: self.time_of_day(&raw.starts_at)?,
            until,
            sample,
            chunk,
            root_up: self.rate(&raw.root.up, "root up")?,
            tiers,
            groups,
            updates,
            approvals,
            churn,
            engine,
            install,
        })
    }

    fn site(&self, s: &Spanned<RawSite>, fanout: u32) -> Result<Site, ScenarioError> {
        let raw = s.get_ref();
        let size = self.count(&raw.size, "site size", 1..i64::from(MAX_SITE) + 1)? as u32;
        if !fanout.is_multiple_of(size) {
            return self.err(
                raw.size.span(),
                format!("site size {size} does not divide the tier's fanout {fanout}: every site must be full"),
            );
        }
        let link = match (&raw.down, &raw.up) {
            (None, None) => None,
            (Some(down), Some(up)) => Some(SiteLink {
                down: self.rate(down, "site down")?,
                up: self.rate(up, "site up")?,
                latency: raw
                    .latency
                    .as_ref()
                    .map(|v| self.duration(v, "site latency"))
                    .transpose()?
                    .unwrap_or(0),
            }),
            _ => {
                return self.err(
                    s.span(),
                    "a site link needs both `down` and `up`, or neither",
                );
            }
        };
        Ok(Site {
            size,
            link,
            siblings: raw.siblings,
            limits: match &raw.limits {
                Some(l) => self.site_limits(l)?,
                None => BandwidthOptions::default(),
            },
        })
    }

    fn approval(
        &self,
        a: &Spanned<RawApproval>,
        tiers: &[Tier],
        groups: &[Group],
        updates: &[Update],
        tier_of: &dyn Fn(&Text) -> Result<usize, ScenarioError>,
    ) -> Result<Approval, ScenarioError> {
        let a = a.get_ref();
        let by = if a.by.get_ref() == "root" {
            None
        } else {
            let t = tier_of(&a.by)?;
            if t + 1 == tiers.len() {
                return self.err(
                    a.by.span(),
                    format!("tier {:?} has no children to approve for", a.by.get_ref()),
                );
            }
            Some(t)
        };
        let update = match updates.iter().position(|u| &u.name == a.update.get_ref()) {
            Some(u) => u,
            None => {
                return self.err(
                    a.update.span(),
                    format!("no [[update]] named {:?}", a.update.get_ref()),
                );
            }
        };
        let group = a
            .group
            .as_ref()
            .map_or(crate::rules::ALL.to_string(), |g| g.get_ref().clone());
        if group != crate::rules::ALL {
            let span = a.group.as_ref().map_or(0..0, Spanned::span);
            let Some(g) = groups.iter().find(|g| g.name == group) else {
                return self.err(span, format!("no [[group]] named {group:?}"));
            };
            let children = by.map_or(0, |t| t + 1);
            if g.tier != children {
                return self.err(
                    span,
                    format!(
                        "group {group:?} holds nodes of tier {:?}: only their parents ({}) can approve for it",
                        tiers[g.tier].name,
                        if g.tier == 0 { "root".to_string() } else { format!("tier {:?}", tiers[g.tier - 1].name) }
                    ),
                );
            }
        }
        let wave = match &a.wave {
            Some(v) => match parse_wave(v.get_ref()) {
                Ok(w) => w,
                Err(e) => return self.err(v.span(), e.to_string()),
            },
            None => FULL_WAVE,
        };
        let halt_fraction = match &a.halt_fraction {
            Some(v) => match parse_wave(v.get_ref()) {
                Ok(0) | Err(_) => {
                    return self.err(
                        v.span(),
                        "halt_fraction must be a percentage from 0.01% to 100%",
                    );
                }
                Ok(w) => Some(w),
            },
            None => None,
        };
        Ok(Approval {
            at: a
                .at
                .as_ref()
                .map(|v| self.duration(v, "at"))
                .transpose()?
                .unwrap_or(0),
            by,
            update,
            group,
            wave,
            deadline: a
                .deadline
                .as_ref()
                .map(|v| self.duration(v, "deadline"))
                .transpose()?,
            subtree: a.subtree,
            halt_failures: a
                .halt_failures
                .as_ref()
                .map(|v| self.count(v, "halt_failures", 1..i64::MAX))
                .transpose()?,
            halt_fraction,
        })
    }
}

/// Bytes in "1GiB", "64KiB", "500MB", "1000".
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let unit: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    let bytes = num * unit;
    (1.0..1e18).contains(&bytes).then_some(bytes.round() as u64)
}

/// Bytes per second in "100Mbit", "1Gbit", "512kbit" (optionally with "/s").
pub fn parse_rate(text: &str) -> Option<f64> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let bits: f64 = match unit.trim() {
        "bit" => 1.0,
        "kbit" | "Kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        "Tbit" => 1e12,
        _ => return None,
    };
    let rate = num * bits / 8.0;
    rate.is_finite().then_some(rate)
}

#[cfg(test)]
mod tests;
