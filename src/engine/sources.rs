//! Sources: the health of each peer this node fetches from (its parent, its siblings):
//! the rate it delivers at, when it last delivered, and the backoff after fetches that
//! failed (PROTOCOL.md §13.3).
//!
//! - **Backoff.** A fetch that ends with nothing delivered (no chunk stored and no
//!   "elsewhere"), because the source answered "missing", sent bad bytes, refused the
//!   stream or stalled, is a failure. After one, the source is asked nothing for
//!   [`RETRY_MIN`] doubling per failure up to [`RETRY_MAX`] (with jitter), and then only
//!   one fetch at a time until one delivers again. So a source that lies about what it
//!   holds gets a request every few seconds, not a tight loop.
//! - **Stalls.** While fetches are in flight to a sibling, a sibling that delivers
//!   nothing for its stall limit has all of them given up, and their chunks are asked of
//!   the parent: four times what its measured rate needs for the chunks it has in
//!   flight, at least [`MIN_STALL`], at most the fetch timeout; before a rate is
//!   measured, `sibling_stall`, which is short because siblings share a LAN. The parent
//!   is given up only by the fetch timeout: its liveness is the control stream's to
//!   judge (`engine::liveness`), and a parent serving many children serves each in
//!   turns.
//!
//! At most one record per source: the parent and [`super::MAX_SIBLINGS`] siblings.

use super::{Engine, Millis, PeerId, backoff_between};
use crate::content::Hash;

/// The first wait after a failed fetch.
pub const RETRY_MIN: Millis = 250;
/// The longest wait between fetches from a failing source.
pub const RETRY_MAX: Millis = 30_000;
/// The shortest stall limit, whatever the measured rate.
pub const MIN_STALL: Millis = 2_000;
/// A rate is measured over spans of at least this long.
const RATE_SPAN: Millis = 500;

#[derive(Clone, Debug, Default)]
pub(super) struct Source {
    /// Bytes per millisecond it delivered to this node while asked for something, on
    /// average over its last busy spell; 0 until measured. An average, not a peak: a
    /// source that serves many in turn delivers in bursts.
    rate: f64,
    /// Since when fetches have been in flight to it without a break, and the bytes it
    /// delivered since.
    busy_since: Millis,
    busy_bytes: u64,
    /// When this source last delivered a chunk, or was first asked while idle.
    pub(super) last_progress: Millis,
    /// Failed fetches since the last one that delivered.
    failures: u32,
    /// Nothing is asked of it before then.
    retry_at: Millis,
}

/// Every source's record: a node has a few (its parent and its siblings), so a list is
/// quicker to search than a map.
#[derive(Default)]
pub(super) struct Sources {
    list: Vec<(PeerId, Source)>,
}

impl Sources {
    fn get(&mut self, peer: PeerId) -> &mut Source {
        let i = match self.list.iter().position(|(p, _)| *p == peer) {
            Some(i) => i,
            None => {
                self.list.push((peer, Source::default()));
                self.list.len() - 1
            }
        };
        &mut self.list[i].1
    }

    fn find(&self, peer: &PeerId) -> Option<&Source> {
        self.list.iter().find(|(p, _)| p == peer).map(|(_, s)| s)
    }
}

impl Engine {
    /// How many fetches may be in flight to `peer` now: none while it backs off, one
    /// while it is on probation after a failure, else the window.
    pub(super) fn source_allowance(&self, peer: &PeerId, now: Millis) -> usize {
        match self.sources.find(peer) {
            Some(s) if s.retry_at > now => 0,
            Some(s) if s.failures > 0 => 1,
            _ => self.config.window,
        }
    }

    /// A fetch to `peer` starts: if it was idle, its stall clock starts now.
    pub(super) fn source_asked(&mut self, peer: PeerId, now: Millis) {
        let idle = !self.fetches.values().any(|f| f.from == peer);
        let s = self.sources.get(peer);
        if idle {
            s.last_progress = now;
            s.busy_since = now;
            s.busy_bytes = 0;
        }
    }

    /// `peer` delivered `bytes` (a chunk, or a redirect that is an answer too).
    pub(super) fn source_delivered(&mut self, peer: PeerId, bytes: u64, now: Millis) {
        let s = self.sources.get(peer);
        s.last_progress = now;
        s.failures = 0;
        s.retry_at = 0;
        s.busy_bytes += bytes;
        let span = now.saturating_sub(s.busy_since);
        if span >= RATE_SPAN {
            s.rate = s.busy_bytes as f64 / span as f64;
        }
    }

