//! A lane's scripted admins: the changes each tier's admins make to their rules at
//! their moments (the approvals, waves and groups of the scenario), handed to the
//! engine of the node that makes them, which signs them.

use super::*;
use crate::engine::RuleChange;
use std::collections::{BTreeMap, BTreeSet};

impl Lane<'_> {
    /// Has every issuer this lane runs set the rules of one batch.
    pub(super) fn set_rules(&mut self, b: usize) {
        let now = self.now();
        let fleet = self.fleet;
        let issuers = self.issuers(b);
        for issuer in issuers {
            if !self.vnet.online(issuer) {
                // Its admin sets them when it is back: nothing to sign on a node that
                // is down. Later batches still apply.
                self.tally.counters.rules_missed += 1;
                continue;
            }
            let Some(changes) = self.changes_for(issuer, b) else {
                continue;
            };
            let mut signed = false;
            self.drive(issuer, |e, now| match e.change_own_rules(changes, now) {
                Ok(rules) => {
                    signed = true;
                    if let Ok(mut origin) = fleet.rule_origin.lock() {
                        origin.insert(Hash::of(&rules.bytes), b as u32);
                    }
                }
                Err(err) => {
                    tracing::warn!(node = issuer, error = %err, "simulated rules refused");
                }
            });
            if signed {
                self.tally.rules_issued(b, now);
            }
        }
    }

    /// What node `issuer`'s admin changes in batch `b`: its groups, and the batch's
    /// approvals (an approval that was halted stays halted).
    fn changes_for(&self, issuer: u32, b: usize) -> Option<Vec<RuleChange>> {
        let fleet = self.fleet;
        let sc = fleet.sc;
        let engine = self.vnet.engine(issuer)?;
        let held = engine.rules().get(&fleet.keys[issuer as usize]);
        let mut groups: BTreeMap<String, BTreeSet<PublicKey>> =
            held.map(|r| r.rules.groups.clone()).unwrap_or_default();
        for g in &sc.groups {
            let children = fleet.children_of(issuer);
            if children.is_empty() || fleet.tier_of(children.start) != g.tier {
                continue;
            }
            let members = groups.entry(g.name.clone()).or_default();
            for c in children {
                if fleet.in_group(c, g.tier, &g.name) {
                    members.insert(fleet.keys[c as usize]);
                }
            }
        }
        let mut changes = vec![RuleChange::Groups(groups)];
        for &a in &fleet.batches[b].approvals {
            let ap = &sc.approvals[a];
            let update = fleet.manifests[ap.update].id;
            let key = crate::rules::ApprovalKey {
                update,
                group: ap.group.clone(),
            };
            if held
                .and_then(|r| r.rules.approvals.get(&key))
                .is_some_and(|held| held.halted.is_some())
            {
                continue;
            }
            let halt = (ap.halt_failures.is_some() || ap.halt_fraction.is_some()).then_some(Halt {
                failures: ap.halt_failures,
                fraction: ap.halt_fraction,
            });
            let approval = Approval {
                wave: ap.wave,
                deadline: ap.deadline.map(|d| (EPOCH + d) / 1000),
                subtree: ap.subtree,
                halt,
                halted: None,
            };
            changes.push(RuleChange::Approve {
                update,
                group: ap.group.clone(),
                approval,
            });
        }
        Some(changes)
    }
}
