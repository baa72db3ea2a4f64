//! The zone matrix's figures: one summary per run, the goals of issue 23 (Z3) computed per seed,
//! and the report (results.md, results.json, SVG plots).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ZonePlan;
use super::model::{ZoneSpec, ZoneTrace, ZoneWorkload, Zones};
use super::peers::Driven;
use super::relay::ErrorStats;
use crate::harness::results;
use crate::harness::stats::{Spread, quantile};
use crate::select::plot;
use crate::select::policy::Outcome;
use crate::select::workload::{Job, Requests};

/// One run's figures (sessions arriving in the measured period).
#[derive(Debug, Clone, Serialize)]
pub struct ZRun {
    pub workload: ZoneWorkload,
    pub requests: String,
    pub policy: String,
    pub seed: u64,
    pub sessions: usize,
    /// Latency from the scheduled arrival to the last reply, ms; timed-out and failed
    /// sessions count as infinitely late.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub timeouts: usize,
    pub failed: usize,
    /// Of the sessions that connected, the share served outside the client's zone.
    pub outside: f64,
    /// Per zone: slot time worked over slot time in the measured period.
    pub zone_utilisation: [f64; 3],
    /// Selection datagrams sent per session: volley probes, plus load-port probes.
    pub probes_per_session: f64,
    /// Zone outage: from the silence until the silent zone's clients' sessions complete
    /// elsewhere (see [`recovery_s`]), s; `NaN` in other workloads.
    pub recovery_s: f64,
    /// Cores used in the measured period: clients plus relay, fleet, relay alone.
    pub client_cpu: f64,
    pub fleet_cpu: f64,
    pub relay_cpu: f64,
    /// The relay's lateness over the whole run (send time − due time).
    pub relay_lateness: ErrorStats,
    pub relay_dropped: u64,
    pub invalid: bool,
}

/// What [`summarise`] reads.
pub struct RunInput<'a> {
    pub spec: &'a ZoneSpec,
    pub trace: &'a ZoneTrace,
    pub zones: &'a Zones,
    pub policy: &'a str,
    pub driven: &'a Driven,
    pub jobs: &'a [Job],
    pub busy_us: &'a [u64],
    pub slots: usize,
    pub client_cpu: f64,
    pub fleet_cpu: f64,
    pub relay_cpu: f64,
    pub relay_lateness: ErrorStats,
    pub relay_dropped: u64,
    pub cpu_limit: f64,
}

