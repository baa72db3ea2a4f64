//! The goals of `docs/BENCHMARKS.md` §7 (issue 25) read from a `select --long-lived` run, for
//! each of volley's long-lived policies present, and every policy's p99 against the best peer,
//! per cell: per-seed ratios, median (min–max) over the seeds where both sides ran validly.

use std::fmt::Write as _;

use super::aggregate::{CellKey, cell_of};
use super::goals::{met, ratio_cell, ratios, seeds, valid_run};
use super::summary::RunSummary;
use crate::harness::stats::Spread;
use crate::select::HEADLINE_CLIENTS;
use crate::select::longlived::LlPolicy;
use crate::select::workload::{Requests, Workload};

/// The peers' names: the balancers in use today (the oracle is not one).
fn peers() -> Vec<&'static str> {
    LlPolicy::PEERS.iter().map(|p| p.name()).collect()
}

const P2C: [&str; 2] = ["ll-p2c-pending", "ll-p2c-peakewma"];
const REPORTS: [&str; 2] = ["ll-c3", "ll-wrr"];
const SED: [&str; 1] = ["ll-oracle-sed"];

/// The §7 goals for every volley policy in `runs`, then the p99 ÷ best peer table.
pub fn long_lived_goals(runs: &[RunSummary]) -> String {
    let mut volley: Vec<&str> = Vec::new();
    for r in runs {
        if LlPolicy::parse(&r.policy).is_some_and(LlPolicy::is_volley)
            && !volley.contains(&r.policy.as_str())
        {
            volley.push(&r.policy);
        }
    }
    let mut out = String::new();
    for v in volley {
        out.push_str(&goals_for(runs, v));
    }
    out.push_str(&best_peer_table(runs));
    out
}

fn goals_for(runs: &[RunSummary], primary: &str) -> String {
    let headline = (Workload::HalfSlow, 850, Requests::One, HEADLINE_CLIENTS);
    let p99 = |r: &RunSummary| r.p99_ms;
    let mut out = format!(
        "\n## Goals (docs/BENCHMARKS.md §7) for `{primary}`\n\nPer-seed ratios, median (min–max) \
         over the seeds where both sides ran validly. Lower is better.\n\n\
         | goal | measured | met? |\n|---|---|---|\n"
    );
    let mut row = |goal: &str, v: Vec<f64>, ok: &dyn Fn(f64) -> bool| {
        let _ = writeln!(out, "| {goal} | {} | {} |", ratio_cell(&v), met(&v, ok));
    };
    if runs.iter().any(|r| cell_of(r) == headline) {
        row(
            "headline (half-slow, 0.85, M = 16): p99 ÷ the better tower p2c ≤ 0.8",
            ratios(runs, headline, primary, &P2C, p99),
            &|x| x <= 0.8,
        );
        row(
            "headline: p99 ÷ the better of C3 and the weighted round robin ≤ 0.9",
            ratios(runs, headline, primary, &REPORTS, p99),
            &|x| x <= 0.9,
        );
        row(
            "headline: p99 ÷ the SED oracle ≤ 1.1",
            ratios(runs, headline, primary, &SED, p99),
            &|x| x <= 1.1,
        );
        let races: Vec<f64> = runs
            .iter()
            .filter(|r| cell_of(r) == headline && r.policy == primary && !r.invalid_cpu)
            .filter_map(|r| r.races_per_1000)
            .collect();
        row("headline: races per 1,000 requests ≤ 5", races, &|x| {
            x <= 5.0
        });
    }
    out.push_str(&every_cell(runs, primary));
    out
}

/// The cells at M = 16, in first-seen order.
fn cells_at_headline_m(runs: &[RunSummary]) -> Vec<CellKey> {
    let mut cells: Vec<CellKey> = Vec::new();
    for r in runs {
        let c = cell_of(r);
        if c.3 == HEADLINE_CLIENTS && !cells.contains(&c) {
            cells.push(c);
        }
    }
    cells
}

/// Every workload and load at M = 16: p99 against the best peer, timeouts against the fewest
/// of the peers', and on the sinkhole failed requests against tower p2c's.
fn every_cell(runs: &[RunSummary], primary: &str) -> String {
    let cells = cells_at_headline_m(runs);
    if cells.is_empty() {
        return String::new();
    }
    let peers = peers();
    let mut out = String::from(
        "\nEvery workload and load at M = 16: p99 ÷ the best peer (goal ≤ 1.0), timed-out \
         requests against the fewest of the peers' (goal: no more), and on the sinkhole failed \
         requests ÷ the fewer of tower p2c's (goal ≤ 1.0).\n\n\
         | cell | p99 ÷ best peer | met? | timeouts − fewest peer's | met? | failed ÷ p2c's | met? |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let r = best_peer_ratios(runs, c, primary, &peers);
        let mut excess = Vec::new();
        for seed in seeds(runs) {
            let Some(x) = valid_run(runs, c, seed, primary) else {
                continue;
            };
            let t: Vec<f64> = peers
                .iter()
                .filter_map(|p| valid_run(runs, c, seed, p))
                .map(|r| r.timeouts as f64)
                .collect();
            if t.len() == peers.len() {
                excess.push(x.timeouts as f64 - t.into_iter().fold(f64::INFINITY, f64::min));
            }
        }
        let excess_cell = if excess.is_empty() {
            "no valid pair".to_string()
        } else {
            let s = Spread::of(excess.iter().copied());
            format!("{:+.0} ({:+.0}–{:+.0})", s.median, s.min, s.max)
        };
        let fails = if c.0 == Workload::Sinkhole {
            let f = ratios(runs, c, primary, &P2C, |r| r.failed as f64);
            format!("{} | {}", ratio_cell(&f), met(&f, |x| x <= 1.0))
        } else {
            "— | —".into()
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
    out
}

/// Per seed where `policy` and every peer ran validly in `cell`: `policy`'s p99 over the lowest
/// of the peers' (1 when both are timeouts).
fn best_peer_ratios(runs: &[RunSummary], cell: CellKey, policy: &str, peers: &[&str]) -> Vec<f64> {
    ratios(runs, cell, policy, peers, |r| r.p99_ms)
}

/// Every policy of every cell: p99 ÷ the best peer, per seed, median (min–max).
fn best_peer_table(runs: &[RunSummary]) -> String {
    let peers = peers();
    let mut cells: Vec<CellKey> = Vec::new();
    let mut policies: Vec<&str> = Vec::new();
    for r in runs {
        let c = cell_of(r);
        if !cells.contains(&c) {
            cells.push(c);
        }
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    policies.sort_by_key(|p| {
        LlPolicy::ALL
            .iter()
            .position(|q| q.name() == *p)
            .unwrap_or(usize::MAX)
    });
    let mut out = format!(
        "\n## p99 ÷ the best peer, per cell\n\nPer seed, each policy's p99 over the lowest p99 of \
         the six peers ({}) in the same cell and seed; median (min–max) over the seeds where all \
         ran validly. 1.00 is the best peer itself; below 1 beats every peer.\n\n| cell | {} |\n|---|{}\n",
        peers.join(", "),
        policies.join(" | "),
        "---|".repeat(policies.len())
    );
    for c in cells {
        let _ = write!(
            out,
            "| {} {:.2} M = {} |",
            c.0.name(),
            c.1 as f64 / 1000.0,
            c.3
        );
        for p in &policies {
            let v = best_peer_ratios(runs, c, p, &peers);
            let _ = write!(out, " {} |", ratio_cell(&v));
        }
        out.push('\n');
    }
    out
}
