//! `volley demo`: an uneven fleet on loopback, run once per answer policy, with clients racing
//! it; a table shows where the requests went and what they cost end to end.
//!
//! Every server runs the same request handler: a request waits for one of the server's slots
//! (its capacity), then takes its work divided by the server's speed (a sleep, so that the demo
//! measures waiting and not the machine). The servers differ in speed and in background traffic
//! (requests from elsewhere, always in flight). Each client connects, sends one request with
//! exponential work, waits for the reply and closes. Every column starts from a fresh fleet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use volley::{
    AnswerPolicy, Client, ClientConfig, SelectionPolicy, Server, ServerConfig, ServerHandle,
    ServerStats, Session, StaticKeypair,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Requests each server serves at once (its slots).
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// Each server's speed (work per unit of time; 0.5 takes twice as long), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1,0.5,1,0.25")]
    speeds: Vec<f64>,
    /// Each server's background traffic: requests from elsewhere always in flight.
    #[arg(long, value_delimiter = ',', default_value = "0,6,0,3,0")]
    background: Vec<u32>,
    /// Mean work of one request at speed 1, in milliseconds (exponential).
    #[arg(long, default_value_t = 10.0)]
    work_ms: f64,
    /// Requests (one session each) per fleet.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Clients at a time in the first table; the second runs twice the fleet's slots.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

/// One column of the table: how the fleet answers and how clients choose.
struct Scenario {
    label: &'static str,
    answer: AnswerPolicy,
    policy: SelectionPolicy,
}

/// What one client saw.
struct Outcome {
    server: SocketAddr,
    connect: Duration,
    total: Duration,
    expected: Option<Duration>,
}

/// What one run produced.
struct RunResult {
    wins: Vec<usize>,
    connects: Vec<f64>,
    totals: Vec<f64>,
    expected: Vec<f64>,
    failed: usize,
    stats: Vec<ServerStats>,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

impl RunResult {
    fn sum(&self, f: impl Fn(&ServerStats) -> u64) -> u64 {
        self.stats.iter().map(f).sum()
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.speeds.len();
    anyhow::ensure!((2..=64).contains(&n), "--speeds must name 2 to 64 servers");
    anyhow::ensure!(
        args.background.len() == n,
        "--background must give one value per server ({n})"
    );
    anyhow::ensure!(
        args.speeds
            .iter()
            .all(|s| s.is_finite() && *s >= 0.01 && *s <= 100.0),
        "--speeds must be between 0.01 and 100"
    );
    anyhow::ensure!(
        args.background.iter().all(|b| *b <= 10_000),
        "--background must be at most 10000 per server"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.capacity),
        "--capacity must be 1..=10000"
    );
    anyhow::ensure!(
        args.work_ms.is_finite() && (0.1..=10_000.0).contains(&args.work_ms),
        "--work-ms must be between 0.1 and 10000"
    );
    anyhow::ensure!(
        args.concurrency >= 1 && args.clients >= 1 && args.clients <= 1_000_000,
        "--clients (up to 1000000) and --concurrency must be at least 1"
    );
    let started = Instant::now();
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let scenarios = [
        Scenario {
            label: "immediate",
            answer: AnswerPolicy::Immediate,
            policy: SelectionPolicy::Earliest,
        },
        Scenario {
            label: "paced",
            answer: AnswerPolicy::paced(),
            policy: SelectionPolicy::Earliest,
        },
        Scenario {
            label: "gated",
            answer: AnswerPolicy::gated(),
            policy: SelectionPolicy::Earliest,
        },
        Scenario {
            label: "window*",
            answer: AnswerPolicy::Immediate,
            policy: SelectionPolicy::window(),
        },
    ];
    let slots = args.capacity as usize * n;
    say!(
        "volley demo: {n} servers on loopback, {} slots each; work {:.0} ms on average at speed 1 \
         (exponential).",
        args.capacity,
        args.work_ms
    );
    say!(
        "Each column: a fresh fleet answering by that policy; {} clients each send one request \
         and wait for its reply.\nClients take the earliest offer (* window: immediate servers, \
         the offer with the shortest expected completion).",
        args.clients
    );
    let labels: Vec<&str> = scenarios.iter().map(|s| s.label).collect();