/// The run's summary and its measured latencies (ms, sorted; infinite for timeouts).
pub fn summarise(i: RunInput<'_>) -> (ZRun, Vec<f64>) {
    let warm = i.trace.warmup.as_micros() as u64;
    let end = i.trace.end.as_micros() as u64;
    let m = i.zones.of_client.len();
    let mut lat = Vec::new();
    let (mut timeouts, mut failed, mut connected, mut outside, mut probes) = (0, 0, 0, 0, 0u64);
    for (rec, job) in i.driven.records.iter().zip(i.jobs) {
        if rec.at_us < warm || rec.at_us >= end {
            continue;
        }
        probes += u64::from(rec.probes);
        match (rec.outcome, rec.done_us) {
            (Outcome::Ok, Some(done)) => lat.push(done.saturating_sub(rec.at_us) as f64 / 1e3),
            (Outcome::Timeout, _) => {
                timeouts += 1;
                lat.push(f64::INFINITY);
            }
            _ => {
                failed += 1;
                lat.push(f64::INFINITY);
            }
        }
        if let Some(s) = rec.server {
            connected += 1;
            let cz = i.zones.of_client[job.client(m)];
            if i.zones.of_server.get(s as usize) != Some(&cz) {
                outside += 1;
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let sessions = lat.len();
    // Load-port probes are spread over the whole run: the measured period's share.
    let run_s = i.trace.end.as_secs_f64().max(1e-9);
    let period_s = (i.trace.end - i.trace.warmup).as_secs_f64();
    probes += (i.driven.load_probes as f64 * period_s / run_s).round() as u64;
    let mut zone_utilisation = [0.0; 3];
    for (z, u) in zone_utilisation.iter_mut().enumerate() {
        let servers = i.zones.servers(z);
        let busy: u64 = servers
            .iter()
            .map(|&s| i.busy_us.get(s).copied().unwrap_or(0))
            .sum();
        let cap = servers.len() as f64 * i.slots as f64 * period_s * 1e6;
        *u = if cap > 0.0 {
            busy as f64 / cap
        } else {
            f64::NAN
        };
    }
    let recovery = match (i.spec.workload, i.trace.special, i.trace.schedule.event_at) {
        (ZoneWorkload::ZoneOutage, Some(z), Some(at)) => {
            let silence = at.as_micros() as u64;
            let sessions: Vec<(u64, Option<u64>, bool)> = i
                .driven
                .records
                .iter()
                .zip(i.jobs)
                .filter(|(r, j)| i.zones.of_client[j.client(m)] == z && r.at_us >= silence)
                .map(|(r, _)| {
                    let good = r.outcome == Outcome::Ok
                        && r.server
                            .is_some_and(|s| i.zones.of_server.get(s as usize) != Some(&z));
                    (r.at_us, r.done_us, good)
                })
                .collect();
            recovery_s(silence, &sessions)
        }
        _ => f64::NAN,
    };
    let run = ZRun {
        workload: i.spec.workload,
        requests: i.spec.requests.name().into(),
        policy: i.policy.into(),
        seed: i.spec.seed,
        sessions,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        timeouts,
        failed,
        outside: if connected > 0 {
            outside as f64 / connected as f64
        } else {
            f64::NAN
        },
        zone_utilisation,
        probes_per_session: if sessions > 0 {
            probes as f64 / sessions as f64
        } else {
            f64::NAN
        },
        recovery_s: recovery,
        client_cpu: i.client_cpu,
        fleet_cpu: i.fleet_cpu,
        relay_cpu: i.relay_cpu,
        relay_lateness: i.relay_lateness,
        relay_dropped: i.relay_dropped,
        invalid: i.client_cpu > i.cpu_limit || i.fleet_cpu > i.cpu_limit,
    };
    (run, lat)
}

/// From a zone's silence (µs) to its clients' sessions completing elsewhere, s: the sessions
/// of the silent zone's clients that arrived after the silence, in arrival order, as
/// (arrival µs, completion µs, completed outside the silent zone); the first session that
/// completed elsewhere and from which on at least 99 % did; its completion minus the silence.
/// Infinite when there is none, `NaN` with no session at all.
pub fn recovery_s(silence_us: u64, sessions: &[(u64, Option<u64>, bool)]) -> f64 {
    if sessions.is_empty() {
        return f64::NAN;
    }
    let mut s = sessions.to_vec();
    s.sort_by_key(|x| x.0);
    // good[i..] counts, from the end.
    let mut good_after = vec![0usize; s.len() + 1];
    for i in (0..s.len()).rev() {
        good_after[i] = good_after[i + 1] + usize::from(s[i].2);
    }
    for (i, x) in s.iter().enumerate() {
        let total = s.len() - i;
        if x.2 && good_after[i] as f64 >= 0.99 * total as f64 {
            return match x.1 {
                Some(done) => done.saturating_sub(silence_us) as f64 / 1e6,
                None => f64::INFINITY,
            };
        }
    }
    f64::INFINITY
}

/// Pooled latencies (valid runs) per (workload, session kind, policy), for the plots.
#[derive(Default)]
pub struct Pooled {
    latencies: HashMap<(ZoneWorkload, String, String), Vec<f64>>,
}

impl Pooled {
    pub fn add(&mut self, run: &ZRun, latencies: Vec<f64>) {
        self.latencies
            .entry((run.workload, run.requests.clone(), run.policy.clone()))
            .or_default()
            .extend(latencies);
    }
}

/// One goal of issue 23 (Z3), per seed.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    /// Per seed: the measured value (ratio, share, seconds, or 1/0 for a yes/no).
    pub per_seed: Vec<f64>,
    pub spread: Spread,
    pub target: String,
    pub met: bool,
}

/// How a goal's per-seed values are judged.
#[derive(Debug, Clone, Copy)]
pub enum Judge {
    /// The median over seeds is at most this.
    MedianAtMost(f64),
    /// The median over seeds is at least this.
    MedianAtLeast(f64),
    /// Every seed holds (values 1 for yes, 0 for no).
    EverySeed,
}

impl Goal {
    pub fn new(goal: impl Into<String>, per_seed: Vec<f64>, judge: Judge) -> Goal {
        let spread = Spread::of(per_seed.iter().copied());
        let (target, met) = match judge {
            Judge::MedianAtMost(x) => (format!("≤ {x}"), spread.median <= x),
            Judge::MedianAtLeast(x) => (format!("≥ {x}"), spread.median >= x),
            Judge::EverySeed => (
                "every seed".into(),
                !per_seed.is_empty() && per_seed.iter().all(|&v| v >= 1.0),
            ),
        };
        Goal {
            goal: goal.into(),
            per_seed,
            spread,
            target,
            met,
        }
    }
}

/// `a / b` with timeouts: infinite over infinite is undefined, infinite over finite infinite.
pub fn ratio(a: f64, b: f64) -> f64 {
    if a.is_infinite() && b.is_infinite() {
        f64::NAN
    } else {
        a / b
    }
}

/// The valid run of (workload, session kind, policy, seed).
fn find<'a>(runs: &'a [ZRun], w: ZoneWorkload, r: &str, p: &str, seed: u64) -> Option<&'a ZRun> {
    runs.iter().find(|x| {
        !x.invalid && x.workload == w && x.requests == r && x.policy == p && x.seed == seed
    })
}

