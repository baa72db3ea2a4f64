//! volley's own policies at fleet scale, with the shape of `select`'s fleet: every server has 4
//! slots and a capacity of 16 sessions (4 in service + 12 queued; the 17th session's INIT is
//! refused and its client races again), work is exponential with a mean of 20 ms of virtual time
//! at speed 1 (sleep-like: a slot is simply occupied), and the network is 50 µs one way plus a
//! uniform jitter below 10 µs.
//!
//! Policies: every answer policy (immediate, paced, gated; protocol defaults: paced
//! `max_delay` 5 ms, gated `max_hold` 200 ms, reservation 5 ms) × client policy (earliest;
//! window with the defaults 2 ms and quantile 0.75) × fan-out d = 2, 3, plus d = 8 for two of
//! them; and two references that run no protocol: `random` (one uniformly random server, no load
//! information) and `jsq2-ideal` (the shorter of two random queues by their true length, no
//! delay). The references have no capacity: their queues are unbounded.
//!
//! Warm-up. Started empty, a fleet at load 0.95 is still filling after a second of virtual time
//! (50 mean service times, 1.9 M sessions at 10,000 servers): policies that spread sessions
//! without regard to load relax like an M/M/4 queue near saturation, over seconds. So every
//! run but `random` starts from an estimate of its steady state: a **pilot** run of the same
//! policy on a smaller fleet (`pilot_servers`, same workload, load and shape) starts empty, runs
//! `pilot` of virtual time, and samples every server's number of jobs each millisecond over its
//! second half; the full fleet then draws each server's initial jobs from that distribution (per
//! speed group), runs `warmup` unmeasured (which also settles the protocol's transient state:
//! held probes, reservations), and is measured. The fleet is a mean-field system (each session
//! sees d random servers), so its queue-length distribution hardly depends on the fleet's size;
//! the table's `drift` column (second half vs first half of the measured sessions) shows what is
//! left of any trend. `random` starts from each server's exact M/M/4 stationary distribution
//! when that server's ρ < 1; on the half-slow fleet the slow servers' ρ under random assignment
//! is 1.5 × load, so from load 0.67 up they are unstable: they start empty, their queues grow
//! for the whole run, and the figures depend on the run's length (flagged in the table).
//!
//! Load = arrival rate ÷ the fleet's service rate (Σ slots × speed ÷ mean work).

use std::time::{Duration, Instant};

use serde::Serialize;
use volley_proto::client::race::RaceTimers;
use volley_proto::{AnswerPolicy, SelectionPolicy};

use super::engine::{self, Group, ProtocolSetup, Selector, Setup, tail_of_histogram};
use super::stats::{self, Summary};

/// Slots per server.
pub const SLOTS: u32 = 4;
/// Sessions a server takes (in service + queued).
pub const CAPACITY: u32 = 16;
/// Mean work at speed 1, ns.
pub const MEAN_SERVICE: f64 = 20e6;
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
        capacity: CAPACITY,
        reservation: volley_proto::server::answer::DEFAULT_RESERVATION,
        timers: RaceTimers::default(),
        max_failovers: 8,
    })
}

/// The policy list: the two references, every answer × client policy at each of `fanouts`,
/// and the d = 8 extras when `extras`.
pub fn policies(fanouts: &[usize], extras: bool) -> Vec<Policy> {
    let mut v = vec![
        Policy {
            name: "random (ref)".into(),
            selector: Selector::Random,
        },
        Policy {
            name: "jsq2-ideal (ref)".into(),
            selector: Selector::IdealJsq(2),
        },
    ];
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
                v.push(Policy {
                    name: format!("{}/{cname} d={d}", answer.name()),
                    selector: protocol(answer, client, d),
                });
            }
        }
    }
    if extras {
        v.push(Policy {
            name: "paced/earliest d=8".into(),
            selector: protocol(AnswerPolicy::paced(), SelectionPolicy::Earliest, 8),
        });
        v.push(Policy {
            name: "immediate/window d=8".into(),
            selector: protocol(AnswerPolicy::Immediate, SelectionPolicy::window(), 8),
        });
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
        seed,
        herd_window: HERD_WINDOW,
        keep_latencies: true,
        sample_every: 0,
    }
}

