//! `volley-lab soak`: the long run of `../shared/BENCHMARKS.md` §5 on real sockets and the real
//! `volley` binary. Clients and servers at moderate load for `--minutes`, with restarts and key
//! rotations, sampled every `--sample-every` seconds.
//!
//! - **Servers**: `--servers` `volley serve` processes (echo service, `--metrics`). Server 0 is
//!   never restarted: its memory and descriptors are what "flat" is judged on. The others are
//!   restarted in turn every `--restart-every` seconds, alternately with `kill -9` and SIGTERM,
//!   each time on the same port with the other of two static keys (both pinned by every client):
//!   a key rotation. Cookie keys rotate inside every server on their own timer (30 s).
//! - **Library clients**: `--clients` independent [`volley::Client`]s in this process, each with
//!   one long-lived session sending a request every 100 ms (it fails over when its server goes)
//!   and one task churning short sessions (connect, 20 requests 25 ms apart, close). A request
//!   is a datagram echoed back, resent at RTT-scaled intervals, failed after 5 s.
//! - **Proxy**: one `volley proxy --listen udp://…` process in front of the same servers, with
//!   `--proxy-flows` plain-UDP applications, each sending 100 requests 50 ms apart from a fresh
//!   socket (a new flow) and then moving to another; flows idle out of the proxy after 10 s.
//!
//! Each sample records, for every process, resident memory (`VmRSS`) and open descriptors (from
//! `/proc`), every server's open sessions and its session counters (from its metrics endpoint,
//! one snapshot per scrape), and the clients' running totals. Checks: every scrape's
//! `sessions_opened - sessions_closed` equals its open sessions; every session, at its connect
//! and after each failover, is with a server of the pool that its own race selected; at the end,
//! with every client gone, no server holds a session. Writes `samples.csv`, `results.json`,
//! `results.md` and `soak.svg` into `--out`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use volley::{Client, ClientConfig, OfferFate, Session};

use crate::chaos::{
    ServeProcess, exchange, free_port, keygen, spawn_volley, volley_binary, write_results,
};
use crate::sim::stats::quantile_sorted;

mod plot;

/// Arguments of `volley-lab soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 60.0)]
    pub minutes: f64,
    /// `volley serve` processes (at least 2: server 0 is never restarted).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Independent library clients, each with a long session and a churning one.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Plain-UDP applications sending through one `volley proxy`.
    #[arg(long, default_value_t = 4)]
    pub proxy_flows: usize,
    /// Seconds between restarts (one server each time, in turn; never server 0).
    #[arg(long, default_value_t = 60.0)]
    pub restart_every: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
    /// Minutes at the start left out of the flatness figures (allocators and caches warming
    /// up); at most a third of the run.
    #[arg(long, default_value_t = 5.0)]
    pub warm_up_minutes: f64,
    /// The `volley` binary [default: beside this one].
    #[arg(long)]
    pub volley: Option<PathBuf>,
    /// Directory for samples.csv, results.md, results.json and soak.svg.
    #[arg(long, default_value = "soak-out")]
    pub out: PathBuf,
}

/// The deadline of one request (its echo), resends included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The deadline of one connect.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// The clients' running totals.
#[derive(Debug, Default)]
struct Totals {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    /// Sessions (at connect or after a failover) with a server outside the pool, or other than
    /// the one their race selected.
    misrouted: AtomicU64,
    requests: AtomicU64,
    request_failures: AtomicU64,
    failovers: AtomicU64,
    /// Long sessions that ended (failovers exhausted or closed) and were connected anew.
    sessions_lost: AtomicU64,
    proxy_requests: AtomicU64,
    proxy_failures: AtomicU64,
}

impl Totals {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// One process's figures at a sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    pub pid: u32,
    pub rss_kb: u64,
    pub fds: u64,
    /// CPU time used so far (user + system), seconds.
    pub cpu_s: f64,
}

