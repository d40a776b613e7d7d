//! The bandwidth limits and WAN windows of a scenario: the ones an operator sets on a
//! node (`arbor run --max-download 40Mbit --wan-window 19:00-07:00`), given to a tier's
//! nodes or to a site, and the time of day the run starts at, which places the
//! windows. Parsed by the daemon's own code ([`crate::bandwidth`]) into the daemon's
//! own [`BandwidthOptions`], so a scenario takes exactly what a node's configuration
//! takes.

use super::{Checker, ScenarioError, Text};
use crate::bandwidth::{Rate, Window};
use crate::net::BandwidthOptions;
use serde::Deserialize;

/// The `limits` table of a `[[tier]]` or a site, as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default)]
    pub max_download: Option<Text>,
    #[serde(default)]
    pub max_upload: Option<Text>,
    #[serde(default)]
    pub max_local_download: Option<Text>,
    #[serde(default)]
    pub max_local_upload: Option<Text>,
    #[serde(default)]
    pub wan_window: Option<Vec<Text>>,
}

impl Checker<'_> {
    /// A limit in the daemon's units (`40Mbit`, `5MiB/s`).
    fn limit(&self, v: &Option<Text>, what: &str) -> Result<Option<Rate>, ScenarioError> {
        let Some(v) = v else { return Ok(None) };
        match v.get_ref().parse::<Rate>() {
            Ok(r) => Ok(Some(r)),
            Err(e) => self.err(v.span(), format!("{what}: {e}")),
        }
    }

    pub(super) fn limits(&self, raw: &RawLimits) -> Result<BandwidthOptions, ScenarioError> {
        let mut wan_windows = Vec::new();
        for w in raw.wan_window.iter().flatten() {
            match w.get_ref().parse::<Window>() {
                Ok(w) => wan_windows.push(w),
                Err(e) => return self.err(w.span(), format!("wan_window: {e}")),
            }
        }
        Ok(BandwidthOptions {
            max_download: self.limit(&raw.max_download, "max_download")?,
            max_upload: self.limit(&raw.max_upload, "max_upload")?,
            max_local_download: self.limit(&raw.max_local_download, "max_local_download")?,
            max_local_upload: self.limit(&raw.max_local_upload, "max_local_upload")?,
            wan_windows,
        })
    }

    /// The limits of a site's shared link: its members' LAN limits are their tier's.
    pub(super) fn site_limits(
        &self,
        raw: &toml::Spanned<RawLimits>,
    ) -> Result<BandwidthOptions, ScenarioError> {
        let limits = raw.get_ref();
        if limits.max_upload.is_some()
            || limits.max_local_download.is_some()
            || limits.max_local_upload.is_some()
        {
            return self.err(
                raw.span(),
                "a site's limits are max_download (what its members fetch from their parent, \
                 all together) and wan_window; give the others on its tier",
            );
        }
        self.limits(limits)
    }

    /// The local time of day a run starts at, in minutes past midnight (`"18:30"`).
    pub(super) fn time_of_day(&self, v: &Option<Text>) -> Result<u16, ScenarioError> {
        let Some(v) = v else { return Ok(0) };
        let t = v.get_ref().trim();
        match format!("{t}-{t}").parse::<Window>() {
            Ok(w) => Ok(w.start),
            Err(_) => self.err(
                v.span(),
                format!("starts_at {t:?} is not a time of day such as \"18:30\""),
            ),
        }
    }
}
