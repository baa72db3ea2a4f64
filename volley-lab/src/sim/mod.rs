//! `sim`: the discrete-event simulator of `docs/BENCHMARKS.md` §3. It drives the real `volley-proto`
//! state machines — the client's [`volley_proto::client::race::Race`] and the server's
//! [`volley_proto::ServerEndpoint`] — on a virtual clock, with no sockets and no tokio, at
//! 10,000 servers.
//!
//! It first reproduces Mitzenmacher's supermarket table ([`supermarket`]), with the protocol
//! making the join-the-shortest-of-d choice, then sweeps the number of independent clients at
//! 10,000 servers for volley and the peers as users run them, each client with its own view
//! (`sim sweep`, docs/BENCHMARKS.md §3), and runs volley's own policies at fleet scale
//! (`sim policies`, [`policies`]), reporting the metrics `select` reports; `sim zones`
//! ([`zones`]) runs the zones question, and `sim pools` ([`pools`]) balances every request of
//! long-lived clients, volley's pools of sessions beside the per-request peers. [`engine`] is
//! the event loop and says exactly what is real protocol and what is modelled; in short:
//!
//! - real: probe encoding, the race (tags, earliest / window decision, retransmission, deadline,
//!   late offers), the server's answer policy (immediate / paced / gated) and its expected
//!   completion estimate (measured service time, L5), held probes and their timers,
//!   reservations, cookies in offers, load hints;
//! - modelled: the network (fixed delay + uniform jitter, no loss), the work (exponential, FIFO
//!   slots), the peers' rules and state ([`engine`]'s `peers`);
//! - skipped: the Noise handshake and the session's packets. `Connection` is not used because
//!   winning a race starts the handshake (an X25519 key pair and DH per connect, ~100+ µs), and
//!   because it deduplicates its pool in O(n²) (10⁸ comparisons for a 10,000-server pool).
//!
//! Everything is seeded (ChaCha); the same seed gives the same numbers. Arrival times and work
//! sizes come from their own RNG stream, so every policy of one seed sees the same trace.

pub mod engine;
pub mod policies;
pub mod pools;
pub mod queue;
pub mod summary;
pub mod supermarket;
pub mod tables;
pub mod zones;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::harness::results;
use policies::Workload;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// The supermarket check, then the sweep over clients.
    All,
    /// The supermarket check only.
    Supermarket,
    /// volley and the peers against the number of independent clients (docs/BENCHMARKS.md §3):
    /// p99 at M = 1, N/100, N/10 and N clients, half-slow, loads 0.85 and 0.95.
    Sweep,
    /// volley's own policies (answer × selection × fan-out) with the references.
    Policies,
    /// Speed: one 1M-session supermarket run (λ 0.9, d 2) and one 1M-session policy run
    /// (paced/earliest d=3, half-slow, load 0.95).
    Bench,
    /// Zones (docs/BENCHMARKS.md §3, "sim zones"): 10 zones × 1,000 servers with a seeded
    /// round-trip matrix of 1–80 ms; hot-zone, outage and balanced workloads; sessions of ~10
    /// requests and of one; M = 16, 1,000 and 10,000 clients; volley, the peers and the oracle;
    /// seeds 1–5 unless given. Writes results.md and results.json with --out.
    Zones,
    /// Pools (docs/BENCHMARKS.md §3, "sim pools"): M long-lived clients send requests for the
    /// whole run; volley's pools of k = 2, 3, 4 sessions balance each request from per-reply
    /// reports, beside the per-request peers and SED(3)-exact; M = N/100, N/10 and N; half-slow,
    /// loads 0.85 and 0.95; seeds 1–5 unless given. Writes results.md and results.json with --out.
    Pools,
}

