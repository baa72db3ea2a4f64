//! `sim pools` (issue 25, P5): every request balanced, by long-lived clients, at fleet scale
//! (docs/BENCHMARKS.md §3, "sim pools").
//!
//! M independent clients send requests for the whole run: the sweep's open-loop Poisson trace
//! (arrivals and works from their own seeded stream, the same for every policy of a seed), each
//! arrival one request of a client drawn uniformly. The fleet, the work and the network are the
//! sweep's ([`super::policies`]: 4 slots per server, exponential work of mean 40 ms of virtual
//! time at speed 1, 50 µs + U[0, 10 µs) one way). Each request picks its server by its client's
//! policy, with only what that client has seen:
//!
//! - **volley pools** ([`Selector::Pool`], `engine::pool`): `k` = 2, 3, 4 members opened by one
//!   real `NBest` race over `2k` servers, every request through the client's
//!   [`volley_proto::balance::Balancer`] (default settings: race budget 4 per 1,000 requests;
//!   growth past `k` when the client's requests keep more than half its members' slots busy,
//!   up to 256 members), fed by the real `ServerEndpoint`'s expected completion carried by
//!   every reply; the balancer's races run as real races over [`RACE_FANOUT`] servers not in
//!   the pool (a growth by n: `NBest` of n over 2n);
//! - the peers per request: tower's p2c over the client's pending requests and over its
//!   peak-EWMA, Prequal, round-robin (the sweep's models, `engine::peers`), client-side weighted
//!   round robin from ORCA reports and C3 (`engine::reports`);
//! - the references with exact, instant knowledge: SED(3) and JSQ(2).
//!
//! Every run starts empty and runs unmeasured for the longest of `--pool-warmup-ms` of virtual
//! time, `--pool-warmup-requests` requests per client and, for a pool, the time its client
//! needs to race `--pool-warmup-races` times per member ([`PoolWarmup`]), then measures
//! `--policy-sessions` requests. The last two bounds are the pools': a pool replaces a member
//! within a race budget counted in requests (4 per 1,000) and at most once per least gap
//! (100 ms), so from a cold start its membership takes a race or two per member to settle. At
//! 1,000 servers and M = N, where a client sends 64 requests per second, a k = 3 pool's p99 was
//! 573, 332, 321, 336 and 329 ms after 1, 5, 10, 15 and 30 s unmeasured at load 0.85
//! (SED(3)-exact: 270 ms), and 758, 438, 406 and 401 ms after 5, 12, 24 and 48 s at 0.95
//! (SED(3)-exact: 290 ms): 2 races per member (23.5 s at 0.85) settle both.
//!
//! `volley pool k=3N/M` ([`SCALED_NAME`], `--scaled-pool`) is an addition: a pool whose k
//! follows the client's share of the fleet. Its balancer weighs every member per request, so at
//! k = 300 a request costs tens of µs and the pool's warm-up (2 races per member, one per
//! 100 ms) is a minute: it is off by default.

pub mod report;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use anyhow::Context;
use volley_proto::balance::BalanceConfig;
use volley_proto::client::race::RaceTimers;
use volley_proto::{AnswerPolicy, ServiceModel};

use super::SimArgs;
use super::engine::{self, PoolSetup, Selector};
use super::policies::{self, Policy, SLOTS, Workload};
use super::summary;
use crate::harness::results;
use report::{PoolRecord, PoolReport};

/// Servers probed by a race that fills or replaces one member (the sweep's volley fan-out).
pub const RACE_FANOUT: usize = 3;
/// The opening race probes this many servers per member: its `k` earliest offers of `2k`.
pub const OPEN_FANOUT_PER_MEMBER: usize = 2;
/// C3's replica group: servers ranked per request.
pub const C3_REPLICAS: usize = 3;
/// The scaled pool's memberships per server: `k = ⌈SCALED_MEMBERSHIPS × N / M⌉`, so that the
/// `M` pools hold about this many members per server whatever M (what k = 3 holds at M = N).
pub const SCALED_MEMBERSHIPS: usize = 3;
/// The scaled pool's name (its `k` depends on M).
pub const SCALED_NAME: &str = "volley pool k=3N/M";

