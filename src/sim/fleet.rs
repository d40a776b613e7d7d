//! The simulated fleet's fixed shape: the tree, every node's keys and links, the
//! scenario's updates and rule batches, and how the nodes are shared out among the
//! lanes that run them. Built once before the run; every lane reads it, none changes
//! it (apart from the map of rule sets to the batch that made them, behind a lock).
//!
//! Nodes are numbered tier by tier (the root is 0), so that a node's children are one
//! contiguous range and its parent is found by arithmetic.
//!
//! Lanes: the subtrees under the first tier are split into [`LANES`] contiguous runs,
//! each run by its own thread ([`super::world`]); the root goes with the first. A
//! subtree never talks to another one, only to the root, so whatever one lane sends
//! another goes over a link from the root to the first tier and arrives no sooner
//! than that link's latency: the lanes can run that far ahead of each other
//! ([`Fleet::lookahead`]) without missing anything.

use super::network::{Link, Network};
use super::scenario::{RuleBatch, Scenario};
use super::versions::{Versions, chunk_lens, file_size};
use super::vnet::Shape;
use crate::content::manifest::{ChunkRef, FileEntry, Manifest};
use crate::content::{DigestState, Hash};
use crate::engine::{Config, Engine, Millis, PeerId};
use crate::net::BandwidthOptions;
use crate::trust::member;
use crate::trust::{PublicKey, SecretKey, SignedManifest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Virtual time 0 is this Unix time (ms): rules and deadlines are in Unix seconds.
pub const EPOCH: Millis = 1_800_000_000_000;

/// How many lanes a fleet is run in when its shape allows it. A fixed number, not the
/// machine's cores: the lanes are part of what a run computes (events from another
/// lane join a lane's queue at the end of a window), and the same scenario and seed
/// must give the same summary on every machine.
pub const LANES: usize = 2;

/// How long the certificates of simulated nodes last (Unix seconds): longer than any
/// run.
const CERTIFICATE_LIFE: u64 = 10 * 365 * 24 * 3600;

/// The fleet of one scenario and seed.
pub struct Fleet<'s> {
    pub sc: &'s Scenario,
    pub seed: u64,
    pub keys: Vec<PublicKey>,
    /// Each node's key, made once: deriving one costs a scalar multiplication.
    pub secrets: Vec<SecretKey>,
    pub index: HashMap<PublicKey, u32, DigestState>,
    /// First node of each tier (tier 0 is the root's children); one past the last at
    /// the end.
    pub tier_start: Vec<u32>,
    pub links: Vec<Link>,
    /// Every queue at its rate, idle: each lane starts from a copy.
    pub net: Network,
    pub root_key: SecretKey,
    pub manifests: Vec<Arc<SignedManifest>>,
    /// The modules with several versions: what their chunks share and cost.
    pub versions: Versions,
    pub batches: Vec<RuleBatch>,
    pub config: Config,
    /// How many lanes run the fleet, and how far ahead of each other they may run.
    pub lanes: usize,
    pub lookahead: Millis,
    /// The sites the summary reports on: the tier they are taken at and how many of its
    /// nodes make one (see [`Fleet::report_site`]).
    pub report_sites: Option<(usize, u32)>,
    /// Rule-set bytes (hashed) to the batch that made them. The issuer's lane writes an
    /// entry before any other lane can hear of the rule set.
    pub rule_origin: Mutex<HashMap<Hash, u32>>,
}

