//! `volley demo`: an in-process fleet on loopback whose servers carry visibly different load,
//! many clients racing it, and a table of what happened.
//!
//! Load here is sessions held open by background clients. Each server has the same capacity;
//! a server at capacity withholds its offers, so new clients can only land on servers with room.
//! (Answer policies that turn partial load into answer time come with the next capability.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Servers in the fleet.
    #[arg(long, default_value_t = 5)]
    servers: usize,
    /// Capacity (sessions) of each server.
    #[arg(long, default_value_t = 16)]
    capacity: u32,
    /// Clients that race the fleet.
    #[arg(long, default_value_t = 300)]
    clients: usize,
    /// Clients racing at the same time.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
}

struct Outcome {
    server: SocketAddr,
    connect: Duration,
    offers: Vec<(SocketAddr, Duration)>,
    late: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.servers >= 2 && args.servers <= 64,
        "--servers must be 2..=64"
    );
    anyhow::ensure!(args.capacity >= 1, "--capacity must be at least 1");
    anyhow::ensure!(
        args.concurrency >= 1 && args.clients >= 1,
        "--clients and --concurrency must be at least 1"
    );
    let started = Instant::now();
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut servers = Vec::new();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..args.servers {
        let mut cfg = ServerConfig::new(key.clone());
        cfg.capacity = Some(args.capacity);
        // Every demo client shares 127.0.0.1, so the default per-source limit on session
        // initiations (20/s, sized for one real client address) would throttle the demo itself.
        cfg.admission.inits_per_source_per_sec = 100_000;
        cfg.admission.inits_per_source_burst = 100_000;
        let server = Server::bind("127.0.0.1:0".parse()?, cfg).await?;
        addrs.push(server.local_addr());
        servers.push(server);
    }
    // Background load: server i holds i/(n-1) of its capacity, so the last one is full.
    let n = args.servers;
    let background: Vec<u32> = (0..n)
        .map(|i| (args.capacity as usize * i / (n - 1)) as u32)
        .collect();
    let (stats_tx, mut stats_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, server) in servers.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stats_tx = stats_tx.clone();
        stops.push(tx);
        tasks.push(tokio::spawn(volley::echo::serve_with(
            server,
            async {
                let _ = rx.await;
            },
            move |s| {
                let _ = stats_tx.send((i, s));
            },
        )));
    }
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let mut held = Vec::new();
    for (i, &load) in background.iter().enumerate() {
        for _ in 0..load {
            held.push(client.connect(&addrs[i..=i]).await?);
        }
    }
    println!(
        "volley demo: {} servers on loopback, capacity {} each; {} clients race all of them, {} at a time.",
        n, args.capacity, args.clients, args.concurrency
    );
    println!(
        "Background load (sessions held open): {background:?} — a full server withholds its offers.\n"
    );

    let mut outcomes = Vec::with_capacity(args.clients);
    let mut failures = 0usize;
    let mut remaining = args.clients;
    while remaining > 0 {
        let wave = remaining.min(args.concurrency);
        remaining -= wave;
        let mut joins = Vec::new();
        for _ in 0..wave {
            let client = client.clone();
            let pool = addrs.clone();
            joins.push(tokio::spawn(async move {
                let t = Instant::now();
                let mut s = client.connect(&pool).await?;
                let connect = t.elapsed();
                s.send(b"hello").await?;
                let _ = tokio::time::timeout(Duration::from_secs(2), s.recv()).await;
                // Let stragglers' (voided) offers arrive so their answer times are measured.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let r = s.report().unwrap_or_default();
                s.close();
                Ok::<_, volley::Error>(Outcome {
                    server: s.remote(),
                    connect,
                    offers: r.offers,
                    late: r.late_offers,
                })
            }));
        }
        for j in joins {
            match j.await {
                Ok(Ok(o)) => outcomes.push(o),
                _ => failures += 1,
            }
        }
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for stop in stops {
        let _ = stop.send(());
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(stats_tx);
    let mut offers_sent = HashMap::new();
    while let Some((i, s)) = stats_rx.recv().await {
        offers_sent.insert(i, s);
    }

    println!(
        "{:<4} {:<17} {:>10} {:>11} {:>10} {:>13} {:>15} {:>12}",
        "#",
        "server",
        "background",
        "offers sent",
        "withheld",
        "sessions won",
        "mean answer",
        "INIT refused"
    );
    for (i, addr) in addrs.iter().enumerate() {
        let s = offers_sent.get(&i).copied().unwrap_or_default();
        let won = outcomes.iter().filter(|o| o.server == *addr).count();
        let times: Vec<f64> = outcomes
            .iter()
            .flat_map(|o| o.offers.iter())
            .filter(|(a, _)| a == addr)
            .map(|(_, t)| t.as_secs_f64() * 1e3)
            .collect();
        let mean = if times.is_empty() {
            "—".to_string()
        } else {
            format!("{:.3} ms", times.iter().sum::<f64>() / times.len() as f64)
        };
        println!(
            "{:<4} {:<17} {:>10} {:>11} {:>10} {:>13} {:>15} {:>12}",
            i,
            addr.to_string(),
            format!("{}/{}", background[i], args.capacity),
            s.offers_sent,
            s.probes_withheld_full,
            won,
            mean,
            s.init_refused_full
        );
    }
    let mut connects: Vec<f64> = outcomes
        .iter()
        .map(|o| o.connect.as_secs_f64() * 1e3)
        .collect();
    connects.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if connects.is_empty() {
            return f64::NAN;
        }
        let idx = ((p * connects.len() as f64).ceil() as usize).clamp(1, connects.len()) - 1;
        connects[idx]
    };
    let late: u64 = outcomes.iter().map(|o| o.late).sum();
    println!();
    println!(
        "sessions: {} established, {} failed; connect (race + handshake) p50 {:.3} ms, p99 {:.3} ms",
        outcomes.len(),
        failures,
        pct(0.50),
        pct(0.99)
    );
    println!("late offers voided: {late} (every loser's offer arrives after its race is decided)");
    let refused: u64 = offers_sent.values().map(|s| s.init_refused_full).sum();
    if refused > 0 {
        println!(
            "INIT refused: {refused} — a server filled up between its offer and the client's INIT; it \
             answered with a REDIRECT and the client raced the rest of the pool again at once."
        );
    }
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
