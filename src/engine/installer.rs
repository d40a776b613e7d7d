//! A client's installer, sans-IO: the decisions a leaf client makes about the modules
//! it installs, run by the daemon and the simulator alike.
//!
//! - Which version of each module (tenant, category, id) this node should have: the
//!   newest available to it (by version as people read them, then by the root's publish
//!   order), never one its admin rolled back from (held).
//! - Which updates' bytes it fetches for that: only the chosen version's (and those of
//!   a version whose repair waits for chunks), so that nothing already installed and no
//!   superseded version crosses the link.
//! - When to install (once every chunk is held), and when to try a failed install again:
//!   after 1 minute, doubling up to an hour; a new version, or a restart, tries at once.
//! - A module whose version is no longer approved: kept ([`Withdrawn::Keep`], the
//!   default), or taken back to the newest version still approved, or removed
//!   ([`Withdrawn::Remove`]), and only on rules the tree sent this session
//!   ([`Engine::rules_current`]), never on rules kept from an earlier one.
//! - The admin's check, repair and rollback run as jobs in turn with the installs: one
//!   job at a time, so that nothing overlaps in one install directory. A repair whose
//!   chunks are missing fetches them and runs again (at most [`MAX_REPAIR_TRIES`] in a
//!   row).
//!
//! Jobs leave as [`Output::Installer`]; the driver does the work (the daemon on the
//! file system, the simulator at a modelled cost) and hands back what happened with
//! [`Engine::handle_install_done`]. What became of each update is reported up
//! ([`Outcome`]).

use super::*;
use crate::content::manifest::ModuleName;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet, VecDeque};

/// The first wait before a failed install is tried again; it doubles up to
/// [`RETRY_MAX`].
pub const RETRY_MIN: Millis = 60_000;
pub const RETRY_MAX: Millis = 3_600_000;
/// Repairs of one module that may wait for chunks from the parent in a row: chunks the
/// store holds but cannot give back right would otherwise be fetched again forever.
pub const MAX_REPAIR_TRIES: u32 = 3;

/// What a client does with an installed module whose version is no longer approved
/// for it (declined, or its approval withdrawn).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Withdrawn {
    /// Leave it installed (the default): withdrawing an approval stops a rollout; it
    /// does not take software away from machines that run it.
    #[default]
    Keep,
    /// Go back to the newest version of the module that is still approved, or remove
    /// the module if none is.
    Remove,
}

impl std::str::FromStr for Withdrawn {
    type Err = String;

    fn from_str(s: &str) -> Result<Withdrawn, String> {
        match s {
            "keep" => Ok(Withdrawn::Keep),
            "remove" => Ok(Withdrawn::Remove),
            _ => Err(format!("{s:?} is neither keep nor remove")),
        }
    }
}

/// One installed version of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub update: Hash,
    pub version: String,
}

/// What the install directory holds of one module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleState {
    pub current: Option<Version>,
    pub previous: Option<Version>,
    /// A version its admin rolled back from: not installed again by itself.
    pub held: Option<Hash>,
}

/// Work for the driver's installer, one at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallJob {
    /// Install this version, in place of the module's current one.
    Install { manifest: Arc<SignedManifest> },
    /// Remove the module: no version of it is approved any more.
    Remove { module: ModuleName },
    /// The admin's rollback of a module to its previous version (which holds the one
    /// it leaves).
    Rollback { module: ModuleName },
    /// The admin's check of every module, repairing what is damaged with `repair`.
    Check { repair: bool },
    /// Repair one module now that the chunks it lacked are here.
    Repair { manifest: Arc<SignedManifest> },
}

/// An admin's request for the installer: run as a job in its turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallTask {
    Check { repair: bool },
    Rollback { module: ModuleName },
}

/// What became of a module's post-install command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The node does not allow hooks.
    Off,
    Ran,
    Failed(String),
}

/// What a job did, for [`Engine::handle_install_done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallDone {
    /// An install: `Ok` with the version it replaced, if any (none: it was there
    /// already, or the module is new), or why it failed; what its hook did.
    Installed {
        update: Hash,
        result: Result<Option<Hash>, String>,
        hook: Option<Hook>,
    },
    /// A removal: `Ok` with the version removed, if there was one.
    Removed {
        module: ModuleName,
        result: Result<Option<Hash>, String>,
    },
    /// A rollback: `Ok((now current, held))`.
    RolledBack {
        module: ModuleName,
        result: Result<(Hash, Hash), String>,
        hook: Option<Hook>,
    },
    /// A check (or a repair): the updates checked whose repair needs nothing more,
    /// and those whose repair waits for chunks, each with which of its chunks the
    /// store holds.
    Checked {
        settled: Vec<Hash>,
        waiting: Vec<(Hash, Vec<bool>)>,
    },
}

