//! The zone runs' report: per run ([`ZoneRecord`]), per cell — workload × session kind × M ×
//! policy, over the seeds ([`Cell`]) — and the goal lines ([`Goal`]): volley's p99 flat in M
//! (p99 at the largest M ÷ p99 at the smallest, per seed) and volley ÷ the oracle (per seed and
//! M), each met when every seed's ratio is at most [`GOAL_RATIO`].

use serde::Serialize;

use super::ZoneSizes;
use super::model::{Requests, ZoneOutcome, ZonePolicy, ZoneSetup, ZoneWorkload};
use super::rtt::RttMatrix;
use crate::harness::stats::quantile;

/// The goals' bound: volley's p99 at the largest M within this factor of the smallest M's,
/// and within this factor of the oracle's.
pub const GOAL_RATIO: f64 = 1.15;

const MS: f64 = 1e6;

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneRecord {
    /// Workload.
    pub workload: ZoneWorkload,
    /// Session kind.
    pub requests: Requests,
    /// Independent clients.
    pub clients: usize,
    /// Policy.
    pub policy: ZonePolicy,
    /// Seed.
    pub seed: u64,
    /// Sessions measured.
    pub sessions: u64,
    /// Completed.
    pub completed: u64,
    /// Failed (every attempt timed out).
    pub failed: u64,
    /// Timeouts of measured sessions.
    pub timeouts: u64,
    /// Session time percentiles, ms; failed sessions count as infinitely long (`inf` in the
    /// tables, `null` in JSON).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99th percentile of request time, ms (the first request from the session's arrival).
    pub request_p99_ms: f64,
    /// Share of completed sessions served outside their client's zone.
    pub outside_share: f64,
    /// Slot utilisation per zone over the window.
    pub zone_util: Vec<f64>,
    /// volley's probes or Prequal's load probes per measured session.
    pub probes_per_session: f64,
    /// Events processed.
    pub events: u64,
    /// Wall time, s.
    pub wall_s: f64,
}

impl ZoneRecord {
    /// Summarises one run.
    pub fn new(s: &ZoneSetup, mut o: ZoneOutcome, wall_s: f64) -> ZoneRecord {
        // A failed session never ended: it counts as infinitely long in the percentiles.
        o.session_ns
            .extend(std::iter::repeat_n(f64::INFINITY, o.failed as usize));
        o.session_ns.sort_by(f64::total_cmp);
        o.request_ns.sort_by(f64::total_cmp);
        let capacity = s.per_zone as f64 * f64::from(s.slots) * o.window;
        let ratio = |a: f64, b: u64| if b == 0 { f64::NAN } else { a / b as f64 };
        ZoneRecord {
            workload: s.workload,
            requests: s.requests,
            clients: s.clients,
            policy: s.policy,
            seed: s.seed,
            sessions: o.measured,
            completed: o.completed,
            failed: o.failed,
            timeouts: o.timeouts,
            p50_ms: quantile(&o.session_ns, 0.5) / MS,
            p99_ms: quantile(&o.session_ns, 0.99) / MS,
            request_p99_ms: quantile(&o.request_ns, 0.99) / MS,
            outside_share: ratio(o.outside as f64, o.completed),
            zone_util: o.zone_busy.iter().map(|b| b / capacity).collect(),
            probes_per_session: ratio(o.probes as f64, o.completed + o.failed),
            events: o.events,
            wall_s,
        }
    }
}

/// Median and range over the seeds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// Median (nearest rank, the lower of two middles).
    pub median: f64,
    /// Least.
    pub min: f64,
    /// Greatest.
    pub max: f64,
}

