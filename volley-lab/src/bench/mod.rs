//! `volley-lab bench`: the datapath benchmark of `../shared/BENCHMARKS.md` §1, side by side in
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
//! - `core` (once, not per repetition): the server core without sockets on one pinned thread —
//!   handshakes per second, memory per session and the timer wake-up cost at 1,000 and 100,000
//!   sessions (see [`core`]);
//! - `memory` (once): a whole server — runtime, core and the echo service's task per session — in
//!   a child process, its resident memory per idle session over 100,000 sessions (see [`memory`]).
//!
//! CPU: each side's thread CPU (getrusage) and each CPU's busy share (/proc/stat, softirq
//! included). A case whose generator used ≥ 0.9 of its CPU while the server did not measured the
//! generator, not the server: it is flagged `gen-bound`.

pub mod connect;
pub mod core;
pub mod load;
pub mod memory;
pub mod proxy;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::resource::UsageWho;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use volley::unstable::udp::{self, RecvBatch, SendBatch};
use volley::{AnswerPolicy, PublicKey, Server, ServerConfig, ServerStats, StaticKeypair};

use crate::select::cpu::{cpu_us, proc_stat};
use crate::select::pin_to;
use load::{Phase, Request};

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
    /// The proxies (BENCHMARKS.md §4): UDP and TCP backends reached directly and through
    /// `volley proxy` and `volley serve --forward`, on loopback: requests/s, added latency, TCP
    /// bulk throughput.
    Proxy(proxy::ProxyBenchArgs),
}

const CASES: [&str; 13] = [
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
];

/// Which figure of a case a ratio divides.
#[derive(Debug, Clone, Copy)]
enum Figure {
    Rate,
    P50,
    P99,
    /// Server CPU per reply or per connect.
    CpuPerOp,
}

/// The ratios reported: (name, figure, numerator case, denominator case, goal, whether the goal
/// is a floor (≥) rather than a ceiling (≤)).
const RATIOS: [(&str, Figure, &str, &str, f64, bool); 9] = [
    (
        "responder probes/s ÷ bare echo",
        Figure::Rate,
        "responder",
        "echo-256",
        0.90,
        true,
    ),
    (
        "handled/s, forged INITs ÷ PROBEs (flood)",
        Figure::Rate,
        "flood-forged",
        "flood-probe",
        0.90,
        true,
    ),
    (
        "DATA echo 64 B ÷ bare echo",
        Figure::Rate,
        "data-64",
        "echo-64",
        0.80,
        true,
    ),
    (
        "DATA echo 1,200 B ÷ bare echo",
        Figure::Rate,
        "data-1200",
        "echo-1200",
        0.80,
        true,
    ),
    (
        "connect p50: volley (race of 8) ÷ one quinn",
        Figure::P50,
        "connect-volley",
        "connect-quinn",
        0.5,
        false,
    ),
    (
        "connect p99: volley (race of 8) ÷ one quinn",
        Figure::P99,
        "connect-volley",
        "connect-quinn",
        0.5,
        false,
    ),
    (
        "server CPU per session: 8 quinn raced ÷ volley",
        Figure::CpuPerOp,
        "race8-quinn",
        "connect-volley",
        5.0,
        true,
    ),
    (
        "DATA echo 64 B under a PROBE flood ÷ clean",
        Figure::Rate,
        "flood+data-64",
        "data-64",
        0.8,
        true,
    ),
    (
        "connect p99 under a PROBE flood ÷ clean",
        Figure::P99,
        "flood+connect",
        "connect-volley",
        5.0,
        false,
    ),
];

impl Figure {
    fn of(self, r: &CaseResult) -> f64 {
        match self {
            Figure::Rate => r.rate,
            Figure::P50 => r.p50_us as f64,
            Figure::P99 => r.p99_us as f64,
            Figure::CpuPerOp => r.server_cpu_us_per_op,
        }
    }
}

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
}

fn thread_cpu_us() -> u64 {
    cpu_us(UsageWho::RUSAGE_THREAD)
}

fn busy(a: &[(u64, u64)], b: &[(u64, u64)], cpu: usize) -> f64 {
    match (a.get(cpu), b.get(cpu)) {
        (Some(x), Some(y)) if y.1 > x.1 => (y.0 - x.0) as f64 / (y.1 - x.1) as f64,
        _ => f64::NAN,
    }
}

