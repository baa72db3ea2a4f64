//! `select --zones` (issue 23, Z3): the fleet of `select` in three zones — 6, 5 and 5 servers ×
//! 4 slots — with one-way delays of 0.25 ms inside a zone and 10, 20 and 30 ms between the three
//! pairs, applied to every datagram in both directions by the delay relay ([`relay`]). M = 16
//! clients in the zones in proportion (6/5/5). Four workloads ([`model::ZoneWorkload`]), sessions
//! of ~10 requests and of one, the peers and volley ([`peers`]); one trace per
//! (workload, session kind, seed) replayed by every policy against a fresh fleet and relay.
//!
//! Where things run: the fleet on CPU 0 (as in `select`), the clients' runtime and the relay
//! thread on CPU 1. The relay's CPU counts on the client side of the validity check: a run whose
//! clients plus relay, or whose fleet, used more than `--cpu-limit` of a core in the measured
//! period is marked invalid and left out of every figure.

pub mod model;
pub mod peers;
pub mod relay;
pub mod report;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use volley::StaticKeypair;

use super::SelectArgs;
use super::fleet::Fleet;
use super::policy::{Policy, RunCtx, VolleyKnobs};
use super::run::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use super::workload::{FleetShape, Requests};
use crate::harness::cpu;
use crate::harness::process::pin_to;
use crate::harness::results;
use model::{ZoneSpec, ZoneTrace, ZoneWorkload, Zones};
use peers::{ZCtx, ZPolicy};
use relay::{ErrorStats, Relay, Route};
use report::ZRun;

/// The volley configurations of the zone matrix: the path-aware one (issue 23, Z1/Z2), the
/// primary, whose goals the report computes, and `select`'s primary of today beside it.
pub const ZONE_VOLLEY: [&str; 2] = ["volley-path-paced-d4", "volley-window-immediate-d3"];

/// Independent clients of the zone matrix.
pub const ZONE_CLIENTS: usize = 16;

/// Warm-up and measured period of a run (full matrix; `--quick` halves and shortens them).
const WARMUP: Duration = Duration::from_millis(1000);
const MEASURE: Duration = Duration::from_millis(3000);
const QUICK_WARMUP: Duration = Duration::from_millis(500);
const QUICK_MEASURE: Duration = Duration::from_millis(1200);
/// What a run costs besides its arrivals: starting the fleet and relay, draining the sessions
/// in flight (for the printed estimate).
const RUN_OVERHEAD: Duration = Duration::from_millis(1500);

/// Everything a zone invocation runs.
pub struct ZonePlan {
    pub shape: FleetShape,
    pub knobs: VolleyKnobs,
    pub seeds: Vec<u64>,
    pub workloads: Vec<ZoneWorkload>,
    pub requests: Vec<Requests>,
    pub policies: Vec<ZPolicy>,
    pub primary: Option<ZPolicy>,
    pub warmup: Duration,
    pub measure: Duration,
    pub clients: usize,
    pub pin: bool,
    pub cpu_limit: f64,
}

