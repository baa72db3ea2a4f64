//! `oracle` and `oracle-sed`: one central queue feeding every slot of the fleet, whatever the
//! number of clients: a session starts only when a slot is free, on a uniformly drawn free slot,
//! or (`sed`) on a free slot of the fastest server that has one, from the schedule's true speeds.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use volley::SelectionPolicy;

use super::{Record, RunCtx, collect, run_session};
use crate::select::workload::{Behaviour, Job};

/// The central queue: sessions wait in the client until a slot is free anywhere, then go to a
/// uniformly drawn free slot or, `sed`, to a free slot of the fastest server that has one.
pub(super) async fn oracle(
    ctx: &Arc<RunCtx>,
    jobs: Vec<Job>,
    sed: bool,
) -> anyhow::Result<Vec<Record>> {
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
