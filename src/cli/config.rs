//! The node's configuration file, `DIR/config.toml`: the settings of `arbor run` an
//! operator keeps with the node, each overridden by its command-line flag.
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/4040"]
//! admin = "127.0.0.1:4041"
//! install_dir = "/var/lib/arbor/modules"   # a client: install approved modules here
//! hooks = false                            # run modules' post-install commands
//! hook_timeout = "5m"
//! withdrawn = "keep"                       # or "remove"
//! max_download = "40Mbit"                  # from the parent (the WAN), all together
//! max_upload = "100MiB/s"                  # to the children, all together
//! wan_window = ["19:00-07:00"]             # fetch from the parent only then (local time)
//! site = "berlin"                          # siblings at one site share chunks
//! max_local_download = "400Mbit"           # from siblings (the LAN), all together
//! max_local_upload = "400Mbit"             # to siblings, all together
//! ```
//!
//! `arbor init --join` writes the `site` a join token presets into a new file.
//!
//! The file is optional. An unknown key, a value of the wrong type or an unparsable
//! address or duration is refused with its line and column, and the node does not start.

use crate::bandwidth::{Rate, Window};
use crate::net::{BandwidthOptions, InstallerOptions, Withdrawn};
use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's name in the node directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// What the file may say. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub listen: Option<Vec<String>>,
    pub admin: Option<String>,
    pub install_dir: Option<PathBuf>,
    pub hooks: Option<bool>,
    pub hook_timeout: Option<String>,
    pub withdrawn: Option<Withdrawn>,
    pub max_download: Option<String>,
    pub max_upload: Option<String>,
    pub max_local_download: Option<String>,
    pub max_local_upload: Option<String>,
    pub wan_window: Option<Vec<String>>,
    pub site: Option<String>,
}

/// The settings of `arbor run` as given on its command line.
#[derive(Debug, Default)]
pub struct RunFlags {
    pub listen: Vec<Multiaddr>,
    pub admin: Option<SocketAddr>,
    pub install_dir: Option<PathBuf>,
    pub hooks: Option<bool>,
    pub hook_timeout: Option<Duration>,
    pub withdrawn: Option<Withdrawn>,
    pub max_download: Option<Rate>,
    pub max_upload: Option<Rate>,
    pub max_local_download: Option<Rate>,
    pub max_local_upload: Option<Rate>,
    pub site: Option<String>,
    pub wan_window: Vec<Window>,
}

/// What `arbor run` runs with: the flags over the file over the defaults.
#[derive(Debug)]
pub struct RunSettings {
    pub listen: Vec<Multiaddr>,
    pub admin: SocketAddr,
    pub installer: Option<InstallerOptions>,
    pub bandwidth: BandwidthOptions,
    pub site: Option<String>,
}

/// Reads `DIR/config.toml`; an absent file is an empty one.
pub fn load(dir: &Path) -> Result<RunConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RunConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        Ok(m) if m.len() > MAX_CONFIG_BYTES => {
            bail!("{} is over {MAX_CONFIG_BYTES} bytes", path.display())
        }
        Ok(_) => std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    };
    parse(&text).with_context(|| format!("{} is refused", path.display()))
}

/// Parses a configuration file's text.
pub fn parse(text: &str) -> Result<RunConfig> {
    // toml's message names the line and column and shows the offending text.
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}

