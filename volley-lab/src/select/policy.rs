//! The policies, all driving the same fleet with the same trace. Every session, whoever picks
//! its server, is a real volley session: a probe, an offer, a Noise handshake, then the
//! session's requests — so the data path is identical and only the choice of server differs.
//!
//! **Independent clients** (BENCHMARKS.md §2). A run has `clients` client instances that share
//! nothing, and each session arrives at one of them (drawn with the trace, uniformly). Each has
//! its own balancer state: its own round-robin cursor, its own tower `Balance`, its own Prequal
//! pool and probe socket, its own volley `Client` (whose outcome reports, L7, stay its own).
//! With one client the balancer is *central*: it sees every request of the run.
//!
//! - `random`, `round-robin`: the client picks; it then probes just that server.
//! - `p2c-pending`, `p2c-peakewma`: `tower::balance::p2c::Balance` over one service per server,
//!   each wrapped in `tower::load::PendingRequests` or `tower::load::PeakEwma`; a call is a
//!   whole session.
//! - `prequal`: asynchronous load probes to each server's load port (3 per arrival, to random
//!   servers), a pool of the 16 freshest answers (100 ms at most, each reused at most twice,
//!   its in-flight count raised by each use), and the hot/cold rule: among answers whose
//!   in-flight count is at most the pool's 0.75 quantile, the lowest latency estimate; when none
//!   is, the lowest in-flight count.
//! - `oracle`: one central queue feeding every slot of the fleet: a session starts only when a
//!   slot is free, on a uniformly drawn free slot. Central whatever the number of clients.
//! - `oracle-sed`: the same queue, feeding the free slot with the shortest expected completion:
//!   the fastest server with a free slot, from the schedule's true speeds (the sinkhole and the
//!   silent server count at speed 1: the oracle knows speeds, not failures).
//! - `volley-…`: one race over the pool (or `fanout` of it) with the client's selection policy,
//!   servers answering by the answer policy. Sessions report each request's outcome to their
//!   client (`Session::report_failure`, `report_success`): the sinkhole's failures eject it (L7).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::poll_fn;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
use volley::{AnswerPolicy, Client, ClientConfig, PublicKey, SelectionPolicy};

use super::fleet::Answering;
use super::workload::{Behaviour, Job, Schedule};

/// How a volley client picks among offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pick {
    Earliest,
    Window,
}

/// How volley servers answer probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    Immediate,
    Paced,
    Gated,
}

/// A selection policy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    Random,
    RoundRobin,
    P2cPending,
    P2cPeakEwma,
    Prequal,
    Oracle,
    OracleSed,
    /// `fanout` None: every server.
    Volley {
        pick: Pick,
        answer: Answer,
        fanout: Option<u8>,
    },
}

impl Policy {
    /// The six peers, then every volley combination: pick × answer × fan-out 2, 3, all.
    pub fn all() -> Vec<Policy> {
        let mut v = Policy::peers();
        for pick in [Pick::Earliest, Pick::Window] {
            for answer in [Answer::Immediate, Answer::Paced, Answer::Gated] {
                for fanout in [Some(2), Some(3), None] {
                    v.push(Policy::Volley {
                        pick,
                        answer,
                        fanout,
                    });
                }
            }
        }
        v
    }

    /// The policies volley is compared with.
    pub fn peers() -> Vec<Policy> {
        vec![
            Policy::Random,
            Policy::RoundRobin,
            Policy::P2cPending,
            Policy::P2cPeakEwma,
            Policy::Prequal,
            Policy::Oracle,
            Policy::OracleSed,
        ]
    }

    pub fn is_volley(&self) -> bool {
        matches!(self, Policy::Volley { .. })
    }

    pub fn name(&self) -> String {
        match self {
            Policy::Random => "random".into(),
            Policy::RoundRobin => "round-robin".into(),
            Policy::P2cPending => "p2c-pending".into(),
            Policy::P2cPeakEwma => "p2c-peakewma".into(),
            Policy::Prequal => "prequal".into(),
            Policy::Oracle => "oracle".into(),
            Policy::OracleSed => "oracle-sed".into(),
            Policy::Volley {
                pick,
                answer,
                fanout,
            } => {
                let pick = match pick {
                    Pick::Earliest => "earliest",
                    Pick::Window => "window",
                };
                let answer = match answer {
                    Answer::Immediate => "immediate",
                    Answer::Paced => "paced",
                    Answer::Gated => "gated",
                };
                let d = match fanout {
                    Some(d) => format!("d{d}"),
                    None => "all".into(),
                };
                format!("volley-{pick}-{answer}-{d}")
            }
        }
    }