/// What the server thread reports at a mark.
#[derive(Debug, Clone, Copy)]
struct ServerMark {
    cpu_us: u64,
    /// Bare echo: datagrams echoed.
    echoed: u64,
    stats: Option<ServerStats>,
}

enum Ctl {
    Mark(oneshot::Sender<ServerMark>),
    Stop,
}

/// What the server thread runs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    BareEcho,
    /// This many volley servers (answer policy `immediate`) with the echo service.
    Volley(usize),
    /// This many quinn servers.
    Quinn(usize),
}

impl Kind {
    fn of(case: &str) -> Self {
        match case {
            c if c.starts_with("echo") => Kind::BareEcho,
            "connect-volley" | "flood+connect" => Kind::Volley(8),
            "connect-quinn" => Kind::Quinn(1),
            "race8-quinn" => Kind::Quinn(8),
            _ => Kind::Volley(1),
        }
    }
}

/// A server running on its own pinned thread.
struct ServerThread {
    addrs: Vec<SocketAddr>,
    key: Option<PublicKey>,
    ctl: mpsc::UnboundedSender<Ctl>,
    join: thread::JoinHandle<()>,
}

impl ServerThread {
    fn start(kind: Kind, cpu: usize, tls: Option<Arc<connect::Tls>>) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
        let join = thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                pin_to(cpu);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let echoed = Rc::new(Cell::new(0u64));
                    let mut handles = Vec::new();
                    let mut quinns = Vec::new();
                    let (stop_all, _) = tokio::sync::broadcast::channel::<()>(1);
                    let started: anyhow::Result<(Vec<SocketAddr>, Option<PublicKey>)> = async {
                        let any: SocketAddr = "127.0.0.1:0".parse()?;
                        match kind {
                            Kind::Volley(n) => {
                                let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
                                let mut addrs = Vec::new();
                                for _ in 0..n {
                                    let mut cfg = ServerConfig::new(key.clone());
                                    cfg.answer = AnswerPolicy::Immediate;
                                    let server = Server::bind(any, cfg).await?;
                                    addrs.push(server.local_addr());
                                    handles.push(server.handle());
                                    let mut stop = stop_all.subscribe();
                                    tokio::task::spawn_local(volley::echo::serve(
                                        server,
                                        async move {
                                            let _ = stop.recv().await;
                                        },
                                    ));
                                }
                                Ok((addrs, Some(key.public())))
                            }
                            Kind::Quinn(n) => {
                                let tls = tls.context("quinn needs a certificate")?;
                                let mut addrs = Vec::new();
                                for _ in 0..n {
                                    let (endpoint, addr) = connect::quinn_server(&tls)?;
                                    quinns.push(endpoint);
                                    addrs.push(addr);
                                }
                                Ok((addrs, None))
                            }
                            Kind::BareEcho => {
                                let socket = UdpSocket::bind(any).await?;
                                let addr = socket.local_addr()?;
                                tokio::task::spawn_local(bare_echo(socket, Rc::clone(&echoed)));
                                Ok((vec![addr], None))
                            }
                        }
                    }
                    .await;
                    let ok = started.is_ok();
                    let _ = ready_tx.send(started.map_err(|e| e.to_string()));
                    if !ok {
                        return;
                    }
                    while let Some(c) = ctl_rx.recv().await {
                        match c {
                            Ctl::Mark(reply) => {
                                // Let the driver publish its counters first.
                                tokio::task::yield_now().await;
                                let stats = (!handles.is_empty()).then(|| {
                                    handles.iter().map(|h| h.stats()).fold(
                                        ServerStats::default(),
                                        |mut sum, s| {
                                            sum.offers_sent += s.offers_sent;
                                            sum.init_cookie_bad_mac += s.init_cookie_bad_mac;
                                            sum.sessions_opened += s.sessions_opened;
                                            sum
                                        },
                                    )
                                });
                                let _ = reply.send(ServerMark {
                                    cpu_us: thread_cpu_us(),
                                    echoed: echoed.get(),
                                    stats,
                                });
                            }
                            Ctl::Stop => break,
                        }
                    }
                    let _ = stop_all.send(());
                    for q in &quinns {
                        q.close(0u32.into(), b"bye");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            })?;
        let (addrs, key) = ready_rx
            .recv()
            .context("server thread died")?
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            addrs,
            key,
            ctl,
            join,
        })
    }

    fn stop(self) {
        let _ = self.ctl.send(Ctl::Stop);
        let _ = self.join.join();
    }
}

