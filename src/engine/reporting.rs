//! Reports, as the engine makes and takes them: this node's own states and the
//! failure statements that prove its failures, the signed snapshot it sends its parent
//! (debounced and rate-limited), its children's reports in the roll-up (each child's
//! paced, so that no child can make this node check signatures without limit), which
//! children are clients or away, and the halts the proven failures call for
//! (PROTOCOL.md §14.7, §15).

use super::*;
use crate::report::Own;
use crate::report::proof::{self, ProofError};
use crate::trust::Envelope;
use std::collections::BTreeSet;

/// The least time between two reports of one child that this node takes in: a child
/// that sends faster has only its newest taken, when its turn comes.
pub const REPORT_SPACING: Millis = 250;
/// Signature checks per second that one child's reports may cost on average: after a
/// report that took `n` checks (its envelope's, and its proof's that the cache did not
/// spare), the child's next report waits `n / CHECK_RATE` seconds if that is longer
/// than [`REPORT_SPACING`]. At 50 µs a check (180 µs on a busy 2-core machine), a
/// child sending new proofs as fast as it can costs this node 1.3% of a core (4.6%);
/// an honest child's full proof of 1,024 new failures (2,049 checks) delays its next
/// report by 8 s.
pub const CHECK_RATE: u64 = 256;

/// What a parent knows of its children that reports need: which are clients, which
/// are away, and each one's turn for its next report.
#[derive(Debug, Default)]
pub(super) struct Intake {
    /// Children certified as clients: their reports may carry nothing about others.
    clients: BTreeSet<PeerId>,
    /// Certified children not connected, since when.
    away: BTreeMap<PeerId, Millis>,
    /// Per child that reported: when its next report may be taken in, and the newest
    /// one waiting for that time.
    turns: BTreeMap<PeerId, Turn>,
    /// Reports waiting in `turns`.
    waiting: usize,
}

#[derive(Debug, Default)]
struct Turn {
    next: Millis,
    waiting: Option<Arc<[u8]>>,
}

/// What this node proves its own failures with: its certificate and its statements.
#[derive(Debug, Default)]
pub(super) struct OwnProof {
    cert: Option<Envelope>,
    /// Its failure statements, by update: one per update it failed, while it has.
    failures: BTreeMap<Hash, Envelope>,
}

impl Engine {
    /// Declares that `child` (certified, client or not) is not connected yet.
    pub(super) fn declare_child(&mut self, child: PeerId, client: bool, now: Millis) {
        if client {
            self.intake.clients.insert(child);
        } else {
            self.intake.clients.remove(&child);
        }
        if self.children.get(&child) != Some(&true) {
            self.intake.away.entry(child).or_insert(now);
        }
    }

    /// `child` connected: what it reports is fresh again.
    pub(super) fn child_up(&mut self, child: &PeerId) {
        self.intake.away.remove(child);
    }

    /// `child` went away: the parent hears of it, so that the tree shows its state
    /// as stale.
    pub(super) fn child_down(&mut self, child: PeerId, now: Millis) {
        self.intake.away.insert(child, now);
        if self.rollup.get(&child).is_some() {
            self.changed(now, true);
        }
    }

    /// Forgets what reports knew of `child` (revoked).
    pub(super) fn forget_child_reports(&mut self, child: &PeerId) {
        self.intake.clients.remove(child);
        self.intake.away.remove(child);
        if let Some(turn) = self.intake.turns.remove(child)
            && turn.waiting.is_some()
        {
            self.intake.waiting -= 1;
        }
    }

    /// This node's own membership certificate (the last of its chain, renewed on every
    /// connection to its parent): what proofs of its failures, and of its children's,
    /// go up with. Refused unless its parent signed it for this node.
    pub fn set_certificate(&mut self, cert: Envelope) -> Result<(), ProofError> {
        let parent = *self.parent().ok_or(ProofError::NoPath)?;
        let m = proof::open_certificate(&cert, &parent)?;
        if m.node != self.me() {
            return Err(ProofError::NotTheReporter {
                named: m.node,
                reporter: self.me(),
            });
        }
        self.own_proof.cert = Some(cert);
        Ok(())
    }

