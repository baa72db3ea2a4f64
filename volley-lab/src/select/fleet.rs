//! The fleet: 16 volley servers with 4 sleep-based slots each, on a thread of their own (pinned
//! to CPU 0 when the machine has two). Each server runs a request handler on its sessions and a
//! small plain-UDP load port for Prequal-style probing.
//!
//! Request (client to server, over the session): `seq: u32, work_us: u32` (big-endian). Reply:
//! `seq: u32, status: u8` (0 done, 1 failed). A request waits FIFO for one of the server's slots,
//! then sleeps `work_us / speed` (the speed at its start), then is answered. Sessions receive
//! requests with `recv_request`, so each volley server counts its requests in flight from their
//! arrival to their reply and measures its service time from them (L5) with no other help.
//!
//! Load port: any datagram is answered with its first 8 bytes, then `in_flight: u32,
//! latency_us: u32, busy_us: u64` — the requests queued or in service, the server's estimate of
//! a new request's latency at that load: the exponentially weighted mean of recent service times
//! (which reflects the server's speed) times `1 + max(0, in_flight + 1 - slots) / slots`, and
//! the slot time it has worked since it started (its utilisation over an interval is the
//! difference of two readings over the interval times the slots).
//!
//! Direct port (`select --zones`, `select --long-lived`): the plain request path of the peers,
//! see `direct_port`. Its replies carry a per-reply load report ([`LoadReport`], ORCA-like),
//! computed from the server's own state at reply time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, oneshot};
use volley::{AnswerPolicy, PublicKey, Server, ServerConfig, ServerStats, StaticKeypair};

use super::workload::{Behaviour, FleetShape, Schedule};
use crate::harness::process::pin_to;

/// How the fleet's volley endpoints answer probes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Answering {
    /// None: no capacity (every probe answered at once, whatever the load) — the set-up of the
    /// policies that pick a server themselves.
    pub capacity: Option<u32>,
    #[serde(skip)]
    pub answer: AnswerPolicy,
    pub reservation: Duration,
}

/// Per-server figures the handler keeps.
#[derive(Debug, Default)]
pub struct ServerState {
    /// Requests queued or in service.
    pub in_flight: AtomicU32,
    /// Requests in service (holding a slot).
    pub in_service: AtomicU32,
    /// Replies and failed replies per second, for the load report.
    pub rates: Mutex<Rates>,
    /// Microseconds of slot time spent working (sleeping) on requests.
    pub busy_us: AtomicU64,
    /// EWMA of requests' service time at this server, µs.
    pub service_us: AtomicU64,
    /// Requests answered.
    pub done: AtomicU64,
}

/// How long the load report's rates remember: a reply counts `exp(-age / RATE_TAU)`.
pub const RATE_TAU: Duration = Duration::from_secs(1);

/// A server's reply rates, exponentially decayed over [`RATE_TAU`]: every reply (done or
/// failed) counts toward `qps`, failed ones also toward `eps` (as ORCA's `rps_fractional` and
/// `eps` that gRPC's and Envoy's weighted round robin read).
#[derive(Debug, Default)]
pub struct Rates {
    at: Option<Instant>,
    replies: f64,
    errors: f64,
}

impl Rates {
    /// One reply at `now`, failed or not.
    pub fn record(&mut self, now: Instant, failed: bool) {
        self.decay(now);
        self.replies += 1.0;
        if failed {
            self.errors += 1.0;
        }
    }

    /// Replies and failed replies per second at `now`.
    pub fn read(&self, now: Instant) -> (f64, f64) {
        let Some(at) = self.at else {
            return (0.0, 0.0);
        };
        let k = (-now.saturating_duration_since(at).as_secs_f64() / RATE_TAU.as_secs_f64()).exp();
        let tau = RATE_TAU.as_secs_f64();
        (self.replies * k / tau, self.errors * k / tau)
    }

    fn decay(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let k =
                (-now.saturating_duration_since(at).as_secs_f64() / RATE_TAU.as_secs_f64()).exp();
            self.replies *= k;
            self.errors *= k;
        }
        self.at = Some(now);
    }
}

