//! The modelled network: every node's links, each site's shared WAN link, and how long
//! bytes take through them.
//!
//! Each direction of a link is a FIFO queue with a rate: transfers that meet on it
//! take turns, so concurrent transfers share its bandwidth and a busy link delays
//! everything behind it. A transfer crosses its hops cut-through: the bytes start on the
//! next hop as soon as they start on this one, and finish no sooner than on the slowest
//! hop. Each queue also keeps its busiest second, for the peak utilisation figures.

/// Width of the window peak utilisation is measured over.
const UTIL_WINDOW: f64 = 1000.0;

/// One direction of one link.
#[derive(Clone, Debug)]
pub struct Queue {
    /// Bytes per millisecond.
    rate: f64,
    /// When the last transfer on it ends.
    free_at: f64,
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

/// Every queue of the network, addressed by index.
#[derive(Clone, Debug, Default)]
pub struct Network {
    queues: Vec<Queue>,
}

impl Network {
    /// Adds a queue, returning its index.
    pub fn add(&mut self, rate: f64) -> usize {
        self.queues.push(Queue::new(rate));
        self.queues.len() - 1
    }

    pub fn queue(&self, i: usize) -> &Queue {
        &self.queues[i]
    }

    /// Sends `bytes` at `now` through the queues of `path` in order; returns when the
    /// last byte leaves the last queue (latency not included).
    pub fn send(&mut self, path: &[usize], now: f64, bytes: u32) -> f64 {
        let mut start = now;
        let mut finish = now;
        for &i in path {
            let q = &mut self.queues[i];
            let begin = start.max(q.free_at);
            let end = (begin + f64::from(bytes) / q.rate).max(finish);
            q.record(end - f64::from(bytes) / q.rate, end);
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
}
