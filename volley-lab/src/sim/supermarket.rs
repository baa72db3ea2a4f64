//! Mitzenmacher's supermarket model, run on the real protocol: Poisson arrivals at rate λ per
//! server, exponential work of mean 1 (one virtual second), single-slot FIFO servers, and each
//! arrival joins the shortest of `d` queues drawn uniformly at random, ties uniform.
//!
//! "Joins the shortest" is decided by the protocol, not by the simulator reading queue lengths:
//! the session races `d` random [`volley_proto::ServerEndpoint`]s with the `Earliest` policy, and
//! each server answers `Paced` by its expected completion time (L5) with its queue length as its
//! app load. The servers have one slot and state their service time (one unit,
//! `ServiceModel::Fixed`), so a server with `n` jobs expects `(n + 1)` units; the pace divisor
//! (`PACE_DIVISOR` = 10⁷) turns each unit into 100 ns of answer delay, larger than the largest
//! sum of the two legs' jitter (2 × 20 ns), so the earliest offer always comes from a shortest
//! queue, and among equally short queues the jitter picks uniformly. The delay cap (1 ms, 10⁴
//! queued jobs) is never reached. Reservations are off (`reservation = 0`), since they would count
//! an offer as load for a while and so perturb pure JSQ(d). The selection overhead (probe legs of
//! 1 µs plus the pace delay, then the INIT leg) is measured and reported; it is ~10⁻⁶ of the mean
//! service time.
//!
//! Time in system is measured at the server (INIT arrival → departure), in mean service times.
//!
//! Warm-up: every server starts from the model's stationary queue-length distribution — for
//! d = 1 the exact M/M/1 one, P(N ≥ i) = λ^i, for d ≥ 2 the mean-field fixed point
//! P(N ≥ i) = λ^((dⁱ − 1)/(d − 1)) — and then runs `warmup` time units unmeasured. Starting from
//! empty would need thousands of time units at λ = 0.9, d = 1 (the M/M/1 relaxation time is
//! ~1/(1 − √λ)² ≈ 370). The arrivals after the warm-up are measured; arrivals stop after the last
//! measured one (with FIFO queues, later arrivals cannot change an earlier job's time).

use std::time::{Duration, Instant};

use serde::Serialize;
use volley_proto::client::race::RaceTimers;
use volley_proto::{AnswerPolicy, SelectionPolicy, ServiceModel};

use super::engine::{self, Group, ProtocolSetup, Selector, Setup};
use super::summary::{self, Summary};
use crate::harness::stats::mean_sd_min_max;

/// One mean service time, ns.
pub const UNIT: f64 = 1e9;
/// Paced `max_delay` of the supermarket servers: never reached.
pub const PACE_MAX_DELAY: Duration = Duration::from_millis(1);
/// Paced `divisor`: one unit of expected completion (one job ahead) is 100 ns of answer delay.
pub const PACE_DIVISOR: u32 = 10_000_000;
/// One-way delay, fixed part (ns).
pub const NET_BASE: u64 = 1_000;
/// One-way delay, jitter bound (ns): two legs' worth stays below the 100 ns pace step.
pub const NET_JITTER: u64 = 20;
/// The accuracy the check asks for.
pub const TOLERANCE: f64 = 0.02;

/// Expected time in system, in mean service times: 1/(1 − λ) for d = 1, and
/// Σ_{i ≥ 1} λ^((dⁱ − d)/(d − 1)) for d ≥ 2 (Mitzenmacher 1996).
pub fn expected(lambda: f64, d: u32) -> f64 {
    if d <= 1 {
        return 1.0 / (1.0 - lambda);
    }
    let d = f64::from(d);
    let mut sum = 0.0;
    for i in 1..64 {
        let exponent = (d.powi(i) - d) / (d - 1.0);
        let term = lambda.powf(exponent);
        sum += term;
        if term < 1e-16 {
            break;
        }
    }
    sum
}

/// P(queue ≥ i) for i = 1, 2, … in the stationary state (see the module docs), until < 1e-12.
pub fn stationary_tail(lambda: f64, d: u32) -> Vec<f64> {
    let mut tail = Vec::new();
    for i in 1..100_000 {
        let s = if d <= 1 {
            lambda.powi(i)
        } else {
            let d = f64::from(d);
            lambda.powf((d.powi(i) - 1.0) / (d - 1.0))
        };
        if s < 1e-12 || !s.is_finite() {
            break;
        }
        tail.push(s);
    }
    tail
}

/// The setup of one supermarket cell.
pub fn setup(servers: usize, lambda: f64, d: u32, sessions: u64, warmup: f64, seed: u64) -> Setup {
    Setup {
        groups: vec![Group {
            servers,
            speed: 1.0,
            initial_tail: stationary_tail(lambda, d),
        }],
        slots: 1,
        mean_service: UNIT,
        arrival_rate: lambda * servers as f64 / UNIT,
        warmup: (warmup * UNIT) as u64,
        measured: sessions,
        net_base: NET_BASE,
        net_jitter: NET_JITTER,
        selector: Selector::Protocol(ProtocolSetup {
            answer: AnswerPolicy::Paced {
                max_delay: PACE_MAX_DELAY,
                divisor: PACE_DIVISOR,
            },
            client: SelectionPolicy::Earliest,
            fanout: d as usize,
            capacity: 1,
            service: ServiceModel::Fixed(Duration::from_nanos(UNIT as u64)),
            reservation: Duration::ZERO,
            timers: RaceTimers::default(),
        }),
        clients: 1,
        seed,
        herd_window: 1_000_000,
        keep_latencies: false,
        sample_every: 0,
    }
}