/// The load report every reply of the plain request path carries (ORCA-like; `select
/// --long-lived`), from the server's own state at reply time, the reply's own request no longer
/// counted. 16 bytes, big-endian: `utilisation: u16` (requests in service over slots, in
/// 1/10,000), `queue: u16` (requests waiting for a slot), `service_us: u32` (the EWMA of
/// service times), `qps_milli: u32`, `eps_milli: u32` (replies and failed replies per second,
/// in thousandths, decayed over [`RATE_TAU`]). Values beyond a field saturate it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadReport {
    /// Requests in service over slots, 0..=1.
    pub utilisation: f64,
    /// Requests waiting for a slot.
    pub queue: u32,
    /// The server's EWMA of service times, µs.
    pub service_us: u32,
    /// Replies per second, done or failed.
    pub qps: f64,
    /// Failed replies per second.
    pub eps: f64,
}

/// Bytes of a [`LoadReport`] on the wire.
pub const REPORT_LEN: usize = 16;

impl LoadReport {
    /// The report's 16 bytes.
    pub fn encode(&self) -> [u8; REPORT_LEN] {
        let mut out = [0u8; REPORT_LEN];
        let util = (self.utilisation.clamp(0.0, 1.0) * 10_000.0).round() as u16;
        let milli = |x: f64| (x.max(0.0) * 1000.0).round().min(u32::MAX as f64) as u32;
        out[0..2].copy_from_slice(&util.to_be_bytes());
        out[2..4].copy_from_slice(&(self.queue.min(u32::from(u16::MAX)) as u16).to_be_bytes());
        out[4..8].copy_from_slice(&self.service_us.to_be_bytes());
        out[8..12].copy_from_slice(&milli(self.qps).to_be_bytes());
        out[12..16].copy_from_slice(&milli(self.eps).to_be_bytes());
        out
    }

    /// The report in `b` (its first 16 bytes); `None` when shorter.
    pub fn decode(b: &[u8]) -> Option<LoadReport> {
        let b: &[u8; REPORT_LEN] = b.get(..REPORT_LEN)?.try_into().ok()?;
        let u32_at = |k: usize| u32::from_be_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]]);
        Some(LoadReport {
            utilisation: f64::from(u16::from_be_bytes([b[0], b[1]])) / 10_000.0,
            queue: u32::from(u16::from_be_bytes([b[2], b[3]])),
            service_us: u32_at(4),
            qps: f64::from(u32_at(8)) / 1000.0,
            eps: f64::from(u32_at(12)) / 1000.0,
        })
    }
}

/// A running fleet, owned by its thread.
pub struct Fleet {
    pub addrs: Vec<SocketAddr>,
    pub load_ports: Vec<SocketAddr>,
    /// Each server's plain request path (`direct_port`).
    pub direct_ports: Vec<SocketAddr>,
    pub key: PublicKey,
    pub state: Vec<Arc<ServerState>>,
    /// When the run's clock started (time zero of the schedule).
    pub start: Instant,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Vec<ServerStats>>>>,
}

