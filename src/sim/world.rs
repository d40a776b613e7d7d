//! The run of a simulated fleet: its lanes side by side, one window of virtual time
//! at a time, and what they counted, put together.
//!
//! A conservative parallel discrete-event simulation. Every lane runs the events of
//! the window `[start, start + lookahead)` on its own thread; whatever a lane sends
//! another is due at or after the window's end (it crosses a link whose latency is at
//! least the lookahead, see [`super::fleet`]), so no lane runs past an event it has
//! not been given yet. At the end of each window the lanes meet: each hands the
//! others what it sent them and says where it stands, and every lane makes the same
//! choices from the same standings: where the next window starts (the earliest
//! pending event anywhere), when to take a timeline sample, and when the run is over.
//! What a lane receives joins its queue in the order of the sending lanes, so a run
//! does not depend on which thread got where first.

use super::fleet::Fleet;
use super::lane::{Ev, Lane, Standing};
use super::scenario::Scenario;
use super::summary::{Row, Tally};
use super::vnet::Driver;
use crate::engine::Millis;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

/// The run ends this long after the last thing that changed, once the script is done.
const QUIET: Millis = 120_000;

/// A fleet ready to run.
pub struct World<'s> {
    pub(super) fleet: Fleet<'s>,
}

/// Events in transit from one lane to another.
type Mail = Mutex<Vec<(Millis, Ev)>>;

/// Where the lanes meet at the end of each window. Everything comes twice, for even
/// and odd windows: a lane that is through a meeting may write the next window's
/// while a slower one still reads this one's.
struct Meeting {
    lanes: usize,
    /// `mail[parity][from * lanes + to]`.
    mail: [Vec<Mail>; 2],
    standing: [Vec<Mutex<Standing>>; 2],
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// A lane panicked: the others stop waiting for it.
    failed: AtomicBool,
    /// How many lanes sleep on `woken`. Held to change `generation` or `failed` and to
    /// go to sleep, so that no lane sleeps through the wake-up it waits for.
    sleepers: Mutex<usize>,
    woken: Condvar,
}

impl Meeting {
    fn new(lanes: usize) -> Meeting {
        let mail = || (0..lanes * lanes).map(|_| Mutex::new(Vec::new())).collect();
        let standing = || (0..lanes).map(|_| Mutex::default()).collect();
        Meeting {
            lanes,
            mail: [mail(), mail()],
            standing: [standing(), standing()],
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            woken: Condvar::new(),
        }
    }

    /// Waits until every lane is here, asleep, so that its core goes to the lanes still
    /// working or to whatever else the machine runs; the last lane to arrive wakes the
    /// others. A window is milliseconds of work (fleet-100k.toml meets ~19,000 times in
    /// ~130 CPU-s), so the wake-up costs next to nothing, and a lane that spun or
    /// yielded instead would take the core a lane it waits for needs when the machine
    /// is busy. Panics if another lane failed.
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.lanes {
            self.arrived.store(0, Ordering::Relaxed);
            let sleepers = lock(&self.sleepers);
            self.generation.fetch_add(1, Ordering::Release);
            if *sleepers > 0 {
                drop(sleepers);
                self.woken.notify_all();
            }
            return;
        }
        let mut sleepers = lock(&self.sleepers);
        while self.generation.load(Ordering::Acquire) == generation {
            if self.failed.load(Ordering::Relaxed) {
                panic!("another lane of the simulation failed");
            }
            *sleepers += 1;
            sleepers = self
                .woken
                .wait(sleepers)
                .unwrap_or_else(PoisonError::into_inner);
            *sleepers -= 1;
        }
    }

    /// Tells the waiting lanes that one failed, and wakes them.
    fn fail(&self) {
        let _sleepers = lock(&self.sleepers);
        self.failed.store(true, Ordering::Relaxed);
        self.woken.notify_all();
    }
}

/// Locks what the lanes share. A lock is only poisoned by a lane that panicked, and
/// then the run is over anyway; what it holds is still whole (every write is one
/// assignment or swap), so every lane reads the same.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tells the other lanes when this one panics, so that they do not wait for it.
struct FailOnPanic<'m>(&'m Meeting);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail();
        }
    }
}

/// What a lane's run ends with: the lane, the timeline rows, and the time it stopped.
type Ended<'f> = (Lane<'f>, Vec<Row>, Millis);

