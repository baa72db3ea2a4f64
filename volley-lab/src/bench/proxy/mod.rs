//! `volley-lab bench proxy`: the proxy benchmark of `docs/BENCHMARKS.md` §4, side by side in
//! one run on loopback. The same backends are reached directly and through volley's proxies.
//!
//! Two pinned threads, one per "host", each a single-threaded tokio runtime:
//! - the **server host** (`--server-cpu`): the backends — a UDP echo, a TCP echo and a TCP sink
//!   (reads and discards) — and in front of each a volley server with the forwarder
//!   (`volley serve --forward`'s code, the servers' default settings);
//! - the **client host** (`--client-cpu`): the load generator and volley's client-side proxies
//!   (`volley proxy`'s code: UDP, and TCP for the echo and the sink), each with a pool of its one
//!   server.
//!
//! A direct case sends from the client thread to the backend; its proxy case sends the same to
//! the local proxy, which races the server, opens a session (and, for TCP, a stream) and relays.
//! The proxies' work shares the generator's core and the forwarders' the backend's, as on two
//! real hosts. Cases, each `--seconds` after 0.5 s of warm-up, every repetition running all:
//! - `udp-*`: closed loop, `--flows` application sockets × `--window` requests of `--payload`
//!   bytes in flight: requests/s;
//! - `udp-lat-*`: one socket, one request at a time: latency p50/p99;
//! - `tcp-*`: `--flows` connections (opened before the measurement), one request of
//!   `--payload` bytes in flight each: requests/s;
//! - `tcp-lat-*`: one connection, one request at a time: latency;
//! - `tcp-connect-*`: a new connection per request (connect, request, answer, close): latency of
//!   the whole (through the proxy: race, handshake, stream set-up, request);
//! - `bulk1-*`, `bulk16-*`: 1 and 16 connections writing 64 KiB at a time into the sink:
//!   bytes/s, counted by the sink.
//!
//! CPU: each thread's own CPU time (getrusage) and each CPU's busy share (/proc/stat). A case
//! whose client or server thread used ≥ 0.9 of its core is flagged: its rate is that core's
//! limit, not the code's.

mod report;
mod server_host;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use volley::proxy::{TcpProxy, UdpProxy};
use volley::{Client, ClientConfig};

use crate::harness::cpu;
use crate::harness::process::pinned_runtime;
use crate::harness::results;
use crate::harness::stats::quantile;
use server_host::{Ctl, ServerHost, mark, server_host};
use workloads::{Period, bulk, tcp_connects, tcp_rate, udp_rate};

/// Arguments of `volley-lab bench proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyBenchArgs {
    /// Seconds measured per case, after half a second of warm-up.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Repetitions; within each, every case runs once, back to back.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// UDP application sockets (flows) and TCP connections of the rate cases.
    #[arg(long, default_value_t = 16)]
    pub flows: usize,
    /// UDP requests in flight per flow in the rate case (16 × 16: enough that the direct case
    /// saturates both cores, so that the rate is each path's capacity, not its latency).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Request (and answer) size in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// The CPU of the server host's thread (backends and forwarders).
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// The CPU of the client host's thread (generator and client-side proxies).
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Only these cases (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Directory for results.md and results.json.
    #[arg(long, default_value = "bench-proxy-out")]
    pub out: PathBuf,
}

const CASES: [&str; 14] = [
    "udp-direct",
    "udp-proxy",
    "udp-lat-direct",
    "udp-lat-proxy",
    "tcp-direct",
    "tcp-proxy",
    "tcp-lat-direct",
    "tcp-lat-proxy",
    "tcp-connect-direct",
    "tcp-connect-proxy",
    "bulk1-direct",
    "bulk1-proxy",
    "bulk16-direct",
    "bulk16-proxy",
];

/// One case of one repetition.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyCaseResult {
    pub case: String,
    pub rep: usize,
    /// Requests/s (request cases) or bytes/s (bulk cases).
    pub rate: f64,
    pub ops: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// UDP windows restarted after 200 ms without an answer; TCP requests that failed.
    pub lost: u64,
    /// Thread CPU over the measured period, in cores.
    pub client_cpu: f64,
    pub server_cpu: f64,
    /// /proc/stat busy share of each thread's CPU.
    pub client_busy: f64,
    pub server_busy: f64,
    /// A thread used ≥ 0.9 of its core.
    pub saturated: bool,
}

/// Runs the benchmark and writes `results.md` and `results.json` into `args.out`.
pub fn run(args: ProxyBenchArgs) -> anyhow::Result<()> {
    for c in &args.cases {
        anyhow::ensure!(CASES.contains(&c.as_str()), "unknown case {c}");
    }
    results::out_dir(&args.out)?;
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let server_cpu = args.server_cpu;
    let server = thread::Builder::new()
        .name("proxy-bench-server".into())
        .spawn(move || {
            let rt = pinned_runtime(server_cpu).expect("runtime");
            rt.block_on(server_host(ready_tx, ctl_rx));
        })?;
    let host = ready_rx
        .recv()
        .context("server thread died")?
        .map_err(|e| anyhow::anyhow!(e))?;
    let args2 = args.clone();
    let ctl2 = ctl.clone();
    let client = thread::Builder::new()
        .name("proxy-bench-client".into())
        .spawn(move || -> anyhow::Result<Vec<ProxyCaseResult>> {
            let rt = pinned_runtime(args2.client_cpu)?;
            rt.block_on(client_host(args2, host, ctl2))
        })?;
    let results = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    let _ = ctl.send(Ctl::Stop);
    let _ = server.join();
    let results = results?;
    results::publish(&args.out, &report::markdown(&args, &results), &results)
}

