//! The client side: a [`race::Race`] over the pool, then the handshake with the winner, then the
//! session, with failover — all in one [`Connection`] state machine per connect. What a client
//! learns across its connections is its [`PoolState`] ([`pool`]); which connection a datagram is
//! for, a runtime reads with [`RouteKey::of`] ([`route`]).

mod connection;
mod handshake;
pub mod pool;
pub mod race;
pub mod route;

pub use connection::{ClientEvent, ConnectError, Connection, EarlyData, EarlyDataError};
pub use pool::{EjectionConfig, PoolState, ServerOutcome};
pub use race::{PathInputs, RaceTimers, Winner};
pub use route::RouteKey;

use std::time::Duration;

use crate::crypto::PublicKey;
use crate::session::SessionConfig;

/// How the client picks among offers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum SelectionPolicy {
    /// The earliest valid offer wins (the claim's policy and the default).
    #[default]
    Earliest,
    /// Collect offers for `delta` after the first valid one (or until every probed server
    /// answered), then choose the shortest expected delay: the offer with the smallest
    /// `expected completion + answer time` from its hint. When some offer carries no estimate,
    /// Prequal's hot/cold rule decides instead: an offer is cold when its utilisation
    /// (`in_flight / capacity`) is below the `quantile` of the collected offers'; the cold offer
    /// with the lowest answer time wins, or, when none is cold, the lowest utilisation.
    Window {
        /// How long to collect after the first offer. Default 2 ms.
        delta: Duration,
        /// The hot/cold quantile, 0..=1. Default 0.75.
        quantile: f64,
    },
    /// Select the `k` earliest servers (collecting for at most `delta` after the first offer)
    /// for `k` sessions. [`Connection`] establishes the first; the rest are taken with
    /// [`Connection::take_extra_winners`] and opened with [`Connection::from_winner`].
    NBest {
        /// How many servers (at least 1). No default: the application knows how many it needs.
        k: usize,
        /// How long to wait for `k` offers after the first. Default 2 ms.
        delta: Duration,
    },
    /// Collect offers for `delta` after the first valid one (or until every probed server
    /// answered), then choose the server with the most **spare throughput**: free slots over
    /// service time, `max(0, C − n) / S` with `S = E × C / max(C, n + 1)` from each offer's hint
    /// (PROTOCOL.md §6.2.5). Ties — none has a free slot, or some hint has no capacity or no
    /// estimate — go to the shortest expected delay (as `Window`). For a session that will
    /// carry a stream of requests (a pool's member): where one more request finishes first is
    /// not where the stream fits best; an idle slow server has room a queued fast one has not.
    Spare {
        /// How long to collect after the first offer. Default 2 ms.
        delta: Duration,
    },
    /// Path-aware: the offer whose server is expected to finish the session's work first, counting
    /// the path this race measured once per round trip the session needs and the server's
    /// announced expected completion once per request (PROTOCOL.md §6.2.4). Decides as soon as
    /// no offer still to come could do better, or when every probed server answered.
    Path(PathPolicy),
}

/// The most requests per session a `Path` race weighs (configured or learned): beyond it the
/// path's share of a session's time no longer changes a choice, and scores stay finite.
pub const MAX_PATH_REQUESTS: f64 = 1_000_000.0;

/// The settings of [`SelectionPolicy::Path`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PathPolicy {
    /// Requests a session is expected to carry, 1 to [`MAX_PATH_REQUESTS`] (fractions allowed:
    /// a mean).
    /// Default 1. With `learn`, only the value before the client has seen a session end.
    pub requests: f64,
    /// Learn the requests per session from this client's own sessions (how many times a
    /// session sent after hearing from its server). Default on.
    pub learn: bool,
}

impl PathPolicy {
    /// Sessions of `requests` requests, learned from then on.
    pub const fn new(requests: f64) -> Self {
        Self {
            requests,
            learn: true,
        }
    }

