//! What a run is ([`Setup`]: fleet, arrivals, selector, measurement) and what it yields
//! ([`Outcome`]: raw counters and samples).

use std::time::Duration;

use volley_proto::balance::BalanceConfig;
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

/// A volley pool per client (issue 25, P5; `engine::pool`): each client opens `k` members with
/// one real `NBest` race, sends every request to the member its
/// [`volley_proto::balance::Balancer`] picks, and runs the balancer's background races as real
/// races over the servers not in its pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSetup {
    /// The servers' answer policy.
    pub answer: AnswerPolicy,
    /// `ServerConfig::capacity`: the servers' slots (as [`ProtocolSetup::capacity`]).
    pub capacity: u32,
    /// `ServerConfig::service`.
    pub service: ServiceModel,
    /// `ServerConfig::reservation`.
    pub reservation: Duration,
    /// Every race's retransmission and deadline timers.
    pub timers: RaceTimers,
    /// The balancer's settings; `balance.members` is the pool's `k`.
    pub balance: BalanceConfig,
    /// Servers probed by the race that opens a pool (drawn uniformly); its `k` earliest offers
    /// become the members (`SelectionPolicy::NBest`).
    pub open_fanout: usize,
    /// Servers probed by a race that fills or replaces one member (drawn uniformly from the
    /// servers not in the pool; the earliest offer wins).
    pub race_fanout: usize,
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
    /// A volley pool per client: every request to a member of the client's pool (see
    /// [`PoolSetup`] and `engine::pool`).
    Pool(PoolSetup),
    /// Client-side weighted round robin from per-reply load reports (gRPC A58, Envoy
    /// `client_side_weighted_round_robin`), each client with its own weights (`engine::reports`).
    Wrr,
    /// C3 (NSDI '15) over `d` random servers per request, each client with its own scores from
    /// per-reply feedback (`engine::reports`).
    C3(usize),
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
    /// Jobs at the servers fleet-wide at the first and at the last measured arrival: a backlog
    /// that grows by a share of the window's arrivals means queues still growing.
    pub backlog: (u64, u64),
    /// Most picks of one server within one herding window.
    pub herd_max: u32,
    /// The same for uniformly random picks at the same instants (reference).
    pub herd_max_uniform: u32,
    /// Server counters summed over the fleet and the whole run.
    pub server: ServerTotals,
    /// The pools' races and members ([`Selector::Pool`] only).
    pub pool: PoolCounts,
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

/// What the pools of a [`Selector::Pool`] run did. Races are counted when they start, in the
/// measurement window (from the first to the last measured arrival) unless named otherwise.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PoolCounts {
    /// The balancer's races (fill, behind and grow) started in the steady span: from half-way through
    /// the warm-up to the last measured arrival. Each client's race budget is a token bucket
    /// that requests fill, and clients that start together race in step, so a window of a few
    /// tens of requests per client can catch or miss their races by phase: the span covers
    /// several of the bucket's periods.
    pub span_races: u64,
    /// Requests sent in the steady span.
    pub span_requests: u64,
    /// Races started in the window, every kind.
    pub races: u64,
    /// Of those, races that opened a pool (`NBest`, `k` members at once).
    pub opening: u64,
    /// Of those, the balancer's races to fill a pool with fewer than `k` live members.
    pub fill: u64,
    /// Of those, the balancer's races to replace a member that fell behind.
    pub behind: u64,
    /// Of those, the balancer's races to grow a pool (`NBest`, several members at once).
    pub grow: u64,
    /// Races started in the window that found no server (their deadline passed).
    pub failed: u64,
    /// PROBEs of the races started in the window (retransmissions included).
    pub probes: u64,
    /// Members retired in the window (a race found a better server).
    pub retired: u64,
    /// Races over the whole run, warm-up included.
    pub races_total: u64,
    /// Live members summed over the pools at the end of the run.
    pub members_end: u64,
    /// Pools opened by the end of the run.
    pub pools_end: u64,
}
