//! Bandwidth: the rates and WAN windows an operator sets, and the token buckets that
//! hold transfers to them.
//!
//! Owns parsing (`5MiB/s`, `40Mbit`, `19:00-07:00`), with clear errors for anything
//! else, and the arithmetic of a token bucket: sans-IO, time passed in, so that the
//! daemon and the simulator limit alike. A bucket holds at most a few milliseconds of
//! its rate (never less than one chunk), so a limited transfer never bursts far above
//! its rate, however many transfers share it.

use std::fmt;
use std::str::FromStr;

/// A rate in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

/// A rate, window or site that arbor refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BandwidthError {
    #[error(
        "{0:?} is not a rate: give a number and a unit, such as 5MiB/s, 500KB/s, 40Mbit or 1Gbit/s"
    )]
    Rate(String),
    #[error("rate {0:?} is zero; leave the limit out for no limit")]
    ZeroRate(String),
    #[error("{given:?} is not a time window: {why} (give HH:MM-HH:MM, e.g. 19:00-07:00)")]
    Window { given: String, why: &'static str },
}

impl FromStr for Rate {
    type Err = BandwidthError;

    /// Bytes (`B`, `KB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`) or bits (`bit`, `kbit`,
    /// `Mbit`, `Gbit`), optionally per second (`/s`, `ps`). Decimal prefixes are powers
    /// of 1000, binary ones of 1024; fractions are allowed (`2.5MiB/s`).
    fn from_str(s: &str) -> Result<Rate, BandwidthError> {
        let bad = || BandwidthError::Rate(s.chars().take(40).collect());
        let t = s.trim();
        let t = t
            .strip_suffix("/s")
            .or_else(|| t.strip_suffix("ps"))
            .unwrap_or(t);
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let per_unit: f64 = match unit.trim() {
            "B" => 1.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "bit" | "b" => 1.0 / 8.0,
            "kbit" | "Kbit" | "kb" => 1e3 / 8.0,
            "Mbit" | "Mb" => 1e6 / 8.0,
            "Gbit" | "Gb" => 1e9 / 8.0,
            _ => return Err(bad()),
        };
        let bytes = number * per_unit;
        if !bytes.is_finite() || bytes > 1e15 {
            return Err(bad());
        }
        if bytes < 1.0 {
            return Err(BandwidthError::ZeroRate(s.into()));
        }
        Ok(Rate(bytes as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mbit = self.0 as f64 * 8.0 / 1e6;
        write!(f, "{mbit:.1} Mbit/s")
    }
}

/// A daily time window, in minutes since midnight, local time; it may wrap midnight
/// (`19:00-07:00`). Start and end equal means the whole day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u16,
    pub end: u16,
}

impl FromStr for Window {
    type Err = BandwidthError;

    fn from_str(s: &str) -> Result<Window, BandwidthError> {
        let bad = |why| BandwidthError::Window {
            given: s.chars().take(40).collect(),
            why,
        };
        let (a, b) = s
            .trim()
            .split_once('-')
            .ok_or_else(|| bad("no '-' between the two times"))?;
        let minute = |t: &str| -> Result<u16, BandwidthError> {
            let (h, m) = t
                .trim()
                .split_once(':')
                .ok_or_else(|| bad("a time lacks ':'"))?;
            let h: u16 = h.parse().map_err(|_| bad("an hour is not a number"))?;
            let m: u16 = m.parse().map_err(|_| bad("a minute is not a number"))?;
            if h > 23 || m > 59 {
                return Err(bad("hours run 00 to 23, minutes 00 to 59"));
            }
            Ok(h * 60 + m)
        };
        Ok(Window {
            start: minute(a)?,
            end: minute(b)?,
        })
    }
}

impl Window {
    /// Whether the window is open at `minute` (0 to 1439).
    pub fn is_open(&self, minute: u16) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => (self.start..self.end).contains(&minute),
            std::cmp::Ordering::Greater => minute >= self.start || minute < self.end,
        }
    }

    /// Minutes from `minute` until the window opens (0 if it is open).
    pub fn minutes_until_open(&self, minute: u16) -> u16 {
        if self.is_open(minute) {
            0
        } else {
            (self.start + 1440 - minute) % 1440
        }
    }
}

/// A token bucket: at most `rate` bytes per second on average, and at most `burst`
/// bytes at once. Times are milliseconds from any fixed origin.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    /// Tokens, in thousandths of a byte, so that slow rates are exact.
    tokens: u128,
    last: u64,
}

impl Bucket {
    /// How long a bucket's capacity lasts at its rate, at the least.
    pub const BURST_MILLIS: u64 = 20;