/// A deterministic value in [0, 1) for a (seed, purpose, node) triple.
pub fn draw(seed: u64, purpose: &str, node: u64) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(purpose.as_bytes());
    h.update(&node.to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn secret(seed: u64, node: u32) -> SecretKey {
    let mut h = blake3::Hasher::new();
    h.update(b"arbor/sim/node-key");
    h.update(&seed.to_le_bytes());
    h.update(&node.to_le_bytes());
    SecretKey::from_seed(*h.finalize().as_bytes())
}

/// The tier of node `i` given the first node of each tier (0 for the root as for the
/// first tier below it).
fn tier_of(tier_start: &[u32], i: u32) -> usize {
    tier_start.partition_point(|s| *s <= i).saturating_sub(1)
}

/// The keys of nodes `0..total`, derived on two threads (the same keys either way).
fn node_secrets(seed: u64, total: u32) -> Vec<SecretKey> {
    let half = total / 2;
    std::thread::scope(|s| {
        let upper = s.spawn(|| (half..total).map(|i| secret(seed, i)).collect::<Vec<_>>());
        let mut keys: Vec<SecretKey> = (0..half).map(|i| secret(seed, i)).collect();
        keys.extend(
            upper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        );
        keys
    })
}

impl<'s> Fleet<'s> {
    /// Builds the tree and its links.
    pub fn new(sc: &'s Scenario, seed: u64) -> Result<Fleet<'s>, crate::trust::TrustError> {
        let sizes = sc.tier_sizes();
        let mut tier_start = vec![1u32];
        for s in &sizes {
            let last = *tier_start.last().unwrap_or(&1);
            tier_start.push(last + *s as u32);
        }
        let total = *tier_start.last().unwrap_or(&1) as usize;
        let secrets = node_secrets(seed, total as u32);
        let keys: Vec<PublicKey> = secrets.iter().map(SecretKey::public).collect();
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, i as u32))
            .collect();
        let mut net = Network::default();
        let mut links = Vec::with_capacity(total);
        let vary = |rate: f64, spread: f64, i: usize, what: &str| {
            rate * (1.0 + spread * (2.0 * draw(seed, what, i as u64) - 1.0))
        };
        // The root.
        let root_down = net.add(sc.root_up) as u32;
        let root_up = net.add(sc.root_up) as u32;
        links.push(Link::new(0, root_down, root_up));
        let mut site_links: HashMap<u64, u32> = HashMap::new();
        let mut site_limits: HashMap<u64, u32> = HashMap::new();
        for i in 1..total {
            let tier = tier_of(&tier_start, i as u32);
            let t = &sc.tiers[tier];
            let jitter = t.jitter as f64 * (2.0 * draw(seed, "latency", i as u64) - 1.0);
            let latency = (t.latency as f64 + jitter).round().max(0.0) as u32;
            let down = net.add(vary(t.down, t.spread, i, "down")) as u32;
            let up = net.add(vary(t.up, t.spread, i, "up")) as u32;
            let mut link = Link::new(latency, down, up);
            let l = &t.limits;
            let rates = [
                l.max_download,
                l.max_upload,
                l.max_local_download,
                l.max_local_upload,
            ];
            for (slot, rate) in link.limits.iter_mut().zip(rates) {
                if let Some(rate) = rate {
                    *slot = net.add_limit(rate) as u32;
                }
            }
            if let Some(site) = &t.site {
                let site_id = (i as u64 - u64::from(tier_start[tier])) / u64::from(site.size);
                let key = (tier as u64) << 40 | site_id;
                if let Some(rate) = site.limits.max_download {
                    link.site_limit = *site_limits
                        .entry(key)
                        .or_insert_with(|| net.add_limit(rate) as u32);
                }
                if let Some(site_link) = &site.link {
                    let q = *site_links.entry(key).or_insert_with(|| {
                        let d = net.add(site_link.down) as u32;
                        net.add(site_link.up);
                        d
                    });
                    link.site_link = q;
                    link.site_latency = site_link.latency as u32;
                }
            }
            links.push(link);
        }
        let root_key = secrets[0].clone();
        let versions = Versions::new(&sc.updates, sc.chunk);
        let mut manifests: Vec<Arc<SignedManifest>> = Vec::with_capacity(sc.updates.len());
        for u in 0..sc.updates.len() {
            let m = synthetic_update(&root_key, sc, &versions, &manifests, u)?;
            manifests.push(m);
        }
        // No peer of a simulated fleet freezes with its connection up, so liveness
        // pings would only cost events: a node's sessions end with its links. Rules
        // are signed to outlive any run.
        let mut config = Config {
            heartbeat: 0,
            rules_lifetime: 10 * 365 * 24 * 3600,
            ..Config::default()
        };
        if let Some(s) = sc.engine.span {
            config.span = s;
        }
        if let Some(w) = sc.engine.window {
            config.window = w;
        }
        if let Some(t) = sc.engine.fetch_timeout {
            config.fetch_timeout = t;
        }
        if let Some(t) = sc.engine.sibling_stall {
            config.sibling_stall = t;
        }
        if let Some(t) = sc.engine.report_interval {
            config.report_interval = t;
        }
        if let Some(r) = sc.engine.report_rate {
            config.report_rate = r;
        }
        if let Some(t) = sc.engine.announce_interval {
            config.announce_interval = t;
        }
        // The sites summed up: those the scenario declares, at the highest tier that has
        // them; else the nodes above the leaves (branch offices), each with its leaves.
        let report_sites = match sc.tiers.iter().position(|t| t.site.is_some()) {
            Some(t) => sc.tiers[t].site.as_ref().map(|s| (t, s.size)),
            None if sc.tiers.len() >= 2 => Some((sc.tiers.len() - 2, 1)),
            None => None,
        };
        let mut fleet = Fleet {
            sc,
            seed,
            keys,
            secrets,
            index,
            tier_start,
            links,
            net,
            root_key,
            manifests,
            versions,
            batches: sc.rule_batches(),
            config,
            lanes: 1,
            lookahead: Millis::MAX,
            report_sites,
            rule_origin: Mutex::new(HashMap::new()),
        };
        fleet.share_out();
        Ok(fleet)
    }

    /// Shares the subtrees under the first tier out among [`LANES`] lanes, if the
    /// fleet's shape keeps every lane to itself apart from the root's links: no sites
    /// in the first tier (siblings there would fetch from one another across lanes),
    /// and a latency above zero on every link between the root and a subtree that
    /// another lane runs. A site further down never spans two lanes: its size divides
    /// its tier's fan-out (the scenario is checked for it), so its members share a
    /// parent.
    fn share_out(&mut self) {
        let regions = self.tier_start.get(1).map_or(0, |end| end - 1);
        let lanes = LANES.min(regions as usize);
        if lanes < 2 || self.sc.tiers[0].site.is_some() {
            return;
        }
        let lane_of_region = |r: u32| (r as usize * lanes / regions as usize) as u8;
        let lookahead = (1..=regions)
            .filter(|r| lane_of_region(r - 1) != 0)
            .map(|r| Millis::from(self.links[r as usize].latency))
            .min()
            .unwrap_or(Millis::MAX);
        if lookahead == 0 {
            return;
        }
        for i in 1..self.links.len() as u32 {
            let region = self.ancestor_in(i, 0);
            self.links[i as usize].lane = lane_of_region(region - 1);
        }
        self.lanes = lanes;
        self.lookahead = lookahead;
    }

    pub fn node_count(&self) -> u64 {
        self.links.len() as u64
    }

    pub fn tier_range(&self, tier: usize) -> std::ops::Range<u32> {
        self.tier_start[tier]..self.tier_start[tier + 1]
    }

    /// The tier of node `i` (0 for the root as for the first tier below it), from the
    /// numbering alone: the hot paths ask it without touching the node.
    pub fn tier_of(&self, i: u32) -> usize {
        tier_of(&self.tier_start, i)
    }

    /// The parent of node `i` (not the root).
    pub fn parent_of(&self, i: u32) -> u32 {
        let tier = self.tier_of(i);
        if tier == 0 {
            return 0;
        }
        let fanout = self.sc.tiers[tier].fanout;
        self.tier_start[tier - 1] + (i - self.tier_start[tier]) / fanout
    }

    /// The children of node `i`.
    pub fn children_of(&self, i: u32) -> std::ops::Range<u32> {
        let tier = if i == 0 { None } else { Some(self.tier_of(i)) };
        let child_tier = tier.map_or(0, |t| t + 1);
        if child_tier >= self.sc.tiers.len() {
            return 0..0;
        }
        let fanout = self.sc.tiers[child_tier].fanout;
        let first_of_tier = tier.map_or(0, |t| self.tier_start[t]);
        let offset = if i == 0 { 0 } else { i - first_of_tier };
        let start = self.tier_start[child_tier] + offset * fanout;
        start..start + fanout
    }

    pub fn is_leaf(&self, i: u32) -> bool {
        i != 0 && self.tier_of(i) + 1 == self.sc.tiers.len()
    }

    /// Gives node `i`'s engine (not the root node's) its membership certificate,
    /// signed by its parent, a client's if it is a leaf: what proves its failures and
    /// its children's (PROTOCOL.md §15.7). Signed when asked, as most leaves never
    /// need one.
    pub fn certify(&self, engine: &mut Engine, i: u32) {
        let issued = EPOCH / 1000;
        let cert = member::issue(
            &self.secrets[self.parent_of(i) as usize],
            self.keys[i as usize],
            self.is_leaf(i),
            Vec::new(),
            None,
            issued,
            issued + CERTIFICATE_LIFE,
        );
        if let Err(e) = engine.set_certificate(cert) {
            tracing::warn!(node = i, error = %e, "a simulated certificate is refused");
        }
    }

    /// The site of node `i` within its tier, if its tier has sites.
    pub fn site_of(&self, i: u32) -> Option<(usize, u32)> {
        if i == 0 {
            return None;
        }
        let tier = self.tier_of(i);
        let site = self.sc.tiers[tier].site.as_ref()?;
        Some((tier, (i - self.tier_start[tier]) / site.size))
    }

    pub fn same_site(&self, a: u32, b: u32) -> bool {
        matches!((self.site_of(a), self.site_of(b)), (Some(x), Some(y)) if x == y)
    }

    pub fn crosses_site(&self, from: u32, to: u32) -> bool {
        self.links[from as usize].site_link != self.links[to as usize].site_link
    }

    /// The WAN windows node `i` keeps, if it has any: its site's, else its tier's.
    pub fn wan_windows(&self, i: u32) -> Option<&BandwidthOptions> {
        if i == 0 {
            return None;
        }
        let tier = &self.sc.tiers[self.tier_of(i)];
        [tier.site.as_ref().map(|s| &s.limits), Some(&tier.limits)]
            .into_iter()
            .flatten()
            .find(|l| !l.wan_windows.is_empty())
    }

    /// The site the summary counts node `i` in, if any: a declared site holds its
    /// members and everything below them; a branch office, its node and its leaves.
    pub fn report_site(&self, i: u32) -> Option<u32> {
        let (tier, size) = self.report_sites?;
        if i == 0 || self.tier_of(i) < tier {
            return None;
        }
        Some((self.ancestor_in(i, tier) - self.tier_start[tier]) / size)
    }

    /// The names of the sites the summary reports on, and the leaves in each.
    pub fn report_site_names(&self) -> (Vec<String>, u64) {
        let Some((tier, size)) = self.report_sites else {
            return (Vec::new(), 0);
        };
        let count = (self.tier_range(tier).len() as u32 / size) as usize;
        let name = &self.sc.tiers[tier].name;
        let names = (0..count)
            .map(|k| match self.sc.tiers[tier].site {
                Some(_) => format!("{name} site {k}"),
                None => format!("{name} {k}"),
            })
            .collect();
        let leaves = self.tier_range(self.sc.tiers.len() - 1).len() as u64;
        (names, leaves / count.max(1) as u64)
    }

    /// The scenario's index of an update.
    pub fn update_index(&self, id: &Hash) -> Option<usize> {
        self.manifests.iter().position(|m| m.id == *id)
    }

    /// The node of a key, if it is one of the fleet's.
    pub fn node_of(&self, key: &PeerId) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// Which summary groups leaf `i` counts in: all leaves, then each scenario group
    /// that holds it or one of its ancestors.
    pub fn summary_groups_of(&self, i: u32) -> Vec<bool> {
        std::iter::once(true)
            .chain(self.sc.groups.iter().map(|g| {
                let a = self.ancestor_in(i, g.tier);
                self.in_group(a, g.tier, &g.name)
            }))
            .collect()
    }

    /// The size of each summary group, in leaves.
    pub fn summary_group_sizes(&self) -> Vec<u64> {
        let leaves = self.tier_range(self.sc.tiers.len() - 1);
        let mut sizes = vec![0u64; 1 + self.sc.groups.len()];
        for i in leaves {
            for (g, member) in self.summary_groups_of(i).iter().enumerate() {
                sizes[g] += u64::from(*member);
            }
        }
        sizes
    }

    /// Whether node `i` of `tier` is in group `name` (a fixed draw per node).
    pub fn in_group(&self, i: u32, tier: usize, name: &str) -> bool {
        self.sc
            .groups
            .iter()
            .find(|g| g.name == name && g.tier == tier)
            .is_some_and(|g| draw(self.seed, &format!("group-{name}"), u64::from(i)) < g.share)
    }

    /// The ancestor of node `i` in `tier` (itself for its own tier).
    pub fn ancestor_in(&self, mut i: u32, tier: usize) -> u32 {
        while i != 0 && self.tier_of(i) > tier {
            i = self.parent_of(i);
        }
        i
    }
}

