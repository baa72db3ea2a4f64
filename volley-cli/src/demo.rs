//! `volley demo`: the same uneven fleet on loopback, run once per answer policy, with clients
//! racing it; a table shows where the sessions went and what connecting cost.
//!
//! Each server has the same capacity and carries a different background load (requests in
//! flight, held as [`volley::LoadGuard`]s). Clients connect, exchange a datagram, and keep their
//! session a short random time, so their own sessions add load as the run goes. Every column
//! starts from a fresh fleet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use volley::{
    AnswerPolicy, Client, ClientConfig, SelectionPolicy, Server, ServerConfig, ServerStats,
    StaticKeypair,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Servers in the fleet.
    #[arg(long, default_value_t = 5)]
    servers: usize,
    /// Capacity (requests in flight) of each server.
    #[arg(long, default_value_t = 16)]
    capacity: u32,
    /// Clients that race each fleet.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Clients racing at the same time in the first table (each keeps its session while it
    /// holds it); the second table runs more than the fleet's free slots.
    #[arg(long, default_value_t = 12)]
    concurrency: usize,
    /// Mean time a client keeps its session, in milliseconds (uniform from half to 1.5×).
    #[arg(long, default_value_t = 30)]
    hold_ms: u64,
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
    /// Utilisation the winning offer's hint reported.
    utilisation: Option<f64>,
    echoed: bool,
}

/// What one run produced.
struct RunResult {
    wins: Vec<usize>,
    connects: Vec<f64>,
    utilisation: Vec<f64>,
    failed: usize,
    echo_lost: usize,
    stats: Vec<ServerStats>,
}

impl RunResult {
    fn established(&self) -> usize {
        self.connects.len()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let mut v = self.connects.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let idx = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx]
    }

    fn sum(&self, f: impl Fn(&ServerStats) -> u64) -> u64 {
        self.stats.iter().map(f).sum()
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.servers >= 2 && args.servers <= 64,
        "--servers must be 2..=64"
    );
    anyhow::ensure!(
        (1..=100_000).contains(&args.capacity),
        "--capacity must be 1..=100000"
    );
    anyhow::ensure!(
        args.concurrency >= 1 && args.clients >= 1,
        "--clients and --concurrency must be at least 1"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.hold_ms),
        "--hold-ms must be 1..=10000"
    );
    let started = Instant::now();
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    // Server i carries i/(n-1) of its capacity, so the first is idle and the last is full.
    let n = args.servers;
    let background: Vec<u32> = (0..n)
        .map(|i| (args.capacity as usize * i / (n - 1)) as u32)
        .collect();
    let free: u32 = background.iter().map(|b| args.capacity - b).sum();
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
    println!(
        "volley demo: {n} servers on loopback, capacity {} each, background load {} \
         (requests in flight, {free} slots free).",
        args.capacity,
        background
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join("/"),
    );
    println!(
        "Each column: a fresh fleet answering by that policy; {} clients race it, each keeping \
         its session {}–{} ms.\nClients take the earliest offer (* window: by load hint).",
        args.clients,
        args.hold_ms / 2,
        args.hold_ms * 3 / 2
    );
    let labels: Vec<&str> = scenarios.iter().map(|s| s.label).collect();

    println!("\n{} clients at a time:", args.concurrency);
    let mut results = Vec::new();
    for s in &scenarios {
        results.push(run_fleet(&args, args.concurrency, &key, &background, s).await?);
    }
    print_row("sessions won", &labels);
    for (i, bg) in background.iter().enumerate() {
        let cells: Vec<String> = results
            .iter()
            .map(|r| {
                let share = 100.0 * r.wins[i] as f64 / r.established().max(1) as f64;
                format!("{share:.1} %")
            })
            .collect();
        print_row(&format!("  #{i}  load {bg:>3}/{}", args.capacity), &cells);
    }
    print_row(
        "chosen server's load",
        &results
            .iter()
            .map(|r| {
                let mean = r.utilisation.iter().sum::<f64>() / r.utilisation.len().max(1) as f64;
                format!("{:.0} %", 100.0 * mean)
            })
            .collect::<Vec<_>>(),
    );
    print_costs(&results);

    // More clients than free slots: the fleet is full at times, and what a full server does
    // with a probe (withhold it, or hold it for the next free slot) decides the tail.
    let saturated = (free as usize * 3 / 2).max(args.concurrency + 1);
    println!("\n{saturated} clients at a time (more than the {free} free slots):");
    let mut results = Vec::new();
    for s in scenarios.iter().take(3) {
        results.push(run_fleet(&args, saturated, &key, &background, s).await?);
    }
    print_row("", &labels[..3]);
    print_costs(&results);

    let echo_lost: usize = results.iter().map(|r| r.echo_lost).sum();
    println!();
    println!(
        "chosen server's load: the mean utilisation in the winning offers' hints (sessions, \
         application load and offers outstanding, over capacity)."
    );
    println!(
        "* window: immediate servers; clients collect offers for {:.0} ms after the first and \
         prefer a cold (lightly loaded) one by the hints.",
        volley_proto::client::DEFAULT_WINDOW.as_secs_f64() * 1e3
    );
    println!(
        "Paced servers answer later the more they carry, so the earliest offer comes from the \
         least loaded;\nimmediate and gated servers answer at once while they have a free slot, \
         so wins spread until servers fill.\nWhen every slot is taken, immediate and paced \
         servers withhold (the client re-probes after 250 ms), while\ngated servers hold the \
         probe and answer as a slot frees (held probes of the always-full #{} expire after {} ms).",
        n - 1,
        volley_proto::server::answer::DEFAULT_GATE_MAX_HOLD.as_millis()
    );
    if echo_lost > 0 {
        println!("{echo_lost} sessions got no echo within 1 s.");
    }
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Connect latency, failures and what the servers did with the probes.
fn print_costs(results: &[RunResult]) {
    let row = |label: &str, f: &dyn Fn(&RunResult) -> String| {
        let cells: Vec<String> = results.iter().map(f).collect();
        print_row(label, &cells);
    };
    row("connect p50", &|r| {
        format!("{:.2} ms", r.percentile_ms(0.50))
    });
    row("connect p99", &|r| {
        format!("{:.2} ms", r.percentile_ms(0.99))
    });
    row("failed", &|r| r.failed.to_string());
    row("probes withheld (full)", &|r| {
        r.sum(|s| s.probes_withheld_full).to_string()
    });
    row("probes held", &|r| r.sum(|s| s.probes_held).to_string());
    row("held, then dropped", &|r| {
        r.sum(|s| s.probes_dropped_hold_expired + s.probes_dropped_queue_full)
            .to_string()
    });
    row("INIT refused (full)", &|r| {
        r.sum(|s| s.init_refused_full).to_string()
    });
}

