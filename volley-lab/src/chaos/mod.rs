//! `volley-lab chaos`: the fault measurement of `../shared/BENCHMARKS.md` §5 on real sockets and
//! the real `volley` binary. This kernel has no netem, so faults come from our own seeded relay
//! ([`relay`]), one per server, between the clients and `volley serve` processes.
//!
//! Cells: 1 and 3 servers × loss 0/5/20/30 % each way (with 5 % duplication and up to 2 ms of
//! jitter, hence reordering, on a 5 ms one-way delay: a 10 ms path), each with `--connects`
//! connects of two kinds:
//! - **cold**: a fresh `volley connect --timeout 5 --send …` process per connect (nothing
//!   measured yet: cold-start timers). Success = it exited 0 with the reply; connect time as the
//!   binary reports it (race + handshake).
//! - **warm**: one in-process [`volley::Client`] per fleet making every connect of its cells
//!   (its measured answer and handshake times set its timers; 5 uncounted connects open each
//!   cell), each followed by an exchange of 10 datagrams; success = session and all 10 echoes
//!   within the deadline.
//!
//! Then the failure cases on 3 servers, clean path: a session sending every 50 ms whose server is
//! `kill -9`ed (time until echoes resume; the server is restarted with the same key and port
//! before the next round), stopped gracefully (SIGTERM), and partitioned (its relay blackholed for
//! 3 s, then healed).

pub mod relay;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use volley::{Client, ClientConfig, PublicKey};

use crate::sim::stats::quantile_sorted;
use relay::{Netem, Relay};

/// Arguments of `volley-lab chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Connects per cell (and kind).
    #[arg(long, default_value_t = 100)]
    pub connects: usize,
    /// Loss rates to run, in percent, each way.
    #[arg(long, value_delimiter = ',', default_value = "0,5,20,30")]
    pub loss: Vec<f64>,
    /// Duplication, in percent, each way.
    #[arg(long, default_value_t = 5.0)]
    pub duplicate: f64,
    /// One-way delay in ms (the path's RTT is twice this).
    #[arg(long, default_value_t = 5.0)]
    pub delay_ms: f64,
    /// Jitter in ms: each datagram's extra delay is uniform in 0..this (reorders).
    #[arg(long, default_value_t = 2.0)]
    pub jitter_ms: f64,
    /// The deadline of each connect (and its exchange), seconds.
    #[arg(long, default_value_t = 5.0)]
    pub deadline: f64,
    /// Fleet sizes to run the connect cells with.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub servers: Vec<usize>,
    /// Rounds of each failure case (0: none).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// The relays' seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The `volley` binary [default: beside this one].
    #[arg(long)]
    pub volley: Option<PathBuf>,
    /// Directory for results.md and results.json.
    #[arg(long, default_value = "chaos-out")]
    pub out: PathBuf,
}

/// Connects a warm cell makes first, uncounted.
const WARM_UP: usize = 5;

/// One cell's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub kind: &'static str,
    pub servers: usize,
    pub loss_pct: f64,
    pub connects: usize,
    /// Sessions (and, warm, their 10-datagram exchange) within the deadline.
    pub ok: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Connects whose session went to a server other than one of the relays'.
    pub misrouted: usize,
    /// Cold connects that failed: their index, how long the process ran (ms), its exit status
    /// and the last line it wrote to stderr.
    pub failed: Vec<(usize, f64, String, String)>,
}

/// One failure round.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub case: &'static str,
    pub round: usize,
    /// From the fault to the first echo after it, ms; None if echoes never resumed (10 s).
    pub resumed_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Results {
    cells: Vec<Cell>,
    failures: Vec<Failure>,
}

/// A `volley serve` (or `volley proxy`) process, killed when dropped.
pub(crate) struct ServeProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    /// Its metrics endpoint, when it was started with `--metrics`.
    pub(crate) metrics: Option<SocketAddr>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(volley: &Path, key: &Path, addr: SocketAddr) -> anyhow::Result<ServeProcess> {
    let mut args = vec![
        "serve".into(),
        "--listen".into(),
        addr.to_string(),
        "--key".into(),
    ];
    args.push(key.display().to_string());
    spawn_volley(volley, &args, addr)
}