    say!("\n{} clients at a time:", args.concurrency);
    let mut results = Vec::new();
    for s in &scenarios {
        results.push(run_fleet(&args, args.concurrency, &key, s).await?);
    }
    print_row("requests served", &labels);
    for i in 0..n {
        let cells: Vec<String> = results
            .iter()
            .map(|r| {
                let done = r.wins.iter().sum::<usize>().max(1);
                format!("{:.1} %", 100.0 * r.wins[i] as f64 / done as f64)
            })
            .collect();
        print_row(
            &format!(
                "  #{i} speed {:.2} bg {:>2}",
                args.speeds[i], args.background[i]
            ),
            &cells,
        );
    }
    print_row(
        "chosen: expected (mean)",
        &results
            .iter()
            .map(|r| format!("{:.1} ms", mean(&r.expected)))
            .collect::<Vec<_>>(),
    );
    print_costs(&results);

    // More clients than slots: every server is busy, and a busy server answers late rather
    // than not at all, so requests queue at the servers instead of failing.
    let saturated = (2 * slots).max(args.concurrency + 1);
    say!("\n{saturated} clients at a time (twice the fleet's {slots} slots):");
    let mut results = Vec::new();
    for s in &scenarios {
        results.push(run_fleet(&args, saturated, &key, s).await?);
    }
    print_row("", &labels);
    print_costs(&results);

