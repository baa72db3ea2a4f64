//! The server core without sockets (one thread, the calling one): handshakes per second of
//! server CPU, memory per established session, and the cost of a timer wake-up at 1,000 and at
//! 100,000 sessions.
//!
//! Sessions are opened the way the protocol opens them — a client `Connection` races the
//! server (PROBE → OFFER → INIT → ACCEPT), proving one of 1,024 client keys that are all on the
//! server's allow-list (so the rate is that of authenticated handshakes, PROTOCOL.md §4.7) — on a
//! virtual clock, each from its own address, one
//! every `1 s / n` so that their keepalive deadlines are distinct. Only the server's
//! `handle(INIT)` calls are timed for the handshake rate. The client connections are dropped
//! as soon as their session is up, so the process's resident memory grows by what the server
//! keeps (plus allocator slack, which this figure includes).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use volley_proto::client::{Connection, PoolState};
use volley_proto::{
    AnswerPolicy, ClientConfig, MAX_DATAGRAM_LEN, ServerConfig, ServerEndpoint, StaticKeypair,
};

use crate::harness::footprint;

/// What one population of sessions measured.
#[derive(Debug, Clone, Serialize)]
pub struct CoreResult {
    pub sessions: usize,
    /// Server CPU (wall time of its `handle(INIT)` calls, one thread) per handshake.
    pub handshake_us: f64,
    pub handshakes_per_sec: f64,
    /// Resident memory growth per session, bytes (VmRSS before and after).
    pub bytes_per_session: f64,
    /// Mean wall time of one timer wake-up (`poll_timeout` + `handle_timeout` + draining the
    /// transmits it queued) that fires the one session due.
    pub wake_ns: f64,
    /// Wake-ups measured.
    pub wakes: usize,
}

/// This process's resident memory, bytes (0 when unknown).
fn rss_bytes() -> u64 {
    footprint::rss_kb(std::process::id()).map_or(0, |kb| kb * 1024)
}

/// Client keys the sessions prove, all on the server's allow-list.
const CLIENT_KEYS: usize = 1_024;

fn client_addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::from((
        [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        40_000 + (i % 7) as u16,
    ))
}

/// Opens `n` sessions on a fresh server and measures.
pub fn run(n: usize) -> anyhow::Result<CoreResult> {
    let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
    let key = StaticKeypair::generate(&mut rng);
    let mut cfg = ServerConfig::new(key.clone());
    cfg.answer = AnswerPolicy::Immediate;
    // One source per session and no real time passing: no budget may bind.
    cfg.admission.handshakes_per_sec = u32::MAX;
    cfg.admission.probes_per_sec = u32::MAX;
    let clients: Vec<StaticKeypair> = (0..CLIENT_KEYS)
        .map(|_| StaticKeypair::generate(&mut rng))
        .collect();
    cfg.allow = Some(std::sync::Arc::new(
        volley_proto::allow::AllowList::from_keys(clients.iter().map(|k| k.public())),
    ));
    let t0 = Instant::now();
    let local: SocketAddr = "127.0.0.1:4433".parse()?;
    let mut server = ServerEndpoint::new(t0, cfg, Box::new(ChaCha20Rng::seed_from_u64(7)));
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    let rss_before = rss_bytes();
    let mut handshake = Duration::ZERO;
    let step = Duration::from_secs(1).as_nanos() as u64 / n.max(1) as u64;
    for i in 0..n {
        let now = t0 + Duration::from_nanos(step * i as u64);
        let from = client_addr(i);
        let mut pool = PoolState::default();
        let mut client = ClientConfig::new(vec![key.public()]);
        client.key = Some(clients[i % CLIENT_KEYS].clone());
        let mut conn = Connection::new(
            now,
            client,
            vec![local],
            Box::new(ChaCha20Rng::seed_from_u64(i as u64)),
            &mut pool,
        );
        // PROBE → OFFER → INIT → ACCEPT.
        for _ in 0..2 {
            let t = conn
                .poll_transmit(now, &mut buf)
                .ok_or_else(|| anyhow::anyhow!("session {i}: the client had nothing to send"))?;
            let is_init = buf[1] == volley_proto::packet::kind::INIT;
            let started = Instant::now();
            let reply = server.handle(now, from, local, &buf[..t.size], &mut out);
            if is_init {
                handshake += started.elapsed();
            }
            let reply = reply.ok_or_else(|| anyhow::anyhow!("session {i}: no answer"))?;
            conn.handle(now, local, &out[..reply.size], &mut pool);
        }
        anyhow::ensure!(conn.server().is_some(), "session {i} not established");
        while server.poll_event().is_some() {}
    }
    anyhow::ensure!(
        server.session_count() == n,
        "{} sessions",
        server.session_count()
    );
    let rss_after = rss_bytes();
    // Timer wake-ups: from one second on, keepalives come due one session at a time.
    let wakes = n.min(1_000);
    let mut spent = Duration::ZERO;
    for _ in 0..wakes {
        let Some(due) = server.poll_timeout() else {
            break;
        };
        let started = Instant::now();
        let due = server.poll_timeout().unwrap_or(due);
        server.handle_timeout(due);
        while server.poll_transmit(due, &mut out).is_some() {}
        spent += started.elapsed();
    }
    Ok(CoreResult {
        sessions: n,
        handshake_us: handshake.as_secs_f64() * 1e6 / n as f64,
        handshakes_per_sec: n as f64 / handshake.as_secs_f64(),
        bytes_per_session: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        wake_ns: spent.as_secs_f64() * 1e9 / wakes as f64,
        wakes,
    })
}