impl Fleet {
    /// Starts the fleet on its own thread; returns once every server listens.
    pub fn start(
        shape: FleetShape,
        schedule: Schedule,
        answering: Answering,
        key: StaticKeypair,
        pin: Option<usize>,
    ) -> anyhow::Result<Fleet> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new().name("lab-fleet".into()).spawn(
            move || -> anyhow::Result<Vec<ServerStats>> {
                if let Some(cpu) = pin {
                    pin_to(cpu);
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(serve(shape, schedule, answering, key, ready_tx, stop_rx))
            },
        )?;
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the fleet did not start")?;
        let (addrs, load_ports, direct_ports, pubkey, state, start) = ready?;
        Ok(Fleet {
            addrs,
            load_ports,
            direct_ports,
            key: pubkey,
            state,
            start,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops every server; returns their counters.
    pub fn stop(mut self) -> anyhow::Result<Vec<ServerStats>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the fleet thread panicked"))?,
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type Ready = anyhow::Result<(
    Vec<SocketAddr>,
    Vec<SocketAddr>,
    Vec<SocketAddr>,
    PublicKey,
    Vec<Arc<ServerState>>,
    Instant,
)>;

async fn serve(
    shape: FleetShape,
    schedule: Schedule,
    answering: Answering,
    key: StaticKeypair,
    ready: std::sync::mpsc::Sender<Ready>,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<Vec<ServerStats>> {
    let schedule = Arc::new(schedule);
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    let mut load_ports = Vec::new();
    let mut direct_ports = Vec::new();
    let mut states = Vec::new();
    let mut silents = Vec::new();
    let bind: SocketAddr = "127.0.0.1:0".parse()?;
    for _ in 0..shape.servers {
        let mut cfg = ServerConfig::new(key.clone());
        cfg.capacity = answering.capacity;
        cfg.answer = answering.answer;
        cfg.reservation = answering.reservation;
        // Every lab client shares 127.0.0.1: the per-source limit (sized for one real client)
        // would throttle the benchmark itself. The global handshake budget stays as shipped.
        cfg.admission.inits_per_source_per_sec = 1_000_000;
        cfg.admission.inits_per_source_burst = 1_000_000;
        let server = Server::bind(bind, cfg).await?;
        addrs.push(server.local_addr());
        let port = UdpSocket::bind(bind).await?;
        load_ports.push(port.local_addr()?);
        let direct = UdpSocket::bind(bind).await?;
        direct_ports.push(direct.local_addr()?);
        servers.push((server, port, direct));
        states.push(Arc::new(ServerState::default()));
        silents.push(Arc::new(AtomicBool::new(false)));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut stats_rx = Vec::new();
    for (i, (server, port, direct)) in servers.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        stats_rx.push(rx);
        let ctx = Ctx {
            index: i,
            start,
            schedule: Arc::clone(&schedule),
            state: Arc::clone(&states[i]),
            slots: Arc::new(Semaphore::new(shape.slots)),
            slot_count: shape.slots,
            silent: Arc::clone(&silents[i]),
        };
        tasks.push(tokio::spawn(load_port(port, ctx.clone())));
        tasks.push(tokio::spawn(direct_port(direct, ctx.clone())));
        tasks.push(tokio::spawn(accept_loop(server, ctx, tx)));
    }
    let _ = ready.send(Ok((
        addrs,
        load_ports,
        direct_ports,
        key.public(),
        states,
        start,
    )));
    let _ = stop.await;
    for t in &tasks {
        t.abort();
    }
    let mut out = Vec::new();
    for rx in stats_rx {
        out.push(rx.await.unwrap_or_default());
    }
    Ok(out)
}

#[derive(Clone)]
struct Ctx {
    index: usize,
    start: Instant,
    schedule: Arc<Schedule>,
    state: Arc<ServerState>,
    slots: Arc<Semaphore>,
    slot_count: usize,
    silent: Arc<AtomicBool>,
}

impl Ctx {
    fn behaviour(&self) -> Behaviour {
        self.schedule.behaviour(self.index, self.start.elapsed())
    }

    /// The server's load report now (see [`LoadReport`]).
    fn report(&self) -> LoadReport {
        let st = &self.state;
        let in_service = st.in_service.load(Ordering::Relaxed);
        let in_flight = st.in_flight.load(Ordering::Relaxed);
        let (qps, eps) = st
            .rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(Instant::now());
        LoadReport {
            utilisation: f64::from(in_service) / self.slot_count.max(1) as f64,
            queue: in_flight.saturating_sub(in_service),
            service_us: st
                .service_us
                .load(Ordering::Relaxed)
                .min(u64::from(u32::MAX)) as u32,
            qps,
            eps,
        }
    }

    fn record_reply(&self, failed: bool) {
        self.state
            .rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(Instant::now(), failed);
    }
}

/// Sends the server's counters on drop (the task is aborted at the end of a run).
struct StatsOnDrop {
    server: Option<Server>,
    tx: Option<oneshot::Sender<ServerStats>>,
}

impl Drop for StatsOnDrop {
    fn drop(&mut self) {
        if let (Some(s), Some(tx)) = (self.server.take(), self.tx.take()) {
            let _ = tx.send(s.stats());
        }
    }
}

async fn accept_loop(server: Server, ctx: Ctx, tx: oneshot::Sender<ServerStats>) {
    let silent_at = ctx.schedule.silent_at(ctx.index).map(|at| ctx.start + at);
    let mut holder = StatsOnDrop {
        server: Some(server),
        tx: Some(tx),
    };
    loop {
        let Some(server) = holder.server.as_mut() else {
            return;
        };
        let session = match silent_at {
            Some(at) if !ctx.silent.load(Ordering::Relaxed) => {
                tokio::select! {
                    s = server.accept() => s,
                    _ = tokio::time::sleep_until(at.into()) => {
                        // Silent from now on: a session limit of zero withholds every probe and
                        // refuses every initiation; the handlers stop answering requests.
                        ctx.silent.store(true, Ordering::Relaxed);
                        server.set_max_sessions(Some(0));
                        continue;
                    }
                }
            }
            _ => server.accept().await,
        };
        let Some(session) = session else { return };
        tokio::spawn(handle_session(session, ctx.clone()));
    }
}

async fn handle_session(session: volley::Session, ctx: Ctx) {
    let session = Arc::new(session);
    while let Ok(request) = session.recv_request().await {
        let req = request.data();
        if req.len() < 8 {
            continue;
        }
        let seq = [req[0], req[1], req[2], req[3]];
        let work_us = u32::from_be_bytes([req[4], req[5], req[6], req[7]]);
        if request.id().is_some() {
            // A `volley::Pool`'s request (`select --long-lived`): many in flight on the
            // session, each served beside the others, its reply naming the server.
            let (session, ctx) = (Arc::clone(&session), ctx.clone());
            tokio::spawn(async move {
                match serve_request(&ctx, work_us).await {
                    Some(status) => {
                        let mut answer = reply(seq, status).to_vec();
                        answer.extend_from_slice(&(ctx.index as u16).to_be_bytes());
                        let _ = request.reply(&session, &answer).await;
                    }
                    // Silent: no answer at all (a dropped request would be answered DROPPED
                    // at once); the request is held past every client's deadline.
                    None => {
                        tokio::time::sleep(SILENT_HOLD).await;
                        drop(request);
                    }
                }
            });
            continue;
        }
        if let Some(status) = serve_request(&ctx, work_us).await {
            let _ = request.reply(&session, &reply(seq, status)).await;
        }
    }
}

/// How long a silent server holds a pool's request before letting it go (past the runner's
/// 1 s deadline, so that the client sees silence).
const SILENT_HOLD: Duration = Duration::from_secs(5);

/// Serves one request of `work_us` at speed 1: waits FIFO for a slot, sleeps the work at the
/// server's speed. The status to answer (0 done, 1 failed), or `None` when the server answers
/// nothing (silent).
async fn serve_request(ctx: &Ctx, work_us: u32) -> Option<u8> {
    let speed = match ctx.behaviour() {
        Behaviour::Silent => return None,
        Behaviour::Sinkhole => {
            ctx.record_reply(true);
            return Some(1);
        }
        Behaviour::Work(s) => s,
    };
    ctx.state.in_flight.fetch_add(1, Ordering::Relaxed);
    let permit = ctx.slots.acquire().await;
    ctx.state.in_service.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    // The speed when service starts sets its length.
    let speed = match ctx.behaviour() {
        Behaviour::Work(s) => s,
        _ => speed,
    };
    let service = Duration::from_secs_f64(work_us as f64 / 1e6 / speed.max(0.01));
    tokio::time::sleep(service).await;
    let busy = started.elapsed();
    ctx.state.in_service.fetch_sub(1, Ordering::Relaxed);
    drop(permit);
    ctx.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    ctx.state
        .busy_us
        .fetch_add(busy.as_micros() as u64, Ordering::Relaxed);
    ctx.state.done.fetch_add(1, Ordering::Relaxed);
    let spent = busy.as_micros() as u64;
    let old = ctx.state.service_us.load(Ordering::Relaxed);
    let new = if old == 0 {
        spent
    } else {
        (old * 7 + spent) / 8
    };
    ctx.state.service_us.store(new, Ordering::Relaxed);
    if ctx.silent.load(Ordering::Relaxed) {
        return None;
    }
    ctx.record_reply(false);
    Some(0)
}

/// The lab's plain request path (`select --zones`): what a peer pays on a real network to open
/// a connection to the server it chose (one round trip, as QUIC or TCP would) and then its
/// requests, with no selection of its own. Datagrams (big-endian):
///
/// - `OPEN`: `0x01, session: u64` → `OPENED`: `0x81, session: u64`.
/// - `REQUEST`: `0x02, session: u64, seq: u32, work_us: u32` → `REPLY`:
///   `0x82, session: u64, seq: u32, status: u8, report: [u8; 16]` (served as a volley
///   session's request is; the [`LoadReport`] computed as the reply leaves).
///
/// Anything else, shorter or longer, is dropped. A silent server answers nothing.
async fn direct_port(socket: UdpSocket, ctx: Ctx) {
    let socket = Arc::new(socket);
    let mut buf = [0u8; 64];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if ctx.silent.load(Ordering::Relaxed) || ctx.behaviour() == Behaviour::Silent {
            continue;
        }
        match (buf[0], n) {
            (DIRECT_OPEN, 9) => {
                let mut out = [0u8; 9];
                out[0] = DIRECT_OPENED;
                out[1..9].copy_from_slice(&buf[1..9]);
                let _ = socket.send_to(&out, from).await;
            }
            (DIRECT_REQUEST, 17) => {
                let mut out = [0u8; DIRECT_REPLY_LEN];
                out[0] = DIRECT_REPLY;
                out[1..13].copy_from_slice(&buf[1..13]);
                let work_us = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
                let (socket, ctx) = (Arc::clone(&socket), ctx.clone());
                tokio::spawn(async move {
                    if let Some(status) = serve_request(&ctx, work_us).await {
                        out[13] = status;
                        out[14..].copy_from_slice(&ctx.report().encode());
                        let _ = socket.send_to(&out, from).await;
                    }
                });
            }
            _ => {}
        }
    }
}

/// The plain request path's message kinds (see `direct_port`).
pub const DIRECT_OPEN: u8 = 0x01;
pub const DIRECT_OPENED: u8 = 0x81;
pub const DIRECT_REQUEST: u8 = 0x02;
pub const DIRECT_REPLY: u8 = 0x82;
/// Bytes of a `REPLY`: kind, session, seq, status, then the [`LoadReport`].
pub const DIRECT_REPLY_LEN: usize = 14 + REPORT_LEN;

fn reply(seq: [u8; 4], status: u8) -> [u8; 5] {
    [seq[0], seq[1], seq[2], seq[3], status]
}

/// Prequal's probe target: answers any datagram with the in-flight count and latency estimate.
async fn load_port(socket: UdpSocket, ctx: Ctx) {
    let mut buf = [0u8; 64];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if ctx.silent.load(Ordering::Relaxed) || ctx.behaviour() == Behaviour::Silent {
            continue;
        }
        let mut out = [0u8; 24];
        let echo = n.min(8);
        out[..echo].copy_from_slice(&buf[..echo]);
        let rif = match ctx.behaviour() {
            // A sinkhole holds nothing and answers fast: exactly what fools a load probe.
            Behaviour::Sinkhole => 0,
            _ => ctx.state.in_flight.load(Ordering::Relaxed),
        };
        out[8..12].copy_from_slice(&rif.to_be_bytes());
        let slots = ctx.slot_count as f64;
        let queued = (rif as f64 + 1.0 - slots).max(0.0);
        let lat = (ctx.state.service_us.load(Ordering::Relaxed) as f64 * (1.0 + queued / slots))
            .min(u32::MAX as f64) as u32;
        out[12..16].copy_from_slice(&lat.to_be_bytes());
        let busy = ctx.state.busy_us.load(Ordering::Relaxed);
        out[16..24].copy_from_slice(&busy.to_be_bytes());
        let _ = socket.send_to(&out, from).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p4_a_load_report_reads_back_as_written_and_saturates() {
        let r = LoadReport {
            utilisation: 0.75,
            queue: 3,
            service_us: 41_250,
            qps: 101.5,
            eps: 0.25,
        };
        assert_eq!(LoadReport::decode(&r.encode()), Some(r));
        let big = LoadReport {
            utilisation: 7.0,
            queue: 1 << 20,
            service_us: u32::MAX,
            qps: 1e12,
            eps: -1.0,
        };
        let back = LoadReport::decode(&big.encode()).expect("16 bytes");
        assert_eq!(back.utilisation, 1.0);
        assert_eq!(back.queue, u32::from(u16::MAX));
        assert_eq!(back.qps, f64::from(u32::MAX) / 1000.0);
        assert_eq!(back.eps, 0.0);
        assert_eq!(LoadReport::decode(&[0u8; REPORT_LEN - 1]), None);
    }

    #[test]
    fn p4_reply_rates_decay_over_their_time_constant() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        assert_eq!(r.read(t0), (0.0, 0.0));
        for k in 0..10 {
            r.record(t0, k % 5 == 0);
        }
        let (qps, eps) = r.read(t0);
        assert!(
            (qps - 10.0).abs() < 1e-9 && (eps - 2.0).abs() < 1e-9,
            "{qps} {eps}"
        );
        // One time constant later: e^-1 of it.
        let (qps, eps) = r.read(t0 + RATE_TAU);
        assert!((qps - 10.0 / std::f64::consts::E).abs() < 1e-9, "{qps}");
        assert!((eps - 2.0 / std::f64::consts::E).abs() < 1e-9, "{eps}");
    }
}
