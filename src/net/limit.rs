//! The daemon's bandwidth limits: shared token buckets that transfer tasks wait on, and
//! the WAN windows outside which nothing is fetched from the parent.

use crate::bandwidth::{Bucket, Rate, Window};
use crate::content::manifest::MAX_CHUNK_LEN;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A node's limits, as its operator set them (`arbor run --max-download ...`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BandwidthOptions {
    /// Bytes per second fetched from the parent (the WAN), all transfers together.
    pub max_download: Option<Rate>,
    /// Bytes per second served to children, all of them together.
    pub max_upload: Option<Rate>,
    /// Bytes per second fetched from siblings at this node's site (the LAN).
    pub max_local_download: Option<Rate>,
    /// Bytes per second served to siblings at this node's site (the LAN).
    pub max_local_upload: Option<Rate>,
    /// Daily windows, local time, in which the parent may be fetched from; none: always.
    pub wan_windows: Vec<Window>,
}

impl BandwidthOptions {
    /// Whether fetching from the parent is allowed at `minute` past local midnight.
    pub fn wan_open(&self, minute: u16) -> bool {
        self.wan_windows.is_empty() || self.wan_windows.iter().any(|w| w.is_open(minute))
    }
}

/// Minutes past local midnight now.
pub fn local_minute() -> u16 {
    let now = jiff::Zoned::now();
    (now.hour() as u16) * 60 + now.minute() as u16
}

/// A token bucket shared by the tasks of one direction.
pub struct Limiter {
    bucket: Mutex<Bucket>,
    origin: tokio::time::Instant,
}

impl Limiter {
    pub fn new(rate: Rate) -> Arc<Limiter> {
        Arc::new(Limiter {
            bucket: Mutex::new(Bucket::new(rate, u64::from(MAX_CHUNK_LEN), 0)),
            origin: tokio::time::Instant::now(),
        })
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: u64) {
        loop {
            let now = self.origin.elapsed().as_millis() as u64;
            let wait = match self.bucket.lock() {
                Ok(mut b) => b.take(n, now),
                // A task panicked holding it: limiting stops rather than the transfers.
                Err(_) => None,
            };
            match wait {
                None => return,
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms.max(1))).await,
            }
        }
    }
}

/// Takes `n` bytes from `limit` if there is one.
pub async fn pace(limit: &Option<Arc<Limiter>>, n: u64) {
    if let Some(l) = limit {
        l.take(n).await;
    }
}