/// The bare echo: every datagram straight back, a batch per system call each way, with GRO and
/// GSO where the kernel has them — the same socket handling as volley's server driver.
async fn bare_echo(socket: UdpSocket, echoed: Rc<Cell<u64>>) {
    let mut rx = RecvBatch::with_gro(false, udp::enable_gro(&socket));
    let mut tx = SendBatch::with_gso(udp::gso_supported(&socket));
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        while rx.recv(&socket).is_ok() {
            let mut n = 0;
            for (meta, data) in rx.iter() {
                if data.len() > volley_proto::MAX_DATAGRAM_LEN {
                    continue;
                }
                tx.slot()[..data.len()].copy_from_slice(data);
                tx.commit(data.len(), meta.from, None);
                n += 1;
            }
            echoed.set(echoed.get() + n);
            tx.flush(&socket).await;
        }
    }
}

async fn mark(ctl: &mpsc::UnboundedSender<Ctl>) -> anyhow::Result<ServerMark> {
    let (tx, rx) = oneshot::channel();
    ctl.send(Ctl::Mark(tx)).ok().context("server gone")?;
    rx.await.context("server gone")
}

/// Runs one case against `server` on a generator thread pinned to `args.generator_cpu`.
fn run_case(
    case: &str,
    rep: usize,
    server: &ServerThread,
    tls: Arc<connect::Tls>,
    args: &BenchArgs,
) -> anyhow::Result<CaseResult> {
    let case = case.to_string();
    let addrs = server.addrs.clone();
    let key = server.key;
    let ctl = server.ctl.clone();
    let args2 = args.clone();
    let handle = thread::Builder::new()
        .name("bench-generator".into())
        .spawn(move || -> anyhow::Result<CaseResult> {
            pin_to(args2.generator_cpu);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, generate(case, rep, addrs, key, tls, ctl, args2))
        })?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))?
}

