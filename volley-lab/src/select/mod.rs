//! `select`: the side-by-side selection benchmark of `docs/BENCHMARKS.md` §2.
//!
//! A fleet of 16 volley servers × 4 sleep-based slots runs on one core, the clients on the other.
//! For every cell (workload, load, requests per session, independent clients M) and seed, one
//! trace is drawn — Poisson arrivals, the client each arrives at, every request's work, every
//! speed change — and each policy replays it against a fresh fleet, one policy after the other in
//! a seeded shuffled order. Latency runs from the *scheduled* arrival (no coordinated omission);
//! sessions that time out are counted as infinitely late, not cut off. A run whose client thread
//! or fleet used more than [`CPU_LIMIT`] of a core in its measured period measured the lab, not
//! the policy: it is marked `invalid (cpu)` and left out of every figure.
//!
//! `--zones` runs the zone matrix instead ([`zones`], §6.1), `--long-lived` the long-lived
//! clients that balance every request ([`longlived`], §7) through the same plan, journal and
//! report.

mod fleet;
mod journal;
pub mod longlived;
mod output;
mod plan;
mod plot;
pub mod policy;
pub mod report;
mod run;
pub mod workload;

#[cfg(test)]
mod tests;
pub mod zones;

use std::path::PathBuf;
use std::time::Instant;

use crate::harness::process::pin_to;
use crate::harness::results;
use plan::Plan;
use workload::Workload;

/// The loads of `docs/BENCHMARKS.md` §2.
pub const LOADS: [f64; 5] = [0.5, 0.7, 0.85, 0.95, 1.05];

/// The volley configurations run in every cell of the full matrix (the whole volley cross
/// product runs on the headline cell, half-slow at 0.85, M = 16). The first is volley's primary
/// configuration, fixed before any run: the goals are computed for it.
pub const CORE_VOLLEY: [&str; 3] = [
    "volley-window-immediate-d3",
    "volley-earliest-paced-d3",
    "volley-window-paced-d3",
];

/// The independent clients of the headline (docs/BENCHMARKS.md §2): one per server.
pub const HEADLINE_CLIENTS: usize = 16;
/// The other client counts the headline cell runs at in the full matrix: central, and many.
pub const HEADLINE_SWEEP: [usize; 3] = [1, 16, 64];

/// Above this share of a core, the client or fleet side of a run was saturated: the run is
/// invalid (docs/BENCHMARKS.md §2).
pub const CPU_LIMIT: f64 = 0.85;

#[derive(Debug, Clone, clap::Args)]
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
    /// Run the zone matrix instead (issue 23, Z3; docs/BENCHMARKS.md § zones): three zones of
    /// 6/5/5 servers with 0.25 ms inside a zone and 10/20/30 ms between zones on every
    /// datagram, four zone workloads, sessions of ~10 requests and of one, the zone peers and
    /// volley. Takes --quick, --seeds, --first-seed, --policies, --measure-ms, --warmup-ms,
    /// --clients (one value), --zone-workloads, --zone-requests and --out.
    #[arg(long)]
    pub zones: bool,
    /// Run the long-lived matrix instead (issue 25, P4; docs/BENCHMARKS.md §7): M clients that
    /// live for the whole run send every request of the trace, open loop, each balancing every
    /// request over long-lived connections (tower p2c, Prequal, weighted round robin from
    /// per-reply load reports, C3, round robin), beside volley racing for every request and the
    /// SED oracle. Takes the flags of the §2 matrix; sessions of ~10 requests do not apply.
    #[arg(long, conflicts_with = "zones")]
    pub long_lived: bool,
    /// With --zones: only these zone workloads (default: all four).
    #[arg(long, value_delimiter = ',', requires = "zones")]
    pub zone_workloads: Vec<zones::model::ZoneWorkload>,
    /// With --zones: only sessions of these many requests, 1 and/or 10 (default: both).
    #[arg(long, value_delimiter = ',', requires = "zones")]
    pub zone_requests: Vec<u32>,
    /// A run whose client thread or fleet used more than this share of a core is invalid
    /// (docs/BENCHMARKS.md §2 fixes 0.85; a higher value is for trying the tool on a slow build).
    #[arg(long, default_value_t = CPU_LIMIT)]
    pub cpu_limit: f64,
}

/// Runs the plan the flags ask for (or, with `--report-only`, none of it) and writes the report.
pub fn run(args: SelectArgs) -> anyhow::Result<()> {
    if args.zones {
        return zones::run(&args);
    }
    let started = Instant::now();
    let plan = Plan::new(&args)?;
    if plan.pin {
        pin_to(1);
    }
    results::out_dir(&args.out)?;
    if args.records {
        std::fs::create_dir_all(args.out.join("records"))?;
    }
    let (mut journal, done) = journal::Journal::open(
        &args.out,
        plan.settings(&args),
        args.resume || args.report_only,
    )?;
    let runs = run::run_all(&args, &plan, &mut journal, done)?;
    output::write(&args, &plan, runs, started)
}
