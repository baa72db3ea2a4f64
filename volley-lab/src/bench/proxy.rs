//! `volley-lab bench proxy`: the proxy benchmark of `../shared/BENCHMARKS.md` §4, side by side in
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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use volley::proxy::{TcpForward, TcpProxy, UdpForward, UdpProxy};
use volley::{Client, ClientConfig, PublicKey, Server, ServerConfig, StaticKeypair};

use super::{busy, median_min_max, thread_cpu_us};
use crate::select::cpu::proc_stat;
use crate::select::pin_to;
use crate::sim::stats::quantile_sorted;

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

/// A reported comparison: proxy case against direct case.
#[derive(Debug, Clone, Copy)]
enum Compare {
    /// Rate ÷ rate, with a floor.
    Ratio(Option<f64>),
    /// p50 difference in µs, with a ceiling.
    AddedP50(Option<f64>),
    /// p99 difference in µs (reported only).
    AddedP99,
}

const COMPARISONS: [(&str, &str, &str, Compare); 10] = [
    (
        "UDP requests/s, proxy ÷ direct",
        "udp-proxy",
        "udp-direct",
        Compare::Ratio(Some(0.5)),
    ),
    (
        "UDP added p50 latency per request (µs)",
        "udp-lat-proxy",
        "udp-lat-direct",
        Compare::AddedP50(Some(100.0)),
    ),
    (
        "UDP added p99 latency per request (µs)",
        "udp-lat-proxy",
        "udp-lat-direct",
        Compare::AddedP99,
    ),
    (
        "TCP requests/s, proxy ÷ direct",
        "tcp-proxy",
        "tcp-direct",
        Compare::Ratio(None),
    ),
    (
        "TCP added p50 latency per request (µs)",
        "tcp-lat-proxy",
        "tcp-lat-direct",
        Compare::AddedP50(Some(100.0)),
    ),
    (
        "TCP added p99 latency per request (µs)",
        "tcp-lat-proxy",
        "tcp-lat-direct",
        Compare::AddedP99,
    ),
    (
        "TCP new connection + request, added p50 (µs)",
        "tcp-connect-proxy",
        "tcp-connect-direct",
        Compare::AddedP50(None),
    ),
    (
        "TCP bulk, 1 stream, proxy ÷ direct",
        "bulk1-proxy",
        "bulk1-direct",
        Compare::Ratio(Some(0.5)),
    ),
    (
        "TCP bulk, 16 streams, proxy ÷ direct",
        "bulk16-proxy",
        "bulk16-direct",
        Compare::Ratio(Some(0.5)),
    ),
    (
        "TCP new connection + request, added p99 (µs)",
        "tcp-connect-proxy",
        "tcp-connect-direct",
        Compare::AddedP99,
    ),
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

/// Where everything on the server host listens.
#[derive(Debug, Clone, Copy)]
struct ServerHost {
    udp_echo: SocketAddr,
    tcp_echo: SocketAddr,
    tcp_sink: SocketAddr,
    fwd_udp: SocketAddr,
    fwd_tcp_echo: SocketAddr,
    fwd_tcp_sink: SocketAddr,
    key: PublicKey,
}

enum Ctl {
    /// The server thread's CPU time and the sink's byte count.
    Mark(oneshot::Sender<(u64, u64)>),
    Stop,
}

/// Runs the benchmark and writes `results.md` and `results.json` into `args.out`.
pub fn run(args: ProxyBenchArgs) -> anyhow::Result<()> {
    for c in &args.cases {
        anyhow::ensure!(CASES.contains(&c.as_str()), "unknown case {c}");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let server_cpu = args.server_cpu;
    let server = thread::Builder::new()
        .name("proxy-bench-server".into())
        .spawn(move || {
            pin_to(server_cpu);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
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
            pin_to(args2.client_cpu);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(client_host(args2, host, ctl2))
        })?;
    let results = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    let _ = ctl.send(Ctl::Stop);
    let _ = server.join();
    let results = results?;
    crate::chaos::write_results(&args.out, &report(&args, &results), &results)
}

async fn server_host(
    ready: std_mpsc::Sender<Result<ServerHost, String>>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let sunk = Arc::new(AtomicU64::new(0));
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let started: anyhow::Result<ServerHost> = async {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let udp = UdpSocket::bind(any).await?;
        let udp_echo = udp.local_addr()?;
        tokio::spawn(udp_echo_service(udp));
        let echo = TcpListener::bind(any).await?;
        let tcp_echo = echo.local_addr()?;
        tokio::spawn(tcp_service(echo, None));
        let sink = TcpListener::bind(any).await?;
        let tcp_sink = sink.local_addr()?;
        tokio::spawn(tcp_service(sink, Some(Arc::clone(&sunk))));
        let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
        // The servers' defaults, as `volley serve --forward` runs them.
        let bind = || Server::bind(any, ServerConfig::new(key.clone()));
        let server = bind().await?;
        let fwd_udp = server.local_addr();
        let mut stop = stop_tx.subscribe();
        tokio::spawn(UdpForward::new(server, udp_echo).serve(async move {
            let _ = stop.recv().await;
        }));
        let mut tcp_fwd = Vec::new();
        for backend in [tcp_echo, tcp_sink] {
            let server = bind().await?;
            tcp_fwd.push(server.local_addr());
            let forward = TcpForward::bind(server, backend).await?;
            let mut stop = stop_tx.subscribe();
            tokio::spawn(forward.serve(async move {
                let _ = stop.recv().await;
            }));
        }
        Ok(ServerHost {
            udp_echo,
            tcp_echo,
            tcp_sink,
            fwd_udp,
            fwd_tcp_echo: tcp_fwd[0],
            fwd_tcp_sink: tcp_fwd[1],
            key: key.public(),
        })
    }
    .await;
    let ok = started.is_ok();
    let _ = ready.send(started.map_err(|e| e.to_string()));
    if !ok {
        return;
    }
    while let Some(c) = ctl.recv().await {
        match c {
            Ctl::Mark(reply) => {
                let _ = reply.send((thread_cpu_us(), sunk.load(Ordering::Relaxed)));
            }
            Ctl::Stop => break,
        }
    }
    let _ = stop_tx.send(());
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The UDP service: every datagram straight back to its sender.
async fn udp_echo_service(socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        let _ = socket.send_to(&buf[..n], from).await;
    }
}

/// The TCP services: an echo (`sink` None) or a sink counting what it read.
async fn tcp_service(listener: TcpListener, sink: Option<Arc<AtomicU64>>) {
    while let Ok((mut conn, _)) = listener.accept().await {
        let _ = conn.set_nodelay(true);
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                match &sink {
                    Some(count) => {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    None => {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
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

async fn mark(ctl: &mpsc::UnboundedSender<Ctl>) -> anyhow::Result<(u64, u64)> {
    let (tx, rx) = oneshot::channel();
    ctl.send(Ctl::Mark(tx)).ok().context("server gone")?;
    rx.await.context("server gone")
}

/// What a workload counted in the measured period.
#[derive(Debug, Default)]
struct Counted {
    ops: u64,
    lost: u64,
    /// Latencies in µs, measured cases only.
    latencies: Vec<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Period {
    from: Instant,
    end: Instant,
}

impl Period {
    fn counts(&self, t: Instant) -> bool {
        t >= self.from && t < self.end
    }
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
    let a = (
        mark(ctl).await?,
        thread_cpu_us(),
        proc_stat(),
        Instant::now(),
    );
    tokio::time::sleep_until(period.end.into()).await;
    let b = (
        mark(ctl).await?,
        thread_cpu_us(),
        proc_stat(),
        Instant::now(),
    );
    let mut counted = work.await.context("workload panicked")??;
    let secs = (b.3 - a.3).as_secs_f64();
    let client_cpu = (b.1 - a.1) as f64 / 1e6 / secs;
    let server_cpu = ((b.0).0 - (a.0).0) as f64 / 1e6 / secs;
    let rate = if kind.starts_with("bulk") {
        ((b.0).1 - (a.0).1) as f64 / secs
    } else {
        counted.ops as f64 / secs
    };
    counted.latencies.sort_by(f64::total_cmp);
    let q = |p: f64| quantile_sorted(&counted.latencies, p);
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
        client_busy: busy(&a.2, &b.2, args.client_cpu),
        server_busy: busy(&a.2, &b.2, args.server_cpu),
        saturated: client_cpu >= 0.9 || server_cpu >= 0.9,
    })
}

/// Closed loop over `flows` UDP sockets with `window` requests in flight each; a window that
/// hears nothing for 200 ms is refilled (the loss counted).
async fn udp_rate(
    target: SocketAddr,
    flows: usize,
    window: usize,
    payload: usize,
    period: Period,
) -> anyhow::Result<Counted> {
    let mut tasks = Vec::new();
    for _ in 0..flows {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(target).await?;
        tasks.push(tokio::spawn(async move {
            let mut c = Counted::default();
            let mut buf = vec![0u8; 2048];
            let mut req = vec![0u8; payload];
            // Each request carries when it was sent (ns since the period's start).
            let stamp = |req: &mut Vec<u8>| {
                let ns = period.from.elapsed().as_nanos() as u64;
                let ns = if Instant::now() < period.from { 0 } else { ns };
                if req.len() >= 8 {
                    req[..8].copy_from_slice(&ns.to_le_bytes());
                }
            };
            for _ in 0..window {
                stamp(&mut req);
                let _ = socket.send(&req).await;
            }
            while Instant::now() < period.end {
                match tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
                {
                    Ok(Ok(n)) => {
                        let now = Instant::now();
                        if period.counts(now) {
                            c.ops += 1;
                            if window == 1 && n >= 8 && payload >= 8 {
                                let sent = u64::from_le_bytes(buf[..8].try_into().unwrap());
                                let at = period.from.elapsed().as_nanos() as u64;
                                if sent > 0 && at >= sent {
                                    c.latencies.push((at - sent) as f64 / 1e3);
                                }
                            }
                        }
                        stamp(&mut req);
                        let _ = socket.send(&req).await;
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        c.lost += 1;
                        for _ in 0..window {
                            stamp(&mut req);
                            let _ = socket.send(&req).await;
                        }
                    }
                }
            }
            c
        }));
    }
    let mut total = Counted::default();
    for t in tasks {
        let c = t.await?;
        total.ops += c.ops;
        total.lost += c.lost;
        total.latencies.extend(c.latencies);
    }
    Ok(total)
}

/// `conns` connections, each with one request of `payload` bytes in flight; latency recorded.
async fn tcp_rate(
    target: SocketAddr,
    conns: usize,
    payload: usize,
    period: Period,
) -> anyhow::Result<Counted> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = TcpStream::connect(target).await?;
        conn.set_nodelay(true)?;
        tasks.push(tokio::spawn(async move {
            let mut c = Counted::default();
            let req = vec![7u8; payload];
            let mut back = vec![0u8; payload];
            while Instant::now() < period.end {
                let t = Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(5), async {
                    conn.write_all(&req).await?;
                    conn.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(ok, Ok(Ok(()))) {
                    c.lost += 1;
                    break;
                }
                let now = Instant::now();
                if period.counts(now) {
                    c.ops += 1;
                    c.latencies.push((now - t).as_secs_f64() * 1e6);
                }
            }
            c
        }));
    }
    let mut total = Counted::default();
    for t in tasks {
        let c = t.await?;
        total.ops += c.ops;
        total.lost += c.lost;
        total.latencies.extend(c.latencies);
    }
    if conns > 1 {
        total.latencies.clear(); // under load: not the added latency of one request
    }
    Ok(total)
}

/// A new connection per request, one at a time (at most 3,000 in the measured period, so that
/// closed connections waiting out TIME_WAIT stay few).
async fn tcp_connects(
    target: SocketAddr,
    payload: usize,
    period: Period,
) -> anyhow::Result<Counted> {
    let mut c = Counted::default();
    let req = vec![7u8; payload];
    let mut back = vec![0u8; payload];
    while Instant::now() < period.end && c.ops < 3_000 {
        let t = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = TcpStream::connect(target).await?;
            conn.set_nodelay(true)?;
            conn.write_all(&req).await?;
            conn.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(())
        })
        .await;
        let now = Instant::now();
        if !matches!(ok, Ok(Ok(()))) {
            c.lost += 1;
            continue;
        }
        if period.counts(now) {
            c.ops += 1;
            c.latencies.push((now - t).as_secs_f64() * 1e6);
        }
    }
    Ok(c)
}

/// `conns` connections writing 64 KiB at a time until the period ends.
async fn bulk(target: SocketAddr, conns: usize, period: Period) -> anyhow::Result<Counted> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = TcpStream::connect(target).await?;
        tasks.push(tokio::spawn(async move {
            let chunk = vec![0x5au8; 64 * 1024];
            while Instant::now() < period.end {
                if conn.write_all(&chunk).await.is_err() {
                    return 1u64;
                }
            }
            0
        }));
    }
    let mut c = Counted::default();
    for t in tasks {
        c.lost += t.await?;
    }
    Ok(c)
}

fn report(args: &ProxyBenchArgs, results: &[ProxyCaseResult]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# volley-lab bench proxy\n\n{} repetitions × {:.1} s per case; {} flows/connections, UDP window {}, {} B requests; server host on CPU {}, client host (generator and client-side proxies) on CPU {}.\n\n",
        args.reps, args.seconds, args.flows, args.window, args.payload, args.server_cpu, args.client_cpu
    ));
    s.push_str("## Through the proxies against direct (same repetition; median and min–max over repetitions)\n\n| comparison | measured | goal | met? |\n|---|---|---|---|\n");
    let find = |rep: usize, case: &str| results.iter().find(|r| r.rep == rep && r.case == case);
    for (name, num, den, how) in COMPARISONS {
        let per_rep: Vec<f64> = (0..args.reps)
            .filter_map(|rep| {
                let (n, d) = (find(rep, num)?, find(rep, den)?);
                Some(match how {
                    Compare::Ratio(_) => n.rate / d.rate,
                    Compare::AddedP50(_) => n.p50_us - d.p50_us,
                    Compare::AddedP99 => n.p99_us - d.p99_us,
                })
            })
            .collect();
        let (goal, met): (String, Box<dyn Fn(f64) -> bool>) = match how {
            Compare::Ratio(Some(g)) => (format!("≥ {g:.2}"), Box::new(move |m| m >= g)),
            Compare::AddedP50(Some(g)) => (format!("≤ {g:.0} µs"), Box::new(move |m| m <= g)),
            _ => ("—".to_string(), Box::new(|_| true)),
        };
        let has_goal = goal != "—";
        let fmt = |x: f64| match how {
            Compare::Ratio(_) => format!("{x:.2}"),
            _ => format!("{x:.0}"),
        };
        match median_min_max(per_rep) {
            Some((m, lo, hi)) => s.push_str(&format!(
                "| {name} | {} ({}–{}) | {goal} | {} |\n",
                fmt(m),
                fmt(lo),
                fmt(hi),
                if !has_goal {
                    "—"
                } else if met(m) {
                    "yes"
                } else {
                    "**no**"
                }
            )),
            None => s.push_str(&format!("| {name} | not run | {goal} | — |\n")),
        }
    }
    s.push_str("\n## Cases (median over repetitions)\n\nRate: requests/s, or MB/s for bulk (bytes the sink read). CPU: each host thread's own CPU time per second; busy: its core's /proc/stat share. Saturated: runs where a host thread used ≥ 0.9 of its core.\n\n| case | rate | p50 µs | p99 µs | lost | client CPU | server CPU | busy client/server | saturated runs |\n|---|---|---|---|---|---|---|---|---|\n");
    for case in CASES {
        let rs: Vec<&ProxyCaseResult> = results.iter().filter(|r| r.case == case).collect();
        if rs.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&ProxyCaseResult) -> f64| {
            median_min_max(rs.iter().map(|r| f(r)).collect()).map_or(f64::NAN, |x| x.0)
        };
        let rate = if case.starts_with("bulk") {
            format!("{:.0} MB/s", med(&|r| r.rate) / 1e6)
        } else {
            format!("{:.0}/s", med(&|r| r.rate))
        };
        let lat = |x: f64| {
            if x.is_finite() {
                format!("{x:.0}")
            } else {
                "—".to_string()
            }
        };
        s.push_str(&format!(
            "| {case} | {rate} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2}/{:.2} | {} of {} |\n",
            lat(med(&|r| r.p50_us)),
            lat(med(&|r| r.p99_us)),
            med(&|r| r.lost as f64),
            med(&|r| r.client_cpu),
            med(&|r| r.server_cpu),
            med(&|r| r.client_busy),
            med(&|r| r.server_busy),
            rs.iter().filter(|r| r.saturated).count(),
            rs.len()
        ));
    }
    s
}
