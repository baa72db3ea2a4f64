//! What a zone run is ([`ZoneSetup`]: fleet, zones, workload, sessions, clients, policy) and
//! what it yields ([`ZoneOutcome`]).

use std::time::Duration;

use rand::Rng;
use serde::Serialize;

use super::rtt::RttMatrix;
use crate::sim::queue::Nanos;

/// The zone that runs hot (hot-zone workload) or goes silent (outage workload).
pub const HOT_ZONE: usize = 0;
/// Offered load of the hot zone's clients, of its capacity.
pub const HOT_LOAD: f64 = 1.3;
/// Offered load of the other zones' clients in the hot-zone workload.
pub const COLD_LOAD: f64 = 0.4;
/// Offered load of every zone's clients in the balanced and outage workloads.
pub const BALANCED_LOAD: f64 = 0.7;
/// A connection (or volley handshake) whose server does not answer fails after this long.
pub const CONNECT_TIMEOUT: Nanos = 250_000_000;
/// A request whose reply is lost fails after this long (from its sending). A slow server is
/// waited for: only a lost message arms it.
pub const REQUEST_TIMEOUT: Nanos = 1_000_000_000;
/// Attempts (connections or races) per session before it fails.
pub const MAX_ATTEMPTS: u8 = 3;
/// Envoy-style locality: how often each zone reports its utilisation.
pub const REPORT_EVERY: Nanos = 1_000_000_000;
/// Envoy-style locality: a zone whose last report is older than this is taken as unhealthy.
pub const REPORT_STALE: Nanos = 3 * REPORT_EVERY;
/// volley's fan-out in the zone runs.
pub const FANOUT: usize = 4;
/// The peers' peak-EWMA: estimate of a server never measured (the mean work).
pub const DEFAULT_RTT: Duration = Duration::from_millis(40);

/// Offered load per zone, and whether a zone goes silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ZoneWorkload {
    /// The hot zone's clients offer 1.3× its capacity, the others' 0.4× theirs.
    HotZone,
    /// 0.7 everywhere; the hot zone's servers go silent a third of the way into the measured
    /// window (its clients keep arriving).
    Outage,
    /// 0.7 everywhere.
    Balanced,
}

impl ZoneWorkload {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::HotZone => "hot-zone",
            Self::Outage => "outage",
            Self::Balanced => "balanced",
        }
    }

    /// The load zone `zone`'s clients offer, of that zone's capacity.
    pub fn load(self, zone: usize) -> f64 {
        match self {
            Self::HotZone if zone == HOT_ZONE => HOT_LOAD,
            Self::HotZone => COLD_LOAD,
            Self::Outage | Self::Balanced => BALANCED_LOAD,
        }
    }
}

/// Requests per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Requests {
    /// About ten: uniform on 5..=15 (mean 10), one after the other on the same server.
    Ten,
    /// One.
    One,
}

impl Requests {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ten => "~10 requests",
            Self::One => "1 request",
        }
    }

    /// The mean.
    pub fn mean(self) -> f64 {
        match self {
            Self::Ten => 10.0,
            Self::One => 1.0,
        }
    }

    /// One session's count.
    pub fn draw(self, rng: &mut impl Rng) -> usize {
        match self {
            Self::Ten => rng.gen_range(5..=15),
            Self::One => 1,
        }
    }
}

/// How a session chooses its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ZonePolicy {
    /// tower-style p2c over peak-EWMA, over the client's own zone only.
    ZoneP2c,
    /// tower-style p2c over peak-EWMA, over the whole fleet.
    GlobalP2c,
    /// Envoy-style load-aware locality: zone weights by reported headroom, the own zone while
    /// it has headroom, spill by weight, p2c over peak-EWMA inside the chosen zone.
    Locality,
    /// Prequal over the whole fleet.
    Prequal,
    /// A central oracle: the shortest expected delay over the fleet, path included.
    Oracle,
    /// volley: a race of `FANOUT` probes, then the handshake, then the requests.
    Volley,
    /// volley with the first request riding in the INIT (early data): no handshake round trip
    /// before it.
    VolleyEarly,
}

