//! The engine's installer, sans-IO, in virtual time: one client leaf under a scripted
//! parent. Each test checks a decision a client makes about its modules (which
//! version, which bytes, when to try again, what to do with a withdrawn one, one job at
//! a time), whatever driver carries it out: the daemon and the simulator run this code.

use arbor::content::Hash;
use arbor::content::manifest::{ChunkRef, FileEntry, Manifest, ModuleName};
use arbor::engine::installer::{
    InstallDone, InstallJob, InstallTask, MAX_REPAIR_TRIES, ModuleState, RETRY_MIN, Version,
    Withdrawn,
};
use arbor::engine::{
    ChunkVerdict, Config, Control, Engine, Event, FetchId, Millis, Output, PeerId, Role,
};
use arbor::report::State;
use arbor::rules::{ALL, Approval, FULL_WAVE, Rules, SignedRules};
use arbor::trust::{SecretKey, SignedManifest};
use std::collections::BTreeMap;
use std::sync::Arc;

const T0: Millis = 1_767_225_600_000;
const DAY: u64 = 86_400;

fn root() -> SecretKey {
    SecretKey::from_seed([200; 32])
}
fn parent_secret() -> SecretKey {
    SecretKey::from_seed([1; 32])
}
fn parent() -> PeerId {
    parent_secret().public()
}

fn module() -> ModuleName {
    ModuleName {
        tenant: "acme".into(),
        category: "tools".into(),
        id: "viewer".into(),
    }
}

/// Version `version` of the module, published `seq`-th, of 4 chunks of its own.
fn version(version: &str, seq: u64) -> Arc<SignedManifest> {
    let chunks: Vec<ChunkRef> = (0..4u32)
        .map(|i| ChunkRef(Hash::of(format!("{version}/{i}").as_bytes()), 1024))
        .collect();
    let m = Manifest {
        id: "viewer".into(),
        files: vec![FileEntry {
            mode: 0o644,
            path: "viewer.bin".into(),
            size: 4096,
            chunks,
        }],
        tenant: "acme".into(),
        created: 1_767_225_600,
        version: version.into(),
        category: "tools".into(),
        total_size: 4096,
        description: None,
        post_install: None,
    };
    Arc::new(SignedManifest::sign(&root(), seq, m).expect("sign"))
}

/// A client leaf whose parent offers and approves updates; fetches are answered at
/// once with every chunk.
struct Client {
    e: Engine,
    now: Millis,
    jobs: Vec<InstallJob>,
    /// Updates whose chunks were asked for.
    fetched: Vec<Hash>,
    events: Vec<Event>,
    rules_version: u64,
}

impl Client {
    fn new(policy: Withdrawn, modules: BTreeMap<ModuleName, ModuleState>) -> Client {
        let me = SecretKey::from_seed([2; 32]);
        let e = Engine::new(
            Role::Member { parent: parent() },
            root().public(),
            me.clone(),
            vec![parent(), me.public()],
            Config::default(),
            7,
        );
        let mut c = Client {
            e,
            now: T0,
            jobs: Vec::new(),
            fetched: Vec::new(),
            events: Vec::new(),
            rules_version: 0,
        };
        c.input(|e, now| e.start_installer(policy, modules, now));
        c.input(|e, now| e.handle_connected(parent(), now));
        c
    }

    /// Runs `f` at the current time, then carries out the outputs: manifests are
    /// stored with nothing held, fetches answered whole, jobs kept for the test.
    fn input(&mut self, f: impl FnOnce(&mut Engine, Millis)) {
        f(&mut self.e, self.now);
        loop {
            let mut fetches: Vec<(FetchId, u32, u32)> = Vec::new();
            while let Some(out) = self.e.poll_output() {
                match out {
                    Output::StoreManifest { manifest } => {
                        let none = vec![false; manifest.chunks.len()];
                        self.e.handle_local_have(manifest.id, &none, self.now);
                    }
                    Output::Fetch {
                        id,
                        update,
                        first,
                        count,
                        ..
                    } => {
                        self.fetched.push(update);
                        fetches.push((id, first, count));
                    }
                    Output::Installer(job) => self.jobs.push(job),
                    Output::Event(e) => self.events.push(e),
                    _ => {}
                }
            }
            if fetches.is_empty() {
                return;
            }
            for (id, first, count) in fetches {
                let verdicts =
                    (first..first + count).map(|i| (i, ChunkVerdict::Stored { wire: 1024 }));
                self.e.handle_chunks(id, verdicts, self.now);
                self.e.handle_fetch_end(id, self.now);
            }
        }
    }