/// The scaled pool's `k` at `servers` and `clients`.
pub fn scaled_k(servers: usize, clients: usize) -> usize {
    (SCALED_MEMBERSHIPS * servers)
        .div_ceil(clients.max(1))
        .clamp(1, servers / OPEN_FANOUT_PER_MEMBER)
}

/// volley's pool of `k` members with the balancer's defaults.
pub fn pool_policy(k: usize) -> Policy {
    named_pool(format!("volley pool k={k}"), k)
}

fn named_pool(name: String, k: usize) -> Policy {
    Policy {
        name,
        selector: Selector::Pool(PoolSetup {
            answer: AnswerPolicy::paced(),
            capacity: SLOTS,
            service: ServiceModel::default(),
            reservation: volley_proto::server::answer::DEFAULT_RESERVATION,
            timers: RaceTimers::default(),
            balance: BalanceConfig {
                members: k,
                ..BalanceConfig::default()
            },
            open_fanout: OPEN_FANOUT_PER_MEMBER * k,
            race_fanout: RACE_FANOUT,
        }),
    }
}

/// The peers of `sim pools` and the references, in table order.
pub fn peers() -> Vec<Policy> {
    let mut v: Vec<Policy> = policies::peers()
        .into_iter()
        .filter(|p| p.name != "random")
        .collect();
    let at = v
        .iter()
        .position(|p| p.name.ends_with("(ref)"))
        .unwrap_or(v.len());
    v.insert(
        at,
        Policy {
            name: "c3".into(),
            selector: Selector::C3(C3_REPLICAS),
        },
    );
    v.insert(
        at,
        Policy {
            name: "wrr (orca)".into(),
            selector: Selector::Wrr,
        },
    );
    v
}

/// Every policy of a `sim pools` matrix at `servers` and `clients`: the pools of `ks`, the
/// scaled pool when `scaled`, then the peers and the references.
pub fn all(ks: &[usize], scaled: bool, servers: usize, clients: usize) -> Vec<Policy> {
    let mut v: Vec<Policy> = ks.iter().map(|&k| pool_policy(k)).collect();
    if scaled {
        v.push(named_pool(SCALED_NAME.into(), scaled_k(servers, clients)));
    }
    v.extend(peers());
    v
}

/// Whether a run is known in advance to leave queues growing: load ≥ 1; a load-blind spread
/// with servers beyond their capacity (round-robin on the half-slow fleet from load 2/3); a pool
/// whose `max_members` servers, even the fastest, cannot carry one client's requests.
pub fn known_unstable(
    policy: &Policy,
    workload: Workload,
    load: f64,
    servers: usize,
    clients: usize,
) -> bool {
    if load >= 1.0 {
        return true;
    }
    match policy.selector {
        Selector::RoundRobin => policies::random_unstable(workload, load),
        Selector::Pool(p) => {
            let s = policies::setup(
                servers,
                workload,
                load,
                policy,
                1,
                Duration::ZERO,
                0,
                &[],
                1,
            );
            let fastest = s.groups.iter().map(|g| g.speed).fold(0.0, f64::max);
            let per_client = s.arrival_rate / clients as f64;
            let most = p.balance.max_members.max(p.balance.members);
            let pool = most as f64 * f64::from(SLOTS) * fastest / s.mean_service;
            per_client >= pool
        }
        _ => false,
    }
}

/// How a run warms up: at least `time` of virtual time, at least `requests` requests per
/// client, and for a pool, at least the time its client needs to race `races_per_member` times
/// per member.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolWarmup {
    /// Least unmeasured virtual time.
    pub time: Duration,
    /// Least unmeasured requests per client.
    pub requests: u64,
    /// Pools: least races per member before the measurement.
    pub races_per_member: f64,
}

