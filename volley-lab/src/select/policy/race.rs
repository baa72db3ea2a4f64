//! `volley-…`: each session is one race over the pool (or `fanout` of it) by its client's
//! `volley::Client`, with the policy's selection rule; its sessions report each request's
//! outcome to that client (L7).

use std::sync::Arc;

use tokio::task::JoinHandle;
use volley::{Client, SelectionPolicy};

use super::{Pick, Record, RunCtx, run_session};
use crate::select::workload::Job;

/// Each job at its client, raced over the pool.
pub(super) async fn race(
    ctx: &Arc<RunCtx>,
    jobs: Vec<Job>,
    pick: Pick,
    fanout: Option<u8>,
) -> Vec<JoinHandle<Record>> {
    let m = ctx.clients;
    let sel = match pick {
        Pick::Earliest => SelectionPolicy::Earliest,
        Pick::Window => SelectionPolicy::window(),
        Pick::Path => SelectionPolicy::path(),
    };
    let clients: Vec<Client> = (0..m)
        .map(|_| ctx.client(sel, fanout.map(usize::from)))
        .collect();
    let mut handles = Vec::with_capacity(jobs.len());
    for job in jobs {
        tokio::time::sleep_until((ctx.t0 + job.at).into()).await;
        let c = job.client(m);
        handles.push(tokio::spawn(run_session(
            Arc::clone(ctx),
            clients[c].clone(),
            ctx.addrs.clone(),
            job,
        )));
    }
    handles
}