    /// Something a report shows may have changed: the parent hears of it shortly, never
    /// faster than the report byte rate allows, and, for mere progress (`state` false),
    /// no sooner than the report interval.
    pub(super) fn changed(&mut self, now: Millis, state: bool) {
        if self.parent_connected() != Some(true) {
            return;
        }
        let by_rate = (self.last_report_len as u64)
            .saturating_mul(1000)
            .checked_div(self.config.report_rate)
            .unwrap_or(0);
        let spacing = if state {
            by_rate
        } else {
            by_rate.max(self.config.report_interval)
        };
        let due = (now + self.config.report_delay).max(self.last_report_at + spacing);
        self.report_due = Some(self.report_due.map_or(due, |d| d.min(due)));
    }

    /// The sequence number of the last report sent: the driver keeps it, so that the
    /// next run continues above it (PROTOCOL.md §15.1) whatever the clock does.
    pub fn report_seq(&self) -> u64 {
        self.report_seq
    }

    /// Continues report sequence numbers above `seq` (kept by an earlier run).
    pub fn set_report_seq(&mut self, seq: u64) {
        self.report_seq = self.report_seq.max(seq);
    }

    /// What this node would report now: its own state and its subtree's roll-up. On the
    /// root, the whole fleet.
    pub fn report(&self, now: Millis) -> Report {
        let me = NodeDetail {
            lost: None,
            node: self.me(),
            depth: self.path.len().saturating_sub(1) as u32,
            issued: now / 1000,
            parent: self.parent().copied(),
            updates: self.own_states(),
        };
        let groups = self
            .book
            .get(&self.me())
            .map(|r| r.rules.groups.clone())
            .unwrap_or_default();
        let lost: BTreeMap<PublicKey, u64> = self
            .intake
            .away
            .iter()
            .filter(|(c, _)| self.rollup.get(c).is_some())
            .map(|(c, since)| (*c, since / 1000))
            .collect();
        let failures: Vec<Envelope> = self.own_proof.failures.values().cloned().collect();
        self.rollup.report(Own {
            cert: self.own_proof.cert.as_ref(),
            failures: &failures,
            lost: &lost,
            ..Own::new(me, &groups, &self.refusals)
        })
    }

    /// Signs a statement for each update this node failed that has none fresh, and
    /// drops those of updates it no longer failed (PROTOCOL.md §15.7). Without a
    /// certificate they could prove nothing: none are made.
    fn refresh_failures(&mut self, now: Millis) {
        let secs = now / 1000;
        let failed: BTreeSet<Hash> = if self.own_proof.cert.is_some() {
            self.own_states()
                .into_iter()
                .filter(|s| s.state == State::Failed)
                .map(|s| s.update)
                .collect()
        } else {
            BTreeSet::new()
        };
        let failures = &mut self.own_proof.failures;
        failures
            .retain(|u, e| failed.contains(u) && secs < e.seq.saturating_add(proof::FAILURE_RENEW));
        for u in failed {
            failures
                .entry(u)
                .or_insert_with(|| proof::sign_failure(&self.key, &self.path, u, secs));
        }
    }