/// `volley-lab sim` flags.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// What to run.
    #[arg(value_enum, default_value = "all")]
    pub what: What,
    /// A small, fast configuration for trying things: 1,000 servers and short runs (flags given
    /// explicitly still win).
    #[arg(long)]
    pub quick: bool,
    /// Servers in the fleet. Default 10,000 (1,000 with --quick).
    #[arg(long)]
    pub servers: Option<usize>,
    /// Seeds, comma-separated; each cell / run is repeated per seed. Default 1 (zones and pools:
    /// 1,2,3,4,5, and 1 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Supermarket: measured sessions per cell and seed. Default 2,000,000 (200,000 --quick).
    #[arg(long)]
    pub sessions: Option<u64>,
    /// Supermarket: measured sessions for the slow-mixing cells (d = 1, λ ≥ 0.85: M/M/1 queues
    /// near saturation, whose averages converge slowly). Default 10,000,000 (1,000,000 --quick).
    #[arg(long)]
    pub hard_sessions: Option<u64>,
    /// Supermarket: warm-up in mean service times, after starting from the stationary state.
    #[arg(long, default_value_t = 20.0)]
    pub warmup_units: f64,
    /// Supermarket: arrival rates per server.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9")]
    pub lambdas: Vec<f64>,
    /// Supermarket: numbers of choices.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub ds: Vec<u32>,
    /// Sweep and policies: measured sessions per run; pools: measured requests per run. Default
    /// 300,000 (30,000 --quick).
    #[arg(long)]
    pub policy_sessions: Option<u64>,
    /// Policies: unmeasured ms of virtual time after the start from the pilot's distribution.
    #[arg(long, default_value_t = 100)]
    pub warmup_ms: u64,
    /// Policies: virtual ms the pilot runs from empty (its second half is sampled). Default 2000
    /// (1000 --quick).
    #[arg(long)]
    pub pilot_ms: Option<u64>,
    /// Policies: servers of the pilot fleet; 0 turns the pilot off (start empty). Default 1/10 of
    /// the fleet, at least 100.
    #[arg(long)]
    pub pilot_servers: Option<usize>,
    /// Sweep and policies: the local-view peers' unmeasured start, virtual ms (they start
    /// empty). Default 3000 (1000 --quick).
    #[arg(long)]
    pub local_warmup_ms: Option<u64>,
    /// Sweep, policies and pools: offered loads (≥ 1 is overload: every run is bounded by its
    /// sessions, and the table flags it). Default: 0.85,0.95 for the sweep, 0.5,0.7,0.85,0.95
    /// for policies.
    #[arg(long, value_delimiter = ',')]
    pub loads: Vec<f64>,
    /// Sweep, policies and pools: workloads. Default: half-slow for the sweep and pools,
    /// homogeneous,half-slow for policies.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
    /// Sweep, policies, zones and pools: numbers of independent clients. Default: 1, N/100, N/10
    /// and N for the sweep (N servers), 1 for policies, 16,1000,10000 for zones, N/100, N/10 and
    /// N for pools.
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Policies: fan-outs of the protocol runs.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    pub fanouts: Vec<usize>,
    /// Policies: leave out the d = 8 extras.
    #[arg(long)]
    pub no_extras: bool,
    /// Policies and pools: only those whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Zones: how many.
    #[arg(long, default_value_t = 10)]
    pub zones: usize,
    /// Zones: servers per zone. Default 1,000 (100 with --quick).
    #[arg(long)]
    pub zone_servers: Option<usize>,
    /// Zones: workloads. Default hot-zone,outage,balanced.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub zone_workloads: Vec<zones::ZoneWorkload>,
    /// Zones: session kinds. Default ten,one.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub zone_requests: Vec<zones::Requests>,
    /// Zones: policies. Default all: zone-p2c, global-p2c, locality, prequal, oracle, volley,
    /// volley-early.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub zone_policies: Vec<zones::ZonePolicy>,
    /// Zones: unmeasured start, virtual ms (from empty). Default 3000 (1500 with --quick).
    #[arg(long)]
    pub zone_warmup_ms: Option<u64>,
    /// Zones: measured window, virtual ms (sessions arriving in it are measured). Default 2000
    /// (600 with --quick).
    #[arg(long)]
    pub zone_window_ms: Option<u64>,
    /// Pools: the pools' numbers of members k.
    #[arg(long, value_delimiter = ',')]
    pub pool_ks: Vec<usize>,
    /// Pools: least unmeasured start, virtual ms (every policy starts empty). Default 3000 (1000
    /// with --quick).
    #[arg(long)]
    pub pool_warmup_ms: Option<u64>,
    /// Pools: least unmeasured requests per client (the pools' memberships settle within about
    /// a thousand; at M = N this is the longer bound).
    #[arg(long, default_value_t = 1_500)]
    pub pool_warmup_requests: u64,
    /// Pools: least races per member before the measurement (a pool's warm-up is at least the
    /// time its client needs for them at its race rate).
    #[arg(long, default_value_t = 2.0)]
    pub pool_warmup_races: f64,
    /// Pools: add the pool whose k is scaled to the clients (⌈3N/M⌉: 300 members at M = N/100),
    /// whose balancer weighs every member per request (slow at large k: see BENCHMARKS.md §3).
    #[arg(long)]
    pub scaled_pool: bool,
    /// Write sim.json (raw results) and sim.md (the tables) here (zones and pools: results.json
    /// and results.md).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    servers: usize,
    seeds: Vec<u64>,
    supermarket: Vec<supermarket::Cell>,
    sweep: Vec<policies::Record>,
    policies: Vec<policies::Record>,
    bench: Vec<BenchRun>,
}

