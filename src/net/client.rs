//! The client's installer, inside the daemon of a node run with `--install-dir`.
//!
//! It owns the decisions a leaf client makes about modules: which version of each
//! (tenant, category, id) this node should have, given what is available to it and what
//! is installed; asking the engine for the bytes of that version only (nothing already
//! installed, no superseded version, crosses the link); installing it once every chunk
//! is here; removing or keeping a module whose approval was withdrawn; running a
//! module's post-install hook when the node allows hooks; and the admin's `check`,
//! `repair` and `rollback`. Every outcome is told to the engine, which reports it up.
//!
//! The file system work is `crate::install`'s, run on a blocking thread, one job at a
//! time: installs, removals, rollbacks and checks never overlap in one install directory.

use super::{LoopInput, WriteJob, local_have, now_secs};
use crate::content::Hash;
use crate::engine::{Engine, Millis, Outcome};
use crate::install::{self, InstallError, Installed, ModuleName, Status};
use crate::net::command::{
    Answer, CheckOutcome, InstalledModule, InstalledModules, InstalledVersion, ModuleCheck,
    Refusal, RefusalKind, Reply, RollbackOutcome, VersionRef,
};
use crate::node::Node;
use crate::trust::SignedManifest;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The first wait before a failed install is tried again; it doubles up to
/// [`RETRY_MAX`]. A new version, or a restart, tries at once.
const RETRY_MIN: Millis = 60_000;
const RETRY_MAX: Millis = 3_600_000;
/// Repairs of one module that may wait for chunks from the parent in a row.
const MAX_REPAIR_TRIES: u32 = 3;

/// What a client does with an installed module whose version is no longer approved
/// for it (declined, or its approval withdrawn).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

/// How a client installs.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Modules go to `<install_dir>/<tenant>/<category>/<id>`.
    pub install_dir: PathBuf,
    /// Run the post-install commands modules declare (off by default).
    pub hooks: bool,
    /// How long a post-install command may run before it is stopped.
    pub hook_timeout: Duration,
    pub withdrawn: Withdrawn,
    /// Test-only fault: abort the process at the switch point of an install (see
    /// [`install::install_pausing`]), as a power cut would.
    #[doc(hidden)]
    pub abort_at_switch: bool,
}

impl ClientOptions {
    pub fn new(install_dir: PathBuf) -> ClientOptions {
        ClientOptions {
            install_dir,
            hooks: false,
            hook_timeout: Duration::from_secs(300),
            withdrawn: Withdrawn::Keep,
            abort_at_switch: false,
        }
    }
}

/// Work for the installer thread.
pub(super) enum Job {
    Install {
        manifest: Arc<SignedManifest>,
    },
    Remove {
        module: ModuleName,
    },
    Rollback {
        module: ModuleName,
    },
    Check {
        repair: bool,
    },
    /// Repair one module now that the chunks it lacked are here.
    Repair {
        manifest: Arc<SignedManifest>,
    },
}

/// What a job did, back on the event loop.
pub(super) struct Done {
    what: DoneWhat,
    /// The install directory after the job.
    installed: BTreeMap<ModuleName, Status>,
}

enum DoneWhat {
    Installed {
        manifest: Arc<SignedManifest>,
        result: Result<Installed, InstallError>,
        hook: Option<Hook>,
    },
    Removed {
        module: ModuleName,
        result: Result<Option<Hash>, String>,
    },
    RolledBack {
        module: ModuleName,
        result: Result<install::RolledBack, InstallError>,
        hook: Option<Hook>,
    },
    Checked {
        modules: Vec<ModuleCheck>,
    },
}

/// An admin's request that waits for the installer.
pub(super) enum Task {
    Check { repair: bool },
    Rollback { module: ModuleName },
}

/// A failed install, and when it may be tried again.
struct Retry {
    attempts: u32,
    at: Millis,
}

/// The installer's state on the event loop.
pub(super) struct Client {
    opts: ClientOptions,
    /// What the install directory holds, as of the last job (or start-up).
    installed: BTreeMap<ModuleName, Status>,
    /// A job is running.
    busy: bool,
    /// Admin requests, answered in order once the installer is free.
    tasks: VecDeque<(Task, oneshot::Sender<Reply>)>,
    /// The admin request the running job answers.
    answering: Option<oneshot::Sender<Reply>>,
    /// What was told to the engine of each update (it reports it up).
    told: HashMap<Hash, Outcome>,
    retries: HashMap<Hash, Retry>,
    /// Updates whose repair waits for chunks from the parent.
    repairs: HashSet<Hash>,
    /// Repairs of an update that found chunks missing, in a row.
    repair_tries: HashMap<Hash, u32>,
}

