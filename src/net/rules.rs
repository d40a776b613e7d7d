//! The daemon's side of rules (PROTOCOL.md §14): this node's own rule set, signed with
//! its node key and kept in the store, changed by its admin (approve, decline, groups),
//! signed again before it expires, and handed to the engine, which sends it down and
//! acts on it. Verifying and applying rule sets from above is the engine's.

use super::{Daemon, now_ms, now_secs};
use crate::net::command::{
    Answer, ApprovalList, ApprovalStatus, ApproveRequest, Approved, Declined, HaltNote, HaltTerms,
    HaltedApproval, Refusal, RefusalKind, Reply,
};
use crate::rules::{self, Approval, ApprovalKey, FULL_WAVE, Halt, Rules, SignedRules};
use crate::trust::PublicKey;

/// How long a rule set this node signs stays valid. It is signed again, as a new
/// version, once half of that has passed, so that children that lose this node keep
/// its rules for days, and rules of a node that is gone for good lapse.
pub const RULES_LIFETIME: u64 = 7 * 24 * 3600;

impl Daemon {
    /// Loads the rule sets kept in the store into the engine, at start-up.
    pub(super) fn restore_rules(&mut self) {
        let sets = match self.node.store.rules() {
            Ok(sets) => sets,
            Err(e) => {
                tracing::error!("cannot read the stored rule sets: {e}");
                return;
            }
        };
        let now = now_ms();
        for (issuer, bytes) in sets {
            if let Err(e) = self.engine.restore_rules(&bytes, now) {
                tracing::error!(
                    issuer = %PublicKey(issuer).node_id(),
                    "a stored rule set is refused and ignored: {e}"
                );
            }
        }
    }

    /// Keeps a rule set of an ancestor that the engine verified and applied.
    pub(super) fn keep_rules(&mut self, issuer: &PublicKey, bytes: &[u8]) {
        match self.node.store.put_rules(&issuer.0, bytes) {
            Ok(()) => tracing::info!(issuer = %issuer.node_id(), "rules received and kept"),
            Err(e) => tracing::error!("cannot keep the rule set of {}: {e}", issuer.node_id()),
        }
    }

    /// Signs a new version of this node's rules: the groups as the store has them, the
    /// approvals as held, changed by `change`; keeps it and hands it to the engine.
    pub(super) fn change_rules(
        &mut self,
        change: impl FnOnce(&mut Rules) -> Result<(), Refusal>,
    ) -> Result<SignedRules, Refusal> {
        let me = self.node.node_key.public();
        let now = now_secs();
        let internal = |e: &dyn std::fmt::Display| Refusal::internal(e.to_string());
        let mut rules = self
            .engine
            .rules()
            .get(&me)
            .map_or_else(|| Rules::new(me, now), |r| r.rules.clone());
        rules.groups = self.node.store.group_members().map_err(|e| internal(&e))?;
        let groups = rules.groups.clone();
        rules
            .approvals
            .retain(|k, _| k.group == rules::ALL || groups.contains_key(&k.group));
        change(&mut rules)?;
        // Issued times only go forward, whatever the clock did.
        rules.issued = now.max(rules.issued);
        // Versions follow the clock where it is ahead, so that a version whose write
        // was lost is never signed again with other content (PROTOCOL.md §14.1).
        let version = self.engine.rules().next_version(&me).max(rules.issued);
        let signed = SignedRules::sign(
            &self.node.node_key,
            version,
            rules.issued + RULES_LIFETIME,
            rules,
        )
        .map_err(|e| Refusal::bad(e.to_string()))?;
        self.node
            .store
            .put_rules(&me.0, &signed.bytes)
            .map_err(|e| internal(&e))?;
        self.engine
            .set_own_rules(signed.clone(), now_ms())
            .map_err(|e| internal(&e))?;
        tracing::info!(version, "rules for this node's children signed");
        Ok(signed)
    }

    /// Signs the rules again if this node has set any: after a change to groups or
    /// children, which the rules list.
    pub(super) fn resign_rules(&mut self) {
        let me = self.node.node_key.public();
        if self.engine.rules().get(&me).is_some()
            && let Err(e) = self.change_rules(|_| Ok(()))
        {
            tracing::error!("cannot sign this node's rules again: {e}");
        }
    }

    /// Signs the rules again once half their lifetime has passed (on the tick).
    pub(super) fn renew_rules(&mut self) {
        let me = self.node.node_key.public();
        let due = self
            .engine
            .rules()
            .get(&me)
            .is_some_and(|r| r.expires.saturating_sub(now_secs()) < RULES_LIFETIME / 2);
        if due {
            self.resign_rules();
        }
    }

