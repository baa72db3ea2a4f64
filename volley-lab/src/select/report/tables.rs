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
    // The peers first in their fixed order (§2's, or the long-lived matrix's), then volley's
    // configurations by median p99.
    let peers: Vec<String> = crate::select::policy::Policy::peers()
        .iter()
        .chain(crate::select::policy::Policy::long_lived().iter())
        .filter(|p| !p.is_volley())
        .map(|p| p.name())
        .collect();
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
        rows.sort_by(|a, b| {
            let rank = |x: &Aggregate| {
                peers
                    .iter()
                    .position(|n| *n == x.policy)
                    .unwrap_or(peers.len())
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
        let races = rows.iter().any(|a| a.races_per_1000.is_some());
        let _ = write!(
            out,
            "| policy | valid | p50 ms | p90 ms | p99 ms | p99.9 ms | goodput | failed | timeouts | herding | probes/session | answer p50 ms | max util | fleet CPU | client CPU |"
        );
        if recovery {
            out.push_str(" recovery s |");
        }
        if races {
            out.push_str(" races/1k requests |");
        }
        out.push('\n');
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        if recovery {
            out.push_str("---|");
        }
        if races {
            out.push_str("---|");
        }
        out.push('\n');
        for a in rows {
            if a.seeds == 0 {
                let _ = writeln!(
                    out,
                    "| {} | 0/{} | invalid (cpu) | | | | | | | | | | | {:.2} | {:.2} |{}{}",
                    a.policy,
                    a.runs,
                    a.fleet_cpu.median,
                    a.client_cpu.median,
                    if recovery { " |" } else { "" },
                    if races { " |" } else { "" }
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
            if let Some(r) = a.races_per_1000 {
                let _ = write!(out, " {:.0} ({:.0}–{:.0}) |", r.median, r.min, r.max);
            } else if races {
                out.push_str(" — |");
            }
            out.push('\n');
        }
    }
    out
}