impl ZonePlan {
    pub fn new(args: &SelectArgs) -> anyhow::Result<ZonePlan> {
        anyhow::ensure!(
            args.servers >= 3 && args.slots >= 1,
            "zones need at least 3 servers of 1 slot"
        );
        let policies: Vec<ZPolicy> = if args.policies.is_empty() {
            let mut p = ZPolicy::PEERS.to_vec();
            p.extend(
                ZONE_VOLLEY
                    .iter()
                    .filter_map(|n| Policy::parse(n).map(ZPolicy::Volley)),
            );
            p
        } else {
            args.policies
                .iter()
                .map(|n| {
                    ZPolicy::parse(n).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown zone policy {n:?}; known: {}, and every volley configuration of select",
                            ZPolicy::PEERS.map(|p| p.name()).join(", ")
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?
        };
        let primary = ZONE_VOLLEY
            .iter()
            .filter_map(|n| ZPolicy::parse(n))
            .find(|p| policies.contains(p))
            .or_else(|| policies.iter().copied().find(ZPolicy::is_volley));
        let (warmup, measure) = if args.quick {
            (QUICK_WARMUP, QUICK_MEASURE)
        } else {
            (WARMUP, MEASURE)
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(ZonePlan {
            shape: FleetShape {
                servers: args.servers,
                slots: args.slots,
                mean_work: Duration::from_secs_f64(args.mean_work_ms / 1e3),
            },
            knobs: VolleyKnobs {
                capacity: args.capacity.unwrap_or(args.slots as u32),
                pace_max: Duration::from_secs_f64(args.pace_max_ms / 1e3),
                pace_divisor: args.pace_divisor,
                max_hold: Duration::from_secs_f64(args.max_hold_ms / 1e3),
                reservation: Duration::from_secs_f64(args.reservation_ms / 1e3),
            },
            seeds: (0..args.seeds.unwrap_or(if args.quick { 1 } else { 5 }))
                .map(|k| args.first_seed + k)
                .collect(),
            workloads: if args.zone_workloads.is_empty() {
                ZoneWorkload::ALL.to_vec()
            } else {
                args.zone_workloads.clone()
            },
            requests: if args.zone_requests.is_empty() {
                vec![Requests::About10, Requests::One]
            } else {
                args.zone_requests
                    .iter()
                    .map(|&r| match r {
                        1 => Ok(Requests::One),
                        10 => Ok(Requests::About10),
                        _ => Err(anyhow::anyhow!("--zone-requests takes 1 and 10")),
                    })
                    .collect::<anyhow::Result<_>>()?
            },
            policies,
            primary,
            warmup: args.warmup_ms.map_or(warmup, Duration::from_millis),
            measure: args.measure_ms.map_or(measure, Duration::from_millis),
            clients: args.clients.first().copied().unwrap_or(ZONE_CLIENTS),
            pin: !args.no_pin && cpus >= 2,
            cpu_limit: args.cpu_limit,
        })
    }

    /// Runs in the plan.
    pub fn runs(&self) -> usize {
        self.workloads.len() * self.requests.len() * self.seeds.len() * self.policies.len()
    }

    /// About how long the plan takes, s.
    pub fn expected_s(&self) -> f64 {
        self.runs() as f64 * (self.warmup + self.measure + RUN_OVERHEAD).as_secs_f64()
    }
}

/// Runs the zone matrix the flags ask for and writes its report and plots into `--out`.
pub fn run(args: &SelectArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = ZonePlan::new(args)?;
    results::out_dir(&args.out)?;
    if plan.pin {
        pin_to(1);
    }
    eprintln!(
        "volley-lab select --zones: {} runs ({} workloads × {} session kinds × {} seeds × {} policies), about {:.0} s ({:.1} min); results in {}",
        plan.runs(),
        plan.workloads.len(),
        plan.requests.len(),
        plan.seeds.len(),
        plan.policies.len(),
        plan.expected_s(),
        plan.expected_s() / 60.0,
        args.out.display()
    );
    // The relay's own error against the nominal delay, before any load: in-zone and the
    // longest path.
    let pin_relay = plan.pin.then_some(1);
    let calibration = vec![
        (
            model::IN_ZONE,
            relay::calibrate(model::IN_ZONE, 400, pin_relay)?,
        ),
        (
            model::BETWEEN[2],
            relay::calibrate(model::BETWEEN[2], 60, pin_relay)?,
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let zones = Zones::new(plan.shape.servers, plan.clients);
    let mut runs: Vec<ZRun> = Vec::new();
    let mut pooled = report::Pooled::default();
    let total = plan.runs();
    for &workload in &plan.workloads {
        for &requests in &plan.requests {
            for &seed in &plan.seeds {
                let spec = ZoneSpec {
                    shape: plan.shape,
                    workload,
                    requests,
                    clients: plan.clients,
                    seed,
                    warmup: plan.warmup,
                    measure: plan.measure,
                };
                let trace = spec.draw(&zones);
                let mut order = plan.policies.clone();
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                    seed ^ ((workload as u64) << 16) ^ requests.mean() as u64,
                ));
                for policy in order {
                    let (run, latencies) = one(&rt, &plan, &spec, &trace, &zones, policy, &key)?;
                    eprintln!(
                        "[{}/{total}] {} {} seed {} {}: p50 {:.1} ms, p99 {:.1} ms, {} timeouts, {:.0}% outside{}",
                        runs.len() + 1,
                        workload.name(),
                        requests.name(),
                        seed,
                        run.policy,
                        run.p50_ms,
                        run.p99_ms,
                        run.timeouts,
                        run.outside * 100.0,
                        if run.invalid { " INVALID (cpu)" } else { "" }
                    );
                    if !run.invalid {
                        pooled.add(&run, latencies);
                    }
                    runs.push(run);
                }
            }
        }
    }
    report::write(
        &args.out,
        &plan,
        &zones,
        &runs,
        &pooled,
        &calibration,
        started,
    )
}

/// One run: `policy` replays `trace` against a fresh fleet and relay.
fn one(
    rt: &tokio::runtime::Runtime,
    plan: &ZonePlan,
    spec: &ZoneSpec,
    trace: &ZoneTrace,
    zones: &Zones,
    policy: ZPolicy,
    key: &StaticKeypair,
) -> anyhow::Result<(ZRun, Vec<f64>)> {
    let answering = match policy {
        ZPolicy::Volley(p) => p.answering(&plan.knobs),
        _ => Policy::P2cPeakEwma.answering(&plan.knobs),
    };
    let fleet = Fleet::start(
        plan.shape,
        trace.schedule.clone(),
        answering,
        key.clone(),
        plan.pin.then_some(0),
    )?;
    let n = plan.shape.servers;
    // Routes: per client zone, per server, its volley endpoint, load port and request path.
    let mut routes = Vec::with_capacity(3 * n * 3);
    for z in 0..3 {
        for targets in [&fleet.addrs, &fleet.load_ports, &fleet.direct_ports] {
            for (s, &target) in targets.iter().enumerate() {
                routes.push(Route {
                    target,
                    delay: zones.path(z, s),
                });
            }
        }
    }
    let relay = Relay::start(&routes, plan.pin.then_some(1))?;
    let at = |z: usize, kind: usize| -> Vec<SocketAddr> {
        relay.addrs[(z * 3 + kind) * n..(z * 3 + kind + 1) * n].to_vec()
    };
    let mut run = RunCtx::new(
        plan.clients,
        Arc::new(trace.schedule.clone()),
        &fleet,
        plan.shape.slots,
        plan.shape.mean_work.mul_f64(spec.requests.mean()),
        spec.seed,
        (CONNECT_TIMEOUT, REQUEST_TIMEOUT),
    );
    for z in 0..3 {
        for (s, a) in at(z, 0).into_iter().enumerate() {
            run.alias(a, s as u16);
        }
    }
    // volley pays its race and handshake less what rides in the INIT: the first request.
    run.early = true;
    let ctx = Arc::new(ZCtx {
        run: Arc::new(run),
        zones: zones.clone(),
        volley: [at(0, 0), at(1, 0), at(2, 0)],
        load: [at(0, 1), at(1, 1), at(2, 1)],
        direct: [at(0, 2), at(1, 2), at(2, 2)],
        mean_work: plan.shape.mean_work,
        requests: spec.requests.mean(),
    });
    let states = fleet.state.clone();
    let relay_cpu = Arc::clone(&relay.cpu_us);
    let (warm_at, end_at) = (fleet.start + trace.warmup, fleet.start + trace.end);
    let jobs = trace.jobs.clone();
    let (driven, busy, usage, relay_us) = rt.block_on(async {
        let snap = tokio::spawn(async move {
            let read = |s: &[Arc<super::fleet::ServerState>]| -> Vec<u64> {
                s.iter()
                    .map(|x| x.busy_us.load(Ordering::Relaxed))
                    .collect()
            };
            tokio::time::sleep_until(warm_at.into()).await;
            let (a, cpu_a, r_a) = (
                read(&states),
                cpu::sample(),
                relay_cpu.load(Ordering::Relaxed),
            );
            tokio::time::sleep_until(end_at.into()).await;
            let (b, cpu_b, r_b) = (
                read(&states),
                cpu::sample(),
                relay_cpu.load(Ordering::Relaxed),
            );
            let busy: Vec<u64> = a.iter().zip(b).map(|(a, b)| b.saturating_sub(*a)).collect();
            (busy, cpu::between(&cpu_a, &cpu_b), r_b.saturating_sub(r_a))
        });
        let driven = peers::drive(policy, Arc::clone(&ctx), jobs).await?;
        let (busy, usage, relay_us) = snap.await?;
        anyhow::Ok((driven, busy, usage, relay_us))
    })?;
    fleet.stop()?;
    let relay_stats = relay.stop()?;
    let period = (trace.end - trace.warmup).as_secs_f64();
    let relay_cores = relay_us as f64 / 1e6 / period;
    let lateness = ErrorStats::of_ns(relay_stats.lateness_ns.iter().map(|&x| x as f64).collect());
    Ok(report::summarise(report::RunInput {
        spec,
        trace,
        zones,
        policy: &policy.name(),
        driven: &driven,
        jobs: &trace.jobs,
        busy_us: &busy,
        slots: plan.shape.slots,
        client_cpu: usage.client + relay_cores,
        fleet_cpu: (usage.fleet - relay_cores).max(0.0),
        relay_cpu: relay_cores,
        relay_lateness: lateness,
        relay_dropped: relay_stats.send_dropped,
        cpu_limit: plan.cpu_limit,
    }))
}
