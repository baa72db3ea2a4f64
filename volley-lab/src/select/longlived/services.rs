//! The long-lived policies as `tower::Service`s, one per client, each with its own state (the
//! oracle excepted: central by definition). [`build`] makes a run's services.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
use tower::{BoxError, Service, ServiceExt};
use volley::{Client, Pool, PoolConfig, SelectionPolicy};

use super::conn::{Answer, Conn, ConnError, PlainClient};
use super::{LlPolicy, LlReply, LlRequest, LlService};
use crate::peers::c3::{C3, C3Config};
use crate::peers::prequal::{self, ProbePool};
use crate::peers::wrr::{Wrr, WrrConfig};
use crate::select::policy::{Outcome, RunCtx, run_session};
use crate::select::workload::{Behaviour, Job};

type BoxFuture = Pin<Box<dyn Future<Output = Result<LlReply, BoxError>> + Send>>;

/// Every client's service for `policy` in the run `ctx` describes (its connections opened).
pub async fn build(policy: LlPolicy, ctx: &Arc<RunCtx>) -> anyhow::Result<Vec<LlService>> {
    let m = ctx.clients;
    let mut out: Vec<LlService> = Vec::with_capacity(m);
    if policy == LlPolicy::VolleyRace {
        for _ in 0..m {
            out.push(LlService::new(Race {
                ctx: Arc::clone(ctx),
                client: ctx.client(SelectionPolicy::window(), Some(3)),
            }));
        }
        return Ok(out);
    }
    if let Some(k) = policy.pool_members() {
        for _ in 0..m {
            let client = ctx.client(SelectionPolicy::window(), None);
            let config = PoolConfig::members(k);
            // The fleet's reply: `seq u32, status u8` (0 done, 1 failed), then the server.
            let failed: volley::ReplyClassifier = Arc::new(|reply| reply.get(4) == Some(&1));
            let pool = Pool::connect_with(&client, &ctx.addrs, config, failed)
                .await
                .map_err(|e| anyhow::anyhow!("a pool of {k} could not open: {e}"))?;
            // The pool's opening race is counted with the rest.
            ctx.races.fetch_add(1, Ordering::Relaxed);
            out.push(LlService::new(PoolSvc {
                races_seen: Arc::new(AtomicU64::new(pool.stats().races)),
                ctx: Arc::clone(ctx),
                pool,
            }));
        }
        return Ok(out);
    }
    if policy == LlPolicy::OracleSed {
        let plain = PlainClient::connect(&ctx.direct_ports, 0xc, ctx.connect_timeout).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(oracle(Arc::clone(ctx), plain, rx));
        for _ in 0..m {
            out.push(LlService::new(Oracle { tx: tx.clone() }));
        }
        return Ok(out);
    }
    let n = ctx.direct_ports.len();
    let mut starts = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x0c0_25e5);
    for c in 0..m {
        let plain = PlainClient::connect(&ctx.direct_ports, c as u64, ctx.connect_timeout).await?;
        let conns: Vec<Conn> = (0..n)
            .map(|server| Conn {
                client: Arc::clone(&plain),
                server,
            })
            .collect();
        let seed = ctx.seed ^ ((c as u64) << 20);
        let service = match policy {
            LlPolicy::P2cPending => {
                let loaded = conns
                    .into_iter()
                    .map(|s| PendingRequests::new(s, CompleteOnResponse::default()))
                    .collect();
                balanced(loaded, seed)
            }
            LlPolicy::P2cPeakEwma => {
                let loaded = conns
                    .into_iter()
                    .map(|s| {
                        PeakEwma::new(
                            s,
                            ctx.ewma_default_rtt,
                            ctx.ewma_decay.as_nanos() as f64,
                            CompleteOnResponse::default(),
                        )
                    })
                    .collect();
                balanced(loaded, seed)
            }
            LlPolicy::RoundRobin => LlService::new(RoundRobin {
                conns,
                next: starts.gen_range(0..n.max(1)),
            }),
            LlPolicy::Prequal => LlService::new(PrequalSvc::new(ctx, conns, seed).await?),
            LlPolicy::Wrr => LlService::new(WrrSvc {
                state: Arc::new(Mutex::new(Wrr::new(n, WrrConfig::LAB, seed ^ 0x3a58))),
                conns,
                t0: ctx.t0,
            }),
            LlPolicy::C3 => LlService::new(C3Svc {
                state: Arc::new(Mutex::new(C3::new(n, m, C3Config::PAPER, ctx.t0.elapsed()))),
                conns: conns.into(),
                backlog: (0..n).map(|_| tokio::sync::Mutex::new(())).collect(),
                t0: ctx.t0,
            }),
            LlPolicy::VolleyRace
            | LlPolicy::OracleSed
            | LlPolicy::VolleyPool2
            | LlPolicy::VolleyPool3
            | LlPolicy::VolleyPool4 => {
                anyhow::bail!("{} is built above", policy.name())
            }
        };
        out.push(service);
    }
    Ok(out)
}