async fn generate(
    case: String,
    rep: usize,
    servers: Vec<SocketAddr>,
    key: Option<PublicKey>,
    tls: Arc<connect::Tls>,
    ctl: mpsc::UnboundedSender<Ctl>,
    args: BenchArgs,
) -> anyhow::Result<CaseResult> {
    let server = servers[0];
    let flood_too = case.starts_with("flood+");
    let case_name = case.clone();
    let case = case.trim_start_matches("flood+").to_string();
    let case = if case == "connect" {
        "connect-volley".to_string()
    } else {
        case
    };
    let mut sockets = Vec::new();
    for _ in 0..args.ports.max(1) {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await?);
    }
    let req = match case.as_str() {
        "echo-256" => Request::Echo(256),
        "echo-64" => Request::Echo(64),
        "echo-1200" => Request::Echo(1200),
        "responder" | "flood-probe" => Request::Probe,
        "flood-forged" => Request::ForgedInit {
            cookie: load::fetch_cookie(&sockets[0], server).await?,
        },
        "data-64" | "data-1200" | "connect-volley" | "connect-quinn" | "race8-quinn" => {
            Request::Echo(0)
        }
        other => anyhow::bail!("unknown case {other}"),
    };
    let start = Instant::now();
    let warmup = if case.starts_with("data") {
        Duration::from_millis(1000)
    } else {
        Duration::from_millis(500)
    };
    let phase = Phase {
        start,
        measure_from: start + warmup,
        end: start + warmup + Duration::from_secs_f64(args.seconds),
    };
    // The marks: at the start and the end of the measured period.
    let marker = {
        let ctl = ctl.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(phase.measure_from.into()).await;
            let a = (
                mark(&ctl).await,
                thread_cpu_us(),
                proc_stat(),
                Instant::now(),
            );
            tokio::time::sleep_until(phase.end.into()).await;
            let b = (
                mark(&ctl).await,
                thread_cpu_us(),
                proc_stat(),
                Instant::now(),
            );
            (a, b)
        })
    };
    let flood = case.starts_with("flood");
    let mut tasks = Vec::new();
    let mut floods = Vec::new();
    if flood_too {
        for s in &servers {
            let socket = UdpSocket::bind("127.0.0.2:0").await?;
            floods.push(tokio::task::spawn_local(load::open_loop(
                socket,
                *s,
                Request::Probe,
                phase,
            )));
        }
    }
    let mut connects = None;
    if case.starts_with("connect") || case.starts_with("race8") {
        sockets.clear();
        connects = Some(if case == "connect-volley" {
            let key = key.context("volley servers")?;
            connect::volley_connects(servers.clone(), key, phase.measure_from, phase.end).await
        } else {
            connect::quinn_connects(&tls, servers.clone(), phase.measure_from, phase.end).await?
        });
    }
    for socket in sockets {
        let req = req.clone();
        if flood {
            floods.push(tokio::task::spawn_local(load::open_loop(
                socket, server, req, phase,
            )));
        } else if let Some(len) = case.strip_prefix("data-") {
            let len: usize = len.parse()?;
            let key = key.context("data cases need a volley server")?;
            let window = args.window;
            tasks.push(tokio::task::spawn_local(async move {
                load::session_loop(socket, server, key, len, window, phase).await
            }));
        } else {
            let window = args.window;
            tasks.push(tokio::task::spawn_local(async move {
                Ok(load::closed_loop(socket, server, req, window, phase).await)
            }));
        }
    }
    let mut ports = Vec::new();
    for t in tasks {
        ports.push(t.await??);
    }
    let mut flood_sent = 0;
    for t in floods {
        flood_sent += t.await?;
    }
    let ((ma, ga, pa, ta), (mb, gb, pb, tb)) = marker.await?;
    let (ma, mb) = (ma?, mb?);
    let secs = (tb - ta).as_secs_f64();
    let mut merged = load::merge(ports);
    let mut failed = 0;
    if let Some(c) = connects {
        merged.replies = c.count;
        merged.latency = c.latency;
        failed = c.failed;
    }
    let rate = if flood {
        let (a, b) = (ma.stats.unwrap_or_default(), mb.stats.unwrap_or_default());
        let handled = if case == "flood-forged" {
            b.init_cookie_bad_mac - a.init_cookie_bad_mac
        } else {
            b.offers_sent - a.offers_sent
        };
        handled as f64 / secs
    } else {
        merged.replies as f64 / secs
    };
    let _ = (ma.echoed, mb.echoed);
    let server_cpu = (mb.cpu_us - ma.cpu_us) as f64 / 1e6 / secs;
    let ops = rate * secs;
    let server_cpu_us_per_op = if ops > 0.0 {
        (mb.cpu_us - ma.cpu_us) as f64 / ops
    } else {
        f64::NAN
    };
    let generator_cpu = (gb - ga) as f64 / 1e6 / secs;
    let generator_cpu_busy = busy(&pa, &pb, args.generator_cpu);
    Ok(CaseResult {
        case: case_name,
        rep,
        rate,
        p50_us: merged.latency.value_at_quantile(0.5),
        p99_us: merged.latency.value_at_quantile(0.99),
        sent: merged.sent + flood_sent,
        lost_windows: merged.lost_windows,
        failed,
        server_cpu,
        server_cpu_us_per_op,
        generator_cpu,
        server_cpu_busy: busy(&pa, &pb, args.server_cpu),
        generator_cpu_busy,
        gen_bound: generator_cpu_busy >= 0.9 && server_cpu < 0.9,
    })
}

/// The whole benchmark.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(Suite::Proxy(proxy)) = args.suite {
        return proxy::run(proxy);
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
    anyhow::ensure!(
        !cases.is_empty() || with_core || with_memory,
        "no known case in {:?}",
        args.cases
    );
    std::fs::create_dir_all(&args.out)?;
    let tls = Arc::new(connect::Tls::generate()?);
    let mut results = Vec::new();
    for rep in 0..args.reps {
        for case in &cases {
            let server =
                ServerThread::start(Kind::of(case), args.server_cpu, Some(Arc::clone(&tls)))?;
            let r = run_case(case, rep, &server, Arc::clone(&tls), &args);
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
    let mut report = report(&args, &results);
    report.push_str(&core_report(&cores));
    if let Some(m) = &memory {
        report.push_str(&format!(
            "\n## A whole server (runtime, core, echo service), child process\n\nAfter {} sessions beyond a warm-up of 1,000: {:.0} bytes of resident memory per idle session (VmRSS {} → {} bytes; {} sessions open; connects took {:.1} s). Goal ≤ 1,024.\n",
            m.sessions, m.bytes_per_session, m.rss_warm, m.rss_end, m.server_sessions, m.connect_seconds
        ));
    }
    std::fs::write(args.out.join("results.md"), &report)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "cases": results,
            "core": cores,
            "memory": memory,
        }))?,
    )?;
    print!("{report}");
    Ok(())
}