fn print_row(label: &str, cells: &[impl AsRef<str>]) {
    let mut line = format!("{label:<24}");
    for c in cells {
        line.push_str(&format!(" {:>10}", c.as_ref()));
    }
    println!("{}", line.trim_end());
}

/// Binds a fleet answering by `scenario`, loads it, races `args.clients` clients against it,
/// stops it, and returns what happened.
async fn run_fleet(
    args: &Args,
    concurrency: usize,
    key: &StaticKeypair,
    background: &[u32],
    scenario: &Scenario,
) -> anyhow::Result<RunResult> {
    let mut addrs = Vec::new();
    let mut guards = Vec::new();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let (stats_tx, mut stats_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, &load) in background.iter().enumerate() {
        let mut cfg = ServerConfig::new(key.clone());
        cfg.capacity = Some(args.capacity);
        cfg.answer = scenario.answer;
        // Every demo client shares 127.0.0.1, so the default per-source limit on session
        // initiations (sized for one real client address) would throttle the demo itself.
        cfg.admission.inits_per_source_per_sec = 100_000;
        cfg.admission.inits_per_source_burst = 100_000;
        let server = Server::bind("127.0.0.1:0".parse()?, cfg).await?;
        addrs.push(server.local_addr());
        let handle = server.handle();
        guards.extend((0..load).map(|_| handle.load_guard()));
        // Wait until the driver has applied the background load before anyone races.
        let applied = Instant::now();
        while handle.load().app != load {
            anyhow::ensure!(
                applied.elapsed() < Duration::from_secs(5),
                "server {i} did not apply its load"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stats_tx = stats_tx.clone();
        stops.push(stop_tx);
        tasks.push(tokio::spawn(volley::echo::serve_with(
            server,
            async {
                let _ = stop_rx.await;
            },
            move |s| {
                let _ = stats_tx.send((i, s));
            },
        )));
    }
    drop(stats_tx);

    let mut config = ClientConfig::new(vec![key.public()]);
    config.policy = scenario.policy;
    let client = Client::new(config);
    let next = Arc::new(AtomicUsize::new(0));
    let hold = Duration::from_millis(args.hold_ms);
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(args.clients) {
        let (client, pool, next, clients) =
            (client.clone(), addrs.clone(), next.clone(), args.clients);
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut outcomes = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < clients {
                let t = Instant::now();
                let Ok(mut s) = client.connect(&pool).await else {
                    outcomes.push(None);
                    continue;
                };
                let connect = t.elapsed();
                let report = s.report().unwrap_or_default();
                let echoed = s.send(b"hello").await.is_ok()
                    && matches!(
                        tokio::time::timeout(Duration::from_secs(1), s.recv()).await,
                        Ok(Ok(_))
                    );
                tokio::time::sleep(hold.mul_f64(rng.gen_range(0.5..1.5))).await;
                s.close();
                outcomes.push(Some(Outcome {
                    server: s.remote(),
                    connect,
                    utilisation: report
                        .load
                        .filter(|l| l.capacity > 0)
                        .map(|l| f64::from(l.in_flight) / f64::from(l.capacity)),
                    echoed,
                }));
            }
            outcomes
        }));
    }
    let mut result = RunResult {
        wins: vec![0; addrs.len()],
        connects: Vec::new(),
        utilisation: Vec::new(),
        failed: 0,
        echo_lost: 0,
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
            result.utilisation.extend(o.utilisation);
            result.echo_lost += usize::from(!o.echoed);
        }
    }
    // Let the last CLOSEs land before the servers stop.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(guards);
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
