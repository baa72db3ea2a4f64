//! The policies of `select --zones`. Every client has only its own state, and reaches every
//! server through the relay of its zone (so every datagram, selection traffic included, pays
//! its path's delay both ways).
//!
//! The peers pick a server, then open a connection to it over the fleet's plain request path:
//! one round trip (`OPEN` → `OPENED`, as a QUIC or TCP handshake would cost), then the session's
//! requests, one round trip each. volley's clients race probes over the pool and pay the race
//! and the Noise handshake, whose INIT carries the first request as early data, then the other
//! requests (see docs/BENCHMARKS.md § 6.1).
//!
//! - `zone-p2c`: tower's `Balance` (p2c) over `PeakEwma` services of the client's own zone.
//! - `p2c-peakewma`: the same over the whole fleet.
//! - `locality`: load-aware locality: every second each client reads every server's load port
//!   (through the delays), turns the slot time worked into each zone's utilisation, weights the
//!   zones by [`LocalityRule`], then p2c PeakEwma inside the chosen zone.
//! - `prequal`: Prequal's probes and hot/cold rule over the whole fleet (3 load probes per
//!   arrival through the delays), as `select`'s `prequal`.
//! - `oracle-path`: one central chooser that knows the true speeds, which servers are silent,
//!   and the sessions it has placed; it picks by [`oracle_choice`] (round trips × path +
//!   service + expected wait for a slot).
//! - `volley-…`: a `volley::Client` per client, racing over its zone's relay addresses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::poll_fn;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};
use volley::{Client, ClientConfig, SelectionPolicy};

use super::model::{LocalityRule, OracleView, Zones, oracle_choice};
use crate::peers::prequal::{self, ProbePool};
use crate::select::fleet::{
    DIRECT_OPEN, DIRECT_OPENED, DIRECT_REPLY, DIRECT_REPLY_LEN, DIRECT_REQUEST,
};
use crate::select::policy::{Outcome, Policy, Record, RunCtx, run_session};
use crate::select::workload::{Behaviour, Job};

/// A policy of the zone matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZPolicy {
    ZoneP2c,
    GlobalP2c,
    Locality,
    Prequal,
    OraclePath,
    /// A volley configuration of `select` (its name and its fleet answering).
    Volley(Policy),
}

impl ZPolicy {
    /// The peers, in the report's order.
    pub const PEERS: [ZPolicy; 5] = [
        ZPolicy::ZoneP2c,
        ZPolicy::GlobalP2c,
        ZPolicy::Locality,
        ZPolicy::Prequal,
        ZPolicy::OraclePath,
    ];

    pub fn name(&self) -> String {
        match self {
            ZPolicy::ZoneP2c => "zone-p2c".into(),
            ZPolicy::GlobalP2c => "p2c-peakewma".into(),
            ZPolicy::Locality => "locality".into(),
            ZPolicy::Prequal => "prequal".into(),
            ZPolicy::OraclePath => "oracle-path".into(),
            ZPolicy::Volley(p) => p.name(),
        }
    }

    pub fn parse(s: &str) -> Option<ZPolicy> {
        ZPolicy::PEERS
            .into_iter()
            .find(|p| p.name() == s)
            .or_else(|| {
                Policy::parse(s)
                    .filter(Policy::is_volley)
                    .map(ZPolicy::Volley)
            })
    }

    pub fn is_volley(&self) -> bool {
        matches!(self, ZPolicy::Volley(_))
    }
}

/// What every session of a zone run shares.
pub struct ZCtx {
    pub run: Arc<RunCtx>,
    pub zones: Zones,
    /// Per client zone, per server: the relay's address in front of its volley endpoint, its
    /// load port and its plain request path.
    pub volley: [Vec<SocketAddr>; 3],
    pub load: [Vec<SocketAddr>; 3],
    pub direct: [Vec<SocketAddr>; 3],
    pub mean_work: Duration,
    pub requests: f64,
}

/// Each open session's inbox: what its replies carry (kind, seq, status), by session id.
type Waiters = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<(u8, u32, u8)>>>>;

/// One client's plain request path: one socket, sessions told apart by their id.
pub struct DirectClient {
    socket: Arc<UdpSocket>,
    waiters: Waiters,
    next: AtomicU64,
    receiver: JoinHandle<()>,
}

