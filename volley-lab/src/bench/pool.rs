//! `volley-lab bench pool` (docs/BENCHMARKS.md §7, issue 25's overhead goal): what a request
//! costs the client through a [`volley::Pool`] against the same requests on one session.
//!
//! Three volley servers run on one thread pinned to one CPU, each answering every request with
//! its body (`handler::serve`). The client runs on one thread pinned to the other CPU (a
//! current-thread runtime: every task of the client, its endpoint's included, runs there). Each
//! repetition runs two cases back to back, in alternating order: `session` sends the requests on
//! one session ([`volley::Session::request`]), `pool` through a pool of `members` sessions over
//! the three servers ([`volley::Pool::request`]). Both are open loop at the same fixed rate, one
//! task per request as a tower user would have, so that neither side saturates its CPU and the
//! figure is CPU per request, not a rate. The client thread's CPU (getrusage) over the measured
//! period, divided by the replies in it, is the figure; the server thread's is shown beside it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use volley::{Bytes, Client, ClientConfig, Pool, PoolConfig, Server, ServerConfig, StaticKeypair};

use crate::harness::cpu::thread_cpu_us;
use crate::harness::process::pin_to;
use crate::harness::results;
use crate::harness::stats::Spread;

/// Arguments of `volley-lab bench pool`.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolBenchArgs {
    /// Seconds measured per case, after half a second of warm-up.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Repetitions; within each, both cases run once, back to back.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Requests per second (open loop), in both cases.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Bytes of each request (its reply is as long).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// The pool's members (k).
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// The CPU the servers' thread is pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// The CPU the client's thread is pinned to.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Directory for results.md and results.json.
    #[arg(long, default_value = "bench-pool")]
    pub out: PathBuf,
}

/// A request's reply, however it was sent.
type Reply = Pin<Box<dyn Future<Output = Result<Bytes, volley::Error>> + Send>>;

/// How a case sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// On one session.
    Session,
    /// Through a pool.
    Pool,
}

/// One case of one repetition.
#[derive(Debug, Clone, Serialize)]
pub struct PoolCase {
    pub case: Case,
    pub rep: usize,
    /// Requests sent and replies received in the measured period.
    pub sent: u64,
    pub replies: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Client thread CPU over the measured period, in cores, and per reply in µs.
    pub client_cpu: f64,
    pub client_cpu_us_per_request: f64,
    /// The servers' thread CPU over the measured period, in cores, and per reply in µs.
    pub server_cpu: f64,
    pub server_cpu_us_per_request: f64,
}

/// Runs the benchmark and writes its report.
pub fn run(args: PoolBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0 && args.seconds > 0.0, "a rate and a period");
    results::out_dir(&args.out)?;
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let public = key.public();
    let (addr_tx, addr_rx) = mpsc::channel::<Vec<SocketAddr>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_cpu_us = Arc::new(AtomicU64::new(0));
    let server_cpu = args.server_cpu;
    let cpu_reading = Arc::clone(&server_cpu_us);
    let servers = thread::spawn(move || -> anyhow::Result<()> {
        pin_to(server_cpu);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut addrs = Vec::new();
            for _ in 0..3 {
                let server =
                    Server::bind("127.0.0.1:0".parse()?, ServerConfig::new(key.clone())).await?;
                addrs.push(server.local_addr());
                let echo = |call: volley::handler::Call| async move { Some(call.data) };
                tokio::spawn(volley::handler::serve(server, echo, std::future::pending()));
            }
            addr_tx.send(addrs)?;
            // Publish this thread's CPU every 10 ms for the client's readings.
            let publish = async {
                loop {
                    cpu_reading.store(thread_cpu_us(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                _ = publish => {}
                _ = stop_rx => {}
            }
            anyhow::Ok(())
        })
    });
    let addrs = addr_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the servers did not start")?;
    pin_to(args.client_cpu);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut cases = Vec::new();
    for rep in 0..args.reps {
        let order = if rep % 2 == 0 {
            [Case::Session, Case::Pool]
        } else {
            [Case::Pool, Case::Session]
        };
        for case in order {
            let r = rt.block_on(run_case(case, rep, &args, public, &addrs, &server_cpu_us))?;
            eprintln!(
                "rep {rep} {:<8} {} replies ({} failed): client {:.2} cores, {:.2} µs/request; servers {:.2} cores, {:.2} µs/request",
                format!("{:?}", r.case),
                r.replies,
                r.failed,
                r.client_cpu,
                r.client_cpu_us_per_request,
                r.server_cpu,
                r.server_cpu_us_per_request
            );
            cases.push(r);
        }
    }
    let _ = stop_tx.send(());
    servers
        .join()
        .map_err(|_| anyhow::anyhow!("the servers' thread panicked"))??;
    let md = markdown(&args, &cases);
    results::publish(
        &args.out,
        &md,
        &serde_json::json!({
            "settings": {
                "seconds": args.seconds,
                "reps": args.reps,
                "rate": args.rate,
                "size": args.size,
                "members": args.members,
            },
            "cases": cases,
        }),
    )
}

