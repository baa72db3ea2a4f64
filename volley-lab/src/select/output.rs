//! The files of a select run: `results.md` (the set-up, the goals, one table per cell, the
//! plots' links), `results.json` (the set-up, the aggregates and every run) and the SVG plots.

use std::time::Instant;

use serde::Serialize;

use super::plan::Plan;
use super::policy::VolleyKnobs;
use super::report::{
    Aggregate, RunSummary, aggregate, goals, long_lived_goals, markdown, p99_by_clients,
    swept_cells,
};
use super::run::{CONNECT_TIMEOUT, REQUEST_TIMEOUT, Runs};
use super::workload::FleetShape;
use super::{CORE_VOLLEY, SelectArgs, plot};
use crate::harness::results;

#[derive(Debug, Serialize)]
struct Setup {
    command: String,
    machine: String,
    cpus: usize,
    pinned: bool,
    seeds: Vec<u64>,
    shape: FleetShape,
    knobs: VolleyKnobs,
    warmup_ms: u64,
    recovery_drop_s: f64,
    connect_timeout_ms: u64,
    request_timeout_ms: u64,
    peak_ewma_decay_s: u64,
    started_unix_s: u64,
    wall_s: f64,
}

#[derive(Debug, Serialize)]
struct Output<'a> {
    setup: &'a Setup,
    aggregates: &'a [Aggregate],
    runs: &'a [RunSummary],
}

