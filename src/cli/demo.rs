//! `arbor demo`: a whole tree in one process on loopback, on generated content.
//!
//! Starts a root, two branch nodes that join under it and two leaf clients under each
//! branch, every one with its own temporary node directory and real libp2p connections
//! on 127.0.0.1. The root publishes a sample module; the demo shows progress while it
//! flows down the tree, then publishes a second version with 5% of its bytes changed,
//! so only the changed chunks cross each link. It prints the time and the bytes over
//! each link, stops the nodes, exports the update from every node and checks it is
//! byte-identical to the input. Any step that does not hold fails the demo.

use crate::net::command::{ApproveRequest, IssuedToken, NodeStatus, Request, TokenRequest};
use crate::net::{self, Handle, Options};
use crate::node::Node;
use crate::publish::{PublishOutcome, PublishRequest};
use crate::trust::member::JoinToken;
use anyhow::{Context, Result, bail, ensure};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs;
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const ENGINE_BYTES: usize = 32 << 20;
/// Generous bound on one update reaching every node; it takes about a second.
const FLOW_TIMEOUT: Duration = Duration::from_secs(300);

/// One node of the demo tree.
struct DemoNode {
    name: String,
    dir: PathBuf,
    handle: Handle,
    parent: Option<usize>,
    task: tokio::task::JoinHandle<Result<(), net::NetError>>,
}

pub fn run(keep: bool) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("arbor-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let base = tmp.path().to_path_buf();
    println!("arbor demo in {}", base.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(&base))?;
    if keep {
        let kept = tmp.keep();
        println!(
            "kept {}; each node directory is in it (try: arbor updates --data {})",
            kept.display(),
            kept.join("leaf-1a").display()
        );
    }
    Ok(())
}

async fn demo(base: &Path) -> Result<()> {
    let v1 = base.join("provider/v1");
    let v2 = base.join("provider/v2");
    write_sample(&v1, &v2)?;
    let (stop_tx, stop_rx) = watch::channel(false);

    Node::init_root(&base.join("root"))?;
    let mut nodes = vec![start(base, "root", None, &stop_rx).await?];
    for b in 1..=2 {
        let branch = join(base, &format!("branch-{b}"), 0, false, &mut nodes, &stop_rx).await?;
        for l in ["a", "b"] {
            join(
                base,
                &format!("leaf-{b}{l}"),
                branch,
                true,
                &mut nodes,
                &stop_rx,
            )
            .await?;
        }
    }
    println!("1. started a tree of {} nodes on loopback:", nodes.len());
    for n in &nodes {
        let parent = n
            .parent
            .map_or("(root)".to_string(), |p| format!("under {}", nodes[p].name));
        println!("   {:<9} {parent}", n.name);
    }

    let first = flow(&nodes, &v1, "1.0.0", "2").await?;
    let second = flow(&nodes, &v2, "1.1.0", "3").await?;

    let _ = stop_tx.send(true);
    for n in nodes.iter_mut() {
        (&mut n.task).await.context("a node task failed")??;
    }
    for n in &nodes {
        let node = Node::open(&n.dir)?;
        for (update, input) in [(&first, &v1), (&second, &v2)] {
            let out = base.join("export").join(&n.name).join(update.short());
            crate::export::export(&node, update, &out, super::now())?;
            compare_trees(input, &out)
                .with_context(|| format!("{} holds a wrong copy of {}", n.name, update.short()))?;
        }
    }
    println!(
        "4. stopped every node and exported both versions from each: all byte-identical to the input"
    );
    Ok(())
}

