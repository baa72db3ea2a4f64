//! `volley-lab bench`: the datapath benchmark of `docs/BENCHMARKS.md` §1, side by side in
//! one run. A server thread pinned to one CPU (a bare batched echo, or `volley serve`'s server
//! and echo service) and a load generator pinned to the other ([`load`]); every figure is a
//! ratio of two cases measured back to back within one repetition, over ≥ 5 repetitions.
//!
//! Cases:
//! - `echo-256` / `responder`: closed loop, 256-byte datagrams to the bare echo vs PROBEs to a
//!   volley server (answer policy `immediate`): replies/s measured at the generator;
//! - `flood-probe` / `flood-forged`: open loop at the generator's full rate, PROBEs vs INITs with
//!   forged cookies (MAC fails): datagrams the server handled per second, from its counters;
//! - `echo-64` / `data-64`, `echo-1200` / `data-1200`: closed loop, bare echo of 64/1,200-byte
//!   datagrams vs the same payloads over encrypted volley sessions (one per port) to the echo
//!   service;
//! - `connect-volley` / `connect-quinn` / `race8-quinn`: sequential connects (see [`connect`]):
//!   a race over 8 volley servers plus the session, one quinn connect, and 8 quinn handshakes
//!   raced; latency, and the server side's CPU per established session;
//! - `flood+data-64` / `flood+connect`: `data-64` and `connect-volley` again while the generator
//!   also floods every server with PROBEs from another address (127.0.0.2) as fast as it can
//!   send — the established sessions' echo rate and a legitimate client's connects under attack;
//! - `abuse-clean` / `abuse`: sequential connects to one server while eight other sources
//!   probe it at 500/s each; `abuse` adds a PROBE flood from one source and a replayed INIT
//!   (genuine cookie, failing Noise) from another, both at the generator's full rate — each
//!   flooder's answers against its source's limit, the others' PROBEs answered, their connect
//!   p99 against the clean run (see [`abuse`]);
//! - `core` (once, not per repetition): the server core without sockets on one pinned thread —
//!   handshakes per second, memory per session and the timer wake-up cost at 1,000 and 100,000
//!   sessions (see [`core`]);
//! - `rekey` (once): one session echoing 10,000 datagrams a second each way for 7 s while both
//!   sides update their keys every second: sent, echoed, rejected, updates (see [`rekey`]);
//! - `memory` (once): a whole server — runtime, core and the echo service's task per session — in
//!   a child process, its resident memory per idle session over 100,000 sessions (see [`memory`]).
//!
//! CPU: each side's thread CPU (getrusage) and each CPU's busy share (/proc/stat, softirq
//! included). A case whose generator used ≥ 0.9 of its CPU while the server did not measured the
//! generator, not the server: it is flagged `gen-bound`.

pub mod abuse;
pub mod connect;
pub mod core;
mod generate;
pub mod load;
pub mod memory;
pub mod pool;
pub mod proxy;
pub mod rekey;
mod report;
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use anyhow::Context as _;
use serde::Serialize;

use crate::harness::process::pin_to;
use crate::harness::results;
use server::{Kind, ServerThread};

/// Arguments of `volley-lab bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds measured per case, after half a second of warm-up.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Repetitions; within each, every case runs once, back to back.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Generator source ports (one socket each).
    #[arg(long, default_value_t = 16)]
    pub ports: usize,
    /// Closed loop: requests in flight per port.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// The CPU the server thread is pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// The CPU the generator thread is pinned to.
    #[arg(long, default_value_t = 1)]
    pub generator_cpu: usize,
    /// Only these cases (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Directory for results.md and results.json.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Another suite instead of the datapath cases.
    #[command(subcommand)]
    pub suite: Option<Suite>,
}

/// The other suites of `volley-lab bench`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Suite {
    /// The proxies (docs/BENCHMARKS.md §4): UDP and TCP backends reached directly and through
    /// `volley proxy` and `volley serve --forward`, on loopback: requests/s, added latency, TCP
    /// bulk throughput.
    Proxy(proxy::ProxyBenchArgs),
    /// A pool's cost to the client (docs/BENCHMARKS.md §7): client CPU per request through a
    /// `volley::Pool` against the same requests on one session.
    Pool(pool::PoolBenchArgs),
}

const CASES: [&str; 15] = [
    "echo-256",
    "responder",
    "flood-probe",
    "flood-forged",
    "echo-64",
    "data-64",
    "echo-1200",
    "data-1200",
    "connect-volley",
    "connect-quinn",
    "race8-quinn",
    "flood+data-64",
    "flood+connect",
    "abuse-clean",
    "abuse",
];

