//! The modelled network: every node's links ([`Link`]), each site's shared WAN link,
//! and how long bytes take through them. Which queues a pair of nodes' bytes cross,
//! and their latency, follow from the two nodes' links
//! ([`super::vnet::Shape::path`], [`super::vnet::Shape::latency`]).
//!
//! Each direction of a link is a queue with a rate, booked in spells: a transfer takes
//! the first free spell long enough for its bytes, so concurrent transfers share the
//! link's bandwidth and a busy link delays everything behind it. A transfer crosses its
//! hops cut-through: its bytes start on the next hop no sooner than on this one, and
//! finish no sooner than on the slowest hop. A hop books only its own time for them
//! (bytes / its rate), so a fast link behind a slow one (a client's LAN port behind its
//! site's WAN link) is free between the chunks trickling through it, and carries its
//! siblings' chunks meanwhile, as a wire does: a link is idle only when nothing is
//! waiting for it. Each queue also keeps its busiest second, for the peak utilisation
//! figures.
//!
//! Control messages are small and go on streams of their own: yamux interleaves them
//! with the chunks in flight, so one goes out at once rather than behind every chunk
//! queued, in order with the control messages before it; its time on the link still
//! delays the chunks behind it.
//!
//! Rate limits an operator sets (`arbor run --max-download ...`) are the daemon's token
//! buckets ([`crate::bandwidth::Bucket`]), each a gate in front of the queues: a chunk
//! passes it when the bucket holds its bytes, as the daemon's transfer tasks wait on
//! theirs, and only then takes its turn on the links.

use crate::bandwidth::{Bucket, Rate};
use crate::content::manifest::MAX_CHUNK_LEN;
use std::collections::VecDeque;

/// Width of the window peak utilisation is measured over.
const UTIL_WINDOW: f64 = 1000.0;

/// No node, queue or limit: a marker in `u32` fields.
pub const NONE: u32 = u32::MAX;

/// What never changes about one node: its links, and the lane that runs it.
#[derive(Clone, Debug)]
pub struct Link {
    /// One-way latency to the parent.
    pub latency: u32,
    /// Index of its queues in the network: what it receives with, what it sends with.
    pub down: u32,
    pub up: u32,
    /// Its site's shared link (down queue; the up queue follows), or NONE.
    pub site_link: u32,
    pub site_latency: u32,
    /// Its rate limits in the network (download, upload, local download, local
    /// upload), and its site's download limit; NONE for none.
    pub limits: [u32; 4],
    pub site_limit: u32,
    /// The simulator's lane that runs it (0 where one lane runs everything).
    pub lane: u8,
}

impl Link {
    /// A node `latency` ms from its parent, receiving through queue `down` and sending
    /// through queue `up`, at no site and without rate limits.
    pub fn new(latency: u32, down: u32, up: u32) -> Link {
        Link {
            latency,
            down,
            up,
            site_link: NONE,
            site_latency: 0,
            limits: [NONE; 4],
            site_limit: NONE,
            lane: 0,
        }
    }
}

/// One direction of one link.
#[derive(Clone, Debug)]
pub struct Queue {
    /// Bytes per millisecond.
    rate: f64,
    /// The spells it is booked for that have not ended, in time order and apart
    /// (touching spells are one).
    booked: VecDeque<(f64, f64)>,
    /// When the last control message on it ends.
    control_at: f64,
    /// Busy milliseconds of each utilisation window from `first_window` on; the
    /// windows before it are over, and `peak` is the busiest of them.
    first_window: u64,
    windows: VecDeque<f64>,
    peak: f64,
}

impl Queue {
    /// A queue of `rate` bytes per second.
    pub fn new(rate: f64) -> Queue {
        Queue {
            rate: rate / 1000.0,
            booked: VecDeque::new(),
            control_at: 0.0,
            first_window: 0,
            windows: VecDeque::new(),
            peak: 0.0,
        }
    }

    /// The largest share of a one-second window this link was busy, 0 to 1.
    pub fn peak(&self) -> f64 {
        let open = self.windows.iter().copied().fold(0.0, f64::max);
        (self.peak.max(open) / UTIL_WINDOW).min(1.0)
    }

    /// Time has reached `now`: the spells that ended are forgotten, and the windows
    /// that are over count towards the peak.
    fn forget(&mut self, now: f64) {
        while self.booked.front().is_some_and(|&(_, end)| end <= now) {
            self.booked.pop_front();
        }
        let w = (now / UTIL_WINDOW) as u64;
        if w > self.first_window {
            let over = ((w - self.first_window) as usize).min(self.windows.len());
            for busy in self.windows.drain(..over) {
                self.peak = self.peak.max(busy);
            }
            self.first_window = w;
        }
    }