/// tower's p2c picks from its own seeded generator.
struct TowerRng(ChaCha8Rng);

impl tower::util::rng::Rng for TowerRng {
    fn next_u64(&mut self) -> u64 {
        self.0.r#gen()
    }
}

/// A tower p2c `Balance` over one client's loaded connections.
fn balanced<S>(services: Vec<S>, seed: u64) -> LlService
where
    S: Service<LlRequest, Response = Answer, Error = ConnError>
        + tower::load::Load
        + Send
        + 'static,
    S::Future: Send + 'static,
    <S as tower::load::Load>::Metric: std::fmt::Debug,
{
    let balance = Balance::from_rng(
        ServiceList::new::<LlRequest>(services),
        TowerRng(ChaCha8Rng::seed_from_u64(seed ^ 0x9c2)),
    );
    LlService::new(balance.map_response(LlReply::from))
}

/// A connection's answer as the policy's reply.
fn answered(call: impl Future<Output = Result<Answer, ConnError>> + Send + 'static) -> BoxFuture {
    Box::pin(async move { Ok(LlReply::from(call.await?)) })
}

/// `ll-round-robin`: the client's own cursor over the servers.
struct RoundRobin {
    conns: Vec<Conn>,
    next: usize,
}

impl Service<LlRequest> for RoundRobin {
    type Response = LlReply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlRequest) -> BoxFuture {
        let n = self.conns.len();
        let Some(conn) = self.conns.get_mut(self.next % n.max(1)) else {
            return Box::pin(async { Err("no server".into()) });
        };
        self.next = (self.next + 1) % n;
        answered(conn.call(req))
    }
}

/// `ll-prequal`: per request, Prequal's load probes (for later requests) and the hot/cold pick
/// from the client's pool; a random server while the pool is empty.
struct PrequalSvc {
    conns: Vec<Conn>,
    socket: Arc<UdpSocket>,
    pool: Arc<Mutex<ProbePool>>,
    receiver: JoinHandle<()>,
    load_ports: Vec<SocketAddr>,
    rng: ChaCha8Rng,
    t0: Instant,
}

impl Drop for PrequalSvc {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

impl PrequalSvc {
    async fn new(ctx: &Arc<RunCtx>, conns: Vec<Conn>, seed: u64) -> anyhow::Result<PrequalSvc> {
        let n = conns.len();
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let pool: Arc<Mutex<ProbePool>> = Arc::default();
        let receiver = {
            let (socket, pool, t0) = (Arc::clone(&socket), Arc::clone(&pool), ctx.t0);
            tokio::spawn(async move {
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
            })
        };
        Ok(PrequalSvc {
            conns,
            socket,
            pool,
            receiver,
            load_ports: ctx.load_ports.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x9e0a1),
            t0: ctx.t0,
        })
    }
}

impl Service<LlRequest> for PrequalSvc {
    type Response = LlReply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlRequest) -> BoxFuture {
        let n = self.conns.len();
        if n == 0 {
            return Box::pin(async { Err("no server".into()) });
        }
        for _ in 0..prequal::PROBES_PER_ARRIVAL {
            let s = self.rng.gen_range(0..n);
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(s as u32).to_be_bytes());
            let _ = self.socket.try_send_to(&msg, self.load_ports[s]);
        }
        let pick = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pick(self.t0.elapsed());
        let i = pick.map_or_else(|| self.rng.gen_range(0..n), |s| s as usize % n);
        let call = self.conns[i].call(req);
        Box::pin(async move {
            let mut reply = LlReply::from(call.await?);
            // Each probe and its answer: 8 bytes out, 24 back.
            reply.probe_bytes = (prequal::PROBES_PER_ARRIVAL * (8 + 24)) as u32;
            Ok(reply)
        })
    }
}