/// Runs `volley ARGS…` and waits for its start-up lines: the one saying it listens and, when
/// `--metrics` is among the arguments, the one naming the metrics address.
pub(crate) fn spawn_volley(
    volley: &Path,
    args: &[String],
    addr: SocketAddr,
) -> anyhow::Result<ServeProcess> {
    let mut child = Command::new(volley)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", volley.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let want_metrics = args.iter().any(|a| a == "--metrics");
    let (mut listening, mut metrics) = (false, None);
    while !listening || (want_metrics && metrics.is_none()) {
        let Some(line) = lines.next().transpose()? else {
            bail!("volley {} on {addr} did not start", args.join(" "));
        };
        if line.contains("listening on") || line.contains(" → ") {
            listening = true;
        }
        if let Some(rest) = line.split("metrics at http://").nth(1) {
            metrics = rest.trim_end_matches("/metrics").parse().ok();
        }
    }
    // Keep reading so that its load lines never fill the pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(ServeProcess {
        child,
        addr,
        metrics,
    })
}

/// The `volley` binary: `given`, or the one beside this executable; it must exist.
pub(crate) fn volley_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let volley = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("volley"),
    };
    anyhow::ensure!(
        volley.exists(),
        "{} not found: build it first (cargo build --release -p volley-cli) or pass --volley",
        volley.display()
    );
    Ok(volley)
}