/// The smallest p99 among `names`' runs of a (workload, kind, seed).
fn best_p99(runs: &[ZRun], w: ZoneWorkload, r: &str, seed: u64, names: &[&str]) -> Option<f64> {
    let v: Vec<f64> = names
        .iter()
        .filter_map(|n| find(runs, w, r, n, seed))
        .map(|x| x.p99_ms)
        .collect();
    (!v.is_empty()).then(|| v.into_iter().fold(f64::INFINITY, f64::min))
}

/// The goals of issue 23 (Z3) for volley's configuration `primary`, from the valid runs.
pub fn goals(runs: &[ZRun], seeds: &[u64], primary: &str) -> Vec<Goal> {
    // Per seed where the primary ran: f(its run, the seed).
    let per_seed = |w: ZoneWorkload, r: &str, f: &dyn Fn(&ZRun, u64) -> Option<f64>| -> Vec<f64> {
        seeds
            .iter()
            .filter_map(|&seed| f(find(runs, w, r, primary, seed)?, seed))
            .collect()
    };
    let peers = ["zone-p2c", "p2c-peakewma", "locality", "prequal"];
    let hot_best = ["locality", "p2c-peakewma"];
    let mut out = Vec::new();
    for r in [Requests::About10.name(), Requests::One.name()] {
        let w = ZoneWorkload::Balanced;
        out.push(Goal::new(
            format!("balanced, {r}: sessions served in the client's zone"),
            per_seed(w, r, &|v, _| Some(1.0 - v.outside)),
            Judge::MedianAtLeast(0.95),
        ));
        out.push(Goal::new(
            format!("balanced, {r}: p99 / zone-local p2c"),
            per_seed(w, r, &|v, seed| {
                Some(ratio(v.p99_ms, find(runs, w, r, "zone-p2c", seed)?.p99_ms))
            }),
            Judge::MedianAtMost(1.05),
        ));
    }
    let w = ZoneWorkload::HotZone;
    let r10 = Requests::About10.name();
    out.push(Goal::new(
        format!("hot zone, {r10}: no timed-out session where the oracle has none"),
        per_seed(w, r10, &|v, seed| {
            let o = find(runs, w, r10, "oracle-path", seed)?;
            Some(f64::from(u8::from(o.timeouts > 0 || v.timeouts == 0)))
        }),
        Judge::EverySeed,
    ));
    out.push(Goal::new(
        format!("hot zone, {r10}: p99 / best of locality and global PeakEwma"),
        per_seed(w, r10, &|v, seed| {
            Some(ratio(v.p99_ms, best_p99(runs, w, r10, seed, &hot_best)?))
        }),
        Judge::MedianAtMost(0.85),
    ));
    out.push(Goal::new(
        format!("hot zone, {r10}: p99 / oracle"),
        per_seed(w, r10, &|v, seed| {
            Some(ratio(
                v.p99_ms,
                find(runs, w, r10, "oracle-path", seed)?.p99_ms,
            ))
        }),
        Judge::MedianAtMost(1.15),
    ));
    let r1 = Requests::One.name();
    out.push(Goal::new(
        format!("hot zone, {r1}: p99 / best of locality and global PeakEwma"),
        per_seed(w, r1, &|v, seed| {
            Some(ratio(v.p99_ms, best_p99(runs, w, r1, seed, &hot_best)?))
        }),
        Judge::MedianAtMost(1.0),
    ));
    for r in [r10, r1] {
        let w = ZoneWorkload::ZoneOutage;
        out.push(Goal::new(
            format!("zone outage, {r}: silence to sessions completing elsewhere, s"),
            per_seed(w, r, &|v, _| Some(v.recovery_s)),
            Judge::MedianAtMost(1.0),
        ));
        out.push(Goal::new(
            format!("zone outage, {r}: timeouts ≤ the best peer's"),
            per_seed(w, r, &|v, seed| {
                let best = peers
                    .iter()
                    .filter_map(|p| find(runs, w, r, p, seed))
                    .map(|x| x.timeouts)
                    .min()?;
                Some(f64::from(u8::from(v.timeouts <= best)))
            }),
            Judge::EverySeed,
        ));
    }
    for r in [r10, r1] {
        let w = ZoneWorkload::SlowZone;
        out.push(Goal::new(
            format!("slow zone, {r}: p99 / best peer"),
            per_seed(w, r, &|v, seed| {
                Some(ratio(v.p99_ms, best_p99(runs, w, r, seed, &peers)?))
            }),
            Judge::MedianAtMost(0.9),
        ));
    }
    out
}