/// One server's figures at a sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerSample {
    pub proc: ProcSample,
    /// Restarts of this server so far (its incarnation).
    pub incarnation: u32,
    pub sessions: u64,
    pub opened: u64,
    pub closed: u64,
    /// Whether the scrape answered.
    pub scraped: bool,
}

/// One sample of the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub servers: Vec<ServerSample>,
    pub proxy: ProcSample,
    pub proxy_flows: u64,
    pub proxy_open_flows: u64,
    pub lab: ProcSample,
    pub connects: u64,
    pub connect_failures: u64,
    pub misrouted: u64,
    pub requests: u64,
    pub request_failures: u64,
    pub failovers: u64,
    pub sessions_lost: u64,
    pub proxy_requests: u64,
    pub proxy_failures: u64,
    pub restarts: u64,
}

/// A restart of one server.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub t_s: f64,
    pub server: usize,
    pub how: &'static str,
    /// The static key it came back with: "A" or "B".
    pub key: &'static str,
    /// Its counters just before (the last scrape of the incarnation that ended).
    pub opened_before: u64,
    pub closed_before: u64,
}

/// Flatness of one series after the warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct Flatness {
    pub what: String,
    pub samples: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// (max - min) / median.
    pub spread: f64,
    /// Median of the last sixth of the run against the median of the first sixth after warm-up.
    pub drift: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    minutes: f64,
    servers: usize,
    clients: usize,
    proxy_flows: usize,
    restarts: Vec<Restart>,
    flatness: Vec<Flatness>,
    /// Share of one core per sample interval after the warm-up, per process: (name, median, max).
    cpu: Vec<(String, f64, f64)>,
    /// Scrapes whose opened - closed was not the open sessions.
    inconsistent_scrapes: u64,
    scrapes: u64,
    /// Sessions open on each server once every client had gone (should be 0).
    left_open: Vec<u64>,
    /// Per server: sessions opened over all its incarnations (last scrape of each).
    opened_total: Vec<u64>,
    closed_total: Vec<u64>,
    last: Sample,
}

/// Runs the soak and writes its files into `args.out`.
pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.servers >= 2, "--servers must be at least 2");
    anyhow::ensure!(
        args.minutes > 0.0 && args.sample_every > 0.0 && args.restart_every > 0.0,
        "--minutes, --sample-every and --restart-every must be positive"
    );
    let volley = volley_binary(args.volley.as_deref())?;
    std::fs::create_dir_all(&args.out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = rt.block_on(soak(&args, &volley))?;
    write_results(&args.out, &report(&args, &results), &results)
}

fn spawn_server(volley: &Path, key: &Path, addr: SocketAddr) -> anyhow::Result<ServeProcess> {
    let args = [
        "serve".to_string(),
        "--listen".into(),
        addr.to_string(),
        "--key".into(),
        key.display().to_string(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
    ];
    spawn_volley(volley, &args, addr)
}

/// `VmRSS` (kB) and open descriptors of a process, from `/proc`.
fn proc_sample(pid: u32) -> ProcSample {
    let dir = if pid == std::process::id() {
        PathBuf::from("/proc/self")
    } else {
        PathBuf::from(format!("/proc/{pid}"))
    };
    let rss_kb = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(dir.join("fd")).map_or(0, |d| d.count() as u64);
    // utime and stime, fields 14 and 15 of /proc/PID/stat, counted after the parenthesised
    // command name; in USER_HZ ticks, which Linux fixes at 100 for /proc.
    let cpu_s = std::fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let mut f = rest.split_whitespace().skip(11);
            let utime: u64 = f.next()?.parse().ok()?;
            let stime: u64 = f.next()?.parse().ok()?;
            Some((utime + stime) as f64 / 100.0)
        })
        .unwrap_or(0.0);
    ProcSample {
        pid,
        rss_kb,
        fds,
        cpu_s,
    }
}