impl Spread {
    /// Of `values` (NaN when empty).
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        Spread {
            median: v[(v.len() - 1) / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    fn cell(&self, digits: usize) -> String {
        if self.min == self.max {
            format!("{:.*}", digits, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                digits, self.median, digits, self.min, digits, self.max
            )
        }
    }
}

/// One workload × session kind × M × policy over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Workload.
    pub workload: ZoneWorkload,
    /// Session kind.
    pub requests: Requests,
    /// Clients.
    pub clients: usize,
    /// Policy.
    pub policy: ZonePolicy,
    /// Session time p50, ms.
    pub p50_ms: Spread,
    /// Session time p99, ms.
    pub p99_ms: Spread,
    /// Request time p99, ms.
    pub request_p99_ms: Spread,
    /// Timeouts, summed over the seeds.
    pub timeouts: u64,
    /// Failed sessions, summed over the seeds.
    pub failed: u64,
    /// Sessions measured, summed over the seeds.
    pub sessions: u64,
    /// Share served outside the client's zone.
    pub outside_share: Spread,
    /// Per zone, the median utilisation over the seeds.
    pub zone_util: Vec<f64>,
    /// Probes per session.
    pub probes_per_session: Spread,
}

/// One goal line.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What is compared.
    pub what: String,
    /// Workload.
    pub workload: ZoneWorkload,
    /// Session kind.
    pub requests: Requests,
    /// The volley variant.
    pub policy: ZonePolicy,
    /// Per seed: (seed, ratio).
    pub ratios: Vec<(u64, f64)>,
    /// Over the seeds.
    pub spread: Spread,
    /// Every seed's ratio ≤ [`GOAL_RATIO`].
    pub met: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneReport {
    /// Zones.
    pub zones: usize,
    /// Servers per zone.
    pub per_zone: usize,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Unmeasured start, ms.
    pub warmup_ms: f64,
    /// Measured window, ms.
    pub window_ms: f64,
    /// Per seed, the zones' positions on the line (ms of round trip from the leftmost).
    pub positions_ms: Vec<(u64, Vec<f64>)>,
    /// Per seed, the round-trip matrix, ms.
    pub rtt_ms: Vec<(u64, Vec<Vec<f64>>)>,
    /// Every run.
    pub runs: Vec<ZoneRecord>,
    /// Every cell.
    pub cells: Vec<Cell>,
    /// The goal lines.
    pub goals: Vec<Goal>,
    /// Wall time of the whole invocation, s.
    pub wall_s: f64,
}

impl ZoneReport {
    /// Cells and goals of `runs`.
    pub fn new(sizes: &ZoneSizes, seeds: &[u64], runs: Vec<ZoneRecord>, wall_s: f64) -> Self {
        let mut keys: Vec<(ZoneWorkload, Requests, usize, ZonePolicy)> = Vec::new();
        for r in &runs {
            let k = (r.workload, r.requests, r.clients, r.policy);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let cells = keys
            .iter()
            .map(|&(workload, requests, clients, policy)| {
                let rs: Vec<&ZoneRecord> = runs
                    .iter()
                    .filter(|r| {
                        (r.workload, r.requests, r.clients, r.policy)
                            == (workload, requests, clients, policy)
                    })
                    .collect();
                let of = |f: &dyn Fn(&ZoneRecord) -> f64| {
                    Spread::of(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
                };
                let zones = rs.first().map_or(0, |r| r.zone_util.len());
                Cell {
                    workload,
                    requests,
                    clients,
                    policy,
                    p50_ms: of(&|r| r.p50_ms),
                    p99_ms: of(&|r| r.p99_ms),
                    request_p99_ms: of(&|r| r.request_p99_ms),
                    timeouts: rs.iter().map(|r| r.timeouts).sum(),
                    failed: rs.iter().map(|r| r.failed).sum(),
                    sessions: rs.iter().map(|r| r.sessions).sum(),
                    outside_share: of(&|r| r.outside_share),
                    zone_util: (0..zones)
                        .map(|z| of(&|r| r.zone_util.get(z).copied().unwrap_or(f64::NAN)).median)
                        .collect(),
                    probes_per_session: of(&|r| r.probes_per_session),
                }
            })
            .collect();
        let goals = goals(&runs);
        let matrices: Vec<(u64, RttMatrix)> = seeds
            .iter()
            .map(|&s| (s, RttMatrix::default_for(sizes.zones, s)))
            .collect();
        ZoneReport {
            zones: sizes.zones,
            per_zone: sizes.per_zone,
            seeds: seeds.to_vec(),
            warmup_ms: sizes.warmup as f64 / MS,
            window_ms: sizes.window as f64 / MS,
            positions_ms: matrices
                .iter()
                .map(|(s, m)| (*s, m.positions().iter().map(|p| *p as f64 / MS).collect()))
                .collect(),
            rtt_ms: matrices.iter().map(|(s, m)| (*s, m.rows_ms())).collect(),
            runs,
            cells,
            goals,
            wall_s,
        }
    }

    /// The report as markdown: the set-up, a table per workload × session kind, the goals.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "### sim zones\n\n{} zones × {} servers (4 slots, exponential work of mean 40 ms), \
             seeds {:?}, warm-up {} ms, measured window {} ms, wall time {:.1} s. Zone {} is \
             the hot zone (hot-zone workload) and the zone that goes silent a third into the \
             window (outage). Zone positions on the line, ms of round trip from the leftmost \
             (the round trip between two zones is 1 ms + their distance):\n\n",
            self.zones,
            self.per_zone,
            self.seeds,
            self.warmup_ms,
            self.window_ms,
            self.wall_s,
            super::model::HOT_ZONE,
        );
        for (seed, p) in &self.positions_ms {
            let list: Vec<String> = p.iter().map(|x| format!("{x:.0}")).collect();
            md.push_str(&format!("- seed {seed}: {}\n", list.join(", ")));
        }
        md.push('\n');
        md.push_str(&self.goals_markdown());
        let mut kinds: Vec<(ZoneWorkload, Requests)> = Vec::new();
        for c in &self.cells {
            if !kinds.contains(&(c.workload, c.requests)) {
                kinds.push((c.workload, c.requests));
            }
        }
        for (w, k) in kinds {
            md.push_str(&format!(
                "\n#### {}, sessions of {}\n\nSession time (arrival → last reply), median \
                 (min–max) over the seeds. Timeouts and failed: summed over the seeds. Zone \
                 utilisation: zone 0 first, median over the seeds.\n\n\
                 | policy | M | p50 ms | p99 ms | request p99 ms | outside zone | timeouts | \
                 failed | probes/session | zone utilisation |\n\
                 |---|---|---|---|---|---|---|---|---|---|\n",
                w.name(),
                k.name()
            ));
            for c in self
                .cells
                .iter()
                .filter(|c| c.workload == w && c.requests == k)
            {
                let util: Vec<String> = c.zone_util.iter().map(|u| format!("{u:.2}")).collect();
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    c.policy.name(),
                    c.clients,
                    c.p50_ms.cell(1),
                    c.p99_ms.cell(1),
                    c.request_p99_ms.cell(1),
                    percent(c.outside_share),
                    c.timeouts,
                    c.failed,
                    c.probes_per_session.cell(2),
                    util.join(" "),
                ));
            }
        }
        md
    }

    fn goals_markdown(&self) -> String {
        if self.goals.is_empty() {
            return "Goal lines: none (they need volley and the oracle, or two values of M).\n"
                .into();
        }
        let mut md = format!(
            "Goals (`sim`: volley's p99 flat in M at 10 zones × 1,000 servers, within {GOAL_RATIO}× \
             the oracle): per-seed ratios, median (min–max); met when every seed's ratio is at \
             most {GOAL_RATIO}.\n\n| goal | workload | sessions | volley | ratio | met |\n\
             |---|---|---|---|---|---|\n"
        );
        for g in &self.goals {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                g.what,
                g.workload.name(),
                g.requests.name(),
                g.policy.name(),
                g.spread.cell(3),
                if g.met { "met" } else { "not met" }
            ));
        }
        md
    }
}