#[derive(Debug, Serialize)]
struct BenchRun {
    name: String,
    measured: u64,
    simulated: u64,
    events: u64,
    wall_s: f64,
    sessions_per_s: f64,
}

fn bar(len: u64, msg: String, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} sessions, {elapsed}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg);
    pb
}

/// The sizes of a `sim` invocation: its flags, or the defaults of its mode (`--quick` or not).
struct Sizes {
    servers: usize,
    /// Supermarket: measured sessions per cell and seed, and for the slow-mixing cells.
    sessions: u64,
    hard_sessions: u64,
    /// Sweep and policies: measured sessions per run.
    policy_sessions: u64,
    warmup: policies::Warmup,
}

impl Sizes {
    fn new(args: &SimArgs) -> anyhow::Result<Sizes> {
        let quick = args.quick;
        let servers = args.servers.unwrap_or(if quick { 1_000 } else { 10_000 });
        anyhow::ensure!(servers >= 2, "at least 2 servers");
        anyhow::ensure!(!args.seeds.is_empty(), "at least one seed");
        let sessions = args
            .sessions
            .unwrap_or(if quick { 200_000 } else { 2_000_000 });
        let hard_sessions =
            args.hard_sessions
                .unwrap_or(if quick { 3_000_000 } else { 10_000_000 });
        let policy_sessions = args
            .policy_sessions
            .unwrap_or(if quick { 30_000 } else { 300_000 });
        let warmup = policies::Warmup {
            pilot_servers: args.pilot_servers.unwrap_or((servers / 10).max(100)),
            pilot: Duration::from_millis(args.pilot_ms.unwrap_or(if quick {
                1_000
            } else {
                2_000
            })),
            warmup: Duration::from_millis(args.warmup_ms),
            local_warmup: Duration::from_millis(args.local_warmup_ms.unwrap_or(if quick {
                1_000
            } else {
                3_000
            })),
        };
        for &c in &args.clients {
            anyhow::ensure!(c >= 1, "clients must be at least 1");
        }
        anyhow::ensure!(
            sessions > 0 && hard_sessions > 0 && policy_sessions > 0,
            "sessions must be > 0"
        );
        for &l in &args.lambdas {
            anyhow::ensure!(l > 0.0 && l < 1.0, "λ must be in (0, 1), not {l}");
        }
        for &l in &args.loads {
            anyhow::ensure!(l > 0.0 && l < 2.0, "load must be in (0, 2), not {l}");
        }
        Ok(Sizes {
            servers,
            sessions,
            hard_sessions,
            policy_sessions,
            warmup,
        })
    }
}

/// Runs `volley-lab sim`: what `args.what` names, each part's table printed as it is done, and
/// with `--out` every figure in `sim.json` and every table in `sim.md`.
pub fn run(mut args: SimArgs) -> anyhow::Result<()> {
    if args.seeds.is_empty() {
        args.seeds = if matches!(args.what, What::Zones | What::Pools) && !args.quick {
            vec![1, 2, 3, 4, 5]
        } else {
            vec![1]
        };
    }
    if args.what == What::Zones {
        return zones::run_zones(&args);
    }
    if args.what == What::Pools {
        return pools::run_pools(&args);
    }
    let sizes = Sizes::new(&args)?;
    let mut report = Report {
        servers: sizes.servers,
        seeds: args.seeds.clone(),
        supermarket: Vec::new(),
        sweep: Vec::new(),
        policies: Vec::new(),
        bench: Vec::new(),
    };
    let mut md = String::new();
    let mut table = |t: String, separated: bool| {
        println!("{t}");
        md.push_str(&t);
        if separated {
            md.push('\n');
        }
    };
    let started = Instant::now();
    if matches!(args.what, What::All | What::Supermarket) {
        report.supermarket = supermarket_cells(&args, &sizes)?;
        table(
            supermarket::markdown(&report.supermarket, sizes.servers, args.warmup_units),
            true,
        );
    }
    if matches!(args.what, What::All | What::Sweep) {
        report.sweep = sweep(&args, &sizes)?;
        table(
            format!(
                "{}\n{}",
                tables::sweep_markdown(&report.sweep),
                tables::markdown(
                    &report.sweep,
                    sizes.servers,
                    sizes.policy_sessions,
                    &sizes.warmup
                )
            ),
            true,
        );
    }
    if args.what == What::Policies {
        report.policies = volley_policies(&args, &sizes)?;
        table(
            tables::markdown(
                &report.policies,
                sizes.servers,
                sizes.policy_sessions,
                &sizes.warmup,
            ),
            true,
        );
    }
    if args.what == What::Bench {
        report.bench = speed(&args, &sizes)?;
        table(speed_markdown(&report.bench), false);
    }
    eprintln!("sim finished in {:.1} s", started.elapsed().as_secs_f64());
    if let Some(dir) = &args.out {
        results::out_dir(dir)?;
        results::write_json(&dir.join("sim.json"), &report)?;
        std::fs::write(dir.join("sim.md"), md)
            .with_context(|| format!("writing {}", dir.join("sim.md").display()))?;
        eprintln!("wrote {0}/sim.json and {0}/sim.md", dir.display());
    }
    Ok(())
}

