//! Conduct: what peers did wrong, and the bans that follow (PROTOCOL.md §10.4).
//!
//! Every offence a peer commits against this node, whether the engine saw it (a control
//! message its role may not send, a refused report or manifest) or the driver did (a
//! frame that does not decode, a stream or request it may not open, a refused hello),
//! comes here. A message a peer's role may not send ends its session at once. Each
//! offence is a strike; [`STRIKES_TO_BAN`] strikes within [`STRIKE_WINDOW`] ban the
//! peer for [`FIRST_BAN`], and each later ban lasts twice the one before, up to
//! [`LONGEST_BAN`]. A banned peer's connections are closed and refused until the ban
//! ends. The parent is never banned (it is this node's only way into the tree): its
//! offences end the session, and the link's redial backoff grows instead.
//!
//! Memory is bounded: at most [`MAX_RECORDS`] peers are remembered. When full, the
//! record least worth keeping goes first: one that is not banned, then the ban that
//! ends soonest. A stranger can mint new identities for free, so bans bound what one
//! identity costs this node; the driver's connection and stream limits bound the rest.

use super::{Engine, Event, Millis, Output, PeerId};
use std::collections::HashMap;

/// Strikes within [`STRIKE_WINDOW`] that ban a peer.
pub const STRIKES_TO_BAN: u32 = 3;
/// How long a strike counts.
pub const STRIKE_WINDOW: Millis = 10 * 60 * 1000;
/// The first ban's length; each later one is twice the one before.
pub const FIRST_BAN: Millis = 60 * 1000;
/// The longest ban.
pub const LONGEST_BAN: Millis = 24 * 3600 * 1000;
/// Most peers whose conduct is remembered.
pub const MAX_RECORDS: usize = 4096;

/// What a peer did wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offence {
    /// A control message that only another role sends (a parent's from a child, a
    /// report from a sibling): the session ends at once.
    WrongRole,
    /// A stream, request or hello this node does not accept from this peer (a chunk
    /// request from a stranger, a refused certificate chain, a bad join secret).
    Unauthorised,
    /// A frame that does not decode, is over its limit, or breaks the protocol.
    BadFrame,
    /// Signed or hashed data that fails its check (a manifest, a report, a chunk).
    BadData,
    /// More than its share: too many streams, offers or requests at once.
    Flood,
}

impl Offence {
    /// The name used in logs, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Offence::WrongRole => "wrong_role",
            Offence::Unauthorised => "unauthorised",
            Offence::BadFrame => "bad_frame",
            Offence::BadData => "bad_data",
            Offence::Flood => "flood",
        }
    }
}

/// What this node holds against one peer.
#[derive(Clone, Debug, Default)]
struct Record {
    /// Times of strikes still within [`STRIKE_WINDOW`], oldest first (at most
    /// [`STRIKES_TO_BAN`]).
    strikes: Vec<Millis>,
    /// Bans so far: the next one lasts `FIRST_BAN << bans`.
    bans: u32,
    banned_until: Option<Millis>,
    offences: u64,
    last_reason: String,
}

/// A ban, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanInfo {
    pub peer: PeerId,
    pub until: Millis,
    /// Offences in all since this node remembers the peer.
    pub offences: u64,
    pub reason: String,
}

/// Every peer's record; see the module documentation.
#[derive(Default)]
pub(super) struct Conduct {
    records: HashMap<PeerId, Record>,
    /// Offences of each kind, for metrics.
    pub(super) counts: HashMap<Offence, u64>,
}

impl Conduct {
    /// Whether `peer` is banned at `now`.
    fn banned(&self, peer: &PeerId, now: Millis) -> bool {
        self.records
            .get(peer)
            .and_then(|r| r.banned_until)
            .is_some_and(|until| until > now)
    }