impl ZonePolicy {
    /// Every policy, in table order.
    pub const ALL: [ZonePolicy; 7] = [
        Self::ZoneP2c,
        Self::GlobalP2c,
        Self::Locality,
        Self::Prequal,
        Self::Oracle,
        Self::Volley,
        Self::VolleyEarly,
    ];

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::ZoneP2c => "zone-local p2c (peak-EWMA)",
            Self::GlobalP2c => "global p2c (peak-EWMA)",
            Self::Locality => "load-aware locality (Envoy)",
            Self::Prequal => "Prequal (whole fleet)",
            Self::Oracle => "path-aware oracle (ref)",
            Self::Volley => "volley",
            Self::VolleyEarly => "volley, early data",
        }
    }

    /// Whether it runs the protocol.
    pub fn is_volley(self) -> bool {
        matches!(self, Self::Volley | Self::VolleyEarly)
    }
}

/// One zone run.
#[derive(Debug, Clone)]
pub struct ZoneSetup {
    /// The zones and their round trips.
    pub rtt: RttMatrix,
    /// Servers per zone.
    pub per_zone: usize,
    /// Service slots per server (and the endpoints' capacity).
    pub slots: u32,
    /// Mean work of a request (exponential), ns.
    pub mean_service: f64,
    /// Per-datagram one-way jitter bound, ns (uniform in `[0, jitter)`).
    pub jitter: Nanos,
    /// Offered load per zone.
    pub workload: ZoneWorkload,
    /// Requests per session.
    pub requests: Requests,
    /// Independent clients, spread over the zones by their share of servers.
    pub clients: usize,
    /// The policy.
    pub policy: ZonePolicy,
    /// Seed of everything (the RTT matrix is drawn by the caller).
    pub seed: u64,
    /// Sessions arriving before this are simulated, not measured.
    pub warmup: Nanos,
    /// Sessions arriving in `[warmup, warmup + window)` are measured; arrivals stop then.
    pub window: Nanos,
}

impl ZoneSetup {
    /// Zones.
    pub fn zones(&self) -> usize {
        self.rtt.zones()
    }

    /// Sessions per ns arriving from zone `zone`'s clients.
    pub fn session_rate(&self, zone: usize) -> f64 {
        let capacity = self.per_zone as f64 * f64::from(self.slots) / self.mean_service;
        self.workload.load(zone) * capacity / self.requests.mean()
    }

    /// When the outage zone goes silent (outage workload only): a third into the window.
    pub fn outage_at(&self) -> Option<Nanos> {
        (self.workload == ZoneWorkload::Outage).then_some(self.warmup + self.window / 3)
    }

    /// How many clients each zone has: by its share of servers (equal here), the remainder to
    /// the first zones.
    pub fn clients_per_zone(&self) -> Vec<usize> {
        let z = self.zones();
        (0..z)
            .map(|i| self.clients / z + usize::from(i < self.clients % z))
            .collect()
    }
}

/// Raw counters and samples of one zone run.
#[derive(Debug, Clone, Default)]
pub struct ZoneOutcome {
    /// Sessions arriving in the window.
    pub measured: u64,
    /// Of those, completed (every request answered).
    pub completed: u64,
    /// Of those, failed: `MAX_ATTEMPTS` attempts timed out.
    pub failed: u64,
    /// Timeouts of measured sessions: connections, handshakes or requests whose messages were
    /// lost, and races that expired with no offer.
    pub timeouts: u64,
    /// Completed measured sessions served (finally) outside their client's zone.
    pub outside: u64,
    /// Session times of completed measured sessions (arrival → last reply), ns.
    pub session_ns: Vec<f64>,
    /// Request times of completed measured sessions, ns: the first from the session's arrival
    /// (selection and connection included), the others from their sending.
    pub request_ns: Vec<f64>,
    /// volley's PROBEs (retransmissions included) or Prequal's load probes, of measured
    /// sessions.
    pub probes: u64,
    /// Busy slot-time per zone over the window, ns.
    pub zone_busy: Vec<f64>,
    /// The window, ns.
    pub window: f64,
    /// Sessions simulated (warm-up included).
    pub simulated: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end, ns.
    pub end: Nanos,
}
