//! The rule book: the newest verified rule set of each issuer a node holds, what they
//! make available to it and to each of its children, and when that changes by itself.

use super::*;

/// The newest verified rule set per issuer that this node holds: its ancestors' (what
/// it received) and its own (what it set for its children).
///
/// Versions only go up: [`RuleBook::apply`] refuses an older version, and an equal one
/// unless it is the same bytes again. A node that was offline catches up by applying
/// the newest version of each issuer directly; intermediate versions are not needed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleBook {
    /// Shared: in the simulator every engine below an issuer holds the same set.
    held: BTreeMap<PublicKey, Arc<SignedRules>>,
}

impl RuleBook {
    pub fn new() -> RuleBook {
        RuleBook::default()
    }

    /// Takes a verified rule set if it is newer than the one held from its issuer.
    /// `Ok(true)`: applied. `Ok(false)`: the very version held, delivered again (nothing
    /// changes). `Err(Rollback)`: an older version, or another rule set with the version
    /// held.
    pub fn apply(&mut self, rules: SignedRules) -> Result<bool, RulesError> {
        self.apply_shared(Arc::new(rules))
    }

    /// [`RuleBook::apply`] for a rule set shared with others
    /// ([`SignedRules::open_shared`]).
    pub fn apply_shared(&mut self, rules: Arc<SignedRules>) -> Result<bool, RulesError> {
        let issuer = rules.issuer();
        if let Some(held) = self.held.get(&issuer) {
            if held.bytes == rules.bytes {
                return Ok(false);
            }
            if rules.version <= held.version {
                return Err(RulesError::Rollback {
                    issuer,
                    held: held.version,
                    got: rules.version,
                });
            }
        }
        self.held.insert(issuer, rules);
        Ok(true)
    }

    /// Opens untrusted bytes received by the last node of `path` ([`SignedRules::open`])
    /// and applies them.
    pub fn receive(
        &mut self,
        bytes: &[u8],
        path: &[PublicKey],
        now: u64,
    ) -> Result<bool, RulesError> {
        self.apply(SignedRules::open(bytes, path, now)?)
    }

    /// Reloads a rule set this node stored earlier: signed by a node of `path` (an
    /// ancestor or the node itself), checked like [`SignedRules::open`] at `now` but for
    /// the expiry, so that an expired set still holds its issuer's version.
    pub fn restore(
        &mut self,
        bytes: &[u8],
        path: &[PublicKey],
        now: u64,
    ) -> Result<bool, RulesError> {
        self.apply(open_inner(bytes, path, now, false)?)
    }

    /// The rule set held from `issuer`, live or not.
    pub fn get(&self, issuer: &PublicKey) -> Option<&SignedRules> {
        self.held.get(issuer).map(|r| &**r)
    }

    /// The version held from `issuer`: what the store persists as its high-water mark.
    pub fn version(&self, issuer: &PublicKey) -> Option<u64> {
        self.held.get(issuer).map(|r| r.version)
    }

    /// The version `issuer`'s next rule set must have (1 for the first).
    pub fn next_version(&self, issuer: &PublicKey) -> u64 {
        self.version(issuer).map_or(1, |v| v.saturating_add(1))
    }

    /// Forgets the rule sets of issuers not on `path` (after rejoining elsewhere).
    pub fn retain_path(&mut self, path: &[PublicKey]) {
        self.held.retain(|issuer, _| path.contains(issuer));
    }

    /// What the last node of `path` sends each of its children: the live rule sets of
    /// every node on `path`, its own last, root node's first. This is the subset proof
    /// (PROTOCOL.md §14.6): with it a child computes what its parent was allowed.
    pub fn forward(&self, path: &[PublicKey], now: u64) -> Vec<&SignedRules> {
        path.iter()
            .filter_map(|n| self.held.get(n))
            .filter(|r| r.is_live(now))
            .map(|r| &**r)
            .collect()
    }

    fn live(&self, issuer: &PublicKey, now: u64) -> Option<&Rules> {
        self.held
            .get(issuer)
            .filter(|r| r.is_live(now))
            .map(|r| &r.rules)
    }

    /// What the last node of `path` may have at `now` (PROTOCOL.md §14.4).
    ///
    /// The root node (a path of one) may have everything. Below it, level by level, a
    /// node gets what its parent's live rules approve for one of its groups (in the
    /// wave, not halted) plus what subtree approvals above it reach, and never more
    /// than its parent itself may have. Missing or expired rule sets approve nothing.
    pub fn availability(&self, path: &[PublicKey], now: u64) -> Availability {
        let Some((_, below_root)) = path.split_first() else {
            return Availability::none();
        };
        let mut avail = Availability::everything();
        // Subtree grants from the levels above: they reach every node further down.
        let mut inherited: BTreeMap<Hash, Grant> = BTreeMap::new();
        for (issuer, member) in path.iter().zip(below_root) {
            let mut next = inherited.clone();
            if let Some(rules) = self.live(issuer, now) {
                for (key, approval) in &rules.approvals {
                    if !rules.is_member(&key.group, member)
                        || !approval.reaches(&key.update, member, now)
                        || !avail.is_available(&key.update)
                    {
                        continue;
                    }
                    let grant = Grant {
                        deadline: approval.deadline,
                        subtree: approval.subtree,
                    };
                    grant_into(&mut next, key.update, grant);
                    if approval.subtree {
                        grant_into(&mut inherited, key.update, grant);
                    }
                }
            }
            avail = Availability {
                everything: false,
                updates: next,
            };
        }
        avail
    }

    /// What `child`, a child of the last node of `path`, may have: computed from this
    /// node's own rules (held in this book) and clipped to this node's availability.
    pub fn child_availability(
        &self,
        path: &[PublicKey],
        child: &PublicKey,
        now: u64,
    ) -> Availability {
        let mut extended = path.to_vec();
        extended.push(*child);
        self.availability(&extended, now)
    }

    /// The receiver's check of an offer: `update` must be available to the last node of
    /// `path`, as computed from the rule sets this node verified itself.
    pub fn check_offer(
        &self,
        path: &[PublicKey],
        update: &Hash,
        now: u64,
    ) -> Result<Grant, RulesError> {
        let avail = self.availability(path, now);
        match avail.grant(update) {
            Some(g) => Ok(*g),
            None if avail.is_available(update) => Ok(Grant {
                deadline: None,
                subtree: false,
            }),
            None => Err(RulesError::NotAvailable { update: *update }),
        }
    }

    /// The next time after `now` at which availability along `path` (and to the last
    /// node's children) can change by itself: a rule set expiring or a deadline
    /// passing. The engine re-evaluates then.
    pub fn next_change(&self, path: &[PublicKey], now: u64) -> Option<u64> {
        path.iter()
            .filter_map(|n| self.held.get(n))
            .filter(|r| r.is_live(now))
            .flat_map(|r| {
                let deadlines = r
                    .rules
                    .approvals
                    .values()
                    .filter(|a| a.halted.is_none())
                    .filter_map(|a| a.deadline);
                // The set lapses once the clock tolerance past its expiry.
                let lapses = r.expires.saturating_add(crate::trust::CLOCK_TOLERANCE);
                std::iter::once(lapses).chain(deadlines)
            })
            .filter(|t| *t > now)
            .min()
    }
}
