//! Time: the one timer the driver keeps for the engine ([`Engine::poll_timeout`]), and
//! what comes due when it fires ([`Engine::handle_timeout`]): dials, fetch deadlines and
//! stalls, resting chunks, reports, announcements, rule changes, the renewal of this node's own rules, and liveness.

use super::*;

impl Engine {
    /// Time has reached `now`: retry dials, give up on overdue fetches, wake resting chunks.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.take_waiting_reports(now);
        if self.next_install_retry().is_some_and(|t| t <= now) {
            self.installer_wake(now);
        }
        if let Some((parent, link)) = &mut self.parent
            && let ParentLink::Down { retry_at, attempts } = *link
            && retry_at <= now
        {
            *link = ParentLink::Dialing { attempts };
            self.out.push_back(Output::Dial { peer: *parent });
        }
        self.redial_siblings(now);
        let overdue: Vec<FetchId> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.stats.fetch_timeouts += 1;
            self.end_fetch(id, Some(now));
        }
        self.check_liveness(now);
        self.stats.fetch_timeouts += self.check_source_stalls(now) as u64;
        self.end_backoffs(now);
        self.check_stalls(now);
        for u in self.updates.values_mut() {
            let (awake, still): (Vec<_>, Vec<_>) = u.resting.iter().partition(|(_, at)| *at <= now);
            u.resting = still;
            for (i, _) in awake {
                u.busy.clear(i);
            }
        }
        if self.report_due.is_some_and(|t| t <= now) {
            self.send_report(now);
        }
        if self.announce_due.is_some_and(|t| t <= now) {
            self.announce(now);
        }
        self.renew_own_rules(now);
        if self.next_change.is_some_and(|t| t <= now) {
            // A deadline passed or a rule set expired; children are told by their own
            // clocks, and offered what they gained by this one.
            self.refresh(now);
        } else {
            self.schedule(now);
        }
    }

    /// When [`Engine::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let dial = match &self.parent {
            Some((_, ParentLink::Down { retry_at, .. })) => Some(*retry_at),
            _ => None,
        };
        let fetch = self.fetches.values().map(|f| f.deadline).min();
        let rest = self
            .updates
            .values()
            .flat_map(|u| u.resting.iter().map(|(_, at)| *at))
            .min();
        [
            dial,
            fetch,
            rest,
            self.next_change,
            self.report_due,
            self.announce_due,
            self.next_stall(),
            self.next_sibling_redial(),
            self.next_source_check(),
            self.next_liveness_check(),
            self.next_waiting_report(),
            self.next_install_retry(),
            self.next_renewal(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