impl PoolWarmup {
    /// The warm-up of a run of `policy` with `clients` clients sending `rate` requests per ns
    /// in all, ns. A pool's client races at most once per `min_race_gap` and, within its budget,
    /// `races_per_1000` times per 1,000 requests: the slower of the two sets its race rate.
    pub fn nanos(&self, policy: &Policy, clients: usize, rate: f64) -> u64 {
        let per_client = rate / clients.max(1) as f64;
        let mut t = (self.time.as_nanos() as f64).max(self.requests as f64 / per_client);
        if let Selector::Pool(p) = policy.selector {
            let b = p.balance;
            let by_gap = 1.0 / (b.min_race_gap.as_nanos() as f64).max(1.0);
            let by_budget = per_client * f64::from(b.races_per_1000) / 1000.0;
            let race_rate = by_gap.min(by_budget);
            if race_rate > 0.0 {
                t = t.max(self.races_per_member * grown_members(&b, per_client) as f64 / race_rate);
            }
        }
        t as u64
    }
}

/// The members a pool of `b` grows to when its client sends `per_client` requests per ns:
/// enough that the slots its requests keep busy (their rate × the mean service time) are
/// `grow_at` of their slots, between `members` and `max_members`.
pub fn grown_members(b: &BalanceConfig, per_client: f64) -> usize {
    let in_flight = per_client * policies::MEAN_SERVICE;
    let per_member = b.grow_at * f64::from(SLOTS);
    let k = if per_member > 0.0 {
        (in_flight / per_member).ceil() as usize
    } else {
        0
    };
    k.clamp(b.members, b.max_members.max(b.members))
}