    /// Parses a name as printed by [`Policy::name`].
    pub fn parse(s: &str) -> Option<Policy> {
        Policy::all().into_iter().find(|p| p.name() == s)
    }

    /// How the fleet answers for this policy.
    pub fn answering(&self, lab: &VolleyKnobs) -> Answering {
        match self {
            Policy::Volley { answer, .. } => Answering {
                capacity: Some(lab.capacity),
                answer: match answer {
                    Answer::Immediate => AnswerPolicy::Immediate,
                    Answer::Paced => AnswerPolicy::Paced {
                        max_delay: lab.pace_max,
                        divisor: lab.pace_divisor,
                    },
                    Answer::Gated => AnswerPolicy::Gated {
                        max_hold: lab.max_hold,
                    },
                },
                reservation: lab.reservation,
            },
            _ => Answering {
                capacity: None,
                answer: AnswerPolicy::Immediate,
                reservation: Duration::ZERO,
            },
        }
    }
}

/// The volley server settings of a run (the same for every volley policy).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VolleyKnobs {
    pub capacity: u32,
    pub pace_max: Duration,
    pub pace_divisor: u32,
    pub max_hold: Duration,
    pub reservation: Duration,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// A request was answered with a failure, or the session closed under it.
    Failed,
    /// No session within the connect timeout, or a request unanswered within its timeout.
    Timeout,
}

/// One session as the client saw it. Times are microseconds from the run's start.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub at_us: u64,
    pub connected_us: Option<u64>,
    pub done_us: Option<u64>,
    pub server: Option<u16>,
    pub outcome: Outcome,
    /// Volley probes this session's connect sent.
    pub probes: u32,
    /// Bytes of selection traffic (probes and load-port probes, both directions).
    pub probe_bytes: u32,
    /// The winning offer's answer time (probe RTT plus any pacing), µs.
    pub answer_us: Option<u32>,
}

/// What every session of a run shares.
pub struct RunCtx {
    /// Independent client instances.
    pub clients: usize,
    /// The speed schedule (for `oracle-sed`), from `t0`.
    pub schedule: Arc<Schedule>,
    pub addrs: Vec<SocketAddr>,
    pub load_ports: Vec<SocketAddr>,
    pub key: PublicKey,
    pub t0: Instant,
    pub slots: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Default RTT for PeakEwma: the mean session length.
    pub ewma_default_rtt: Duration,
    pub ewma_decay: Duration,
    pub seed: u64,
    /// Bytes of one volley probe, as the clients send them.
    probe_size: u32,
    index: HashMap<SocketAddr, u16>,
}

impl RunCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clients: usize,
        schedule: Arc<Schedule>,
        addrs: Vec<SocketAddr>,
        load_ports: Vec<SocketAddr>,
        key: PublicKey,
        t0: Instant,
        slots: usize,
        ewma_default_rtt: Duration,
        seed: u64,
        timeouts: (Duration, Duration),
    ) -> Self {
        let index = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, i as u16))
            .collect();
        Self {
            clients: clients.max(1),
            schedule,
            addrs,
            load_ports,
            key,
            t0,
            slots,
            connect_timeout: timeouts.0,
            request_timeout: timeouts.1,
            ewma_default_rtt,
            ewma_decay: Duration::from_secs(10),
            seed,
            probe_size: ClientConfig::new(Vec::new()).probe_size as u32,
            index,
        }
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_micros() as u64
    }

    fn client(&self, policy: SelectionPolicy, fanout: Option<usize>) -> Client {
        let mut cfg = ClientConfig::new(vec![self.key]);
        cfg.policy = policy;
        cfg.fanout = fanout;
        Client::new(cfg)
    }
}

