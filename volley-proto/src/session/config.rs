//! A session's timers and key policy: keepalive, idle timeout, liveness probes, key updates
//! and the cipher suites it offers or takes.

use std::time::Duration;

use crate::crypto::CipherPolicy;

/// Default [`SessionConfig::rekey_after_packets`]: 2^23, the confidentiality limit RFC 9001
/// §6.6 sets for AES-GCM packets under one key (ChaCha20-Poly1305's is far higher; one number
/// serves both suites).
pub const DEFAULT_REKEY_AFTER_PACKETS: u64 = 1 << 23;
/// Default [`SessionConfig::rekey_after_time`]: WireGuard's REKEY_AFTER_TIME.
pub const DEFAULT_REKEY_AFTER_TIME: Duration = Duration::from_secs(120);

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
    /// Update the sending key after this many packets under it (§5.5). Default 2^23.
    pub rekey_after_packets: u64,
    /// Update the sending key when it is this old and a packet is sent. Default 120 s. Updates
    /// never come closer than [`super::KEY_UPDATE_MIN_INTERVAL`] (1 s), whatever these say.
    pub rekey_after_time: Duration,
    /// Which DATA cipher suites this side offers (client) or takes (server). Default
    /// [`CipherPolicy::Auto`]: AES-256-GCM where the CPU has AES instructions.
    pub cipher: CipherPolicy,
    /// The largest DATA packet this side sends, UDP payload bytes: the path MTU it assumes
    /// (§5.7). A datagram that does not fit one packet goes in FRAGMENT frames. Between
    /// [`super::MIN_PACKET`] (1,232: IPv6's minimum MTU less headers) and
    /// [`crate::MAX_DATAGRAM_LEN`] (1,452, the default: an Ethernet MTU of 1,500 less IPv6 and
    /// UDP headers, with room for a tunnel's 20 bytes).
    pub max_packet: usize,
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
            rekey_after_packets: DEFAULT_REKEY_AFTER_PACKETS,
            rekey_after_time: DEFAULT_REKEY_AFTER_TIME,
            cipher: CipherPolicy::Auto,
            max_packet: crate::MAX_DATAGRAM_LEN,
        }
    }
}
