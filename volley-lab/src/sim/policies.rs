//! volley's policies and the peers' at fleet scale, with the shape of `select`'s fleet: every
//! server has 4 slots, work is exponential with a mean of 40 ms of virtual time at speed 1
//! (sleep-like: a slot is simply occupied), and the network is 50 µs one way plus a uniform
//! jitter below 10 µs.
//!
//! volley: answer policy (immediate, paced, gated; protocol defaults: paced 1/32 of the expected
//! completion up to 10 ms, gated `max_hold` 200 ms, reservation 5 ms, the service time measured)
//! × client policy (earliest; window with the defaults 2 ms and quantile 0.75) × fan-out. The
//! endpoints' capacity is the 4 slots. The peers (`engine::peers`), each client with only its own
//! state: round-robin, tower-style p2c over pending requests and over peak-EWMA, Prequal-style
//! probing; and references with exact, instant knowledge: random, JSQ(d), SED(d).
//!
//! **Clients.** Every arrival belongs to one of `clients` independent clients, drawn uniformly.
//! Only the local-view peers care: volley's race and the references choose from live or exact
//! state whatever the client.
//!
//! Warm-up. Started empty, a fleet at load 0.95 is still filling after a second of virtual time:
//! policies that spread sessions without regard to load relax like an M/M/4 queue near
//! saturation, over seconds. So volley's runs and the exact references start from an estimate of
//! their steady state: a **pilot** run of the same policy on a smaller fleet (`pilot_servers`,
//! same workload, load and shape) starts empty, runs `pilot` of virtual time, and samples every
//! server's number of jobs each millisecond over its second half; the full fleet then draws each
//! server's initial jobs from that distribution (per speed group), runs `warmup` unmeasured
//! (which also settles the protocol's transient state: held probes, reservations, measured
//! service times), and is measured. The local-view peers need their own state to mature too (a
//! client's view of 10,000 servers fills slowly), and it cannot be carried over from a pilot: they
//! start empty and run `local_warmup` (default 3 s of virtual time, 75 mean service times)
//! unmeasured. The table's `drift` column (second half vs first half of the measured sessions)
//! shows what is left of any trend; a policy that overloads some servers has queues that grow for
//! the whole run (flagged `unstable` when known in advance: random and round-robin on the
//! half-slow fleet from load 2/3).
//!
//! Load = arrival rate ÷ the fleet's service rate (Σ slots × speed ÷ mean work).

use std::time::{Duration, Instant};

use serde::Serialize;
use volley_proto::client::race::RaceTimers;
use volley_proto::{AnswerPolicy, SelectionPolicy, ServiceModel};

use super::engine::{self, Group, P2cMetric, ProtocolSetup, Selector, Setup, tail_of_histogram};
use super::summary::{self, Summary};

/// Slots per server (and the endpoints' capacity).
pub const SLOTS: u32 = 4;
/// Mean work at speed 1, ns.
pub const MEAN_SERVICE: f64 = 40e6;
/// The decay of tower's peak-EWMA in its examples (and `select`).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);
/// One-way network delay, fixed part, ns.
pub const NET_BASE: u64 = 50_000;
/// One-way network jitter bound, ns.
pub const NET_JITTER: u64 = 10_000;
/// Herding window, ns.
pub const HERD_WINDOW: u64 = 1_000_000;

/// A fleet shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every server at speed 1.
    Homogeneous,
    /// The first half at speed 1, the second half at speed 0.5.
    HalfSlow,
}

impl Workload {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Homogeneous => "homogeneous",
            Self::HalfSlow => "half-slow",
        }
    }

    fn speeds(self) -> &'static [f64] {
        match self {
            Self::Homogeneous => &[1.0],
            Self::HalfSlow => &[1.0, 0.5],
        }
    }
}

/// A named selector.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The name in tables.
    pub name: String,
    /// What it runs.
    pub selector: Selector,
}

fn protocol(answer: AnswerPolicy, client: SelectionPolicy, fanout: usize) -> Selector {
    Selector::Protocol(ProtocolSetup {
        answer,
        client,
        fanout,
        capacity: SLOTS,
        service: ServiceModel::default(),
        reservation: volley_proto::server::answer::DEFAULT_RESERVATION,
        timers: RaceTimers::default(),
    })
}

/// Whether a selector keeps state per client (and so starts empty, with the long warm-up).
pub fn is_local(selector: &Selector) -> bool {
    matches!(
        selector,
        Selector::RoundRobin | Selector::P2c(_) | Selector::Prequal
    )
}

impl Policy {
    fn new(name: &str, selector: Selector) -> Policy {
        Policy {
            name: name.into(),
            selector,
        }
    }
}

/// The references with exact, instant knowledge of every queue (and, SED, every speed).
fn exact_references() -> [Policy; 2] {
    [
        Policy::new("jsq2-exact (ref)", Selector::IdealJsq(2)),
        Policy::new("sed3-exact (ref)", Selector::IdealSed(3)),
    ]
}