/// Merges flags over the file; checks what the file says as strictly as the flags.
pub fn settings(file: RunConfig, flags: RunFlags) -> Result<RunSettings> {
    // The file is checked whole, also where a flag overrides it.
    let file_listen: Vec<Multiaddr> = file
        .listen
        .unwrap_or_default()
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .with_context(|| format!("listen: {a:?} is not a multiaddr"))
        })
        .collect::<Result<_>>()?;
    let file_admin: Option<SocketAddr> = file
        .admin
        .map(|a| {
            a.parse()
                .with_context(|| format!("admin: {a:?} is not an address such as 127.0.0.1:4041"))
        })
        .transpose()?;
    let file_hook_timeout = file
        .hook_timeout
        .map(|t| parse_hook_timeout(&t).context("hook_timeout"))
        .transpose()?;
    let rate = |key: &str, value: Option<String>| -> Result<Option<Rate>> {
        value
            .map(|v| v.parse::<Rate>().with_context(|| key.to_string()))
            .transpose()
    };
    let file_max_download = rate("max_download", file.max_download)?;
    let file_max_upload = rate("max_upload", file.max_upload)?;
    let file_local_download = rate("max_local_download", file.max_local_download)?;
    let file_local_upload = rate("max_local_upload", file.max_local_upload)?;
    let file_site = file
        .site
        .map(|s| parse_site(&s).map_err(|e| anyhow::anyhow!("site: {e}")))
        .transpose()?;
    let file_windows = file
        .wan_window
        .unwrap_or_default()
        .iter()
        .map(|w| w.parse::<Window>().context("wan_window"))
        .collect::<Result<Vec<_>>>()?;
    let bandwidth = BandwidthOptions {
        max_download: flags.max_download.or(file_max_download),
        max_upload: flags.max_upload.or(file_max_upload),
        max_local_download: flags.max_local_download.or(file_local_download),
        max_local_upload: flags.max_local_upload.or(file_local_upload),
        wan_windows: if flags.wan_window.is_empty() {
            file_windows
        } else {
            flags.wan_window
        },
    };
    let listen = if flags.listen.is_empty() {
        file_listen
    } else {
        flags.listen
    };
    if listen.is_empty() {
        bail!(
            "nowhere to listen: give --listen MULTIADDR (e.g. /ip4/0.0.0.0/tcp/4040) or set listen in DIR/{CONFIG_FILE}"
        );
    }
    let admin = match flags.admin.or(file_admin) {
        Some(a) => a,
        None => crate::admin::DEFAULT_ADDR
            .parse()
            .context("the default admin address")?,
    };
    let hook_timeout = flags.hook_timeout.or(file_hook_timeout);
    let install_dir = flags.install_dir.or(file.install_dir);
    let hooks = flags.hooks.or(file.hooks);
    let withdrawn = flags.withdrawn.or(file.withdrawn);
    let installer = match install_dir {
        Some(dir) => {
            let mut c = InstallerOptions::new(dir);
            c.hooks = hooks.unwrap_or(false);
            c.hook_timeout = hook_timeout.unwrap_or(c.hook_timeout);
            c.withdrawn = withdrawn.unwrap_or_default();
            // Test-only fault, for the crash-safety test of installs.
            c.abort_at_switch = std::env::var_os("ARBOR_TEST_ABORT_AT_SWITCH").is_some();
            Some(c)
        }
        None if hooks.is_some() || hook_timeout.is_some() || withdrawn.is_some() => bail!(
            "hooks, hook_timeout and withdrawn apply to a client: give --install-dir DIR (or install_dir in DIR/{CONFIG_FILE}) too"
        ),
        None => None,
    };
    Ok(RunSettings {
        listen,
        admin,
        installer,
        bandwidth,
        site: flags.site.or(file_site),
    })
}

