//! Reports, as the engine makes and takes them: this node's own states, the signed
//! snapshot it sends its parent (debounced and rate-limited), its children's reports in
//! the roll-up, and the halts the roll-up calls for (PROTOCOL.md §14.7, §15).

use super::*;

impl Engine {
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
        self.rollup.report(me, &groups, &self.refusals)
    }

    /// This node's state for every update it took up.
    pub(super) fn own_states(&self) -> Vec<UpdateState> {
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

    /// Reloads a child's report the driver kept, at start-up. A report that no longer
    /// opens is refused and dropped.
    pub fn restore_report(
        &mut self,
        child: &PeerId,
        bytes: &[u8],
        now: Millis,
    ) -> Result<(), report::ReportError> {
        if !self.children.contains_key(child) {
            return Ok(());
        }
        self.rollup.receive(child, bytes)?;
        // A threshold crossed just before a restart still halts.
        self.check_halts(now);
        Ok(())
    }

    pub(super) fn handle_report(&mut self, child: PeerId, bytes: Arc<[u8]>, now: Millis) {
        let before = self
            .rollup
            .get(&child)
            .map(|r| (r.report.subtree.clone(), r.report.refusals.clone()));
        match self.rollup.receive(&child, &bytes) {
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
            .due_halts(&own.rules)
            .into_iter()
            .filter(|(key, _)| !self.halted.contains(key))
            .map(|(key, reason)| (key, reason.to_string()))
            .collect();
        if halts.is_empty() {
            return;
        }
        let mut rules = own.rules.clone();
        // Versions follow the clock where it is ahead, so that a version whose write
        // was lost is never signed again with other content (PROTOCOL.md §14.1).
        let (version, expires) = ((own.version + 1).max(now / 1000), own.expires);
        let secs = (now / 1000).max(rules.issued);
        for (key, reason) in &halts {
            // The reason comes from a fixed message with numbers: always valid.
            let _ = rules.halt(&key.update, &key.group, secs, reason);
        }
        rules.issued = secs;
        let signed = match SignedRules::sign(&self.key, version, expires.max(secs + 1), rules) {
            Ok(signed) => signed,
            Err(e) => {
                self.failed(format!("cannot sign a halt: {e}"));
                return;
            }
        };
        self.out.push_back(Output::StoreRules {
            issuer: me,
            rules: signed.bytes.clone().into(),
        });
        for (key, reason) in halts {
            self.out.push_back(Output::Event(Event::Halted {
                update: key.update,
                group: key.group.clone(),
                reason,
            }));
            self.halted.insert(key);
        }
        if self.book.apply(signed).is_ok() {
            self.send_rules_to_children(now);
            self.refresh(now);
        }
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