    /// The parent's rules approve exactly `approved` for everyone.
    fn approve(&mut self, approved: &[&Arc<SignedManifest>]) {
        self.rules_version += 1;
        let secs = T0 / 1000 + self.rules_version;
        let mut rules = Rules::new(parent(), secs);
        for m in approved {
            let approval = Approval {
                subtree: true,
                ..Approval::wave(FULL_WAVE)
            };
            rules.approve(m.id, ALL, approval).expect("approve");
        }
        let signed =
            SignedRules::sign(&parent_secret(), secs, secs + DAY, rules).expect("sign rules");
        let sets = vec![signed.bytes.into()];
        self.input(|e, now| e.handle_message(parent(), Control::Rules { sets }, now));
    }

    /// The parent offers `m` and announces it holds every chunk of it.
    fn offer(&mut self, m: &Arc<SignedManifest>) {
        let manifest = m.bytes.clone();
        self.input(|e, now| e.handle_message(parent(), Control::Offer { manifest }, now));
        let (update, n) = (m.id, m.chunks.len() as u32);
        let ranges = vec![(0, n)];
        self.input(|e, now| e.handle_message(parent(), Control::Have { update, ranges }, now));
    }

    fn done(&mut self, done: InstallDone) {
        self.input(|e, now| e.handle_install_done(done, None, now));
    }

    /// Moves time on to `at`, through the engine's timers.
    fn run_to(&mut self, at: Millis) {
        while let Some(t) = self.e.poll_timeout().filter(|t| *t <= at) {
            self.now = t.max(self.now);
            self.input(|e, now| e.handle_timeout(now));
        }
        self.now = at;
    }

    fn state(&self, m: &Arc<SignedManifest>) -> Option<(State, Option<String>)> {
        self.e
            .own_states()
            .into_iter()
            .find(|s| s.update == m.id)
            .map(|s| (s.state, s.reason))
    }

    fn installs(&self) -> Vec<Hash> {
        self.jobs
            .iter()
            .filter_map(|j| match j {
                InstallJob::Install { manifest } => Some(manifest.id),
                _ => None,
            })
            .collect()
    }
}

/// An install directory holding `current` of the module.
fn holding(current: &Arc<SignedManifest>) -> BTreeMap<ModuleName, ModuleState> {
    let state = ModuleState {
        current: Some(Version {
            update: current.id,
            version: current.manifest.version.clone(),
        }),
        ..ModuleState::default()
    };
    BTreeMap::from([(module(), state)])
}

#[test]
fn the_newest_approved_version_is_installed_and_only_its_bytes_are_fetched() {
    let (v9, v10) = (version("1.9", 1), version("1.10", 2));
    let mut c = Client::new(Withdrawn::Keep, BTreeMap::new());
    c.approve(&[&v9, &v10]);
    // The older version, offered after the newer, is never fetched.
    c.offer(&v10);
    c.offer(&v9);
    assert!(c.fetched.iter().all(|u| *u == v10.id), "1.9 was fetched");
    assert!(c.fetched.contains(&v10.id), "1.10 was not fetched");
    assert_eq!(c.installs(), vec![v10.id]);
    // One job at a time: nothing more until it is done.
    assert_eq!(c.jobs.len(), 1);
    c.done(InstallDone::Installed {
        update: v10.id,
        result: Ok(None),
        hook: None,
    });
    assert_eq!(c.state(&v10).map(|s| s.0), Some(State::Installed));
    assert_eq!(c.jobs.len(), 1, "a job after the install: {:?}", c.jobs);
}