/// One seed of one cell.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRun {
    /// The seed.
    pub seed: u64,
    /// Mean time in system, in mean service times.
    pub mean: f64,
    /// Mean selection overhead (arrival → job at its server), in mean service times.
    pub overhead: f64,
    /// Protocol-level summary.
    pub summary: Summary,
}

/// One cell (λ, d) over all seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Arrival rate per server.
    pub lambda: f64,
    /// Choices.
    pub d: u32,
    /// The model's value.
    pub expected: f64,
    /// Measured sessions per seed.
    pub sessions: u64,
    /// Per seed.
    pub runs: Vec<SeedRun>,
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds (NaN with one seed).
    pub sd: f64,
    /// Smallest seed mean.
    pub min: f64,
    /// Largest seed mean.
    pub max: f64,
    /// (mean − expected) / expected.
    pub rel_err: f64,
    /// Whether |rel_err| ≤ 2 %.
    pub within: bool,
}

/// Runs one cell over `seeds`.
pub fn run_cell(
    servers: usize,
    lambda: f64,
    d: u32,
    sessions: u64,
    warmup: f64,
    seeds: &[u64],
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<Cell> {
    let mut runs = Vec::new();
    for &seed in seeds {
        let s = setup(servers, lambda, d, sessions, warmup, seed);
        if let Some(pb) = progress {
            pb.inc_length(s.measured + (s.warmup as f64 * s.arrival_rate) as u64);
        }
        let t0 = Instant::now();
        let out = engine::run(&s, progress)?;
        let wall = t0.elapsed().as_secs_f64();
        let completed = out.completed.max(1) as f64;
        let mean = out.sum_in_system / completed / UNIT;
        let overhead = out.sum_to_server / completed / UNIT;
        anyhow::ensure!(
            out.failed == 0,
            "supermarket run λ={lambda} d={d} seed={seed}: {} sessions failed",
            out.failed
        );
        runs.push(SeedRun {
            seed,
            mean,
            overhead,
            summary: summary::summarise(out, 1, wall),
        });
    }
    let means: Vec<f64> = runs.iter().map(|r| r.mean).collect();
    let (mean, sd, min, max) = mean_sd_min_max(&means);
    let expected = expected(lambda, d);
    let rel_err = (mean - expected) / expected;
    Ok(Cell {
        lambda,
        d,
        expected,
        sessions,
        runs,
        mean,
        sd,
        min,
        max,
        rel_err,
        within: rel_err.abs() <= TOLERANCE,
    })
}

/// The supermarket table in Markdown.
pub fn markdown(cells: &[Cell], servers: usize, warmup: f64) -> String {
    let mut s = String::new();
    let seeds = cells.first().map_or(0, |c| c.runs.len());
    s.push_str(&format!(
        "### Supermarket check: {servers} servers, {seeds} seed(s) per cell, warm-up {warmup} \
         time units from the stationary state\n\n"
    ));
    s.push_str(
        "Time in system in mean service times; measured = mean over seeds (min–max, sd across \
         seeds); error vs the exact value.\n\n",
    );
    s.push_str(
        "| λ | d | expected | measured | min–max | sd | error | ≤ 2 % | sessions/seed | overhead |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for c in cells {
        let overhead = c.runs.iter().map(|r| r.overhead).sum::<f64>() / c.runs.len().max(1) as f64;
        s.push_str(&format!(
            "| {:.2} | {} | {:.4} | {:.4} | {:.4}–{:.4} | {} | {:+.2} % | {} | {} | {:.1e} |\n",
            c.lambda,
            c.d,
            c.expected,
            c.mean,
            c.min,
            c.max,
            if c.sd.is_nan() {
                "n/a".to_string()
            } else {
                format!("{:.4}", c.sd)
            },
            100.0 * c.rel_err,
            if c.within { "yes" } else { "**NO**" },
            c.sessions,
            overhead,
        ));
    }
    let wall: f64 = cells
        .iter()
        .flat_map(|c| &c.runs)
        .map(|r| r.summary.wall_s)
        .sum();
    let simulated: u64 = cells
        .iter()
        .flat_map(|c| &c.runs)
        .map(|r| r.summary.simulated)
        .sum();
    s.push_str(&format!(
        "\noverhead: mean selection overhead (arrival → job at its server: probe legs, pace delay, \
         INIT leg), in mean service times. {simulated} sessions simulated in {wall:.1} s \
         ({:.0} sessions/s).\n",
        simulated as f64 / wall.max(1e-9)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_matches_the_published_table() {
        let table = [
            (0.5, [2.00, 1.27, 1.13]),
            (0.7, [3.33, 1.61, 1.36]),
            (0.9, [10.0, 2.61, 2.03]),
            (0.99, [100.0, 5.43, 3.86]),
        ];
        for (lambda, row) in table {
            for (d, want) in (1..=3).zip(row) {
                let got = expected(lambda, d);
                assert!(
                    (got - want).abs() <= 0.006 * want,
                    "λ={lambda} d={d}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn stationary_tail_is_decreasing_from_lambda() {
        for d in 1..=3 {
            let t = stationary_tail(0.9, d);
            assert!((t[0] - 0.9).abs() < 1e-12, "P(N ≥ 1) = λ");
            assert!(t.windows(2).all(|w| w[1] < w[0]));
            // Mean queue length Σ P(N ≥ i) = λ × time in system (Little).
            let mean: f64 = t.iter().sum();
            assert!((mean - 0.9 * expected(0.9, d)).abs() < 1e-6, "d={d}");
        }
    }
}