/// Reads the install directory: every module, its versions and what is held back. A
/// module that cannot be read is left out (and logged): it is not the installer's to
/// touch until an admin looks, and the others carry on.
pub(super) fn scan(dir: &Path) -> Result<BTreeMap<ModuleName, Status>, InstallError> {
    let mut out = BTreeMap::new();
    for m in install::list(dir)? {
        match install::status(dir, &m.tenant, &m.category, &m.id) {
            Ok(status) => {
                out.insert(m, status);
            }
            Err(e) => tracing::error!(module = %m, "installed module left alone: {e}"),
        }
    }
    Ok(out)
}

fn current_of(status: &Status) -> Option<Hash> {
    status
        .current
        .as_ref()
        .and_then(|m| m.update_id.parse().ok())
}

fn module_of(m: &SignedManifest) -> ModuleName {
    ModuleName {
        tenant: m.manifest.tenant.clone(),
        category: m.manifest.category.clone(),
        id: m.manifest.id.clone(),
    }
}

/// `tenant/category/id`.
pub(super) fn show(m: &ModuleName) -> String {
    m.to_string()
}

/// Compares versions as people read them: runs of digits as numbers, everything else
/// as text, so "1.10" is newer than "1.9"; a version that is a prefix of another is
/// older ("2.0" before "2.0.1").
fn compare_versions(a: &str, b: &str) -> Ordering {
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

impl Client {
    pub(super) fn new(opts: ClientOptions, installed: BTreeMap<ModuleName, Status>) -> Client {
        let mut told = HashMap::new();
        for status in installed.values() {
            if let Some(c) = current_of(status) {
                told.insert(c, Outcome::Installed(None));
            }
            if let Some(h) = status.held {
                told.insert(
                    h,
                    Outcome::Failed("rolled back by this node's admin".into()),
                );
            }
        }
        Client {
            opts,
            installed,
            busy: false,
            tasks: VecDeque::new(),
            answering: None,
            told,
            retries: HashMap::new(),
            repairs: HashSet::new(),
            repair_tries: HashMap::new(),
        }
    }

    pub(super) fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Queues an admin's request; it is answered once its job has run.
    pub(super) fn enqueue(&mut self, task: Task, reply: oneshot::Sender<Reply>) {
        self.tasks.push_back((task, reply));
    }

    /// Decides what this node should have, tells the engine what to fetch and what
    /// happened, and returns the next job if the installer is free.
    pub(super) fn plan(&mut self, engine: &mut Engine, now: Millis) -> Option<Job> {
        let mut modules: BTreeMap<ModuleName, Vec<Known>> = BTreeMap::new();
        for p in engine.progress() {
            if let Some(m) = engine.manifest(&p.update) {
                modules.entry(module_of(m)).or_default().push(Known {
                    update: p.update,
                    version: m.manifest.version.clone(),
                    seq: m.seq,
                    available: p.available,
                });
            }
        }
        for module in self.installed.keys() {
            modules.entry(module.clone()).or_default();
        }
        let rules_current = engine.rules_current();
        let remove = self.opts.withdrawn == Withdrawn::Remove;
        let mut install = None;
        let mut removal = None;
        for (module, versions) in &modules {
            let status = self.installed.get(module);
            let current = status.and_then(current_of);
            let held = status.and_then(|s| s.held);
            let current_known =
                current
                    .zip(status.and_then(|s| s.current.as_ref()))
                    .map(|(update, meta)| {
                        let known = versions.iter().find(|v| v.update == update);
                        Known {
                            update,
                            version: meta.version.clone(),
                            seq: known.map_or(0, |v| v.seq),
                            available: known.is_some_and(|v| v.available),
                        }
                    });
            let newest = versions
                .iter()
                .filter(|v| v.available && Some(v.update) != held)
                .max_by(|a, b| newer(a, b));
            let target = match (newest, &current_known) {
                (Some(n), Some(c)) if n.update == c.update => None,
                (Some(n), None) => Some(n),
                (Some(n), Some(c)) => {
                    let upgrade = c.available || newer(n, c) == Ordering::Greater;
                    (upgrade || (remove && rules_current)).then_some(n)
                }
                (None, Some(c)) => {
                    if remove && rules_current && !c.available && removal.is_none() {
                        removal = Some(module.clone());
                    }
                    None
                }
                (None, None) => None,
            };
            for v in versions {
                let wanted = target.is_some_and(|t| t.update == v.update)
                    || (Some(v.update) == current && self.repairs.contains(&v.update));
                engine.set_needed(&v.update, wanted, now);
            }
            if let Some(t) = target
                && install.is_none()
                && engine.is_complete(&t.update)
                && self.retries.get(&t.update).is_none_or(|r| r.at <= now)
            {
                install = engine.manifest(&t.update).cloned().map(Arc::new);
            }
        }
        for (update, outcome) in &self.told {
            engine.set_outcome(update, outcome.clone(), now);
        }
        if self.busy {
            return None;
        }
        let job = if let Some((task, reply)) = self.tasks.pop_front() {
            self.answering = Some(reply);
            match task {
                Task::Check { repair } => Job::Check { repair },
                Task::Rollback { module } => Job::Rollback { module },
            }
        } else if let Some(update) = self.repairs.iter().find(|u| engine.is_complete(u)).copied() {
            self.repairs.remove(&update);
            Job::Repair {
                manifest: Arc::new(engine.manifest(&update)?.clone()),
            }
        } else if let Some(manifest) = install {
            Job::Install { manifest }
        } else {
            Job::Remove { module: removal? }
        };
        self.busy = true;
        Some(job)
    }

    /// Takes a finished job's result: what to tell the engine, whom to answer.
    pub(super) fn finish(&mut self, done: Done, engine: &mut Engine, node: &Node, now: Millis) {
        self.busy = false;
        let before = std::mem::replace(&mut self.installed, done.installed);
        let version_of = |status: Option<&Status>, update: &Hash| {
            status
                .and_then(|s| {
                    [s.current.as_ref(), s.previous.as_ref()]
                        .into_iter()
                        .flatten()
                        .find(|m| m.update_id == update.to_hex())
                })
                .map(|m| m.version.clone())
                .or_else(|| engine.manifest(update).map(|m| m.manifest.version.clone()))
                .unwrap_or_else(|| update.to_hex()[..12].to_string())
        };
        let answer: Option<Reply> = match done.what {
            DoneWhat::Installed {
                manifest,
                result,
                hook,
            } => {
                let module = module_of(&manifest);
                let version = &manifest.manifest.version;
                match result {
                    Ok(outcome) => {
                        self.retries.remove(&manifest.id);
                        let replaced = match outcome {
                            Installed::New { previous, .. } => previous,
                            Installed::Reactivated { previous, .. } => Some(previous),
                            Installed::AlreadyInstalled { .. } => None,
                        };
                        let note = replaced.map(|p| {
                            let was = version_of(before.get(&module), &p);
                            self.told.insert(
                                p,
                                Outcome::NotInstalled(Some(format!("replaced by {version}"))),
                            );
                            format!("installed in place of {was}")
                        });
                        tracing::info!(module = %show(&module), version = %version, update = %manifest.id, "installed");
                        self.told
                            .insert(manifest.id, with_hook(Outcome::Installed(note), hook));
                    }
                    Err(e) => {
                        let retry = self
                            .retries
                            .entry(manifest.id)
                            .or_insert(Retry { attempts: 0, at: 0 });
                        let wait = RETRY_MIN
                            .saturating_mul(1 << retry.attempts.min(10))
                            .min(RETRY_MAX);
                        retry.attempts += 1;
                        retry.at = now + wait;
                        tracing::error!(module = %show(&module), version = %version, "install failed: {e}; trying again in {} s", wait / 1000);
                        self.told.insert(
                            manifest.id,
                            Outcome::Failed(format!("install failed: {}", chain(&e))),
                        );
                    }
                }
                None
            }
            DoneWhat::Removed { module, result } => {
                match result {
                    Ok(Some(update)) => {
                        tracing::info!(module = %show(&module), "removed: its version is no longer approved");
                        self.told.insert(
                            update,
                            Outcome::NotInstalled(Some("removed: no longer approved".into())),
                        );
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(module = %show(&module), "cannot remove: {e}"),
                }
                None
            }
            DoneWhat::RolledBack {
                module,
                result,
                hook,
            } => Some(match result {
                Ok(r) => {
                    let status = self.installed.get(&module);
                    let (to, from) = (
                        version_of(status, &r.current),
                        version_of(status, &r.previous),
                    );
                    tracing::info!(module = %show(&module), "rolled back from {from} to {to}");
                    self.told.insert(
                        r.previous,
                        Outcome::Failed(format!("rolled back to {to} by this node's admin")),
                    );
                    self.told.insert(
                        r.current,
                        with_hook(
                            Outcome::Installed(Some(format!("rolled back from {from}"))),
                            hook.clone(),
                        ),
                    );
                    Ok(Answer::RolledBack(RollbackOutcome {
                        module: show(&module),
                        current: VersionRef {
                            update_id: r.current,
                            version: to,
                        },
                        held: VersionRef {
                            update_id: r.previous,
                            version: from,
                        },
                        hook: hook.map(|h| match h {
                            Hook::Off => "not run: hooks are off on this node".to_string(),
                            Hook::Ran => "ran".to_string(),
                            Hook::Failed(why) => why,
                        }),
                    }))
                }
                Err(e) => Err(Refusal::new(RefusalKind::Conflict, chain(&e))),
            }),
            DoneWhat::Checked { modules } => {
                for m in &modules {
                    let Ok(update) = m.update_id.parse::<Hash>() else {
                        continue;
                    };
                    if !m.waiting_for_parent {
                        self.repair_tries.remove(&update);
                        continue;
                    }
                    // Chunks the store holds but cannot give back right would be
                    // fetched again and again: a few tries, then the admin hears why.
                    let tries = self.repair_tries.entry(update).or_insert(0);
                    *tries += 1;
                    if *tries > MAX_REPAIR_TRIES {
                        tracing::error!(module = %m.module, "cannot repair: the chunks it needs are damaged in this node's store; run arbor verify");
                        continue;
                    }
                    if let Some(manifest) = engine.manifest(&update) {
                        match local_have(&node.store, manifest) {
                            Ok(have) => {
                                engine.recheck_local(&update, &have, now);
                                self.repairs.insert(update);
                            }
                            Err(e) => {
                                tracing::error!(update = %update, "cannot read the store: {e}")
                            }
                        }
                    }
                }
                let damaged = modules.iter().filter(|m| !m.problems.is_empty()).count();
                Some(Ok(Answer::Checked(CheckOutcome { modules, damaged })))
            }
        };
        if let (Some(answer), Some(reply)) = (answer, self.answering.take()) {
            let _ = reply.send(answer);
        }
    }

    /// The install directory as the admin API shows it.
    pub(super) fn view(&self) -> InstalledModules {
        let version = |meta: &Option<install::Metadata>| {
            meta.as_ref().map(|m| InstalledVersion {
                version: m.version.clone(),
                update_id: m.update_id.clone(),
                installed_at: m.installed_at,
            })
        };
        let modules = self
            .installed
            .iter()
            .map(|(m, s)| InstalledModule {
                module: show(m),
                current: version(&s.current),
                previous: version(&s.previous),
                held: s.held,
            })
            .collect();
        InstalledModules {
            install_dir: self.opts.install_dir.clone(),
            hooks: self.opts.hooks,
            withdrawn: self.opts.withdrawn,
            modules,
        }
    }
}

/// What became of a module's post-install command.
#[derive(Clone, Debug)]
enum Hook {
    /// The node does not allow hooks.
    Off,
    Ran,
    Failed(String),
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

/// An error with its causes: "cannot write …: No space left on device (os error 28)".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What a job needs from the daemon.
#[derive(Clone)]
pub(super) struct JobContext {
    pub node: Arc<Node>,
    pub writer: mpsc::Sender<WriteJob>,
    pub opts: ClientOptions,
    /// Where hooks write their output, one file per module.
    pub hook_logs: PathBuf,
}

/// Runs a job and sends its result to the event loop.
pub(super) async fn run(job: Job, ctx: JobContext, ev: mpsc::UnboundedSender<LoopInput>) {
    let done = run_job(job, &ctx).await;
    let _ = ev.send(LoopInput::Installer { done });
}

async fn run_job(job: Job, ctx: &JobContext) -> Done {
    // Chunks the engine counts as held may still sit in the writer: commit them.
    if matches!(
        job,
        Job::Install { .. } | Job::Check { repair: true } | Job::Repair { .. }
    ) {
        let (done, synced) = oneshot::channel();
        if ctx.writer.send(WriteJob::Sync { done }).await.is_ok() {
            let _ = synced.await;
        }
    }
    let what = match job {
        Job::Install { manifest } => {
            let result = blocking(ctx, {
                let manifest = manifest.clone();
                move |ctx| {
                    let dir = &ctx.opts.install_dir;
                    let abort = ctx.opts.abort_at_switch;
                    let done = install::install_pausing(
                        dir,
                        &manifest,
                        now_secs(),
                        |h| read_chunk(&ctx.node, h),
                        || {
                            if abort {
                                tracing::error!("test fault: aborting at the switch point");
                                std::process::abort();
                            }
                        },
                    )?;
                    Ok(done)
                }
            })
            .await;
            let hook = match &result {
                Ok(Installed::New { .. } | Installed::Reactivated { .. }) => {
                    run_hook(ctx, &manifest).await
                }
                _ => None,
            };
            DoneWhat::Installed {
                manifest,
                result,
                hook,
            }
        }
        Job::Remove { module } => {
            let result = blocking(ctx, {
                let module = module.clone();
                move |ctx| {
                    install::remove(
                        &ctx.opts.install_dir,
                        &module.tenant,
                        &module.category,
                        &module.id,
                    )
                    .map_err(|e| e.to_string())
                }
            })
            .await;
            DoneWhat::Removed { module, result }
        }
        Job::Rollback { module } => {
            let result = blocking(ctx, {
                let module = module.clone();
                move |ctx| {
                    // It holds the version it leaves, so that it is not installed again.
                    let (dir, m) = (&ctx.opts.install_dir, &module);
                    install::rollback(dir, &m.tenant, &m.category, &m.id)
                }
            })
            .await;
            let hook = match &result {
                Ok(r) => match stored_manifest(&ctx.node, &r.current) {
                    Some(m) => run_hook(ctx, &m).await,
                    None => None,
                },
                Err(_) => None,
            };
            DoneWhat::RolledBack {
                module,
                result,
                hook,
            }
        }
        Job::Check { repair } => DoneWhat::Checked {
            modules: blocking(ctx, move |ctx| check_all(ctx, repair)).await,
        },
        Job::Repair { manifest } => DoneWhat::Checked {
            modules: blocking(ctx, move |ctx| {
                vec![check_one(ctx, &module_of(&manifest), true)]
            })
            .await,
        },
    };
    let installed = blocking(ctx, |ctx| {
        scan(&ctx.opts.install_dir).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!("cannot read the install directory: {e}");
        BTreeMap::new()
    });
    Done { what, installed }
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    ctx: &JobContext,
    f: impl FnOnce(&JobContext) -> T + Send + 'static,
) -> T {
    let ctx = ctx.clone();
    match tokio::task::spawn_blocking(move || f(&ctx)).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Why a chunk could not be read for an install or repair.
#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error("it is not in this node's store")]
    Missing,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A chunk from the store, for install and repair. Not hashed here: they check every
/// chunk's hash and length as they write it, once.
fn read_chunk(node: &Node, hash: &Hash) -> Result<Vec<u8>, ChunkError> {
    let loc = node.store.chunk_loc(hash)?.ok_or(ChunkError::Missing)?;
    let mut buf = Vec::new();
    node.store.read_at(loc, &mut buf)?;
    Ok(buf)
}

fn stored_manifest(node: &Node, update: &Hash) -> Option<SignedManifest> {
    crate::export::stored_manifest(node, update, now_secs()).ok()
}

fn check_all(ctx: &JobContext, repair: bool) -> Vec<ModuleCheck> {
    match install::list(&ctx.opts.install_dir) {
        Ok(modules) => modules.iter().map(|m| check_one(ctx, m, repair)).collect(),
        Err(e) => vec![ModuleCheck {
            module: ctx.opts.install_dir.display().to_string(),
            version: String::new(),
            update_id: String::new(),
            problems: Vec::new(),
            repaired: false,
            waiting_for_parent: false,
            error: Some(e.to_string()),
        }],
    }
}

/// Checks one module's current version against its metadata and, with `repair`,
/// rewrites what is damaged from the store; chunks the store lacks are left for the
/// parent (`waiting_for_parent`).
fn check_one(ctx: &JobContext, module: &ModuleName, repair: bool) -> ModuleCheck {
    let dir = &ctx.opts.install_dir;
    let mut out = ModuleCheck {
        module: show(module),
        version: String::new(),
        update_id: String::new(),
        problems: Vec::new(),
        repaired: false,
        waiting_for_parent: false,
        error: None,
    };
    let status = match install::status(dir, &module.tenant, &module.category, &module.id) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let Some(meta) = status.current else {
        out.error = Some("not installed".into());
        return out;
    };
    out.version = meta.version.clone();
    out.update_id = meta.update_id.clone();
    match install::check(dir, &module.tenant, &module.category, &module.id) {
        Ok(p) => out.problems = p,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    }
    if !repair || out.problems.is_empty() {
        return out;
    }
    let Some(manifest) = meta
        .update_id
        .parse::<Hash>()
        .ok()
        .and_then(|u| stored_manifest(&ctx.node, &u))
    else {
        out.error = Some(
            "its manifest is not in this node's store: it comes back when the parent offers the update again".into(),
        );
        return out;
    };
    let missing = match local_have(&ctx.node.store, &manifest) {
        Ok(have) => have.iter().any(|h| !h),
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    if missing {
        out.waiting_for_parent = true;
        return out;
    }
    match install::repair(dir, &manifest, |h| read_chunk(&ctx.node, h)) {
        Ok(_) => {
            out.repaired = true;
            tracing::info!(module = %out.module, files = out.problems.len(), "repaired");
        }
        Err(InstallError::ReadChunk { .. } | InstallError::BadChunk { .. }) => {
            out.waiting_for_parent = true;
        }
        Err(e) => out.error = Some(e.to_string()),
    }
    out
}

/// Runs `manifest`'s post-install command if it has one, in its installed directory:
/// `None` if it has none, else what became of it. With hooks off it is not run.
async fn run_hook(ctx: &JobContext, manifest: &SignedManifest) -> Option<Hook> {
    let argv = manifest.manifest.post_install.as_ref()?;
    if !ctx.opts.hooks {
        tracing::info!(update = %manifest.id, "post-install hook not run: hooks are off on this node");
        return Some(Hook::Off);
    }
    let m = &manifest.manifest;
    let module_dir = ctx
        .opts
        .install_dir
        .join(&m.tenant)
        .join(&m.category)
        .join(&m.id);
    // The version's own directory, so that a later switch cannot change it under the hook.
    let dir = match std::fs::canonicalize(&module_dir) {
        Ok(d) => d,
        Err(e) => {
            return Some(Hook::Failed(format!(
                "the post-install hook could not start: {e}"
            )));
        }
    };
    let program = match argv[0].as_str() {
        p if p.contains('/') && !p.starts_with('/') => dir.join(p.trim_start_matches("./")),
        p => PathBuf::from(p),
    };
    let log_path = ctx
        .hook_logs
        .join(format!("{}.{}.{}.log", m.tenant, m.category, m.id));
    let log = std::fs::create_dir_all(&ctx.hook_logs)
        .and_then(|()| std::fs::File::create(&log_path))
        .and_then(|f| Ok((f.try_clone()?, f)));
    let (out, err) = match log {
        Ok(pair) => pair,
        Err(e) => {
            return Some(Hook::Failed(format!(
                "the post-install hook could not start: cannot write {}: {e}",
                log_path.display()
            )));
        }
    };
    let mut child = match tokio::process::Command::new(&program)
        .args(&argv[1..])
        .current_dir(&dir)
        .env("ARBOR_MODULE_DIR", &dir)
        .env("ARBOR_TENANT", &m.tenant)
        .env("ARBOR_CATEGORY", &m.category)
        .env("ARBOR_MODULE", &m.id)
        .env("ARBOR_VERSION", &m.version)
        .env("ARBOR_UPDATE", manifest.id.to_hex())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Some(Hook::Failed(format!(
                "the post-install hook {} could not start: {e}",
                program.display()
            )));
        }
    };
    let limit = ctx.opts.hook_timeout;
    let result = match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!(
            "the post-install hook failed ({status}){}",
            last_line(&log_path).map_or(String::new(), |l| format!(": {l}"))
        )),
        Ok(Err(e)) => Err(format!(
            "the post-install hook could not be waited for: {e}"
        )),
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: killpg only sends a signal; the group is the hook's own
                // (process_group(0) made the hook its leader), so nothing else is hit.
                unsafe {
                    libc::killpg(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            Err(format!(
                "the post-install hook did not finish within {} and was stopped",
                humantime::format_duration(limit)
            ))
        }
    };
    match &result {
        Ok(()) => {
            tracing::info!(update = %manifest.id, log = %log_path.display(), "post-install hook ran")
        }
        Err(e) => tracing::warn!(update = %manifest.id, log = %log_path.display(), "{e}"),
    }
    Some(result.map_or_else(Hook::Failed, |()| Hook::Ran))
}

/// The last non-empty line of a hook's log, cut short, for the report.
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(200).collect())
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