    /// Books the first free spell of `busy` milliseconds from `from` on; returns when
    /// it starts.
    fn book(&mut self, from: f64, busy: f64) -> f64 {
        let mut t = from;
        let mut i = self.booked.partition_point(|&(_, end)| end <= t);
        while let Some(&(start, end)) = self.booked.get(i) {
            if start >= t + busy {
                break;
            }
            t = t.max(end);
            i += 1;
        }
        let end = t + busy;
        let joins_before = i > 0 && self.booked[i - 1].1 >= t;
        let joins_after = self.booked.get(i).is_some_and(|&(start, _)| start <= end);
        match (joins_before, joins_after) {
            (true, true) => {
                self.booked[i - 1].1 = self.booked[i].1;
                self.booked.remove(i);
            }
            (true, false) => self.booked[i - 1].1 = end,
            (false, true) => self.booked[i].0 = t,
            (false, false) => self.booked.insert(i, (t, end)),
        }
        self.record(t, end);
        t
    }

    /// Counts the busy spell `[start, end)` in the windows it falls in.
    fn record(&mut self, start: f64, end: f64) {
        let mut t = start;
        while t < end {
            let w = (t / UTIL_WINDOW) as u64;
            let until = end.min((w + 1) as f64 * UTIL_WINDOW);
            let k = w.saturating_sub(self.first_window) as usize;
            if self.windows.len() <= k {
                self.windows.resize(k + 1, 0.0);
            }
            self.windows[k] += until - t;
            t = until;
        }
    }
}

/// A rate limit shared by the transfers it applies to.
#[derive(Clone, Debug)]
struct Limit {
    bucket: Bucket,
    /// When it last let bytes pass: the bucket is asked in time order.
    passed: u64,
}

/// Every queue and rate limit of the network, each addressed by index.
#[derive(Clone, Debug, Default)]
pub struct Network {
    queues: Vec<Queue>,
    limits: Vec<Limit>,
}

impl Network {
    /// Adds a queue, returning its index.
    pub fn add(&mut self, rate: f64) -> usize {
        self.queues.push(Queue::new(rate));
        self.queues.len() - 1
    }

    /// Adds a rate limit, returning its index.
    pub fn add_limit(&mut self, rate: Rate) -> usize {
        self.limits.push(Limit {
            bucket: Bucket::new(rate, u64::from(MAX_CHUNK_LEN), 0),
            passed: 0,
        });
        self.limits.len() - 1
    }

    pub fn queue(&self, i: usize) -> &Queue {
        &self.queues[i]
    }

    /// Sends a chunk of `len` bytes, `wire` bytes with its framing, at `now`: through
    /// the rate `limits` in order, each counting `len` as the daemon's do, then through
    /// the queues of `path`. Returns when the last byte leaves the last queue.
    pub fn send_limited(
        &mut self,
        limits: &[usize],
        path: &[usize],
        now: f64,
        len: u32,
        wire: u64,
    ) -> f64 {
        let mut at = now.ceil() as u64;
        for &l in limits {
            let limit = &mut self.limits[l];
            at = at.max(limit.passed);
            while let Some(wait) = limit.bucket.take(u64::from(len), at) {
                at += wait.max(1);
            }
            limit.passed = at;
        }
        self.carry(path, now, now.max(at as f64), wire)
    }

    /// Sends a control message of `bytes` at `now` through the queues of `path`, ahead
    /// of the chunks queued on them; returns when its last byte leaves the last queue.
    pub fn send_control(&mut self, path: &[usize], now: f64, bytes: u64) -> f64 {
        let mut finish = now;
        for &i in path {
            let q = &mut self.queues[i];
            q.forget(now);
            let busy = bytes as f64 / q.rate;
            let end = (now.max(q.control_at) + busy).max(finish);
            q.control_at = end;
            // Its time on the link is time the chunks do not have.
            q.book(now, busy);
            finish = end;
        }
        finish
    }

    /// Sends `bytes` at `now` through the queues of `path` in order; returns when the
    /// last byte leaves the last queue (latency not included).
    pub fn send(&mut self, path: &[usize], now: f64, bytes: u64) -> f64 {
        self.carry(path, now, now, bytes)
    }

