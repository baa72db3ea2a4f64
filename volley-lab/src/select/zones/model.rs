//! The zones' model, with no sockets and no clocks: which zone each server and client is in, the
//! one-way delay of every pair of zones, the four zone workloads and their traces, load-aware
//! locality's zone weights, and the path-aware oracle's score.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::select::workload::{FleetShape, Job, Requests, Schedule, Workload};

/// Servers per zone (issue 23, Z3): 6, 5 and 5 of the fleet's 16.
pub const ZONE_SERVERS: [usize; 3] = [6, 5, 5];
/// One-way delay inside a zone.
pub const IN_ZONE: Duration = Duration::from_micros(250);
/// One-way delays between zones 0–1, 0–2 and 1–2.
pub const BETWEEN: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(30),
];

/// The zone layout of a run: servers and clients per zone, and every pair's one-way delay.
#[derive(Debug, Clone, Serialize)]
pub struct Zones {
    /// Zone of each server: the first `ZONE_SERVERS[0]` in zone 0, and so on.
    pub of_server: Vec<usize>,
    /// Zone of each client, in proportion to the zones' server counts.
    pub of_client: Vec<usize>,
    /// One-way delay between zones, `delay[a][b]`.
    pub delay: [[Duration; 3]; 3],
}

impl Zones {
    /// The layout of `servers` servers split as [`ZONE_SERVERS`] (scaled when the fleet is not
    /// 16), and `clients` clients in proportion.
    pub fn new(servers: usize, clients: usize) -> Zones {
        let of_server = split(servers, &ZONE_SERVERS);
        let counts: Vec<usize> = (0..3)
            .map(|z| of_server.iter().filter(|&&x| x == z).count())
            .collect();
        let of_client = split(clients, &counts);
        let mut delay = [[IN_ZONE; 3]; 3];
        for (k, (a, b)) in [(0, 1), (0, 2), (1, 2)].into_iter().enumerate() {
            delay[a][b] = BETWEEN[k];
            delay[b][a] = BETWEEN[k];
        }
        Zones {
            of_server,
            of_client,
            delay,
        }
    }

    /// Servers of zone `z`.
    pub fn servers(&self, z: usize) -> Vec<usize> {
        (0..self.of_server.len())
            .filter(|&s| self.of_server[s] == z)
            .collect()
    }

    /// Clients of zone `z`.
    pub fn clients(&self, z: usize) -> Vec<usize> {
        (0..self.of_client.len())
            .filter(|&c| self.of_client[c] == z)
            .collect()
    }

    /// One-way delay from a client of zone `z` to server `s`.
    pub fn path(&self, z: usize, s: usize) -> Duration {
        self.delay[z][self.of_server[s]]
    }
}

/// `n` items over three zones in proportion to `weights` (largest remainders; every zone gets
/// one when `n` ≥ 3), in zone order.
fn split(n: usize, weights: &[usize]) -> Vec<usize> {
    let total: usize = weights.iter().sum::<usize>().max(1);
    let exact: Vec<f64> = weights
        .iter()
        .map(|&w| n as f64 * w as f64 / total as f64)
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    if n >= 3 {
        counts.iter_mut().for_each(|c| *c = (*c).max(1));
    }
    while counts.iter().sum::<usize>() < n {
        let k = (0..3)
            .max_by(|&a, &b| {
                (exact[a] - counts[a] as f64)
                    .total_cmp(&(exact[b] - counts[b] as f64))
                    .then(b.cmp(&a))
            })
            .unwrap_or(0);
        counts[k] += 1;
    }
    while counts.iter().sum::<usize>() > n {
        let k = (0..3).max_by_key(|&k| counts[k]).unwrap_or(0);
        counts[k] -= 1;
    }
    counts
        .iter()
        .enumerate()
        .flat_map(|(z, &c)| std::iter::repeat_n(z, c))
        .collect()
}

/// A zone workload (issue 23, Z3).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ZoneWorkload {
    /// Each zone's clients offer 0.7 of their zone's capacity.
    Balanced,
    /// One zone's clients offer 1.3 of its capacity, the others' 0.4 of theirs.
    HotZone,
    /// A zone's servers go silent a third of the way into the measured period; the clients offer
    /// 0.5 of their zone's capacity (so that the two zones left can carry the whole load).
    ZoneOutage,
    /// One zone's servers at half speed; the clients offer 0.7 of the fleet's capacity, spread
    /// over the zones in proportion to their server counts.
    SlowZone,
}

