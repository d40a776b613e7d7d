//! This node's own rule set (PROTOCOL.md §14.1): the one place it is signed. The
//! admin's changes ([`RuleChange`], through [`Engine::change_own_rules`]), the halts the
//! children's reports call for (`reporting`) and the renewal before the set expires (a
//! timer) all come here, and every version is signed with one formula: the set is
//! issued at the later of now and its last issue, and its version is the larger of the
//! last version + 1 and that issue time, so that versions only go up, across restarts
//! too (the store keeps the last version), and a version whose write was lost is never
//! signed again with other content. It lives [`Config::rules_lifetime`] and is signed
//! again once half of that has passed. Every new version is stored
//! ([`Output::StoreRules`]) before it is sent to the children and acted on.

use super::*;
use crate::rules::{Approval, InvalidRules, Rules};
use std::collections::BTreeSet;

/// How long a rule set this node signs stays valid, by default. It is signed again, as
/// a new version, once half of that has passed, so that children that lose this node
/// keep its rules for days, and rules of a node that is gone for good lapse.
pub const RULES_LIFETIME: u64 = 7 * 24 * 3600;

/// How long a renewal that could not be signed waits before it is tried again.
const RENEW_RETRY: Millis = 60_000;

/// One change an admin makes to this node's rules for its children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleChange {
    /// The groups and their members, as the admin keeps them; approvals for a group
    /// that is gone are withdrawn.
    Groups(BTreeMap<String, BTreeSet<PublicKey>>),
    /// Approves `update` for `group` on these terms, replacing earlier ones (a halted
    /// approval set again is resumed).
    Approve {
        update: Hash,
        group: String,
        approval: Approval,
    },
    /// Withdraws the approval of `update` for `group`.
    Decline { update: Hash, group: String },
}

impl RuleChange {
    fn apply(self, rules: &mut Rules) -> Result<(), InvalidRules> {
        match self {
            RuleChange::Groups(groups) => {
                rules.groups = groups;
                let groups = &rules.groups;
                rules
                    .approvals
                    .retain(|k, _| k.group == crate::rules::ALL || groups.contains_key(&k.group));
            }
            RuleChange::Approve {
                update,
                group,
                approval,
            } => rules.approve(update, &group, approval)?,
            RuleChange::Decline { update, group } => {
                rules.decline(&update, &group);
            }
        }
        Ok(())
    }
}

/// What the renewal of this node's own rule set goes by.
#[derive(Default)]
pub(super) struct Renewal {
    /// When the held set expires (Unix seconds), if this node holds one of its own: kept
    /// here as the book changes ([`Engine::note_own_expiry`]) because
    /// [`Engine::poll_timeout`] asks after every input.
    own_expires: Option<u64>,
    /// When a renewal that failed is tried again.
    retry_at: Option<Millis>,
}

impl Engine {
    /// Signs a new version of this node's rules: the ones held (or none), changed by
    /// `changes` in order. It is stored, sent to the children and acted on through the
    /// outputs; nothing changes if a change is invalid.
    pub fn change_own_rules(
        &mut self,
        changes: impl IntoIterator<Item = RuleChange>,
        now: Millis,
    ) -> Result<Arc<SignedRules>, RulesError> {
        let signed = self.sign_own(now, |rules| {
            changes.into_iter().try_for_each(|c| c.apply(rules))
        })?;
        self.apply_own(signed.clone(), now);
        Ok(signed)
    }

    /// Signs the next version of this node's rules, the held ones (or empty ones) as
    /// `edit` changes them, and asks for it to be stored. The one version formula.
    pub(super) fn sign_own(
        &mut self,
        now: Millis,
        edit: impl FnOnce(&mut Rules) -> Result<(), InvalidRules>,
    ) -> Result<Arc<SignedRules>, RulesError> {
        let me = self.me();
        let secs = now / 1000;
        let mut rules = self
            .book
            .get(&me)
            .map_or_else(|| Rules::new(me, secs), |r| r.rules.clone());
        edit(&mut rules)?;
        // Issued times only go forward, whatever the clock did.
        rules.issued = secs.max(rules.issued);
        // Versions follow the clock where it is ahead, so that a version whose write
        // was lost is never signed again with other content (PROTOCOL.md §14.1).
        let version = self.book.next_version(&me).max(rules.issued);
        let expires = rules
            .issued
            .saturating_add(self.config.rules_lifetime.max(1));
        let signed = Arc::new(SignedRules::sign(&self.key, version, expires, rules)?);
        self.out.push_back(Output::StoreRules {
            issuer: me,
            rules: signed.bytes.clone().into(),
        });
        Ok(signed)
    }

