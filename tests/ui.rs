//! The admin web UI in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, the `fantoccini` crate) against in-process nodes.
//!
//! A root and two children run on loopback; the root publishes an update without
//! approving it. The browser opens the root's admin URL, is refused a wrong token, logs
//! in with `ROOT/admin.token`, shows the API's refusal of a bad group name, creates the
//! group `pilot`, puts the first child in it and approves the update for `pilot` (with
//! its subtree), all through the page. The test then watches the rollout bar of
//! (update, `pilot`) reach 100% and checks through the nodes themselves that the first
//! child holds the update and the second, outside `pilot`, does not. It also issues a
//! join token through the page.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`): run `.ci/install-test-deps` (as root), which CI's `.ci/run`
//! does. Without them the test fails, unless `ARBOR_SKIP_UI_TEST=1` is set, when it
//! says why and passes. Run it alone with `cargo test --test ui`; it takes a few
//! seconds. chromedriver listens on a port it picks (`--port=0`) and is killed, with
//! the browser, when the test ends however it ends. Every wait is bounded by
//! [`WAIT`]; on a timeout the failure names what was awaited and what was last seen.

mod common;

use arbor::net::command::{GroupRequest, Request, TokenRequest};
use arbor::net::{self, Handle, Options};
use arbor::node::Node;
use arbor::publish::PublishRequest;
use arbor::trust::member::JoinToken;
use common::noise;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on anything the test waits for: generous, only there to catch a hang.
const WAIT: Duration = Duration::from_secs(60);

// ---- nodes -------------------------------------------------------------------

/// One running in-process node.
struct TestNode {
    handle: Handle,
    admin_url: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), net::NetError>>,
}

impl TestNode {
    /// The node's answer, as the admin API's JSON, or why it refused.
    async fn try_call(&self, req: Request) -> Result<serde_json::Value, String> {
        let answer = tokio::time::timeout(WAIT, self.handle.call(req))
            .await
            .expect("the node answers in time")
            .map_err(|r| r.message)?;
        Ok(serde_json::to_value(answer).expect("an answer is JSON"))
    }

    async fn call(&self, req: Request) -> serde_json::Value {
        self.try_call(req)
            .await
            .expect("the node accepts the request")
    }

    async fn node_id(&self) -> String {
        let status = self.call(Request::Status).await;
        status["node_id"].as_str().expect("a node id").to_string()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the node stops in time")
            .expect("the node task ends")
            .expect("the node stops cleanly");
    }
}

async fn start(dir: &Path) -> TestNode {
    let opts = Options::new(
        dir,
        vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
    );
    let daemon = tokio::time::timeout(WAIT, arbor::admin::start(opts, arbor::admin::LOOPBACK))
        .await
        .expect("start does not hang")
        .expect("the node starts");
    let handle = daemon.handle();
    let admin_url = daemon
        .admin_url()
        .expect("the admin API serves")
        .to_string();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(daemon.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    TestNode {
        handle,
        admin_url,
        stop,
        task,
    }
}

/// Joins a new node under `parent` and starts it.
async fn child(parent: &TestNode, dir: &Path) -> TestNode {
    let token = parent
        .call(Request::Token(TokenRequest {
            groups: vec![],
            client: false,
            ttl_secs: 600,
            addr: None,
            site: None,
        }))
        .await;
    let token = JoinToken::parse(token["token"].as_str().expect("a token")).expect("token");
    Node::init_join(dir, &token).expect("init join");
    start(dir).await
}

/// The status entry of `update` on a node, if it knows the update.
fn update_entry<'a>(status: &'a serde_json::Value, update: &str) -> Option<&'a serde_json::Value> {
    status["updates"]
        .as_array()?
        .iter()
        .find(|u| u["update_id"] == update)
}

// ---- the browser ---------------------------------------------------------------

/// chromedriver and everything it started (the browser), killed when dropped.
struct Driver {
    process: Child,
    port: u16,
}