    /// Sessions of exactly `requests` requests: nothing learned.
    pub const fn fixed(requests: f64) -> Self {
        Self {
            requests,
            learn: false,
        }
    }
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self::new(1.0)
    }
}

/// Default collection window of [`SelectionPolicy::Window`] and `NBest`: on a LAN every server
/// that will answer soon has answered within 2 ms, and paced servers a quarter full or less
/// (5 ms × ¼ at the default pace) still make it.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(2);
/// Default hot/cold quantile of [`SelectionPolicy::Window`].
pub const DEFAULT_HOT_QUANTILE: f64 = 0.75;

impl SelectionPolicy {
    /// `Window` with the defaults.
    pub const fn window() -> Self {
        Self::Window {
            delta: DEFAULT_WINDOW,
            quantile: DEFAULT_HOT_QUANTILE,
        }
    }

    /// `Path` with the defaults: one request per session to start with, learned from the
    /// client's sessions.
    pub const fn path() -> Self {
        Self::Path(PathPolicy::new(1.0))
    }

    /// `Spare` with the default window.
    pub const fn spare() -> Self {
        Self::Spare {
            delta: DEFAULT_WINDOW,
        }
    }

    /// `NBest` of `k` with the default window.
    pub const fn n_best(k: usize) -> Self {
        Self::NBest {
            k,
            delta: DEFAULT_WINDOW,
        }
    }
}

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The service to ask for. Default `echo`.
    pub service: Vec<u8>,
    /// Pinned server static keys (one pool key, or one per server). Offers naming any other key
    /// are ignored.
    pub server_keys: Vec<PublicKey>,
    /// This client's static key, which the handshake proves to the server (a server with an
    /// allow-list opens sessions only for listed keys, §4.7). `None` (default): a random key,
    /// drawn once per client ([`pool::PoolState::identity`]), which no allow-list lists.
    pub key: Option<crate::crypto::StaticKeypair>,
    /// Selection policy. Default [`SelectionPolicy::Earliest`].
    pub policy: SelectionPolicy,
    /// Probe retransmission and race deadline. `race.initial_rto` is the cold-start value:
    /// once offers have come back, the first retransmission follows the answer times measured
    /// ([`pool`]).
    pub race: RaceTimers,
    /// INIT retransmission before anything was timed: first after this long, doubling up to
    /// `race.max_rto`. Default 250 ms. Once handshakes are timed, the measured value applies;
    /// before that, the value from the measured answer times (the race's own, usually).
    pub init_rto: Duration,
    /// The shortest measured retransmission timeout, for probes and INITs. Default 20 ms: above
    /// the longest default paced delay (10 ms) plus a LAN round trip, so that a busy server's
    /// late answer is not mistaken for a loss.
    pub min_rto: Duration,
    /// After a refusal naming no new server, wait this long (doubling with each refusal in a
    /// row, up to `race.max_rto`, ±50 % jitter) before racing again. Default 10 ms.
    pub refusal_backoff: Duration,
    /// Outlier ejection: servers that keep failing are left out of races for a while.
    pub ejection: EjectionConfig,
    /// The handshake fails when no ACCEPT arrived by then. Default 3 s.
    pub handshake_timeout: Duration,
    /// PROBEs are zero-padded to this size (at least [`crate::PROBE_MIN_LEN`]).
    pub probe_size: usize,
    /// Session keepalive and idle timers.
    pub session: SessionConfig,
    /// How many times a connection re-races the pool after losing its server. Default 8;
    /// 0 turns failover off.
    pub max_failovers: u32,
    /// Probe a random subset of this many servers per race instead of all: fewer probes
    /// per connect, and clients racing at once see different subsets. `None` (default): all.
    pub fanout: Option<usize>,
    /// Most servers a connection adds to its pool from REDIRECTs, over its life. Default 8;
    /// 0 ignores redirect addresses.
    pub max_redirect_servers: usize,
    /// This client's zone, matched against `server_zones` to find near servers before any
    /// was measured (PROTOCOL.md §6.1). Default none: nearness is learned from answer times.
    pub zone: Option<String>,
    /// Zone labels of pool servers. Default empty.
    pub server_zones: std::collections::HashMap<std::net::SocketAddr, String>,
}