impl ZoneWorkload {
    pub const ALL: [ZoneWorkload; 4] = [
        ZoneWorkload::Balanced,
        ZoneWorkload::HotZone,
        ZoneWorkload::ZoneOutage,
        ZoneWorkload::SlowZone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ZoneWorkload::Balanced => "balanced",
            ZoneWorkload::HotZone => "hot-zone",
            ZoneWorkload::ZoneOutage => "zone-outage",
            ZoneWorkload::SlowZone => "slow-zone",
        }
    }

    /// The zone singled out (hot, silent or slow) at `seed`: each in turn over the seeds.
    pub fn special_zone(self, seed: u64) -> Option<usize> {
        match self {
            ZoneWorkload::Balanced => None,
            _ => Some((seed % 3) as usize),
        }
    }
}

/// Everything a zone run replays.
#[derive(Debug, Clone)]
pub struct ZoneTrace {
    pub schedule: Schedule,
    /// In arrival order; `Job::client_coin` is the client's index (see [`Job::client`]).
    pub jobs: Vec<Job>,
    /// Sessions per second each zone's clients offer.
    pub zone_rates: [f64; 3],
    pub special: Option<usize>,
    pub warmup: Duration,
    pub end: Duration,
}

/// The parameters a zone trace is drawn from.
#[derive(Debug, Clone, Copy)]
pub struct ZoneSpec {
    pub shape: FleetShape,
    pub workload: ZoneWorkload,
    pub requests: Requests,
    pub clients: usize,
    pub seed: u64,
    pub warmup: Duration,
    pub measure: Duration,
}

impl ZoneSpec {
    /// Each zone's offered load as a share of its zone's capacity at speed 1.
    pub fn zone_factors(&self, zones: &Zones) -> [f64; 3] {
        let special = self.workload.special_zone(self.seed);
        match self.workload {
            ZoneWorkload::Balanced => [0.7; 3],
            ZoneWorkload::ZoneOutage => [0.5; 3],
            ZoneWorkload::HotZone => {
                let mut f = [0.4; 3];
                if let Some(z) = special {
                    f[z] = 1.3;
                }
                f
            }
            ZoneWorkload::SlowZone => {
                // 0.7 of the fleet's real capacity, in proportion to the zones' server counts.
                let n = zones.of_server.len() as f64;
                let slow = special.map_or(0, |z| zones.servers(z).len()) as f64;
                [0.7 * (n - slow * 0.5) / n; 3]
            }
        }
    }

