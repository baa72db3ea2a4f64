//! Metrics of one run, their median and min–max over seeds, and the Markdown table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use volley::ServerStats;

use super::policy::{Outcome, Record};
use super::workload::{Requests, Schedule, Workload};

/// Everything measured in one run (one policy, one cell, one seed), over the sessions scheduled
/// in the measured period. Scalars that can be undefined or infinite (a percentile that falls on
/// a timed-out session, a median of nothing) are written as the strings `"inf"` and `"nan"` in
/// JSON, so the journal reads back exactly what was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub workload: Workload,
    #[serde(with = "float")]
    pub load: f64,
    pub requests: Requests,
    /// Independent clients.
    pub clients: usize,
    pub policy: String,
    pub seed: u64,
    /// The client thread or the fleet used more than the CPU limit ([`super::CPU_LIMIT`] unless
    /// `--cpu-limit` says otherwise) of a core in the measured period: the run measured the lab,
    /// and no figure counts it.
    pub invalid_cpu: bool,
    /// Sessions scheduled in the measured period.
    pub sessions: usize,
    pub ok: usize,
    pub failed: usize,
    pub timeouts: usize,
    /// End-to-end latency from the scheduled arrival to the last reply, ms; sessions that
    /// timed out count as infinitely late (`"inf"` in JSON), failed ones are left out.
    #[serde(with = "float")]
    pub p50_ms: f64,
    #[serde(with = "float")]
    pub p90_ms: f64,
    #[serde(with = "float")]
    pub p99_ms: f64,
    #[serde(with = "float")]
    pub p999_ms: f64,
    #[serde(with = "float")]
    pub mean_ms: f64,
    /// Successful sessions over sessions scheduled.
    #[serde(with = "float")]
    pub goodput: f64,
    /// Scheduled arrival to session established, median, ms.
    #[serde(with = "float")]
    pub connect_p50_ms: f64,
    /// The winning offer's answer time (probe RTT plus pacing), median, ms.
    #[serde(with = "float")]
    pub answer_p50_ms: f64,
    #[serde(with = "float")]
    pub probes_per_session: f64,
    #[serde(with = "float")]
    pub probe_bytes_per_session: f64,
    /// Most picks on one server within 1 ms, summed over windows, over the same sum expected of
    /// uniform random picks (1 = as random; lower = spread better than random).
    #[serde(with = "float")]
    pub herding: f64,
    /// Per server: slot time worked over slot time available in the measured period.
    pub utilisation: Vec<f64>,
    /// Per server: its share of the fleet's capacity.
    pub capacity_share: Vec<f64>,
    /// Per server: its share of the work done.
    pub work_share: Vec<f64>,
    /// Recovery workload: from the drop's start to the end of the last 250 ms bucket whose p99
    /// exceeded 1.5× the pre-drop p99, seconds.
    pub recovery_s: Option<f64>,
    /// Server counters summed over the fleet (whole run).
    pub withheld: u64,
    pub held: u64,
    pub hold_dropped: u64,
    /// Offers sent while every slot was busy (answered late, not withheld: L6).
    pub busy_offers: u64,
    pub init_refused: u64,
    /// CPU used in the measured period, in cores: the client thread (every policy's sessions),
    /// the fleet (its thread and its servers' timer threads), and each CPU's busy share.
    #[serde(with = "float")]
    pub client_cpu: f64,
    #[serde(with = "float")]
    pub fleet_cpu: f64,
    pub cpu_busy: Vec<f64>,
}

/// The inputs of a summary besides the records.
pub struct RunMeta<'a> {
    pub workload: Workload,
    pub load: f64,
    pub requests: Requests,
    pub clients: usize,
    pub policy: String,
    pub seed: u64,
    pub warmup: Duration,
    pub end: Duration,
    pub schedule: &'a Schedule,
    pub busy_us: Vec<u64>,
    pub slots: usize,
    pub servers: usize,
    pub capacity_share: Vec<f64>,
    pub stats: &'a [ServerStats],
    pub cpu: super::cpu::Usage,
    /// Above this share of a core on either side the run is invalid.
    pub cpu_limit: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// The latencies (ms) of the measured sessions: successful ones, and timeouts as infinity.
