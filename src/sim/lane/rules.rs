//! A lane's scripted admins: the rule sets each tier's admins set at their moments
//! (the approvals, waves and groups of the scenario), signed and handed to the engine
//! of the node that sets them.

use super::*;

impl Lane<'_> {
    /// Signs and sets the rule sets of one batch at every issuer this lane runs.
    pub(super) fn set_rules(&mut self, b: usize) {
        let now = self.now;
        let fleet = self.fleet;
        let issuers = self.issuers(b);
        for issuer in issuers {
            if !self.nodes[issuer as usize].online {
                // Its admin sets them when it is back: nothing to sign on a node that
                // is down. Later batches still apply.
                self.tally.counters.rules_missed += 1;
                continue;
            }
            let Some(signed) = self.rules_for(issuer, b) else {
                continue;
            };
            if let Ok(mut origin) = fleet.rule_origin.lock() {
                origin.insert(Hash::of(&signed.bytes), b as u32);
            }
            let bytes: Arc<[u8]> = signed.bytes.clone().into();
            let key = fleet.keys[issuer as usize];
            let store = &mut self.nodes[issuer as usize].store;
            store.rules.retain(|(k, _)| *k != key);
            store.rules.push((key, bytes));
            self.tally.rules_issued(b, now);
            self.drive(issuer, |e, now| {
                if let Err(err) = e.set_own_rules(signed, now) {
                    tracing::warn!(node = issuer, error = %err, "simulated rules refused");
                }
            });
        }
    }

    /// Node `issuer`'s rules after batch `b`: what it held, with the batch's approvals
    /// set (an approval that was halted stays halted).
    pub(super) fn rules_for(&self, issuer: u32, b: usize) -> Option<SignedRules> {
        let fleet = self.fleet;
        let sc = fleet.sc;
        let engine = self.nodes[issuer as usize].engine.as_ref()?;
        let me = fleet.keys[issuer as usize];
        let secs = (EPOCH + self.now) / 1000;
        let mut rules = match engine.rules().get(&me) {
            Some(held) => held.rules.clone(),
            None => Rules::new(me, secs),
        };
        rules.issued = secs;
        for g in &sc.groups {
            let children = fleet.children_of(issuer);
            if children.is_empty() || fleet.tier_of(children.start) != g.tier {
                continue;
            }
            let _ = rules.create_group(&g.name);
            for c in children {
                if fleet.in_group(c, g.tier, &g.name) {
                    let _ = rules.assign(&g.name, fleet.keys[c as usize]);
                }
            }
        }
        for &a in &fleet.batches[b].approvals {
            let ap = &sc.approvals[a];
            let update = fleet.manifests[ap.update].id;
            let key = crate::rules::ApprovalKey {
                update,
                group: ap.group.clone(),
            };
            if rules
                .approvals
                .get(&key)
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
            if let Err(e) = rules.approve(update, &ap.group, approval) {
                tracing::warn!(node = issuer, error = %e, "a simulated approval is invalid");
            }
        }
        let version = engine.rules().next_version(&me);
        match SignedRules::sign(
            &fleet.secrets[issuer as usize],
            version,
            secs + RULES_LIFETIME,
            rules,
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(node = issuer, error = %e, "cannot sign simulated rules");
                None
            }
        }
    }
}