impl Drop for DirectClient {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

impl DirectClient {
    pub async fn new(tag: u64) -> anyhow::Result<Arc<DirectClient>> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let waiters: Waiters = Arc::default();
        let receiver = {
            let (socket, waiters) = (Arc::clone(&socket), Arc::clone(&waiters));
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    let Ok((n, _)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    let (kind, seq, status) = match (buf[0], n) {
                        (DIRECT_OPENED, 9) => (DIRECT_OPENED, 0, 0),
                        (DIRECT_REPLY, DIRECT_REPLY_LEN) => (
                            DIRECT_REPLY,
                            u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]),
                            buf[13],
                        ),
                        _ => continue,
                    };
                    let mut sid = [0u8; 8];
                    sid.copy_from_slice(&buf[1..9]);
                    let sid = u64::from_be_bytes(sid);
                    let w = waiters.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(tx) = w.get(&sid) {
                        let _ = tx.send((kind, seq, status));
                    }
                }
            })
        };
        Ok(Arc::new(DirectClient {
            socket,
            waiters,
            next: AtomicU64::new(tag << 40),
            receiver,
        }))
    }

    /// One session on server `server` at `target`: a connection's round trip, then the job's
    /// requests one after the other.
    pub async fn session(
        &self,
        run: &RunCtx,
        target: SocketAddr,
        server: usize,
        job: &Job,
    ) -> Record {
        let mut rec = Record::unconnected(job.at.as_micros() as u64, Outcome::Timeout);
        let sid = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid, tx);
        let rec = async {
            let mut open = [0u8; 9];
            open[0] = DIRECT_OPEN;
            open[1..9].copy_from_slice(&sid.to_be_bytes());
            if self.socket.send_to(&open, target).await.is_err() {
                rec.outcome = Outcome::Failed;
                return rec;
            }
            let opened = tokio::time::timeout(run.connect_timeout, async {
                while let Some((kind, _, _)) = rx.recv().await {
                    if kind == DIRECT_OPENED {
                        return true;
                    }
                }
                false
            })
            .await;
            if opened != Ok(true) {
                return rec;
            }
            rec.connected_us = Some(run.t0.elapsed().as_micros() as u64);
            rec.server = Some(server as u16);
            for (seq, &work) in job.work_us.iter().enumerate() {
                let mut req = [0u8; 17];
                req[0] = DIRECT_REQUEST;
                req[1..9].copy_from_slice(&sid.to_be_bytes());
                req[9..13].copy_from_slice(&(seq as u32).to_be_bytes());
                req[13..17].copy_from_slice(&work.to_be_bytes());
                if self.socket.send_to(&req, target).await.is_err() {
                    rec.outcome = Outcome::Failed;
                    return rec;
                }
                let answered = tokio::time::timeout(run.request_timeout, async {
                    while let Some((kind, s, status)) = rx.recv().await {
                        if kind == DIRECT_REPLY && s == seq as u32 {
                            return Some(status);
                        }
                    }
                    None
                })
                .await;
                match answered {
                    Ok(Some(0)) => {}
                    Ok(_) => {
                        rec.outcome = Outcome::Failed;
                        return rec;
                    }
                    Err(_) => {
                        rec.outcome = Outcome::Timeout;
                        return rec;
                    }
                }
            }
            rec.done_us = Some(run.t0.elapsed().as_micros() as u64);
            rec.outcome = Outcome::Ok;
            rec
        }
        .await;
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sid);
        rec
    }
}