/// The peers of docs/BENCHMARKS.md §3, each client with its own state, and the exact references.
pub fn peers() -> Vec<Policy> {
    let default_rtt = Duration::from_nanos(MEAN_SERVICE as u64);
    let peak_ewma = P2cMetric::PeakEwma {
        default_rtt,
        decay: EWMA_DECAY,
    };
    let mut v = vec![
        Policy::new("random", Selector::Random),
        Policy::new("round-robin", Selector::RoundRobin),
        Policy::new("p2c-pending", Selector::P2c(P2cMetric::Pending)),
        Policy::new("p2c-peakewma", Selector::P2c(peak_ewma)),
        Policy::new("prequal", Selector::Prequal),
    ];
    v.extend(exact_references());
    v
}

/// The sweep over clients (docs/BENCHMARKS.md §3): the peers, the references, and volley's core
/// configurations.
pub fn sweep() -> Vec<Policy> {
    let mut v = peers();
    for (name, answer, client) in [
        (
            "volley paced/earliest d=3",
            AnswerPolicy::paced(),
            SelectionPolicy::Earliest,
        ),
        (
            "volley immediate/window d=3",
            AnswerPolicy::Immediate,
            SelectionPolicy::window(),
        ),
    ] {
        v.push(Policy::new(name, protocol(answer, client, 3)));
    }
    v
}

/// The policy list: the two references, every answer × client policy at each of `fanouts`,
/// and the d = 8 extras when `extras`.
pub fn policies(fanouts: &[usize], extras: bool) -> Vec<Policy> {
    let mut v = vec![Policy::new("random (ref)", Selector::Random)];
    v.extend(exact_references());
    let answers = [
        AnswerPolicy::Immediate,
        AnswerPolicy::paced(),
        AnswerPolicy::gated(),
    ];
    let clients = [
        ("earliest", SelectionPolicy::Earliest),
        ("window", SelectionPolicy::window()),
    ];
    for answer in answers {
        for (cname, client) in clients {
            for &d in fanouts {
                v.push(Policy::new(
                    &format!("{}/{cname} d={d}", answer.name()),
                    protocol(answer, client, d),
                ));
            }
        }
    }
    if extras {
        v.push(Policy::new(
            "paced/earliest d=8",
            protocol(AnswerPolicy::paced(), SelectionPolicy::Earliest, 8),
        ));
        v.push(Policy::new(
            "immediate/window d=8",
            protocol(AnswerPolicy::Immediate, SelectionPolicy::window(), 8),
        ));
    }
    v
}

/// P(N ≥ i), i ≥ 1, of an M/M/c queue with offered load `a` erlangs; empty if unstable.
pub fn mmc_tail(a: f64, c: u32) -> Vec<f64> {
    let c_f = f64::from(c);
    let rho = a / c_f;
    if !(0.0..1.0).contains(&rho) {
        return Vec::new();
    }
    // Unnormalised π_k: a^k / k! up to c, then geometric with ratio ρ.
    let mut p = Vec::new();
    let mut term = 1.0;
    for k in 0..=c {
        if k > 0 {
            term *= a / f64::from(k);
        }
        p.push(term);
    }
    let head: f64 = p.iter().sum();
    let beyond = term * rho / (1.0 - rho);
    let total = head + beyond;
    let mut tail = Vec::new();
    // P(N ≥ i) for i = 1..=c from the head, then term ρ^(i−c) / (1−ρ) × π_c.
    let mut ge = 1.0;
    for pk in p.iter().take(c as usize) {
        ge -= pk / total;
        tail.push(ge.max(0.0));
    }
    let mut i = 1;
    loop {
        let s = term / total * rho.powi(i) / (1.0 - rho);
        if s < 1e-12 || i > 100_000 {
            break;
        }
        tail.push(s);
        i += 1;
    }
    tail
}

/// The setup of one run, starting from `initial` (per group, P(jobs ≥ i); empty: start
/// empty), except `random`, which starts from its exact M/M/4 distribution where stable.
#[allow(clippy::too_many_arguments)]
pub fn setup(
    servers: usize,
    workload: Workload,
    load: f64,
    policy: &Policy,
    sessions: u64,
    warmup: Duration,
    seed: u64,
    initial: &[Vec<f64>],
    clients: usize,
) -> Setup {
    let speeds = workload.speeds();
    let per_group = servers / speeds.len();
    let mut groups: Vec<Group> = speeds
        .iter()
        .map(|&speed| Group {
            servers: per_group,
            speed,
            initial_tail: Vec::new(),
        })
        .collect();
    if let Some(last) = groups.last_mut() {
        last.servers += servers - per_group * speeds.len();
    }
    let service_rate: f64 = groups
        .iter()
        .map(|g| g.servers as f64 * f64::from(SLOTS) * g.speed)
        .sum::<f64>()
        / MEAN_SERVICE;
    let arrival_rate = load * service_rate;
    if let Selector::Random = policy.selector {
        let per_server = arrival_rate / servers as f64;
        for g in &mut groups {
            g.initial_tail = mmc_tail(per_server * MEAN_SERVICE / g.speed, SLOTS);
        }
    } else {
        for (g, tail) in groups.iter_mut().zip(initial) {
            g.initial_tail.clone_from(tail);
        }
    }
    Setup {
        groups,
        slots: SLOTS,
        mean_service: MEAN_SERVICE,
        arrival_rate,
        warmup: warmup.as_nanos() as u64,
        measured: sessions,
        net_base: NET_BASE,
        net_jitter: NET_JITTER,
        selector: policy.selector,
        clients,
        seed,
        herd_window: HERD_WINDOW,
        keep_latencies: true,
        sample_every: 0,
    }
}