/// `ll-wrr`: the client's weighted round robin, its weights from every reply's report.
struct WrrSvc {
    state: Arc<Mutex<Wrr>>,
    conns: Vec<Conn>,
    t0: Instant,
}

impl Service<LlRequest> for WrrSvc {
    type Response = LlReply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlRequest) -> BoxFuture {
        let pick = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pick(self.t0.elapsed());
        let Some(conn) = pick.and_then(|i| self.conns.get_mut(i)) else {
            return Box::pin(async { Err("no server".into()) });
        };
        let (i, call) = (conn.server, conn.call(req));
        let (state, t0) = (Arc::clone(&self.state), self.t0);
        Box::pin(async move {
            let a = call.await?;
            let r = a.report;
            state.lock().unwrap_or_else(|e| e.into_inner()).on_report(
                i,
                r.qps,
                r.eps,
                r.utilisation,
                t0.elapsed(),
            );
            Ok(LlReply::from(a))
        })
    }
}

/// The servers that hold a request's key, C3's replica group: 3, as in the paper's Cassandra
/// (replication factor 3).
pub const C3_REPLICAS: usize = 3;

/// A request's replica group: [`C3_REPLICAS`] consecutive servers from the one its coin draws
/// (keys uniformly random, as absim's uniform access pattern; fewer on a smaller fleet).
pub fn replica_group(coin: u64, servers: usize) -> Vec<usize> {
    let n = servers.max(1);
    let first = (coin % n as u64) as usize;
    (0..C3_REPLICAS.min(n)).map(|k| (first + k) % n).collect()
}

/// `ll-c3`: C3's ranking and rate control among each request's replica group. Always ready: a
/// request whose group has no token waits in the group's backlog queue (a fair lock per group,
/// first in first out) inside its call, as absim's per-group backpressure scheduler; the wait
/// counts in its latency.
struct C3Svc {
    state: Arc<Mutex<C3>>,
    conns: Arc<[Conn]>,
    /// One backlog queue per replica group (named by its first server).
    backlog: Arc<[tokio::sync::Mutex<()>]>,
    t0: Instant,
}

/// A request C3 counts as outstanding until its reply, or until it is given up.
struct Outstanding {
    state: Arc<Mutex<C3>>,
    replica: usize,
    answered: bool,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if !self.answered {
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .on_abandon(self.replica);
        }
    }
}

impl Service<LlRequest> for C3Svc {
    type Response = LlReply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlRequest) -> BoxFuture {
        let group = replica_group(req.coin, self.conns.len());
        let (state, conns, backlog, t0) = (
            Arc::clone(&self.state),
            Arc::clone(&self.conns),
            Arc::clone(&self.backlog),
            self.t0,
        );
        Box::pin(async move {
            let Some(queue) = group.first().and_then(|&g| backlog.get(g)) else {
                return Err("no server".into());
            };
            let turn = queue.lock().await;
            let i = loop {
                let granted = state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .try_send(&group, t0.elapsed());
                match granted {
                    Ok(i) => break i,
                    Err(wait) => tokio::time::sleep(wait).await,
                }
            };
            drop(turn);
            let mut outstanding = Outstanding {
                state,
                replica: i,
                answered: false,
            };
            let Some(conn) = conns.get(i) else {
                return Err("no server".into());
            };
            let sent = Instant::now();
            let a = conn.client.request(conn.server, req.work_us).await?;
            let r = a.report;
            outstanding
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .on_reply(
                    i,
                    t0.elapsed(),
                    sent.elapsed(),
                    f64::from(r.queue),
                    Duration::from_micros(u64::from(r.service_us)),
                );
            outstanding.answered = true;
            Ok(LlReply::from(a))
        })
    }
}

/// `ll-volley-race`: every request a one-request volley session, raced over the whole fleet.
struct Race {
    ctx: Arc<RunCtx>,
    client: Client,
}

impl Service<LlRequest> for Race {
    type Response = LlReply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlRequest) -> BoxFuture {
        self.ctx.races.fetch_add(1, Ordering::Relaxed);
        let (ctx, client) = (Arc::clone(&self.ctx), self.client.clone());
        let job = Job {
            at: req.at,
            work_us: vec![req.work_us],
            coin: req.coin,
            client_coin: 0,
        };
        Box::pin(async move {
            let pool = ctx.addrs.clone();
            let rec = run_session(ctx, client, pool, job).await;
            Ok(LlReply {
                server: rec.server,
                outcome: rec.outcome,
                probes: rec.probes,
                probe_bytes: rec.probe_bytes,
                answer_us: rec.answer_us,
            })
        })
    }
}