    /// Draws the schedule and the jobs. Deterministic in the spec.
    pub fn draw(&self, zones: &Zones) -> ZoneTrace {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed
                ^ ((self.workload as u64) << 40)
                ^ ((self.requests.mean() as u64) << 32)
                ^ 0x20_2e5,
        );
        let n = self.shape.servers;
        let end = self.warmup + self.measure;
        let seconds = end.as_secs() as usize + 2;
        let special = self.workload.special_zone(self.seed);
        let mut speeds = vec![vec![1.0; seconds]; n];
        let mut silent = Vec::new();
        let mut event_at = None;
        match (self.workload, special) {
            (ZoneWorkload::SlowZone, Some(z)) => {
                for s in zones.servers(z) {
                    speeds[s] = vec![0.5; seconds];
                }
            }
            (ZoneWorkload::ZoneOutage, Some(z)) => {
                silent = zones.servers(z);
                event_at = Some(self.warmup + self.measure / 3);
            }
            _ => {}
        }
        let schedule = Schedule {
            workload: Workload::Homogeneous,
            speeds,
            odd_one: None,
            event_at,
            event_len: None,
            slowed: Vec::new(),
            silent,
        };
        let factors = self.zone_factors(zones);
        let per_server_rps = self.shape.slots as f64 / self.shape.mean_work.as_secs_f64();
        let mut zone_rates = [0.0; 3];
        for z in 0..3 {
            zone_rates[z] =
                factors[z] * zones.servers(z).len() as f64 * per_server_rps / self.requests.mean();
        }
        let mean_us = self.shape.mean_work.as_secs_f64() * 1e6;
        let mut jobs = Vec::new();
        for (z, &rate) in zone_rates.iter().enumerate() {
            let clients = zones.clients(z);
            if rate <= 0.0 || clients.is_empty() {
                continue;
            }
            let mut t = 0.0f64;
            loop {
                t += -(1.0 - rng.r#gen::<f64>()).ln() / rate;
                let at = Duration::from_secs_f64(t);
                if at >= end {
                    break;
                }
                let count = match self.requests {
                    Requests::One => 1,
                    Requests::About10 => rng.gen_range(5..=15),
                };
                let work_us = (0..count)
                    .map(|_| {
                        (-(1.0 - rng.r#gen::<f64>()).ln() * mean_us)
                            .round()
                            .clamp(1.0, 60e6) as u32
                    })
                    .collect();
                let client = clients[rng.gen_range(0..clients.len())];
                jobs.push(Job {
                    at,
                    work_us,
                    coin: rng.r#gen(),
                    client_coin: client as u64,
                });
            }
        }
        jobs.sort_by_key(|j| j.at);
        ZoneTrace {
            schedule,
            jobs,
            zone_rates,
            special,
            warmup: self.warmup,
            end,
        }
    }
}

/// Load-aware locality's rule (after Envoy's `load_aware_locality` policy, which weights each
/// locality by its headroom from ORCA utilisation reports, keeps traffic local while the zones
/// are similarly loaded and spills toward remote zones with headroom as the local zone heats
/// up; a locality whose reports expired gets no traffic).
#[derive(Debug, Clone, Copy)]
pub struct LocalityRule {
    /// The local zone keeps all its traffic while its utilisation is at most the fleet's mean
    /// utilisation plus this (Envoy's `utilization_variance_threshold`).
    pub variance_threshold: f64,
}

impl Default for LocalityRule {
    fn default() -> Self {
        LocalityRule {
            variance_threshold: 0.1,
        }
    }
}

impl LocalityRule {
    /// Each zone's share of a client's new sessions, from each zone's utilisation (`None`:
    /// no fresh report, the zone gets nothing) and server count. Headroom is
    /// `servers × max(0, 1 − utilisation)`; the local zone keeps everything while it is not
    /// hotter than the fleet's mean by more than the threshold, else every zone gets its share
    /// of the total headroom. With no headroom anywhere, the zones that report share by size.
    pub fn weights(&self, local: usize, util: [Option<f64>; 3], servers: [usize; 3]) -> [f64; 3] {
        let known: Vec<usize> = (0..3)
            .filter(|&z| util[z].is_some() && servers[z] > 0)
            .collect();
        let mut w = [0.0; 3];
        if known.is_empty() {
            w[local] = 1.0;
            return w;
        }
        let cap: f64 = known.iter().map(|&z| servers[z] as f64).sum();
        let mean = known
            .iter()
            .map(|&z| util[z].unwrap_or(0.0) * servers[z] as f64)
            .sum::<f64>()
            / cap;
        if let Some(u) = util[local]
            && servers[local] > 0
            && u <= mean + self.variance_threshold
        {
            w[local] = 1.0;
            return w;
        }
        let mut total = 0.0;
        for &z in &known {
            let h = servers[z] as f64 * (1.0 - util[z].unwrap_or(1.0)).max(0.0);
            w[z] = h;
            total += h;
        }
        if total <= 0.0 {
            for &z in &known {
                w[z] = servers[z] as f64 / cap;
            }
            return w;
        }
        w.iter_mut().for_each(|x| *x /= total);
        w
    }
}

/// What the path-aware oracle knows of one server when a session arrives.
#[derive(Debug, Clone, Copy)]
pub struct OracleView {
    /// One-way delay between the client's zone and the server's.
    pub path: Duration,
    /// The server's true speed (0 or less: silent, never chosen).
    pub speed: f64,
    /// Sessions the oracle has placed on it that have not ended.
    pub active: usize,
    pub slots: usize,
}

/// The oracle's expected delay of a session of `requests` requests of mean work `mean_work` on
/// a server: `round_trips × 2 × path` (a connection's round trip, then one per request) plus
/// the session's own service at the server's speed plus the expected wait for a slot (the
/// sessions beyond the slots, each holding a slot for a session's service, over the slots).
pub fn oracle_score(v: &OracleView, requests: f64, mean_work: Duration) -> f64 {
    if v.speed <= 0.0 {
        return f64::INFINITY;
    }
    let round_trips = requests + 1.0;
    let service = requests * mean_work.as_secs_f64() / v.speed;
    let beyond = (v.active as f64 + 1.0 - v.slots as f64).max(0.0);
    round_trips * 2.0 * v.path.as_secs_f64() + service + beyond * service / v.slots as f64
}

/// The server with the smallest [`oracle_score`] (ties: the lowest index); `None` when every
/// server is silent.
pub fn oracle_choice(views: &[OracleView], requests: f64, mean_work: Duration) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in views.iter().enumerate() {
        let s = oracle_score(v, requests, mean_work);
        if s.is_finite() && best.is_none_or(|(_, b)| s < b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}
