//! The server side: the [`ServerEndpoint`] dispatches each datagram to its offer desk (PROBE →
//! OFFER by the [`answer`] policy and the load), its acceptor (INIT → session, after the
//! stateless cookie check of the [`responder`] and [`admission`] control) or an established
//! session, and owns the session table.

mod acceptor;
pub mod admission;
pub mod answer;
mod context;
mod endpoint;
pub mod estimate;
mod load;
mod offers;
pub mod responder;
mod sessions;

pub use admission::AdmissionConfig;
pub use answer::{ANSWER_DELAY_BOUNDS_US, AnswerDelays, AnswerPolicy};
pub use endpoint::{ServerEndpoint, ServerEvent};
pub use estimate::ServiceModel;
pub use sessions::SessionId;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::allow::AllowList;
use crate::crypto::StaticKeypair;
use crate::session::SessionConfig;

/// How a server behaves. Build with [`ServerConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The static key the handshake proves; clients pin its public half.
    pub keypair: StaticKeypair,
    /// Service names this server answers probes for. Default `["echo"]`.
    pub services: Vec<Vec<u8>>,
    /// Requests the server serves at once (its parallel slots); requests beyond it wait their
    /// turn. It is the `c` of the expected-completion model ([`estimate`]) and the
    /// denominator of the load hint's utilisation. A server never goes silent for being at
    /// capacity: it answers later. `None` (default): unbounded, and every policy answers at
    /// once.
    pub capacity: Option<u32>,
    /// Most sessions open at once: a hard limit (memory, descriptors), not a load level. At it,
    /// probes are withheld and INITs refused with a REDIRECT — except, when a `capacity` is set,
    /// an INIT answering an offer made within the last `reservation`, which that offer
    /// promised. Without a capacity offers promise nothing and the limit is exact. `None`
    /// (default): unbounded.
    pub max_sessions: Option<u32>,
    /// Whether open sessions count as requests in flight (for services where a session is the
    /// unit of work, such as one proxied connection per session). Default false: load is the
    /// requests the application reports ([`ServerEndpoint::set_app_load`]), so idle sessions do
    /// not fill a server.
    pub count_sessions: bool,
    /// Where the mean service time of the expected-completion estimate comes from.
    /// Default: measured, 1 s window, 10 ms prior.
    pub service: ServiceModel,
    /// How long a cookie stays valid after it was minted. Default 10 s: long enough for an
    /// INIT's whole retransmission schedule (3 s), short enough to bound replay.
    pub cookie_lifetime: Duration,
    /// How often cookie keys rotate. Default 30 s; never shorter than the lifetime.
    pub cookie_rotation: Duration,
    /// Session keepalive and idle timers.
    pub session: SessionConfig,
    /// Rate limits and under-load mode.
    pub admission: AdmissionConfig,
    /// How load turns into answer time. Default [`AnswerPolicy::Paced`]: 1/32 of the
    /// expected completion time, at most 10 ms. Without a capacity every policy answers at once.
    pub answer: AnswerPolicy,
    /// Most probes held at once by `Paced` or `Gated`; beyond it a probe is dropped
    /// (`probes_dropped_queue_full`). Default 1,024 (about 80 KiB).
    pub max_held: usize,
    /// How long a sent offer counts as load (an outstanding promise of a slot) unless its INIT
    /// arrives first. Default 5 ms: a few LAN round trips, long enough that a burst of
    /// simultaneous probes sees the load rise with every offer (no herding), short enough
    /// that offers lost to other servers (race rate × this, per server) stay a small offset.
    /// Set it near your clients' round-trip time. Zero turns reservations off.
    pub reservation: Duration,
    /// Other servers of the pool this server names in a REDIRECT when it refuses an INIT.
    /// Default none. At most [`crate::packet::MAX_REDIRECT_ADDRS`] are named, fewer when the
    /// REDIRECT would outgrow the INIT.
    pub peers: Vec<SocketAddr>,
    /// The client keys this server opens sessions for (§4.7). `None` (default): any client
    /// that completes the handshake, anonymous or not. Change it on a running server with
    /// [`ServerEndpoint::set_allow_list`].
    pub allow: Option<Arc<AllowList>>,
}

impl ServerConfig {
    /// Defaults for everything but the key.
    pub fn new(keypair: StaticKeypair) -> Self {
        Self {
            keypair,
            services: vec![b"echo".to_vec()],
            capacity: None,
            max_sessions: None,
            count_sessions: false,
            service: ServiceModel::default(),
            cookie_lifetime: Duration::from_secs(10),
            cookie_rotation: Duration::from_secs(30),
            session: SessionConfig::default(),
            admission: AdmissionConfig::default(),
            answer: AnswerPolicy::default(),
            max_held: answer::DEFAULT_MAX_HELD,
            reservation: answer::DEFAULT_RESERVATION,
            peers: Vec::new(),
            allow: None,
        }
    }
}