/// `ll-volley-pool-k*`: a client's `volley::Pool`, each request a REQUEST on its best member
/// (the fleet's volley servers answer it with the seq, a status and their index).
struct PoolSvc {
    ctx: Arc<RunCtx>,
    pool: Pool,
    /// The pool's races already added to the run's count.
    races_seen: Arc<AtomicU64>,
}

impl Service<LlRequest> for PoolSvc {
    type Response = LlReply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.pool.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: LlRequest) -> BoxFuture {
        let mut body = Vec::with_capacity(8);
        body.extend_from_slice(&(req.index as u32).to_be_bytes());
        body.extend_from_slice(&req.work_us.to_be_bytes());
        let answer = self.pool.call(volley::Bytes::from(body));
        let (ctx, pool, seen) = (
            Arc::clone(&self.ctx),
            self.pool.clone(),
            Arc::clone(&self.races_seen),
        );
        Box::pin(async move {
            let result = answer.await;
            // Races the pool ran since (replacements), into the run's count.
            let races = pool.stats().races;
            let before = seen.swap(races, Ordering::Relaxed);
            ctx.races
                .fetch_add(races.saturating_sub(before), Ordering::Relaxed);
            let reply = match result {
                Ok(reply) => reply,
                // A dropped or lost request: failed, from no known server.
                Err(_) => {
                    return Ok(LlReply {
                        server: None,
                        outcome: Outcome::Failed,
                        probes: 0,
                        probe_bytes: 0,
                        answer_us: None,
                    });
                }
            };
            let (status, server) = match reply.get(4..7) {
                Some(r) => (r[0], Some(u16::from_be_bytes([r[1], r[2]]))),
                None => (1, None),
            };
            Ok(LlReply::answered(server, status))
        })
    }
}

/// A request handed to the central oracle, and where its answer goes.
type Queued = (LlRequest, oneshot::Sender<Result<Answer, ConnError>>);

/// `ll-oracle-sed`: every client's requests go to one central queue.
struct Oracle {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Service<LlRequest> for Oracle {
    type Response = LlReply;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlRequest) -> BoxFuture {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send((req, tx));
        Box::pin(async move {
            sent.map_err(|_| "the oracle is gone")?;
            let answer = rx.await.map_err(|_| "the oracle dropped the request")?;
            Ok(LlReply::from(answer?))
        })
    }
}

/// The oracle's queue: a request leaves it only when the fleet has a free slot (by the
/// requests the oracle has sent and not yet had answered), for a free slot of the fastest
/// server that has one (the schedule's true speeds; the sinkhole and the silent server count at
/// speed 1: the oracle knows speeds, not failures; ties drawn uniformly). A request whose
/// caller gave up is dropped from the queue. A slot is free again at the reply, or after the
/// request timeout when none comes.
async fn oracle(
    ctx: Arc<RunCtx>,
    plain: Arc<PlainClient>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let n = plain.servers();
    let mut free = vec![ctx.slots; n];
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x0ac1e);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut open = true;
    loop {
        while free.iter().any(|&f| f > 0) {
            let Some((req, answer)) = queue.pop_front() else {
                break;
            };
            if answer.is_closed() {
                continue;
            }
            let now = ctx.t0.elapsed();
            let speed = |k: usize| match ctx.schedule.behaviour(k, now) {
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
            let i = best[rng.gen_range(0..best.len())];
            free[i] -= 1;
            let (plain, done, timeout) = (Arc::clone(&plain), done_tx.clone(), ctx.request_timeout);
            tokio::spawn(async move {
                let r = tokio::time::timeout(timeout, plain.request(i, req.work_us)).await;
                let _ = done.send(i);
                let _ = answer.send(r.unwrap_or(Err(ConnError::Unanswered(i))));
            });
        }
        if !open && queue.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            Some(i) = done_rx.recv() => free[i] += 1,
            r = rx.recv(), if open => match r {
                Some(q) => queue.push_back(q),
                None => open = false,
            },
            else => return,
        }
    }
}
