//! The failure cases on 3 servers, clean path: one session sending every 50 ms while its server
//! is killed (`kill -9`), stopped gracefully (SIGTERM) or partitioned (its relay blackholed for
//! 3 s); the time until echoes resume.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use volley::{Client, ClientConfig};

use super::{ChaosArgs, fleet, netem};
use crate::harness::process::VolleyProcess;

/// The failure cases, in the order they run and are reported.
pub(super) const CASES: [&str; 3] = ["kill -9", "graceful (SIGTERM)", "partition (3 s)"];

/// One failure round.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub case: &'static str,
    pub round: usize,
    /// From the fault to the first echo after it, ms; None if echoes never resumed (10 s).
    pub resumed_ms: Option<f64>,
}

/// The failure cases: kill -9, graceful stop, partition; 3 servers, clean 10 ms path.
pub(super) async fn failures(args: &ChaosArgs, volley: &Path) -> anyhow::Result<Vec<Failure>> {
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
    // Shared by the sender task and this loop (which reads the serving address): a session's
    // methods all take `&self`.
    let session = Arc::new(session);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sender = {
        let session = Arc::clone(&session);
        let echoes = Arc::clone(&echoes);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let _ = session.send(format!("tick {n}").as_bytes()).await;
                n += 1;
                // Collect what came back since, without blocking the next tick.
                let until = Instant::now() + Duration::from_millis(50);
                while let Ok(Ok(_)) = tokio::time::timeout_at(until.into(), session.recv()).await {
                    echoes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now());
                }
                if *stop.borrow_and_update() {
                    break;
                }
            }
        })
    };
    let mut out = Vec::new();
    for case in CASES {
        for round in 0..args.rounds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let relay_addr = session.remote();
            let i = pool
                .iter()
                .position(|a| *a == relay_addr)
                .context("serving relay")?;
            let at = Instant::now();
            match case {
                "kill -9" => fleet.servers[i].kill(),
                "graceful (SIGTERM)" => fleet.servers[i].terminate(),
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
                    fleet.servers[i] = VolleyProcess::serve(volley, &fleet.key_file, addr, false)?;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = sender.await;
    Ok(out)
}