async fn run_case(
    case: Case,
    rep: usize,
    args: &PoolBenchArgs,
    public: volley::PublicKey,
    addrs: &[SocketAddr],
    server_cpu_us: &AtomicU64,
) -> anyhow::Result<PoolCase> {
    let client = Client::new(ClientConfig::new(vec![public]));
    let send: Arc<dyn Fn(Bytes) -> Reply + Send + Sync> = match case {
        Case::Session => {
            let session = Arc::new(client.connect(&addrs[..1]).await?);
            Arc::new(move |body| Box::pin(session.request(body)))
        }
        Case::Pool => {
            let pool = Pool::connect(&client, addrs, PoolConfig::members(args.members)).await?;
            Arc::new(move |body| {
                let pool = pool.clone();
                Box::pin(async move { pool.request(body).await })
            })
        }
    };
    let body = Bytes::from(vec![0x5a; args.size]);
    let replies = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_millis(500);
    let period = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut sent_at_mark = 0u64;
    let mut mark: Option<(u64, u64, u64, u64)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if mark.is_none() && elapsed >= warmup {
            sent_at_mark = sent;
            mark = Some((
                thread_cpu_us(),
                server_cpu_us.load(Ordering::Relaxed),
                replies.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
            ));
        }
        if elapsed >= warmup + period {
            break;
        }
        // Catch up with the schedule: `rate` a second since the start.
        let due = (elapsed.as_secs_f64() * args.rate as f64) as u64;
        while sent < due {
            sent += 1;
            let reply = send(body.clone());
            let (replies, failed) = (Arc::clone(&replies), Arc::clone(&failed));
            tokio::spawn(async move {
                match reply.await {
                    Ok(_) => replies.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
    }
    let (cpu0, server0, replies0, failed0) =
        mark.ok_or_else(|| anyhow::anyhow!("the measured period never started"))?;
    let client_us = thread_cpu_us().saturating_sub(cpu0);
    let server_us = server_cpu_us
        .load(Ordering::Relaxed)
        .saturating_sub(server0);
    let wall = start.elapsed().saturating_sub(warmup).as_secs_f64();
    let n = replies.load(Ordering::Relaxed).saturating_sub(replies0);
    let failed_n = failed.load(Ordering::Relaxed).saturating_sub(failed0);
    drop(send);
    // Let the last replies and the CLOSEs go out before the next case.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per = |us: u64| us as f64 / n.max(1) as f64;
    Ok(PoolCase {
        case,
        rep,
        sent: sent - sent_at_mark,
        replies: n,
        failed: failed_n,
        client_cpu: client_us as f64 / 1e6 / wall,
        client_cpu_us_per_request: per(client_us),
        server_cpu: server_us as f64 / 1e6 / wall,
        server_cpu_us_per_request: per(server_us),
    })
}

fn markdown(args: &PoolBenchArgs, cases: &[PoolCase]) -> String {
    let of = |c: Case, f: &dyn Fn(&PoolCase) -> f64| {
        Spread::try_of(cases.iter().filter(|r| r.case == c).map(f))
    };
    let ratios: Vec<f64> = (0..args.reps)
        .filter_map(|rep| {
            let get = |c: Case| {
                cases
                    .iter()
                    .find(|r| r.rep == rep && r.case == c)
                    .map(|r| r.client_cpu_us_per_request)
            };
            Some(get(Case::Pool)? / get(Case::Session)?)
        })
        .collect();
    let ratio = Spread::try_of(ratios.iter().copied());
    let fmt = |s: Option<Spread>| {
        s.map_or("—".to_string(), |s| {
            format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max)
        })
    };
    let mut md = format!(
        "# volley-lab bench pool\n\n\
         {} requests/s of {} B, open loop, one task per request; {} repetitions of {} s (after 0.5 s of warm-up), \
         `session` and `pool` back to back in alternating order; a pool of {} members over 3 servers. \
         Client and servers on their own pinned CPUs. Figures: median (min–max) over the repetitions.\n\n",
        args.rate, args.size, args.reps, args.seconds, args.members
    );
    md.push_str("| case | replies/s | failed | client cores | client µs/request | server cores | server µs/request |\n|---|---|---|---|---|---|---|\n");
    for c in [Case::Session, Case::Pool] {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            match c {
                Case::Session => "session",
                Case::Pool => "pool",
            },
            fmt(of(c, &|r| r.replies as f64 / args.seconds)),
            fmt(of(c, &|r| r.failed as f64)),
            fmt(of(c, &|r| r.client_cpu)),
            fmt(of(c, &|r| r.client_cpu_us_per_request)),
            fmt(of(c, &|r| r.server_cpu)),
            fmt(of(c, &|r| r.server_cpu_us_per_request)),
        ));
    }
    md.push_str(&format!(
        "\n**Client CPU per request, pool ÷ session** (per repetition; goal ≤ 1.2): {}\n",
        fmt(ratio)
    ));
    md
}