/// Writes `md` to `out/results.md` and `results` to `out/results.json`, and prints `md`.
pub(crate) fn write_results(out: &Path, md: &str, results: &impl Serialize) -> anyhow::Result<()> {
    std::fs::write(out.join("results.md"), md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    print!("{md}");
    Ok(())
}

/// The public key of the secret key file `file`, which `volley keygen` writes first if it is
/// missing.
pub(crate) fn keygen(volley: &Path, file: &Path) -> anyhow::Result<PublicKey> {
    if !file.exists() {
        let out = Command::new(volley)
            .args(["keygen", "--out"])
            .arg(file)
            .output()?;
        anyhow::ensure!(out.status.success(), "keygen failed");
    }
    let out = Command::new(volley).arg("pubkey").arg(file).output()?;
    PublicKey::from_hex(String::from_utf8_lossy(&out.stdout).trim())
        .map_err(|e| anyhow::anyhow!("pubkey: {e}"))
}

/// Runs the measurement and writes `results.md` and `results.json` into `args.out`.
pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let volley = volley_binary(args.volley.as_deref())?;
    std::fs::create_dir_all(&args.out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = rt.block_on(measure(&args, &volley))?;
    write_results(&args.out, &report(&args, &results), &results)
}

struct Fleet {
    servers: Vec<ServeProcess>,
    relays: Vec<Relay>,
    key_file: PathBuf,
    public: PublicKey,
}

/// A free loopback UDP port (bound and released: a restarted server reuses it).
pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

async fn fleet(args: &ChaosArgs, volley: &Path, n: usize) -> anyhow::Result<Fleet> {
    let key_file = args.out.join("server.key");
    let public = keygen(volley, &key_file)?;
    let mut servers = Vec::new();
    let mut relays = Vec::new();
    for i in 0..n {
        let s = spawn_serve(volley, &key_file, free_port()?)?;
        relays.push(relay::start(s.addr, args.seed.wrapping_add(i as u64)).await?);
        servers.push(s);
    }
    Ok(Fleet {
        servers,
        relays,
        key_file,
        public,
    })
}

fn netem(args: &ChaosArgs, loss_pct: f64) -> Netem {
    Netem {
        delay: Duration::from_secs_f64(args.delay_ms / 1e3),
        jitter: Duration::from_secs_f64(args.jitter_ms / 1e3),
        loss: loss_pct / 100.0,
        duplicate: args.duplicate / 100.0,
    }
}

async fn measure(args: &ChaosArgs, volley: &Path) -> anyhow::Result<Results> {
    let mut cells = Vec::new();
    for &n in &args.servers {
        let fleet = fleet(args, volley, n).await?;
        let pool: Vec<SocketAddr> = fleet.relays.iter().map(|r| r.addr).collect();
        let client = Client::new(ClientConfig::new(vec![fleet.public]));
        for &loss in &args.loss {
            for r in &fleet.relays {
                r.control.set(netem(args, loss));
            }
            let cold = cold_cell(args, volley, &fleet, &pool, loss).await?;
            eprintln!(
                "{n} server(s), loss {loss}%: cold {}/{} p50 {:.1} p99 {:.1} ms",
                cold.ok, cold.connects, cold.p50_ms, cold.p99_ms
            );
            cells.push(cold);
            let warm = warm_cell(args, &client, &fleet, &pool, loss).await?;
            eprintln!(
                "{n} server(s), loss {loss}%: warm {}/{} p50 {:.1} p99 {:.1} ms",
                warm.ok, warm.connects, warm.p50_ms, warm.p99_ms
            );
            cells.push(warm);
        }
    }
    let failures = if args.rounds > 0 {
        failures(args, volley).await?
    } else {
        Vec::new()
    };
    Ok(Results { cells, failures })
}

async fn cold_cell(
    args: &ChaosArgs,
    volley: &Path,
    fleet: &Fleet,
    pool: &[SocketAddr],
    loss: f64,
) -> anyhow::Result<Cell> {
    let mut times = Vec::new();
    let mut ok = 0;
    let mut failed = Vec::new();
    let key = fleet.public.to_hex();
    let deadline = format!("{}", args.deadline);
    for i in 0..args.connects {
        let mut cmd = tokio::process::Command::new(volley);
        cmd.args([
            "connect",
            "--server-key",
            &key,
            "--timeout",
            &deadline,
            "--send",
            &format!("hello {i}"),
        ])
        .env("RUST_LOG", "error");
        for a in pool {
            cmd.arg(a.to_string());
        }
        let started = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs_f64(args.deadline + 5.0), cmd.output())
            .await
            .context("volley connect hung past its deadline")??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let connect_ms = stdout
            .lines()
            .find_map(|l| l.strip_prefix("connect:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        if out.status.success() && stdout.contains("reply:") {
            ok += 1;
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            let f = (
                i,
                started.elapsed().as_secs_f64() * 1e3,
                out.status.to_string(),
                last.unwrap_or_default().to_string(),
            );
            eprintln!(
                "cold connect {} failed after {:.0} ms ({}): {}",
                f.0, f.1, f.2, f.3
            );
            failed.push(f);
        }
        if let Some(ms) = connect_ms {
            times.push(ms);
        }
    }
    let mut c = cell(
        "cold",
        fleet.relays.len(),
        loss,
        args.connects,
        ok,
        times,
        0,
    );
    c.failed = failed;
    Ok(c)
}

fn cell(
    kind: &'static str,
    servers: usize,
    loss: f64,
    connects: usize,
    ok: usize,
    mut times: Vec<f64>,
    misrouted: usize,
) -> Cell {
    times.sort_by(f64::total_cmp);
    Cell {
        kind,
        servers,
        loss_pct: loss,
        connects,
        ok,
        p50_ms: quantile_sorted(&times, 0.5),
        p90_ms: quantile_sorted(&times, 0.9),
        p99_ms: quantile_sorted(&times, 0.99),
        max_ms: times.last().copied().unwrap_or(f64::NAN),
        misrouted,
        failed: Vec::new(),
    }
}

/// Sends `text` and waits for its echo, resending at RTT-scaled intervals until `deadline`.
pub(crate) async fn exchange(
    session: &mut volley::Session,
    text: &[u8],
    deadline: Instant,
) -> bool {
    let rtt = session
        .report()
        .and_then(|r| r.handshake_time)
        .unwrap_or(Duration::from_millis(50));
    // A few round trips, doubling to at most 250 ms: a lost datagram is not congestion.
    let mut wait = (rtt * 3).clamp(Duration::from_millis(30), Duration::from_millis(250));
    while Instant::now() < deadline {
        if session.send(text).await.is_err() {
            return false;
        }
        let until = (Instant::now() + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(until.into(), session.recv()).await {
                Ok(Ok(d)) if d.as_ref() == text => return true,
                Ok(Ok(_)) => continue, // an echo of an earlier try
                Ok(Err(_)) => return false,
                Err(_) => break,
            }
        }
        wait = (wait * 2).min(Duration::from_millis(250));
    }
    false
}

async fn warm_cell(
    args: &ChaosArgs,
    client: &Client,
    fleet: &Fleet,
    pool: &[SocketAddr],
    loss: f64,
) -> anyhow::Result<Cell> {
    // Warm: the client has measured this path (the cells before, and these connects, which are
    // not counted) — a warm client's figures, not its first connect's cold-start timers.
    for _ in 0..WARM_UP {
        let deadline = Instant::now() + Duration::from_secs_f64(args.deadline);
        if let Ok(Ok(s)) = tokio::time::timeout_at(deadline.into(), client.connect(pool)).await {
            s.close();
        }
    }
    let mut times = Vec::new();
    let mut ok = 0;
    let mut misrouted = 0;
    for i in 0..args.connects {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.deadline);
        let mut session = match tokio::time::timeout_at(deadline.into(), client.connect(pool)).await
        {
            Ok(Ok(s)) => s,
            other => {
                tracing::info!(i, outcome = ?other.map(|r| r.map(|_| ())), "warm connect failed");
                continue;
            }
        };
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if !pool.contains(&session.remote()) {
            misrouted += 1;
        }
        let mut all = true;
        for j in 0..10 {
            if !exchange(&mut session, format!("c{i} d{j}").as_bytes(), deadline).await {
                tracing::info!(
                    i,
                    j,
                    closed = ?session.close_reason(),
                    elapsed = ?start.elapsed(),
                    "warm exchange failed"
                );
                all = false;
                break;
            }
        }
        if all {
            ok += 1;
        }
        session.close();
    }
    Ok(cell(
        "warm",
        fleet.relays.len(),
        loss,
        args.connects,
        ok,
        times,
        misrouted,
    ))
}

