//! `p2c-pending` and `p2c-peakewma`: `tower::balance::p2c::Balance` over one service per
//! server, each wrapped in `tower::load::PendingRequests` or `tower::load::PeakEwma`; a call is a
//! whole session. Each client has its own balancer, services and seeded generator.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::poll_fn;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
use volley::{Client, SelectionPolicy};

use super::{Outcome, Record, RunCtx, run_session};
use crate::select::workload::Job;

/// `p2c-pending`: one tower `Balance` per client over `PendingRequests` of every server.
pub(super) async fn p2c_pending(
    ctx: &Arc<RunCtx>,
    jobs: Vec<Job>,
) -> anyhow::Result<Vec<JoinHandle<Record>>> {
    let per_client = services(ctx, |svc| {
        PendingRequests::new(svc, CompleteOnResponse::default())
    });
    balanced(ctx, per_client, jobs).await
}

/// `p2c-peakewma`: one tower `Balance` per client over `PeakEwma` of every server.
pub(super) async fn p2c_peak_ewma(
    ctx: &Arc<RunCtx>,
    jobs: Vec<Job>,
) -> anyhow::Result<Vec<JoinHandle<Record>>> {
    let per_client = services(ctx, |svc| {
        PeakEwma::new(
            svc,
            ctx.ewma_default_rtt,
            ctx.ewma_decay.as_nanos() as f64,
            CompleteOnResponse::default(),
        )
    });
    balanced(ctx, per_client, jobs).await
}

/// Per client, one service per server, each wrapped by `load` (the load measure its balancer
/// weighs).
fn services<S>(ctx: &Arc<RunCtx>, load: impl Fn(SessionSvc) -> S) -> Vec<Vec<S>> {
    (0..ctx.clients)
        .map(|_| {
            (0..ctx.addrs.len())
                .map(|i| load(SessionSvc::new(ctx, i)))
                .collect()
        })
        .collect()
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
            // SessionSvc never fails; a balancer error would be a bug in the lab.
            fut.await
                .unwrap_or_else(|_| Record::unconnected(at_us, Outcome::Failed))
        }));
    }
    Ok(handles)
}