    /// Counts one offence; returns the end of the ban it starts, if it starts one.
    fn strike(
        &mut self,
        peer: PeerId,
        offence: Offence,
        reason: &str,
        bannable: bool,
        now: Millis,
    ) -> Option<Millis> {
        *self.counts.entry(offence).or_default() += 1;
        if !self.records.contains_key(&peer) && self.records.len() >= MAX_RECORDS {
            self.evict(now);
        }
        let r = self.records.entry(peer).or_default();
        r.offences += 1;
        r.last_reason = crate::report::sanitize_reason(reason);
        if !bannable || r.banned_until.is_some_and(|until| until > now) {
            return None;
        }
        r.strikes.retain(|t| now.saturating_sub(*t) < STRIKE_WINDOW);
        r.strikes.push(now);
        if (r.strikes.len() as u32) < STRIKES_TO_BAN {
            return None;
        }
        r.strikes.clear();
        let length = FIRST_BAN
            .saturating_mul(1u64 << r.bans.min(20))
            .min(LONGEST_BAN);
        r.bans = r.bans.saturating_add(1);
        let until = now.saturating_add(length);
        r.banned_until = Some(until);
        Some(until)
    }

    /// Makes room for one record: drops one that holds no ban in force, else the ban
    /// that ends soonest.
    fn evict(&mut self, now: Millis) {
        let victim = self
            .records
            .iter()
            .min_by_key(|(_, r)| {
                let until = r.banned_until.filter(|u| *u > now).unwrap_or(0);
                (until, r.offences)
            })
            .map(|(p, _)| *p);
        if let Some(p) = victim {
            self.records.remove(&p);
        }
    }

    /// The bans in force at `now`.
    fn bans(&self, now: Millis) -> Vec<BanInfo> {
        let mut out: Vec<BanInfo> = self
            .records
            .iter()
            .filter_map(|(peer, r)| {
                let until = r.banned_until.filter(|u| *u > now)?;
                Some(BanInfo {
                    peer: *peer,
                    until,
                    offences: r.offences,
                    reason: r.last_reason.clone(),
                })
            })
            .collect();
        out.sort_by_key(|b| (b.until, b.peer));
        out
    }
}

/// Who a peer is to this node, for what it may open and how much it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Parent,
    /// A certified child (connected or not).
    Child,
    /// A sibling the parent listed.
    Sibling,
    /// None of the above: it may only join, or be told why it is refused.
    Stranger,
    /// Banned until the ban ends: refused outright.
    Banned,
}

impl Engine {
    /// Who `peer` is to this node at `now`.
    pub fn standing(&self, peer: &PeerId, now: Millis) -> Standing {
        if self.is_parent(peer) {
            Standing::Parent
        } else if self.is_banned(peer, now) {
            Standing::Banned
        } else if self.children.contains_key(peer) {
            Standing::Child
        } else if self.sibling_slot(peer).is_some() {
            Standing::Sibling
        } else {
            Standing::Stranger
        }
    }

    /// A peer did something wrong (see [`Offence`]): counted against it, its session
    /// ended if its role may not send what it sent, and banned after repeated
    /// offences. The driver reports what it sees (bad frames, refused streams and
    /// hellos); the engine reports what it sees itself.
    pub fn handle_offence(&mut self, peer: PeerId, offence: Offence, reason: &str, now: Millis) {
        if peer == self.me() {
            return;
        }
        self.out.push_back(Output::Event(Event::Misbehaved {
            peer,
            offence,
            reason: reason.to_string(),
        }));
        let is_parent = self.is_parent(&peer);
        let banned = self.conduct.strike(peer, offence, reason, !is_parent, now);
        if let Some(until) = banned {
            self.out.push_back(Output::Event(Event::Banned {
                peer,
                until,
                reason: reason.to_string(),
            }));
        }
        if banned.is_some() || offence == Offence::WrongRole {
            self.out.push_back(Output::Disconnect {
                peer,
                reason: reason.to_string(),
            });
            // The driver closes the connection; whatever was asked of the peer is
            // asked again elsewhere or later.
            self.handle_disconnected(peer, now);
        }
    }