fn percent(s: Spread) -> String {
    let p = Spread {
        median: 100.0 * s.median,
        min: 100.0 * s.min,
        max: 100.0 * s.max,
    };
    format!("{} %", p.cell(1))
}

/// The goal lines of `runs`: for each workload × session kind and volley variant, its p99 at
/// the largest M over its p99 at the smallest (per seed), and at each M its p99 over the
/// oracle's (per seed).
pub fn goals(runs: &[ZoneRecord]) -> Vec<Goal> {
    let mut out = Vec::new();
    let mut kinds: Vec<(ZoneWorkload, Requests)> = Vec::new();
    for r in runs {
        if !kinds.contains(&(r.workload, r.requests)) {
            kinds.push((r.workload, r.requests));
        }
    }
    let p99 = |w: ZoneWorkload, k: Requests, m: usize, p: ZonePolicy, seed: u64| {
        runs.iter()
            .find(|r| (r.workload, r.requests, r.clients, r.policy, r.seed) == (w, k, m, p, seed))
            .map(|r| r.p99_ms)
    };
    for (w, k) in kinds {
        let mut ms: Vec<usize> = runs
            .iter()
            .filter(|r| r.workload == w && r.requests == k)
            .map(|r| r.clients)
            .collect();
        ms.sort_unstable();
        ms.dedup();
        for p in [ZonePolicy::Volley, ZonePolicy::VolleyEarly] {
            let seeds: Vec<u64> = {
                let mut s: Vec<u64> = runs
                    .iter()
                    .filter(|r| r.workload == w && r.requests == k && r.policy == p)
                    .map(|r| r.seed)
                    .collect();
                s.sort_unstable();
                s.dedup();
                s
            };
            if seeds.is_empty() {
                continue;
            }
            let mut line = |what: String, f: &dyn Fn(u64) -> Option<f64>| {
                let ratios: Vec<(u64, f64)> =
                    seeds.iter().filter_map(|&s| f(s).map(|r| (s, r))).collect();
                if ratios.is_empty() {
                    return;
                }
                let values: Vec<f64> = ratios.iter().map(|r| r.1).collect();
                out.push(Goal {
                    what,
                    workload: w,
                    requests: k,
                    policy: p,
                    met: values.iter().all(|v| *v <= GOAL_RATIO),
                    spread: Spread::of(&values),
                    ratios,
                });
            };
            if let (Some(&lo), Some(&hi)) = (ms.first(), ms.last())
                && lo != hi
            {
                line(format!("p99 flat in M: M={hi} ÷ M={lo}"), &|s| {
                    Some(p99(w, k, hi, p, s)? / p99(w, k, lo, p, s)?)
                });
            }
            for &m in &ms {
                line(format!("÷ oracle at M={m}"), &|s| {
                    Some(p99(w, k, m, p, s)? / p99(w, k, m, ZonePolicy::Oracle, s)?)
                });
            }
        }
    }
    out
}