/// One server as a tower service: a call is one whole session on it, over the plain path.
#[derive(Clone)]
struct DirectSvc {
    ctx: Arc<ZCtx>,
    client: Arc<DirectClient>,
    target: SocketAddr,
    server: usize,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Record, Infallible>> + Send>>;

impl Service<Job> for DirectSvc {
    type Response = Record;
    type Error = Infallible;
    type Future = BoxFut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> BoxFut {
        let this = self.clone();
        Box::pin(async move {
            Ok(this
                .client
                .session(&this.ctx.run, this.target, this.server, &job)
                .await)
        })
    }
}

struct TowerRng(ChaCha8Rng);

impl tower::util::rng::Rng for TowerRng {
    fn next_u64(&mut self) -> u64 {
        self.0.r#gen()
    }
}

type Balancer = Balance<ServiceList<Vec<PeakEwma<DirectSvc>>>, Job>;

/// A tower p2c `Balance` over `PeakEwma` services of `servers`, as client `c` reaches them.
fn balancer(
    ctx: &Arc<ZCtx>,
    client: &Arc<DirectClient>,
    c: usize,
    servers: &[usize],
    salt: u64,
) -> Balancer {
    let z = ctx.zones.of_client[c];
    let services: Vec<PeakEwma<DirectSvc>> = servers
        .iter()
        .map(|&s| {
            PeakEwma::new(
                DirectSvc {
                    ctx: Arc::clone(ctx),
                    client: Arc::clone(client),
                    target: ctx.direct[z][s],
                    server: s,
                },
                ctx.run.ewma_default_rtt,
                ctx.run.ewma_decay.as_nanos() as f64,
                CompleteOnResponse::default(),
            )
        })
        .collect();
    Balance::from_rng(
        ServiceList::new::<Job>(services),
        TowerRng(ChaCha8Rng::seed_from_u64(
            ctx.run.seed ^ 0x9c2 ^ ((c as u64) << 20) ^ salt,
        )),
    )
}

async fn call(balance: &mut Balancer, job: Job) -> anyhow::Result<JoinHandle<Record>> {
    poll_fn(|cx| balance.poll_ready(cx))
        .await
        .map_err(|e| anyhow::anyhow!("p2c not ready: {e}"))?;
    let at_us = job.at.as_micros() as u64;
    let fut = balance.call(job);
    Ok(tokio::spawn(async move {
        fut.await
            .unwrap_or_else(|_| Record::unconnected(at_us, Outcome::Failed))
    }))
}

/// What a policy's run gave: every session's record in the jobs' order, and the load-port
/// probes sent besides the sessions' own.
pub struct Driven {
    pub records: Vec<Record>,
    pub load_probes: u64,
}

/// Runs `policy` over `jobs` in open loop, each job at its own client.
pub async fn drive(policy: ZPolicy, ctx: Arc<ZCtx>, jobs: Vec<Job>) -> anyhow::Result<Driven> {
    let m = ctx.zones.of_client.len();
    let mut load_probes = 0;
    let handles = match policy {
        ZPolicy::ZoneP2c | ZPolicy::GlobalP2c => {
            let mut per_client = Vec::with_capacity(m);
            for c in 0..m {
                let client = DirectClient::new(c as u64).await?;
                let servers = if policy == ZPolicy::ZoneP2c {
                    ctx.zones.servers(ctx.zones.of_client[c])
                } else {
                    (0..ctx.zones.of_server.len()).collect()
                };
                // Kubernetes' topology-aware routing and Envoy's zone-aware routing fall back
                // to every zone only when the local zone has no (healthy) endpoint at all.
                let servers = if servers.is_empty() {
                    (0..ctx.zones.of_server.len()).collect()
                } else {
                    servers
                };
                per_client.push(balancer(&ctx, &client, c, &servers, 0));
            }
            let mut handles = Vec::with_capacity(jobs.len());
            for job in jobs {
                tokio::time::sleep_until((ctx.run.t0 + job.at).into()).await;
                let c = job.client(m);
                handles.push(call(&mut per_client[c], job).await?);
            }
            handles
        }
        ZPolicy::Locality => {
            let (handles, probes) = locality(&ctx, jobs).await?;
            load_probes = probes;
            handles
        }
        ZPolicy::Prequal => {
            let (handles, probes) = prequal_zones(&ctx, jobs).await?;
            load_probes = probes;
            handles
        }
        ZPolicy::OraclePath => oracle(&ctx, jobs).await?,
        ZPolicy::Volley(p) => {
            let Policy::Volley { pick, fanout, .. } = p else {
                anyhow::bail!("{} is not a volley configuration", p.name());
            };
            let sel = match pick {
                crate::select::policy::Pick::Earliest => SelectionPolicy::Earliest,
                crate::select::policy::Pick::Window => SelectionPolicy::window(),
                crate::select::policy::Pick::Path => SelectionPolicy::path(),
            };
            let clients: Vec<Client> = (0..m)
                .map(|c| {
                    let z = ctx.zones.of_client[c];
                    let mut cfg = ClientConfig::new(vec![ctx.run.key]);
                    cfg.policy = sel;
                    cfg.fanout = fanout.map(usize::from);
                    if matches!(sel, SelectionPolicy::Path(_)) {
                        // The zone labels a deployment knows (as the zone-local peers do): the
                        // client's own, and its zone's relay address of each server.
                        cfg.zone = Some(format!("zone-{z}"));
                        cfg.server_zones = ctx.volley[z]
                            .iter()
                            .enumerate()
                            .map(|(s, &a)| (a, format!("zone-{}", ctx.zones.of_server[s])))
                            .collect();
                    }
                    Client::new(cfg)
                })
                .collect();
            let mut handles = Vec::with_capacity(jobs.len());
            for job in jobs {
                tokio::time::sleep_until((ctx.run.t0 + job.at).into()).await;
                let c = job.client(m);
                let pool = ctx.volley[ctx.zones.of_client[c]].clone();
                handles.push(tokio::spawn(run_session(
                    Arc::clone(&ctx.run),
                    clients[c].clone(),
                    pool,
                    job,
                )));
            }
            handles
        }
    };
    let mut records = Vec::with_capacity(handles.len());
    for h in handles {
        records.push(h.await?);
    }
    Ok(Driven {
        records,
        load_probes,
    })
}

/// How long a server's utilisation reading stays usable (Envoy's weight expiration): two and a
/// half report periods.
const REPORT_EXPIRY: Duration = Duration::from_millis(2500);
/// How often a locality client reads every server's utilisation.
pub const REPORT_PERIOD: Duration = Duration::from_secs(1);

/// One locality client's view: per server, its last two readings (client time, slot time
/// worked) and the utilisation between them.
#[derive(Default)]
struct Readings {
    last: HashMap<usize, (Instant, u64)>,
    util: HashMap<usize, (Instant, f64)>,
}

async fn locality(
    ctx: &Arc<ZCtx>,
    jobs: Vec<Job>,
) -> anyhow::Result<(Vec<JoinHandle<Record>>, u64)> {
    let m = ctx.zones.of_client.len();
    let n = ctx.zones.of_server.len();
    let slots = ctx.run.slots as f64;
    let rule = LocalityRule::default();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut views = Vec::with_capacity(m);
    let mut per_client = Vec::with_capacity(m);
    for c in 0..m {
        let z = ctx.zones.of_client[c];
        let client = DirectClient::new(c as u64).await?;
        per_client.push(
            (0..3)
                .map(|k| balancer(ctx, &client, c, &ctx.zones.servers(k), k as u64 + 1))
                .collect::<Vec<_>>(),
        );
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let view: Arc<Mutex<Readings>> = Arc::default();
        views.push(Arc::clone(&view));
        // Receiver: turns two readings of a server's slot time into its utilisation.
        {
            let socket = Arc::clone(&socket);
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    let Ok((len, _)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    if len < 24 {
                        continue;
                    }
                    let s = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if s >= n {
                        continue;
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[16..24]);
                    let busy = u64::from_be_bytes(b);
                    let now = Instant::now();
                    let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((t, old)) = v.last.insert(s, (now, busy)) {
                        let dt = now.duration_since(t).as_secs_f64() * 1e6 * slots;
                        if dt > 0.0 {
                            let u = (busy.saturating_sub(old) as f64 / dt).clamp(0.0, 1.0);
                            v.util.insert(s, (now, u));
                        }
                    }
                }
            }));
        }
        // Reporter: every period, one load-port datagram to every server through the delays.
        {
            let (ctx, sent) = (Arc::clone(ctx), Arc::clone(&sent));
            // Clients' readings are spread over the period.
            let offset = REPORT_PERIOD.mul_f64(c as f64 / m.max(1) as f64);
            tasks.push(tokio::spawn(async move {
                let mut at = tokio::time::Instant::now() + offset;
                loop {
                    tokio::time::sleep_until(at).await;
                    for s in 0..n {
                        let mut msg = [0u8; 8];
                        msg[..4].copy_from_slice(&(s as u32).to_be_bytes());
                        if socket.try_send_to(&msg, ctx.load[z][s]).is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    at += REPORT_PERIOD;
                }
            }));
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.run.seed ^ 0x10ca1);
    let counts = [0, 1, 2].map(|k| ctx.zones.servers(k).len());
    let mut handles = Vec::with_capacity(jobs.len());
    for job in jobs {
        tokio::time::sleep_until((ctx.run.t0 + job.at).into()).await;
        let c = job.client(m);
        let local = ctx.zones.of_client[c];
        let util = {
            let v = views[c].lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            [0, 1, 2].map(|k| {
                let fresh: Vec<f64> = ctx
                    .zones
                    .servers(k)
                    .iter()
                    .filter_map(|s| v.util.get(s))
                    .filter(|(t, _)| now.duration_since(*t) <= REPORT_EXPIRY)
                    .map(|(_, u)| *u)
                    .collect();
                (!fresh.is_empty()).then(|| fresh.iter().sum::<f64>() / fresh.len() as f64)
            })
        };
        // Before the first two readings, the local zone.
        let any = util.iter().any(Option::is_some);
        let w = if any {
            rule.weights(local, util, counts)
        } else {
            let mut w = [0.0; 3];
            w[local] = 1.0;
            w
        };
        let mut r: f64 = rng.r#gen::<f64>() * w.iter().sum::<f64>();
        let mut zone = local;
        for (k, &wk) in w.iter().enumerate() {
            if wk > 0.0 && r < wk {
                zone = k;
                break;
            }
            r -= wk;
        }
        if counts[zone] == 0 {
            zone = local;
        }
        handles.push(call(&mut per_client[c][zone], job).await?);
    }
    for t in tasks {
        t.abort();
    }
    Ok((handles, sent.load(Ordering::Relaxed)))
}