    /// `peer` said it does not hold these chunks of `update`: they are not asked of it
    /// again until it announces them again (a sibling's go to the parent). A parent's
    /// answer older than its latest announcement of a chunk is out of date: that chunk
    /// stays asked for.
    pub(super) fn source_lacks(&mut self, peer: PeerId, update: &Hash, chunks: &[u32]) {
        if chunks.is_empty() {
            return;
        }
        if self.is_parent(&peer) {
            if let Some(u) = self.updates.get_mut(update) {
                for &i in chunks {
                    if !u.parent_renewed.get(i) {
                        u.parent_has.clear(i);
                    }
                }
            }
        } else if self.sibling_slot(&peer).is_some() {
            self.sibling_fetch_failed(update, chunks.iter().copied());
        }
    }

    /// A fetch from `peer` delivered nothing: it backs off.
    pub(super) fn source_failed(&mut self, peer: PeerId, now: Millis) {
        let attempts = {
            let s = self.sources.get(peer);
            s.failures = s.failures.saturating_add(1);
            s.failures - 1
        };
        let wait = backoff_between(RETRY_MIN, RETRY_MAX, attempts, &mut self.rng);
        self.sources.get(peer).retry_at = now + wait;
    }

    /// How long `peer` may deliver nothing while fetches are in flight to it.
    pub(super) fn stall_limit(&self, peer: &PeerId) -> Millis {
        if self.is_parent(peer) {
            // The parent's liveness is the control stream's to judge, and a busy parent
            // serves its children in turns: only the fetch timeout gives it up.
            return self.config.fetch_timeout;
        }
        let base = self.config.sibling_stall;
        let rate = self.sources.find(peer).map_or(0.0, |s| s.rate);
        if rate <= 0.0 {
            return base;
        }
        let longest = self.config.fetch_timeout.max(MIN_STALL);
        let in_flight: u64 = self
            .fetches
            .values()
            .filter(|f| f.from == *peer)
            .map(|f| f.bytes)
            .sum();
        let needed = (4.0 * in_flight as f64 / rate) as Millis;
        needed.clamp(MIN_STALL, longest)
    }

    /// The sources with fetches in flight, and since when each has delivered nothing
    /// (a fetch to a source always starts its record, [`Engine::source_asked`]).
    fn busy_sources(&self) -> impl Iterator<Item = (&PeerId, Millis)> {
        self.sources
            .list
            .iter()
            .filter(|(p, _)| self.fetches.values().any(|f| f.from == *p))
            .map(|(p, s)| (p, s.last_progress))
    }

    /// Gives up the fetches of every source that stalled by `now`; returns how many.
    pub(super) fn check_source_stalls(&mut self, now: Millis) -> usize {
        let stalled: Vec<PeerId> = self
            .busy_sources()
            .filter(|(p, since)| now.saturating_sub(*since) >= self.stall_limit(p))
            .map(|(p, _)| *p)
            .collect();
        let mut given_up = 0;
        for peer in stalled {
            let ids: Vec<super::FetchId> = self
                .fetches
                .iter()
                .filter(|(_, f)| f.from == peer)
                .map(|(id, _)| *id)
                .collect();
            given_up += ids.len();
            for id in ids {
                self.end_fetch(id, Some(now));
            }
        }
        given_up
    }

    /// Sources whose backoff is over are on probation: one fetch at a time.
    pub(super) fn end_backoffs(&mut self, now: Millis) {
        for s in self.sources.list.iter_mut().map(|(_, s)| s) {
            if s.retry_at != 0 && s.retry_at <= now {
                s.retry_at = 0;
            }
        }
    }

    /// When a source next stalls or ends its backoff.
    pub(super) fn next_source_check(&self) -> Option<Millis> {
        let stall = self
            .busy_sources()
            .map(|(p, since)| since + self.stall_limit(p))
            .min();
        let retry = self
            .sources
            .list
            .iter()
            .map(|(_, s)| s.retry_at)
            .filter(|t| *t != 0)
            .min();
        stall.into_iter().chain(retry).min()
    }
}