    pub(super) fn approve(&mut self, req: ApproveRequest) -> Reply {
        let now = now_secs();
        let percent = |p: &crate::net::command::Percent, what: &str| {
            p.basis_points()
                .map_err(|e| Refusal::bad(format!("{what}: {e}")))
        };
        let wave = match &req.wave {
            Some(w) => percent(w, "wave")?,
            None => FULL_WAVE,
        };
        let deadline = match &req.deadline {
            Some(d) => Some(
                d.unix_secs(now)
                    .map_err(|e| Refusal::bad(format!("deadline: {e}")))?,
            ),
            None => None,
        };
        let halt = match (&req.halt_failures, &req.halt_fraction) {
            (None, None) => None,
            (failures, fraction) => Some(Halt {
                failures: *failures,
                fraction: fraction
                    .as_ref()
                    .map(|f| percent(f, "halt fraction"))
                    .transpose()?,
            }),
        };
        let update = self.resolve(&req.update)?;
        if self.engine.manifest(&update).is_none() {
            return Err(Refusal::new(
                RefusalKind::NotFound,
                format!("no update {update} is known to this node"),
            ));
        }
        if !self.engine.availability().is_available(&update) {
            return Err(Refusal::new(
                RefusalKind::Conflict,
                format!(
                    "update {update} is not available to this node, so it cannot approve it \
                     for its children (a node can only pass on what its parent approved for it)"
                ),
            ));
        }
        let approval = Approval {
            wave,
            deadline,
            subtree: req.subtree,
            halt,
            halted: None,
        };
        let group = req.group.clone();
        let signed = self.change_rules(|rules| {
            rules
                .approve(update, &group, approval)
                .map_err(|e| match e {
                    rules::InvalidRules::NoSuchGroup { .. } => {
                        Refusal::new(RefusalKind::NotFound, e.to_string())
                    }
                    other => Refusal::bad(other.to_string()),
                })
        })?;
        tracing::info!(update = %update, group = %req.group, wave, subtree = req.subtree, "approved");
        Ok(Answer::Approved(Approved {
            update_id: update,
            group: req.group,
            wave_percent: f64::from(wave) / 100.0,
            deadline,
            subtree: req.subtree,
            rules_version: signed.version,
        }))
    }

    pub(super) fn decline(&mut self, update: &str, group: &str) -> Reply {
        let update = self.resolve(update)?;
        let me = self.node.node_key.public();
        let key = ApprovalKey {
            update,
            group: group.to_string(),
        };
        let held = self
            .engine
            .rules()
            .get(&me)
            .is_some_and(|r| r.rules.approvals.contains_key(&key));
        if !held {
            return Err(Refusal::new(
                RefusalKind::NotFound,
                format!("update {update} is not approved for group {group:?} here"),
            ));
        }
        let signed = self.change_rules(|rules| {
            rules.decline(&update, group);
            Ok(())
        })?;
        tracing::info!(update = %update, group, "approval withdrawn");
        Ok(Answer::Declined(Declined {
            update_id: update,
            group: group.to_string(),
            declined: true,
            rules_version: signed.version,
        }))
    }

    /// This node's halted approvals, and why: for the status.
    pub(super) fn halted_approvals(&self) -> Vec<HaltedApproval> {
        let me = self.node.node_key.public();
        self.engine
            .rules()
            .get(&me)
            .into_iter()
            .flat_map(|r| &r.rules.approvals)
            .filter_map(|(k, a)| {
                a.halted.as_ref().map(|h| HaltedApproval {
                    update_id: k.update,
                    group: k.group.clone(),
                    at: h.at,
                    reason: h.reason.clone(),
                })
            })
            .collect()
    }

    /// This node's approvals, each with the members of its group and how many of them
    /// it reaches now.
    pub(super) fn approvals(&self) -> Reply {
        let me = self.node.node_key.public();
        let now = now_secs();
        let Some(own) = self.engine.rules().get(&me) else {
            return Ok(Answer::Approvals(ApprovalList {
                rules_version: None,
                rules_expires: None,
                approvals: Vec::new(),
            }));
        };
        let children: Vec<PublicKey> = self.engine.children().map(|(c, _)| *c).collect();
        let approvals = own
            .rules
            .approvals
            .iter()
            .map(|(k, a)| {
                let members: Vec<&PublicKey> = children
                    .iter()
                    .filter(|c| own.rules.is_member(&k.group, c))
                    .collect();
                let reached = members
                    .iter()
                    .filter(|c| a.reaches(&k.update, c, now))
                    .count();
                ApprovalStatus {
                    update_id: k.update,
                    module: self.engine.manifest(&k.update).map(super::module_name),
                    group: k.group.clone(),
                    wave_percent: f64::from(a.wave) / 100.0,
                    effective_wave_percent: f64::from(a.effective_wave(now)) / 100.0,
                    deadline: a.deadline,
                    subtree: a.subtree,
                    halt: a.halt.map(|h| HaltTerms {
                        failures: h.failures,
                        fraction_percent: h.fraction.map(|f| f64::from(f) / 100.0),
                    }),
                    halted: a.halted.as_ref().map(|h| HaltNote {
                        at: h.at,
                        reason: h.reason.clone(),
                    }),
                    members: members.len(),
                    reached,
                }
            })
            .collect();
        Ok(Answer::Approvals(ApprovalList {
            rules_version: Some(own.version),
            rules_expires: Some(own.expires),
            approvals,
        }))
    }
}