/// A site name: a safe name (letters, digits, `. _ - + @`; 1 to 64 bytes).
pub fn parse_site(s: &str) -> Result<String, String> {
    crate::content::names::check_name("site", s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// Writes the site a join token presets into a new node's `config.toml`.
pub fn preset_site(dir: &Path, site: &str) -> Result<()> {
    parse_site(site).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = dir.join(CONFIG_FILE);
    let text = format!(
        "# Preset by the join token: the children of this node's parent at the same\n# site share chunks over their LAN (arbor run --site overrides it).\nsite = \"{site}\"\n"
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A hook timeout: a duration of 1 second to 1 day.
pub fn parse_hook_timeout(s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{s:?} is not a duration (examples: 30s, 5m)"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
        bail!("a hook timeout must be between 1s and 1d, not {s:?}");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> RunFlags {
        RunFlags {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
            ..RunFlags::default()
        }
    }

    #[test]
    fn a_full_file_is_read_and_flags_win() {
        let file = parse(
            r#"
listen = ["/ip4/127.0.0.1/tcp/4040"]
admin = "127.0.0.1:5000"
install_dir = "/srv/modules"
hooks = true
hook_timeout = "90s"
withdrawn = "remove"
"#,
        )
        .expect("valid file");
        let s = settings(file, RunFlags::default()).expect("valid settings");
        assert_eq!(s.listen[0].to_string(), "/ip4/127.0.0.1/tcp/4040");
        assert_eq!(s.admin.port(), 5000);
        let c = s.installer.expect("a client");
        assert_eq!(c.install_dir, PathBuf::from("/srv/modules"));
        assert!(c.hooks);
        assert_eq!(c.hook_timeout, Duration::from_secs(90));
        assert_eq!(c.withdrawn, Withdrawn::Remove);
        assert!(s.bandwidth.max_download.is_none() && s.bandwidth.wan_windows.is_empty());

        let file = parse(
            "max_download = \"40Mbit\"\nmax_upload = \"5MiB/s\"\nwan_window = [\"19:00-07:00\", \"12:00-13:00\"]\n",
        )
        .expect("valid");
        let s = settings(file, flags()).expect("valid settings");
        assert_eq!(s.bandwidth.max_download, Some(Rate(5_000_000)));
        assert_eq!(s.bandwidth.max_upload, Some(Rate(5 << 20)));
        assert_eq!(s.bandwidth.wan_windows.len(), 2);
        assert!(s.bandwidth.wan_open(12 * 60 + 30) && !s.bandwidth.wan_open(9 * 60));

        let file = parse("install_dir = \"/srv/modules\"\nhooks = true\n").expect("valid");
        let s = settings(
            file,
            RunFlags {
                install_dir: Some("/elsewhere".into()),
                hooks: Some(false),
                ..flags()
            },
        )
        .expect("valid settings");
        let c = s.installer.expect("a client");
        assert_eq!(c.install_dir, PathBuf::from("/elsewhere"));
        assert!(!c.hooks, "the flag wins over the file");
        assert_eq!(c.withdrawn, Withdrawn::Keep, "the default is keep");
        assert_eq!(c.hook_timeout, Duration::from_secs(300));
    }

    #[test]
    fn garbage_files_are_refused_with_their_line() {
        for (text, expect) in [
            ("install_dir = \"/x\"\nhookz = true\n", "line 2"),
            ("hooks = \"yes\"\n", "line 1"),
            ("withdrawn = \"delete\"\n", "line 1"),
            ("listen = [\n", "unclosed array"),
            ("\u{0}\u{1}binary", "line 1"),
            ("site = 7\n", "line 1"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
        for (text, expect) in [
            ("listen = [\"not an address\"]\n", "not a multiaddr"),
            ("admin = \"localhost\"\n", "not an address"),
            (
                "install_dir = \"/x\"\nhook_timeout = \"soon\"\n",
                "not a duration",
            ),
            (
                "install_dir = \"/x\"\nhook_timeout = \"0s\"\n",
                "between 1s and 1d",
            ),
            ("hooks = true\n", "give --install-dir"),
            ("max_download = \"fast\"\n", "max_download"),
            ("max_upload = \"0Mbit\"\n", "zero"),
            ("wan_window = [\"19:00\"]\n", "wan_window"),
            ("wan_window = [\"25:00-07:00\"]\n", "hours run"),
            ("site = \"berlin office\"\n", "site"),
            ("site = \"a/b\"\n", "path separator"),
            ("max_local_download = \"1 bucket\"\n", "max_local_download"),
            ("max_local_upload = \"0B/s\"\n", "zero"),
        ] {
            let file = parse(text).expect("well-formed");
            let err = format!("{:#}", settings(file, flags()).expect_err(text));
            assert!(err.contains(expect), "{text:?}: {err}");
        }
        let err = settings(RunConfig::default(), RunFlags::default()).expect_err("no listen");
        assert!(err.to_string().contains("nowhere to listen"), "{err}");
    }
}
