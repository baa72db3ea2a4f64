//! `select`: the side-by-side selection benchmark of `BENCHMARKS.md` §2.
//!
//! A fleet of 16 volley servers × 4 sleep-based slots runs on one core, the clients on the other.
//! For every cell (workload, load, requests per session, independent clients M) and seed, one
//! trace is drawn — Poisson arrivals, the client each arrives at, every request's work, every
//! speed change — and each policy replays it against a fresh fleet, one policy after the other in
//! a seeded shuffled order. Latency runs from the *scheduled* arrival (no coordinated omission);
//! sessions that time out are counted as infinitely late, not cut off. A run whose client thread
//! or fleet used more than [`CPU_LIMIT`] of a core in its measured period measured the lab, not
//! the policy: it is marked `invalid (cpu)` and left out of every figure.

pub(crate) mod cpu;
mod fleet;
mod journal;
mod plot;
pub mod policy;
pub mod report;
pub mod workload;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use volley::StaticKeypair;

use fleet::Fleet;
use policy::{Policy, RunCtx, VolleyKnobs};
use report::{RunMeta, RunSummary};
use workload::{FleetShape, Requests, TraceSpec, Workload};

/// The loads of `BENCHMARKS.md` §2.
pub const LOADS: [f64; 5] = [0.5, 0.7, 0.85, 0.95, 1.05];

/// The volley configurations run in every cell of the full matrix (the whole volley cross
/// product runs on the headline cell, half-slow at 0.85, M = 16). The first is volley's primary
/// configuration, fixed before any run: the goals are computed for it.
pub const CORE_VOLLEY: [&str; 3] = [
    "volley-window-immediate-d3",
    "volley-earliest-paced-d3",
    "volley-window-paced-d3",
];

/// The independent clients of the headline (BENCHMARKS.md §2): one per server.
pub const HEADLINE_CLIENTS: usize = 16;
/// The other client counts the headline cell runs at in the full matrix: central, and many.
pub const HEADLINE_SWEEP: [usize; 3] = [1, 16, 64];

/// Above this share of a core, the client or fleet side of a run was saturated: the run is
/// invalid (BENCHMARKS.md §2).
pub const CPU_LIMIT: f64 = 0.85;

#[derive(Debug, clap::Args)]
pub struct SelectArgs {
    /// Folder for results.md, results.json and the SVG plots (created if missing).
    #[arg(long, default_value = "select-results")]
    pub out: PathBuf,
    /// A run of about a minute and a half: one seed, every workload at load 0.85, the peers and
    /// volley's core configurations, shorter periods.
    #[arg(long)]
    pub quick: bool,
    /// Seeds (the full run needs at least 5: figures are median and min–max over seeds).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Only these workloads (default: all six).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
    /// Only these loads (default: 0.5,0.7,0.85,0.95,1.05).
    #[arg(long, value_delimiter = ',')]
    pub loads: Vec<f64>,
    /// Only these policies, by name (default: the matrix of the mode; `all` for every one).
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Measured period per run, ms (after the warm-up).
    #[arg(long)]
    pub measure_ms: Option<u64>,
    /// Warm-up per run, ms (arrivals run, not measured).
    #[arg(long)]
    pub warmup_ms: Option<u64>,
    /// How long two servers stay at 0.2x in the recovery workload, s.
    #[arg(long, default_value_t = 10.0)]
    pub recovery_drop_s: f64,
    /// Independent client instances, each with its own balancer state (default: 16; the full
    /// matrix also runs the headline cell at 1 and 64). Several values run each cell at each.
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Servers in the fleet (§2 fixes 16; smaller fleets are for trying the tool).
    #[arg(long, default_value_t = 16)]
    pub servers: usize,
    /// Slots per server (§2 fixes 4).
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
    /// Mean work of a request at full speed, ms (exponential).
    #[arg(long, default_value_t = 40.0)]
    pub mean_work_ms: f64,
    /// Volley servers' capacity: the requests they serve at once (default: the slots).
    #[arg(long)]
    pub capacity: Option<u32>,
    /// Paced servers' longest delay, ms.
    #[arg(long, default_value_t = 10.0)]
    pub pace_max_ms: f64,
    /// Paced servers' divisor: the delay is the expected completion time divided by this.
    #[arg(long, default_value_t = 32)]
    pub pace_divisor: u32,
    /// Gated servers' longest hold, ms.
    #[arg(long, default_value_t = 200.0)]
    pub max_hold_ms: f64,
    /// How long an offer counts as load, ms (the protocol's default).
    #[arg(long, default_value_t = 5.0)]
    pub reservation_ms: f64,
    /// Also run sessions of ~10 requests (uniform 5–15), in the cells the mode gives them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub long_sessions: bool,
    /// Do not pin the fleet and the clients to separate CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Continue the run whose journal is in OUT: runs it already holds are not redone (the
    /// settings must match). Without it, a new run replaces OUT's journal.
    #[arg(long)]
    pub resume: bool,
    /// Run nothing: write the report from OUT's journal (a partial run says how partial).
    #[arg(long, conflicts_with = "records")]
    pub report_only: bool,
    /// Write every session's record (JSON lines, one file per run) under OUT/records/.
    #[arg(long)]
    pub records: bool,
    /// A run whose client thread or fleet used more than this share of a core is invalid
    /// (BENCHMARKS.md §2 fixes 0.85; a higher value is for trying the tool on a slow build).
    #[arg(long, default_value_t = CPU_LIMIT)]
    pub cpu_limit: f64,
}