/// Opens a session on `pool` with `client` and runs the job's requests.
async fn run_session(ctx: Arc<RunCtx>, client: Client, pool: Vec<SocketAddr>, job: Job) -> Record {
    let mut rec = Record {
        at_us: job.at.as_micros() as u64,
        connected_us: None,
        done_us: None,
        server: None,
        outcome: Outcome::Timeout,
        probes: 0,
        probe_bytes: 0,
        answer_us: None,
    };
    let session = match tokio::time::timeout(ctx.connect_timeout, client.connect(&pool)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => return rec,
    };
    rec.connected_us = Some(ctx.us(Instant::now()));
    if let Some(report) = session.report() {
        rec.server = report.server.and_then(|a| ctx.index.get(&a).copied());
        rec.probes = report.stats.probes_sent as u32;
        rec.probe_bytes = rec.probes * ctx.probe_size;
        rec.answer_us = report.answer_time.map(|d| d.as_micros() as u32);
    }
    for (seq, &work) in job.work_us.iter().enumerate() {
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&(seq as u32).to_be_bytes());
        req[4..].copy_from_slice(&work.to_be_bytes());
        if session.send(&req).await.is_err() {
            rec.outcome = Outcome::Failed;
            return rec;
        }
        let deadline = tokio::time::Instant::now() + ctx.request_timeout;
        loop {
            match tokio::time::timeout_at(deadline, session.recv()).await {
                Ok(Ok(d)) if d.len() >= 5 && d[..4] == req[..4] => {
                    if d[4] != 0 {
                        // The application tells its client (L7).
                        session.report_failure();
                        rec.outcome = Outcome::Failed;
                        return rec;
                    }
                    session.report_success();
                    break;
                }
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => {
                    rec.outcome = Outcome::Failed;
                    return rec;
                }
                Err(_) => {
                    session.report_failure();
                    rec.outcome = Outcome::Timeout;
                    return rec;
                }
            }
        }
    }
    rec.done_us = Some(ctx.us(Instant::now()));
    rec.outcome = Outcome::Ok;
    session.close();
    rec
}

/// Runs `policy` over `jobs` in open loop, each job at its own client; returns every session's
/// record once all ended.
pub async fn drive(
    policy: Policy,
    ctx: Arc<RunCtx>,
    jobs: Vec<Job>,
) -> anyhow::Result<Vec<Record>> {
    let m = ctx.clients;
    let n = ctx.addrs.len();
    let handles = match policy {
        Policy::Random | Policy::RoundRobin => {
            let clients: Vec<Client> = (0..m)
                .map(|_| ctx.client(SelectionPolicy::Earliest, None))
                .collect();
            // Each client's cursor starts at its own seeded server.
            let mut starts = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x0c0_25e5);
            let mut cursors: Vec<usize> = (0..m).map(|_| starts.gen_range(0..n)).collect();
            let mut handles = Vec::with_capacity(jobs.len());
            for job in jobs {
                tokio::time::sleep_until((ctx.t0 + job.at).into()).await;
                let c = job.client(m);
                let i = if policy == Policy::Random {
                    (job.coin % n as u64) as usize
                } else {
                    cursors[c] = (cursors[c] + 1) % n;
                    cursors[c]
                };
                let pool = vec![ctx.addrs[i]];
                handles.push(tokio::spawn(run_session(
                    Arc::clone(&ctx),
                    clients[c].clone(),
                    pool,
                    job,
                )));
            }
            handles
        }
        Policy::P2cPending => {
            let per_client = (0..m)
                .map(|_| {
                    (0..n)
                        .map(|i| {
                            PendingRequests::new(
                                SessionSvc::new(&ctx, i),
                                CompleteOnResponse::default(),
                            )
                        })
                        .collect()
                })
                .collect();
            balanced(&ctx, per_client, jobs).await?
        }
        Policy::P2cPeakEwma => {
            let per_client = (0..m)
                .map(|_| {
                    (0..n)
                        .map(|i| {
                            PeakEwma::new(
                                SessionSvc::new(&ctx, i),
                                ctx.ewma_default_rtt,
                                ctx.ewma_decay.as_nanos() as f64,
                                CompleteOnResponse::default(),
                            )
                        })
                        .collect()
                })
                .collect();
            balanced(&ctx, per_client, jobs).await?
        }
        Policy::Prequal => prequal(&ctx, jobs).await?,
        Policy::Oracle => return oracle(&ctx, jobs, false).await,
        Policy::OracleSed => return oracle(&ctx, jobs, true).await,
        Policy::Volley { pick, fanout, .. } => {
            let sel = match pick {
                Pick::Earliest => SelectionPolicy::Earliest,
                Pick::Window => SelectionPolicy::window(),
            };
            let clients: Vec<Client> = (0..m)
                .map(|_| ctx.client(sel, fanout.map(usize::from)))
                .collect();
            let mut handles = Vec::with_capacity(jobs.len());
            for job in jobs {
                tokio::time::sleep_until((ctx.t0 + job.at).into()).await;
                let c = job.client(m);
                handles.push(tokio::spawn(run_session(
                    Arc::clone(&ctx),
                    clients[c].clone(),
                    ctx.addrs.clone(),
                    job,
                )));
            }
            handles
        }
    };
    collect(handles).await
}