/// Every outcome the server counts. Each drop or refusal has its own counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Datagrams handed to the endpoint.
    pub datagrams_received: u64,
    /// Dropped unread: source port on the reflector list.
    pub dropped_reflector_port: u64,
    /// Dropped: longer than the maximum datagram.
    pub malformed_too_long: u64,
    /// Dropped: truncated.
    pub malformed_truncated: u64,
    /// Dropped: unsupported version byte.
    pub malformed_version: u64,
    /// VERSIONS sent: answers to probe-sized datagrams of another protocol version, naming
    /// version 2 (PROTOCOL.md §3.9). Those datagrams are also counted in `malformed_version`.
    pub versions_sent: u64,
    /// VERSIONS not sent: the datagram was charged like a PROBE (PROTOCOL.md §3.9) and the
    /// PROBE budget was spent, or its source prefix was over its PROBE rate (§7.7). Those
    /// datagrams are also counted in `malformed_version`.
    pub versions_refused: u64,
    /// Dropped: unknown type byte.
    pub malformed_type: u64,
    /// Dropped: a length field out of range or trailing bytes.
    pub malformed_length: u64,
    /// Dropped: PROBE shorter than the minimum (anti-amplification).
    pub probe_too_short: u64,
    /// Dropped: a message only a client should receive (OFFER, ACCEPT, COOKIE_CHANGE, REDIRECT).
    pub unexpected_message: u64,
    /// Well-formed PROBEs.
    pub probes_received: u64,
    /// OFFERs sent.
    pub offers_sent: u64,
    /// PROBEs for a service this server does not run.
    pub probes_unknown_service: u64,
    /// PROBEs not answered because the server is at `max_sessions`.
    pub probes_withheld_full: u64,
    /// PROBEs not answered because the server is draining (§7.8).
    pub probes_withheld_draining: u64,
    /// PROBEs not answered because of under-load mode.
    pub probes_withheld_under_load: u64,
    /// PROBEs dropped: the global PROBE budget was spent (§7.7).
    pub probes_over_budget: u64,
    /// PROBEs dropped: their source prefix was over its rate while its limit applied (the
    /// server pressed, or the prefix limited since it went over its rate while pressed, §7.7).
    pub probes_rate_limited: u64,
    /// PROBEs held for a later offer (`Paced` delay, or `Gated` with no free slot).
    pub probes_held: u64,
    /// PROBEs dropped because the held queue was full (`max_held`).
    pub probes_dropped_queue_full: u64,
    /// Held PROBEs dropped unanswered: the server reached `max_sessions` or went under load
    /// while they were held.
    pub probes_dropped_hold_expired: u64,
    /// OFFERs sent while every slot was taken (requests in flight ≥ capacity): busy servers
    /// answer late rather than not at all. Included in `offers_sent`.
    pub offers_busy: u64,
    /// Well-formed INITs.
    pub inits_received: u64,
    /// INITs for a service this server does not run.
    pub init_unknown_service: u64,
    /// INIT refused: cookie of the wrong length.
    pub init_cookie_malformed: u64,
    /// INIT refused: cookie key neither current nor previous.
    pub init_cookie_unknown_key: u64,
    /// INIT refused: cookie older than its lifetime.
    pub init_cookie_expired: u64,
    /// INIT refused: cookie MAC did not verify (forged or tampered).
    pub init_cookie_bad_mac: u64,
    /// INIT with a genuine cookie from another address (a NAT rebinding): COOKIE_CHANGE sent.
    pub cookie_changes_sent: u64,
    /// Duplicate INIT (a retransmission) answered again with the stored ACCEPT.
    pub init_duplicate: u64,
    /// INIT dropped: its (address, tag) opened a session that has since ended; a replay.
    pub init_after_close: u64,
    /// INIT refused at `max_sessions` (a REDIRECT tells the client).
    pub init_refused_full: u64,
    /// INIT refused because the server is draining (a REDIRECT tells the client, §7.8).
    pub init_refused_draining: u64,
    /// INIT accepted at `max_sessions` because it answers an offer made within the last
    /// `reservation`: the offer promised the slot. Included in `sessions_opened`.
    pub init_honoured_full: u64,
    /// REDIRECTs sent (refusals of INITs whose cookie verified: full or under load).
    pub redirects_sent: u64,
    /// INIT refused by the per-source rate limit (§7.3 step 6a, duplicates included), or a new
    /// source at a full source table.
    pub init_rate_limited: u64,
    /// INIT refused in under-load mode (a REDIRECT with no addresses tells the client).
    pub init_under_load: u64,
    /// INIT whose Noise message failed (wrong server key, bad payload, no common suite).
    pub init_handshake_failed: u64,
    /// INIT from a client whose authenticated key is not on the allow-list: dropped, nothing
    /// sent, nothing kept.
    pub inits_unauthorized: u64,
    /// Sessions opened whose INIT carried early data that was delivered as their first
    /// datagram (PROTOCOL.md §4.8). Included in `sessions_opened`.
    pub early_data_received: u64,
    /// Bytes of early data delivered.
    pub early_data_bytes: u64,
    /// Early data not delivered: the same client's INIT for the same race already delivered
    /// its early data to another session (it moved and followed a COOKIE_CHANGE).
    pub early_data_duplicate: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions ended (any reason).
    pub sessions_closed: u64,
    /// Sessions ended by idle timeout.
    pub sessions_idle_timeout: u64,
    /// Sessions ended because the client stopped answering liveness probes.
    pub sessions_unresponsive: u64,
    /// Sessions ended because a reloaded allow-list no longer lists their client's key.
    pub sessions_revoked: u64,
    /// Sessions that moved to a new, validated client address.
    pub sessions_migrated: u64,
    /// DATA for no known session.
    pub data_unknown_session: u64,
    /// Authentic DATA for a session from an address other than the session's: a path
    /// validation of that address started (the newest packet) or went on.
    pub data_new_address: u64,
    /// DATA that failed authentication.
    pub data_auth_failed: u64,
    /// DATA rejected by the replay window.
    pub data_replayed: u64,
    /// Authentic DATA with a malformed frame.
    pub data_bad_frame: u64,
    /// FRAGMENT frames received: pieces of datagrams larger than one packet (PROTOCOL.md §5.7).
    pub data_fragments: u64,
    /// Datagrams put back together from their fragments and delivered.
    pub data_reassembled: u64,
    /// Incomplete datagrams dropped: timed out (2 s) or evicted to keep a session's
    /// reassembly within 16 datagrams (or frames) and 131,098 bytes.
    pub data_reassembly_dropped: u64,
    /// REQUEST frames taken as requests in flight and handed to the application
    /// (PROTOCOL.md §5.8).
    pub requests_received: u64,
    /// REQUESTs dropped: their id was in flight on the session already.
    pub requests_duplicate: u64,
    /// REQUESTs answered at once with status REFUSED: the session had `MAX_REQUESTS` in flight
    /// already. The application's own refusals count in `replies_refused`.
    pub requests_over_limit: u64,
    /// REPLYs queued, every status (the over-limit refusals included).
    pub replies_sent: u64,
    /// Of those, status DROPPED: the application let the request go unanswered.
    pub replies_dropped: u64,
    /// Of those, status REFUSED by the application or its runtime (its receive queue full);
    /// the over-limit ones count in `requests_over_limit`.
    pub replies_refused: u64,
    /// Requests never answered: still in flight when their session ended, or forgotten
    /// ([`ServerEndpoint::forget_request`]).
    pub requests_abandoned: u64,
    /// Would-be replies suppressed because they exceeded the anti-amplification bound (a bug
    /// guard: should stay 0).
    pub amplification_suppressed: u64,
}