async fn prequal_zones(
    ctx: &Arc<ZCtx>,
    jobs: Vec<Job>,
) -> anyhow::Result<(Vec<JoinHandle<Record>>, u64)> {
    let m = ctx.zones.of_client.len();
    let n = ctx.zones.of_server.len();
    let mut clients = Vec::with_capacity(m);
    let mut receivers = Vec::with_capacity(m);
    for c in 0..m {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let pool: Arc<Mutex<ProbePool>> = Arc::default();
        {
            let (socket, pool) = (Arc::clone(&socket), Arc::clone(&pool));
            let t0 = ctx.run.t0;
            receivers.push(tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    let Ok((len, _)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    if len < 16 {
                        continue;
                    }
                    let server = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    if server as usize >= n {
                        continue;
                    }
                    let rif = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                    let latency_us = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
                    pool.lock().unwrap_or_else(|e| e.into_inner()).insert(
                        server,
                        rif,
                        u64::from(latency_us),
                        t0.elapsed(),
                    );
                }
            }));
        }
        clients.push((socket, pool, DirectClient::new(c as u64).await?));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.run.seed ^ 0x9e0a1);
    let mut sent = 0u64;
    let mut handles = Vec::with_capacity(jobs.len());
    for job in jobs {
        tokio::time::sleep_until((ctx.run.t0 + job.at).into()).await;
        let c = job.client(m);
        let z = ctx.zones.of_client[c];
        let (socket, pool, direct) = &clients[c];
        for _ in 0..prequal::PROBES_PER_ARRIVAL {
            let s = rng.gen_range(0..n);
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(s as u32).to_be_bytes());
            if socket.try_send_to(&msg, ctx.load[z][s]).is_ok() {
                sent += 1;
            }
        }
        let pick = pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pick(ctx.run.t0.elapsed());
        let s = pick.map_or_else(|| rng.gen_range(0..n), |s| s as usize);
        let (ctx2, direct) = (Arc::clone(ctx), Arc::clone(direct));
        handles.push(tokio::spawn(async move {
            direct.session(&ctx2.run, ctx2.direct[z][s], s, &job).await
        }));
    }
    for r in receivers {
        r.abort();
    }
    Ok((handles, sent))
}