async fn collect(handles: Vec<JoinHandle<Record>>) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await?);
    }
    Ok(out)
}

/// One fleet server as a tower service: a call is one whole session on it.
#[derive(Clone)]
struct SessionSvc {
    ctx: Arc<RunCtx>,
    client: Client,
    addr: SocketAddr,
}

impl SessionSvc {
    fn new(ctx: &Arc<RunCtx>, i: usize) -> Self {
        Self {
            ctx: Arc::clone(ctx),
            client: ctx.client(SelectionPolicy::Earliest, None),
            addr: ctx.addrs[i],
        }
    }
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Record, Infallible>> + Send>>;

impl Service<Job> for SessionSvc {
    type Response = Record;
    type Error = Infallible;
    type Future = BoxFut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> BoxFut {
        let ctx = Arc::clone(&self.ctx);
        let client = self.client.clone();
        let addr = self.addr;
        Box::pin(async move { Ok(run_session(ctx, client, vec![addr], job).await) })
    }
}

/// tower's own p2c picks from its own seeded generator.
struct TowerRng(ChaCha8Rng);

impl tower::util::rng::Rng for TowerRng {
    fn next_u64(&mut self) -> u64 {
        self.0.r#gen()
    }
}

/// One tower `Balance` per client, each over its own services and its own seeded generator;
/// every job goes through its client's balancer.
async fn balanced<S>(
    ctx: &Arc<RunCtx>,
    per_client: Vec<Vec<S>>,
    jobs: Vec<Job>,
) -> anyhow::Result<Vec<JoinHandle<Record>>>
where
    S: Service<Job, Response = Record> + tower::load::Load + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
    <S as tower::load::Load>::Metric: std::fmt::Debug,
{
    let mut balancers: Vec<_> = per_client
        .into_iter()
        .enumerate()
        .map(|(c, services)| {
            Balance::from_rng(
                ServiceList::new::<Job>(services),
                TowerRng(ChaCha8Rng::seed_from_u64(
                    ctx.seed ^ 0x9c2 ^ (c as u64) << 20,
                )),
            )
        })
        .collect();
    let m = balancers.len();
    let mut handles = Vec::with_capacity(jobs.len());
    for job in jobs {
        tokio::time::sleep_until((ctx.t0 + job.at).into()).await;
        let balance = &mut balancers[job.client(m)];
        poll_fn(|cx| balance.poll_ready(cx))
            .await
            .map_err(|e| anyhow::anyhow!("p2c not ready: {e}"))?;
        let at_us = job.at.as_micros() as u64;
        let fut = balance.call(job);
        handles.push(tokio::spawn(async move {
            match fut.await {
                Ok(r) => r,
                // SessionSvc never fails; a balancer error would be a bug in the lab.
                Err(_) => Record {
                    at_us,
                    connected_us: None,
                    done_us: None,
                    server: None,
                    outcome: Outcome::Failed,
                    probes: 0,
                    probe_bytes: 0,
                    answer_us: None,
                },
            }
        }));
    }
    Ok(handles)
}

/// The central queue: sessions wait in the client until a slot is free anywhere, then go to a
/// uniformly drawn free slot or, `sed`, to a free slot of the fastest server that has one.
async fn oracle(ctx: &Arc<RunCtx>, jobs: Vec<Job>, sed: bool) -> anyhow::Result<Vec<Record>> {
    let n = ctx.addrs.len();
    let mut free = vec![ctx.slots; n];
    let mut total_free = ctx.slots * n;
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x0ac1e);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let client = ctx.client(SelectionPolicy::Earliest, None);
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut jobs = jobs.into_iter().peekable();
    let mut handles = Vec::new();
    loop {
        while total_free > 0 && !queue.is_empty() {
            let Some(job) = queue.pop_front() else { break };
            let i = if sed {
                // The fastest server with a free slot (ties: uniform).
                let at = ctx.t0.elapsed();
                let speed = |k: usize| match ctx.schedule.behaviour(k, at) {
                    Behaviour::Work(s) => s,
                    Behaviour::Sinkhole | Behaviour::Silent => 1.0,
                };
                let mut best: Vec<usize> = Vec::new();
                let mut top = f64::NEG_INFINITY;
                for k in (0..n).filter(|&k| free[k] > 0) {
                    let s = speed(k);
                    if s > top + 1e-12 {
                        top = s;
                        best.clear();
                    }
                    if (s - top).abs() <= 1e-12 {
                        best.push(k);
                    }
                }
                best[rng.gen_range(0..best.len())]
            } else {
                let mut r = rng.gen_range(0..total_free);
                let mut i = 0;
                while r >= free[i] {
                    r -= free[i];
                    i += 1;
                }
                i
            };
            free[i] -= 1;
            total_free -= 1;
            let ctx2 = Arc::clone(ctx);
            let pool = vec![ctx.addrs[i]];
            let tx = done_tx.clone();
            let client = client.clone();
            handles.push(tokio::spawn(async move {
                let rec = run_session(ctx2, client, pool, job).await;
                let _ = tx.send(i);
                rec
            }));
        }
        let next_at = jobs.peek().map(|j| ctx.t0 + j.at);
        match next_at {
            None if queue.is_empty() => break,
            None => {
                if let Some(i) = done_rx.recv().await {
                    free[i] += 1;
                    total_free += 1;
                }
            }
            Some(at) => {
                tokio::select! {
                    biased;
                    Some(i) = done_rx.recv() => {
                        free[i] += 1;
                        total_free += 1;
                    }
                    _ = tokio::time::sleep_until(at.into()) => {
                        if let Some(job) = jobs.next() {
                            queue.push_back(job);
                        }
                    }
                }
            }
        }
    }
    collect(handles).await
}

