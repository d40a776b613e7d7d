//! The simulator's event queue: events come out in time order, and events of the same
//! millisecond in the order they were scheduled.
//!
//! A calendar: one bucket per millisecond over a ring of the next [`HORIZON`]
//! milliseconds, and an ordered map for anything later. Scheduling and taking the next
//! event cost O(1) and touch memory in order, where a binary heap of a large fleet's
//! millions of pending events pays a cache miss on most of its levels for each one.
//!
//! Why the order is exact: an event is put in the map only while its millisecond is
//! beyond the ring, and in the ring once its millisecond is within it; the ring only
//! moves forward. So the map's events of a millisecond were all scheduled before its
//! ring bucket's, and taking the map's first, then the bucket's, keeps scheduling
//! order.

use crate::engine::Millis;
use std::collections::{BTreeMap, VecDeque};

/// Width of the ring, in milliseconds: most events are this close (latencies,
/// transfers, fetch deadlines); timers and the script go further.
const HORIZON: usize = 1 << 16;

/// Pending events of type `T`, each at a virtual millisecond.
pub struct Calendar<T> {
    /// Events of the millisecond being taken (`cursor - 1`), in order.
    current: VecDeque<T>,
    /// The next millisecond to load into `current`. The ring holds
    /// `[cursor, cursor + HORIZON)`, bucket `t % HORIZON` for millisecond `t`.
    cursor: Millis,
    ring: Vec<Vec<T>>,
    /// Events in the ring.
    in_ring: usize,
    /// Events at or beyond `cursor + HORIZON` when they were scheduled.
    later: BTreeMap<Millis, Vec<T>>,
}

impl<T> Default for Calendar<T> {
    fn default() -> Calendar<T> {
        Calendar {
            current: VecDeque::new(),
            cursor: 0,
            ring: (0..HORIZON).map(|_| Vec::new()).collect(),
            in_ring: 0,
            later: BTreeMap::new(),
        }
    }
}

impl<T> Calendar<T> {
    /// Schedules `event` at `at`. A time already past counts as the millisecond being
    /// taken: it runs after what that millisecond already holds.
    pub fn push(&mut self, at: Millis, event: T) {
        if at < self.cursor {
            self.current.push_back(event);
        } else if at - self.cursor < HORIZON as Millis {
            self.ring[(at % HORIZON as Millis) as usize].push(event);
            self.in_ring += 1;
        } else {
            self.later.entry(at).or_default().push(event);
        }
    }

    /// The earliest event and its time if it is before `end`. Time is not moved on
    /// past `end`, so that events still to come for `end` or later may be pushed.
    pub fn pop_before(&mut self, end: Millis) -> Option<(Millis, T)> {
        loop {
            if let Some(event) = self.current.pop_front() {
                return Some((self.cursor - 1, event));
            }
            if self.in_ring == 0 {
                // Nothing close: jump to the first later event.
                let first = *self.later.keys().next()?;
                if first >= end {
                    return None;
                }
                self.cursor = self.cursor.max(first);
            }
            if self.cursor >= end {
                return None;
            }
            let t = self.cursor;
            self.cursor += 1;
            if let Some(events) = self.later.remove(&t) {
                self.current = VecDeque::from(events);
            }
            let bucket = std::mem::take(&mut self.ring[(t % HORIZON as Millis) as usize]);
            self.in_ring -= bucket.len();
            if self.current.is_empty() {
                self.current = VecDeque::from(bucket);
            } else {
                self.current.extend(bucket);
            }
        }
    }

