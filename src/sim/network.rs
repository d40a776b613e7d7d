//! The modelled network: every node's links ([`Link`]), each site's shared WAN link,
//! and how long bytes take through them. Which queues a pair of nodes' bytes cross,
//! and their latency, follow from the two nodes' links
//! ([`super::vnet::Shape::path`], [`super::vnet::Shape::latency`]).
//!
//! Each direction of a link is a FIFO queue with a rate: transfers that meet on it
//! take turns, so concurrent transfers share its bandwidth and a busy link delays
//! everything behind it. A transfer crosses its hops cut-through: the bytes start on the
//! next hop as soon as they start on this one, and finish no sooner than on the slowest
//! hop. Each queue also keeps its busiest second, for the peak utilisation figures.
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
    /// When the last transfer on it ends, and the last control message.
    free_at: f64,
    control_at: f64,
    /// The utilisation window being filled, its busy milliseconds, and the busiest
    /// window's so far.
    window: u64,
    busy: f64,
    peak: f64,
}

impl Queue {
    /// A queue of `rate` bytes per second.
    pub fn new(rate: f64) -> Queue {
        Queue {
            rate: rate / 1000.0,
            free_at: 0.0,
            control_at: 0.0,
            window: 0,
            busy: 0.0,
            peak: 0.0,
        }
    }

    /// The largest share of a one-second window this link was busy, 0 to 1.
    pub fn peak(&self) -> f64 {
        self.peak.max(self.busy / UTIL_WINDOW).min(1.0)
    }

    /// Counts the busy interval `[start, end)` (never before an earlier one ends).
    fn record(&mut self, start: f64, end: f64) {
        let mut t = start;
        while t < end {
            let w = (t / UTIL_WINDOW) as u64;
            if w != self.window {
                self.peak = self.peak.max(self.busy / UTIL_WINDOW);
                self.window = w;
                self.busy = 0.0;
            }
            let window_end = (w + 1) as f64 * UTIL_WINDOW;
            let until = end.min(window_end);
            self.busy += until - t;
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
        self.send(path, now.max(at as f64), wire)
    }

    /// Sends a control message of `bytes` at `now` through the queues of `path`, ahead
    /// of the chunks queued on them; returns when its last byte leaves the last queue.
    pub fn send_control(&mut self, path: &[usize], now: f64, bytes: u64) -> f64 {
        let mut finish = now;
        for &i in path {
            let q = &mut self.queues[i];
            let busy = bytes as f64 / q.rate;
            let end = (now.max(q.control_at) + busy).max(finish);
            q.control_at = end;
            // The chunks behind it wait as long; its busy time is counted there.
            let pushed = q.free_at.max(now);
            q.record(pushed, pushed + busy);
            q.free_at = pushed + busy;
            finish = end;
        }
        finish
    }

    /// Sends `bytes` at `now` through the queues of `path` in order; returns when the
    /// last byte leaves the last queue (latency not included).
    pub fn send(&mut self, path: &[usize], now: f64, bytes: u64) -> f64 {
        let mut start = now;
        let mut finish = now;
        for &i in path {
            let q = &mut self.queues[i];
            let begin = start.max(q.free_at);
            let busy = bytes as f64 / q.rate;
            let end = (begin + busy).max(finish);
            q.record(end - busy, end);
            q.free_at = end;
            start = begin;
            finish = end;
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