/// `GET /metrics`: every sample line without labels, by name.
async fn scrape(addr: SocketAddr) -> Option<HashMap<String, f64>> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()??;
    let (head, text) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| parse_metrics(text))
}

/// The samples of an OpenMetrics text that carry no labels, by name.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Whether `session` is with a server of `pool` that its latest race selected.
fn routed_right(session: &Session, pool: &[SocketAddr]) -> bool {
    let remote = session.remote();
    if !pool.contains(&remote) {
        return false;
    }
    match session.report() {
        Some(r) => {
            r.server.is_none_or(|s| s == remote)
                && r.offers
                    .iter()
                    .filter(|o| o.fate == OfferFate::Selected)
                    .all(|o| o.server == remote)
        }
        None => true,
    }
}

struct Fleet {
    volley: PathBuf,
    keys: [PathBuf; 2],
    servers: Vec<ServeProcess>,
    /// Which key each server runs with (index into `keys`).
    key_of: Vec<usize>,
    incarnation: Vec<u32>,
}

async fn soak(args: &SoakArgs, volley: &Path) -> anyhow::Result<Results> {
    let keys = [args.out.join("soak-a.key"), args.out.join("soak-b.key")];
    let publics = vec![keygen(volley, &keys[0])?, keygen(volley, &keys[1])?];
    let mut fleet = Fleet {
        volley: volley.to_path_buf(),
        keys: keys.clone(),
        servers: Vec::new(),
        key_of: vec![0; args.servers],
        incarnation: vec![0; args.servers],
    };
    for _ in 0..args.servers {
        fleet
            .servers
            .push(spawn_server(volley, &keys[0], free_port()?)?);
    }
    let pool: Vec<SocketAddr> = fleet.servers.iter().map(|s| s.addr).collect();
    // The proxy, pinning both keys.
    let proxy_addr = free_port()?;
    let mut proxy_args = vec![
        "proxy".to_string(),
        "--listen".into(),
        format!("udp://{proxy_addr}"),
        "--idle-timeout".into(),
        "10".into(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
    ];
    for p in &publics {
        proxy_args.push("--server-key".into());
        proxy_args.push(p.to_hex());
    }
    proxy_args.extend(pool.iter().map(SocketAddr::to_string));
    let proxy = spawn_volley(volley, &proxy_args, proxy_addr)?;

    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut config = ClientConfig::new(publics.clone());
        config.max_failovers = u32::MAX;
        let client = Client::new(config);
        tasks.push(tokio::spawn(long_session(
            client.clone(),
            pool.clone(),
            c,
            Arc::clone(&totals),
            Arc::clone(&stop),
        )));
        tasks.push(tokio::spawn(churn(
            client,
            pool.clone(),
            c,
            Arc::clone(&totals),
            Arc::clone(&stop),
        )));
    }
    for f in 0..args.proxy_flows {
        tasks.push(tokio::spawn(proxy_app(
            proxy_addr,
            f,
            Arc::clone(&totals),
            Arc::clone(&stop),
        )));
    }

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.minutes * 60.0);
    let restart_every = Duration::from_secs_f64(args.restart_every);
    let sample_every = Duration::from_secs_f64(args.sample_every);
    let mut next_restart = start + restart_every;
    let mut next_sample = start;
    let mut samples = Vec::new();
    let mut restarts: Vec<Restart> = Vec::new();
    let mut tally = Tally {
        scrapes: 0,
        inconsistent: 0,
        last_counts: vec![(0, 0); args.servers],
    };
    // The totals of each server's ended incarnations.
    let mut ended_counts = vec![(0u64, 0u64); args.servers];
    let mut k = 0usize;
    while Instant::now() < end {
        let wake = next_sample.min(next_restart).min(end);
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if now >= next_sample {
            next_sample += sample_every;
            let s = sample(
                start,
                &fleet,
                &proxy,
                &totals,
                restarts.len() as u64,
                &mut tally,
            )
            .await;
            eprintln!(
                "soak {:>6.0} s: rss kB {} proxy {} lab {}; fds {} / {} / {}; sessions {:?}; connects {} (failed {}), requests {} (failed {}), failovers {}, misrouted {}, proxy {} (failed {}), inconsistent scrapes {}",
                s.t_s,
                s.servers[0].proc.rss_kb,
                s.proxy.rss_kb,
                s.lab.rss_kb,
                s.servers[0].proc.fds,
                s.proxy.fds,
                s.lab.fds,
                s.servers.iter().map(|v| v.sessions).collect::<Vec<_>>(),
                s.connects,
                s.connect_failures,
                s.requests,
                s.request_failures,
                s.failovers,
                s.misrouted,
                s.proxy_requests,
                s.proxy_failures,
                tally.inconsistent,
            );
            samples.push(s);
        }
        if now >= next_restart && now < end {
            next_restart += restart_every;
            let i = 1 + k % (args.servers - 1);
            let how = if k.is_multiple_of(2) {
                "kill -9"
            } else {
                "SIGTERM"
            };
            k += 1;
            restarts.push(restart(start, &mut fleet, i, how, &mut tally.last_counts).await?);
            let (o, c) = tally.last_counts[i];
            ended_counts[i].0 += o;
            ended_counts[i].1 += c;
            tally.last_counts[i] = (0, 0);
        }
    }
    // Everyone leaves; then nothing may be left open.
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    // Closed sessions are gone at once; the proxy's flows idle out after its 10 s.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let last = sample(
        start,
        &fleet,
        &proxy,
        &totals,
        restarts.len() as u64,
        &mut tally,
    )
    .await;
    samples.push(last.clone());
    let left_open = last.servers.iter().map(|s| s.sessions).collect();
    let opened_total = (0..args.servers)
        .map(|i| ended_counts[i].0 + tally.last_counts[i].0)
        .collect();
    let closed_total = (0..args.servers)
        .map(|i| ended_counts[i].1 + tally.last_counts[i].1)
        .collect();
    drop(proxy);
    drop(fleet);

    write_csv(&args.out.join("samples.csv"), &samples)?;
    let warm_up = (args.warm_up_minutes * 60.0).min(args.minutes * 20.0);
    let steady: Vec<&Sample> = samples[..samples.len() - 1]
        .iter()
        .filter(|s| s.t_s >= warm_up)
        .collect();
    let flatness = vec![
        flatness("server 0 RSS (kB)", &steady, |s| {
            s.servers[0].proc.rss_kb as f64
        }),
        flatness("server 0 open fds", &steady, |s| {
            s.servers[0].proc.fds as f64
        }),
        flatness("proxy RSS (kB)", &steady, |s| s.proxy.rss_kb as f64),
        flatness("proxy open fds", &steady, |s| s.proxy.fds as f64),
        flatness("lab (clients) RSS (kB)", &steady, |s| s.lab.rss_kb as f64),
        flatness("lab (clients) open fds", &steady, |s| s.lab.fds as f64),
    ];
    let cpu = vec![
        cpu_share("server 0", &steady, |s| s.servers[0].proc),
        cpu_share("proxy", &steady, |s| s.proxy),
        cpu_share("lab (clients)", &steady, |s| s.lab),
    ];
    plot::draw(&args.out.join("soak.svg"), &samples, &restarts, warm_up)?;
    Ok(Results {
        minutes: args.minutes,
        servers: args.servers,
        clients: args.clients,
        proxy_flows: args.proxy_flows,
        restarts,
        flatness,
        cpu,
        inconsistent_scrapes: tally.inconsistent,
        scrapes: tally.scrapes,
        left_open,
        opened_total,
        closed_total,
        last,
    })
}