pub fn latencies(records: &[Record], warmup: Duration, end: Duration) -> Vec<f64> {
    let (lo, hi) = (warmup.as_micros() as u64, end.as_micros() as u64);
    let mut v: Vec<f64> = records
        .iter()
        .filter(|r| r.at_us >= lo && r.at_us < hi)
        .filter_map(|r| match (r.outcome, r.done_us) {
            (Outcome::Ok, Some(d)) => Some(d.saturating_sub(r.at_us) as f64 / 1e3),
            (Outcome::Timeout, _) => Some(f64::INFINITY),
            _ => None,
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

pub fn summarise(records: &[Record], meta: RunMeta<'_>) -> RunSummary {
    let (lo, hi) = (meta.warmup.as_micros() as u64, meta.end.as_micros() as u64);
    let measured: Vec<&Record> = records
        .iter()
        .filter(|r| r.at_us >= lo && r.at_us < hi)
        .collect();
    let lat = latencies(records, meta.warmup, meta.end);
    let count = |o| measured.iter().filter(|r| r.outcome == o).count();
    let (ok, failed, timeouts) = (
        count(Outcome::Ok),
        count(Outcome::Failed),
        count(Outcome::Timeout),
    );
    let finite: Vec<f64> = lat.iter().copied().filter(|x| x.is_finite()).collect();
    let mean_ms = if finite.is_empty() {
        f64::NAN
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    };
    let connect: Vec<f64> = measured
        .iter()
        .filter_map(|r| {
            r.connected_us
                .map(|c| c.saturating_sub(r.at_us) as f64 / 1e3)
        })
        .collect();
    let answer: Vec<f64> = measured
        .iter()
        .filter_map(|r| r.answer_us.map(|a| a as f64 / 1e3))
        .collect();
    let n = measured.len().max(1) as f64;
    let probes = measured.iter().map(|r| r.probes as f64).sum::<f64>() / n;
    let probe_bytes = measured.iter().map(|r| r.probe_bytes as f64).sum::<f64>() / n;
    let span = meta.end.saturating_sub(meta.warmup).as_secs_f64().max(1e-9);
    let utilisation: Vec<f64> = meta
        .busy_us
        .iter()
        .map(|&b| b as f64 / 1e6 / (meta.slots as f64 * span))
        .collect();
    let busy_total: f64 = meta.busy_us.iter().map(|&b| b as f64).sum::<f64>().max(1.0);
    let work_share = meta
        .busy_us
        .iter()
        .map(|&b| b as f64 / busy_total)
        .collect();
    let recovery_s = (meta.workload == Workload::Recovery)
        .then(|| recovery(records, meta.schedule, meta.warmup, meta.end))
        .flatten();
    let sum = |f: fn(&ServerStats) -> u64| meta.stats.iter().map(f).sum::<u64>();
    RunSummary {
        workload: meta.workload,
        load: meta.load,
        requests: meta.requests,
        clients: meta.clients,
        policy: meta.policy,
        seed: meta.seed,
        invalid_cpu: meta.cpu.client > meta.cpu_limit || meta.cpu.fleet > meta.cpu_limit,
        sessions: measured.len(),
        ok,
        failed,
        timeouts,
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
        p999_ms: percentile(&lat, 0.999),
        mean_ms,
        goodput: ok as f64 / n,
        connect_p50_ms: median_of(connect),
        answer_p50_ms: median_of(answer),
        probes_per_session: probes,
        probe_bytes_per_session: probe_bytes,
        herding: herding(&measured, meta.servers),
        utilisation,
        capacity_share: meta.capacity_share,
        work_share,
        recovery_s,
        withheld: sum(|s| s.probes_withheld_full + s.probes_withheld_under_load),
        held: sum(|s| s.probes_held),
        hold_dropped: sum(|s| s.probes_dropped_hold_expired + s.probes_dropped_queue_full),
        busy_offers: sum(|s| s.offers_busy),
        init_refused: sum(|s| s.init_refused_full + s.init_under_load),
        client_cpu: meta.cpu.client,
        fleet_cpu: meta.cpu.fleet,
        cpu_busy: meta.cpu.busy,
    }
}

/// Picks per 1 ms window (by the time the session was established): the busiest server's count,
/// summed, over what uniform random picks among the servers would give (Monte Carlo, seeded).
fn herding(measured: &[&Record], servers: usize) -> f64 {
    let mut windows: HashMap<u64, HashMap<u16, u32>> = HashMap::new();
    for r in measured {
        if let (Some(c), Some(s)) = (r.connected_us, r.server) {
            *windows.entry(c / 1000).or_default().entry(s).or_default() += 1;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0x4e7d);
    let mut expected_cache: HashMap<u32, f64> = HashMap::new();
    let (mut seen, mut expected) = (0.0, 0.0);
    for w in windows.values() {
        let n: u32 = w.values().sum();
        if n < 2 {
            continue;
        }
        seen += *w.values().max().unwrap_or(&0) as f64;
        expected += *expected_cache.entry(n).or_insert_with(|| {
            let draws = 400;
            let mut total = 0u64;
            let mut counts = vec![0u32; servers.max(1)];
            for _ in 0..draws {
                counts.iter_mut().for_each(|c| *c = 0);
                for _ in 0..n {
                    counts[rng.gen_range(0..servers.max(1))] += 1;
                }
                total += *counts.iter().max().unwrap_or(&0) as u64;
            }
            total as f64 / draws as f64
        });
    }
    if expected > 0.0 {
        seen / expected
    } else {
        f64::NAN
    }
}

/// See [`RunSummary::recovery_s`]. None when there is no drop in the measured period.
fn recovery(
    records: &[Record],
    schedule: &Schedule,
    warmup: Duration,
    end: Duration,
) -> Option<f64> {
    let drop_at = schedule.event_at?;
    let before = latencies(records, warmup, drop_at);
    let base = percentile(&before, 0.99);
    if !base.is_finite() {
        return None;
    }
    let threshold = 1.5 * base;
    let bucket = Duration::from_millis(250);
    let mut t = drop_at;
    let mut last_bad = None;
    while t < end {
        let next = (t + bucket).min(end);
        let l = latencies(records, t, next);
        if !l.is_empty() && percentile(&l, 0.99) > threshold {
            last_bad = Some(next);
        }
        t = next;
    }
    Some(last_bad.map_or(0.0, |b| b.saturating_sub(drop_at).as_secs_f64()))
}

/// Median and min–max over seeds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        // The lower median for an even count, so that it is a measured value.
        let median = v[(v.len() - 1) / 2];
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// One policy in one cell, over its valid seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    pub workload: Workload,
    pub load: f64,
    pub requests: Requests,
    pub clients: usize,
    pub policy: String,
    /// Valid runs (the figures are over these).
    pub seeds: usize,
    /// Runs in all, valid or not.
    pub runs: usize,
    pub p50_ms: Spread,
    pub p90_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    pub goodput: Spread,
    pub failed: Spread,
    pub timeouts: Spread,
    pub herding: Spread,
    pub probes_per_session: Spread,
    pub probe_bytes_per_session: Spread,
    pub answer_p50_ms: Spread,
    pub max_utilisation: Spread,
    pub fleet_cpu: Spread,
    pub client_cpu: Spread,
    pub recovery_s: Option<Spread>,
}

/// A cell: workload, load (‰), requests, clients.
type CellKey = (Workload, u64, Requests, usize);

fn cell_of(r: &RunSummary) -> CellKey {
    (
        r.workload,
        (r.load * 1000.0).round() as u64,
        r.requests,
        r.clients,
    )
}

/// Groups runs by cell and policy, keeping first-seen order; the figures are over valid runs.
pub fn aggregate(runs: &[RunSummary]) -> Vec<Aggregate> {
    let mut order: Vec<(CellKey, String)> = Vec::new();
    let mut groups: HashMap<(CellKey, String), Vec<&RunSummary>> = HashMap::new();
    for r in runs {
        let key = (cell_of(r), r.policy.clone());
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    order
        .into_iter()
        .map(|key| {
            let all = &groups[&key];
            let g: Vec<&RunSummary> = all.iter().copied().filter(|r| !r.invalid_cpu).collect();
            let s = |f: &dyn Fn(&RunSummary) -> f64| Spread::of(g.iter().map(|r| f(r)));
            Aggregate {
                workload: key.0.0,
                load: all[0].load,
                requests: key.0.2,
                clients: key.0.3,
                policy: key.1.clone(),
                seeds: g.len(),
                runs: all.len(),
                p50_ms: s(&|r| r.p50_ms),
                p90_ms: s(&|r| r.p90_ms),
                p99_ms: s(&|r| r.p99_ms),
                p999_ms: s(&|r| r.p999_ms),
                goodput: s(&|r| r.goodput),
                failed: s(&|r| r.failed as f64),
                timeouts: s(&|r| r.timeouts as f64),
                herding: s(&|r| r.herding),
                probes_per_session: s(&|r| r.probes_per_session),
                probe_bytes_per_session: s(&|r| r.probe_bytes_per_session),
                answer_p50_ms: s(&|r| r.answer_p50_ms),
                max_utilisation: s(&|r| r.utilisation.iter().copied().fold(0.0, f64::max)),
                fleet_cpu: Spread::of(all.iter().map(|r| r.fleet_cpu)),
                client_cpu: Spread::of(all.iter().map(|r| r.client_cpu)),
                recovery_s: (!g.is_empty() && g.iter().all(|r| r.recovery_s.is_some()))
                    .then(|| s(&|r| r.recovery_s.unwrap_or(f64::NAN))),
            }
        })
        .collect()
}

/// The cells run at more than one client count, with those counts in order.
pub fn swept_cells(aggs: &[Aggregate]) -> Vec<(Workload, f64, Requests, Vec<usize>)> {
    let mut out: Vec<(Workload, f64, Requests, Vec<usize>)> = Vec::new();
    for a in aggs {
        let found = out.iter_mut().find(|(w, l, r, _)| {
            *w == a.workload && (*l - a.load).abs() < 1e-9 && *r == a.requests
        });
        match found {
            Some((_, _, _, ms)) => {
                if !ms.contains(&a.clients) {
                    ms.push(a.clients);
                }
            }
            None => out.push((a.workload, a.load, a.requests, vec![a.clients])),
        }
    }
    out.retain(|(.., ms)| ms.len() > 1);
    for (.., ms) in &mut out {
        ms.sort_unstable();
    }
    out
}

/// Per policy of a swept cell: the median p99 at each client count of `swept_cells` (None where
/// the policy has no valid run there).
pub fn p99_by_clients(
    aggs: &[Aggregate],
    w: Workload,
    l: f64,
    r: Requests,
) -> Vec<(String, Vec<(usize, f64)>)> {
    let mut out: Vec<(String, Vec<(usize, f64)>)> = Vec::new();
    for a in aggs
        .iter()
        .filter(|a| a.workload == w && (a.load - l).abs() < 1e-9 && a.requests == r)
    {
        if a.seeds == 0 {
            continue;
        }
        match out.iter_mut().find(|(p, _)| *p == a.policy) {
            Some((_, v)) => v.push((a.clients, a.p99_ms.median)),
            None => out.push((a.policy.clone(), vec![(a.clients, a.p99_ms.median)])),
        }
    }
    out.retain(|(_, v)| v.len() > 1);
    for (_, v) in &mut out {
        v.sort_by_key(|(m, _)| *m);
    }
    out
}

/// The per-seed ratio `a / b` of a figure of two policies in one cell, over the seeds where both
/// ran validly. Infinite when `a` is a timeout and `b` is not.
fn ratios(
    runs: &[RunSummary],
    cell: CellKey,
    a: &str,
    b: &[&str],
    f: impl Fn(&RunSummary) -> f64,
) -> Vec<f64> {
    let mut seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let find = |seed: u64, p: &str| {
        runs.iter()
            .find(|r| cell_of(r) == cell && r.seed == seed && r.policy == p && !r.invalid_cpu)
    };
    seeds
        .into_iter()
        .filter_map(|seed| {
            let x = find(seed, a)?;
            // The better (lower) of the reference policies, each run validly.
            let ys: Vec<f64> = b.iter().filter_map(|p| find(seed, p)).map(&f).collect();
            if ys.len() != b.len() {
                return None;
            }
            let y = ys.into_iter().fold(f64::INFINITY, f64::min);
            let xv = f(x);
            Some(if xv.is_infinite() && y.is_infinite() {
                1.0
            } else {
                xv / y
            })
        })
        .collect()
}

fn ratio_cell(v: &[f64]) -> String {
    if v.is_empty() {
        return "no valid pair".into();
    }
    let s = Spread::of(v.iter().copied());
    let f = |x: f64| {
        if x.is_infinite() {
            "∞".to_string()
        } else {
            format!("{x:.2}")
        }
    };
    format!(
        "{} ({}–{}), {} seeds",
        f(s.median),
        f(s.min),
        f(s.max),
        v.len()
    )
}

fn met(v: &[f64], ok: impl Fn(f64) -> bool) -> &'static str {
    if v.is_empty() {
        "—"
    } else if ok(Spread::of(v.iter().copied()).median) {
        if v.iter().all(|x| ok(*x)) {
            "yes"
        } else {
            "yes (median; not every seed)"
        }
    } else {
        "**no**"
    }
}

/// The goals of BENCHMARKS.md §2 for `primary` (volley's configuration fixed before the run),
/// as per-seed ratios, median (min–max) over the seeds where every policy involved ran validly.
pub fn goals(runs: &[RunSummary], primary: &str) -> String {
    let p2c = ["p2c-pending", "p2c-peakewma"];
    let balancers = [
        "random",
        "round-robin",
        "p2c-pending",
        "p2c-peakewma",
        "prequal",
    ];
    let headline = (
        Workload::HalfSlow,
        850,
        Requests::One,
        super::HEADLINE_CLIENTS,
    );
    let central = (Workload::HalfSlow, 850, Requests::One, 1);
    let p99 = |r: &RunSummary| r.p99_ms;
    let mut out = format!(
        "\n## Goals (BENCHMARKS.md §2) for `{primary}`\n\nPer-seed ratios, median (min–max) \
         over the seeds where both sides ran validly. Lower is better unless said.\n\n\
         | goal | measured | met? |\n|---|---|---|\n"
    );
    let mut row = |goal: &str, v: Vec<f64>, ok: &dyn Fn(f64) -> bool| {
        let _ = writeln!(out, "| {goal} | {} | {} |", ratio_cell(&v), met(&v, ok));
    };
    let has = |cell: CellKey| runs.iter().any(|r| cell_of(r) == cell);
    if has(headline) {
        row(
            "headline (half-slow, 0.85, M = 16): p99 ÷ the better tower p2c ≤ 0.5",
            ratios(runs, headline, primary, &p2c, p99),
            &|x| x <= 0.5,
        );
        row(
            "headline: p99 ÷ Prequal-style ≤ 0.85",
            ratios(runs, headline, primary, &["prequal"], p99),
            &|x| x <= 0.85,
        );
        row(
            "headline: p99 ÷ SED oracle ≤ 1.1",
            ratios(runs, headline, primary, &["oracle-sed"], p99),
            &|x| x <= 1.1,
        );
        let herd: Vec<f64> = runs
            .iter()
            .filter(|r| cell_of(r) == headline && r.policy == primary && !r.invalid_cpu)
            .map(|r| r.herding)
            .collect();
        row(
            "headline: herding ≤ 1.5 (1 = as uniform random picks)",
            herd,
            &|x| x <= 1.5,
        );
        let probes: Vec<f64> = runs
            .iter()
            .filter(|r| cell_of(r) == headline && r.policy == primary && !r.invalid_cpu)
            .map(|r| r.probes_per_session)
            .collect();
        row("headline: probes per session ≤ 3", probes, &|x| x <= 3.0);
    }
    if has(central) {
        row(
            "central (M = 1), same cell: p99 ÷ tower p2c PeakEwma ≤ 0.9",
            ratios(runs, central, primary, &["p2c-peakewma"], p99),
            &|x| x <= 0.9,
        );
    }
    // Every workload and load at M = 16.
    let mut cells: Vec<CellKey> = Vec::new();
    for r in runs {
        let c = cell_of(r);
        if c.3 == super::HEADLINE_CLIENTS && c.2 == Requests::One && !cells.contains(&c) {
            cells.push(c);
        }
    }
    if !cells.is_empty() {
        let _ = writeln!(
            out,
            "\nEvery workload and load at M = 16: p99 ÷ the better tower p2c (goal ≤ 1.0), timed-out \
             sessions against the best of the five balancers (goal: no more), and on the sinkhole \
             failed sessions ÷ the fewer of tower p2c's (goal ≤ 1.0). Medians over seeds of \
             per-seed values.\n\n| cell | p99 ÷ better p2c | met? | timeouts − best balancer's | met? | failed ÷ p2c's | met? |\n|---|---|---|---|---|---|---|"
        );
        for c in cells {
            let r = ratios(runs, c, primary, &p2c, p99);
            let excess: Vec<f64> = {
                let mut v = Vec::new();
                let mut seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
                seeds.sort_unstable();
                seeds.dedup();
                for seed in seeds {
                    let get = |p: &str| {
                        runs.iter().find(|r| {
                            cell_of(r) == c && r.seed == seed && r.policy == p && !r.invalid_cpu
                        })
                    };
                    let Some(x) = get(primary) else { continue };
                    let best: Vec<f64> = balancers
                        .iter()
                        .filter_map(|p| get(p))
                        .map(|r| r.timeouts as f64)
                        .collect();
                    if best.len() == balancers.len() {
                        v.push(x.timeouts as f64 - best.into_iter().fold(f64::INFINITY, f64::min));
                    }
                }
                v
            };
            let fails = if c.0 == Workload::Sinkhole {
                let f = ratios(runs, c, primary, &p2c, |r| r.failed as f64);
                format!("{} | {}", ratio_cell(&f), met(&f, |x| x <= 1.0))
            } else {
                "— | —".into()
            };
            let excess_cell = if excess.is_empty() {
                "no valid pair".to_string()
            } else {
                let s = Spread::of(excess.iter().copied());
                format!("{:+.0} ({:+.0}–{:+.0})", s.median, s.min, s.max)
            };
            let _ = writeln!(
                out,
                "| {} {:.2} | {} | {} | {} | {} | {} |",
                c.0.name(),
                c.1 as f64 / 1000.0,
                ratio_cell(&r),
                met(&r, |x| x <= 1.0),
                excess_cell,
                met(&excess, |x| x <= 0.0),
                fails
            );
        }
    }
    out
}

fn ms(x: f64) -> String {
    if x.is_infinite() {
        "timeout".into()
    } else if x.is_nan() {
        "—".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn spread_ms(s: &Spread) -> String {
    format!("{} ({}–{})", ms(s.median), ms(s.min), ms(s.max))
}

/// The Markdown tables: one per cell, policies as rows.
pub fn markdown(aggs: &[Aggregate]) -> String {
    let mut out = String::new();
    let mut cells: Vec<CellKey> = Vec::new();
    for a in aggs {
        let c = (
            a.workload,
            (a.load * 1000.0).round() as u64,
            a.requests,
            a.clients,
        );
        if !cells.contains(&c) {
            cells.push(c);
        }
    }
    let peers = super::policy::Policy::peers().len();
    for (w, l, r, m) in cells {
        let mut rows: Vec<&Aggregate> = aggs
            .iter()
            .filter(|a| {
                a.workload == w
                    && (a.load * 1000.0).round() as u64 == l
                    && a.requests == r
                    && a.clients == m
            })
            .collect();
        // The peers first in their fixed order, then volley's configurations by median p99.
        let all: Vec<String> = super::policy::Policy::all()
            .iter()
            .map(|p| p.name())
            .collect();
        rows.sort_by(|a, b| {
            let rank = |x: &Aggregate| {
                let i = all.iter().position(|n| *n == x.policy).unwrap_or(all.len());
                i.min(peers)
            };
            rank(a)
                .cmp(&rank(b))
                .then(a.p99_ms.median.total_cmp(&b.p99_ms.median))
        });
        let seeds = rows.iter().map(|a| a.runs).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "\n#### {} · load {:.2} · {} request(s) per session · M = {} client(s) · {} seed(s)\n",
            w.name(),
            l as f64 / 1000.0,
            r.name(),
            m,
            seeds
        );
        let recovery = rows.iter().any(|a| a.recovery_s.is_some());
        let _ = write!(
            out,
            "| policy | valid | p50 ms | p90 ms | p99 ms | p99.9 ms | goodput | failed | timeouts | herding | probes/session | answer p50 ms | max util | fleet CPU | client CPU |"
        );
        if recovery {
            out.push_str(" recovery s |");
        }
        out.push('\n');
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        if recovery {
            out.push_str("---|");
        }
        out.push('\n');
        for a in rows {
            if a.seeds == 0 {
                let _ = writeln!(
                    out,
                    "| {} | 0/{} | invalid (cpu) | | | | | | | | | | | {:.2} | {:.2} |{}",
                    a.policy,
                    a.runs,
                    a.fleet_cpu.median,
                    a.client_cpu.median,
                    if recovery { " |" } else { "" }
                );
                continue;
            }
            let _ = write!(
                out,
                "| {} | {}/{} | {} | {} | {} | {} | {:.3} | {:.0} | {:.0} | {:.2} | {:.1} | {} | {:.2} | {:.2} | {:.2} |",
                a.policy,
                a.seeds,
                a.runs,
                ms(a.p50_ms.median),
                ms(a.p90_ms.median),
                spread_ms(&a.p99_ms),
                ms(a.p999_ms.median),
                a.goodput.median,
                a.failed.median,
                a.timeouts.median,
                a.herding.median,
                a.probes_per_session.median,
                ms(a.answer_p50_ms.median),
                a.max_utilisation.median,
                a.fleet_cpu.median,
                a.client_cpu.median,
            );
            if let Some(rs) = a.recovery_s {
                let _ = write!(out, " {:.2} ({:.2}–{:.2}) |", rs.median, rs.min, rs.max);
            } else if recovery {
                out.push_str(" — |");
            }
            out.push('\n');
        }
    }
    out
}

/// JSON for a float that may be infinite or undefined: a number when finite, else `"inf"`,
/// `"-inf"` or `"nan"` (`null` reads as `nan`).
pub mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("nan")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
        Null(()),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(x) => Ok(x),
            Repr::Text(t) => match t.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, \"inf\", \"-inf\" or \"nan\", got {other:?}"
                ))),
            },
            Repr::Null(()) => Ok(f64::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_count_timeouts_as_infinitely_late() {
        let mut v: Vec<f64> = (1..=99).map(|x| x as f64).collect();
        v.push(f64::INFINITY);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(percentile(&v, 0.999).is_infinite());
        let s = Spread::of([3.0, 1.0, 2.0, f64::NAN, 5.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 5.0));
    }

    fn summary(policy: &str, seed: u64, p99: f64, cpu: f64) -> RunSummary {
        RunSummary {
            workload: Workload::HalfSlow,
            load: 0.85,
            requests: Requests::One,
            clients: crate::select::HEADLINE_CLIENTS,
            policy: policy.into(),
            seed,
            invalid_cpu: cpu > crate::select::CPU_LIMIT,
            sessions: 100,
            ok: 100,
            failed: 0,
            timeouts: 0,
            p50_ms: p99 / 4.0,
            p90_ms: p99 / 2.0,
            p99_ms: p99,
            p999_ms: p99,
            mean_ms: p99 / 4.0,
            goodput: 1.0,
            connect_p50_ms: 1.0,
            answer_p50_ms: 0.3,
            probes_per_session: 3.0,
            probe_bytes_per_session: 768.0,
            herding: 1.0,
            utilisation: vec![0.8],
            capacity_share: vec![1.0],
            work_share: vec![1.0],
            recovery_s: None,
            withheld: 0,
            held: 0,
            hold_dropped: 0,
            busy_offers: 0,
            init_refused: 0,
            client_cpu: cpu,
            fleet_cpu: 0.3,
            cpu_busy: vec![],
        }
    }

    #[test]
    fn select_runs_over_the_cpu_limit_are_invalid_and_left_out() {
        let runs = vec![
            summary("p2c-pending", 1, 400.0, 0.5),
            summary("p2c-peakewma", 1, 300.0, 0.5),
            summary("volley-x", 1, 240.0, 0.5),
            summary("p2c-pending", 2, 500.0, 0.5),
            summary("p2c-peakewma", 2, 380.0, 0.5),
            // A saturated client thread: not a figure, and not a ratio either.
            summary("volley-x", 2, 9000.0, 0.97),
        ];
        let aggs = aggregate(&runs);
        let v = aggs.iter().find(|a| a.policy == "volley-x").unwrap();
        assert_eq!((v.seeds, v.runs), (1, 2));
        assert_eq!(v.p99_ms.median, 240.0, "the invalid run is left out");
        // Only seed 1 pairs validly: 240 / min(400, 300).
        let r = ratios(
            &runs,
            (Workload::HalfSlow, 850, Requests::One, 16),
            "volley-x",
            &["p2c-pending", "p2c-peakewma"],
            |r| r.p99_ms,
        );
        assert_eq!(r, vec![0.8]);
        let all_bad = vec![summary("p2c-pending", 1, 9.0, 0.99)];
        let md = markdown(&aggregate(&all_bad));
        assert!(md.contains("invalid (cpu)"), "{md}");
        assert!(goals(&runs, "volley-x").contains("0.80 (0.80–0.80), 1 seeds"));
    }

    #[test]
    fn herding_is_one_for_random_like_picks_and_high_for_a_herd() {
        let rec = |c: u64, s: u16| Record {
            at_us: 0,
            connected_us: Some(c),
            done_us: Some(c + 1),
            server: Some(s),
            outcome: Outcome::Ok,
            probes: 1,
            probe_bytes: 0,
            answer_us: None,
        };
        // 200 windows of 8 picks, all on one server: the busiest takes 8 where random gives ~2.
        let herd: Vec<Record> = (0..1600).map(|i| rec((i / 8) * 1000, 3)).collect();
        let refs: Vec<&Record> = herd.iter().collect();
        assert!(herding(&refs, 16) > 3.0);
        // Spread perfectly: 8 distinct servers per window — better than random.
        let spread: Vec<Record> = (0..1600)
            .map(|i| rec((i / 8) * 1000, (i % 8) as u16))
            .collect();
        let refs: Vec<&Record> = spread.iter().collect();
        assert!(herding(&refs, 16) < 1.0);
    }
}