/// Where the client side sends, per case: the backend or the local proxy.
#[derive(Debug, Clone, Copy)]
struct Targets {
    udp: SocketAddr,
    tcp_echo: SocketAddr,
    tcp_sink: SocketAddr,
}

async fn client_host(
    args: ProxyBenchArgs,
    host: ServerHost,
    ctl: mpsc::UnboundedSender<Ctl>,
) -> anyhow::Result<Vec<ProxyCaseResult>> {
    let direct = Targets {
        udp: host.udp_echo,
        tcp_echo: host.tcp_echo,
        tcp_sink: host.tcp_sink,
    };
    // The client-side proxies, as `volley proxy` runs them.
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let client = || Client::new(ClientConfig::new(vec![host.key]));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let udp = socket.local_addr()?;
    let mut stop = stop_tx.subscribe();
    tokio::spawn(
        UdpProxy::new(client(), vec![host.fwd_udp]).serve(socket, async move {
            let _ = stop.recv().await;
        }),
    );
    let mut tcp = Vec::new();
    for server in [host.fwd_tcp_echo, host.fwd_tcp_sink] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        tcp.push(listener.local_addr()?);
        let mut stop = stop_tx.subscribe();
        tokio::spawn(
            TcpProxy::new(client(), vec![server]).serve(listener, async move {
                let _ = stop.recv().await;
            }),
        );
    }
    let proxied = Targets {
        udp,
        tcp_echo: tcp[0],
        tcp_sink: tcp[1],
    };
    let cases: Vec<&str> = CASES
        .iter()
        .copied()
        .filter(|c| args.cases.is_empty() || args.cases.iter().any(|x| x == c))
        .collect();
    let mut results = Vec::new();
    for rep in 0..args.reps {
        for case in &cases {
            let targets = if case.ends_with("-proxy") {
                proxied
            } else {
                direct
            };
            let r = run_case(case, rep, targets, &args, &ctl).await?;
            eprintln!(
                "rep {rep} {case}: rate {:.0} p50 {:.0} µs p99 {:.0} µs lost {} cpu client {:.2} server {:.2}",
                r.rate, r.p50_us, r.p99_us, r.lost, r.client_cpu, r.server_cpu
            );
            results.push(r);
        }
    }
    let _ = stop_tx.send(());
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(results)
}

async fn run_case(
    case: &str,
    rep: usize,
    targets: Targets,
    args: &ProxyBenchArgs,
    ctl: &mpsc::UnboundedSender<Ctl>,
) -> anyhow::Result<ProxyCaseResult> {
    let start = Instant::now();
    let period = Period {
        from: start + Duration::from_millis(500),
        end: start + Duration::from_millis(500) + Duration::from_secs_f64(args.seconds),
    };
    let kind = case.trim_end_matches("-direct").trim_end_matches("-proxy");
    let payload = args.payload.max(1);
    let work = {
        let kind = kind.to_string();
        let (flows, window) = (args.flows.max(1), args.window.max(1));
        tokio::spawn(async move {
            match kind.as_str() {
                "udp" => udp_rate(targets.udp, flows, window, payload, period).await,
                "udp-lat" => udp_rate(targets.udp, 1, 1, payload, period).await,
                "tcp" => tcp_rate(targets.tcp_echo, flows, payload, period).await,
                "tcp-lat" => tcp_rate(targets.tcp_echo, 1, payload, period).await,
                "tcp-connect" => tcp_connects(targets.tcp_echo, payload, period).await,
                "bulk1" => bulk(targets.tcp_sink, 1, period).await,
                "bulk16" => bulk(targets.tcp_sink, 16, period).await,
                other => Err(anyhow::anyhow!("unknown case {other}")),
            }
        })
    };
    tokio::time::sleep_until(period.from.into()).await;
    let ((server_a, sunk_a), a) = (mark(ctl).await?, cpu::sample());
    tokio::time::sleep_until(period.end.into()).await;
    let ((server_b, sunk_b), b) = (mark(ctl).await?, cpu::sample());
    let mut counted = work.await.context("workload panicked")??;
    let secs = a.seconds_to(&b);
    let client_cpu = a.thread_cores_to(&b);
    let server_cpu = (server_b - server_a) as f64 / 1e6 / secs;
    let rate = if kind.starts_with("bulk") {
        (sunk_b - sunk_a) as f64 / secs
    } else {
        counted.ops as f64 / secs
    };
    counted.latencies.sort_by(f64::total_cmp);
    let q = |p: f64| quantile(&counted.latencies, p);
    Ok(ProxyCaseResult {
        case: case.to_string(),
        rep,
        rate,
        ops: counted.ops,
        p50_us: q(0.50),
        p99_us: q(0.99),
        lost: counted.lost,
        client_cpu,
        server_cpu,
        client_busy: a.cpu_busy_to(&b, args.client_cpu),
        server_busy: a.cpu_busy_to(&b, args.server_cpu),
        saturated: client_cpu >= 0.9 || server_cpu >= 0.9,
    })
}