/// Prequal's probe pool.
#[derive(Debug, Clone, Copy)]
struct Probed {
    server: usize,
    rif: u32,
    latency_us: u32,
    at: Instant,
    uses: u8,
}

const PREQUAL_PROBES_PER_ARRIVAL: usize = 3;
const PREQUAL_POOL: usize = 16;
const PREQUAL_MAX_AGE: Duration = Duration::from_millis(100);
const PREQUAL_REUSE: u8 = 2;
const PREQUAL_HOT_QUANTILE: f64 = 0.75;

/// One client's Prequal state: its probe socket and its pool, filled by its receiver task.
struct PrequalClient {
    socket: Arc<UdpSocket>,
    pool: Arc<Mutex<VecDeque<Probed>>>,
    receiver: JoinHandle<()>,
    session_client: Client,
}

async fn prequal(ctx: &Arc<RunCtx>, jobs: Vec<Job>) -> anyhow::Result<Vec<JoinHandle<Record>>> {
    let n = ctx.addrs.len();
    let mut clients = Vec::with_capacity(ctx.clients);
    for _ in 0..ctx.clients {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let pool: Arc<Mutex<VecDeque<Probed>>> = Arc::new(Mutex::new(VecDeque::new()));
        let receiver = {
            let socket = Arc::clone(&socket);
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    let Ok((len, _)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    if len < 16 {
                        continue;
                    }
                    let server = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if server >= n {
                        continue;
                    }
                    let rif = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                    let latency_us = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
                    let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
                    p.retain(|e| e.server != server);
                    if p.len() >= PREQUAL_POOL {
                        p.pop_front();
                    }
                    p.push_back(Probed {
                        server,
                        rif,
                        latency_us,
                        at: Instant::now(),
                        uses: 0,
                    });
                }
            })
        };
        clients.push(PrequalClient {
            socket,
            pool,
            receiver,
            session_client: ctx.client(SelectionPolicy::Earliest, None),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x9e0a1);
    let probe_bytes = (PREQUAL_PROBES_PER_ARRIVAL * (8 + 16)) as u32;
    let mut handles = Vec::with_capacity(jobs.len());
    for job in jobs {
        tokio::time::sleep_until((ctx.t0 + job.at).into()).await;
        let me = &clients[job.client(ctx.clients)];
        // Probes for later arrivals go out now; this arrival uses what the pool holds.
        for _ in 0..PREQUAL_PROBES_PER_ARRIVAL {
            let s = rng.gen_range(0..n);
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(s as u32).to_be_bytes());
            let _ = me.socket.try_send_to(&msg, ctx.load_ports[s]);
        }
        let pick = {
            let mut p = me.pool.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            p.retain(|e| now.duration_since(e.at) <= PREQUAL_MAX_AGE);
            prequal_pick(&mut p)
        };
        let i = pick.unwrap_or_else(|| rng.gen_range(0..n));
        let ctx2 = Arc::clone(ctx);
        let pool = vec![ctx.addrs[i]];
        let client = me.session_client.clone();
        handles.push(tokio::spawn(async move {
            let mut rec = run_session(ctx2, client, pool, job).await;
            rec.probe_bytes += probe_bytes;
            rec
        }));
    }
    for c in clients {
        c.receiver.abort();
    }
    Ok(handles)
}