    /// The time of the earliest pending event.
    pub fn next_at(&self) -> Option<Millis> {
        if !self.current.is_empty() {
            return Some(self.cursor - 1);
        }
        let later = self.later.keys().next().copied();
        if self.in_ring == 0 {
            return later;
        }
        let ring = (self.cursor..self.cursor + HORIZON as Millis)
            .find(|t| !self.ring[(t % HORIZON as Millis) as usize].is_empty());
        match (ring, later) {
            (Some(r), Some(l)) => Some(r.min(l)),
            (r, l) => r.or(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ties_come_out_in_the_order_scheduled_across_ring_and_map() {
        let mut c = Calendar::default();
        let far = HORIZON as Millis + 5;
        c.push(far, "scheduled first, beyond the ring");
        c.push(3, "near");
        // Time moves on so that `far` is within the ring now.
        assert_eq!(c.pop_before(Millis::MAX), Some((3, "near")));
        c.push(far, "scheduled second, within the ring");
        c.push(4, "before it");
        assert_eq!(c.pop_before(Millis::MAX), Some((4, "before it")));
        assert_eq!(
            c.pop_before(Millis::MAX),
            Some((far, "scheduled first, beyond the ring"))
        );
        assert_eq!(
            c.pop_before(Millis::MAX),
            Some((far, "scheduled second, within the ring"))
        );
        assert_eq!(c.pop_before(Millis::MAX), None);
        assert_eq!(c.next_at(), None);
    }

    #[test]
    fn an_event_in_the_past_runs_after_the_current_millisecond() {
        let mut c = Calendar::default();
        c.push(10, 1);
        c.push(10, 2);
        assert_eq!(c.pop_before(Millis::MAX), Some((10, 1)));
        c.push(2, 3);
        c.push(10, 4);
        assert_eq!(c.pop_before(Millis::MAX), Some((10, 2)));
        assert_eq!(c.pop_before(Millis::MAX), Some((10, 3)));
        assert_eq!(c.pop_before(Millis::MAX), Some((10, 4)));
        assert_eq!(c.pop_before(Millis::MAX), None);
    }

    #[test]
    fn pop_before_stops_at_the_end_and_leaves_room_for_later_pushes() {
        let mut c = Calendar::default();
        c.push(5, "a");
        c.push(30, "b");
        assert_eq!(c.next_at(), Some(5));
        assert_eq!(c.pop_before(20), Some((5, "a")));
        assert_eq!(c.next_at(), Some(30));
        assert_eq!(c.pop_before(20), None);
        // An event for the end of the window, pushed after the window ran, still
        // comes out in time order.
        c.push(20, "c");
        assert_eq!(c.next_at(), Some(20));
        assert_eq!(c.pop_before(30), Some((20, "c")));
        assert_eq!(c.pop_before(30), None);
        c.push(HORIZON as Millis * 3, "far");
        assert_eq!(c.next_at(), Some(30));
        assert_eq!(c.pop_before(Millis::MAX), Some((30, "b")));
        assert_eq!(c.next_at(), Some(HORIZON as Millis * 3));
        assert_eq!(c.pop_before(HORIZON as Millis * 3), None);
        assert_eq!(
            c.pop_before(Millis::MAX),
            Some((HORIZON as Millis * 3, "far"))
        );
        assert_eq!(c.next_at(), None);
    }

    proptest! {
        /// Pushes interleaved with pops, at times from now to far beyond the ring, come
        /// out ordered by time, then by the order of scheduling.
        #[test]
        fn events_come_out_by_time_then_order_of_scheduling(steps in proptest::collection::vec((0u64..3 * HORIZON as u64, 0u8..4), 1..400)) {
            let mut c = Calendar::default();
            let mut now = 0;
            let mut pushed = Vec::new();
            let mut popped = Vec::new();
            for (i, (delay, pops)) in steps.iter().enumerate() {
                // Mostly near events, some far ones.
                let delay = if i % 5 == 0 { *delay } else { delay % 100 };
                pushed.push((now + delay, i as u32));
                c.push(now + delay, i as u32);
                for _ in 0..*pops {
                    if let Some((at, v)) = c.pop_before(Millis::MAX) {
                        prop_assert!(at >= now);
                        now = at;
                        popped.push((at, v));
                    }
                }
            }
            while let Some(e) = c.pop_before(Millis::MAX) {
                popped.push(e);
            }
            // Nothing is scheduled before the last pop, so a heap by (time, order of
            // scheduling) would give every event sorted that way.
            let mut sorted = pushed.clone();
            sorted.sort_by_key(|(at, seq)| (*at, *seq));
            prop_assert_eq!(popped, sorted);
        }
    }
}