/// Starts the node in `base/name` and runs it until `stop` turns true.
async fn start(
    base: &Path,
    name: &str,
    parent: Option<usize>,
    stop: &watch::Receiver<bool>,
) -> Result<DemoNode> {
    let dir = base.join(name);
    let listen = "/ip4/127.0.0.1/tcp/0".parse().context("listen address")?;
    let daemon = net::start(Options::new(&dir, vec![listen]))
        .await
        .with_context(|| format!("cannot start {name}"))?;
    let handle = daemon.handle();
    let mut stop = stop.clone();
    let task = tokio::spawn(daemon.run(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Ok(DemoNode {
        name: name.to_string(),
        dir,
        handle,
        parent,
        task,
    })
}

/// Creates `name` with a token from node `parent` and starts it (it joins on start).
async fn join(
    base: &Path,
    name: &str,
    parent: usize,
    client: bool,
    nodes: &mut Vec<DemoNode>,
    stop: &watch::Receiver<bool>,
) -> Result<usize> {
    let issued: IssuedToken = nodes[parent]
        .handle
        .ask(Request::Token(TokenRequest {
            groups: vec![],
            client,
            ttl_secs: 600,
            addr: None,
            site: None,
        }))
        .await
        .map_err(anyhow::Error::new)?;
    Node::init_join(&base.join(name), &JoinToken::parse(&issued.token)?)?;
    nodes.push(start(base, name, Some(parent), stop).await?);
    Ok(nodes.len() - 1)
}

/// Publishes `input` on the root and shows it flowing until every node holds it.
async fn flow(
    nodes: &[DemoNode],
    input: &Path,
    version: &str,
    step: &str,
) -> Result<crate::content::Hash> {
    let before = link_bytes(nodes).await?;
    let started = Instant::now();
    let published: PublishOutcome = nodes[0]
        .handle
        .ask(Request::Publish(PublishRequest {
            tenant: "acme".into(),
            category: "plugins".into(),
            id: "report-viewer".into(),
            version: version.into(),
            description: Some("Sample module generated by arbor demo".into()),
            path: input.to_path_buf(),
            follow_symlinks: false,
            post_install: None,
            created: None,
        }))
        .await
        .map_err(anyhow::Error::new)?;
    let (update, total) = (published.update_id, published.bytes);
    nodes[0]
        .handle
        .call(Request::Approve(ApproveRequest {
            update: update.to_hex(),
            group: crate::rules::ALL.into(),
            wave: None,
            deadline: None,
            subtree: true,
            halt_failures: None,
            halt_fraction: None,
        }))
        .await
        .map_err(anyhow::Error::new)?;
    println!(
        "{step}. published acme/plugins/report-viewer {version} ({}) as update {}, \
         approved for the whole tree",
        HumanBytes(total),
        update.short()
    );
    let bars = MultiProgress::with_draw_target(if std::io::stdout().is_terminal() {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("   {prefix:<9} [{bar:30}] {bytes}/{total_bytes}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut waits = Vec::new();
    for n in &nodes[1..] {
        let bar = bars.add(ProgressBar::new(total).with_style(style.clone()));
        bar.set_prefix(n.name.clone());
        let handle = n.handle.clone();
        let wait = tokio::spawn({
            let handle = handle.clone();
            async move {
                handle
                    .call(Request::Wait {
                        update: update.to_hex(),
                    })
                    .await
            }
        });
        waits.push((bar, handle, wait));
    }
    let deadline = started + FLOW_TIMEOUT;
    loop {
        let mut done = true;
        for (bar, handle, wait) in &waits {
            if wait.is_finished() {
                bar.set_position(total);
                continue;
            }
            done = false;
            if let Ok(status) = handle.ask::<Box<NodeStatus>>(Request::Status).await {
                let held = status
                    .updates
                    .iter()
                    .find(|u| u.update_id == update)
                    .map_or(0, |u| u.bytes_held);
                bar.set_position(held);
            }
        }
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("the update did not reach every node within {FLOW_TIMEOUT:?}");
        }
        // Only the display is refreshed on this timer; completion comes from the waits.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (bar, _, wait) in waits {
        bar.finish();
        wait.await?.map_err(anyhow::Error::new)?;
    }
    let elapsed = started.elapsed();
    let after = link_bytes(nodes).await?;
    println!(
        "   every node holds {version} after {:.2} s (publish included). Bytes over each link:",
        elapsed.as_secs_f64()
    );
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let Some(p) = n.parent else { continue };
        let sent =
            after.get(&(p, i)).copied().unwrap_or(0) - before.get(&(p, i)).copied().unwrap_or(0);
        println!(
            "   {:<9} -> {:<9} {}",
            nodes[p].name,
            n.name,
            HumanBytes(sent)
        );
    }
    Ok(update)
}

/// Bytes each parent has sent each child so far, by (parent, child) index.
async fn link_bytes(nodes: &[DemoNode]) -> Result<std::collections::HashMap<(usize, usize), u64>> {
    let mut statuses = Vec::new();
    for n in nodes {
        let s: Box<NodeStatus> = n
            .handle
            .ask(Request::Status)
            .await
            .map_err(anyhow::Error::new)?;
        statuses.push(s);
    }
    let mut out = std::collections::HashMap::new();
    for (p, s) in statuses.iter().enumerate() {
        for c in &s.children {
            if let Some(child) = statuses.iter().position(|n| n.node_id == c.node_id) {
                out.insert((p, child), c.bytes_sent);
            }
        }
    }
    Ok(out)
}

/// Writes version 1 of a sample module, and version 2 with 5% of the engine rewritten in
/// twenty spread-out places and one text file edited.
fn write_sample(v1: &Path, v2: &Path) -> Result<()> {
    let mut engine = vec![0u8; ENGINE_BYTES];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in engine.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    write_tree(v1, &engine, "Report viewer 1.0.0\n")?;
    let region = ENGINE_BYTES / 20 / 20;
    for i in 0..20 {
        let at = i * (ENGINE_BYTES / 20);
        for b in &mut engine[at..at + region] {
            *b = b.wrapping_add(1);
        }
    }
    write_tree(v2, &engine, "Report viewer 1.1.0\nFixes: faster start.\n")
}

fn write_tree(dir: &Path, engine: &[u8], readme: &str) -> Result<()> {
    fs::create_dir_all(dir.join("bin"))?;
    fs::write(dir.join("bin/engine.bin"), engine)?;
    fs::write(dir.join("README.txt"), readme)?;
    let script = dir.join("bin/start.sh");
    fs::write(
        &script,
        "#!/bin/sh\nexec \"$(dirname \"$0\")/engine.bin\" \"$@\"\n",
    )?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn compare_trees(expected: &Path, actual: &Path) -> Result<()> {
    let files = |root: &Path| -> Result<Vec<std::path::PathBuf>> {
        let mut list = Vec::new();
        for entry in walkdir::WalkDir::new(root).min_depth(1) {
            let entry = entry?;
            if !entry.file_type().is_dir() {
                list.push(entry.path().strip_prefix(root)?.to_path_buf());
            }
        }
        list.sort();
        Ok(list)
    };
    let list = files(expected)?;
    ensure!(
        list == files(actual)?,
        "the export holds other files than the input"
    );
    let mode = |p: &Path| -> Result<u32> { Ok(fs::metadata(p)?.permissions().mode() & 0o777) };
    for rel in list {
        let (a, b) = (expected.join(&rel), actual.join(&rel));
        ensure!(fs::read(&a)? == fs::read(&b)?, "{} differs", rel.display());
        ensure!(mode(&a)? == mode(&b)?, "{} has another mode", rel.display());
    }
    Ok(())
}