/// The failure cases: kill -9, graceful stop, partition; 3 servers, clean 10 ms path.
async fn failures(args: &ChaosArgs, volley: &Path) -> anyhow::Result<Vec<Failure>> {
    let mut fleet = fleet(args, volley, 3).await?;
    for r in &fleet.relays {
        r.control.set(netem(args, 0.0));
    }
    let pool: Vec<SocketAddr> = fleet.relays.iter().map(|r| r.addr).collect();
    // One session through every round: it fails over once per fault, more than the default
    // 8 times a connection may.
    let mut config = ClientConfig::new(vec![fleet.public]);
    config.max_failovers = 1_000;
    let client = Client::new(config);
    let session = client.connect(&pool).await?;
    // A sender every 50 ms and a receiver noting when each echo came.
    let echoes: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let session = Arc::new(tokio::sync::Mutex::new(session));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sender = {
        let session = Arc::clone(&session);
        let echoes = Arc::clone(&echoes);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                {
                    let s = session.lock().await;
                    let _ = s.send(format!("tick {n}").as_bytes()).await;
                    n += 1;
                    // Collect what came back since, without blocking the next tick.
                    let until = Instant::now() + Duration::from_millis(50);
                    while let Ok(Ok(_)) = tokio::time::timeout_at(until.into(), s.recv()).await {
                        echoes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Instant::now());
                    }
                }
                if *stop.borrow_and_update() {
                    break;
                }
            }
        })
    };
    let serving = |s: &volley::Session| s.remote();
    let mut out = Vec::new();
    for case in ["kill -9", "graceful (SIGTERM)", "partition (3 s)"] {
        for round in 0..args.rounds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let relay_addr = serving(&*session.lock().await);
            let i = pool
                .iter()
                .position(|a| *a == relay_addr)
                .context("serving relay")?;
            let at = Instant::now();
            match case {
                "kill -9" => {
                    let _ = fleet.servers[i].child.kill();
                }
                "graceful (SIGTERM)" => {
                    let pid = nix::unistd::Pid::from_raw(fleet.servers[i].child.id() as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
                _ => fleet.relays[i]
                    .control
                    .blackhole
                    .store(true, Ordering::Relaxed),
            }
            // Wait for the first echo after the fault (at most 10 s).
            let mut resumed = None;
            let give_up = at + Duration::from_secs(10);
            while Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let first = echoes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .copied()
                    .find(|t| *t > at);
                if let Some(t) = first {
                    resumed = Some((t - at).as_secs_f64() * 1e3);
                    break;
                }
            }
            eprintln!("{case} round {round}: resumed after {resumed:?} ms");
            out.push(Failure {
                case,
                round,
                resumed_ms: resumed,
            });
            // Bring the server back as it was.
            match case {
                "partition (3 s)" => {
                    let left =
                        (at + Duration::from_secs(3)).saturating_duration_since(Instant::now());
                    tokio::time::sleep(left).await;
                    fleet.relays[i]
                        .control
                        .blackhole
                        .store(false, Ordering::Relaxed);
                }
                _ => {
                    let addr = fleet.servers[i].addr;
                    let _ = fleet.servers[i].child.wait();
                    fleet.servers[i] = spawn_serve(volley, &fleet.key_file, addr)?;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = sender.await;
    Ok(out)
}

fn report(args: &ChaosArgs, r: &Results) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# volley-lab chaos\n\nRelay per server: {} ms one way (+0–{} ms jitter), {} % duplication, loss each way as below; deadline {} s per connect (and its exchange); {} connects per cell; seed {}.\n\n",
        args.delay_ms, args.jitter_ms, args.duplicate, args.deadline, args.connects, args.seed
    ));
    s.push_str("## Connects\n\ncold: a fresh `volley connect --send` process each (success = exit 0 with the reply); warm: one library client for the whole cell (success = session and 10 echoes). Times: race + handshake, ms.\n\n| servers | loss | kind | within deadline | p50 | p90 | p99 | max | misrouted |\n|---|---|---|---|---|---|---|---|---|\n");
    for c in &r.cells {
        s.push_str(&format!(
            "| {} | {} % | {} | {}/{} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
            c.servers,
            c.loss_pct,
            c.kind,
            c.ok,
            c.connects,
            c.p50_ms,
            c.p90_ms,
            c.p99_ms,
            c.max_ms,
            c.misrouted
        ));
    }
    let failed: Vec<_> = r
        .cells
        .iter()
        .flat_map(|c| c.failed.iter().map(move |f| (c, f)))
        .collect();
    if !failed.is_empty() {
        s.push_str("\nCold connects that failed (servers, loss, index, how long the process ran, exit, its last line):\n\n");
        for (c, (i, ms, status, line)) in failed {
            s.push_str(&format!(
                "- {} server(s), {} %: #{i} after {ms:.0} ms, {status}: `{line}`\n",
                c.servers, c.loss_pct
            ));
        }
    }
    if r.failures.is_empty() {
        return s;
    }
    s.push_str("\n## Failures (3 servers, clean path, a session sending every 50 ms)\n\nFrom the fault to the first echo after it.\n\n| case | rounds | resumed: median | max | never (10 s) |\n|---|---|---|---|---|\n");
    for case in ["kill -9", "graceful (SIGTERM)", "partition (3 s)"] {
        let mut v: Vec<f64> = r
            .failures
            .iter()
            .filter(|f| f.case == case)
            .filter_map(|f| f.resumed_ms)
            .collect();
        let never = r
            .failures
            .iter()
            .filter(|f| f.case == case && f.resumed_ms.is_none())
            .count();
        v.sort_by(f64::total_cmp);
        s.push_str(&format!(
            "| {case} | {} | {:.0} ms | {:.0} ms | {never} |\n",
            v.len() + never,
            quantile_sorted(&v, 0.5),
            v.last().copied().unwrap_or(f64::NAN)
        ));
    }
    s
}
