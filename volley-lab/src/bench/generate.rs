//! The generator side of a case: on a thread pinned to the generator's CPU, the load the case
//! names ([`load`], [`connect`]) against the server thread, marked at the start and the end of
//! the measured period, and the case's figures from those marks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use volley::PublicKey;

use super::load::{self, Phase, PortResult, Request};
use super::server::{Ctl, ServerMark, ServerThread, mark};
use super::{BenchArgs, CaseResult, connect};
use crate::harness::cpu::{self, Sample};
use crate::harness::process::pinned_runtime;

/// Runs one case against `server` on a generator thread pinned to `args.generator_cpu`.
pub(super) fn run_case(
    case: &str,
    rep: usize,
    server: &ServerThread,
    tls: Arc<connect::Tls>,
    args: &BenchArgs,
) -> anyhow::Result<CaseResult> {
    let case = case.to_string();
    let addrs = server.addrs.clone();
    let key = server.key;
    let ctl = server.ctl.clone();
    let args2 = args.clone();
    let handle = thread::Builder::new()
        .name("bench-generator".into())
        .spawn(move || -> anyhow::Result<CaseResult> {
            let rt = pinned_runtime(args2.generator_cpu)?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, generate(case, rep, addrs, key, tls, ctl, args2))
        })?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))?
}

/// Both sides' readings at one end of the measured period.
type Marks = (anyhow::Result<ServerMark>, Sample);

