//! `random` and `round-robin`: the client picks a server with no load information (uniformly
//! from the trace's coin, or the next of its own cursor) and probes just that one.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;
use volley::{Client, SelectionPolicy};

use super::{Record, RunCtx, run_session};
use crate::select::workload::Job;

/// Each job at its client, to the server the client picks: the next of its round-robin cursor
/// (`round_robin`), or a uniformly random one.
pub(super) async fn spread(
    ctx: &Arc<RunCtx>,
    jobs: Vec<Job>,
    round_robin: bool,
) -> Vec<JoinHandle<Record>> {
    let (m, n) = (ctx.clients, ctx.addrs.len());
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
        let i = if round_robin {
            cursors[c] = (cursors[c] + 1) % n;
            cursors[c]
        } else {
            (job.coin % n as u64) as usize
        };
        let pool = vec![ctx.addrs[i]];
        handles.push(tokio::spawn(run_session(
            Arc::clone(ctx),
            clients[c].clone(),
            pool,
            job,
        )));
    }
    handles
}
