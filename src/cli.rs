//! The command line: parses arguments, calls the library, prints for people or `--json`.
//!
//! Owns argument syntax, output formats, progress bars, exit codes and logging set-up.
//! Every command reads the clock here and passes `now` down; nothing below reads it.

pub mod config;
mod demo;
mod remote;
mod run;

use crate::content::Hash;
use crate::node::Node;
use crate::publish::{PublishOutcome, PublishRequest, publish};
use crate::trust::SignedManifest;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Inputs at least this large get a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "arbor",
    version,
    about = "Peer-to-peer distribution of signed, content-addressed updates"
)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Log format on stderr (the level comes from RUST_LOG; default "warn", and
    /// "warn,arbor=info" for `run`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a node directory: a root, or a node that joins under a parent.
    Init {
        /// The node directory to create (must not exist, or be empty).
        #[arg(long)]
        data: PathBuf,
        /// Create the root node: it holds the root (trust anchor) key and publishes updates.
        #[arg(long, required_unless_present = "join", conflicts_with = "join")]
        root: bool,
        /// Join under the parent that issued this token (from `arbor token`); the node
        /// redeems it on its first `arbor run`.
        #[arg(long, value_name = "TOKEN")]
        join: Option<String>,
    },
    /// Run the node: serve children, fetch from the parent, until SIGINT or SIGTERM.
    ///
    /// Settings not given here are read from DIR/config.toml if it exists.
    Run {
        #[arg(long)]
        data: PathBuf,
        /// Where to listen for peers (repeatable), e.g. /ip4/0.0.0.0/tcp/4040.
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<libp2p::Multiaddr>,
        /// Where the admin API listens (HTTP; every request needs DIR/admin.token)
        /// [default: 127.0.0.1:4041].
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// Be a client: install approved modules into INSTALL_DIR/TENANT/CATEGORY/ID.
        #[arg(long, value_name = "INSTALL_DIR")]
        install_dir: Option<PathBuf>,
        /// Run the post-install commands modules declare [default: false].
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        hooks: Option<bool>,
        /// How long a post-install command may run before it is stopped [default: 5m].
        #[arg(long, value_name = "DURATION", value_parser = config::parse_hook_timeout)]
        hook_timeout: Option<std::time::Duration>,
        /// What to do with an installed module whose approval is withdrawn: keep it,
        /// or go back to the newest version still approved (removing the module if
        /// none is) [default: keep].
        #[arg(long, value_name = "keep|remove")]
        withdrawn: Option<crate::net::Withdrawn>,
        /// Fetch from the parent (the WAN) no faster than RATE, all transfers together:
        /// 40Mbit, 5MiB/s, 500KB/s...
        #[arg(long, value_name = "RATE")]
        max_download: Option<crate::bandwidth::Rate>,
        /// Serve the children no faster than RATE, all of them together.
        #[arg(long, value_name = "RATE")]
        max_upload: Option<crate::bandwidth::Rate>,
        /// Fetch from siblings at this node's site (the LAN) no faster than RATE.
        #[arg(long, value_name = "RATE")]
        max_local_download: Option<crate::bandwidth::Rate>,
        /// Serve siblings at this node's site no faster than RATE.
        #[arg(long, value_name = "RATE")]
        max_local_upload: Option<crate::bandwidth::Rate>,
        /// This node's site, e.g. an office: the children of one parent at one site
        /// take each chunk across the site's WAN link once and share it among
        /// themselves (default: the site its join token named, kept in config.toml).
        #[arg(long, value_name = "NAME", value_parser = config::parse_site)]
        site: Option<String>,
        /// Fetch from the parent only in this daily window, local time, e.g.
        /// 19:00-07:00 (repeatable); outside it fetching pauses, and resumes by itself.
        #[arg(long, value_name = "HH:MM-HH:MM")]
        wan_window: Vec<crate::bandwidth::Window>,
    },
    /// Check the files of every installed module against their checksums (a client;
    /// the node must be running). Exits 1 if any file is damaged and not repaired.
    Check {
        #[arg(long)]
        data: PathBuf,
        /// Restore damaged files from the store, or from the parent if the store lacks
        /// their chunks.
        #[arg(long)]
        repair: bool,
    },
    /// Switch a module back to its previous version (a client; the node must be
    /// running). The version rolled back from is not installed again; a newer one is.
    Rollback {
        #[arg(long)]
        data: PathBuf,
        /// The module, as TENANT/CATEGORY/ID.
        module: String,
    },
    /// Issue a one-time join token for a new child (the node must be running).
    Token {
        #[arg(long)]
        data: PathBuf,
        /// Put the child in this group (repeatable).
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        /// The child is a leaf client: it installs updates and has no children.
        #[arg(long)]
        client: bool,
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = remote::parse_ttl)]
        ttl: std::time::Duration,
        /// The address the child should dial (default: where this node listens).
        #[arg(long, value_name = "MULTIADDR")]
        addr: Option<String>,
        /// Place the child at this site: it is written into the child's config.toml,
        /// and the children of this node at one site share chunks over their LAN.
        #[arg(long, value_name = "NAME", value_parser = config::parse_site)]
        site: Option<String>,
    },
    /// Revoke a child's membership: it is disconnected and refused from now on.
    Revoke {
        #[arg(long)]
        data: PathBuf,
        /// The child's node id (12D3KooW...).
        node: String,
    },
    /// Manage the groups of this node's children (the node must be running).
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Approve an update for a group of this node's children, or change the terms of
    /// an approval (the node must be running).
    Approve {
        #[arg(long)]
        data: PathBuf,
        /// The update id, or a unique prefix of at least 4 hex digits.
        update: String,
        /// The group of children it is for (`all`: every child).
        #[arg(long)]
        group: String,
        /// Open it to this share of the group first (e.g. 10, 12.5%); default 100.
        #[arg(long, value_name = "PERCENT")]
        wave: Option<String>,
        /// From then on the whole group: Unix seconds, RFC 3339 or +DURATION (+2d).
        #[arg(long, value_name = "TIME")]
        deadline: Option<String>,
        /// Approve it for every node below the group's members too (replica mode);
        /// without it each child's own admin decides for its children.
        #[arg(long)]
        subtree: bool,
        /// Halt the rollout once this many nodes report it failed.
        #[arg(long, value_name = "N")]
        halt_failures: Option<u64>,
        /// Halt the rollout once this share of the nodes reporting it failed.
        #[arg(long, value_name = "PERCENT")]
        halt_fraction: Option<String>,
    },
    /// Withdraw the approval of an update for a group (the node must be running).
    Decline {
        #[arg(long)]
        data: PathBuf,
        /// The update id, or a unique prefix of at least 4 hex digits.
        update: String,
        #[arg(long)]
        group: String,
    },
    /// List this node's approvals and how far each has reached.
    Approvals {
        #[arg(long)]
        data: PathBuf,
    },
    /// Show the running node: parent, children, updates and transfer rates; with
    /// --tree, its whole subtree with every node's state per update.
    Status {
        #[arg(long)]
        data: PathBuf,
        /// Show the subtree as the reports that came up the tree have it.
        #[arg(long)]
        tree: bool,
    },
    /// Wait until the running node holds every chunk of an update.
    Wait {
        #[arg(long)]
        data: PathBuf,
        /// The update id, or a unique prefix of at least 4 hex digits.
        update: String,
        /// Give up after this long.
        #[arg(long, default_value = "10m", value_parser = remote::parse_ttl)]
        timeout: std::time::Duration,
    },
    /// Publish a file or directory as a signed update (root only), or import a module
    /// package with --from-xml.
    Publish {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, required_unless_present = "from_xml")]
        tenant: Option<String>,
        #[arg(long, required_unless_present = "from_xml")]
        category: Option<String>,
        /// The module id.
        #[arg(long, required_unless_present = "from_xml")]
        id: Option<String>,
        #[arg(long, required_unless_present = "from_xml")]
        version: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Import a module package (`arbor package export`'s XML): its module fields,
        /// metadata and files, published with the package's creation time.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with_all = ["tenant", "category", "id", "version", "description", "path", "post_install", "follow_symlinks"]
        )]
        from_xml: Option<PathBuf>,
        /// Publish what symlinks inside PATH point to, instead of refusing them.
        #[arg(long)]
        follow_symlinks: bool,
        /// A command clients run after installing this version, if their node allows
        /// hooks: a program in PATH, an absolute path, or a path inside the module.
        #[arg(long, value_name = "PROGRAM")]
        post_install: Option<String>,
        /// An argument for the post-install command (repeat for several, in order).
        #[arg(
            long,
            value_name = "ARG",
            requires = "post_install",
            allow_hyphen_values = true
        )]
        post_install_arg: Vec<String>,
        /// The file or directory to publish.
        #[arg(required_unless_present = "from_xml")]
        path: Option<PathBuf>,
    },
    /// Module packages: the XML interchange format.
    Package {
        #[command(subcommand)]
        action: PackageAction,
    },
    /// List the updates in the store.
    Updates {
        #[arg(long)]
        data: PathBuf,
    },
    /// Re-hash every stored chunk and re-check every signature; exit 1 on any damage.
    Verify {
        #[arg(long)]
        data: PathBuf,
        /// Only this update (its id, or a unique prefix of at least 4 hex digits).
        update: Option<String>,
    },
    /// Reassemble an update's files into a new or empty directory.
    Export {
        #[arg(long)]
        data: PathBuf,
        /// The update id, or a unique prefix of at least 4 hex digits.
        update: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Simulate a rollout to a whole fleet: the real engine for every node of the
    /// scenario's tree, in virtual time, over modelled links (see simulations/README.md).
    Simulate {
        /// The scenario file (TOML), e.g. simulations/fleet-100k.toml.
        scenario: PathBuf,
        /// Write summary.json, timeline.csv and rollout.svg into DIR.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The seed of every random draw [default: the scenario's `seed`, else 1].
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run init, publish, verify and export on a generated sample in a temporary directory.
    Demo {
        /// Keep the demo's directory instead of removing it at the end.
        #[arg(long)]
        keep: bool,
    },
}

/// `arbor package ...`.
#[derive(Subcommand, Debug)]
enum PackageAction {
    /// Write an update as a module package: an XML document with the module's fields,
    /// its metadata and its files, compressed and base64-encoded (needs the daemon
    /// stopped, like export).
    Export {
        #[arg(long)]
        data: PathBuf,
        /// The update id, or a unique prefix of at least 4 hex digits.
        update: String,
        /// The package file to write; it must not exist.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `arbor group ...`: the built-in group `all` holds every child and cannot be changed.
#[derive(Subcommand, Debug)]
enum GroupAction {
    /// List the groups and their members.
    List {
        #[arg(long)]
        data: PathBuf,
    },
    /// Create a group.
    Create {
        #[arg(long)]
        data: PathBuf,
        name: String,
    },
    /// Delete a group; its members leave it.
    Delete {
        #[arg(long)]
        data: PathBuf,
        name: String,
    },
    /// Put a child into a group (a child may be in several).
    Assign {
        #[arg(long)]
        data: PathBuf,
        group: String,
        /// The child's node id (12D3KooW...).
        node: String,
    },
    /// Take a child out of a group.
    Unassign {
        #[arg(long)]
        data: PathBuf,
        group: String,
        /// The child's node id (12D3KooW...).
        node: String,
    },
}

/// Runs the command line; the exit code is 0 on success, 1 on failure or damage found.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Run { .. });
    init_logging(cli.log_format, daemon);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, daemon: bool) {
    // A daemon reports its life (joins, refusals, completed updates) by default.
    let default = if daemon { "warn,arbor=info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn open(data: &Path) -> Result<Node> {
    Node::open(data).with_context(|| format!("cannot open node directory {}", data.display()))
}

fn resolve(node: &Node, update: &str) -> Result<Hash> {
    Ok(node.store.resolve_update(update)?)
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A progress bar on stderr when it is a terminal and the work is large; hidden otherwise.
/// `total` is only computed when there is a terminal to show the bar on.
fn progress_bar(total: impl FnOnce() -> u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total = total();
    if total < PROGRESS_MIN_BYTES {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        Command::Init {
            data,
            join: Some(token),
            ..
        } => {
            let token = crate::trust::member::JoinToken::parse(&token)?;
            let id = Node::init_join(&data, &token)
                .with_context(|| format!("cannot create node in {}", data.display()))?;
            if let Some(site) = &token.site {
                config::preset_site(&data, site)?;
            }
            if json {
                print_json(
                    &serde_json::json!({ "node_id": id, "parent": token.parent.node_id() }),
                )?;
            } else {
                println!("{id}");
                eprintln!(
                    "created node in {}; it joins under {} at {} on its first arbor run",
                    data.display(),
                    token.parent.node_id(),
                    token.addr
                );
            }
        }
        Command::Run {
            data,
            listen,
            admin,
            install_dir,
            hooks,
            hook_timeout,
            withdrawn,
            max_download,
            max_upload,
            max_local_download,
            max_local_upload,
            site,
            wan_window,
        } => {
            let flags = config::RunFlags {
                listen,
                admin,
                install_dir,
                hooks,
                hook_timeout,
                withdrawn,
                max_download,
                max_upload,
                max_local_download,
                max_local_upload,
                site,
                wan_window,
            };
            run::run(&data, flags)?
        }
        Command::Check { data, repair } => return remote::check(&data, repair, json),
        Command::Rollback { data, module } => remote::rollback(&data, &module, json)?,
        Command::Token {
            data,
            groups,
            client,
            ttl,
            addr,
            site,
        } => remote::token(&data, groups, client, ttl, addr, site, json)?,
        Command::Revoke { data, node } => remote::revoke(&data, &node, json)?,
        Command::Group { action } => {
            use crate::net::command::GroupRequest as G;
            let (data, req) = match action {
                GroupAction::List { data } => (data, G::List),
                GroupAction::Create { data, name } => (data, G::Create { name }),
                GroupAction::Delete { data, name } => (data, G::Delete { name }),
                GroupAction::Assign { data, group, node } => (data, G::Assign { group, node }),
                GroupAction::Unassign { data, group, node } => (data, G::Unassign { group, node }),
            };
            remote::group(&data, req, json)?
        }
        Command::Approve {
            data,
            update,
            group,
            wave,
            deadline,
            subtree,
            halt_failures,
            halt_fraction,
        } => {
            use crate::net::command::{ApproveRequest, Percent, When};
            let req = ApproveRequest {
                update,
                group,
                wave: wave.map(Percent::Text),
                deadline: deadline.map(When::Text),
                subtree,
                halt_failures,
                halt_fraction: halt_fraction.map(Percent::Text),
            };
            remote::approve(&data, req, json)?
        }
        Command::Decline {
            data,
            update,
            group,
        } => remote::decline(&data, &update, &group, json)?,
        Command::Approvals { data } => remote::approvals(&data, json)?,
        Command::Status { data, tree: false } => remote::status(&data, json)?,
        Command::Status { data, tree: true } => remote::status_tree(&data, json)?,
        Command::Wait {
            data,
            update,
            timeout,
        } => remote::wait(&data, &update, timeout, json)?,
        Command::Init { data, .. } => {
            let node = Node::init_root(&data)
                .with_context(|| format!("cannot create root node in {}", data.display()))?;
            if json {
                print_json(&serde_json::json!({
                    "node_id": node.node_id(),
                    "root_key": node.root_key.to_string(),
                }))?;
            } else {
                println!("{}", node.node_id());
                eprintln!(
                    "created root node in {}\nroot key: {}",
                    data.display(),
                    node.root_key
                );
            }
        }
        Command::Publish {
            data,
            tenant,
            category,
            id,
            version,
            description,
            follow_symlinks,
            post_install,
            post_install_arg,
            from_xml,
            path,
        } => {
            // An imported package is unpacked inside the node directory, where the
            // daemon (if it runs) can read it; it is removed when this ends.
            let mut _unpacked = None;
            let req = match from_xml {
                Some(file) => {
                    let (req, dir) = unpack_package(&data, &file)?;
                    _unpacked = Some(dir);
                    req
                }
                None => {
                    let missing = || {
                        anyhow::anyhow!(
                            "give --tenant, --category, --id, --version and PATH, or --from-xml FILE"
                        )
                    };
                    PublishRequest {
                        tenant: tenant.ok_or_else(missing)?,
                        category: category.ok_or_else(missing)?,
                        id: id.ok_or_else(missing)?,
                        version: version.ok_or_else(missing)?,
                        description,
                        path: path.ok_or_else(missing)?,
                        follow_symlinks,
                        post_install: post_install.map(|program| {
                            std::iter::once(program).chain(post_install_arg).collect()
                        }),
                        created: None,
                    }
                }
            };
            let out = match publish_via_daemon(&data, &req)? {
                Some(out) => out,
                None => {
                    let node = open(&data)?;
                    let bar = progress_bar(|| input_size(&req.path), "publishing");
                    let at = req.created.unwrap_or_else(now);
                    let out = publish(&node, &req, at, &|done| bar.set_position(done))
                        .context("publish failed")?;
                    bar.finish_and_clear();
                    out
                }
            };
            if json {
                print_json(&serde_json::json!({
                    "update_id": out.update_id,
                    "bytes": out.bytes,
                    "new_bytes": out.new_bytes,
                    "chunks": out.chunks,
                }))?;
            } else {
                println!("{}", out.update_id);
                let what = if out.already_published {
                    "already published, nothing stored"
                } else {
                    "published"
                };
                eprintln!(
                    "{what}: {}/{}/{} {}: {} in {} chunks, {} new",
                    req.tenant,
                    req.category,
                    req.id,
                    req.version,
                    HumanBytes(out.bytes),
                    out.chunks,
                    HumanBytes(out.new_bytes)
                );
            }
        }
        Command::Updates { data } => {
            let node = open(&data)?;
            if !list_updates(&node, json)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Verify { data, update } => {
            let node = open(&data)?;
            let update = update.map(|u| resolve(&node, &u)).transpose()?;
            let bar = progress_bar(|| bytes_to_verify(&node, update.as_ref()), "verifying");
            let report =
                crate::verify::verify(&node, update, now(), &|done| bar.set_position(done))?;
            bar.finish_and_clear();
            if json {
                print_json(&report)?;
            } else {
                for p in &report.problems {
                    println!("BAD {p}");
                }
                for note in report.notes() {
                    println!("note: {note}");
                }
                let summary = format!(
                    "{} updates, {} chunks, {} checked",
                    report.updates,
                    report.chunks,
                    HumanBytes(report.bytes)
                );
                if report.ok() {
                    println!("ok: {summary}");
                } else {
                    println!("FAILED: {} problems; {summary}", report.problems.len());
                }
            }
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Export { data, update, out } => {
            let node = open(&data)?;
            let id = resolve(&node, &update)?;
            let done = crate::export::export(&node, &id, &out, now())
                .with_context(|| format!("cannot export update {}", id.short()))?;
            if json {
                print_json(&done)?;
            } else {
                println!(
                    "exported {} files ({}) of update {} to {}",
                    done.files,
                    HumanBytes(done.bytes),
                    id.short(),
                    out.display()
                );
            }
        }
        Command::Package {
            action: PackageAction::Export { data, update, out },
        } => {
            let node = open(&data)?;
            let id = resolve(&node, &update)?;
            let dir = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            {
                let mut w = std::io::BufWriter::new(tmp.as_file_mut());
                crate::package::export(&node, &id, &mut w, now())
                    .with_context(|| format!("cannot export update {}", id.short()))?;
            }
            tmp.as_file()
                .sync_all()
                .with_context(|| format!("cannot write {}", out.display()))?;
            tmp.persist_noclobber(&out)
                .map_err(|e| e.error)
                .with_context(|| format!("cannot write {} (it must not exist)", out.display()))?;
            if json {
                print_json(&serde_json::json!({ "update_id": id, "out": out }))?;
            } else {
                println!(
                    "wrote update {} as a package to {}",
                    id.short(),
                    out.display()
                );
            }
        }
        Command::Simulate {
            scenario,
            out,
            seed,
        } => simulate(&scenario, out.as_deref(), seed, json)?,
        Command::Demo { keep } => demo::run(keep)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `arbor simulate`: runs the scenario with a progress bar, prints the summary and
/// writes the files asked for.
fn simulate(path: &Path, out: Option<&Path>, seed: Option<u64>, json: bool) -> Result<()> {
    let scenario = crate::sim::Scenario::load(path)?;
    let seed = seed.unwrap_or(scenario.seed);
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(scenario.until / 1000);
        let style = ProgressStyle::with_template(
            "simulating [{bar:40}] {pos}/{len} virtual s, {msg} ({elapsed} wall)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = std::time::Instant::now();
    let run = crate::sim::simulate(&scenario, seed, &mut |p| {
        bar.set_position(p.now / 1000);
        bar.set_message(format!("{} of {} installs", p.installed, p.wanted));
    })
    .with_context(|| format!("cannot simulate {}", path.display()))?;
    bar.finish_and_clear();
    let wall = started.elapsed();
    if let Some(dir) = out {
        run.write(dir)?;
    }
    if json {
        print_json(&run.summary)?;
    } else {
        print!("{}", run.summary.text());
        println!("\nsimulated in {:.1} s of wall time", wall.as_secs_f64());
        if let Some(dir) = out {
            println!(
                "wrote {0}/summary.json, {0}/timeline.csv and {0}/rollout.svg",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Reads a module package into a temporary directory inside the node directory.
fn unpack_package(data: &Path, file: &Path) -> Result<(PublishRequest, tempfile::TempDir)> {
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    if !data.join(crate::node::NODE_KEY_FILE).exists() {
        anyhow::bail!("{} is not a node directory", data.display());
    }
    crate::package::unpack_temp(input, data, crate::package::Limits::default())
        .with_context(|| format!("cannot import {}", file.display()))
}

/// Publishes through the node's running daemon, which then offers the update to its
/// children at once. `None` when no daemon runs: the caller publishes directly.
fn publish_via_daemon(data: &Path, req: &PublishRequest) -> Result<Option<PublishOutcome>> {
    let path = std::path::absolute(&req.path)
        .with_context(|| format!("cannot resolve {}", req.path.display()))?;
    let request = crate::net::command::Request::Publish(PublishRequest {
        path,
        ..req.clone()
    });
    match crate::admin::call(data, &request, std::time::Duration::from_secs(24 * 3600)) {
        Ok(outcome) => Ok(Some(outcome)),
        Err(crate::admin::AdminError::NotRunning(_)) => Ok(None),
        Err(e) => Err(e).context("publish failed"),
    }
}

/// Total size of a publish input, for the progress bar; 0 when unknown.
fn input_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The bytes `verify` will read: one update's size, or the whole store's; 0 when unknown.
fn bytes_to_verify(node: &Node, update: Option<&Hash>) -> u64 {
    match update {
        Some(id) => node
            .store
            .manifest_bytes(id)
            .ok()
            .flatten()
            .and_then(|bytes| SignedManifest::open(&bytes, &node.root_key, now()).ok())
            .map_or(0, |m| m.manifest.distinct_chunks().1),
        None => node
            .store
            .packs()
            .map_or(0, |p| p.iter().map(|(_, len)| len).sum()),
    }
}

/// Lists the stored updates; returns false if some could not be read (each is reported
/// on stderr, and the others are still listed).
fn list_updates(node: &Node, json: bool) -> Result<bool> {
    let mut rows = Vec::new();
    let mut all_ok = true;
    for (id, bytes) in node.store.manifests()? {
        match SignedManifest::open(&bytes, &node.root_key, now()) {
            Ok(signed) => rows.push(signed),
            Err(e) => {
                all_ok = false;
                eprintln!(
                    "error: stored update {} is damaged: {e}; run arbor verify",
                    id.short()
                );
            }
        }
    }
    rows.sort_by_key(|s| s.seq);
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|s| {
                let m = &s.manifest;
                serde_json::json!({
                    "update_id": s.id,
                    "tenant": m.tenant,
                    "category": m.category,
                    "id": m.id,
                    "version": m.version,
                    "description": m.description,
                    "created": m.created,
                    "bytes": m.total_size,
                    "files": m.files.len(),
                    "chunks": m.distinct_chunks().0,
                    "seq": s.seq,
                })
            })
            .collect();
        print_json(&list)?;
        return Ok(all_ok);
    }
    if rows.is_empty() {
        eprintln!("no updates in {}", node.dir.display());
        return Ok(all_ok);
    }
    println!(
        "{:<14} {:<40} {:<16} {:>10} {:>7}",
        "UPDATE", "MODULE", "VERSION", "SIZE", "FILES"
    );
    for s in &rows {
        let m = &s.manifest;
        println!(
            "{:<14} {:<40} {:<16} {:>10} {:>7}",
            s.id.short(),
            m.module(),
            m.version,
            HumanBytes(m.total_size).to_string(),
            m.files.len()
        );
    }
    Ok(all_ok)
}