/// A failed install, and when it may be tried again.
struct Retry {
    attempts: u32,
    at: Millis,
}

/// The installer's state inside the engine (a client's only).
pub(super) struct Installer {
    policy: Withdrawn,
    /// What the install directory holds, as of the last job (or start-up).
    modules: BTreeMap<ModuleName, ModuleState>,
    /// A job is out with the driver.
    busy: bool,
    /// Admin requests, run in order once the installer is free.
    tasks: VecDeque<InstallTask>,
    /// What was told of each update (it is reported up).
    told: HashMap<Hash, Outcome>,
    retries: HashMap<Hash, Retry>,
    /// Updates whose repair waits for chunks from the parent.
    repairs: HashSet<Hash>,
    /// Repairs of an update that found chunks missing, in a row.
    repair_tries: HashMap<Hash, u32>,
}

/// When a client's installer decides next: kept in the engine itself, not behind the
/// installer's box, because [`Engine::poll_output`] and [`Engine::poll_timeout`] ask
/// after every input.
#[derive(Default)]
pub(super) struct Due {
    /// Something it decides on changed at this time: it decides again at the next
    /// [`Engine::poll_output`].
    now: Option<Millis>,
    /// When a failed install that is wanted may be tried again, the soonest.
    retry: Option<Millis>,
}

/// One version of a module the engine knows.
struct Known {
    update: Hash,
    version: String,
    seq: u64,
    available: bool,
}

/// Newer by version, then by the root's publish order.
fn newer(a: &Known, b: &Known) -> Ordering {
    compare_versions(&a.version, &b.version).then(a.seq.cmp(&b.seq))
}