/// What the scrapes have found so far.
struct Tally {
    scrapes: u64,
    /// Scrapes whose opened - closed was not the open sessions.
    inconsistent: u64,
    /// Per server: (opened, closed) at the last scrape of its current incarnation.
    last_counts: Vec<(u64, u64)>,
}

async fn sample(
    start: Instant,
    fleet: &Fleet,
    proxy: &ServeProcess,
    totals: &Totals,
    restarts: u64,
    tally: &mut Tally,
) -> Sample {
    let mut servers = Vec::new();
    for (i, s) in fleet.servers.iter().enumerate() {
        let mut out = ServerSample {
            proc: proc_sample(s.child.id()),
            incarnation: fleet.incarnation[i],
            ..ServerSample::default()
        };
        if let Some(m) = match s.metrics {
            Some(a) => scrape(a).await,
            None => None,
        } {
            let get = |n: &str| m.get(n).copied().unwrap_or(0.0) as u64;
            out.sessions = get("volley_server_sessions");
            out.opened = get("volley_server_sessions_opened_total");
            out.closed = get("volley_server_sessions_closed_total");
            out.scraped = true;
            tally.scrapes += 1;
            if out.opened.checked_sub(out.closed) != Some(out.sessions) {
                tally.inconsistent += 1;
                tracing::warn!(server = i, ?out, "opened - closed is not the open sessions");
            }
            tally.last_counts[i] = (out.opened, out.closed);
        }
        servers.push(out);
    }
    let (mut flows, mut open_flows) = (0, 0);
    if let Some(m) = match proxy.metrics {
        Some(a) => scrape(a).await,
        None => None,
    } {
        flows = m.get("volley_proxy_flows_total").copied().unwrap_or(0.0) as u64;
        open_flows = m.get("volley_proxy_open_flows").copied().unwrap_or(0.0) as u64;
    }
    let g = Totals::get;
    Sample {
        t_s: start.elapsed().as_secs_f64(),
        servers,
        proxy: proc_sample(proxy.child.id()),
        proxy_flows: flows,
        proxy_open_flows: open_flows,
        lab: proc_sample(std::process::id()),
        connects: g(&totals.connects),
        connect_failures: g(&totals.connect_failures),
        misrouted: g(&totals.misrouted),
        requests: g(&totals.requests),
        request_failures: g(&totals.request_failures),
        failovers: g(&totals.failovers),
        sessions_lost: g(&totals.sessions_lost),
        proxy_requests: g(&totals.proxy_requests),
        proxy_failures: g(&totals.proxy_failures),
        restarts,
    }
}