impl Shape for Fleet<'_> {
    fn key(&self, i: u32) -> PeerId {
        self.keys[i as usize]
    }

    fn node_of(&self, key: &PeerId) -> Option<u32> {
        Fleet::node_of(self, key)
    }

    fn parent(&self, i: u32) -> Option<u32> {
        (i != 0).then(|| self.parent_of(i))
    }

    fn child_slot(&self, parent: u32, child: u32) -> Option<usize> {
        (child != 0 && self.parent_of(child) == parent)
            .then(|| (child - self.children_of(parent).start) as usize)
    }

    fn link(&self, i: u32) -> &Link {
        &self.links[i as usize]
    }

    /// A module's versions are numbered as the scenario lists its updates.
    fn version(&self, update: &Hash) -> Option<u32> {
        let u = self.update_index(update)?;
        self.versions.has_versions(u).then_some(u as u32)
    }

    fn version_id(&self, n: u32) -> Option<Hash> {
        self.manifests.get(n as usize).map(|m| m.id)
    }

    /// What [`Versions::payload`] says the delta costs.
    fn delta_len(&self, update: u32, base: u32, index: u32, len: u32) -> u32 {
        self.versions
            .payload(update as usize, base as usize, index, len)
    }

    fn same_site(&self, a: u32, b: u32) -> bool {
        Fleet::same_site(self, a, b)
    }

    /// A node that serves others hears of every chunk as it lands, so that it can pass
    /// it on at once; a leaf without siblings only needs the whole answer.
    fn hears_each_chunk(&self, i: u32) -> bool {
        !self.children_of(i).is_empty() || self.site_of(i).is_some()
    }
}

