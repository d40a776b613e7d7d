//! WAN windows in a lane: outside its windows a node's engine asks its parent for
//! nothing, and what is in flight completes, as in the daemon
//! ([`Engine::set_parent_paused`]). The scenario's `starts_at` places virtual time 0
//! in the day.

use super::*;
use crate::net::BandwidthOptions;

/// Milliseconds in a minute.
const MINUTE: Millis = 60_000;

impl Lane<'_> {
    /// Schedules the first opening or closing of the windows of every node of this lane
    /// that keeps any. Each is part of the script: a node waiting for its window is
    /// not a run that has settled.
    pub(super) fn schedule_windows(&mut self) {
        for i in 0..self.nodes.len() as u32 {
            if self.owns(i) {
                self.next_window_change(i);
            }
        }
    }

    /// Minutes since the start, and the minute of the day, now.
    fn minute(&self) -> (Millis, u16) {
        let elapsed = self.now() / MINUTE;
        let of_day = (u64::from(self.fleet.sc.starts_at) + elapsed) % 1440;
        (elapsed, of_day as u16)
    }

    fn next_window_change(&mut self, i: u32) {
        let Some(limits) = self.fleet.wan_windows(i) else {
            return;
        };
        let (elapsed, minute) = self.minute();
        let wait = minutes_to_change(limits, minute);
        if wait < 1440 {
            self.scripted_at(
                (elapsed + u64::from(wait)) * MINUTE,
                Script::WanWindow { node: i },
            );
        }
    }

    /// Tells node `i`'s engine whether its windows are open now.
    pub(super) fn keep_window(&mut self, i: u32) {
        let Some(limits) = self.fleet.wan_windows(i) else {
            return;
        };
        let open = limits.wan_open(self.minute().1);
        self.drive(i, |e, now| {
            e.set_parent_paused(!open, now);
        });
    }

    /// A window of node `i` opened or closed.
    pub(super) fn window_changed(&mut self, i: u32) {
        self.scripted -= 1;
        self.keep_window(i);
        self.next_window_change(i);
    }
}

/// Minutes from `minute` past midnight to the next opening or closing of `limits`'s
/// windows (1,440 if they never change).
pub(super) fn minutes_to_change(limits: &BandwidthOptions, minute: u16) -> u16 {
    let open = limits.wan_open(minute);
    (1..1440u16)
        .find(|d| limits.wan_open((minute + d) % 1440) != open)
        .unwrap_or(1440)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_change_is_the_next_edge_of_any_window() {
        let limits = BandwidthOptions {
            wan_windows: vec![
                "19:00-07:00".parse().expect("valid"),
                "12:00-13:00".parse().expect("valid"),
            ],
            ..BandwidthOptions::default()
        };
        // Closed at 09:00: opens at noon; open at noon: closes at 13:00; open at
        // 23:00: closes at 07:00.
        assert_eq!(minutes_to_change(&limits, 9 * 60), 180);
        assert_eq!(minutes_to_change(&limits, 12 * 60), 60);
        assert_eq!(minutes_to_change(&limits, 23 * 60), 8 * 60);
        assert_eq!(minutes_to_change(&BandwidthOptions::default(), 0), 1440);
    }
}
