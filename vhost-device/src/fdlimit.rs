//! The daemon's file-descriptor budget: at start, makes sure
//! `RLIMIT_NOFILE` fits `--max-channels` host sockets plus the pending
//! handshakes and the daemon's own descriptors, raising the soft limit
//! towards the hard one if needed, or refusing to start with one line.
//!
//! Owns only the start-up check; what happens when descriptors still run
//! out at run time (the limit lowered from outside, or shared with other
//! processes through `ENFILE`) is `device/listener.rs`'s spare-descriptor logic.

use std::io;

use crate::device::MAX_HANDSHAKES;

/// Descriptors the daemon needs besides channel sockets and handshakes:
/// standard streams, the vhost-user, host and control sockets and their
/// clients, epoll and timer fds, kick/call/error eventfds of three queues,
/// up to eight guest memory regions, the spare descriptor, the kept socket
/// ends of up to `MAX_FEEDS` (16) `kt.services` channels, with margin.
pub const OWN_FDS: u64 = 64;
/// Descriptors each queue pair beyond the first adds: its engine's epoll,
/// timer, wake-up and policy eventfds, the kick/call/error eventfds of its
/// two queues, its worker thread's epoll and eventfds (13), and the kept
/// ends of its own up to `MAX_FEEDS` (16) `kt.services` channels.
pub const PAIR_FDS: u64 = 32;

/// The limit cannot fit the configuration.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    /// The hard limit is below what `--max-channels` needs.
    #[error(
        "--max-channels {max_channels} needs {needed} open files, but the hard \
         RLIMIT_NOFILE is {hard}; raise it (ulimit -Hn, systemd LimitNOFILE=) or lower \
         --max-channels"
    )]
    TooLow {
        /// The configured channel limit.
        max_channels: u32,
        /// Descriptors needed for it.
        needed: u64,
        /// The hard limit.
        hard: u64,
    },
    /// getrlimit/setrlimit failed.
    #[error("RLIMIT_NOFILE: {0}")]
    Rlimit(#[source] io::Error),
}

/// Descriptors needed for `max_channels` channels (one queue pair).
pub fn needed(max_channels: u32) -> u64 {
    needed_with_pairs(max_channels, 1)
}

/// Descriptors needed for `max_channels` channels over `pairs` queue pairs.
pub fn needed_with_pairs(max_channels: u32, pairs: u16) -> u64 {
    u64::from(max_channels)
        + MAX_HANDSHAKES as u64
        + OWN_FDS
        + u64::from(pairs.saturating_sub(1)) * PAIR_FDS
}

/// Checks `RLIMIT_NOFILE` against [`needed`]`(max_channels)`, raising the
/// soft limit to it (never above the hard limit) when it is lower. Returns
/// the soft limit in force afterwards.
pub fn ensure(max_channels: u32) -> Result<u64, FdLimitError> {
    ensure_all([(max_channels, 1)])
}

/// [`ensure`] for a daemon serving several VMs, one `(max_channels,
/// queue pairs)` each: every VM needs its own channels, handshakes and
/// descriptors ([`needed_with_pairs`] summed).
pub fn ensure_all(vms: impl IntoIterator<Item = (u32, u16)>) -> Result<u64, FdLimitError> {
    let (max_channels, need) = vms.into_iter().fold((0u32, 0u64), |(m, n), (c, p)| {
        (
            m.saturating_add(c),
            n.saturating_add(needed_with_pairs(c, p)),
        )
    });
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(FdLimitError::Rlimit(io::Error::last_os_error()));
    }
    let infinite = |v: libc::rlim_t| v == libc::RLIM_INFINITY;
    if infinite(lim.rlim_cur) || lim.rlim_cur >= need {
        return Ok(lim.rlim_cur);
    }
    if !infinite(lim.rlim_max) && lim.rlim_max < need {
        return Err(FdLimitError::TooLow {
            max_channels,
            needed: need,
            hard: lim.rlim_max,
        });
    }
    let old = lim.rlim_cur;
    lim.rlim_cur = need;
    // SAFETY: `lim` is a valid rlimit; the soft value is at most the hard.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(FdLimitError::Rlimit(io::Error::last_os_error()));
    }
    log::info!("raised the open-file limit (RLIMIT_NOFILE) from {old} to {need}");
    Ok(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_and_message() {
        assert_eq!(needed(1024), 1024 + 64 + 64);
        let e = FdLimitError::TooLow {
            max_channels: 1024,
            needed: 1152,
            hard: 256,
        };
        let t = e.to_string();
        assert!(t.contains("--max-channels 1024 needs 1152") && t.contains("is 256"));
        assert_eq!(t.lines().count(), 1);
        // The process's own limit already fits a tiny configuration.
        assert!(ensure(1).unwrap() >= needed(1));
        assert!(ensure_all([(1, 1), (1, 1)]).unwrap() >= 2 * needed(1));
        assert_eq!(needed_with_pairs(1024, 1), needed(1024));
        assert_eq!(needed_with_pairs(1024, 16), needed(1024) + 15 * PAIR_FDS);
    }
}