/// Update `u` of the scenario, signed as the `u + 1`th published: `size` bytes in
/// `files` files of about equal size, in chunks of the scenario's size whose hashes
/// stand for content the simulator never makes. A new version of a module has the
/// module's id and paths, the next version number, and its base's chunk wherever its
/// change leaves a chunk untouched (`built` holds the updates before it).
fn synthetic_update(
    root: &SecretKey,
    sc: &Scenario,
    versions: &Versions,
    built: &[Arc<SignedManifest>],
    u: usize,
) -> Result<Arc<SignedManifest>, crate::trust::TrustError> {
    let up = &sc.updates[u];
    let module = &sc.updates[versions.first_of(u)].name;
    let base = up.version_of.as_ref().and_then(|v| built.get(v.base));
    let files = up.files.max(1);
    let mut index = 0u64;
    let entries = (0..files)
        .map(|f| {
            let size = file_size(up.size, files, f);
            let chunks = chunk_lens(size, sc.chunk)
                .map(|len| {
                    let kept = base
                        .filter(|_| !versions.is_new(u, index as u32))
                        .and_then(|b| b.chunks.get(index as usize));
                    let hash = match kept {
                        Some((hash, _)) => *hash,
                        None => {
                            let mut h = blake3::Hasher::new();
                            h.update(up.name.as_bytes());
                            h.update(&index.to_le_bytes());
                            Hash(*h.finalize().as_bytes())
                        }
                    };
                    index += 1;
                    ChunkRef(hash, len)
                })
                .collect();
            FileEntry {
                mode: 0o644,
                path: if files == 1 {
                    format!("{module}.bin")
                } else {
                    format!("{module}/{f:07}.bin")
                },
                size,
                chunks,
            }
        })
        .collect();
    let manifest = Manifest {
        id: module.clone(),
        files: entries,
        tenant: "simulation".into(),
        created: EPOCH / 1000,
        version: versions.version(u),
        category: "simulated".into(),
        total_size: up.size,
        description: None,
        post_install: None,
    };
    SignedManifest::sign(root, u as u64 + 1, manifest).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root, `regions` regions, 4 branches under each and 2 clients under each
    /// branch; `region` and `branch` are added to those tiers' keys.
    fn scenario(regions: u32, region: &str, branch: &str) -> Scenario {
        let text = format!(
            r#"
name = "lanes"
until = "1h"
[root]
up = "1Gbit"
[[tier]]
name = "region"
fanout = {regions}
down = "1Gbit"
up = "1Gbit"
{region}
[[tier]]
name = "branch"
fanout = 4
down = "100Mbit"
up = "1Gbit"
latency = "5ms"
{branch}
[[tier]]
name = "client"
fanout = 2
down = "1Gbit"
up = "1Gbit"
latency = "1ms"
[[update]]
name = "u"
size = "1MiB"
[[approval]]
by = "root"
update = "u"
subtree = true
"#
        );
        Scenario::parse("lanes.toml", &text).expect("a valid scenario")
    }

    #[test]
    fn subtrees_are_shared_out_between_two_lanes_that_keep_a_link_latency_apart() {
        let sc = scenario(4, "latency = \"30ms\"", "");
        let fleet = Fleet::new(&sc, 1).expect("builds");
        assert_eq!((fleet.lanes, fleet.lookahead), (2, 30));
        assert_eq!(fleet.lane_of(0), 0, "the root goes with the first lane");
        // Regions 1 and 2 and everything under them in lane 0, regions 3 and 4 in 1.
        let lane_of_subtree = |region: u32| {
            let mut lanes: Vec<usize> = (0..fleet.links.len() as u32)
                .filter(|i| *i != 0 && fleet.ancestor_in(*i, 0) == region)
                .map(|i| fleet.lane_of(i))
                .collect();
            lanes.dedup();
            lanes
        };
        assert_eq!(lane_of_subtree(1), vec![0]);
        assert_eq!(lane_of_subtree(2), vec![0]);
        assert_eq!(lane_of_subtree(3), vec![1]);
        assert_eq!(lane_of_subtree(4), vec![1]);
    }

    #[test]
    fn a_fleet_that_lanes_would_cut_across_runs_in_one() {
        // Sites in the first tier: siblings there would fetch across lanes.
        let sites = scenario(4, "latency = \"30ms\"\nsite = { size = 2 }", "");
        // Nothing between the root and a subtree to run ahead by.
        let instant = scenario(4, "latency = \"0ms\"", "");
        // A single subtree.
        let one = scenario(1, "latency = \"30ms\"", "");
        for sc in [sites, instant, one] {
            let fleet = Fleet::new(&sc, 1).expect("builds");
            assert_eq!(fleet.lanes, 1);
            assert!((0..fleet.links.len() as u32).all(|i| fleet.lane_of(i) == 0));
        }
        // Sites further down do not stop the sharing out.
        let branch_sites = scenario(4, "latency = \"30ms\"", "site = { size = 2 }");
        assert_eq!(Fleet::new(&branch_sites, 1).expect("builds").lanes, 2);
    }
}