    /// This node's state for every update it took up.
    pub fn own_states(&self) -> Vec<UpdateState> {
        self.order
            .iter()
            .filter_map(|id| self.updates.get(id).map(|u| (id, u)))
            .filter(|(_, u)| u.stored)
            .take(report::MAX_UPDATES)
            .map(|(id, u)| {
                let done = u.bytes_held();
                let total: u64 = u.chunks.iter().map(|c| u64::from(c.1)).sum();
                let by_chunks = if !u.awaiting_local && u.have.is_full() {
                    State::Downloaded
                } else if done > 0 || u.busy.count() > 0 {
                    State::Downloading
                } else {
                    State::Available
                };
                let (state, reason) = match &u.outcome {
                    Some(Outcome::Installed(note)) => (State::Installed, note.clone()),
                    Some(Outcome::Failed(reason)) => (State::Failed, Some(reason.clone())),
                    Some(Outcome::NotInstalled(note)) => (by_chunks, note.clone()),
                    None => (by_chunks, None),
                };
                // A store that cannot be written fails whatever it has not completed.
                let (state, reason) = match &self.store_fault {
                    Some(fault) if matches!(state, State::Available | State::Downloading) => {
                        (State::Failed, Some(fault.clone()))
                    }
                    _ => (state, reason),
                };
                let mut state = UpdateState::new(*id, state, done, total);
                state.reason = reason;
                state.bytes_done = done.min(total);
                state.bytes_total = total;
                state.from_parent = u.from_parent;
                state.from_siblings = u.from_siblings;
                state
            })
            .collect()
    }

    /// The installer's word on an update (see [`Outcome`]). Reported up if it changed.
    pub fn set_outcome(&mut self, update: &Hash, outcome: Outcome, now: Millis) {
        let Some(u) = self.updates.get_mut(update) else {
            return;
        };
        let fit = |s: &Option<String>| s.as_deref().map(report::sanitize_reason);
        let outcome = match outcome {
            Outcome::Installed(note) => Outcome::Installed(fit(&note)),
            Outcome::Failed(reason) => Outcome::Failed(report::sanitize_reason(&reason)),
            Outcome::NotInstalled(note) => Outcome::NotInstalled(fit(&note)),
        };
        if u.outcome.as_ref() != Some(&outcome) {
            u.outcome = Some(outcome);
            self.changed(now, true);
        }
    }

    /// The newest report of each child.
    pub fn rollup(&self) -> &Rollup {
        &self.rollup
    }

    /// Reloads a child's report the driver kept, at start-up ([`Engine::resume`]). A
    /// report that no longer opens is refused and dropped.
    pub(super) fn restore_report(
        &mut self,
        child: &PeerId,
        bytes: &[u8],
        now: Millis,
    ) -> Result<(), report::ReportError> {
        if !self.children.contains_key(child) {
            return Ok(());
        }
        let client = self.intake.clients.contains(child);
        self.rollup.receive(child, client, bytes, now / 1000)?;
        // A threshold crossed just before a restart still halts.
        self.check_halts(now);
        Ok(())
    }

    /// A report from a connected child: taken in now if it is the child's turn, else
    /// kept (in place of any other waiting) until it is.
    pub(super) fn handle_report(&mut self, child: PeerId, bytes: Arc<[u8]>, now: Millis) {
        let turn = self.intake.turns.entry(child).or_default();
        if now < turn.next {
            if turn.waiting.replace(bytes).is_none() {
                self.intake.waiting += 1;
            }
            return;
        }
        self.take_report(child, bytes, now);
    }

    /// Takes in the reports whose turn has come.
    pub(super) fn take_waiting_reports(&mut self, now: Millis) {
        if self.intake.waiting == 0 {
            return;
        }
        let due: Vec<(PeerId, Arc<[u8]>)> = self
            .intake
            .turns
            .iter_mut()
            .filter(|(_, t)| t.next <= now)
            .filter_map(|(c, t)| t.waiting.take().map(|b| (*c, b)))
            .collect();
        self.intake.waiting -= due.len();
        for (child, bytes) in due {
            self.take_report(child, bytes, now);
        }
    }

    /// When the next waiting report's turn comes.
    pub(super) fn next_waiting_report(&self) -> Option<Millis> {
        if self.intake.waiting == 0 {
            return None;
        }
        self.intake
            .turns
            .values()
            .filter(|t| t.waiting.is_some())
            .map(|t| t.next)
            .min()
    }

