//! The connect cells: `--connects` connects per fleet size and loss rate, cold (a fresh
//! `volley connect` process each) and warm (one library client), timed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use volley::Client;

use super::{ChaosArgs, Fleet};
use crate::harness::echo::exchange;
use crate::harness::stats::quantile;

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

pub(super) async fn cold_cell(
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
        p50_ms: quantile(&times, 0.5),
        p90_ms: quantile(&times, 0.9),
        p99_ms: quantile(&times, 0.99),
        max_ms: times.last().copied().unwrap_or(f64::NAN),
        misrouted,
        failed: Vec::new(),
    }
}

pub(super) async fn warm_cell(
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