    /// A bucket for `rate`, full, at time `now`. `unit` is the largest single take
    /// (one chunk): the capacity is never less.
    pub fn new(rate: Rate, unit: u64, now: u64) -> Bucket {
        let burst = (rate.0 * Self::BURST_MILLIS / 1000).max(unit).max(1);
        Bucket {
            rate: rate.0.max(1),
            burst,
            tokens: u128::from(burst) * 1000,
            last: now,
        }
    }

    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let cap = u128::from(self.burst) * 1000;
        self.tokens = (self.tokens + u128::from(elapsed) * u128::from(self.rate)).min(cap);
    }

    /// Takes `n` bytes at `now` if the bucket holds them: `None`. Else takes nothing and
    /// says how many milliseconds to wait before asking again.
    pub fn take(&mut self, n: u64, now: u64) -> Option<u64> {
        self.refill(now);
        let want = u128::from(n.min(self.burst)) * 1000;
        if self.tokens >= want {
            self.tokens -= want;
            return None;
        }
        let missing = want - self.tokens;
        Some((missing.div_ceil(u128::from(self.rate))) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_bytes_and_bits() {
        for (s, bytes) in [
            ("5MiB/s", 5 * 1024 * 1024),
            ("40Mbit", 5_000_000),
            ("40Mbit/s", 5_000_000),
            ("1Gbit/s", 125_000_000),
            ("500KB/s", 500_000),
            ("2.5MiB/s", 2_621_440),
            ("100B", 100),
            ("8bit", 1),
            ("10Mbps", 1_250_000),
        ] {
            assert_eq!(s.parse::<Rate>(), Ok(Rate(bytes)), "{s}");
        }
        for s in [
            "",
            "fast",
            "5",
            "5 parsecs",
            "-3MiB/s",
            "MiB/s",
            "1e99MB",
            "5MiB/h",
        ] {
            assert!(s.parse::<Rate>().is_err(), "{s:?} accepted");
        }
        assert!(matches!(
            "0Mbit".parse::<Rate>(),
            Err(BandwidthError::ZeroRate(_))
        ));
        assert_eq!(Rate(5_000_000).to_string(), "40.0 Mbit/s");
    }

    #[test]
    fn windows_parse_and_wrap_midnight() {
        let night: Window = "19:00-07:00".parse().expect("valid");
        assert!(night.is_open(19 * 60) && night.is_open(23 * 60 + 59) && night.is_open(0));
        assert!(!night.is_open(7 * 60) && !night.is_open(12 * 60));
        assert_eq!(night.minutes_until_open(18 * 60), 60);
        assert_eq!(night.minutes_until_open(20 * 60), 0);
        let day: Window = "08:30-17:00".parse().expect("valid");
        assert!(day.is_open(9 * 60) && !day.is_open(17 * 60) && !day.is_open(8 * 60));
        assert_eq!(day.minutes_until_open(18 * 60), 14 * 60 + 30);
        let always: Window = "00:00-00:00".parse().expect("valid");
        assert!(always.is_open(0) && always.is_open(1439));
        for (s, why) in [
            ("19:00", "no '-'"),
            ("25:00-07:00", "hours run"),
            ("19:60-07:00", "minutes"),
            ("7-9", "lacks ':'"),
            ("ab:00-07:00", "not a number"),
        ] {
            let err = s.parse::<Window>().expect_err(s).to_string();
            assert!(err.contains(why), "{s}: {err}");
        }
    }

    #[test]
    fn a_bucket_holds_its_rate_and_never_bursts_far_above_it() {
        // 1 MB/s in 64 KiB takes over 10 simulated seconds.
        let rate = Rate(1_000_000);
        let mut b = Bucket::new(rate, 64 * 1024, 0);
        let (mut now, mut sent) = (0u64, 0u64);
        let mut sent_by_ms = Vec::new();
        while now < 10_000 {
            match b.take(64 * 1024, now) {
                None => sent += 64 * 1024,
                Some(wait) => now += wait,
            }
            sent_by_ms.push((now, sent));
        }
        assert!(sent <= 10_000_000 + 2 * 64 * 1024, "sent {sent}");
        assert!(sent >= 10_000_000 - 64 * 1024, "sent {sent}");
        // No window of 100 ms saw more than its share plus one burst.
        let in_window = |from: u64| {
            let at = |t: u64| {
                sent_by_ms
                    .iter()
                    .take_while(|(n, _)| *n <= t)
                    .last()
                    .map_or(0, |x| x.1)
            };
            at(from + 100) - at(from)
        };
        for from in (0..9_800).step_by(50) {
            assert!(
                in_window(from) <= 100_000 + 2 * 64 * 1024,
                "burst at {from} ms"
            );
        }
    }
}
