//! The installer's hands, inside the daemon of a client run with `--install-dir`: it
//! carries out the jobs the engine's installer hands out ([`crate::engine::installer`]
//! decides which version of each module this node has, when, and what to do with a
//! withdrawn one), on the file system, through `crate::install`: installs, removals,
//! the admin's check, repair and rollback, and a module's post-install hook when the
//! node allows hooks. It reads the install directory back after every job, and tells
//! the engine what happened.
//!
//! Jobs run on a blocking thread, one at a time (the engine hands out one at a time):
//! nothing overlaps in one install directory.

use super::{LoopInput, WriteJob, local_have, now_secs};
use crate::content::Hash;
use crate::engine::installer::{Hook, InstallDone, InstallJob, ModuleState, Version, Withdrawn};
use crate::install::{self, InstallError, Installed, ModuleName, Status};
use crate::net::command::{
    Answer, CheckOutcome, InstalledModule, InstalledModules, InstalledVersion, ModuleCheck,
    Refusal, RefusalKind, Reply, RollbackOutcome, VersionRef,
};
use crate::node::Node;
use crate::trust::SignedManifest;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a client installs.
#[derive(Clone, Debug)]
pub struct InstallerOptions {
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

impl InstallerOptions {
    pub fn new(install_dir: PathBuf) -> InstallerOptions {
        InstallerOptions {
            install_dir,
            hooks: false,
            hook_timeout: Duration::from_secs(300),
            withdrawn: Withdrawn::Keep,
            abort_at_switch: false,
        }
    }
}

/// A finished job, back on the event loop.
pub(super) struct Done {
    /// What happened, for the engine.
    pub done: InstallDone,
    /// The install directory after the job.
    pub installed: BTreeMap<ModuleName, Status>,
    /// The answer to the admin's request the job ran for (a check or a rollback).
    pub answer: Option<Reply>,
}

/// The installer's side of the event loop: its options, what the install directory
/// holds, and the admin requests waiting for their jobs.
pub(super) struct InstallerHands {
    pub opts: InstallerOptions,
    /// What the install directory holds, as of the last job (or start-up).
    pub installed: BTreeMap<ModuleName, Status>,
    /// Admin requests handed to the engine's installer, answered in order as their
    /// jobs finish (the engine runs them in the order they came).
    pub replies: VecDeque<oneshot::Sender<Reply>>,
    /// The admin request the running job answers.
    pub answering: Option<oneshot::Sender<Reply>>,
}

impl InstallerHands {
    pub(super) fn new(
        opts: InstallerOptions,
        installed: BTreeMap<ModuleName, Status>,
    ) -> InstallerHands {
        InstallerHands {
            opts,
            installed,
            replies: VecDeque::new(),
            answering: None,
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
                module: m.to_string(),
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

/// The install directory as the engine's installer sees it.
pub(super) fn states(
    installed: &BTreeMap<ModuleName, Status>,
) -> BTreeMap<ModuleName, ModuleState> {
    let version = |meta: &Option<install::Metadata>| {
        let m = meta.as_ref()?;
        Some(Version {
            update: m.update_id.parse().ok()?,
            version: m.version.clone(),
        })
    };
    installed
        .iter()
        .map(|(m, s)| {
            let state = ModuleState {
                current: version(&s.current),
                previous: version(&s.previous),
                held: s.held,
            };
            (m.clone(), state)
        })
        .collect()
}

/// The version a module's update is, as the install directory (or the store) says.
fn version_of(ctx: &JobContext, status: Option<&Status>, update: &Hash) -> String {
    status
        .and_then(|s| {
            [s.current.as_ref(), s.previous.as_ref()]
                .into_iter()
                .flatten()
                .find(|m| m.update_id == update.to_hex())
        })
        .map(|m| m.version.clone())
        .or_else(|| stored_manifest(&ctx.node, update).map(|m| m.manifest.version))
        .unwrap_or_else(|| update.to_hex()[..12].to_string())
}

/// What became of a hook, as the admin's rollback answer says it.
fn hook_said(hook: &Hook) -> String {
    match hook {
        Hook::Off => "not run: hooks are off on this node".to_string(),
        Hook::Ran => "ran".to_string(),
        Hook::Failed(why) => why.clone(),
    }
}

/// What a job needs from the daemon.
#[derive(Clone)]
pub(super) struct JobContext {
    pub node: Arc<Node>,
    pub writer: mpsc::Sender<WriteJob>,
    pub opts: InstallerOptions,
    /// Where hooks write their output, one file per module.
    pub hook_logs: PathBuf,
}

/// Runs a job and sends its result to the event loop.
pub(super) async fn run(job: InstallJob, ctx: JobContext, ev: mpsc::UnboundedSender<LoopInput>) {
    let done = run_job(job, &ctx).await;
    let _ = ev.send(LoopInput::Installer {
        done: Box::new(done),
    });
}

async fn run_job(job: InstallJob, ctx: &JobContext) -> Done {
    // Chunks the engine counts as held may still sit in the writer: commit them.
    if matches!(
        job,
        InstallJob::Install { .. } | InstallJob::Check { repair: true } | InstallJob::Repair { .. }
    ) {
        let (done, synced) = oneshot::channel();
        if ctx.writer.send(WriteJob::Sync { done }).await.is_ok() {
            let _ = synced.await;
        }
    }
    let (done, answer) = match job {
        InstallJob::Install { manifest } => (install_one(ctx, manifest).await, None),
        InstallJob::Remove { module } => {
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
            match &result {
                Ok(Some(_)) => {
                    tracing::info!(module = %module, "removed: its version is no longer approved")
                }
                Ok(None) => {}
                Err(e) => tracing::error!(module = %module, "cannot remove: {e}"),
            }
            (InstallDone::Removed { module, result }, None)
        }
        InstallJob::Rollback { module } => {
            let (done, answer) = rollback(ctx, module).await;
            (done, Some(answer))
        }
        InstallJob::Check { repair } => {
            let modules = blocking(ctx, move |ctx| check_all(ctx, repair)).await;
            let damaged = modules.iter().filter(|m| !m.problems.is_empty()).count();
            let answer = Ok(Answer::Checked(CheckOutcome {
                modules: modules.clone(),
                damaged,
            }));
            (checked(modules), Some(answer))
        }
        InstallJob::Repair { manifest } => {
            let module = manifest.manifest.module();
            let modules = blocking(ctx, move |ctx| vec![check_one(ctx, &module, true)]).await;
            (checked(modules), None)
        }
    };
    let installed = blocking(ctx, |ctx| {
        scan(&ctx.opts.install_dir).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!("cannot read the install directory: {e}");
        BTreeMap::new()
    });
    Done {
        done,
        installed,
        answer,
    }
}

/// Installs `manifest`, and runs its hook if it is newly in place.
async fn install_one(ctx: &JobContext, manifest: Arc<SignedManifest>) -> InstallDone {
    let result = blocking(ctx, {
        let manifest = manifest.clone();
        move |ctx| {
            let dir = &ctx.opts.install_dir;
            let abort = ctx.opts.abort_at_switch;
            install::install_pausing(
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
            )
        }
    })
    .await;
    let (module, version) = (manifest.manifest.module(), &manifest.manifest.version);
    let hook = match &result {
        Ok(Installed::New { .. } | Installed::Reactivated { .. }) => run_hook(ctx, &manifest).await,
        _ => None,
    };
    let result = match result {
        Ok(outcome) => {
            let replaced = match outcome {
                Installed::New { previous, .. } => previous,
                Installed::Reactivated { previous, .. } => Some(previous),
                Installed::AlreadyInstalled { .. } => None,
            };
            match replaced {
                Some(p) => {
                    let was = version_of(ctx, None, &p);
                    tracing::info!(module = %module, version = %version, update = %manifest.id, "installed in place of {was}");
                }
                None => {
                    tracing::info!(module = %module, version = %version, update = %manifest.id, "installed")
                }
            }
            Ok(replaced)
        }
        Err(e) => Err(chain(&e)),
    };
    InstallDone::Installed {
        update: manifest.id,
        result,
        hook,
    }
}

/// The admin's rollback of `module`, and the answer to it.
async fn rollback(ctx: &JobContext, module: ModuleName) -> (InstallDone, Reply) {
    let result = blocking(ctx, {
        let module = module.clone();
        move |ctx| {
            // It holds the version it leaves, so that it is not installed again.
            let (dir, m) = (&ctx.opts.install_dir, &module);
            install::rollback(dir, &m.tenant, &m.category, &m.id)
        }
    })
    .await;
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            let why = chain(&e);
            let refusal = Refusal::new(RefusalKind::Conflict, why.clone());
            let done = InstallDone::RolledBack {
                module,
                result: Err(why),
                hook: None,
            };
            return (done, Err(refusal));
        }
    };
    let hook = match stored_manifest(&ctx.node, &r.current) {
        Some(m) => run_hook(ctx, &m).await,
        None => None,
    };
    let status = blocking(ctx, {
        let module = module.clone();
        move |ctx| {
            let (dir, m) = (&ctx.opts.install_dir, &module);
            install::status(dir, &m.tenant, &m.category, &m.id).ok()
        }
    })
    .await;
    let (to, from) = (
        version_of(ctx, status.as_ref(), &r.current),
        version_of(ctx, status.as_ref(), &r.previous),
    );
    tracing::info!(module = %module, "rolled back from {from} to {to}");
    let answer = Ok(Answer::RolledBack(RollbackOutcome {
        module: module.to_string(),
        current: VersionRef {
            update_id: r.current,
            version: to,
        },
        held: VersionRef {
            update_id: r.previous,
            version: from,
        },
        hook: hook.as_ref().map(hook_said),
    }));
    let done = InstallDone::RolledBack {
        module,
        result: Ok((r.current, r.previous)),
        hook,
    };
    (done, answer)
}

/// A check's result for the engine: which repairs wait for chunks, and which do not.
fn checked(modules: Vec<ModuleCheck>) -> InstallDone {
    let (mut settled, mut waiting) = (Vec::new(), Vec::new());
    for m in modules {
        let Ok(update) = m.update_id.parse::<Hash>() else {
            continue;
        };
        if m.waiting_for_parent {
            waiting.push((update, m.have));
        } else {
            settled.push(update);
        }
    }
    InstallDone::Checked { settled, waiting }
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
            have: Vec::new(),
        }],
    }
}

/// Checks one module's current version against its metadata and, with `repair`,
/// rewrites what is damaged from the store; chunks the store lacks are left for the
/// parent (`waiting_for_parent`).
fn check_one(ctx: &JobContext, module: &ModuleName, repair: bool) -> ModuleCheck {
    let dir = &ctx.opts.install_dir;
    let mut out = ModuleCheck {
        module: module.to_string(),
        version: String::new(),
        update_id: String::new(),
        problems: Vec::new(),
        repaired: false,
        waiting_for_parent: false,
        error: None,
        have: Vec::new(),
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
    out.have = match local_have(&ctx.node.store, &manifest) {
        Ok(have) => have,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    if out.have.iter().any(|h| !h) {
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
