//! The client side: a [`race::Race`] over the pool, then the handshake with the winner, then the
//! session, with failover — all in one [`Connection`] state machine.

mod connection;
pub mod race;

pub use connection::{ClientEvent, ConnectError, Connection};
pub use race::RaceTimers;

use std::time::Duration;

use crate::crypto::PublicKey;
use crate::session::SessionConfig;

/// How the client picks among offers (C4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SelectionPolicy {
    /// The earliest valid offer wins (the claim's policy and the default).
    #[default]
    Earliest,
}

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The service to ask for. Default `echo`.
    pub service: Vec<u8>,
    /// Pinned server static keys (one pool key, or one per server). Offers naming any other key
    /// are ignored (R4).
    pub server_keys: Vec<PublicKey>,
    /// Selection policy. Default [`SelectionPolicy::Earliest`].
    pub policy: SelectionPolicy,
    /// Probe retransmission and race deadline.
    pub race: RaceTimers,
    /// INIT retransmission: first after this long, doubling up to `race.max_rto`. Default 250 ms.
    pub init_rto: Duration,
    /// The handshake fails when no ACCEPT arrived by then. Default 3 s.
    pub handshake_timeout: Duration,
    /// PROBEs are zero-padded to this size (at least [`crate::PROBE_MIN_LEN`]).
    pub probe_size: usize,
    /// Session keepalive and idle timers.
    pub session: SessionConfig,
    /// How many times a connection re-races the pool after losing its server (R5). Default 8;
    /// 0 turns failover off.
    pub max_failovers: u32,
}

impl ClientConfig {
    /// Defaults, pinning `server_keys`.
    pub fn new(server_keys: Vec<PublicKey>) -> Self {
        Self {
            service: b"echo".to_vec(),
            server_keys,
            policy: SelectionPolicy::Earliest,
            race: RaceTimers::default(),
            init_rto: Duration::from_millis(250),
            handshake_timeout: Duration::from_secs(3),
            probe_size: crate::PROBE_MIN_LEN,
            session: SessionConfig::default(),
            max_failovers: 8,
        }
    }
}

/// Every outcome a client counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Races started (the first one and every failover).
    pub races: u64,
    /// PROBE datagrams sent, retransmissions included.
    pub probes_sent: u64,
    /// Offers that won a race.
    pub offers_won: u64,
    /// Offers with a retired tag: void (C5).
    pub offers_late: u64,
    /// Offers with an unknown tag (C2).
    pub offers_unknown_tag: u64,
    /// Offers from an address not probed (C2).
    pub offers_unprobed_source: u64,
    /// Offers naming an unpinned server key (R4).
    pub offers_unknown_key: u64,
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// Datagrams of a kind or state the client does not expect (stray ACCEPT, DATA before the
    /// session, …) or from the wrong address.
    pub unexpected: u64,
    /// INIT datagrams sent, retransmissions included.
    pub inits_sent: u64,
    /// COOKIE_CHANGEs acted on (R2).
    pub cookie_changes: u64,
    /// COOKIE_CHANGEs ignored (not from the selected server, wrong tag, or a second one).
    pub cookie_changes_ignored: u64,
    /// REDIRECTs from the selected server acted on: it refused, the pool was raced again.
    pub redirects: u64,
    /// ACCEPTs whose Noise message failed.
    pub accepts_invalid: u64,
    /// Sessions established.
    pub sessions_established: u64,
    /// Failovers: sessions lost and replaced by a new race.
    pub failovers: u64,
    /// DATA packets dropped by the session (auth, replay, bad frame).
    pub data_dropped: u64,
}