/// Compares versions as people read them: runs of digits as numbers, everything else
/// as text, so "1.10" is newer than "1.9"; a version that is a prefix of another is
/// older ("2.0" before "2.0.1").
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> impl Iterator<Item = &str> {
        let mut rest = s;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digit = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            rest = tail;
            Some(run)
        })
    }
    let (mut x, mut y) = (runs(a), runs(b));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let numeric = p.as_bytes()[0].is_ascii_digit() && q.as_bytes()[0].is_ascii_digit();
                let order = if numeric {
                    let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                    p.len().cmp(&q.len()).then_with(|| p.cmp(q))
                } else {
                    p.cmp(q)
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// A successful install's outcome, amended by its hook's.
fn with_hook(installed: Outcome, hook: Option<Hook>) -> Outcome {
    let note = |note: Option<String>, hook: &str| {
        Some(note.map_or(hook.to_string(), |n| format!("{n}; {hook}")))
    };
    match (installed, hook) {
        (_, Some(Hook::Failed(why))) => Outcome::Failed(format!("installed, but {why}")),
        (Outcome::Installed(n), Some(Hook::Ran)) => {
            Outcome::Installed(note(n, "post-install hook ran"))
        }
        (Outcome::Installed(n), Some(Hook::Off)) => Outcome::Installed(note(
            n,
            "post-install hook not run: hooks are off on this node",
        )),
        (outcome, _) => outcome,
    }
}

impl Installer {
    fn new(policy: Withdrawn, modules: BTreeMap<ModuleName, ModuleState>) -> Installer {
        let mut told = HashMap::new();
        for state in modules.values() {
            if let Some(c) = &state.current {
                told.insert(c.update, Outcome::Installed(None));
            }
            if let Some(h) = state.held {
                told.insert(
                    h,
                    Outcome::Failed("rolled back by this node's admin".into()),
                );
            }
        }
        Installer {
            policy,
            modules,
            busy: false,
            tasks: VecDeque::new(),
            told,
            retries: HashMap::new(),
            repairs: HashSet::new(),
            repair_tries: HashMap::new(),
        }
    }

    /// The version a module's current or previous install is, as shown in notes.
    fn version_of(&self, module: &ModuleName, update: &Hash) -> Option<String> {
        let state = self.modules.get(module)?;
        [state.current.as_ref(), state.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|v| v.update == *update)
            .map(|v| v.version.clone())
    }
}

impl Engine {
    /// Makes this node a client with an installer: `modules` is what its install
    /// directory holds. From now on it fetches for its own use only what the installer
    /// chooses ([`Config::installer`]), and hands out install jobs.
    pub fn start_installer(
        &mut self,
        policy: Withdrawn,
        modules: BTreeMap<ModuleName, ModuleState>,
        now: Millis,
    ) {
        self.config.installer = true;
        self.installer = Some(Box::new(Installer::new(policy, modules)));
        self.installer_wake(now);
    }

    /// What the installer holds the install directory to be (a client's).
    pub fn installed_modules(&self) -> Option<&BTreeMap<ModuleName, ModuleState>> {
        self.installer.as_ref().map(|i| &i.modules)
    }

    /// Queues an admin's request for the installer; it runs as a job in its turn, and
    /// the driver answers it from the job's result. `false` if this node has none.
    pub fn installer_task(&mut self, task: InstallTask, now: Millis) -> bool {
        let Some(i) = self.installer.as_mut() else {
            return false;
        };
        i.tasks.push_back(task);
        self.installer_wake(now);
        true
    }

    /// Something the installer decides on may have changed: it decides again at the
    /// next [`Engine::poll_output`].
    pub(super) fn installer_wake(&mut self, now: Millis) {
        if self.installer.is_some() {
            let due = &mut self.installer_due.now;
            *due = Some(due.map_or(now, |d| d.max(now)));
        }
    }

    /// When a failed install comes due again (for [`Engine::poll_timeout`]).
    pub(super) fn next_install_retry(&self) -> Option<Millis> {
        self.installer_due.retry
    }

    /// Runs the installer's decisions if something changed since it last did.
    pub(super) fn installer_poll(&mut self) {
        if let Some(now) = self.installer_due.now.take() {
            self.plan_installs(now);
        }
    }

    /// Decides what this node should have, asks for the bytes of that, reports what
    /// happened, and hands out the next job if the installer is free.
    fn plan_installs(&mut self, now: Millis) {
        let Some(mut inst) = self.installer.take() else {
            return;
        };
        let mut versions: BTreeMap<ModuleName, Vec<Known>> = BTreeMap::new();
        for id in &self.order {
            let Some(u) = self.updates.get(id).filter(|u| u.stored) else {
                continue;
            };
            let m = &u.manifest;
            versions
                .entry(m.manifest.module())
                .or_default()
                .push(Known {
                    update: *id,
                    version: m.manifest.version.clone(),
                    seq: m.seq,
                    available: self.avail.is_available(id),
                });
        }
        for module in inst.modules.keys() {
            versions.entry(module.clone()).or_default();
        }
        let settle = inst.policy == Withdrawn::Remove && self.rules_current();
        let mut install = None;
        let mut removal = None;
        let mut needed = Vec::new();
        let mut next_retry: Option<Millis> = None;
        for (module, known) in &versions {
            let state = inst.modules.get(module);
            let current = state.and_then(|s| s.current.as_ref()).map(|c| {
                let k = known.iter().find(|v| v.update == c.update);
                // Approval is by update id: an installed version whose manifest this
                // node no longer holds is still known to be approved, or not.
                Known {
                    update: c.update,
                    version: c.version.clone(),
                    seq: k.map_or(0, |v| v.seq),
                    available: self.avail.is_available(&c.update),
                }
            });
            let held = state.and_then(|s| s.held);
            // The installed version competes too while approved, even when this node
            // no longer holds its manifest.
            let newest = known
                .iter()
                .chain(current.as_ref().filter(|c| c.available))
                .filter(|v| v.available && Some(v.update) != held)
                .max_by(|a, b| newer(a, b));
            let target = match (newest, &current) {
                (Some(n), Some(c)) if n.update == c.update => None,
                (Some(n), None) => Some(n),
                (Some(n), Some(c)) => {
                    let upgrade = newer(n, c) == Ordering::Greater;
                    (upgrade || settle).then_some(n)
                }
                (None, Some(c)) => {
                    if settle && !c.available && removal.is_none() {
                        removal = Some(module.clone());
                    }
                    None
                }
                (None, None) => None,
            }
            .map(|t| t.update);
            let current = current.map(|c| c.update);
            for v in known {
                let wanted = target == Some(v.update)
                    || (Some(v.update) == current && inst.repairs.contains(&v.update));
                needed.push((v.update, wanted));
            }
            let Some(t) = target else {
                continue;
            };
            match inst.retries.get(&t) {
                Some(r) if r.at > now => {
                    next_retry = Some(next_retry.map_or(r.at, |n| n.min(r.at)));
                }
                _ if install.is_none() && self.is_complete(&t) => install = Some(t),
                _ => {}
            }
        }
        self.installer_due.retry = next_retry;
        for (update, wanted) in needed {
            self.set_needed(&update, wanted, now);
        }
        for (update, outcome) in &inst.told {
            self.set_outcome(update, outcome.clone(), now);
        }
        let manifest = |e: &Engine, id: &Hash| e.updates.get(id).map(|u| u.manifest.clone());
        if !inst.busy {
            let job = if let Some(task) = inst.tasks.pop_front() {
                Some(match task {
                    InstallTask::Check { repair } => InstallJob::Check { repair },
                    InstallTask::Rollback { module } => InstallJob::Rollback { module },
                })
            } else if let Some(update) = inst.repairs.iter().find(|u| self.is_complete(u)).copied()
            {
                inst.repairs.remove(&update);
                manifest(self, &update).map(|manifest| InstallJob::Repair { manifest })
            } else if let Some(update) = install {
                manifest(self, &update).map(|manifest| InstallJob::Install { manifest })
            } else {
                removal.map(|module| InstallJob::Remove { module })
            };
            if let Some(job) = job {
                inst.busy = true;
                self.out.push_back(Output::Installer(job));
            }
        }
        self.installer = Some(inst);
    }

    /// A job the installer handed out is done. `modules` is the install directory as
    /// the driver read it after the job; without it (the simulator) the engine takes
    /// the job's result as the change.
    pub fn handle_install_done(
        &mut self,
        done: InstallDone,
        modules: Option<BTreeMap<ModuleName, ModuleState>>,
        now: Millis,
    ) {
        let Some(mut inst) = self.installer.take() else {
            return;
        };
        inst.busy = false;
        let version = |e: &Engine, inst: &Installer, module: &ModuleName, update: &Hash| {
            inst.version_of(module, update)
                .or_else(|| e.manifest(update).map(|m| m.manifest.version.clone()))
                .unwrap_or_else(|| update.to_hex()[..12].to_string())
        };
        match done {
            InstallDone::Installed {
                update,
                result,
                hook,
            } => {
                let Some(m) = self.manifest(&update).map(|m| m.manifest.clone()) else {
                    self.installer = Some(inst);
                    return;
                };
                let module = m.module();
                match result {
                    Ok(replaced) => {
                        inst.retries.remove(&update);
                        let note = replaced.map(|p| {
                            let was = version(self, &inst, &module, &p);
                            inst.told.insert(
                                p,
                                Outcome::NotInstalled(Some(format!("replaced by {}", m.version))),
                            );
                            format!("installed in place of {was}")
                        });
                        inst.told
                            .insert(update, with_hook(Outcome::Installed(note), hook));
                        let state = inst.modules.entry(module).or_default();
                        if state.current.as_ref().is_none_or(|c| c.update != update) {
                            state.previous = state.current.take();
                        }
                        state.current = Some(Version {
                            update,
                            version: m.version.clone(),
                        });
                    }
                    Err(why) => {
                        let retry = inst
                            .retries
                            .entry(update)
                            .or_insert(Retry { attempts: 0, at: 0 });
                        let wait = RETRY_MIN
                            .saturating_mul(1 << retry.attempts.min(10))
                            .min(RETRY_MAX);
                        retry.attempts += 1;
                        retry.at = now + wait;
                        self.out.push_back(Output::Event(Event::InstallFailed {
                            update,
                            reason: why.clone(),
                            retry_in: wait,
                        }));
                        inst.told
                            .insert(update, Outcome::Failed(format!("install failed: {why}")));
                    }
                }
            }
            InstallDone::Removed { module, result } => {
                if let Ok(Some(update)) = result {
                    inst.told.insert(
                        update,
                        Outcome::NotInstalled(Some("removed: no longer approved".into())),
                    );
                    inst.modules.remove(&module);
                }
            }
            InstallDone::RolledBack {
                module,
                result,
                hook,
            } => {
                if let Ok((current, left)) = result {
                    let (to, from) = (
                        version(self, &inst, &module, &current),
                        version(self, &inst, &module, &left),
                    );
                    inst.told.insert(
                        left,
                        Outcome::Failed(format!("rolled back to {to} by this node's admin")),
                    );
                    inst.told.insert(
                        current,
                        with_hook(
                            Outcome::Installed(Some(format!("rolled back from {from}"))),
                            hook,
                        ),
                    );
                    let state = inst.modules.entry(module).or_default();
                    state.held = Some(left);
                    state.previous = state.current.take();
                    state.current = Some(Version {
                        update: current,
                        version: to,
                    });
                }
            }
            InstallDone::Checked { settled, waiting } => {
                for update in settled {
                    inst.repair_tries.remove(&update);
                }
                for (update, have) in waiting {
                    let tries = inst.repair_tries.entry(update).or_insert(0);
                    *tries += 1;
                    if *tries > MAX_REPAIR_TRIES {
                        self.failed(format!(
                            "cannot repair update {update}: the chunks it needs are damaged in this node's store; run arbor verify"
                        ));
                        continue;
                    }
                    inst.repairs.insert(update);
                    self.recheck_local(&update, &have, now);
                }
            }
        }
        if let Some(modules) = modules {
            inst.modules = modules;
        }
        self.installer = Some(inst);
        self.installer_wake(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_people_read_them() {
        use Ordering::*;
        for (a, b, want) in [
            ("1.10", "1.9", Greater),
            ("2.0", "2.0.1", Less),
            ("1.0", "1.0", Equal),
            ("01.2", "1.2", Equal),
            ("2026 R2", "2026 R1", Greater),
            ("1.0-beta", "1.0-alpha", Greater),
            ("10", "9.9.9", Greater),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
