//! The daemon's file descriptors: at start it raises its open-files soft limit to the
//! hard limit, then gives the admin API a share of that limit small enough that the
//! tree (one socket per libp2p connection), the store (redb and its pack files) and the
//! installer (files it writes and hashes) always keep the rest.
//!
//! The admin API gets one descriptor in [`ADMIN_SHARE`], between
//! [`MIN_ADMIN_CONNECTIONS`] and [`MAX_ADMIN_CONNECTIONS`] connections: at the common
//! 1,024 limit that is 128 connections, and 896 descriptors stay with the node. The
//! admin server (`crate::admin`) enforces the figure, whoever connects. Inbound tree
//! connections get [`TREE_SHARE`] eighths of the limit (640 at 1,024), which libp2p's
//! connection limits enforce, so that what is left always serves the store and the
//! installer.

/// The admin API's share of the open-files limit: one descriptor in eight.
pub const ADMIN_SHARE: u64 = 8;
/// Most admin connections open at once, whatever the limit. An operator's commands,
/// a few browser tabs and long-polling `arbor wait`s need a handful.
pub const MAX_ADMIN_CONNECTIONS: usize = 128;
/// Fewest admin connections, however low the limit.
pub const MIN_ADMIN_CONNECTIONS: usize = 4;
/// Inbound tree connections' share of the open-files limit, in eighths.
pub const TREE_SHARE: u64 = 5;
/// Below this limit a node with many children or a large store may run out; the
/// daemon says so at start.
const LOW_LIMIT: u64 = 1024;
/// Highest soft limit asked for when the hard limit is unlimited (Linux refuses more
/// than `fs.nr_open`, 1,048,576 by default).
const MOST_ASKED: u64 = 1 << 20;

/// How the daemon's descriptors are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The open-files soft limit, after raising it.
    pub open_files: u64,
    /// Most connections the admin API holds open at once.
    pub admin_connections: usize,
}

impl Budget {
    /// Most inbound tree connections open at once.
    pub fn tree_connections(&self) -> u32 {
        u32::try_from(self.open_files / 8 * TREE_SHARE).unwrap_or(u32::MAX)
    }
}

/// Raises the process's open-files soft limit as far as the hard limit allows, and
/// shares the result. Safe to call more than once (in-process test daemons do).
pub fn raise_limit() -> Budget {
    let open_files = match raise() {
        Ok((before, after)) => {
            if after > before {
                tracing::debug!("open-files limit raised from {before} to {after}");
            }
            after
        }
        Err(e) => {
            tracing::warn!("cannot read the open-files limit: {e}; assuming {LOW_LIMIT}");
            LOW_LIMIT
        }
    };
    if open_files < LOW_LIMIT {
        tracing::warn!(
            "the open-files limit is {open_files} and cannot be raised further: a node \
             with many children may run out; raise the hard limit (ulimit -Hn, or \
             LimitNOFILE= in a systemd unit)"
        );
    }
    let budget = Budget {
        open_files,
        admin_connections: admin_connections(open_files),
    };
    tracing::debug!(
        "open files: at most {}; the admin API holds at most {} connections",
        budget.open_files,
        budget.admin_connections
    );
    budget
}

/// The admin API's connection cap for an open-files limit of `open_files`.
pub fn admin_connections(open_files: u64) -> usize {
    usize::try_from(open_files / ADMIN_SHARE)
        .unwrap_or(usize::MAX)
        .clamp(MIN_ADMIN_CONNECTIONS, MAX_ADMIN_CONNECTIONS)
}

/// Sets the soft limit to the hard one (or as close as the system allows); answers
/// the soft limit before and after.
// `rlim_t` is u64 here but narrower on some targets.
#[allow(clippy::unnecessary_cast)]
fn raise() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur as u64;
    let hard = if lim.rlim_max == libc::RLIM_INFINITY {
        MOST_ASKED
    } else {
        lim.rlim_max as u64
    };
    // Some systems cap the soft limit below the hard one (macOS at OPEN_MAX): halve
    // the ask until it is granted.
    let mut ask = hard;
    while ask > before {
        let want = libc::rlimit {
            rlim_cur: ask as libc::rlim_t,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return Ok((before, ask));
        }
        ask /= 2;
    }
    Ok((before, before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_api_never_takes_more_than_its_share() {
        assert_eq!(admin_connections(1024), 128);
        assert_eq!(admin_connections(256), 32);
        assert_eq!(admin_connections(20_000), MAX_ADMIN_CONNECTIONS);
        assert_eq!(admin_connections(u64::MAX), MAX_ADMIN_CONNECTIONS);
        assert_eq!(admin_connections(16), MIN_ADMIN_CONNECTIONS);
        for limit in [64u64, 100, 512, 1000, 1024, 4096, 1 << 20] {
            assert!(admin_connections(limit) as u64 * ADMIN_SHARE <= limit);
        }
    }

    #[test]
    fn the_tree_and_the_admin_api_leave_the_store_a_quarter_at_least() {
        for open_files in [256u64, 1024, 4096, 1 << 20] {
            let b = Budget {
                open_files,
                admin_connections: admin_connections(open_files),
            };
            let taken = u64::from(b.tree_connections()) + b.admin_connections as u64;
            assert!(taken * 4 <= open_files * 3, "{open_files}: {taken}");
        }
        let at_1024 = Budget {
            open_files: 1024,
            admin_connections: 128,
        };
        assert_eq!(at_1024.tree_connections(), 640);
    }

    #[test]
    fn raising_is_idempotent_and_never_lowers_the_limit() {
        let first = raise_limit();
        let second = raise_limit();
        assert_eq!(first, second);
        assert!(first.open_files >= 64);
    }
}
