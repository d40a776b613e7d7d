//! Log lines that peers cause, capped so that no peer can flood the log.
//!
//! Every warning a peer's input can trigger (a refused stream, a bad frame, a message
//! its role may not send, a bad chunk) goes through [`admit`] with the peer and a fixed
//! kind. Of each (peer, kind), the first [`BURST`] lines of a minute are written; the
//! rest are counted and written as one line when the minute is over: "…and N more in
//! the last minute". At most [`MAX_LINES`] such lines a minute are written for all
//! peers together (a stranger can mint identities for free); past that, one line a
//! minute says how many were left out. So a flood of any size writes a few lines a
//! minute per peer, and a few hundred at most in all.
//!
//! Memory: at most [`MAX_KEYS`] (peer, kind) pairs are tracked; past that, lines of new
//! pairs count against the minute's total only.

use crate::trust::PublicKey;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Lines of one (peer, kind) written in a minute before the rest are counted.
pub const BURST: u32 = 3;
/// Peer-caused lines written in a minute, all peers together.
pub const MAX_LINES: u32 = 300;
/// (peer, kind) pairs tracked at once.
pub const MAX_KEYS: usize = 1024;
/// The window lines are counted in.
const WINDOW: Duration = Duration::from_secs(60);

struct Tally {
    since: Instant,
    written: u32,
    held_back: u64,
}

struct Gate {
    keys: HashMap<(PublicKey, &'static str), Tally>,
    /// The current minute for all peers: when it began, lines written, lines left out.
    since: Instant,
    written: u32,
    left_out: u64,
}

static GATE: LazyLock<Mutex<Gate>> = LazyLock::new(|| {
    Mutex::new(Gate {
        keys: HashMap::new(),
        since: Instant::now(),
        written: 0,
        left_out: 0,
    })
});

/// Whether a line of `kind` caused by `peer` may be written now. Counts it either way.
pub fn admit(peer: &PublicKey, kind: &'static str) -> bool {
    admit_at(peer, kind, Instant::now())
}

fn admit_at(peer: &PublicKey, kind: &'static str, now: Instant) -> bool {
    let mut g = GATE.lock().unwrap_or_else(|p| p.into_inner());
    roll_total(&mut g, now);
    let room = g.keys.len() < MAX_KEYS;
    let written = match g.keys.get_mut(&(*peer, kind)) {
        Some(t) if t.written < BURST => {
            t.written += 1;
            true
        }
        Some(t) => {
            t.held_back += 1;
            false
        }
        None if room => {
            g.keys.insert(
                (*peer, kind),
                Tally {
                    since: now,
                    written: 1,
                    held_back: 0,
                },
            );
            true
        }
        None => false,
    };
    if written && g.written < MAX_LINES {
        g.written += 1;
        return true;
    }
    if written && let Some(t) = g.keys.get_mut(&(*peer, kind)) {
        // Over the total: counted as held back for this peer after all.
        t.written -= 1;
        t.held_back += 1;
    }
    g.left_out += 1;
    false
}

fn roll_total(g: &mut Gate, now: Instant) {
    if now.duration_since(g.since) >= WINDOW {
        if g.left_out > 0 {
            tracing::warn!(
                "{} more log lines caused by peers were left out in the last minute",
                g.left_out
            );
        }
        g.since = now;
        g.written = 0;
        g.left_out = 0;
    }
}

/// Writes the "…and N more" line of every (peer, kind) whose minute is over, and
/// forgets those with nothing held back. The daemon calls it once a second.
pub fn flush() {
    flush_at(Instant::now());
}

fn flush_at(now: Instant) {
    let mut g = GATE.lock().unwrap_or_else(|p| p.into_inner());
    roll_total(&mut g, now);
    g.keys.retain(|(peer, kind), t| {
        if now.duration_since(t.since) < WINDOW {
            return true;
        }
        if t.held_back > 0 {
            tracing::warn!(
                peer = %peer.node_id(),
                "{kind}: …and {} more in the last minute",
                t.held_back
            );
        }
        false
    });
}

/// Writes a warning caused by `peer`, unless the peer has had its share of lines
/// ([`admit`]). `kind` names the kind of line: lines of one kind are counted together.
#[macro_export]
macro_rules! peer_warn {
    ($peer:expr, $kind:expr, $($arg:tt)+) => {{
        let peer: &$crate::trust::PublicKey = &$peer;
        if $crate::net::logcap::admit(peer, $kind) {
            tracing::warn!(peer = %peer.node_id(), $($arg)+);
        }
    }};
}

/// Like [`peer_warn!`], at the info level, for lines a peer can cause over and over
/// (sessions coming up and going).
#[macro_export]
macro_rules! peer_info {
    ($peer:expr, $kind:expr, $($arg:tt)+) => {{
        let peer: &$crate::trust::PublicKey = &$peer;
        if $crate::net::logcap::admit(peer, $kind) {
            tracing::info!(peer = %peer.node_id(), $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the gate is process-wide.
    #[test]
    fn a_flood_writes_a_burst_then_a_summary_and_the_total_is_capped() {
        let t0 = Instant::now();
        let p = PublicKey([7; 32]);
        let written = (0..50_000)
            .filter(|_| admit_at(&p, "test-flood", t0))
            .count();
        assert_eq!(written, BURST as usize);
        {
            let g = GATE.lock().expect("gate");
            assert_eq!(
                g.keys[&(p, "test-flood")].held_back,
                50_000 - u64::from(BURST)
            );
        }
        // After a minute the summary is written and the pair forgotten.
        flush_at(t0 + WINDOW);
        assert!(
            !GATE
                .lock()
                .expect("gate")
                .keys
                .contains_key(&(p, "test-flood"))
        );
        // Many identities: at most MAX_LINES in a minute in all.
        let t1 = t0 + WINDOW * 2;
        let mut total = 0;
        for i in 0..5_000u32 {
            let mut k = [9u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            total += (0..5)
                .filter(|_| admit_at(&PublicKey(k), "test-many", t1))
                .count();
        }
        assert!(total <= MAX_LINES as usize, "{total} lines");
        assert!(GATE.lock().expect("gate").keys.len() <= MAX_KEYS);
        flush_at(t1 + WINDOW);
    }
}