/// The hot/cold rule over the pool; updates the chosen entry (its load rises, its uses count).
fn prequal_pick(pool: &mut VecDeque<Probed>) -> Option<usize> {
    if pool.is_empty() {
        return None;
    }
    let mut rifs: Vec<u32> = pool.iter().map(|e| e.rif).collect();
    rifs.sort_unstable();
    let pos = PREQUAL_HOT_QUANTILE * (rifs.len() - 1) as f64;
    let lo = rifs[pos.floor() as usize] as f64;
    let hi = rifs[pos.ceil() as usize] as f64;
    let threshold = lo + (hi - lo) * (pos - pos.floor());
    let cold = pool
        .iter()
        .enumerate()
        .filter(|(_, e)| e.rif as f64 <= threshold)
        .min_by_key(|(_, e)| (e.latency_us, e.rif))
        .map(|(k, _)| k);
    let k = match cold {
        Some(k) => k,
        None => pool
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.rif)
            .map(|(k, _)| k)?,
    };
    let server = pool[k].server;
    pool[k].rif += 1;
    pool[k].uses += 1;
    if pool[k].uses >= PREQUAL_REUSE {
        pool.remove(k);
    }
    Some(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip_and_cover_the_matrix() {
        let all = Policy::all();
        assert_eq!(all.len(), 7 + 2 * 3 * 3);
        for p in &all {
            assert_eq!(Policy::parse(&p.name()), Some(*p), "{}", p.name());
        }
        assert!(Policy::parse("volley-earliest-paced-d3").is_some());
        assert!(Policy::parse("nonsense").is_none());
    }

    #[test]
    fn prequal_prefers_a_cold_fast_server_and_spends_its_probes() {
        let now = Instant::now();
        let e = |server, rif, latency_us| Probed {
            server,
            rif,
            latency_us,
            at: now,
            uses: 0,
        };
        // Server 3 is the fastest but hot (rif 9 above the 0.75 quantile); 1 is cold and fast.
        let mut pool: VecDeque<Probed> = [
            e(0, 2, 900),
            e(1, 1, 300),
            e(2, 3, 800),
            e(3, 9, 100),
            e(4, 2, 700),
        ]
        .into_iter()
        .collect();
        assert_eq!(prequal_pick(&mut pool), Some(1));
        // Used once: its in-flight count rose to 2, still cold and still the fastest.
        assert_eq!(prequal_pick(&mut pool), Some(1));
        // Spent after two uses.
        assert!(pool.iter().all(|p| p.server != 1));
        assert_eq!(prequal_pick(&mut pool), Some(4));
        assert_eq!(prequal_pick(&mut VecDeque::new()), None);
    }
}