/// Restarts server `i` (kill -9 or SIGTERM) on its port with the other static key.
async fn restart(
    start: Instant,
    fleet: &mut Fleet,
    i: usize,
    how: &'static str,
    last_counts: &mut [(u64, u64)],
) -> anyhow::Result<Restart> {
    // Its counters just before it goes.
    if let Some(m) = match fleet.servers[i].metrics {
        Some(a) => scrape(a).await,
        None => None,
    } {
        let get = |n: &str| m.get(n).copied().unwrap_or(0.0) as u64;
        last_counts[i] = (
            get("volley_server_sessions_opened_total"),
            get("volley_server_sessions_closed_total"),
        );
    }
    let t_s = start.elapsed().as_secs_f64();
    let server = &mut fleet.servers[i];
    if how == "SIGTERM" {
        let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    } else {
        let _ = server.child.kill();
    }
    let child = &mut server.child;
    // A graceful stop closes its sessions first; give it 10 s, then kill.
    let give_up = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() >= give_up {
            let _ = child.kill();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = server.addr;
    fleet.key_of[i] = 1 - fleet.key_of[i];
    fleet.incarnation[i] += 1;
    fleet.servers[i] = spawn_server(&fleet.volley, &fleet.keys[fleet.key_of[i]], addr)?;
    let (opened_before, closed_before) = last_counts[i];
    Ok(Restart {
        t_s,
        server: i,
        how,
        key: if fleet.key_of[i] == 0 { "A" } else { "B" },
        opened_before,
        closed_before,
    })
}

async fn connect(client: &Client, pool: &[SocketAddr], totals: &Totals) -> Option<Session> {
    Totals::add(&totals.connects, 1);
    match tokio::time::timeout(CONNECT_DEADLINE, client.connect(pool)).await {
        Ok(Ok(s)) => {
            if !routed_right(&s, pool) {
                Totals::add(&totals.misrouted, 1);
                tracing::warn!(remote = %s.remote(), report = ?s.report(), "session not with the selected server");
            }
            Some(s)
        }
        other => {
            Totals::add(&totals.connect_failures, 1);
            tracing::info!(outcome = ?other.map(|r| r.map(|_| ())), "connect failed");
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// One request: a datagram echoed back within [`REQUEST_DEADLINE`].
async fn request(session: &mut Session, text: &[u8], totals: &Totals) -> bool {
    Totals::add(&totals.requests, 1);
    let ok = exchange(session, text, Instant::now() + REQUEST_DEADLINE).await;
    if !ok {
        Totals::add(&totals.request_failures, 1);
    }
    ok
}

/// Counts the failovers `session` made since it last had `seen`, and, when it has just been
/// answered (`answered`) on a new server, checks that server against its race.
fn count_failovers(
    session: &Session,
    seen: &mut u64,
    answered: bool,
    pool: &[SocketAddr],
    totals: &Totals,
) {
    let now = session.report().map_or(0, |r| r.failovers);
    if now > *seen {
        Totals::add(&totals.failovers, now - *seen);
        *seen = now;
        if answered && !routed_right(session, pool) {
            Totals::add(&totals.misrouted, 1);
            tracing::warn!(remote = %session.remote(), "failed over to a server not selected");
        }
    }
}

/// A long-lived session sending a request every 100 ms, failing over as servers go.
async fn long_session(
    client: Client,
    pool: Vec<SocketAddr>,
    c: usize,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut session) = connect(&client, &pool, &totals).await else {
            continue;
        };
        let mut failovers = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let ok = request(&mut session, format!("long {c} {n}").as_bytes(), &totals).await;
            count_failovers(&session, &mut failovers, ok, &pool, &totals);
            if session.close_reason().is_some() {
                Totals::add(&totals.sessions_lost, 1);
                tracing::info!(reason = ?session.close_reason(), "long session ended");
                break;
            }
        }
        session.close();
    }
}

/// Short sessions, one after another: connect, 20 requests 25 ms apart, close.
async fn churn(
    client: Client,
    pool: Vec<SocketAddr>,
    c: usize,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut session) = connect(&client, &pool, &totals).await else {
            continue;
        };
        let mut failovers = 0;
        for _ in 0..20 {
            n += 1;
            let ok = request(&mut session, format!("churn {c} {n}").as_bytes(), &totals).await;
            count_failovers(&session, &mut failovers, ok, &pool, &totals);
            if !ok || stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        session.close();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain-UDP application behind the proxy: flows of 100 requests 50 ms apart, each from a
/// fresh socket; a request is resent every 250 ms and failed after 5 s.
async fn proxy_app(proxy: SocketAddr, f: usize, totals: Arc<Totals>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for _ in 0..100 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            n += 1;
            let text = format!("proxy {f} {n}");
            Totals::add(&totals.proxy_requests, 1);
            let deadline = Instant::now() + REQUEST_DEADLINE;
            let mut ok = false;
            'tries: while Instant::now() < deadline {
                if socket.send_to(text.as_bytes(), proxy).await.is_err() {
                    break;
                }
                let until = (Instant::now() + Duration::from_millis(250)).min(deadline);
                loop {
                    match tokio::time::timeout_at(until.into(), socket.recv_from(&mut buf)).await {
                        Ok(Ok((len, _))) if &buf[..len] == text.as_bytes() => {
                            ok = true;
                            break 'tries;
                        }
                        Ok(Ok(_)) => continue,
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
            }
            if !ok {
                Totals::add(&totals.proxy_failures, 1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn flatness(what: &str, samples: &[&Sample], f: impl Fn(&Sample) -> f64) -> Flatness {
    let series: Vec<f64> = samples.iter().map(|s| f(s)).collect();
    let mut sorted = series.clone();
    sorted.sort_by(f64::total_cmp);
    let median = quantile_sorted(&sorted, 0.5);
    let (min, max) = (
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    let sixth = (series.len() / 6).max(1);
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        quantile_sorted(&v, 0.5)
    };
    let drift = if series.len() >= 2 {
        let first = med(&series[..sixth.min(series.len())]);
        let last = med(&series[series.len() - sixth.min(series.len())..]);
        (last - first) / first
    } else {
        f64::NAN
    };
    Flatness {
        what: what.to_string(),
        samples: series.len(),
        min,
        median,
        max,
        spread: (max - min) / median,
        drift,
    }
}

/// The median and largest share of one core a process used per sample interval.
fn cpu_share(
    what: &str,
    samples: &[&Sample],
    f: impl Fn(&Sample) -> ProcSample,
) -> (String, f64, f64) {
    let mut shares: Vec<f64> = samples
        .windows(2)
        .filter(|w| f(w[0]).pid == f(w[1]).pid && w[1].t_s > w[0].t_s)
        .map(|w| (f(w[1]).cpu_s - f(w[0]).cpu_s) / (w[1].t_s - w[0].t_s))
        .collect();
    shares.sort_by(f64::total_cmp);
    (
        what.to_string(),
        quantile_sorted(&shares, 0.5),
        shares.last().copied().unwrap_or(f64::NAN),
    )
}

fn write_csv(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let n = samples.first().map_or(0, |s| s.servers.len());
    let mut out = String::from("t_s");
    for i in 0..n {
        out.push_str(&format!(
            ",s{i}_incarnation,s{i}_rss_kb,s{i}_fds,s{i}_cpu_s,s{i}_sessions,s{i}_opened,s{i}_closed"
        ));
    }
    out.push_str(",proxy_rss_kb,proxy_fds,proxy_cpu_s,proxy_flows,proxy_open_flows,lab_rss_kb,lab_fds,lab_cpu_s,connects,connect_failures,misrouted,requests,request_failures,failovers,sessions_lost,proxy_requests,proxy_failures,restarts\n");
    for s in samples {
        out.push_str(&format!("{:.1}", s.t_s));
        for v in &s.servers {
            out.push_str(&format!(
                ",{},{},{},{:.2},{},{},{}",
                v.incarnation,
                v.proc.rss_kb,
                v.proc.fds,
                v.proc.cpu_s,
                v.sessions,
                v.opened,
                v.closed
            ));
        }
        out.push_str(&format!(
            ",{},{},{:.2},{},{},{},{},{:.2},{},{},{},{},{},{},{},{},{},{}\n",
            s.proxy.rss_kb,
            s.proxy.fds,
            s.proxy.cpu_s,
            s.proxy_flows,
            s.proxy_open_flows,
            s.lab.rss_kb,
            s.lab.fds,
            s.lab.cpu_s,
            s.connects,
            s.connect_failures,
            s.misrouted,
            s.requests,
            s.request_failures,
            s.failovers,
            s.sessions_lost,
            s.proxy_requests,
            s.proxy_failures,
            s.restarts
        ));
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn report(args: &SoakArgs, r: &Results) -> String {
    let l = &r.last;
    let mut s = format!(
        "# volley-lab soak\n\n{} min; {} servers (server 0 never restarted; the others restarted in turn every {} s, alternately kill -9 and SIGTERM, each time with the other of two pinned static keys); {} library clients (a long session at 10 requests/s and a churn of 20-request sessions each); {} plain-UDP applications through one `volley proxy` (100-request flows); sampled every {} s; warm-up left out of the flatness figures: {} min.\n\n",
        r.minutes,
        r.servers,
        args.restart_every,
        r.clients,
        r.proxy_flows,
        args.sample_every,
        (args.warm_up_minutes).min(args.minutes / 3.0)
    );
    s.push_str("## Flat (after the warm-up)\n\n| series | samples | min | median | max | spread (max−min)/median | drift (last sixth vs first) |\n|---|---|---|---|---|---|---|\n");
    for f in &r.flatness {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} % | {:+.1} % |\n",
            f.what,
            f.samples,
            f.min,
            f.median,
            f.max,
            f.spread * 100.0,
            f.drift * 100.0
        ));
    }
    s.push_str("\n## CPU (share of one core per sample interval, after the warm-up)\n\n| process | median | max |\n|---|---|---|\n");
    for (what, median, max) in &r.cpu {
        s.push_str(&format!("| {what} | {median:.2} | {max:.2} |\n"));
    }
    s.push_str(&format!(
        "\n## Counters\n\n- restarts: {} ({} kill -9, {} SIGTERM)\n- library connects: {} ({} failed within {} s)\n- requests: {} ({} not echoed within {} s)\n- failovers of open sessions: {}; long sessions that ended and reconnected: {}\n- proxy requests: {} ({} not echoed within 5 s); proxy flows: {}\n- sessions with a server other than their race selected (or outside the pool): {}\n- scrapes where opened − closed ≠ open sessions: {} of {}\n- sessions left open once every client had gone: {:?}\n- sessions opened over all incarnations, per server: {:?}; closed: {:?}\n",
        r.restarts.len(),
        r.restarts.iter().filter(|x| x.how == "kill -9").count(),
        r.restarts.iter().filter(|x| x.how == "SIGTERM").count(),
        l.connects,
        l.connect_failures,
        CONNECT_DEADLINE.as_secs(),
        l.requests,
        l.request_failures,
        REQUEST_DEADLINE.as_secs(),
        l.failovers,
        l.sessions_lost,
        l.proxy_requests,
        l.proxy_failures,
        l.proxy_flows,
        l.misrouted,
        r.inconsistent_scrapes,
        r.scrapes,
        r.left_open,
        r.opened_total,
        r.closed_total,
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_samples_without_labels_are_read_by_name() {
        let text = "# HELP volley_server_sessions Sessions open\n# TYPE volley_server_sessions gauge\nvolley_server_sessions 7\nvolley_server_sessions_opened_total 12\nvolley_server_answer_delay_seconds_bucket{le=\"0.001\"} 3\n# EOF\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("volley_server_sessions"), Some(&7.0));
        assert_eq!(m.get("volley_server_sessions_opened_total"), Some(&12.0));
        assert_eq!(m.len(), 2, "{m:?}");
    }

    #[test]
    fn flatness_measures_spread_and_drift_after_the_warm_up() {
        let samples: Vec<Sample> = (0u32..12)
            .map(|i| Sample {
                t_s: f64::from(i),
                lab: ProcSample {
                    rss_kb: 1000 + u64::from(i) * 10,
                    ..ProcSample::default()
                },
                ..Sample::default()
            })
            .collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let f = flatness("lab", &refs, |s| s.lab.rss_kb as f64);
        assert_eq!((f.samples, f.min, f.max), (12, 1000.0, 1110.0));
        // Spread: 110 over the median (1050 or 1060 by nearest rank).
        assert!((f.spread - 110.0 / f.median).abs() < 1e-12);
        assert!(f.median == 1050.0 || f.median == 1060.0, "{}", f.median);
        // Drift: the last two samples' median against the first two's, about +10 %.
        assert!(f.drift > 0.08 && f.drift < 0.12, "{}", f.drift);
        let flat: Vec<&Sample> = samples.iter().take(1).collect();
        let f = flatness("lab", &flat, |_| 5.0);
        assert_eq!((f.spread, f.drift.is_nan()), (0.0, true));
    }
}