#[derive(Serialize)]
struct Out<'a> {
    zones: &'a Zones,
    seeds: &'a [u64],
    warmup_ms: u64,
    measure_ms: u64,
    primary: Option<String>,
    relay_calibration: Vec<(f64, ErrorStats)>,
    goals: Vec<Goal>,
    runs: &'a [ZRun],
}

fn ms(x: f64) -> String {
    if x.is_infinite() {
        "∞".into()
    } else if x.is_nan() {
        "–".into()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

/// A goal's value: three decimals (a share of 0.9485 is not "0.95").
fn value(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        ms(x)
    }
}

fn spread(s: Spread) -> String {
    format!("{} [{}–{}]", ms(s.median), ms(s.min), ms(s.max))
}

/// Writes results.md, results.json and the plots into `out`, and prints results.md.
pub fn write(
    out: &Path,
    plan: &ZonePlan,
    zones: &Zones,
    runs: &[ZRun],
    pooled: &Pooled,
    calibration: &[(Duration, ErrorStats)],
    started: Instant,
) -> anyhow::Result<()> {
    let primary = plan.primary.map(|p| p.name());
    let goals = primary
        .as_deref()
        .map(|p| goals(runs, &plan.seeds, p))
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# select --zones\n");
    let _ = writeln!(
        md,
        "Three zones of {:?} servers × {} slots, M = {} clients ({:?} per zone); one-way delays 0.25 ms in a zone, 10/20/30 ms between zones 0–1, 0–2, 1–2, on every datagram both ways. {} seed(s); warm-up {} ms, measured {} ms per run; {} runs in {:.0} s. Latency from the scheduled arrival; timed-out sessions count as infinitely late. Primary volley configuration: {}.\n",
        [0, 1, 2].map(|z| zones.servers(z).len()),
        plan.shape.slots,
        zones.of_client.len(),
        [0, 1, 2].map(|z| zones.clients(z).len()),
        plan.seeds.len(),
        plan.warmup.as_millis(),
        plan.measure.as_millis(),
        runs.len(),
        started.elapsed().as_secs_f64(),
        primary.as_deref().unwrap_or("none")
    );
    let _ = writeln!(md, "## Goals (issue 23, Z3)\n");
    let _ = writeln!(md, "| goal | per seed | median [min–max] | target | met |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for g in &goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} [{}–{}] | {} | {} |",
            g.goal,
            g.per_seed
                .iter()
                .map(|&x| value(x))
                .collect::<Vec<_>>()
                .join(", "),
            value(g.spread.median),
            value(g.spread.min),
            value(g.spread.max),
            g.target,
            if g.met { "met" } else { "not met" }
        );
    }
    let _ = writeln!(
        md,
        "| LAN headline (half-slow 0.85, M = 16, no delays): p99 within 3 % of today's primary | run `select --workloads half-slow --loads 0.85 --clients 16 --policies <today's primary>,<zone primary>` | | ≤ 1.03 | see that run |\n"
    );
    let _ = writeln!(md, "## The relay's error\n");
    let _ = writeln!(
        md,
        "End to end against the nominal delay, no load (round trip through the relay minus twice the delay minus the straight loopback round trip; two relay passes):\n"
    );
    let _ = writeln!(md, "| one-way delay | samples | p50 µs | p99 µs | max µs |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (d, e) in calibration {
        let _ = writeln!(
            md,
            "| {:.2} ms | {} | {:.1} | {:.1} | {:.1} |",
            d.as_secs_f64() * 1e3,
            e.samples,
            e.p50_us,
            e.p99_us,
            e.max_us
        );
    }
    let lat = Spread::of(runs.iter().map(|r| r.relay_lateness.p99_us));
    let max = runs
        .iter()
        .map(|r| r.relay_lateness.max_us)
        .fold(0.0f64, f64::max);
    let p50 = Spread::of(runs.iter().map(|r| r.relay_lateness.p50_us));
    let cpu = Spread::of(runs.iter().map(|r| r.relay_cpu));
    let dropped: u64 = runs.iter().map(|r| r.relay_dropped).sum();
    let _ = writeln!(
        md,
        "\nUnder load, per run (send time − due time of every datagram): p50 {} µs, p99 {} µs (median [min–max] over runs), max {:.0} µs; relay CPU {} cores; {} datagrams the kernel refused.\n",
        spread(p50),
        spread(lat),
        max,
        spread(cpu),
        dropped
    );
    std::fs::create_dir_all(out)?;
    for &w in &plan.workloads {
        for &r in &plan.requests {
            let _ = writeln!(
                md,
                "## {} — sessions of {} request(s)\n",
                w.name(),
                r.name()
            );
            let _ = writeln!(
                md,
                "| policy | p50 ms | p99 ms | timeouts | outside zone | util z0 / z1 / z2 | probes / session | recovery s | invalid |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
            let mut series = Vec::new();
            for p in &plan.policies {
                let name = p.name();
                let mine: Vec<&ZRun> = runs
                    .iter()
                    .filter(|x| x.workload == w && x.requests == r.name() && x.policy == name)
                    .collect();
                let valid: Vec<&&ZRun> = mine.iter().filter(|x| !x.invalid).collect();
                let sp = |f: &dyn Fn(&ZRun) -> f64| Spread::of(valid.iter().map(|x| f(x)));
                let util = [0, 1, 2].map(|z| sp(&|x| x.zone_utilisation[z]).median);
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} | {} | {} | {}/{} |",
                    spread(sp(&|x| x.p50_ms)),
                    spread(sp(&|x| x.p99_ms)),
                    spread(sp(&|x| x.timeouts as f64)),
                    spread(sp(&|x| x.outside * 100.0)) + " %",
                    util[0],
                    util[1],
                    util[2],
                    ms(sp(&|x| x.probes_per_session).median),
                    if w == ZoneWorkload::ZoneOutage {
                        spread(sp(&|x| x.recovery_s))
                    } else {
                        "–".into()
                    },
                    mine.len() - valid.len(),
                    mine.len()
                );
                if let Some(l) = pooled
                    .latencies
                    .get(&(w, r.name().to_string(), name.clone()))
                {
                    let mut l = l.clone();
                    l.sort_by(f64::total_cmp);
                    series.push((name, l, util));
                }
            }
            let _ = writeln!(md);
            let stem = format!("zones-{}-{}", w.name(), r.tag());
            let s: Vec<plot::Series<'_>> = series
                .iter()
                .map(|(n, l, u)| plot::Series {
                    name: n,
                    latencies: l,
                    utilisation: u,
                })
                .collect();
            if !s.is_empty() {
                plot::latency_cdf(
                    &out.join(format!("{stem}-cdf.svg")),
                    &format!(
                        "{}, sessions of {} request(s): latency CDF",
                        w.name(),
                        r.name()
                    ),
                    &s,
                )?;
                let _ = writeln!(md, "![{stem}]({stem}-cdf.svg)\n");
            }
        }
    }
    let invalid = runs.iter().filter(|r| r.invalid).count();
    let _ = writeln!(
        md,
        "{invalid} of {} runs invalid (clients plus relay, or fleet, above {:.2} of a core).",
        runs.len(),
        plan.cpu_limit
    );
    let value = Out {
        zones,
        seeds: &plan.seeds,
        warmup_ms: plan.warmup.as_millis() as u64,
        measure_ms: plan.measure.as_millis() as u64,
        primary,
        relay_calibration: calibration
            .iter()
            .map(|(d, e)| (d.as_secs_f64() * 1e3, *e))
            .collect(),
        goals,
        runs,
    };
    results::publish(out, &md, &value)
}