async fn oracle(ctx: &Arc<ZCtx>, jobs: Vec<Job>) -> anyhow::Result<Vec<JoinHandle<Record>>> {
    let m = ctx.zones.of_client.len();
    let n = ctx.zones.of_server.len();
    let active: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(vec![0; n]));
    let mut directs = Vec::with_capacity(m);
    for c in 0..m {
        directs.push(DirectClient::new(c as u64).await?);
    }
    let mut handles = Vec::with_capacity(jobs.len());
    for job in jobs {
        tokio::time::sleep_until((ctx.run.t0 + job.at).into()).await;
        let c = job.client(m);
        let z = ctx.zones.of_client[c];
        let now = ctx.run.t0.elapsed();
        let s = {
            let a = active.lock().unwrap_or_else(|e| e.into_inner());
            let views: Vec<OracleView> = (0..n)
                .map(|s| OracleView {
                    path: ctx.zones.path(z, s),
                    speed: match ctx.run.schedule.behaviour(s, now) {
                        Behaviour::Work(x) => x,
                        Behaviour::Sinkhole | Behaviour::Silent => 0.0,
                    },
                    active: a[s],
                    slots: ctx.run.slots,
                })
                .collect();
            oracle_choice(&views, job.work_us.len() as f64, ctx.mean_work)
        };
        let Some(s) = s else {
            let at_us = job.at.as_micros() as u64;
            handles.push(tokio::spawn(async move {
                Record::unconnected(at_us, Outcome::Timeout)
            }));
            continue;
        };
        active.lock().unwrap_or_else(|e| e.into_inner())[s] += 1;
        let (ctx2, direct, active) = (
            Arc::clone(ctx),
            Arc::clone(&directs[c]),
            Arc::clone(&active),
        );
        handles.push(tokio::spawn(async move {
            let rec = direct.session(&ctx2.run, ctx2.direct[z][s], s, &job).await;
            let mut a = active.lock().unwrap_or_else(|e| e.into_inner());
            a[s] = a[s].saturating_sub(1);
            rec
        }));
    }
    Ok(handles)
}
