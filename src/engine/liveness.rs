//! Liveness and clocks: every session carries a `Ping` each [`Config::heartbeat`], and a
//! peer not heard from for [`Config::silence`] is taken for gone, whatever its
//! connection says (a frozen process keeps its TCP connection up). Pings carry the
//! sender's clock, so a node knows how far its own clock is from its parent's, and says
//! so wherever a time check fails (PROTOCOL.md §12.1).
//!
//! [`Config::heartbeat`]: super::Config::heartbeat
//! [`Config::silence`]: super::Config::silence

use super::{Control, Engine, Event, Millis, Output, PeerId};
use crate::trust::CLOCK_TOLERANCE;

/// Clock offsets smaller than this are not worth mentioning.
const NOTEWORTHY_OFFSET: Millis = CLOCK_TOLERANCE * 1000;

impl Engine {
    /// Something came from `peer` on its session: it is alive.
    pub(super) fn heard(&mut self, peer: PeerId, now: Millis) {
        if let Some(at) = self.heard.get_mut(&peer) {
            *at = now;
        }
    }

    /// A session with `peer` came up: its silence is counted from now.
    pub(super) fn session_up(&mut self, peer: PeerId, now: Millis) {
        if self.config.heartbeat > 0 {
            self.heard.insert(peer, now);
            self.next_heartbeat
                .get_or_insert(now + self.config.heartbeat);
        }
    }

    /// A session with `peer` ended.
    pub(super) fn session_down(&mut self, peer: &PeerId) {
        self.heard.remove(peer);
    }

    /// The parent's clock, from a `Ping` or its welcome: `time` (its Unix ms) at our
    /// `now`.
    pub fn set_parent_clock(&mut self, time: Millis, now: Millis) {
        self.clock_offset = Some(time as i64 - now as i64);
    }

    /// How far the parent's clock is ahead of this node's, in ms (negative: behind),
    /// as last measured.
    pub fn clock_offset(&self) -> Option<i64> {
        self.clock_offset
    }

    /// "this node's clock is 8 days ahead of its parent's", when it is noticeably off.
    pub fn clock_note(&self) -> Option<String> {
        clock_note(self.clock_offset?)
    }

    /// Gives up the peers that stayed silent, and sends every session a `Ping` when one
    /// is due.
    pub(super) fn check_liveness(&mut self, now: Millis) {
        if self.config.heartbeat == 0 {
            return;
        }
        let silent: Vec<(PeerId, Millis)> = self
            .heard
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) >= self.config.silence)
            .map(|(p, at)| (*p, *at))
            .collect();
        for (peer, since) in silent {
            self.heard.remove(&peer);
            if self.is_parent(&peer) {
                self.parent_silent_since = Some(since);
            }
            self.out
                .push_back(Output::Event(Event::Unresponsive { peer, since }));
            self.out.push_back(Output::Disconnect {
                peer,
                reason: format!(
                    "nothing heard for {} s: taken for gone",
                    now.saturating_sub(since) / 1000
                ),
            });
            self.handle_disconnected(peer, now);
        }
        if self.next_heartbeat.is_none_or(|t| t > now) {
            return;
        }
        self.next_heartbeat = Some(now + self.config.heartbeat);
        let peers: Vec<PeerId> = self.heard.keys().copied().collect();
        for to in peers {
            self.out.push_back(Output::Send {
                to,
                msg: Control::Ping { time: now },
            });
        }
        if self.heard.is_empty() {
            self.next_heartbeat = None;
        }
    }

    /// When the next `Ping`s are due, or a peer's silence runs out, whichever is first.
    pub(super) fn next_liveness_check(&self) -> Option<Millis> {
        let silence = self.heard.values().min().map(|at| at + self.config.silence);
        self.next_heartbeat.into_iter().chain(silence).min()
    }

    /// Since when the parent has been silent, if it was given up for that and has not
    /// been heard from since.
    pub fn parent_silent_since(&self) -> Option<Millis> {
        self.parent_silent_since
    }
}

/// "this node's clock is 8 days ahead of its parent's", given how far the parent's clock
/// is ahead of this node's (ms; negative: behind), when that is more than the
/// tolerance allows.
pub fn clock_note(offset: i64) -> Option<String> {
    if offset.unsigned_abs() < NOTEWORTHY_OFFSET {
        return None;
    }
    let how = if offset < 0 { "ahead of" } else { "behind" };
    Some(format!(
        "this node's clock is {} {how} its parent's",
        rough_duration(offset.unsigned_abs())
    ))
}

/// "8 days", "3 hours", "12 minutes", "40 seconds": the largest whole unit.
fn rough_duration(ms: Millis) -> String {
    let s = ms / 1000;
    let (n, unit) = match s {
        s if s >= 2 * 86_400 => (s / 86_400, "days"),
        s if s >= 2 * 3_600 => (s / 3_600, "hours"),
        s if s >= 2 * 60 => (s / 60, "minutes"),
        s => (s, "seconds"),
    };
    format!("{n} {unit}")
}

#[cfg(test)]
mod tests {
    use super::rough_duration;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(rough_duration(8 * 86_400_000 + 5), "8 days");
        assert_eq!(rough_duration(3 * 3_600_000), "3 hours");
        assert_eq!(rough_duration(90 * 60_000), "90 minutes");
        assert_eq!(rough_duration(45_000), "45 seconds");
    }
}