/// One case of one repetition.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub rep: usize,
    /// Replies per second at the generator (closed loop) or datagrams handled per second by the
    /// server (floods).
    pub rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub sent: u64,
    pub lost_windows: u64,
    /// Connects that failed (connect cases).
    pub failed: u64,
    /// Thread CPU over the measured period, in cores.
    pub server_cpu: f64,
    /// Server thread CPU per reply, handled datagram or connect, in µs.
    pub server_cpu_us_per_op: f64,
    pub generator_cpu: f64,
    /// /proc/stat busy share of the server's and the generator's CPU.
    pub server_cpu_busy: f64,
    pub generator_cpu_busy: f64,
    pub gen_bound: bool,
    /// The abuse cases' own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abuse: Option<abuse::AbuseFigures>,
}

/// The whole benchmark.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.suite {
        Some(Suite::Proxy(proxy)) => return proxy::run(proxy),
        Some(Suite::Pool(pool)) => return pool::run(pool),
        None => {}
    }
    let cases: Vec<&str> = if args.cases.is_empty() {
        CASES.to_vec()
    } else {
        CASES
            .iter()
            .copied()
            .filter(|c| args.cases.iter().any(|a| a == c))
            .collect()
    };
    let with_core = args.cases.is_empty() || args.cases.iter().any(|c| c == "core");
    let with_memory = args.cases.is_empty() || args.cases.iter().any(|c| c == "memory");
    let with_rekey = args.cases.is_empty() || args.cases.iter().any(|c| c == "rekey");
    anyhow::ensure!(
        !cases.is_empty() || with_core || with_memory || with_rekey,
        "no known case in {:?}",
        args.cases
    );
    results::out_dir(&args.out)?;
    let tls = Arc::new(connect::Tls::generate()?);
    let mut results = Vec::new();
    for rep in 0..args.reps {
        for case in &cases {
            let server =
                ServerThread::start(Kind::of(case), args.server_cpu, Some(Arc::clone(&tls)))?;
            let r = generate::run_case(case, rep, &server, Arc::clone(&tls), &args);
            server.stop();
            let r = r.with_context(|| format!("case {case}, repetition {rep}"))?;
            eprintln!(
                "rep {rep} {:<13} {:>10.0}/s p50 {:>6} µs p99 {:>6} µs  cpu server {:.2} gen {:.2} (busy {:.2}/{:.2}){}",
                r.case,
                r.rate,
                r.p50_us,
                r.p99_us,
                r.server_cpu,
                r.generator_cpu,
                r.server_cpu_busy,
                r.generator_cpu_busy,
                if r.gen_bound { "  GEN-BOUND" } else { "" }
            );
            results.push(r);
        }
    }
    let mut cores = Vec::new();
    if with_core {
        // On the server's CPU, alone: the generator thread is gone by now.
        let cpu = args.server_cpu;
        let measured = thread::spawn(move || {
            pin_to(cpu);
            [1_000, 100_000].map(core::run)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("core bench panicked"))?;
        for r in measured {
            let r = r?;
            eprintln!(
                "core {:>7} sessions: handshake {:.1} µs ({:.0}/s), {:.0} B/session, timer wake-up {:.0} ns",
                r.sessions, r.handshake_us, r.handshakes_per_sec, r.bytes_per_session, r.wake_ns
            );
            cores.push(r);
        }
    }
    let mut rekey = None;
    if with_rekey {
        let r = rekey::run(10_000, 7.0, args.server_cpu, args.generator_cpu)?;
        eprintln!(
            "rekey {}/s for {} s: sent {}, echoed {}, rejected {}, updates client {} (server followed {}), server {} (client followed {}), opened with the previous key {}",
            r.rate,
            r.seconds,
            r.sent,
            r.echoed,
            r.rejected,
            r.client_updates,
            r.server_followed,
            r.server_updates,
            r.client_followed,
            r.opened_with_previous_key
        );
        rekey = Some(r);
    }
    let mut memory = None;
    if with_memory {
        // The child server is not pinned (it starts its own runtime); the connecting client is,
        // to the generator's CPU.
        let r = memory::run(100_000, args.generator_cpu)?;
        eprintln!(
            "memory {} sessions: {:.0} B/session (RSS {} → {} bytes, connects {:.1} s)",
            r.sessions, r.bytes_per_session, r.rss_warm, r.rss_end, r.connect_seconds
        );
        memory = Some(r);
    }
    let mut md = report::markdown(&args, &results);
    md.push_str(&report::core_markdown(&cores));
    if let Some(m) = &memory {
        md.push_str(&report::memory_markdown(m));
    }
    if let Some(r) = &rekey {
        md.push_str(&report::rekey_markdown(r));
    }
    results::publish(
        &args.out,
        &md,
        &serde_json::json!({
            "cases": results,
            "core": cores,
            "memory": memory,
            "rekey": rekey,
        }),
    )
}