impl Driver {
    fn start(profile: &Path) -> Driver {
        let mut process = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .env("HOME", profile)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, so that the browser goes with it.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let stdout = process.stdout.take().expect("chromedriver's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Reads every line, so that chromedriver never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut driver = Driver { process, port: 0 };
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while driver.port == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split(" on port ").nth(1)
                        && line.contains("started successfully")
                    {
                        driver.port = rest
                            .trim_end_matches('.')
                            .trim()
                            .parse()
                            .expect("chromedriver names its port");
                    }
                    seen.push(line);
                }
                Err(_) => panic!(
                    "chromedriver did not say which port it listens on within {WAIT:?}; \
                     it said: {seen:?}"
                ),
            }
        }
        driver
    }

    async fn browser(&self, profile: &Path) -> Client {
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--window-size=1280,1024",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(caps);
        let url = format!("http://127.0.0.1:{}", self.port);
        match tokio::time::timeout(WAIT, builder.connect(&url)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("chromedriver could not start Chromium: {e}"),
            Err(_) => panic!("Chromium did not start within {WAIT:?}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.process.id() as libc::pid_t;
        // SAFETY: kill(2) on the process group this test created for chromedriver.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.process.wait();
    }
}

/// Polls `probe` until it answers `Ok`, at most [`WAIT`]; its `Err` says what it saw.
async fn until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match tokio::time::timeout(WAIT, probe()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(seen)) => seen,
            Err(_) => "the probe itself hung".to_string(),
        };
        if Instant::now() >= deadline {
            panic!("timed out after {WAIT:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn find(c: &Client, css: &str) -> Result<Element, String> {
    c.find(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css}: {e}"))
}

/// The text of `css` once it is displayed.
async fn shown_text(c: &Client, css: &str) -> Result<String, String> {
    let e = find(c, css).await?;
    if !e.is_displayed().await.map_err(|e| e.to_string())? {
        return Err(format!("{css} is hidden"));
    }
    e.text().await.map_err(|e| e.to_string())
}

/// Waits for `css` to be displayed and enabled, then clicks it.
async fn click(c: &Client, css: &str) {
    let e = until(&format!("{css} to be clickable"), || async {
        let e = find(c, css).await?;
        let ok = e.is_displayed().await.map_err(|e| e.to_string())?
            && e.is_enabled().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(e)
        } else {
            Err(format!("{css} is hidden or disabled"))
        }
    })
    .await;
    e.click().await.expect("click");
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = until(&format!("{css} to be there"), || find(c, css)).await;
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

/// Waits until the select `css` offers `value`, then chooses it.
async fn choose(c: &Client, css: &str, value: &str) {
    let option = format!("{css} option[value=\"{value}\"]");
    until(&format!("{option} to be offered"), || find(c, &option)).await;
    let select = find(c, css).await.expect("the select");
    select.select_by_value(value).await.expect("select");
}

/// `css`, or what the page shows instead.
async fn present(c: &Client, css: &str) -> Result<Element, String> {
    match find(c, css).await {
        Ok(e) => Ok(e),
        Err(e) => Err(format!("{e}; {}", page_error(c).await)),
    }
}

/// Whatever error the page shows, for failure messages.
async fn page_error(c: &Client) -> String {
    for css in ["#error-text", "#login-error", "#poll-status"] {
        if let Ok(text) = shown_text(c, css).await
            && !text.is_empty()
        {
            return format!("the page shows {text:?}");
        }
    }
    "the page shows no error".into()
}

// ---- the test --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rolls_an_update_out_to_a_pilot_group_in_the_browser() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        let why = format!(
            "{CHROMEDRIVER} or {CHROMIUM} is missing: run .ci/install-test-deps \
             (or apt-get install chromium chromium-driver)"
        );
        if std::env::var("ARBOR_SKIP_UI_TEST").as_deref() == Ok("1") {
            eprintln!("skipping the UI test (ARBOR_SKIP_UI_TEST=1): {why}");
            return;
        }
        panic!("{why}; or set ARBOR_SKIP_UI_TEST=1 to skip this test");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();

    // A root with two children; an update published but approved for no one.
    let root_dir = base.join("root");
    Node::init_root(&root_dir).expect("init root");
    let root = start(&root_dir).await;
    let first = child(&root, &base.join("first")).await;
    let second = child(&root, &base.join("second")).await;
    let (first_id, second_id) = (first.node_id().await, second.node_id().await);
    let input = base.join("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("engine"), noise(2 << 20, 7)).expect("write");
    let published = root
        .call(Request::Publish(PublishRequest {
            tenant: "acme".into(),
            category: "plugins".into(),
            id: "viewer".into(),
            version: "1.0".into(),
            description: None,
            path: PathBuf::from(&input),
            follow_symlinks: false,
            post_install: None,
            created: None,
        }))
        .await;
    let update = published["update_id"]
        .as_str()
        .expect("an update id")
        .to_string();
    // Both children are connected before anything is approved, so that only the
    // approval decides who gets the update.
    until("both children to be connected", || async {
        let status = root.call(Request::Status).await;
        let connected = status["children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["connected"] == true)
            .count();
        if connected == 2 {
            Ok(())
        } else {
            Err(format!("{connected} connected"))
        }
    })
    .await;

    let profile = base.join("browser");
    std::fs::create_dir_all(&profile).expect("mkdir");
    let driver = Driver::start(&profile);
    let c = driver.browser(&profile).await;
    c.goto(&format!("{}/", root.admin_url))
        .await
        .expect("the page loads");

    // A wrong token is refused with a message, on the login form.
    type_into(&c, "#token-input", "not-the-token").await;
    click(&c, "#login-button").await;
    let refused = until("the login form to refuse a wrong token", || async {
        shown_text(&c, "#login-error").await
    })
    .await;
    assert!(refused.contains("admin token"), "{refused}");
    assert!(
        !find(&c, "#app")
            .await
            .expect("#app")
            .is_displayed()
            .await
            .expect("displayed"),
        "the app shows without a valid token"
    );

    // The right token opens the node's page.
    let token = std::fs::read_to_string(root_dir.join("admin.token")).expect("admin.token");
    type_into(&c, "#token-input", token.trim()).await;
    click(&c, "#login-button").await;
    let root_id = root.node_id().await;
    until("the node section to show the root", || async {
        let id = shown_text(&c, "#node-id").await?;
        let role = shown_text(&c, "#node-role").await?;
        if id == root_id && role == "root" {
            Ok(())
        } else {
            Err(format!("{id:?} {role:?}; {}", page_error(&c).await))
        }
    })
    .await;

    // A bad group name: the page shows the API's own refusal.
    let expected = root
        .try_call(Request::Group(GroupRequest::Create {
            name: "bad name".into(),
        }))
        .await
        .expect_err("the API refuses a group name with a space");
    type_into(&c, "#group-name", "bad name").await;
    click(&c, "#group-create").await;
    until(
        "the page to show the API's refusal of a bad group name",
        || async {
            let shown = shown_text(&c, "#error-text").await?;
            if shown.trim() == expected.trim() {
                Ok(())
            } else {
                Err(format!("{shown:?}, expected {expected:?}"))
            }
        },
    )
    .await;

    // Create `pilot`, put the first child in it.
    type_into(&c, "#group-name", "pilot").await;
    click(&c, "#group-create").await;
    until("the group pilot to be listed", || async {
        present(&c, "[data-group-name=\"pilot\"]").await
    })
    .await;
    choose(&c, "#assign-node", &first_id).await;
    choose(&c, "#assign-group", "pilot").await;
    click(&c, "#assign-button").await;
    let member = format!("[data-testid=\"unassign-pilot-{first_id}\"]");
    until("the first child to be listed in pilot", || async {
        present(&c, &member).await
    })
    .await;

    // Approve the update for pilot and everything below it.
    choose(&c, "#approve-update", &update).await;
    choose(&c, "#approve-group", "pilot").await;
    let subtree = find(&c, "#approve-subtree")
        .await
        .expect("#approve-subtree");
    if !subtree.is_selected().await.expect("checked?") {
        subtree.click().await.expect("check");
    }
    click(&c, "#approve-button").await;
    let row = format!("[data-approval=\"{update}/pilot\"]");
    until("the approval to be listed", || async {
        present(&c, &row).await
    })
    .await;

    // The rollout bar of (update, pilot) fills.
    let bar = format!(".rollout-bar[data-update=\"{update}\"][data-group=\"pilot\"]");
    until("the pilot rollout to reach 100%", || async {
        let percent = find(&c, &bar)
            .await?
            .attr("data-percent")
            .await
            .map_err(|e| e.to_string())?;
        if percent.as_deref() == Some("100") {
            Ok(())
        } else {
            Err(format!(
                "data-percent {percent:?}; {}",
                page_error(&c).await
            ))
        }
    })
    .await;
    // The subtree view shows the first child with the update done.
    let state = format!("[data-node=\"{first_id}\"] [data-tree-update=\"{update}\"]");
    until("the tree to show the first child done", || async {
        let s = find(&c, &state)
            .await?
            .attr("data-state")
            .await
            .map_err(|e| e.to_string())?;
        match s.as_deref() {
            Some("downloaded" | "installed") => Ok(()),
            other => Err(format!("state {other:?}")),
        }
    })
    .await;

    // The nodes agree: the first child holds the whole update, the second none of it.
    let bytes = update_entry(&root.call(Request::Status).await, &update)
        .and_then(|u| u["bytes"].as_u64())
        .expect("the root knows the update's size");
    let held = |s: &serde_json::Value| {
        update_entry(s, &update)
            .and_then(|u| u["bytes_held"].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(held(&first.call(Request::Status).await), bytes);
    assert_eq!(
        held(&second.call(Request::Status).await),
        0,
        "the second child ({second_id}) is not in pilot but got the update"
    );

    // A join token through the page.
    click(&c, "#token-create").await;
    let issued = until("a join token to be shown", || async {
        let v = find(&c, "#token-output")
            .await?
            .prop("value")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        match JoinToken::parse(&v) {
            Ok(_) => Ok(v),
            Err(e) => Err(format!("{v:?}: {e}; {}", page_error(&c).await)),
        }
    })
    .await;
    assert!(!issued.is_empty());

    c.close().await.expect("the browser closes");
    drop(driver);
    for node in [second, first, root] {
        node.stop().await;
    }
}