    /// Whether `peer` is banned at `now`: its connections are closed and its streams
    /// refused.
    pub fn is_banned(&self, peer: &PeerId, now: Millis) -> bool {
        self.conduct.banned(peer, now)
    }

    /// The bans in force at `now`, soonest to end first.
    pub fn bans(&self, now: Millis) -> Vec<BanInfo> {
        self.conduct.bans(now)
    }

    /// Offences counted so far, by kind.
    pub fn offences(&self) -> impl Iterator<Item = (Offence, u64)> + '_ {
        self.conduct.counts.iter().map(|(o, n)| (*o, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        crate::trust::PublicKey([n; 32])
    }

    #[test]
    fn three_strikes_ban_and_each_ban_is_twice_the_last() {
        let mut c = Conduct::default();
        let p = peer(1);
        assert_eq!(c.strike(p, Offence::BadFrame, "x", true, 0), None);
        assert_eq!(c.strike(p, Offence::BadFrame, "x", true, 1), None);
        assert_eq!(
            c.strike(p, Offence::BadFrame, "x", true, 2),
            Some(2 + FIRST_BAN)
        );
        assert!(c.banned(&p, 3));
        assert!(!c.banned(&p, 2 + FIRST_BAN));
        // Offences during a ban do not lengthen it.
        assert_eq!(c.strike(p, Offence::BadFrame, "x", true, 10), None);
        let t = 2 + FIRST_BAN;
        for i in 0..2 {
            assert_eq!(c.strike(p, Offence::BadFrame, "x", true, t + i), None);
        }
        assert_eq!(
            c.strike(p, Offence::BadFrame, "x", true, t + 2),
            Some(t + 2 + 2 * FIRST_BAN)
        );
        assert_eq!(c.bans(t + 3).len(), 1);
        assert_eq!(c.bans(t + 3)[0].offences, 7);
    }

    #[test]
    fn strikes_expire_and_bans_stop_at_the_longest() {
        let mut c = Conduct::default();
        let p = peer(2);
        c.strike(p, Offence::Flood, "x", true, 0);
        c.strike(p, Offence::Flood, "x", true, 1);
        // The first two have expired: this is the first of a new count.
        assert_eq!(
            c.strike(p, Offence::Flood, "x", true, STRIKE_WINDOW + 5),
            None
        );
        // Well after the ban of the first round, so every round starts afresh.
        let mut now = STRIKE_WINDOW + 10;
        assert_eq!(c.strike(p, Offence::Flood, "x", true, now), None);
        now += 2 * STRIKE_WINDOW;
        let mut last = 0;
        for _ in 0..40 {
            let mut until = None;
            for i in 0..3 {
                until = until.or(c.strike(p, Offence::Flood, "x", true, now + i));
            }
            let until = until.expect("three strikes ban");
            last = until - (now + 2);
            now = until;
        }
        assert_eq!(last, LONGEST_BAN);
    }

    #[test]
    fn an_unbannable_peer_is_counted_but_never_banned() {
        let mut c = Conduct::default();
        let p = peer(3);
        for t in 0..10 {
            assert_eq!(c.strike(p, Offence::WrongRole, "x", false, t), None);
        }
        assert!(!c.banned(&p, 10));
        assert_eq!(c.counts[&Offence::WrongRole], 10);
    }

    #[test]
    fn records_are_bounded_and_bans_outlive_mere_offenders() {
        let mut c = Conduct::default();
        let banned = peer(0);
        for t in 0..3 {
            c.strike(banned, Offence::BadData, "x", true, t);
        }
        for i in 0..(MAX_RECORDS as u32 + 100) {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&(i + 1).to_le_bytes());
            k[31] = 1;
            c.strike(crate::trust::PublicKey(k), Offence::Flood, "x", true, 10);
        }
        assert!(c.records.len() <= MAX_RECORDS);
        assert!(
            c.banned(&banned, 11),
            "the ban survives a flood of identities"
        );
    }
}