/// Whether a load-blind spread (random, round-robin) on this workload and load leaves some
/// servers unstable.
pub fn random_unstable(workload: Workload, load: f64) -> bool {
    let mean_speed = workload.speeds().iter().sum::<f64>() / workload.speeds().len() as f64;
    let min_speed = workload
        .speeds()
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    load * mean_speed / min_speed >= 1.0
}

/// One run's record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Workload.
    pub workload: Workload,
    /// Offered load.
    pub load: f64,
    /// Policy name.
    pub policy: String,
    /// Independent clients.
    pub clients: usize,
    /// Seed.
    pub seed: u64,
    /// Whether the run is unstable (load ≥ 1, or a load-blind spread with servers beyond their
    /// capacity): queues grow, figures depend on the run's length.
    pub unstable: bool,
    /// Metrics.
    pub summary: Summary,
}

/// How a run is warmed up.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Warmup {
    /// Servers of the pilot fleet (0: no pilot, start empty).
    pub pilot_servers: usize,
    /// Virtual time the pilot runs (its second half is sampled).
    pub pilot: Duration,
    /// Unmeasured time of the full run after its start from the pilot's distribution.
    pub warmup: Duration,
    /// Unmeasured time of a run of a local-view peer, which starts empty.
    pub local_warmup: Duration,
}

/// The pilot of a run (see the module docs): per group, P(jobs ≥ i) over the second half of a
/// run of `warmup.pilot` on `warmup.pilot_servers` servers started empty.
pub fn pilot_tails(
    workload: Workload,
    load: f64,
    policy: &Policy,
    warmup: &Warmup,
    seed: u64,
) -> anyhow::Result<Vec<Vec<f64>>> {
    if warmup.pilot_servers == 0
        || matches!(policy.selector, Selector::Random)
        || is_local(&policy.selector)
    {
        return Ok(Vec::new());
    }
    let half = warmup.pilot / 2;
    let mut s = setup(
        warmup.pilot_servers,
        workload,
        load,
        policy,
        1,
        half,
        seed ^ 0x9170_7000,
        &[],
        1,
    );
    s.measured = ((half.as_nanos() as f64 * s.arrival_rate) as u64).max(1);
    s.keep_latencies = false;
    s.sample_every = 1_000_000;
    let out = engine::run(&s, None)?;
    Ok(out
        .queue_hist
        .iter()
        .map(|h| tail_of_histogram(h))
        .collect())
}

/// Runs one policy on one workload and load with `clients` independent clients: the pilot,
/// then the measured run.
#[allow(clippy::too_many_arguments)]
pub fn run_one(
    servers: usize,
    workload: Workload,
    load: f64,
    policy: &Policy,
    sessions: u64,
    warmup: &Warmup,
    seed: u64,
    clients: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<Record> {
    let t0 = Instant::now();
    let initial = pilot_tails(workload, load, policy, warmup, seed)?;
    let warm = if is_local(&policy.selector) {
        warmup.local_warmup
    } else {
        warmup.warmup
    };
    let s = setup(
        servers, workload, load, policy, sessions, warm, seed, &initial, clients,
    );
    if let Some(pb) = progress {
        pb.set_length(s.measured + (s.warmup as f64 * s.arrival_rate) as u64);
    }
    let out = engine::run(&s, progress)?;
    let wall = t0.elapsed().as_secs_f64();
    Ok(Record {
        workload,
        load,
        policy: policy.name.clone(),
        clients,
        seed,
        unstable: load >= 1.0
            || (matches!(policy.selector, Selector::Random | Selector::RoundRobin)
                && random_unstable(workload, load)),
        summary: summary::summarise(out, SLOTS, wall),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmc_tail_is_a_distribution() {
        let t = mmc_tail(3.8, 4);
        assert!(t[0] > 0.0 && t[0] < 1.0);
        assert!(t.windows(2).all(|w| w[1] <= w[0]));
        // Mean number in system of M/M/4 at a = 3.8 by Little: L = a + Lq, Lq from Erlang C.
        let mean: f64 = t.iter().sum();
        assert!(mean > 3.8 && mean < 30.0, "{mean}");
        assert!(mmc_tail(4.0, 4).is_empty(), "unstable: none");
        // c = 1: geometric.
        let g = mmc_tail(0.5, 1);
        assert!((g[0] - 0.5).abs() < 1e-12 && (g[1] - 0.25).abs() < 1e-12);
    }

    #[test]
    fn random_on_half_slow_is_unstable_from_two_thirds() {
        assert!(!random_unstable(Workload::HalfSlow, 0.5));
        assert!(random_unstable(Workload::HalfSlow, 0.7));
        assert!(!random_unstable(Workload::Homogeneous, 0.95));
    }
}
