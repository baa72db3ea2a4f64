//! How many sessions a forwarding server can hold with the open files it may have: each
//! forwarded session may hold sockets of its own, and a server that runs out of file
//! descriptors fails in every part at once (its listeners, its metrics endpoint, its backend
//! connections). [`ForwardLimits`] derives a session limit from the process's open-file limit
//! (`RLIMIT_NOFILE`), so that the server refuses sessions (PROTOCOL.md §7.3 step 8) before it
//! runs out.
//!
//! The formula, with `N` the open-file limit and `R` = [`RESERVED_FDS`] = 64 kept for the
//! process itself (standard streams, the UDP socket, the TCP stream listener, the metrics
//! listener and its at most 16 connections at once, the runtime's own descriptors, and a
//! margin), `S = N − R` spare:
//!
//! - UDP forwarding (`serve --forward udp://…`): a session holds one socket (to the backend):
//!   `max_sessions = S`.
//! - TCP forwarding (`serve --forward tcp://…`): connections waiting for their HELLO are held to
//!   `P = min(1024, max(1, S / 8))`, and a session holds two (its stream and its backend
//!   connection): `max_sessions = (S − P) / 2`.
//!
//! ```
//! use volley::proxy::{ForwardLimits, Forwarding};
//!
//! // The usual soft limit of a shell: 1,024 open files.
//! let udp = ForwardLimits::for_open_files(Forwarding::Udp, 1_024).unwrap();
//! assert_eq!(udp.max_sessions, 960);
//! let tcp = ForwardLimits::for_open_files(Forwarding::Tcp, 1_024).unwrap();
//! assert_eq!((tcp.max_pending_streams, tcp.max_sessions), (120, 420));
//! // Too few to forward anything.
//! assert_eq!(ForwardLimits::for_open_files(Forwarding::Tcp, 64), None);
//! ```

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::MAX_PENDING_STREAMS;

/// Open files a forwarding server keeps for itself, out of its limit (see the module docs).
pub const RESERVED_FDS: u64 = 64;

/// What a forwarded session holds open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// A session's datagrams go to the backend from a socket of its own.
    Udp,
    /// A session's stream, and a connection of its own to the backend.
    Tcp,
}

/// Limits that keep a forwarding server within its open files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardLimits {
    /// The open-file limit they were derived from.
    pub open_files: u64,
    /// Most sessions open at once (the server's `max_sessions`).
    pub max_sessions: u32,
    /// TCP: most connections waiting for their HELLO ([`super::TcpForward::max_pending`]);
    /// 0 for UDP.
    pub max_pending_streams: usize,
}

impl ForwardLimits {
    /// The limits for a process that may have `open_files` open files; None when that leaves
    /// no room for one session.
    pub fn for_open_files(kind: Forwarding, open_files: u64) -> Option<Self> {
        let spare = open_files.checked_sub(RESERVED_FDS)?;
        let (max_sessions, max_pending_streams) = match kind {
            Forwarding::Udp => (spare, 0),
            Forwarding::Tcp => {
                let pending = (spare / 8).clamp(1, MAX_PENDING_STREAMS as u64);
                (spare.saturating_sub(pending) / 2, pending as usize)
            }
        };
        (max_sessions > 0).then(|| Self {
            open_files,
            max_sessions: max_sessions.min(u64::from(u32::MAX)) as u32,
            max_pending_streams,
        })
    }

    /// The limits for this process's open-file limit now (its soft `RLIMIT_NOFILE`); None
    /// when that leaves no room for one session.
    pub fn for_this_process(kind: Forwarding) -> std::io::Result<Option<Self>> {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
        Ok(Self::for_open_files(kind, soft))
    }
}

/// Raises this process's open-file limit (soft `RLIMIT_NOFILE`) to its hard limit (at most
/// 2^20 when the hard limit is unlimited), as a server that holds a socket per session wants;
/// returns the limit in force afterwards. A limit that cannot be raised stays as it was.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    let target = hard.min(1 << 20);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        return Ok(target);
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a5_forward_limits_leave_the_reserve_and_count_each_sessions_sockets() {
        // Every session's descriptors, the pending streams and the reserve fit in the limit,
        // and one more session would not.
        for n in [100u64, 128, 1_024, 4_096, 65_536, 1 << 20] {
            let udp = ForwardLimits::for_open_files(Forwarding::Udp, n).unwrap();
            assert_eq!(u64::from(udp.max_sessions) + RESERVED_FDS, n);
            let tcp = ForwardLimits::for_open_files(Forwarding::Tcp, n).unwrap();
            let used = 2 * u64::from(tcp.max_sessions) + tcp.max_pending_streams as u64;
            assert!(used + RESERVED_FDS <= n, "{n}: {tcp:?}");
            assert!(used + 2 + RESERVED_FDS > n, "{n}: room left in {tcp:?}");
            assert!((1..=MAX_PENDING_STREAMS).contains(&tcp.max_pending_streams));
        }
        assert_eq!(
            ForwardLimits::for_open_files(Forwarding::Udp, 66).map(|l| l.max_sessions),
            Some(2)
        );
        assert_eq!(ForwardLimits::for_open_files(Forwarding::Udp, 64), None);
        assert_eq!(ForwardLimits::for_open_files(Forwarding::Tcp, 66), None);
        assert_eq!(ForwardLimits::for_open_files(Forwarding::Udp, 10), None);
    }

    #[test]
    fn a5_the_process_limit_is_read_and_raised_no_higher_than_its_hard_limit() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let raised = raise_open_files_limit().unwrap();
        assert!(
            raised >= soft && raised <= hard,
            "{soft} → {raised} (hard {hard})"
        );
        let now = ForwardLimits::for_this_process(Forwarding::Udp).unwrap();
        assert_eq!(now.map(|l| l.open_files), Some(raised));
    }
}