#[test]
fn an_upgrade_fetches_the_new_version_and_reports_what_it_replaced() {
    let (v1, v2) = (version("1.0", 1), version("2.0", 2));
    let mut c = Client::new(Withdrawn::Keep, holding(&v1));
    c.approve(&[&v1]);
    c.offer(&v1);
    assert!(
        c.fetched.is_empty(),
        "the installed version was fetched again"
    );
    assert!(c.jobs.is_empty(), "{:?}", c.jobs);
    c.approve(&[&v1, &v2]);
    c.offer(&v2);
    assert!(c.fetched.contains(&v2.id));
    assert_eq!(c.installs(), vec![v2.id]);
    c.done(InstallDone::Installed {
        update: v2.id,
        result: Ok(Some(v1.id)),
        hook: None,
    });
    assert_eq!(
        c.state(&v2),
        Some((State::Installed, Some("installed in place of 1.0".into())))
    );
    assert_eq!(
        c.state(&v1).and_then(|s| s.1),
        Some("replaced by 2.0".into())
    );
    let now =
        c.e.installed_modules()
            .and_then(|m| m.get(&module()).cloned());
    assert_eq!(now.and_then(|s| s.current).map(|v| v.update), Some(v2.id));
}

#[test]
fn a_failed_install_is_tried_again_after_a_minute_then_two() {
    let v1 = version("1.0", 1);
    let mut c = Client::new(Withdrawn::Keep, BTreeMap::new());
    c.approve(&[&v1]);
    c.offer(&v1);
    let fail = |c: &mut Client| {
        c.done(InstallDone::Installed {
            update: v1.id,
            result: Err("disk full".into()),
            hook: None,
        })
    };
    fail(&mut c);
    assert_eq!(
        c.state(&v1),
        Some((State::Failed, Some("install failed: disk full".into())))
    );
    let failed_at = c.now;
    c.run_to(failed_at + RETRY_MIN - 1);
    assert_eq!(c.installs().len(), 1, "tried again before a minute");
    c.run_to(failed_at + RETRY_MIN);
    assert_eq!(c.installs().len(), 2, "not tried again after a minute");
    fail(&mut c);
    let again_at = c.now;
    c.run_to(again_at + 2 * RETRY_MIN - 1);
    assert_eq!(c.installs().len(), 2, "the wait did not double");
    c.run_to(again_at + 2 * RETRY_MIN);
    assert_eq!(c.installs().len(), 3);
    let waits: Vec<Millis> = c
        .events
        .iter()
        .filter_map(|e| match e {
            Event::InstallFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert_eq!(waits, vec![RETRY_MIN, 2 * RETRY_MIN]);
}

#[test]
fn a_withdrawn_version_is_kept_by_default_and_removed_only_on_the_trees_word() {
    let v1 = version("1.0", 1);
    // Rules kept from an earlier session withdrew it: nothing is removed before the
    // parent, connected, has sent its rules.
    let mut c = Client::new(Withdrawn::Remove, holding(&v1));
    c.input(|e, now| e.handle_disconnected(parent(), now));
    c.approve(&[]);
    assert!(c.jobs.is_empty(), "{:?}", c.jobs);
    let mut c = Client::new(Withdrawn::Remove, holding(&v1));
    c.approve(&[]);
    assert_eq!(c.jobs, vec![InstallJob::Remove { module: module() }]);
    c.done(InstallDone::Removed {
        module: module(),
        result: Ok(Some(v1.id)),
    });
    assert!(c.e.installed_modules().is_some_and(|m| m.is_empty()));
    let mut c = Client::new(Withdrawn::Keep, holding(&v1));
    c.approve(&[]);
    assert!(
        c.jobs.is_empty(),
        "keep removed or changed something: {:?}",
        c.jobs
    );
}

#[test]
fn a_withdrawn_version_goes_back_to_the_newest_still_approved_with_remove() {
    let (v1, v2) = (version("1.0", 1), version("2.0", 2));
    let mut c = Client::new(Withdrawn::Remove, holding(&v2));
    c.approve(&[&v1, &v2]);
    c.offer(&v1);
    c.offer(&v2);
    assert!(c.jobs.is_empty(), "{:?}", c.jobs);
    c.approve(&[&v1]);
    assert_eq!(c.installs(), vec![v1.id], "not taken back to 1.0");
}

#[test]
fn a_version_the_admin_rolled_back_from_is_not_installed_again() {
    let (v1, v2) = (version("1.0", 1), version("2.0", 2));
    let mut modules = holding(&v1);
    if let Some(s) = modules.get_mut(&module()) {
        s.held = Some(v2.id);
    }
    let mut c = Client::new(Withdrawn::Keep, modules);
    c.approve(&[&v1, &v2]);
    c.offer(&v1);
    c.offer(&v2);
    assert!(c.jobs.is_empty(), "{:?}", c.jobs);
    assert!(!c.fetched.contains(&v2.id), "the held version was fetched");
}

#[test]
fn the_admins_requests_run_in_turn_one_job_at_a_time() {
    let v1 = version("1.0", 1);
    let mut c = Client::new(Withdrawn::Keep, BTreeMap::new());
    c.approve(&[&v1]);
    c.offer(&v1);
    assert_eq!(c.installs(), vec![v1.id]);
    let check = InstallTask::Check { repair: false };
    c.input(|e, now| assert!(e.installer_task(check, now)));
    let rollback = InstallTask::Rollback { module: module() };
    c.input(|e, now| assert!(e.installer_task(rollback, now)));
    assert_eq!(c.jobs.len(), 1, "a job while one runs");
    c.done(InstallDone::Installed {
        update: v1.id,
        result: Ok(None),
        hook: None,
    });
    assert_eq!(c.jobs.last(), Some(&InstallJob::Check { repair: false }));
    c.done(InstallDone::Checked {
        settled: Vec::new(),
        waiting: Vec::new(),
    });
    assert_eq!(
        c.jobs.last(),
        Some(&InstallJob::Rollback { module: module() })
    );
    assert_eq!(c.jobs.len(), 3);
}

#[test]
fn a_repair_that_lacks_chunks_fetches_them_then_runs_and_gives_up_after_a_few_tries() {
    let v1 = version("1.0", 1);
    let mut c = Client::new(Withdrawn::Keep, holding(&v1));
    c.approve(&[&v1]);
    c.offer(&v1);
    // The module's files were damaged, and so was chunk 2 in the store.
    let repair = InstallTask::Check { repair: true };
    c.input(|e, now| assert!(e.installer_task(repair, now)));
    assert_eq!(c.jobs, vec![InstallJob::Check { repair: true }]);
    let mut have = vec![true; 4];
    have[2] = false;
    for attempt in 1..=MAX_REPAIR_TRIES {
        c.fetched.clear();
        c.done(InstallDone::Checked {
            settled: Vec::new(),
            waiting: vec![(v1.id, have.clone())],
        });
        assert_eq!(
            c.fetched,
            vec![v1.id],
            "attempt {attempt}: chunk 2 not fetched"
        );
        assert_eq!(
            c.jobs.last(),
            Some(&InstallJob::Repair {
                manifest: v1.clone()
            }),
            "attempt {attempt}"
        );
    }
    // Chunks that come back damaged every time: the admin hears why, no more fetches.
    c.fetched.clear();
    c.done(InstallDone::Checked {
        settled: Vec::new(),
        waiting: vec![(v1.id, have)],
    });
    assert!(c.fetched.is_empty());
    assert!(
        c.events
            .iter()
            .any(|e| matches!(e, Event::Error { reason } if reason.contains("cannot repair"))),
        "{:?}",
        c.events
    );
}

#[test]
fn a_node_without_an_installer_takes_no_install_tasks() {
    let me = SecretKey::from_seed([2; 32]);
    let mut e = Engine::new(
        Role::Member { parent: parent() },
        root().public(),
        me.clone(),
        vec![parent(), me.public()],
        Config::default(),
        7,
    );
    assert!(!e.installer_task(InstallTask::Check { repair: false }, T0));
    assert!(e.installed_modules().is_none());
}