async fn generate(
    name: String,
    rep: usize,
    servers: Vec<SocketAddr>,
    key: Option<PublicKey>,
    tls: Arc<connect::Tls>,
    ctl: mpsc::UnboundedSender<Ctl>,
    args: BenchArgs,
) -> anyhow::Result<CaseResult> {
    let server = servers[0];
    // `flood+X` is case X while the generator also floods every server with PROBEs.
    let flood_too = name.starts_with("flood+");
    let case = match name.trim_start_matches("flood+") {
        "connect" => "connect-volley".to_string(),
        other => other.to_string(),
    };
    let mut sockets = Vec::new();
    for _ in 0..args.ports.max(1) {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await?);
    }
    let req = request(&case, &sockets[0], server).await?;
    let start = Instant::now();
    let warmup = if case.starts_with("data") {
        Duration::from_millis(1000)
    } else {
        Duration::from_millis(500)
    };
    let phase = Phase {
        start,
        measure_from: start + warmup,
        end: start + warmup + Duration::from_secs_f64(args.seconds),
    };
    // The marks: at the start and the end of the measured period.
    let marker = {
        let ctl = ctl.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(phase.measure_from.into()).await;
            let a: Marks = (mark(&ctl).await, cpu::sample());
            tokio::time::sleep_until(phase.end.into()).await;
            let b: Marks = (mark(&ctl).await, cpu::sample());
            (a, b)
        })
    };
    let flood = case.starts_with("flood");
    let mut flood_sent_abuse = 0;
    let mut floods = Vec::new();
    if flood_too {
        for s in &servers {
            let socket = UdpSocket::bind("127.0.0.2:0").await?;
            floods.push(tokio::task::spawn_local(load::open_loop(
                socket,
                *s,
                Request::Probe,
                phase,
            )));
        }
    }
    let mut connects = None;
    let mut abused = None;
    if case.starts_with("abuse") {
        sockets.clear();
        let key = key.context("volley servers")?;
        let run = super::abuse::run(server, key, phase, case == "abuse").await?;
        flood_sent_abuse = run.flood_sent;
        connects = Some(run.connects);
        abused = Some(run.figures);
    } else if case.starts_with("connect") || case.starts_with("race8") {
        sockets.clear();
        connects = Some(if case == "connect-volley" {
            let key = key.context("volley servers")?;
            connect::volley_connects(servers.clone(), key, phase.measure_from, phase.end).await
        } else {
            connect::quinn_connects(&tls, servers.clone(), phase.measure_from, phase.end).await?
        });
    }
    let mut tasks: Vec<JoinHandle<anyhow::Result<PortResult>>> = Vec::new();
    for socket in sockets {
        let req = req.clone();
        if flood {
            floods.push(tokio::task::spawn_local(load::open_loop(
                socket, server, req, phase,
            )));
        } else if let Some(len) = case.strip_prefix("data-") {
            let len: usize = len.parse()?;
            let key = key.context("data cases need a volley server")?;
            let window = args.window;
            tasks.push(tokio::task::spawn_local(async move {
                load::session_loop(socket, server, key, len, window, phase).await
            }));
        } else {
            let window = args.window;
            tasks.push(tokio::task::spawn_local(async move {
                Ok(load::closed_loop(socket, server, req, window, phase).await)
            }));
        }
    }
    let mut ports = Vec::new();
    for t in tasks {
        ports.push(t.await??);
    }
    let mut flood_sent = 0;
    for t in floods {
        flood_sent += t.await?;
    }
    let mut merged = load::merge(ports);
    merged.sent += flood_sent + flood_sent_abuse;
    let mut failed = 0;
    if let Some(c) = connects {
        merged.replies = c.count;
        merged.latency = c.latency;
        failed = c.failed;
    }
    let ((server_a, gen_a), (server_b, gen_b)) = marker.await?;
    let (server_a, server_b) = (server_a?, server_b?);
    let secs = gen_a.seconds_to(&gen_b);
    let rate = if flood {
        let (a, b) = (
            server_a.stats.unwrap_or_default(),
            server_b.stats.unwrap_or_default(),
        );
        let handled = if case == "flood-forged" {
            b.init_cookie_bad_mac - a.init_cookie_bad_mac
        } else {
            b.offers_sent - a.offers_sent
        };
        handled as f64 / secs
    } else {
        merged.replies as f64 / secs
    };
    if let Some(a) = abused.as_mut() {
        let failed = |m: &ServerMark| m.stats.map_or(0, |s| s.init_handshake_failed);
        a.replayer_handshakes_per_sec =
            failed(&server_b).saturating_sub(failed(&server_a)) as f64 / secs;
    }
    let server_us = (server_b.cpu_us - server_a.cpu_us) as f64;
    let server_cpu = server_us / 1e6 / secs;
    let ops = rate * secs;
    let generator_cpu_busy = gen_a.cpu_busy_to(&gen_b, args.generator_cpu);
    Ok(CaseResult {
        case: name,
        rep,
        rate,
        p50_us: merged.latency.value_at_quantile(0.5),
        p99_us: merged.latency.value_at_quantile(0.99),
        sent: merged.sent,
        lost_windows: merged.lost_windows,
        failed,
        server_cpu,
        server_cpu_us_per_op: if ops > 0.0 { server_us / ops } else { f64::NAN },
        generator_cpu: gen_a.thread_cores_to(&gen_b),
        server_cpu_busy: gen_a.cpu_busy_to(&gen_b, args.server_cpu),
        generator_cpu_busy,
        gen_bound: generator_cpu_busy >= 0.9 && server_cpu < 0.9,
        abuse: abused,
    })
}

/// What the generator sends in `case` (a forged INIT carries a cookie fetched from `server`).
async fn request(case: &str, socket: &UdpSocket, server: SocketAddr) -> anyhow::Result<Request> {
    Ok(match case {
        "echo-256" => Request::Echo(256),
        "echo-64" => Request::Echo(64),
        "echo-1200" => Request::Echo(1200),
        "responder" | "flood-probe" => Request::Probe,
        "flood-forged" => Request::ForgedInit {
            cookie: load::fetch_cookie(socket, server).await?,
        },
        "data-64" | "data-1200" | "connect-volley" | "connect-quinn" | "race8-quinn" | "abuse"
        | "abuse-clean" => Request::Echo(0),
        other => anyhow::bail!("unknown case {other}"),
    })
}