    /// Applies a rule set just signed here: sends it to the children and acts on it.
    pub(super) fn apply_own(&mut self, signed: Arc<SignedRules>, now: Millis) {
        self.renewal.retry_at = None;
        // Newer than the one held by construction: it always applies.
        if let Ok(true) = self.book.apply_shared(signed) {
            // An approval set again (resumed, or changed) may be halted again.
            let own = self.book.get(&self.me()).map(|r| &r.rules.approvals);
            self.halted.retain(|k| {
                own.and_then(|a| a.get(k))
                    .is_some_and(|a| a.halted.is_some())
            });
            self.send_rules_to_children(now);
            self.refresh(now);
            self.check_halts(now);
        }
    }

    /// When this node's own rules are due to be signed again: once half their lifetime
    /// has passed, or when a renewal that failed is tried again.
    pub(super) fn next_renewal(&self) -> Option<Millis> {
        let due = self
            .renewal
            .own_expires?
            .saturating_sub(self.config.rules_lifetime / 2)
            .saturating_mul(1000);
        Some(self.renewal.retry_at.map_or(due, |r| r.max(due)))
    }

    /// Takes note of when this node's own rule set expires, after the book changed.
    pub(super) fn note_own_expiry(&mut self) {
        self.renewal.own_expires = self.book.get(&self.me()).map(|r| r.expires);
    }

