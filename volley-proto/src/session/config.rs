//! A session's timers: keepalive, idle timeout and liveness probes.

use std::time::Duration;

/// Keepalive, idle and liveness timers.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Send a PING when nothing has arrived for this long (and again each interval). Default 1 s.
    pub keepalive_interval: Duration,
    /// Declare the peer gone when nothing authentic arrived for this long. Default 5 s.
    pub idle_timeout: Duration,
    /// Liveness: when a datagram was sent and nothing authentic has arrived for one probe
    /// timeout (PTO), send a PING, and again every PTO; after this many unanswered probes the
    /// peer is gone ([`super::CloseReason::Unresponsive`]). 0 turns liveness checks off. Default 12.
    pub liveness_probes: u32,
    /// The PTO's floor. PTO = smoothed RTT + 4 × its variation (RFC 6298), between this and
    /// [`SessionConfig::max_probe_timeout`]. Default 50 ms.
    pub min_probe_timeout: Duration,
    /// The PTO's ceiling. Default 1 s.
    pub max_probe_timeout: Duration,
    /// The PTO before any RTT is known (a client's session starts with its handshake time as
    /// the first sample; a server's with none). Default 200 ms.
    pub initial_probe_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            liveness_probes: 12,
            min_probe_timeout: Duration::from_millis(50),
            max_probe_timeout: Duration::from_secs(1),
            initial_probe_timeout: Duration::from_millis(200),
        }
    }
}