/// `given`, or `default` when none was given.
fn or_default<T: Clone>(given: &[T], default: &[T]) -> Vec<T> {
    if given.is_empty() {
        default.to_vec()
    } else {
        given.to_vec()
    }
}

/// The policies of `list` whose name contains `--only`; at least one.
fn only(args: &SimArgs, list: Vec<policies::Policy>) -> anyhow::Result<Vec<policies::Policy>> {
    let list: Vec<_> = list
        .into_iter()
        .filter(|p| {
            args.only
                .as_ref()
                .is_none_or(|o| p.name.contains(o.as_str()))
        })
        .collect();
    anyhow::ensure!(!list.is_empty(), "no policy matches");
    Ok(list)
}

/// The supermarket check: every λ × d cell over every seed.
fn supermarket_cells(args: &SimArgs, sizes: &Sizes) -> anyhow::Result<Vec<supermarket::Cell>> {
    let servers = sizes.servers;
    let mut cells = Vec::new();
    for &lambda in &args.lambdas {
        for &d in &args.ds {
            anyhow::ensure!(d >= 1 && d as usize <= servers, "d must be 1..={servers}");
            let n = if d == 1 && lambda >= 0.85 {
                sizes.hard_sessions
            } else {
                sizes.sessions
            };
            let pb = bar(0, format!("supermarket λ={lambda} d={d}"), args.no_progress);
            let cell = supermarket::run_cell(
                servers,
                lambda,
                d,
                n,
                args.warmup_units,
                &args.seeds,
                Some(&pb),
            )?;
            pb.finish_and_clear();
            eprintln!(
                "supermarket λ={lambda} d={d}: {:.4} (expected {:.4}, {:+.2} %)",
                cell.mean,
                cell.expected,
                100.0 * cell.rel_err
            );
            cells.push(cell);
        }
    }
    Ok(cells)
}

/// volley and the peers against the number of independent clients.
fn sweep(args: &SimArgs, sizes: &Sizes) -> anyhow::Result<Vec<policies::Record>> {
    let servers = sizes.servers;
    let matrix = Matrix {
        workloads: &or_default(&args.workloads, &[Workload::HalfSlow]),
        loads: &or_default(&args.loads, &[0.85, 0.95]),
        clients: &or_default(
            &args.clients,
            &[1, (servers / 100).max(1), (servers / 10).max(1), servers],
        ),
        policies: &only(args, policies::sweep())?,
    };
    matrix.run(args, sizes)
}

/// volley's own policies with the references.
fn volley_policies(args: &SimArgs, sizes: &Sizes) -> anyhow::Result<Vec<policies::Record>> {
    let list = only(args, policies::policies(&args.fanouts, !args.no_extras))?;
    for &d in &args.fanouts {
        anyhow::ensure!(
            d >= 1 && d <= sizes.servers,
            "fan-out must be 1..={}",
            sizes.servers
        );
    }
    let matrix = Matrix {
        workloads: &or_default(
            &args.workloads,
            &[Workload::Homogeneous, Workload::HalfSlow],
        ),
        loads: &or_default(&args.loads, &[0.5, 0.7, 0.85, 0.95]),
        clients: &or_default(&args.clients, &[1]),
        policies: &list,
    };
    matrix.run(args, sizes)
}