fn core_report(cores: &[core::CoreResult]) -> String {
    if cores.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## The server core without sockets (one pinned thread)\n\n| sessions | server CPU per handshake | handshakes/s | bytes per session (RSS) | timer wake-up |\n|---|---|---|---|---|\n",
    );
    for r in cores {
        s.push_str(&format!(
            "| {} | {:.1} µs | {:.0} | {:.0} | {:.0} ns ({} wake-ups) |\n",
            r.sessions,
            r.handshake_us,
            r.handshakes_per_sec,
            r.bytes_per_session,
            r.wake_ns,
            r.wakes
        ));
    }
    if let (Some(a), Some(b)) = (cores.first(), cores.last()) {
        s.push_str(&format!(
            "\nTimer wake-up at {} sessions ÷ at {}: {:.2} (goal ≈ 1). Handshakes/s on one core: {:.0} (goal ≥ 15,000). Bytes per idle session: {:.0} (goal ≤ 1,024).\n",
            b.sessions,
            a.sessions,
            b.wake_ns / a.wake_ns,
            b.handshakes_per_sec,
            b.bytes_per_session
        ));
    }
    s
}

fn median_min_max(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((mid, v[0], v[v.len() - 1]))
}

fn report(args: &BenchArgs, results: &[CaseResult]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# volley-lab bench\n\n{} repetitions × {:.1} s per case; {} generator ports, window {} per port; server on CPU {}, generator on CPU {}.\n\n",
        args.reps, args.seconds, args.ports, args.window, args.server_cpu, args.generator_cpu
    ));
    s.push_str("## Ratios (same repetition, median and min–max over repetitions)\n\n| ratio | measured | goal | met? |\n|---|---|---|---|\n");
    for (name, figure, num, den, goal, floor) in RATIOS {
        let per_rep: Vec<f64> = (0..args.reps)
            .filter_map(|rep| {
                let n = results.iter().find(|r| r.rep == rep && r.case == num)?;
                let d = results.iter().find(|r| r.rep == rep && r.case == den)?;
                Some(figure.of(n) / figure.of(d))
            })
            .collect();
        let sign = if floor { "≥" } else { "≤" };
        match median_min_max(per_rep) {
            Some((m, lo, hi)) => s.push_str(&format!(
                "| {name} | {m:.2} ({lo:.2}–{hi:.2}) | {sign} {goal:.2} | {} |\n",
                if (floor && m >= goal) || (!floor && m <= goal) {
                    "yes"
                } else {
                    "**no**"
                }
            )),
            None => s.push_str(&format!("| {name} | not run | {sign} {goal:.2} | — |\n")),
        }
    }
    s.push_str("\n## Cases (median over repetitions)\n\nRate: replies/s at the generator (closed loop), datagrams handled/s by the server (floods), connects/s (connect cases, sequential).\n\n| case | rate /s | p50 µs | p99 µs | server CPU | server CPU µs/op | generator CPU | CPU busy server/gen | gen-bound runs |\n|---|---|---|---|---|---|---|---|---|\n");
    for case in CASES {
        let rs: Vec<&CaseResult> = results.iter().filter(|r| r.case == case).collect();
        if rs.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&CaseResult) -> f64| {
            median_min_max(rs.iter().map(|r| f(r)).collect()).map_or(f64::NAN, |x| x.0)
        };
        s.push_str(&format!(
            "| {case} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2}/{:.2} | {} of {} |\n",
            med(&|r| r.rate),
            med(&|r| r.p50_us as f64),
            med(&|r| r.p99_us as f64),
            med(&|r| r.server_cpu),
            med(&|r| r.server_cpu_us_per_op),
            med(&|r| r.generator_cpu),
            med(&|r| r.server_cpu_busy),
            med(&|r| r.generator_cpu_busy),
            rs.iter().filter(|r| r.gen_bound).count(),
            rs.len()
        ));
    }
    s
}