/// Writes `results.md` (the goals, then one table per cell, then the plots' links),
/// `results.json` (the set-up, the aggregates and every run) and the plots into `args.out`, and
/// prints `results.md`.
pub(super) fn write(
    args: &SelectArgs,
    plan: &Plan,
    mut runs: Runs,
    started: Instant,
) -> anyhow::Result<()> {
    let aggregates = aggregate(&runs.summaries);
    let setup = Setup {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        cpus: plan.cpus,
        pinned: plan.pin,
        seeds: plan.seeds.clone(),
        shape: plan.shape,
        knobs: plan.knobs,
        warmup_ms: plan.warmup.as_millis() as u64,
        recovery_drop_s: plan.recovery_drop.as_secs_f64(),
        connect_timeout_ms: CONNECT_TIMEOUT.as_millis() as u64,
        request_timeout_ms: REQUEST_TIMEOUT.as_millis() as u64,
        peak_ewma_decay_s: 10,
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        wall_s: started.elapsed().as_secs_f64(),
    };
    let plots = cell_plots(args, plan, &mut runs)?;
    let mut md = format!(
        "# volley-lab select\n\nCommand: `{}`\n\nMachine: {} ({} CPUs{}). Fleet: {} servers × {} slots, mean work {:.0} ms (exponential), \
         sleep-based. Volley servers: capacity {}, paced 1/{} of the expected completion up to {:?}, gated max hold {:?}, reservation {:?}. \
         Seeds: {:?}. Warm-up {:?}; measured period per run as below; connect timeout {:?}, request timeout {:?}. Wall time {:.0} s.\n\n\
         M: independent clients, each with its own balancer state (M = 1: central). \
         p99 cells: median over the valid seeds (min–max). `timeout`: the percentile falls on a session that timed out. \
         `fleet CPU` and `client CPU`: cores used in the measured period by the fleet (its thread and its servers' timer threads) \
         and by the client thread that runs every session; a run where either exceeded {} measured the lab, not the policy: \
         it is `invalid (cpu)` and left out of every figure (`valid` counts the seeds kept).\n",
        setup.command,
        setup.machine,
        plan.cpus,
        if plan.pin {
            ", fleet pinned to CPU 0, clients to CPU 1"
        } else {
            ", not pinned"
        },
        plan.shape.servers,
        plan.shape.slots,
        args.mean_work_ms,
        plan.knobs.capacity,
        plan.knobs.pace_divisor,
        plan.knobs.pace_max,
        plan.knobs.max_hold,
        plan.knobs.reservation,
        plan.seeds,
        plan.warmup,
        CONNECT_TIMEOUT,
        REQUEST_TIMEOUT,
        setup.wall_s,
        args.cpu_limit
    );
    if args.long_lived {
        md.insert_str(
            "# volley-lab select".len(),
            " --long-lived (docs/BENCHMARKS.md §7)",
        );
        md.push_str(&format!(
            "\nLong-lived clients: each of the M clients holds its connections for the whole run and \
             sends every request of the trace that arrives at it, open loop; a row is a request, not a \
             session (`goodput`, `failed`, `timeouts`, `probes/session` count requests). A request's \
             latency runs from its scheduled arrival, its wait to be sent included; one not answered \
             within {:?} of its arrival is a timeout. The peers reach the fleet over its plain request \
             path, one connection per client and server opened before the trace starts, every reply \
             carrying the server's load report. `races/1k requests`: volley races run per 1,000 \
             requests in the measured period (0 for the peers).\n",
            super::longlived::DEADLINE
        ));
    }
    let (held, planned) = (runs.held, plan.runs());
    if held > 0 && !args.report_only {
        md.push_str(&format!(
            "\nResumed: {held} of the {planned} runs came from the journal of an earlier invocation; the wall time above is this invocation's.\n"
        ));
    }
    if runs.summaries.len() < planned {
        md.push_str(&format!(
            "\n**Partial run: {} of the {planned} planned runs are done** (cells in plan order: the headline first);              every figure below covers those runs only, and a cell with fewer seeds than planned says so in `valid`.              `--resume` completes it.\n",
            runs.summaries.len()
        ));
    }
    if args.long_lived {
        md.push_str(&long_lived_goals(&runs.summaries));
    } else {
        md.push_str(&goals(&runs.summaries, CORE_VOLLEY[0]));
    }
    md.push_str(&markdown(&aggregates));
    md.push_str("\n## Plots\n\n");
    for (cdf, ut) in &plots {
        md.push_str(&format!("- [{cdf}]({cdf}), [{ut}]({ut})\n"));
    }
    // p99 against the number of clients, for every cell run at several.
    for (w, l, r, ms) in swept_cells(&aggregates) {
        let stem = format!("p99-vs-clients-{}-{:.2}-{}.svg", w.name(), l, r.tag());
        let series = p99_by_clients(&aggregates, w, l, r);
        plot::p99_vs_clients(
            &args.out.join(&stem),
            &format!(
                "p99 against independent clients — {} fleet, load {l:.2}, {} request(s)/session, median of valid seeds",
                w.name(),
                r.name()
            ),
            &ms,
            &series,
        )?;
        md.push_str(&format!("- [{stem}]({stem})\n"));
    }
    results::write(
        &args.out,
        &md,
        &Output {
            setup: &setup,
            aggregates: &aggregates,
            runs: &runs.summaries,
        },
    )?;
    println!("{md}");
    eprintln!(
        "wrote {}/results.md, results.json and {} plots in {:.0} s",
        args.out.display(),
        plots.len() * 2,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The latency CDF and utilisation plots of each cell at load 0.85 (every workload), plus any
/// cell when there are few; their file names.
fn cell_plots(
    args: &SelectArgs,
    plan: &Plan,
    runs: &mut Runs,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut plots = Vec::new();
    for (ci, cell) in plan.cells.iter().enumerate() {
        if (cell.load - 0.85).abs() > 1e-9 && plan.cells.len() > 8 {
            continue;
        }
        let names: Vec<String> = cell.policies.iter().map(|p| p.name()).collect();
        let mut lat = Vec::new();
        let mut util = Vec::new();
        let mut share = Vec::new();
        for name in &names {
            let Some((l, u, s)) = runs.pooled.get_mut(&(ci, name.clone())) else {
                continue;
            };
            l.sort_by(f64::total_cmp);
            let n = u.len().max(1) as f64;
            let mean: Vec<f64> = (0..s.len())
                .map(|k| {
                    u.iter()
                        .map(|v| v.get(k).copied().unwrap_or(0.0))
                        .sum::<f64>()
                        / n
                })
                .collect();
            lat.push(l.clone());
            util.push(mean);
            share = s.clone();
        }
        let series: Vec<plot::Series<'_>> = names
            .iter()
            .zip(lat.iter().zip(util.iter()))
            .map(|(name, (l, u))| plot::Series {
                name,
                latencies: l,
                utilisation: u,
            })
            .collect();
        let stem = cell.stem();
        let title = format!(
            "{} fleet, load {:.2}, {} request(s)/session, M = {} client(s), {} seed(s) pooled",
            cell.workload.name(),
            cell.load,
            cell.requests.name(),
            cell.clients,
            plan.seeds.len()
        );
        let cdf = format!("cdf-{stem}.svg");
        plot::latency_cdf(
            &args.out.join(&cdf),
            &format!("Latency CDF — {title}"),
            &series,
        )?;
        let ut = format!("util-{stem}.svg");
        plot::utilisation(
            &args.out.join(&ut),
            &format!("Utilisation per server — {title}"),
            &series,
            &share,
        )?;
        plots.push((cdf, ut));
    }
    Ok(plots)
}

/// The CPU model, from /proc/cpuinfo when there is one.
fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