    say!();
    say!(
        "request: from the client's connect to its reply (the race, the handshake, the wait for \
         a slot and the work)."
    );
    say!(
        "chosen: expected: the expected completion time the winning offer's server announced \
         (its measured service time × its queue)."
    );
    say!(
        "Paced servers answer after 1/{} of their expected completion time, so the earliest \
         offer comes from the server expected to finish first: fast and lightly loaded;\n\
         immediate servers answer at once, so the earliest offer is loopback noise; gated \
         servers answer at once while a slot is free, so wins spread over the free servers \
         whatever their speed.",
        volley_proto::server::answer::DEFAULT_PACE_DIVISOR
    );
    say!("finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Latency, failures and what the servers did with the probes.
fn print_costs(results: &[RunResult]) {
    let row = |label: &str, f: &dyn Fn(&RunResult) -> String| {
        let cells: Vec<String> = results.iter().map(f).collect();
        print_row(label, &cells);
    };
    row("request p50", &|r| {
        format!("{:.1} ms", percentile(&r.totals, 0.50))
    });
    row("request p99", &|r| {
        format!("{:.1} ms", percentile(&r.totals, 0.99))
    });
    row("connect p50", &|r| {
        format!("{:.2} ms", percentile(&r.connects, 0.50))
    });
    row("connect p99", &|r| {
        format!("{:.2} ms", percentile(&r.connects, 0.99))
    });
    row("failed", &|r| r.failed.to_string());
    row("offers from busy servers", &|r| {
        r.sum(|s| s.offers_busy).to_string()
    });
    row("probes held", &|r| r.sum(|s| s.probes_held).to_string());
    row("probes not answered", &|r| {
        r.sum(|s| {
            s.probes_withheld_full + s.probes_dropped_hold_expired + s.probes_dropped_queue_full
        })
        .to_string()
    });
}

fn print_row(label: &str, cells: &[impl AsRef<str>]) {
    let mut line = format!("{label:<26}");
    for c in cells {
        line.push_str(&format!(" {:>10}", c.as_ref()));
    }
    say!("{}", line.trim_end());
}

/// A server's application: requests wait for one of its slots, then sleep their work divided by
/// its speed.
#[derive(Clone)]
struct App {
    slots: Arc<Semaphore>,
    speed: f64,
}

impl App {
    async fn work(&self, work: Duration) {
        // The semaphore is never closed while the app runs.
        let Ok(_permit) = self.slots.acquire().await else {
            return;
        };
        tokio::time::sleep(work.div_f64(self.speed)).await;
    }
}

/// Exponential work with mean `mean`.
fn draw(rng: &mut impl Rng, mean: Duration) -> Duration {
    let u: f64 = rng.r#gen();
    mean.mul_f64(-(1.0 - u).ln()).min(mean * 20)
}

/// Serves one session: each datagram is a request (counted by the server from its arrival,
/// `recv_request`) carrying its work in microseconds.
async fn serve_session(session: Session, app: App) {
    while let Ok(req) = session.recv_request().await {
        let us = req
            .data()
            .get(..4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        app.work(Duration::from_micros(u64::from(us))).await;
        if req.reply(&session, b"done").await.is_err() {
            break;
        }
    }
}

/// Background traffic: `n` requests always in flight at the server, each counted with a load
/// guard, so that the server measures its speed from them as from any request.
fn background(
    handle: ServerHandle,
    app: App,
    n: u32,
    mean: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (handle, app) = (handle.clone(), app.clone());
            tasks.spawn(async move {
                let mut rng = rand::rngs::StdRng::from_entropy();
                loop {
                    let guard = handle.load_guard();
                    app.work(draw(&mut rng, mean)).await;
                    drop(guard);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// Binds a fleet answering by `scenario`, warms it up (each server measures its speed on a few
/// requests), starts its background traffic, races `args.clients` clients against it, stops it,
/// and returns what happened.
async fn run_fleet(
    args: &Args,
    concurrency: usize,
    key: &StaticKeypair,
    scenario: &Scenario,
) -> anyhow::Result<RunResult> {
    let mean = Duration::from_secs_f64(args.work_ms / 1e3);
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut side = Vec::new();
    let (stats_tx, mut stats_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, &speed) in args.speeds.iter().enumerate() {
        let mut cfg = ServerConfig::new(key.clone());
        cfg.capacity = Some(args.capacity);
        cfg.answer = scenario.answer;
        // Every demo client shares 127.0.0.1, so the default per-source limit on session
        // initiations (sized for one real client address) would throttle the demo itself.
        cfg.admission.inits_per_source_per_sec = 100_000;
        cfg.admission.inits_per_source_burst = 100_000;
        let mut server = Server::bind("127.0.0.1:0".parse()?, cfg).await?;
        addrs.push(server.local_addr());
        let handle = server.handle();
        let app = App {
            slots: Arc::new(Semaphore::new(args.capacity as usize)),
            speed,
        };
        // Warm-up: a few requests teach the server its speed before anyone races it.
        let mut warm = tokio::task::JoinSet::new();
        for k in 0..(2 * args.capacity).min(32) {
            let (handle, app) = (handle.clone(), app.clone());
            let work = mean.mul_f64(0.5 + f64::from(k % 4) / 3.0);
            warm.spawn(async move {
                let guard = handle.load_guard();
                app.work(work).await;
                drop(guard);
            });
        }
        while warm.join_next().await.is_some() {}
        side.push(background(
            handle.clone(),
            app.clone(),
            args.background[i],
            mean,
        ));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stats_tx = stats_tx.clone();
        stops.push(stop_tx);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    s = server.accept() => {
                        let Some(s) = s else { break };
                        tokio::spawn(serve_session(s, app.clone()));
                    }
                    _ = &mut stop_rx => break,
                }
            }
            let _ = stats_tx.send((i, server.shutdown().await));
        }));
    }
    drop(stats_tx);
    // Let the background traffic settle into the servers' estimates.
    tokio::time::sleep(mean * 5).await;

    let mut config = ClientConfig::new(vec![key.public()]);
    config.policy = scenario.policy;
    let client = Client::new(config);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(args.clients) {
        let (client, pool, next, clients) =
            (client.clone(), addrs.clone(), next.clone(), args.clients);
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut outcomes = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < clients {
                let work = draw(&mut rng, mean);
                let t = Instant::now();
                let Ok(s) = client.connect(&pool).await else {
                    outcomes.push(None);
                    continue;
                };
                let connect = t.elapsed();
                let report = s.report().unwrap_or_default();
                let request = (work.as_micros().min(u128::from(u32::MAX)) as u32).to_be_bytes();
                let replied = s.send(&request).await.is_ok()
                    && matches!(
                        tokio::time::timeout(Duration::from_secs(5), s.recv()).await,
                        Ok(Ok(_))
                    );
                let total = t.elapsed();
                s.close();
                outcomes.push(replied.then(|| Outcome {
                    server: s.remote(),
                    connect,
                    total,
                    expected: report.load.and_then(|l| l.expected()),
                }));
            }
            outcomes
        }));
    }
    let mut result = RunResult {
        wins: vec![0; addrs.len()],
        connects: Vec::new(),
        totals: Vec::new(),
        expected: Vec::new(),
        failed: 0,
        stats: vec![ServerStats::default(); addrs.len()],
    };
    for w in workers {
        for outcome in w.await? {
            let Some(o) = outcome else {
                result.failed += 1;
                continue;
            };
            if let Some(i) = addrs.iter().position(|a| *a == o.server) {
                result.wins[i] += 1;
            }
            result.connects.push(o.connect.as_secs_f64() * 1e3);
            result.totals.push(o.total.as_secs_f64() * 1e3);
            result
                .expected
                .extend(o.expected.map(|e| e.as_secs_f64() * 1e3));
        }
    }
    for s in side {
        s.abort();
    }
    // Let the last CLOSEs land before the servers stop.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for stop in stops {
        let _ = stop.send(());
    }
    for t in tasks {
        let _ = t.await;
    }
    while let Some((i, s)) = stats_rx.recv().await {
        result.stats[i] = s;
    }
    Ok(result)
}