impl<'s> World<'s> {
    /// Builds the tree and its links.
    pub fn new(sc: &'s Scenario, seed: u64) -> Result<World<'s>, crate::trust::TrustError> {
        let fleet = Fleet::new(sc, seed)?;
        tracing::debug!(
            lanes = fleet.lanes,
            lookahead_ms = fleet.lookahead,
            "simulating the fleet"
        );
        Ok(World { fleet })
    }

    /// Runs until the script is done and nothing has changed for a while, or until the
    /// scenario's time limit, and returns what was counted. `progress` is told the
    /// virtual time and the installs so far at every timeline sample.
    pub fn run(&self, progress: &mut dyn FnMut(Millis, u64)) -> Tally {
        let fleet = &self.fleet;
        let meeting = Meeting::new(fleet.lanes);
        let mut ended: Vec<Ended> = std::thread::scope(|s| {
            let others: Vec<_> = (1..fleet.lanes)
                .map(|id| {
                    let meeting = &meeting;
                    s.spawn(move || run_lane(fleet, id, meeting, &mut |_, _| {}))
                })
                .collect();
            let first = run_lane(fleet, 0, &meeting, progress);
            std::iter::once(first)
                .chain(others.into_iter().map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                }))
                .collect()
        });
        let (_, rows, stopped) = &mut ended[0];
        let (rows, stopped) = (std::mem::take(rows), *stopped);
        let lanes: Vec<Lane> = ended.into_iter().map(|(lane, _, _)| lane).collect();
        self.put_together(lanes, rows, stopped)
    }

    /// One tally of the lanes' counts, with the timeline and the links' peaks.
    fn put_together(&self, lanes: Vec<Lane>, rows: Vec<Row>, stopped: Millis) -> Tally {
        let fleet = &self.fleet;
        // A queue is used by one lane only; the others' copies of it stay idle.
        let peak = |q: u32| {
            lanes
                .iter()
                .map(|l| l.vnet.network().queue(q as usize).peak())
                .fold(0.0, f64::max)
        };
        let mut peaks = vec![("root up".to_string(), peak(fleet.links[0].up))];
        let mut sites = std::collections::BTreeSet::new();
        for i in 1..fleet.links.len() {
            let link = &fleet.links[i];
            let name = &fleet.sc.tiers[fleet.tier_of(i as u32)].name;
            peaks.push((format!("{name} down"), peak(link.down)));
            peaks.push((format!("{name} up"), peak(link.up)));
            if link.site_link != super::network::NONE && sites.insert(link.site_link) {
                peaks.push((format!("{name} site WAN down"), peak(link.site_link)));
                peaks.push((format!("{name} site WAN up"), peak(link.site_link + 1)));
            }
        }
        let mut parts = lanes.into_iter().map(|l| l.tally);
        let mut tally = parts
            .next()
            .unwrap_or_else(|| Tally::new(fleet.sc, &fleet.tier_start, fleet.batches.len()));
        for part in parts {
            tally.absorb(part);
        }
        for (class, p) in peaks {
            tally.note_peak(class, p);
        }
        tally.set_rows(rows);
        tally.ended = stopped;
        tally.record(stopped, true);
        tally
    }
}

/// Runs lane `id` of `fleet` to the end of the run, window by window, meeting the
/// other lanes at the end of each.
fn run_lane<'f>(
    fleet: &'f Fleet<'f>,
    id: usize,
    meeting: &Meeting,
    progress: &mut dyn FnMut(Millis, u64),
) -> Ended<'f> {
    let _fail = FailOnPanic(meeting);
    let sc = fleet.sc;
    let lanes = fleet.lanes;
    let mut lane = Lane::new(fleet, id);
    let mut rows = Vec::new();
    let mut next_sample: Millis = 0;
    let mut start: Millis = 0;
    let mut parity = 0;
    let stopped = loop {
        let end = start
            .saturating_add(fleet.lookahead)
            .min(next_sample)
            .min(sc.until.saturating_add(1));
        let sample = end == next_sample && end <= sc.until;
        lane.run_until(end);
        let standing = lane.standing(sample, |to, events| {
            std::mem::swap(&mut *lock(&meeting.mail[parity][id * lanes + to]), events);
        });
        *lock(&meeting.standing[parity][id]) = standing;
        meeting.wait();
        for from in (0..lanes).filter(|l| *l != id) {
            lane.vnet
                .receive(&mut lock(&meeting.mail[parity][from * lanes + id]));
        }
        // What every lane makes of the standings, read in place.
        let mut next = None;
        let mut scripted = 0;
        let mut last_change = 0;
        let mut row = sample.then(|| Row::empty(end));
        for slot in &meeting.standing[parity] {
            let s = lock(slot);
            next = [next, s.next, s.sent].into_iter().flatten().min();
            scripted += s.scripted;
            last_change = last_change.max(s.last_change);
            if let (Some(row), Some(r)) = (row.as_mut(), &s.row) {
                row.add(r);
            }
        }
        parity ^= 1;
        if let Some(row) = row {
            progress(end, row.installed_of_all());
            rows.push(row);
            if (scripted == 0 && end.saturating_sub(last_change) >= QUIET) || next.is_none() {
                break end;
            }
            next_sample += sc.sample;
        }
        if end > sc.until {
            break sc.until;
        }
        start = next.map_or(next_sample, |t| t.min(next_sample));
    };
    lane.finish();
    (lane, rows, stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_wait_for_each_other_at_every_meeting() {
        let meeting = Meeting::new(2);
        let counter = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for round in 0..1000 {
                        counter.fetch_add(1, Ordering::SeqCst);
                        meeting.wait();
                        // Both lanes have counted this round, and neither the next.
                        assert_eq!(counter.load(Ordering::SeqCst), 2 * (round + 1));
                        meeting.wait();
                    }
                });
            }
        });
    }

    #[test]
    fn a_lane_that_waits_for_another_sleeps_until_it_arrives() {
        let meeting = Meeting::new(2);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| meeting.wait());
            // The waiting lane goes to sleep (it neither spins nor yields, which would
            // take a core from the lane it waits for on a busy machine).
            let asleep = std::time::Instant::now();
            while *lock(&meeting.sleepers) == 0 {
                assert!(
                    asleep.elapsed() < std::time::Duration::from_secs(30),
                    "the waiting lane never slept"
                );
                std::thread::yield_now();
            }
            assert!(!waiter.is_finished(), "it waits for the other lane");
            meeting.wait();
            waiter
                .join()
                .expect("the waiting lane is woken and goes on");
        });
        assert_eq!(*lock(&meeting.sleepers), 0);
    }

    #[test]
    fn a_lane_that_panics_does_not_leave_the_others_waiting() {
        let meeting = Meeting::new(2);
        let waiter = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _fail = FailOnPanic(&meeting);
                meeting.wait();
            });
            let failing = s.spawn(|| {
                let _fail = FailOnPanic(&meeting);
                panic!("a lane fails");
            });
            assert!(failing.join().is_err());
            waiter.join()
        });
        assert!(waiter.is_err(), "the waiting lane gives up");
    }
}
