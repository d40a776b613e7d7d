//! The engine against peers that fail or lie, in virtual time: one leaf engine, and a
//! script playing its parent, a sibling or a child. Each test checks a bound the leaf
//! keeps whatever the peer does: how often it asks a source that lies, how long a
//! silent sibling or a frozen parent costs it, that its clock is called out when it is
//! off, and that a peer breaking its role is cut off and banned.

mod common;

use arbor::engine::{
    ChunkVerdict, Config, Control, Engine, Event, FetchId, Millis, Offence, Output, PeerId, Role,
    Standing,
};
use arbor::rules::{ALL, Approval, FULL_WAVE, Rules, SignedRules};
use arbor::trust::{SecretKey, SignedManifest};
use common::synthetic_update;
use std::sync::Arc;

const T0: Millis = 1_767_225_600_000;
const DAY: u64 = 86_400;

fn secret(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn root_secret() -> SecretKey {
    secret(200)
}

/// The parent (the root node), the leaf, a sibling and a child of the leaf.
fn parent() -> PeerId {
    secret(1).public()
}
fn leaf_key() -> PeerId {
    secret(2).public()
}
fn sibling() -> PeerId {
    secret(3).public()
}

/// A fetch the leaf asked for.
struct Asked {
    id: FetchId,
    from: PeerId,
    first: u32,
    count: u32,
    at: Millis,
}

/// A leaf under `parent()`, with an update of `chunks` chunks offered, available and
/// announced by the parent.
struct Leaf {
    e: Engine,
    now: Millis,
    m: Arc<SignedManifest>,
    asked: Vec<Asked>,
    /// How many of `asked` were answered (or left unanswered for good).
    answered: usize,
    events: Vec<Event>,
    disconnects: Vec<PeerId>,
    sent: Vec<(PeerId, Control)>,
}

impl Leaf {
    fn new(chunks: u32, config: Config) -> Leaf {
        let e = Engine::new(
            Role::Member { parent: parent() },
            root_secret().public(),
            secret(2),
            vec![parent(), leaf_key()],
            config,
            7,
        );
        let mut leaf = Leaf {
            e,
            now: T0,
            m: synthetic_update(chunks, &root_secret()),
            asked: Vec::new(),
            answered: 0,
            events: Vec::new(),
            disconnects: Vec::new(),
            sent: Vec::new(),
        };
        leaf.input(|e, now| e.handle_connected(parent(), now));
        let secs = T0 / 1000;
        let mut rules = Rules::new(parent(), secs);
        let approval = Approval {
            subtree: true,
            ..Approval::wave(FULL_WAVE)
        };
        rules.approve(leaf.m.id, ALL, approval).expect("approve");
        let rules = SignedRules::sign(&secret(1), secs, secs + DAY, rules).expect("rules");
        leaf.from(
            parent(),
            Control::Rules {
                sets: vec![rules.bytes.into()],
            },
        );
        let manifest = leaf.m.bytes.clone();
        leaf.from(parent(), Control::Offer { manifest });
        leaf
    }

    /// Runs `f` on the engine at the current time, then takes its outputs.
    fn input(&mut self, f: impl FnOnce(&mut Engine, Millis)) {
        f(&mut self.e, self.now);
        while let Some(out) = self.e.poll_output() {
            match out {
                Output::Fetch {
                    id,
                    from,
                    first,
                    count,
                    ..
                } => self.asked.push(Asked {
                    id,
                    from,
                    first,
                    count,
                    at: self.now,
                }),
                Output::StoreManifest { manifest } => {
                    let none = vec![false; manifest.chunks.len()];
                    self.e.handle_local_have(manifest.id, &none, self.now);
                }
                Output::Event(e) => self.events.push(e),
                Output::Disconnect { peer, .. } => self.disconnects.push(peer),
                Output::Send { to, msg } => self.sent.push((to, msg)),
                _ => {}
            }
        }
    }

    fn from(&mut self, peer: PeerId, msg: Control) {
        self.input(|e, now| e.handle_message(peer, msg, now));
    }

    fn have_all(&mut self, peer: PeerId) {
        let update = self.m.id;
        let n = self.m.chunks.len() as u32;
        self.from(
            peer,
            Control::Have {
                update,
                ranges: vec![(0, n)],
            },
        );
    }

    /// Answers every open fetch with `verdict` per chunk (`None`: not at all), then ends
    /// it, and moves time on to `until` through the engine's timers, calling `tick`
    /// every 50 ms.
    fn run(
        &mut self,
        until: Millis,
        mut answer: impl FnMut(&Asked) -> Option<ChunkVerdict>,
        mut tick: impl FnMut(&mut Leaf),
    ) {
        let mut next_tick = self.now + 50;
        while self.now < until {
            while self.answered < self.asked.len() {
                let a = &self.asked[self.answered];
                self.answered += 1;
                let (id, first, count) = (a.id, a.first, a.count);
                if let Some(v) = answer(a) {
                    self.input(|e, now| {
                        e.handle_chunks(id, (first..first + count).map(|i| (i, v)), now);
                        e.handle_fetch_end(id, now);
                    });
                }
            }
            let timer = self.e.poll_timeout().unwrap_or(Millis::MAX);
            self.now = timer.min(next_tick).min(until).max(self.now);
            if self.now >= next_tick {
                next_tick += 50;
                tick(self);
            }
            if timer <= self.now {
                self.input(|e, now| e.handle_timeout(now));
            }
        }
    }

    fn asked_between(&self, from: Millis, to: Millis, of: PeerId) -> usize {
        self.asked
            .iter()
            .filter(|a| a.from == of && a.at >= from && a.at < to)
            .count()
    }
}

/// A leaf whose parent keeps announcing chunks and answers every request with
/// `verdict`: after 10 s it asks at most a few times a second.
fn a_lying_parent(verdict: ChunkVerdict) -> (usize, usize) {
    let mut leaf = Leaf::new(64, Config::default());
    leaf.have_all(parent());
    leaf.run(T0 + 20_000, |_| Some(verdict), |l| l.have_all(parent()));
    let first = leaf.asked_between(T0, T0 + 10_000, parent());
    let late = leaf.asked_between(T0 + 10_000, T0 + 20_000, parent());
    (first, late)
}

#[test]
fn a_parent_that_announces_then_answers_missing_is_asked_a_few_times_not_in_a_loop() {
    let (first, late) = a_lying_parent(ChunkVerdict::Missing);
    assert!(first > 0);
    assert!(late <= 10, "{late} requests in the second 10 s");
}

#[test]
fn a_parent_that_sends_only_bad_bytes_is_asked_a_few_times_not_in_a_loop() {
    let (first, late) = a_lying_parent(ChunkVerdict::Bad);
    assert!(first > 0);
    assert!(late <= 10, "{late} requests in the second 10 s");
}

#[test]
fn a_source_that_delivers_again_is_asked_at_full_speed_again() {
    let mut leaf = Leaf::new(64, Config::default());
    leaf.have_all(parent());
    let healthy_from = T0 + 5_000;
    leaf.run(
        T0 + 30_000,
        |a| {
            Some(if a.at < healthy_from {
                ChunkVerdict::Missing
            } else {
                ChunkVerdict::Stored { wire: 64 * 1024 }
            })
        },
        |l| {
            if l.now < T0 + 6_000 {
                l.have_all(parent())
            }
        },
    );
    assert!(leaf.e.is_complete(&leaf.m.id), "the update never completed");
}

/// The parent announces every chunk; the leaf's first requests are answered "not held"
/// after the parent announced the chunks `again` (as when it quarantined a damaged copy
/// and fetched it back before the answer left). Every later request is served. Returns
/// whether the leaf completed within 30 s, and its requests to the parent.
fn missing_then_served(again: bool) -> (bool, usize) {
    let mut leaf = Leaf::new(16, Config::default());
    leaf.have_all(parent());
    let first = leaf.asked.len();
    assert!(first > 0, "nothing asked");
    if again {
        leaf.have_all(parent());
    }
    leaf.run(
        T0 + 30_000,
        |a| {
            Some(if a.at == T0 {
                ChunkVerdict::Missing
            } else {
                ChunkVerdict::Stored { wire: 64 * 1024 }
            })
        },
        |_| {},
    );
    (leaf.e.is_complete(&leaf.m.id), leaf.asked.len())
}

#[test]
fn a_not_held_answer_older_than_the_parents_announcement_does_not_hide_the_chunk() {
    let (complete, asked) = missing_then_served(true);
    assert!(
        complete,
        "the chunks announced again were never asked again"
    );
    assert!(asked > 1);
    // Without the announcement the answer stands: the chunks wait for one.
    let (complete, _) = missing_then_served(false);
    assert!(
        !complete,
        "chunks the parent said it lacks were asked again unannounced"
    );
}

#[test]
fn a_silent_sibling_costs_its_site_under_5_s_then_the_parent_serves() {
    let mut leaf = Leaf::new(32, Config::default());
    leaf.from(
        parent(),
        Control::Siblings {
            peers: vec![sibling()],
        },
    );
    leaf.input(|e, now| {
        assert!(e.handle_sibling_connected(sibling(), now));
    });
    leaf.have_all(sibling());
    let start = leaf.now;
    assert!(
        leaf.asked.iter().any(|a| a.from == sibling()),
        "the leaf asked its sibling nothing"
    );
    leaf.have_all(parent());
    // The sibling never answers; the parent serves everything it is asked.
    leaf.run(
        T0 + 60_000,
        |a| (a.from == parent()).then_some(ChunkVerdict::Stored { wire: 64 * 1024 }),
        |_| {},
    );
    assert!(leaf.e.is_complete(&leaf.m.id), "the update never completed");
    let sibling_chunks: Vec<(u32, u32)> = leaf
        .asked
        .iter()
        .filter(|a| a.from == sibling())
        .map(|a| (a.first, a.count))
        .collect();
    // When each chunk first asked of the sibling was asked of the parent.
    let fallback = leaf
        .asked
        .iter()
        .filter(|a| a.from == parent())
        .filter(|a| {
            sibling_chunks
                .iter()
                .any(|(f, c)| a.first < f + c && *f < a.first + a.count)
        })
        .map(|a| a.at)
        .min()
        .expect("the sibling's chunks were asked of the parent");
    assert!(
        fallback - start < 5_000,
        "the silent sibling cost {} ms",
        fallback - start
    );
}

#[test]
fn a_frozen_parent_is_given_up_within_15_s_and_said_so() {
    let mut leaf = Leaf::new(8, Config::default());
    let start = leaf.now;
    // Nothing from the parent from now on.
    leaf.run(T0 + 30_000, |_| None, |_| {});
    let since = leaf
        .events
        .iter()
        .find_map(|e| match e {
            Event::Unresponsive { peer, since } if *peer == parent() => Some(*since),
            _ => None,
        })
        .expect("the frozen parent was never noticed");
    assert_eq!(since, start);
    assert!(leaf.disconnects.contains(&parent()));
    assert_eq!(leaf.e.parent_silent_since(), Some(start));
    assert_eq!(leaf.e.parent_connected(), Some(false));
    // It pinged its parent meanwhile, every 5 s.
    let pings = leaf
        .sent
        .iter()
        .filter(|(to, m)| *to == parent() && matches!(m, Control::Ping { .. }))
        .count();
    assert!(pings >= 2, "{pings} pings");
}

#[test]
fn a_parent_that_pings_is_never_given_up() {
    let mut leaf = Leaf::new(8, Config::default());
    leaf.run(
        T0 + 60_000,
        |_| None,
        |l| {
            if (l.now - T0).is_multiple_of(5_000) {
                let time = l.now;
                l.from(parent(), Control::Ping { time });
            }
        },
    );
    assert!(
        !leaf
            .events
            .iter()
            .any(|e| matches!(e, Event::Unresponsive { .. })),
        "a live parent was given up"
    );
}

#[test]
fn a_clock_days_off_is_called_out_in_every_time_error() {
    let mut leaf = Leaf::new(8, Config::default());
    // The parent's clock says 8 days earlier than this node's.
    let behind = leaf.now - 8 * DAY * 1000;
    leaf.from(parent(), Control::Ping { time: behind });
    assert_eq!(
        leaf.e.clock_note().as_deref(),
        Some("this node's clock is 8 days ahead of its parent's")
    );
    // Rules the parent signed by its clock, for a week: expired by this node's.
    let issued = behind / 1000;
    let rules = SignedRules::sign(
        &secret(1),
        issued + 10,
        issued + 7 * DAY,
        Rules::new(parent(), issued),
    )
    .expect("rules");
    leaf.from(
        parent(),
        Control::Rules {
            sets: vec![rules.bytes.into()],
        },
    );
    let refused = leaf
        .events
        .iter()
        .find_map(|e| match e {
            Event::RulesRefused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .expect("the rules were refused");
    assert!(refused.contains("expired"), "{refused}");
    assert!(
        refused.contains("this node's clock is 8 days ahead of its parent's"),
        "{refused}"
    );
    // Within the tolerance, nothing is said.
    leaf.from(
        parent(),
        Control::Ping {
            time: leaf.now - 60_000,
        },
    );
    assert_eq!(leaf.e.clock_note(), None);
}

#[test]
fn a_peer_breaking_its_role_is_cut_off_and_banned_a_parent_only_cut_off() {
    let child = secret(9).public();
    let mut e = Engine::new(
        Role::Member { parent: parent() },
        root_secret().public(),
        secret(2),
        vec![parent(), leaf_key()],
        Config::default(),
        1,
    );
    e.add_child(child, false, T0);
    e.handle_connected(child, T0);
    let mut events = Vec::new();
    let mut disconnects = 0;
    for i in 0..3 {
        let offer = Control::Offer {
            manifest: vec![0u8; 8].into(),
        };
        e.handle_message(child, offer, T0 + i);
        while let Some(out) = e.poll_output() {
            match out {
                Output::Event(ev) => events.push(ev),
                Output::Disconnect { peer, .. } if peer == child => disconnects += 1,
                _ => {}
            }
        }
        e.handle_connected(child, T0 + i);
    }
    assert!(disconnects >= 3, "each wrong message ends the session");
    assert!(events.iter().any(|ev| matches!(
        ev,
        Event::Misbehaved {
            offence: Offence::WrongRole,
            ..
        }
    )));
    let until = events
        .iter()
        .find_map(|ev| match ev {
            Event::Banned { peer, until, .. } if *peer == child => Some(*until),
            _ => None,
        })
        .expect("banned after three");
    assert_eq!(e.standing(&child, T0 + 10), Standing::Banned);
    assert_eq!(e.bans(T0 + 10).len(), 1);
    assert_eq!(e.standing(&child, until), Standing::Child);
    // The parent is cut off as often as it breaks its role, and never banned.
    for i in 0..5 {
        let report = Control::Report {
            report: vec![0u8; 4].into(),
        };
        e.handle_message(parent(), report, T0 + 100 + i);
    }
    assert_eq!(e.standing(&parent(), T0 + 200), Standing::Parent);
}