    /// Opens, checks and applies a child's report, and sets the child's next turn by
    /// what it cost.
    fn take_report(&mut self, child: PeerId, bytes: Arc<[u8]>, now: Millis) {
        let checks_before = self.rollup.signature_checks();
        let client = self.intake.clients.contains(&child);
        let before = self
            .rollup
            .get(&child)
            .map(|r| (r.report.subtree.clone(), r.report.refusals.clone()));
        let received = self.rollup.receive(&child, client, &bytes, now / 1000);
        // The envelope's signature, and the proof's checks the cache did not spare.
        let checks = 1 + self.rollup.signature_checks() - checks_before;
        self.intake.turns.entry(child).or_default().next =
            now + REPORT_SPACING.max(checks * 1000 / CHECK_RATE);
        match received {
            Ok(Received::Applied) => {
                self.out.push_back(Output::StoreReport {
                    child,
                    report: bytes,
                });
                // New counts or refusals below are news; only new bytes so far are not.
                let state = self
                    .rollup
                    .get(&child)
                    .map(|r| (&r.report.subtree, &r.report.refusals))
                    != before
                        .as_ref()
                        .map(|(subtree, refusals)| (subtree, refusals));
                self.changed(now, state);
                self.check_halts(now);
            }
            Ok(Received::Duplicate | Received::Stale { .. }) => {}
            Err(e) => {
                let why = format!("sent a report that is refused: {e}");
                self.handle_offence(child, Offence::BadData, &why, now);
            }
        }
    }

    /// Halts this node's own approvals whose failure threshold the children's reports
    /// pass (PROTOCOL.md §14.7): a new version of its rules, signed here, kept by the
    /// driver and sent down like any other.
    pub(super) fn check_halts(&mut self, now: Millis) {
        let me = self.me();
        let Some(own) = self.book.get(&me) else {
            return;
        };
        let halts: Vec<(ApprovalKey, String)> = self
            .rollup
            .due_halts(&own.rules, now / 1000)
            .into_iter()
            .filter(|(key, _)| !self.halted.contains(key))
            .map(|(key, reason)| (key, reason.to_string()))
            .collect();
        if halts.is_empty() {
            return;
        }
        let secs = now / 1000;
        let signed = self.sign_own(now, |rules| {
            for (key, reason) in &halts {
                rules.halt(&key.update, &key.group, secs, reason)?;
            }
            Ok(())
        });
        let signed = match signed {
            Ok(signed) => signed,
            Err(e) => {
                self.failed(format!("cannot sign a halt: {e}"));
                return;
            }
        };
        for (key, reason) in halts {
            self.out.push_back(Output::Event(Event::Halted {
                update: key.update,
                group: key.group.clone(),
                reason,
            }));
            self.halted.insert(key);
        }
        self.apply_own(signed, now);
    }

    /// Sends the parent a signed snapshot, if it is connected.
    pub(super) fn send_report(&mut self, now: Millis) {
        self.report_due = None;
        let Some(parent) = self.parent().copied() else {
            return;
        };
        if self.parent_connected() != Some(true) {
            return;
        }
        self.refresh_failures(now);
        let mut report = self.report(now);
        // Compared with its time cleared, as the last one is kept.
        let issued = std::mem::take(&mut report.issued);
        if self.last_report.as_ref() == Some(&report) {
            return;
        }
        report.issued = issued;
        let seq = now.max(self.report_seq + 1);
        match SignedReport::sign(&self.key, seq, report) {
            Ok(signed) => {
                self.report_seq = seq;
                self.last_report_at = now;
                self.last_report_len = signed.bytes.len();
                self.stats.reports_sent += 1;
                self.out.push_back(Output::Send {
                    to: parent,
                    msg: Control::Report {
                        report: signed.bytes.into(),
                    },
                });
                let mut kept = signed.report;
                kept.issued = 0;
                self.last_report = Some(kept);
            }
            Err(e) => self.failed(format!("cannot sign this node's report: {e}")),
        }
    }
}