/// Whether `random` on this workload and load leaves some servers unstable.
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
    /// Seed.
    pub seed: u64,
    /// Whether the run is unstable (load ≥ 1, or `random` with servers beyond their capacity):
    /// queues grow, figures depend on the run's length.
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
    if warmup.pilot_servers == 0 || matches!(policy.selector, Selector::Random) {
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

/// Runs one policy on one workload and load: the pilot, then the measured run.
#[allow(clippy::too_many_arguments)]
pub fn run_one(
    servers: usize,
    workload: Workload,
    load: f64,
    policy: &Policy,
    sessions: u64,
    warmup: &Warmup,
    seed: u64,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<Record> {
    let t0 = Instant::now();
    let initial = pilot_tails(workload, load, policy, warmup, seed)?;
    let s = setup(
        servers,
        workload,
        load,
        policy,
        sessions,
        warmup.warmup,
        seed,
        &initial,
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
        seed,
        unstable: load >= 1.0
            || (matches!(policy.selector, Selector::Random) && random_unstable(workload, load)),
        summary: stats::summarise(out, SLOTS, wall),
    })
}

fn f(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{x:.digits$}")
    }
}

/// One Markdown table per (workload, load).
pub fn markdown(records: &[Record], servers: usize, sessions: u64, warmup: &Warmup) -> String {
    let mut s = format!(
        "### volley's policies: {servers} servers × {SLOTS} slots (capacity {CAPACITY} sessions), \
         work exp. mean {} ms, network {} µs + U[0, {} µs) one way, protocol defaults (paced \
         max_delay 5 ms, gated max_hold 200 ms, reservation {} ms, window 2 ms / q 0.75, probe \
         retransmission 250 ms); {sessions} measured sessions per run, started from a {} ms \
         pilot on {} servers, then {} ms unmeasured\n\n",
        MEAN_SERVICE / 1e6,
        NET_BASE / 1000,
        NET_JITTER / 1000,
        volley_proto::server::answer::DEFAULT_RESERVATION.as_millis(),
        warmup.pilot.as_millis(),
        warmup.pilot_servers,
        warmup.warmup.as_millis(),
    );
    s.push_str(
        "Latency: end to end (arrival → reply, selection included), ms. sel: mean selection time \
         (probe RTT + answer delay + retries), ms. util max/mean: busiest server's utilisation over \
         the mean; util groups: mean utilisation per group (half-slow: fast / slow). herd: most \
         picks of one server within 1 ms / the same for uniform random picks. retx: share of \
         sessions whose probes timed out and were re-sent (250 ms). refused: INITs refused (full) \
         per session. failed: sessions with no server. drift: mean latency of the second half of \
         the measured sessions vs the first, relative (steady state: near 0).\n",
    );
    let seeded = records.iter().any(|r| r.seed != records[0].seed);
    let mut keys: Vec<(Workload, f64)> = Vec::new();
    for r in records {
        if !keys.iter().any(|(w, l)| *w == r.workload && *l == r.load) {
            keys.push((r.workload, r.load));
        }
    }
    for (w, l) in keys {
        s.push_str(&format!("\n#### {} fleet, load {l}\n\n", w.name()));
        s.push_str(
            "| policy | p50 | p90 | p99 | p99.9 | mean | sel | util max/mean | util groups | herd | \
             probes/sess | retx | refused | failed | drift |\n",
        );
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in records.iter().filter(|r| r.workload == w && r.load == l) {
            let m = &r.summary;
            let groups: Vec<String> = m.util_by_group.iter().map(|u| f(*u, 2)).collect();
            s.push_str(&format!(
                "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |\n",
                r.policy,
                match (r.unstable, seeded) {
                    (false, false) => String::new(),
                    (true, false) => " (unstable)".into(),
                    (false, true) => format!(" (seed {})", r.seed),
                    (true, true) => format!(" (seed {}, unstable)", r.seed),
                },
                f(m.p50_ms, 2),
                f(m.p90_ms, 2),
                f(m.p99_ms, 2),
                f(m.p999_ms, 2),
                f(m.mean_ms, 2),
                f(m.selection_mean_ms, 3),
                f(m.util_max_over_mean, 2),
                groups.join(" / "),
                m.herd_max,
                m.herd_max_uniform,
                f(m.probes_per_session, 2),
                f(m.retransmit_share * 100.0, 3) + " %",
                f(m.refused_per_session, 4),
                m.failed,
                f(m.drift * 100.0, 1) + " %",
            ));
        }
    }
    let wall: f64 = records.iter().map(|r| r.summary.wall_s).sum();
    let simulated: u64 = records.iter().map(|r| r.summary.simulated).sum();
    s.push_str(&format!(
        "\n{} runs, {simulated} sessions simulated in {wall:.1} s ({:.0} sessions/s).\n",
        records.len(),
        simulated as f64 / wall.max(1e-9)
    ));
    s
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