/// One cell of the matrix and the policies run in it.
#[derive(Debug, Clone)]
struct Cell {
    workload: Workload,
    load: f64,
    requests: Requests,
    clients: usize,
    policies: Vec<Policy>,
    measure: Duration,
}

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
    aggregates: &'a [report::Aggregate],
    runs: &'a [RunSummary],
}

/// Per (cell, policy): latencies over seeds, per-seed utilisation (slowest server first), and
/// the capacity shares in that order.
type Pooled = (Vec<f64>, Vec<Vec<f64>>, Vec<f64>);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

pub fn run(args: SelectArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    anyhow::ensure!(
        args.servers >= 2 && args.slots >= 1,
        "a fleet needs at least 2 servers of 1 slot"
    );
    anyhow::ensure!(args.cpu_limit > 0.0, "--cpu-limit must be positive");
    let shape = FleetShape {
        servers: args.servers,
        slots: args.slots,
        mean_work: Duration::from_secs_f64(args.mean_work_ms / 1e3),
    };
    let knobs = VolleyKnobs {
        capacity: args.capacity.unwrap_or(args.slots as u32),
        pace_max: Duration::from_secs_f64(args.pace_max_ms / 1e3),
        pace_divisor: args.pace_divisor,
        max_hold: Duration::from_secs_f64(args.max_hold_ms / 1e3),
        reservation: Duration::from_secs_f64(args.reservation_ms / 1e3),
    };
    let seeds: Vec<u64> = (0..args.seeds.unwrap_or(if args.quick { 1 } else { 5 }))
        .map(|k| args.first_seed + k)
        .collect();
    let (warmup, measure) = if args.quick {
        (
            Duration::from_millis(args.warmup_ms.unwrap_or(500)),
            Duration::from_millis(args.measure_ms.unwrap_or(1500)),
        )
    } else {
        (
            Duration::from_millis(args.warmup_ms.unwrap_or(1000)),
            Duration::from_millis(args.measure_ms.unwrap_or(5000)),
        )
    };
    let recovery_drop = Duration::from_secs_f64(if args.quick {
        args.recovery_drop_s.min(1.0)
    } else {
        args.recovery_drop_s
    });
    let cells = plan(&args, measure, recovery_drop)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = !args.no_pin && cpus >= 2;
    if pin {
        pin_to(1);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    if args.records {
        std::fs::create_dir_all(args.out.join("records"))?;
    }
    let settings = serde_json::json!({
        "shape": shape,
        "knobs": knobs,
        "warmup_ms": warmup.as_millis() as u64,
        "measure_ms": measure.as_millis() as u64,
        "recovery_drop_ms": recovery_drop.as_millis() as u64,
        "cpu_limit": args.cpu_limit,
        "pinned": pin,
    });
    let (mut journal, done) =
        journal::Journal::open(&args.out, settings, args.resume || args.report_only)?;
    let mut done: HashMap<journal::RunKey, journal::Entry> =
        done.into_iter().map(|e| (e.key(), e)).collect();
    let planned: usize = cells.iter().map(|c| c.policies.len()).sum::<usize>() * seeds.len();
    let key_of = |cell: &Cell, policy: &Policy, seed: u64| {
        journal::RunKey::new(
            cell.workload,
            cell.load,
            cell.requests,
            cell.clients,
            &policy.name(),
            seed,
        )
    };
    let (missing, missing_s) = cells
        .iter()
        .flat_map(|c| seeds.iter().map(move |&s| (c, s)))
        .flat_map(|(c, s)| c.policies.iter().map(move |p| (c, s, p)))
        .filter(|(c, s, p)| !done.contains_key(&key_of(c, p, *s)))
        .fold((0u64, 0.0f64), |(n, t), (c, _, _)| {
            (n + 1, t + (warmup + c.measure).as_secs_f64())
        });
    let held = planned as u64 - missing;
    let (to_run, to_run_s) = if args.report_only {
        (0, 0.0)
    } else {
        (missing, missing_s)
    };
    eprintln!(
        "volley-lab select: {} cells, {} runs over {} seed(s); {} in the journal, {} to run, about {:.0} s of arrivals; results in {}",
        cells.len(),
        planned,
        seeds.len(),
        held,
        to_run,
        to_run_s,
        args.out.display()
    );
    let bar = ProgressBar::new(to_run);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} runs (eta {eta}) {msg}",
        )?
        .progress_chars("=> "),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut runs: Vec<RunSummary> = Vec::new();
    // Pooled latencies and sorted utilisation for the plots, per (cell, policy); invalid runs
    // are left out.
    let mut pooled: HashMap<(usize, String), Pooled> = HashMap::new();
    // Cell by cell, every seed of a cell before the next cell: the most important cells come
    // first (see `plan`), so an interrupted run has them complete.
    for (ci, cell) in cells.iter().enumerate() {
        for &seed in &seeds {
            let spec = TraceSpec {
                shape,
                workload: cell.workload,
                load: cell.load,
                requests: cell.requests,
                seed,
                warmup,
                measure: cell.measure,
                recovery_drop,
            };
            let mut order = cell.policies.clone();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                seed ^ cell_salt(cell.workload, cell.load, cell.requests, cell.clients),
            ));
            let mut trace = None;
            for policy in order {
                if let Some(entry) = done.remove(&key_of(cell, &policy, seed)) {
                    let latencies = entry.latencies();
                    pool(&mut pooled, ci, entry.summary, latencies, &mut runs);
                    continue;
                }
                if args.report_only {
                    continue;
                }
                let trace = trace.get_or_insert_with(|| spec.draw());
                bar.set_message(format!(
                    "seed {seed} {} {:.2} {} M={} {}",
                    cell.workload.name(),
                    cell.load,
                    cell.requests.name(),
                    cell.clients,
                    policy.name()
                ));
                let (summary, records) = one_run(
                    &rt,
                    shape,
                    &*trace,
                    &spec,
                    policy,
                    &knobs,
                    &key,
                    (pin, args.cpu_limit),
                    seed,
                    cell.clients,
                )?;
                if args.records {
                    write_records(&args.out, &summary, &records)?;
                }
                if summary.invalid_cpu {
                    bar.println(format!(
                        "invalid (cpu): seed {seed} {} {:.2} M={} {}: client {:.2}, fleet {:.2} cores",
                        cell.workload.name(),
                        cell.load,
                        cell.clients,
                        summary.policy,
                        summary.client_cpu,
                        summary.fleet_cpu
                    ));
                }
                let latencies = report::latencies(&records, warmup, trace.end);
                journal.append(&journal::Entry::new(summary.clone(), &latencies))?;
                pool(&mut pooled, ci, summary, latencies, &mut runs);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let aggregates = report::aggregate(&runs);
    let setup = Setup {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        cpus,
        pinned: pin,
        seeds: seeds.clone(),
        shape,
        knobs,
        warmup_ms: warmup.as_millis() as u64,
        recovery_drop_s: recovery_drop.as_secs_f64(),
        connect_timeout_ms: CONNECT_TIMEOUT.as_millis() as u64,
        request_timeout_ms: REQUEST_TIMEOUT.as_millis() as u64,
        peak_ewma_decay_s: 10,
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        wall_s: started.elapsed().as_secs_f64(),
    };
    // Plots: each cell at load 0.85 (every workload), plus any cell when there are few.
    let mut plots = Vec::new();
    for (ci, cell) in cells.iter().enumerate() {
        if (cell.load - 0.85).abs() > 1e-9 && cells.len() > 8 {
            continue;
        }
        let names: Vec<String> = cell.policies.iter().map(|p| p.name()).collect();
        let mut lat = Vec::new();
        let mut util = Vec::new();
        let mut share = Vec::new();
        for name in &names {
            let Some((l, u, s)) = pooled.get_mut(&(ci, name.clone())) else {
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
        let stem = format!(
            "{}-{:.2}-{}-m{}",
            cell.workload.name(),
            cell.load,
            cell.requests.tag(),
            cell.clients
        );
        let title = format!(
            "{} fleet, load {:.2}, {} request(s)/session, M = {} client(s), {} seed(s) pooled",
            cell.workload.name(),
            cell.load,
            cell.requests.name(),
            cell.clients,
            seeds.len()
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
        cpus,
        if pin {
            ", fleet pinned to CPU 0, clients to CPU 1"
        } else {
            ", not pinned"
        },
        shape.servers,
        shape.slots,
        args.mean_work_ms,
        knobs.capacity,
        knobs.pace_divisor,
        knobs.pace_max,
        knobs.max_hold,
        knobs.reservation,
        seeds,
        warmup,
        CONNECT_TIMEOUT,
        REQUEST_TIMEOUT,
        setup.wall_s,
        args.cpu_limit
    );
    if held > 0 && !args.report_only {
        md.push_str(&format!(
            "\nResumed: {held} of the {planned} runs came from the journal of an earlier invocation; the wall time above is this invocation's.\n"
        ));
    }
    if runs.len() < planned {
        md.push_str(&format!(
            "\n**Partial run: {} of the {planned} planned runs are done** (cells in plan order: the headline first);              every figure below covers those runs only, and a cell with fewer seeds than planned says so in `valid`.              `--resume` completes it.\n",
            runs.len()
        ));
    }
    md.push_str(&report::goals(&runs, CORE_VOLLEY[0]));
    md.push_str(&report::markdown(&aggregates));
    md.push_str("\n## Plots\n\n");
    for (cdf, ut) in &plots {
        md.push_str(&format!("- [{cdf}]({cdf}), [{ut}]({ut})\n"));
    }
    // p99 against the number of clients, for every cell run at several.
    for (w, l, r, ms) in report::swept_cells(&aggregates) {
        let stem = format!("p99-vs-clients-{}-{:.2}-{}.svg", w.name(), l, r.tag());
        let series = report::p99_by_clients(&aggregates, w, l, r);
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
    std::fs::write(args.out.join("results.md"), &md)?;
    let json = serde_json::to_string_pretty(&Output {
        setup: &setup,
        aggregates: &aggregates,
        runs: &runs,
    })?;
    std::fs::write(args.out.join("results.json"), json)?;
    println!("{md}");
    eprintln!(
        "wrote {}/results.md, results.json and {} plots in {:.0} s",
        args.out.display(),
        plots.len() * 2,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Adds one run to the figures: its summary, and unless it was invalid its latencies and
/// utilisation to the pooled plots of its cell.
fn pool(
    pooled: &mut HashMap<(usize, String), Pooled>,
    ci: usize,
    summary: RunSummary,
    latencies: Vec<f64>,
    runs: &mut Vec<RunSummary>,
) {
    if !summary.invalid_cpu {
        let entry = pooled.entry((ci, summary.policy.clone())).or_default();
        entry.0.extend(latencies);
        let mut idx: Vec<usize> = (0..summary.utilisation.len()).collect();
        idx.sort_by(|&a, &b| {
            summary.capacity_share[a]
                .total_cmp(&summary.capacity_share[b])
                .then(a.cmp(&b))
        });
        entry
            .1
            .push(idx.iter().map(|&i| summary.utilisation[i]).collect());
        entry.2 = idx.iter().map(|&i| summary.capacity_share[i]).collect();
    }
    runs.push(summary);
}

/// What a cell's policy order is shuffled with (besides the seed): the cell itself, not its
/// place in the plan, so filtering the matrix does not change the order of a cell's runs.
fn cell_salt(workload: Workload, load: f64, requests: Requests, clients: usize) -> u64 {
    let w = Workload::ALL
        .iter()
        .position(|&x| x == workload)
        .unwrap_or(0) as u64;
    let r = match requests {
        Requests::One => 1,
        Requests::About10 => 10,
    };
    (w << 48) ^ (((load * 1000.0).round() as u64) << 32) ^ (r << 24) ^ clients as u64
}

/// Where a cell comes in the run: the headline cell (half-slow, 0.85) at M = 16, then at the
/// other client counts, then every workload at 0.85, then the other loads from the most
/// telling (near and past capacity) down, then the sessions of ~10 requests.
fn priority(cell: &Cell) -> (u8, u8) {
    let at = |l: f64| (cell.load - l).abs() < 1e-9;
    if cell.requests != Requests::One {
        return (9, 0);
    }
    if cell.workload == Workload::HalfSlow && at(0.85) {
        return (0, u8::from(cell.clients != HEADLINE_CLIENTS));
    }
    let rank = [0.85, 0.95, 1.05, 0.7, 0.5]
        .iter()
        .position(|&l| at(l))
        .map_or(8, |k| k as u8 + 1);
    (rank, 0)
}

/// The matrix of the mode, filtered by the flags.
fn plan(
    args: &SelectArgs,
    measure: Duration,
    recovery_drop: Duration,
) -> anyhow::Result<Vec<Cell>> {
    let explicit: Option<Vec<Policy>> = if args.policies.is_empty() {
        None
    } else if args.policies.iter().any(|p| p == "all") {
        Some(Policy::all())
    } else {
        Some(
            args.policies
                .iter()
                .map(|n| {
                    Policy::parse(n).with_context(|| {
                        format!(
                            "unknown policy {n:?}; known: {}",
                            Policy::all()
                                .iter()
                                .map(|p| p.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        )
    };
    let mut core = Policy::peers();
    core.extend(CORE_VOLLEY.iter().filter_map(|n| Policy::parse(n)));
    anyhow::ensure!(
        args.clients.iter().all(|&c| (1..=1024).contains(&c)),
        "--clients must be 1..=1024"
    );
    let explicit_clients = !args.clients.is_empty();
    let clients_for = |headline: bool| -> Vec<usize> {
        if explicit_clients {
            args.clients.clone()
        } else if headline && !args.quick {
            HEADLINE_SWEEP.to_vec()
        } else {
            vec![HEADLINE_CLIENTS]
        }
    };
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    let loads: Vec<f64> = if args.loads.is_empty() {
        LOADS.to_vec()
    } else {
        args.loads.clone()
    };
    anyhow::ensure!(
        loads.iter().all(|&l| l > 0.0 && l < 2.0),
        "loads must be in (0, 2)"
    );
    let recovery_measure = (recovery_drop
        + if args.quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(3)
        })
    .max(measure);
    let mut cells = Vec::new();
    let headline = |w: Workload, l: f64| w == Workload::HalfSlow && (l - 0.85).abs() < 1e-9;
    for &w in &workloads {
        let cell_loads: Vec<f64> = if args.quick {
            loads
                .iter()
                .copied()
                .filter(|l| (l - 0.85).abs() < 1e-9 || !args.loads.is_empty())
                .collect()
        } else if w == Workload::Recovery && args.loads.is_empty() {
            // A 10 s drop per run: at 0.85 only (see docs/RESULTS.md).
            vec![0.85]
        } else {
            loads.clone()
        };
        for l in cell_loads {
            for m in clients_for(headline(w, l)) {
                let policies = match &explicit {
                    Some(p) => p.clone(),
                    None if headline(w, l) && m == HEADLINE_CLIENTS && !args.quick => Policy::all(),
                    None => core.clone(),
                };
                cells.push(Cell {
                    workload: w,
                    load: l,
                    requests: Requests::One,
                    clients: m,
                    policies,
                    measure: if w == Workload::Recovery {
                        recovery_measure
                    } else {
                        measure
                    },
                });
            }
        }
    }
    if args.long_sessions && !args.quick {
        for &w in workloads
            .iter()
            .filter(|w| matches!(w, Workload::Homogeneous | Workload::HalfSlow))
        {
            if loads.iter().any(|l| (l - 0.85).abs() < 1e-9) {
                for m in clients_for(false) {
                    cells.push(Cell {
                        workload: w,
                        load: 0.85,
                        requests: Requests::About10,
                        clients: m,
                        policies: explicit.clone().unwrap_or_else(|| core.clone()),
                        measure: measure * 2,
                    });
                }
            }
        }
    }
    anyhow::ensure!(!cells.is_empty(), "nothing to run");
    cells.sort_by_key(priority);
    Ok(cells)
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    rt: &tokio::runtime::Runtime,
    shape: FleetShape,
    trace: &workload::Trace,
    spec: &TraceSpec,
    policy: Policy,
    knobs: &VolleyKnobs,
    key: &StaticKeypair,
    (pin, cpu_limit): (bool, f64),
    seed: u64,
    clients: usize,
) -> anyhow::Result<(RunSummary, Vec<policy::Record>)> {
    let fleet = Fleet::start(
        shape,
        trace.schedule.clone(),
        policy.answering(knobs),
        key.clone(),
        pin.then_some(0),
    )?;
    let mean_session = shape.mean_work.mul_f64(spec.requests.mean());
    let ctx = Arc::new(RunCtx::new(
        clients,
        Arc::new(trace.schedule.clone()),
        fleet.addrs.clone(),
        fleet.load_ports.clone(),
        fleet.key,
        fleet.start,
        shape.slots,
        mean_session,
        seed,
        (CONNECT_TIMEOUT, REQUEST_TIMEOUT),
    ));
    let states = fleet.state.clone();
    let (warm_at, end_at) = (fleet.start + trace.warmup, fleet.start + trace.end);
    let records = rt.block_on(async {
        // Slot time worked in the measured period: read at its start and end.
        let snap = {
            let states = states.clone();
            tokio::spawn(async move {
                let read = |s: &[Arc<fleet::ServerState>]| -> Vec<u64> {
                    s.iter()
                        .map(|x| x.busy_us.load(std::sync::atomic::Ordering::Relaxed))
                        .collect()
                };
                tokio::time::sleep_until(warm_at.into()).await;
                let (a, cpu_a) = (read(&states), cpu::sample());
                tokio::time::sleep_until(end_at.into()).await;
                let (b, cpu_b) = (read(&states), cpu::sample());
                let busy = a
                    .iter()
                    .zip(b)
                    .map(|(a, b)| b.saturating_sub(*a))
                    .collect::<Vec<u64>>();
                (busy, cpu::between(&cpu_a, &cpu_b))
            })
        };
        let records = policy::drive(policy, ctx, trace.jobs.clone()).await?;
        let (busy, cpu) = snap.await?;
        anyhow::Ok((records, busy, cpu))
    })?;
    let (records, busy_us, cpu) = records;
    let stats = fleet.stop()?;
    let summary = report::summarise(
        &records,
        RunMeta {
            workload: spec.workload,
            load: spec.load,
            requests: spec.requests,
            clients,
            policy: policy.name(),
            seed,
            warmup: trace.warmup,
            end: trace.end,
            schedule: &trace.schedule,
            busy_us,
            slots: shape.slots,
            servers: shape.servers,
            capacity_share: trace.schedule.capacity_share(&shape),
            stats: &stats,
            cpu,
            cpu_limit,
        },
    );
    Ok((summary, records))
}

fn write_records(out: &Path, s: &RunSummary, records: &[policy::Record]) -> anyhow::Result<()> {
    let name = format!(
        "{}-{:.2}-{}-m{}-{}-seed{}.jsonl",
        s.workload.name(),
        s.load,
        s.requests.tag(),
        s.clients,
        s.policy,
        s.seed
    );
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    std::fs::write(out.join("records").join(name), text)?;
    Ok(())
}

/// Pins the calling thread to one CPU (best effort: a failure only costs isolation).
pub(crate) fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        tracing::warn!(cpu, error = %e, "could not pin thread");
    }
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