    /// Sends `bytes` through the queues of `path` from `start` on, at time `now`.
    fn carry(&mut self, path: &[usize], now: f64, start: f64, bytes: u64) -> f64 {
        let mut start = start;
        let mut finish = start;
        for &i in path {
            let q = &mut self.queues[i];
            q.forget(now);
            let busy = bytes as f64 / q.rate;
            let begin = q.book(start, busy);
            finish = (begin + busy).max(finish);
            start = begin;
        }
        finish
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_that_meet_on_a_link_share_its_rate() {
        let mut net = Network::default();
        let link = net.add(1_000_000.0); // 1 MB/s: 1 byte per microsecond
        let first = net.send(&[link], 0.0, 500_000);
        let second = net.send(&[link], 0.0, 500_000);
        assert_eq!(first, 500.0);
        // Two halves of a megabyte sent together take a second, like one megabyte.
        assert_eq!(second, 1000.0);
        assert!((net.queue(link).peak() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_path_goes_at_the_pace_of_its_slowest_hop() {
        let mut net = Network::default();
        let fast = net.add(10_000_000.0);
        let slow = net.add(1_000_000.0);
        assert_eq!(net.send(&[fast, slow], 0.0, 1_000_000), 1000.0);
        assert_eq!(net.send(&[slow, fast], 2000.0, 1_000_000), 3000.0);
    }

    #[test]
    fn a_fast_hop_behind_a_slow_one_carries_other_transfers_meanwhile() {
        let mut net = Network::default();
        let wan = net.add(1_000_000.0);
        let lan = net.add(10_000_000.0);
        // Two chunks across the WAN and on through the LAN: the second starts on the
        // LAN when it starts on the WAN, a second from now.
        assert_eq!(net.send(&[wan, lan], 0.0, 1_000_000), 1000.0);
        assert_eq!(net.send(&[wan, lan], 0.0, 1_000_000), 2000.0);
        // A sibling's chunk on the LAN alone goes now, between them: not after 2 s.
        assert_eq!(net.send(&[lan], 0.0, 500_000), 150.0);
        // One too long for the gap before the second chunk's spell goes after it.
        assert_eq!(net.send(&[lan], 0.0, 9_000_000), 2000.0);
    }

    #[test]
    fn an_idle_link_reports_its_busiest_second() {
        let mut net = Network::default();
        let link = net.add(1_000_000.0);
        net.send(&[link], 0.0, 250_000);
        net.send(&[link], 5000.0, 100_000);
        assert!((net.queue(link).peak() - 0.25).abs() < 1e-9);
    }

    #[test]
    fn a_link_moves_a_chunk_and_its_framing_at_its_nominal_rate() {
        let mut net = Network::default();
        let link = net.add(40e6 / 8.0); // 40 Mbit/s
        let len = 64 * 1024;
        let wire = super::super::overhead::chunk(len);
        let end = net.send_limited(&[], &[link], 0.0, len, wire);
        assert_eq!(end, wire as f64 / 5_000.0);
        // Slower than the chunk's own bytes would go, by the framing.
        assert!(end > f64::from(len) / 5_000.0 * 1.04);
    }

    #[test]
    fn a_control_message_goes_ahead_of_queued_chunks_and_delays_them() {
        let mut net = Network::default();
        let link = net.add(1_000_000.0);
        assert_eq!(net.send(&[link], 0.0, 1_000_000), 1000.0);
        // 1,000 bytes: 1 ms on the link, not behind the second of chunks.
        assert_eq!(net.send_control(&[link], 0.0, 1_000), 1.0);
        // In order with the control message before it.
        assert_eq!(net.send_control(&[link], 0.0, 1_000), 2.0);
        // The next chunk waits for both.
        assert_eq!(net.send(&[link], 0.0, 1_000), 1003.0);
    }

    #[test]
    fn a_rate_limit_holds_a_fast_link_to_its_rate() {
        let mut net = Network::default();
        let link = net.add(1e9);
        let limit = net.add_limit(Rate(1_000_000));
        let chunk = 64 * 1024;
        let mut end = 0.0;
        // 160 chunks, 10.5 MB: the first MiB at once (the daemon's bucket holds one
        // chunk of the largest size), the other 9.4 MB at 1 MB/s; not 10 ms at the
        // link's rate.
        for _ in 0..160 {
            end = net.send_limited(&[limit], &[link], 0.0, chunk, u64::from(chunk));
        }
        let secs = end / 1000.0;
        assert!((9.43..9.46).contains(&secs), "{secs} s");
        // Unlimited, the same bytes take the link's time.
        let mut net = Network::default();
        let link = net.add(1e9);
        for _ in 0..160 {
            end = net.send_limited(&[], &[link], 0.0, chunk, u64::from(chunk));
        }
        assert!(end < 20.0, "{end} ms");
    }
}