/// The simulator's speed: one 1M-session supermarket run and one 1M-session policy run.
fn speed(args: &SimArgs, sizes: &Sizes) -> anyhow::Result<Vec<BenchRun>> {
    let (servers, warmup) = (sizes.servers, &sizes.warmup);
    let n = 1_000_000;
    let seed = args.seeds[0];
    let mut runs = Vec::new();
    let s = supermarket::setup(servers, 0.9, 2, n, args.warmup_units, seed);
    runs.push(bench(
        format!("supermarket λ=0.9 d=2, {servers} servers"),
        &s,
        args.no_progress,
    )?);
    let list = policies::policies(&[3], false);
    let p = list
        .iter()
        .find(|p| p.name == "paced/earliest d=3")
        .context("policy list")?;
    let t0 = Instant::now();
    let initial = policies::pilot_tails(Workload::HalfSlow, 0.95, p, warmup, seed)?;
    eprintln!("pilot: {:.1} s", t0.elapsed().as_secs_f64());
    let s = policies::setup(
        servers,
        Workload::HalfSlow,
        0.95,
        p,
        n,
        warmup.warmup,
        seed,
        &initial,
        1,
    );
    runs.push(bench(
        format!("paced/earliest d=3, half-slow, load 0.95, {servers} servers"),
        &s,
        args.no_progress,
    )?);
    Ok(runs)
}

fn speed_markdown(runs: &[BenchRun]) -> String {
    let mut table = String::from(
        "### sim speed\n\n| run | measured | simulated | events | wall s | sessions/s |\n\
         |---|---|---|---|---|---|\n",
    );
    for b in runs {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.0} |\n",
            b.name, b.measured, b.simulated, b.events, b.wall_s, b.sessions_per_s
        ));
    }
    table
}

/// The runs of the sweep or the policies: every workload × load × clients × policy, at every
/// seed, in that order.
struct Matrix<'a> {
    workloads: &'a [Workload],
    loads: &'a [f64],
    clients: &'a [usize],
    policies: &'a [policies::Policy],
}

impl Matrix<'_> {
    fn run(&self, args: &SimArgs, sizes: &Sizes) -> anyhow::Result<Vec<policies::Record>> {
        let (servers, sessions, warmup) = (sizes.servers, sizes.policy_sessions, &sizes.warmup);
        let mut records = Vec::new();
        for &w in self.workloads {
            for &load in self.loads {
                for &c in self.clients {
                    for p in self.policies {
                        for &seed in &args.seeds {
                            records
                                .push(one(args, servers, w, load, p, sessions, warmup, seed, c)?);
                        }
                    }
                }
            }
        }
        Ok(records)
    }
}

/// One run of the sweep or the policies, with its progress bar and a line on stderr.
#[allow(clippy::too_many_arguments)]
fn one(
    args: &SimArgs,
    servers: usize,
    w: Workload,
    load: f64,
    p: &policies::Policy,
    sessions: u64,
    warmup: &policies::Warmup,
    seed: u64,
    clients: usize,
) -> anyhow::Result<policies::Record> {
    let pb = bar(
        sessions,
        format!("{} {load} M={clients} {}", w.name(), p.name),
        args.no_progress,
    );
    let r = policies::run_one(
        servers,
        w,
        load,
        p,
        sessions,
        warmup,
        seed,
        clients,
        Some(&pb),
    )
    .with_context(|| format!("{} load {load} {} M={clients}", w.name(), p.name))?;
    pb.finish_and_clear();
    eprintln!(
        "{} load {load} M={clients} {} seed {seed}: p99 {:.2} ms, drift {:+.1} % ({:.1} s)",
        w.name(),
        p.name,
        r.summary.p99_ms,
        r.summary.drift * 100.0,
        r.summary.wall_s
    );
    Ok(r)
}

fn bench(name: String, s: &engine::Setup, hidden: bool) -> anyhow::Result<BenchRun> {
    let pb = bar(
        s.measured + (s.warmup as f64 * s.arrival_rate) as u64,
        name.clone(),
        hidden,
    );
    let t0 = Instant::now();
    let out = engine::run(s, Some(&pb))?;
    let wall = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok(BenchRun {
        name,
        measured: out.measured,
        simulated: out.simulated,
        events: out.events,
        wall_s: wall,
        sessions_per_s: out.simulated as f64 / wall.max(1e-9),
    })
}
