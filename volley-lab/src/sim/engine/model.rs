//! What a run is ([`Setup`]: fleet, arrivals, selector, measurement) and what it yields
//! ([`Outcome`]: raw counters and samples).

use std::time::Duration;

use volley_proto::client::race::RaceTimers;
use volley_proto::{AnswerPolicy, SelectionPolicy, ServiceModel};

use super::Nanos;

/// The real protocol's knobs for one run.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolSetup {
    /// Server answer policy.
    pub answer: AnswerPolicy,
    /// Client selection policy.
    pub client: SelectionPolicy,
    /// Servers probed per race.
    pub fanout: usize,
    /// `ServerConfig::capacity`: the slots of the expected-completion model (L5). The engine's
    /// servers have exactly this many slots.
    pub capacity: u32,
    /// `ServerConfig::service`: where the servers' service time comes from.
    pub service: ServiceModel,
    /// `ServerConfig::reservation`.
    pub reservation: Duration,
    /// The race's retransmission and deadline timers.
    pub timers: RaceTimers,
}

/// What a local-view balancer weighs (tower's `Load` implementations).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum P2cMetric {
    /// The client's own requests pending at each server (tower `PendingRequests`).
    Pending,
    /// The client's own peak-EWMA of each server's response time, times its pending requests
    /// plus one (tower `PeakEwma`, the same update rule): `default_rtt` for a server it has not
    /// heard from, decaying with time constant `decay`.
    PeakEwma {
        /// Estimate of a server never measured.
        default_rtt: Duration,
        /// Time constant of the decay.
        decay: Duration,
    },
}

/// How an arriving session chooses its server.
#[derive(Debug, Clone, Copy)]
pub enum Selector {
    /// The real protocol: a `Race` against `fanout` `ServerEndpoint`s.
    Protocol(ProtocolSetup),
    /// One uniformly random server, no load information, no protocol.
    Random,
    /// Each client sends to the next server in its own order (its own cursor, starting at a
    /// random server).
    RoundRobin,
    /// Power of two choices over each client's own view (tower's p2c with a `Load`): two
    /// distinct random servers, the lower cost wins (ties: the first drawn).
    P2c(P2cMetric),
    /// Prequal-style asynchronous probing, each client with its own probe pool (see
    /// `engine::peers`).
    Prequal,
    /// Reference: the shortest of `d` random queues by their true length at arrival (ties
    /// uniform), exact and instant knowledge, no protocol.
    IdealJsq(usize),
    /// Reference: the shortest expected delay among `d` random servers, from their true queue
    /// lengths and speeds: `(work mean / speed) × max(1, (jobs + 1) / slots)` (ties uniform),
    /// exact and instant knowledge, no protocol.
    IdealSed(usize),
}

/// A group of identical servers.
#[derive(Debug, Clone)]
pub struct Group {
    /// How many.
    pub servers: usize,
    /// Work per unit time relative to 1 (0.5: every job takes twice as long).
    pub speed: f64,
    /// Initial state: `initial_tail[i-1]` = P(jobs ≥ i), from which each server's starting
    /// number of jobs is drawn independently; empty = start empty.
    pub initial_tail: Vec<f64>,
}

/// One run.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The fleet, groups in server-index order.
    pub groups: Vec<Group>,
    /// Service slots per server.
    pub slots: u32,
    /// Mean work of a job (exponential), ns at speed 1.
    pub mean_service: f64,
    /// Fleet-wide Poisson arrival rate, sessions per ns.
    pub arrival_rate: f64,
    /// Sessions arriving before this are simulated but not measured.
    pub warmup: Nanos,
    /// How many sessions arriving after the warm-up are measured; arrivals stop after them.
    pub measured: u64,
    /// One-way network delay, fixed part.
    pub net_base: Nanos,
    /// One-way network delay, uniform random part `[0, net_jitter)`.
    pub net_jitter: Nanos,
    /// The selector.
    pub selector: Selector,
    /// Independent clients; each arrival belongs to one drawn uniformly at random. Selectors
    /// with a local view (round-robin, p2c, Prequal) keep one state per client.
    pub clients: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Herding window.
    pub herd_window: Nanos,
    /// Keep every measured session's end-to-end latency (for percentiles).
    pub keep_latencies: bool,
    /// Sample every server's number of jobs this often during the measurement window (0: never),
    /// into [`Outcome::queue_hist`].
    pub sample_every: Nanos,
}

/// Raw counters and samples of one run; [`super::super::summary`] summarises them.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Sessions measured (arrived after warm-up).
    pub measured: u64,
    /// Measured sessions completed.
    pub completed: u64,
    /// Measured sessions failed: no offer before the race deadline.
    pub failed: u64,
    /// Of those: race deadline passed with no offer.
    pub failed_no_offer: u64,
    /// Sessions simulated in all (warm-up and measured, not the initial jobs).
    pub simulated: u64,
    /// Σ end-to-end latency (arrival → reply at the client), ns.
    pub sum_e2e: f64,
    /// Σ end-to-end latency and completions of the first and the second half of the measured
    /// sessions (by arrival): a drift between them means the run was not stationary.
    pub halves: [(f64, u64); 2],
    /// Σ time in system at the server (INIT arrival → departure), ns.
    pub sum_in_system: f64,
    /// Σ selection time (arrival → race decided), ns.
    pub sum_selection: f64,
    /// Σ selection overhead (arrival → job at the server), ns.
    pub sum_to_server: f64,
    /// Largest selection time, ns.
    pub max_selection: Nanos,
    /// End-to-end latencies of completed measured sessions, ns (if kept).
    pub e2e: Vec<f64>,
    /// Selection times of completed measured sessions, ns (if kept).
    pub selection: Vec<f64>,
    /// PROBE datagrams of measured sessions (retransmissions included).
    pub probes: u64,
    /// Races of measured sessions.
    pub races: u64,
    /// Measured sessions whose race retransmitted its probes at least once.
    pub retransmitted: u64,
    /// Load probes (Prequal) sent for measured sessions.
    pub load_probes: u64,
    /// Offers to measured sessions after their race was decided (void).
    pub offers_late: u64,
    /// Offers the client side did not take for any other reason (unknown tag after a re-race,
    /// session gone, …).
    pub offers_void: u64,
    /// Per server: busy slot-time in the measurement window, ns.
    pub busy: Vec<f64>,
    /// Per server: its group index.
    pub group_of: Vec<usize>,
    /// Per group: how often a sampled server had k jobs (index k).
    pub queue_hist: Vec<Vec<u64>>,
    /// Length of the measurement window (warm-up end → last measured arrival), ns.
    pub window: f64,
    /// Most picks of one server within one herding window.
    pub herd_max: u32,
    /// The same for uniformly random picks at the same instants (reference).
    pub herd_max_uniform: u32,
    /// Server counters summed over the fleet and the whole run.
    pub server: ServerTotals,
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end, ns.
    pub end: Nanos,
}

/// Server counters summed over the fleet.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ServerTotals {
    /// PROBEs received.
    pub probes_received: u64,
    /// OFFERs sent.
    pub offers_sent: u64,
    /// PROBEs held for a later offer.
    pub probes_held: u64,
    /// OFFERs sent while every slot was busy (answered late rather than not at all, L6).
    pub offers_busy: u64,
    /// PROBEs dropped, held queue full.
    pub probes_dropped_queue_full: u64,
}