impl ServerStats {
    /// Every counter by its field name, in declaration order: for exporters (Prometheus), which
    /// then cannot miss one (a test checks the list against the struct).
    pub fn counters(&self) -> [(&'static str, u64); 65] {
        [
            ("datagrams_received", self.datagrams_received),
            ("dropped_reflector_port", self.dropped_reflector_port),
            ("malformed_too_long", self.malformed_too_long),
            ("malformed_truncated", self.malformed_truncated),
            ("malformed_version", self.malformed_version),
            ("versions_sent", self.versions_sent),
            ("versions_refused", self.versions_refused),
            ("malformed_type", self.malformed_type),
            ("malformed_length", self.malformed_length),
            ("probe_too_short", self.probe_too_short),
            ("unexpected_message", self.unexpected_message),
            ("probes_received", self.probes_received),
            ("offers_sent", self.offers_sent),
            ("probes_unknown_service", self.probes_unknown_service),
            ("probes_withheld_full", self.probes_withheld_full),
            ("probes_withheld_draining", self.probes_withheld_draining),
            (
                "probes_withheld_under_load",
                self.probes_withheld_under_load,
            ),
            ("probes_over_budget", self.probes_over_budget),
            ("probes_rate_limited", self.probes_rate_limited),
            ("probes_held", self.probes_held),
            ("probes_dropped_queue_full", self.probes_dropped_queue_full),
            (
                "probes_dropped_hold_expired",
                self.probes_dropped_hold_expired,
            ),
            ("offers_busy", self.offers_busy),
            ("inits_received", self.inits_received),
            ("init_unknown_service", self.init_unknown_service),
            ("init_cookie_malformed", self.init_cookie_malformed),
            ("init_cookie_unknown_key", self.init_cookie_unknown_key),
            ("init_cookie_expired", self.init_cookie_expired),
            ("init_cookie_bad_mac", self.init_cookie_bad_mac),
            ("cookie_changes_sent", self.cookie_changes_sent),
            ("init_duplicate", self.init_duplicate),
            ("init_after_close", self.init_after_close),
            ("init_refused_full", self.init_refused_full),
            ("init_refused_draining", self.init_refused_draining),
            ("init_honoured_full", self.init_honoured_full),
            ("redirects_sent", self.redirects_sent),
            ("init_rate_limited", self.init_rate_limited),
            ("init_under_load", self.init_under_load),
            ("init_handshake_failed", self.init_handshake_failed),
            ("inits_unauthorized", self.inits_unauthorized),
            ("early_data_received", self.early_data_received),
            ("early_data_bytes", self.early_data_bytes),
            ("early_data_duplicate", self.early_data_duplicate),
            ("sessions_opened", self.sessions_opened),
            ("sessions_closed", self.sessions_closed),
            ("sessions_idle_timeout", self.sessions_idle_timeout),
            ("sessions_unresponsive", self.sessions_unresponsive),
            ("sessions_revoked", self.sessions_revoked),
            ("sessions_migrated", self.sessions_migrated),
            ("data_unknown_session", self.data_unknown_session),
            ("data_new_address", self.data_new_address),
            ("data_auth_failed", self.data_auth_failed),
            ("data_replayed", self.data_replayed),
            ("data_bad_frame", self.data_bad_frame),
            ("data_fragments", self.data_fragments),
            ("data_reassembled", self.data_reassembled),
            ("data_reassembly_dropped", self.data_reassembly_dropped),
            ("requests_received", self.requests_received),
            ("requests_duplicate", self.requests_duplicate),
            ("requests_over_limit", self.requests_over_limit),
            ("replies_sent", self.replies_sent),
            ("replies_dropped", self.replies_dropped),
            ("replies_refused", self.replies_refused),
            ("requests_abandoned", self.requests_abandoned),
            ("amplification_suppressed", self.amplification_suppressed),
        ]
    }
}

/// The server's load right now: what its answer policy and load hints are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLoad {
    /// Sessions open.
    pub sessions: u32,
    /// Requests in flight the application reported.
    pub app: u32,
    /// Requests that came as REQUEST frames (PROTOCOL.md §5.8) and are not answered yet: the
    /// server counts them itself, from arrival to reply.
    pub wire: u32,
    /// Requests in flight as the server weighs them: `app` plus `wire`, plus `sessions` when
    /// [`ServerConfig::count_sessions`] is set.
    pub requests: u32,
    /// Offers sent recently and not yet taken (see [`ServerConfig::reservation`]).
    pub reserved: u32,
    /// Probes held for a later offer.
    pub held: u32,
    /// Configured capacity; 0 when unbounded.
    pub capacity: u32,
    /// The estimated mean service time of one request.
    pub service_time: std::time::Duration,
    /// The expected completion time of one more request now.
    pub expected: std::time::Duration,
}

impl ServerLoad {
    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.requests
    }

    /// What the answer policy weighs: requests in flight plus outstanding offers.
    pub fn effective(&self) -> u32 {
        self.requests.saturating_add(self.reserved)
    }
}

/// What the application reports about its requests: how many are in flight now, and how many
/// have completed since the server started (a running total). The server measures its service
/// time from the two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppLoad {
    /// Requests in flight (queued or in service) now.
    pub in_flight: u32,
    /// Requests completed so far, a running total that never goes down.
    pub completed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d5_every_server_counter_is_listed_for_exporters() {
        // The struct's fields as Debug prints them, against `counters()`: a field added
        // without listing it fails here.
        let debug = format!("{:?}", ServerStats::default());
        let inner = debug
            .trim_start_matches("ServerStats {")
            .trim_end_matches('}')
            .trim()
            .trim_end_matches(", ..");
        let fields: Vec<&str> = inner
            .split(", ")
            .map(|kv| kv.split(':').next().unwrap().trim())
            .collect();
        let listed: Vec<&str> = ServerStats::default()
            .counters()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(fields, listed);
    }
}