/// One run: `measured` requests after `warmup` from empty.
#[allow(clippy::too_many_arguments)]
pub fn run_one(
    servers: usize,
    workload: Workload,
    load: f64,
    policy: &Policy,
    measured: u64,
    warmup: PoolWarmup,
    seed: u64,
    clients: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<PoolRecord> {
    let t0 = Instant::now();
    let mut s = policies::setup(
        servers,
        workload,
        load,
        policy,
        measured,
        warmup.time,
        seed,
        &[],
        clients,
    );
    s.warmup = warmup.nanos(policy, clients, s.arrival_rate);
    if let Some(pb) = progress {
        pb.set_length(s.measured + (s.warmup as f64 * s.arrival_rate) as u64);
    }
    let out = engine::run(&s, progress)?;
    let pool = out.pool;
    let (before, after) = out.backlog;
    let backlog_growth = (after as f64 - before as f64) / out.measured.max(1) as f64;
    let wall = t0.elapsed().as_secs_f64();
    Ok(PoolRecord {
        workload,
        load,
        policy: policy.name.clone(),
        pool_k: match policy.selector {
            Selector::Pool(p) => Some(p.balance.members),
            _ => None,
        },
        clients,
        seed,
        unstable: known_unstable(policy, workload, load, servers, clients),
        warmup_ms: s.warmup as f64 / 1e6,
        backlog_growth,
        races_per_1000: if matches!(policy.selector, Selector::Pool(_)) && pool.span_requests > 0 {
            1000.0 * pool.span_races as f64 / pool.span_requests as f64
        } else {
            f64::NAN
        },
        pool,
        summary: summary::summarise(out, SLOTS, wall),
    })
}

/// The run of a fixed pool with the same `k` as `p`, the scaled pool, renamed; `None` for any
/// other policy or when there is none.
fn same_pool(
    runs: &[PoolRecord],
    p: &Policy,
    w: Workload,
    load: f64,
    m: usize,
    seed: u64,
) -> Option<PoolRecord> {
    let Selector::Pool(setup) = p.selector else {
        return None;
    };
    if p.name != SCALED_NAME {
        return None;
    }
    let k = setup.balance.members;
    let mut r = runs
        .iter()
        .find(|r| {
            r.pool_k == Some(k)
                && r.policy != SCALED_NAME
                && r.workload == w
                && r.load == load
                && r.clients == m
                && r.seed == seed
        })?
        .clone();
    r.policy = SCALED_NAME.into();
    Some(r)
}

/// Runs `volley-lab sim pools`: every workload × load × M × policy × seed, a line per run on
/// stderr, the tables on stdout, and with `--out` `results.json` and `results.md`.
pub fn run_pools(args: &SimArgs) -> anyhow::Result<()> {
    let quick = args.quick;
    let servers = args.servers.unwrap_or(if quick { 1_000 } else { 10_000 });
    anyhow::ensure!(servers >= 2, "at least 2 servers");
    anyhow::ensure!(!args.seeds.is_empty(), "at least one seed");
    let measured = args
        .policy_sessions
        .unwrap_or(if quick { 30_000 } else { 300_000 });
    anyhow::ensure!(measured > 0, "measured requests must be > 0");
    let warmup = PoolWarmup {
        time: Duration::from_millis(args.pool_warmup_ms.unwrap_or(if quick {
            1_000
        } else {
            3_000
        })),
        requests: args.pool_warmup_requests,
        races_per_member: args.pool_warmup_races,
    };
    anyhow::ensure!(
        warmup.races_per_member >= 0.0 && warmup.races_per_member.is_finite(),
        "--pool-warmup-races must be a number ≥ 0"
    );
    let workloads = super::or_default(&args.workloads, &[Workload::HalfSlow]);
    let loads = super::or_default(&args.loads, &[0.85, 0.95]);
    for &l in &loads {
        anyhow::ensure!(l > 0.0 && l < 2.0, "load must be in (0, 2), not {l}");
    }
    let clients = super::or_default(
        &args.clients,
        &[(servers / 100).max(1), (servers / 10).max(1), servers],
    );
    for &c in &clients {
        anyhow::ensure!(
            (1..=engine::pool::MAX_POOL_CLIENTS).contains(&c),
            "clients must be 1..={}",
            engine::pool::MAX_POOL_CLIENTS
        );
    }
    let ks = super::or_default(&args.pool_ks, &[2, 3, 4]);
    for &k in &ks {
        anyhow::ensure!(
            k >= 1 && OPEN_FANOUT_PER_MEMBER * k <= servers,
            "k must be 1..={}",
            servers / OPEN_FANOUT_PER_MEMBER
        );
    }
    super::only(args, all(&ks, args.scaled_pool, servers, servers))?;
    let started = Instant::now();
    let mut runs: Vec<PoolRecord> = Vec::new();
    for &w in &workloads {
        for &load in &loads {
            for &m in &clients {
                let list = super::only(args, all(&ks, args.scaled_pool, servers, m))?;
                for p in &list {
                    for &seed in &args.seeds {
                        // The scaled pool at an M where it is one of the fixed pools: the same run.
                        if let Some(same) = same_pool(&runs, p, w, load, m, seed) {
                            runs.push(same);
                            continue;
                        }
                        let pb = super::bar(
                            0,
                            format!("{} {load} M={m} {}", w.name(), p.name),
                            args.no_progress,
                        );
                        let r = run_one(servers, w, load, p, measured, warmup, seed, m, Some(&pb))
                            .with_context(|| {
                                format!("{} load {load} M={m} {} seed {seed}", w.name(), p.name)
                            })?;
                        pb.finish_and_clear();
                        eprintln!(
                            "{} load {load} M={m} {} seed {seed}: p99 {:.1} ms, drift {:+.1} %{} \
                             ({:.1} s)",
                            w.name(),
                            p.name,
                            r.summary.p99_ms,
                            100.0 * r.summary.drift,
                            if r.races_per_1000.is_nan() {
                                String::new()
                            } else {
                                format!(", {:.2} races per 1,000 requests", r.races_per_1000)
                            },
                            r.summary.wall_s
                        );
                        runs.push(r);
                    }
                }
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let report = PoolReport::new(servers, &args.seeds, measured, warmup, runs, wall);
    let md = report.markdown();
    println!("{md}");
    eprintln!("sim pools finished in {wall:.1} s");
    if let Some(dir) = &args.out {
        results::out_dir(dir)?;
        results::write(dir, &md, &report)?;
        eprintln!("wrote {0}/results.json and {0}/results.md", dir.display());
    }
    Ok(())
}