    /// Signs this node's rules again, unchanged, if they are due ([`Self::next_renewal`]).
    pub(super) fn renew_own_rules(&mut self, now: Millis) {
        if self.next_renewal().is_none_or(|t| t > now) {
            return;
        }
        match self.sign_own(now, |_| Ok(())) {
            Ok(signed) => self.apply_own(signed, now),
            Err(e) => {
                self.renewal.retry_at = Some(now + RENEW_RETRY);
                self.failed(format!("cannot sign this node's rules again: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{ALL, FULL_WAVE};

    /// A time well after the epoch, in ms: rules carry Unix seconds.
    const T: Millis = 1_800_000_000_000;
    const HOUR: Millis = 3_600_000;

    fn root(seed: u8) -> Engine {
        let key = SecretKey::from_seed([seed; 32]);
        let me = key.public();
        Engine::new(Role::Root, me, key, vec![me], Config::default(), 1)
    }

    fn approve(n: u8) -> RuleChange {
        RuleChange::Approve {
            update: Hash::of(&[n]),
            group: ALL.into(),
            approval: Approval::wave(FULL_WAVE),
        }
    }

    fn version(e: &Engine) -> u64 {
        e.rules().version(&e.me()).expect("own rules held")
    }

    /// The own rule sets the engine asked to store, in order.
    fn stored(e: &mut Engine) -> Vec<Arc<[u8]>> {
        let me = e.me();
        std::iter::from_fn(|| e.poll_output())
            .filter_map(|o| match o {
                Output::StoreRules { issuer, rules } if issuer == me => Some(rules),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn versions_follow_the_clock_and_only_go_up() {
        let mut e = root(1);
        let first = e.change_own_rules([approve(1)], T).expect("signed");
        assert_eq!(
            first.version,
            T / 1000,
            "the first version is the issue time"
        );
        assert_eq!(first.expires, T / 1000 + RULES_LIFETIME);
        // Twice in one second: the second is one higher.
        let second = e.change_own_rules([approve(2)], T + 10).expect("signed");
        assert_eq!(second.version, first.version + 1);
        // The clock goes back an hour: still higher, and issued no earlier.
        let back = e.change_own_rules([approve(3)], T - HOUR).expect("signed");
        assert_eq!(back.version, second.version + 1);
        assert_eq!(back.rules.issued, T / 1000);
        // An hour later: the clock again.
        let later = e.change_own_rules([approve(4)], T + HOUR).expect("signed");
        assert_eq!(later.version, (T + HOUR) / 1000);
        assert_eq!(stored(&mut e).len(), 4, "every version is stored");
    }

    #[test]
    fn an_invalid_change_signs_nothing() {
        let mut e = root(1);
        e.change_own_rules([approve(1)], T).expect("signed");
        let held = version(&e);
        let none = RuleChange::Approve {
            update: Hash::of(b"x"),
            group: "nobody".into(),
            approval: Approval::wave(FULL_WAVE),
        };
        assert!(matches!(
            e.change_own_rules([approve(2), none], T + HOUR),
            Err(RulesError::Invalid(InvalidRules::NoSuchGroup { .. }))
        ));
        assert_eq!(version(&e), held);
        assert_eq!(
            e.rules().get(&e.me()).map(|r| r.rules.approvals.len()),
            Some(1)
        );
    }

    #[test]
    fn groups_that_are_gone_take_their_approvals_with_them() {
        let mut e = root(1);
        let member = SecretKey::from_seed([9; 32]).public();
        let groups = BTreeMap::from([("east".to_string(), BTreeSet::from([member]))]);
        let east = RuleChange::Approve {
            update: Hash::of(b"u"),
            group: "east".into(),
            approval: Approval::wave(FULL_WAVE),
        };
        e.change_own_rules([RuleChange::Groups(groups), east, approve(1)], T)
            .expect("signed");
        let gone = e
            .change_own_rules([RuleChange::Groups(BTreeMap::new())], T + 1000)
            .expect("signed");
        let keys: Vec<&str> = gone.rules.approvals.keys().map(|k| &*k.group).collect();
        assert_eq!(keys, vec![ALL]);
    }

    #[test]
    fn rules_are_renewed_at_half_their_lifetime_with_a_higher_version() {
        let mut e = root(1);
        let first = e.change_own_rules([approve(1)], T).expect("signed");
        stored(&mut e);
        let due = (first.expires - RULES_LIFETIME / 2) * 1000;
        assert!(e.poll_timeout().is_some_and(|t| t <= due));
        e.handle_timeout(due - 1000);
        assert_eq!(version(&e), first.version, "renewed too early");
        e.handle_timeout(due);
        let renewed = e.rules().get(&e.me()).expect("held").clone();
        assert_eq!(renewed.version, due / 1000);
        assert_eq!(renewed.expires, due / 1000 + RULES_LIFETIME);
        assert_eq!(renewed.rules.approvals, first.rules.approvals);
        assert_eq!(stored(&mut e).len(), 1, "the renewal is stored");
    }

    #[test]
    fn a_halt_is_a_version_like_any_other() {
        let mut e = root(1);
        let first = e.change_own_rules([approve(1)], T).expect("signed");
        let key = ApprovalKey {
            update: Hash::of(&[1]),
            group: ALL.into(),
        };
        let halted = e
            .sign_own(T + 10, |r| {
                r.halt(&key.update, &key.group, T / 1000, "failed")
                    .map(|_| ())
            })
            .expect("signed");
        e.apply_own(halted.clone(), T + 10);
        assert_eq!(halted.version, first.version + 1);
        let resumed = e.change_own_rules([approve(1)], T + 20).expect("signed");
        assert_eq!(resumed.version, first.version + 2);
        assert!(resumed.rules.approvals[&key].halted.is_none());
    }

    #[test]
    fn versions_keep_going_up_after_a_restart_with_the_clock_behind() {
        let mut e = root(1);
        e.change_own_rules([approve(1)], T + HOUR).expect("signed");
        e.change_own_rules([approve(2)], T + HOUR).expect("signed");
        let held = version(&e);
        let kept = stored(&mut e);
        // The node restarts from its store (which keeps the last version) with its
        // clock an hour behind.
        let mut again = root(1);
        let last = kept.last().expect("stored").clone();
        let saved = Saved {
            rules: vec![(again.me(), last)],
            ..Saved::default()
        };
        assert!(again.resume(&saved, T).is_empty(), "restored");
        assert_eq!(version(&again), held);
        let next = again.change_own_rules([approve(3)], T).expect("signed");
        assert_eq!(next.version, held + 1);
        assert_eq!(next.rules.approvals.len(), 3);
    }
}
