//! The Markdown tables of a select run: one per cell, the policies as rows.

use std::fmt::Write as _;

use super::aggregate::{Aggregate, CellKey};
use crate::harness::stats::Spread;

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
    let peers = crate::select::policy::Policy::peers().len();
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
        let all: Vec<String> = crate::select::policy::Policy::all()
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