impl ClientConfig {
    /// Defaults, pinning `server_keys`.
    pub fn new(server_keys: Vec<PublicKey>) -> Self {
        Self {
            service: b"echo".to_vec(),
            server_keys,
            key: None,
            policy: SelectionPolicy::Earliest,
            race: RaceTimers::default(),
            init_rto: Duration::from_millis(250),
            min_rto: Duration::from_millis(20),
            refusal_backoff: Duration::from_millis(10),
            ejection: EjectionConfig::default(),
            handshake_timeout: Duration::from_secs(3),
            probe_size: crate::PROBE_MIN_LEN,
            session: SessionConfig::default(),
            max_failovers: 8,
            fanout: None,
            max_redirect_servers: 8,
            zone: None,
            server_zones: std::collections::HashMap::new(),
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
    /// Offers with a retired tag: void.
    pub offers_late: u64,
    /// Offers with an unknown tag.
    pub offers_unknown_tag: u64,
    /// Offers from an address not probed.
    pub offers_unprobed_source: u64,
    /// Offers naming an unpinned server key.
    pub offers_unknown_key: u64,
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// VERSIONS answers to this client's PROBEs naming only other protocol versions (§3.9).
    pub versions_received: u64,
    /// Datagrams of a kind or state the client does not expect (stray ACCEPT, DATA before the
    /// session, …) or from the wrong address.
    pub unexpected: u64,
    /// INIT datagrams sent, retransmissions included.
    pub inits_sent: u64,
    /// COOKIE_CHANGEs acted on: the server saw this client's address change (a NAT rebinding).
    pub cookie_changes: u64,
    /// COOKIE_CHANGEs ignored (not from the selected server, wrong tag, or a second one).
    pub cookie_changes_ignored: u64,
    /// REDIRECTs from the selected server acted on: it refused, the pool was raced again.
    pub redirects: u64,
    /// Addresses from REDIRECTs added to the pool.
    pub redirect_servers_added: u64,
    /// Addresses from REDIRECTs not added: already known, unusable, or over the cap.
    pub redirect_servers_ignored: u64,
    /// Valid offers collected by a `Window` or `NBest` race that did not win.
    pub offers_not_chosen: u64,
    /// Second offers from a server a collecting race already had.
    pub offers_duplicate: u64,
    /// ACCEPTs whose Noise message failed.
    pub accepts_invalid: u64,
    /// Sessions established.
    pub sessions_established: u64,
    /// Failovers: sessions lost and replaced by a new race.
    pub failovers: u64,
    /// Races delayed by a back-off after a refusal.
    pub refusal_backoffs: u64,
    /// Servers this connection's failures ejected from races.
    pub ejections: u64,
    /// Candidates left out of races because they were ejected.
    pub ejected_skipped: u64,
    /// DATA packets dropped by the session (auth, replay, bad frame).
    pub data_dropped: u64,
    /// Handshakes whose INIT carried early data (PROTOCOL.md §4.8).
    pub early_data_sent: u64,
    /// DATA that arrived before its ACCEPT and was kept, to be read once the session was up
    /// (one per handshake; any more count as `unexpected`).
    pub data_held: u64,
    /// Requests queued on the sessions (PROTOCOL.md §5.8).
    pub requests_sent: u64,
    /// Replies that answered a request in flight.
    pub replies_received: u64,
    /// Replies for no request in flight (never sent, answered already, or forgotten):
    /// dropped.
    pub replies_unknown: u64,
    /// Requests in flight when their session ended (closed, or its server lost): failed at once,
    /// with no reply to come.
    pub requests_lost: u64,
}
