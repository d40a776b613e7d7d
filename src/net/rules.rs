//! The daemon's side of rules (PROTOCOL.md §14): its admin's changes to this node's
//! own rule set (approve, decline, groups), handed to the engine, which signs them,
//! renews them before they expire and sends them down; and keeping in the store every
//! rule set the engine asks to keep. Verifying and applying rule sets from above, and
//! every version of this node's own, are the engine's.

use super::{Daemon, now_ms, now_secs};
use crate::engine::RuleChange;
use crate::net::command::{
    Answer, ApprovalList, ApprovalStatus, ApproveRequest, Approved, Declined, HaltNote, HaltTerms,
    HaltedApproval, Refusal, RefusalKind, Reply,
};
use crate::rules::{self, Approval, ApprovalKey, FULL_WAVE, Halt, RulesError};
use crate::trust::PublicKey;

impl Daemon {
    /// Keeps a rule set the engine verified and applied (an ancestor's) or signed (this
    /// node's own).
    pub(super) fn keep_rules(&mut self, issuer: &PublicKey, bytes: &[u8]) {
        let what = if *issuer == self.node.node_key.public() {
            "this node's rules for its children signed and kept"
        } else {
            "rules received and kept"
        };
        match self.node.store.put_rules(&issuer.0, bytes) {
            Ok(()) => tracing::info!(issuer = %issuer.node_id(), "{what}"),
            Err(e) => tracing::error!("cannot keep the rule set of {}: {e}", issuer.node_id()),
        }
    }

    /// Has the engine sign a new version of this node's rules: the groups as the store
    /// has them, then `change`.
    pub(super) fn change_rules(&mut self, change: Option<RuleChange>) -> Result<u64, Refusal> {
        let groups = self
            .node
            .store
            .group_members()
            .map_err(|e| Refusal::internal(e.to_string()))?;
        let changes = std::iter::once(RuleChange::Groups(groups)).chain(change);
        match self.engine.change_own_rules(changes, now_ms()) {
            Ok(signed) => Ok(signed.version),
            Err(RulesError::Invalid(e @ rules::InvalidRules::NoSuchGroup { .. })) => {
                Err(Refusal::new(RefusalKind::NotFound, e.to_string()))
            }
            Err(e) => Err(Refusal::bad(e.to_string())),
        }
    }

    /// Signs the rules again if this node has set any: after a change to groups or
    /// children, which the rules list.
    pub(super) fn resign_rules(&mut self) {
        let me = self.node.node_key.public();
        if self.engine.rules().get(&me).is_some()
            && let Err(e) = self.change_rules(None)
        {
            tracing::error!("cannot sign this node's rules again: {e}");
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
        let version = self.change_rules(Some(RuleChange::Approve {
            update,
            group: req.group.clone(),
            approval,
        }))?;
        tracing::info!(update = %update, group = %req.group, wave, subtree = req.subtree, "approved");
        Ok(Answer::Approved(Approved {
            update_id: update,
            group: req.group,
            wave_percent: f64::from(wave) / 100.0,
            deadline,
            subtree: req.subtree,
            rules_version: version,
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
        let version = self.change_rules(Some(RuleChange::Decline {
            update,
            group: group.to_string(),
        }))?;
        tracing::info!(update = %update, group, "approval withdrawn");
        Ok(Answer::Declined(Declined {
            update_id: update,
            group: group.to_string(),
            declined: true,
            rules_version: version,
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
