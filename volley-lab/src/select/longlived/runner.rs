//! The open-loop runner: one dispatcher task per client, each driving its client's
//! `tower::Service` — `ready()`, then `call(request)` — for the client's arrivals in order, each
//! call a task of its own; and the arrivals handed to the dispatchers at their scheduled times
//! by a loop that never waits for any of them. A client whose policy is not ready holds only its
//! own later requests back, and their wait counts: latency runs from the scheduled arrival.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::{LlReply, LlRequest};
use crate::select::policy::{Outcome, Record};
use crate::select::workload::Job;

/// Every request's record, filled in as they end.
type Records = Arc<Mutex<Vec<Option<Record>>>>;

/// Replays `jobs` (times from `t0`) over `clients` — one service per client, each job to the
/// client its trace draw names — in open loop; a request not answered within `deadline` of its
/// scheduled arrival is a timeout. Returns every request's record in the jobs' order once all
/// ended.
pub async fn run<S>(t0: Instant, clients: Vec<S>, jobs: Vec<Job>, deadline: Duration) -> Vec<Record>
where
    S: Service<LlRequest, Response = LlReply> + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    let m = clients.len().max(1);
    let at: Vec<u64> = jobs.iter().map(|j| j.at.as_micros() as u64).collect();
    let records: Records = Arc::new(Mutex::new(vec![None; jobs.len()]));
    let mut senders = Vec::with_capacity(m);
    let mut dispatchers = Vec::with_capacity(m);
    for service in clients {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        dispatchers.push(tokio::spawn(dispatch(
            service,
            rx,
            t0,
            deadline,
            Arc::clone(&records),
        )));
    }
    if !senders.is_empty() {
        for (index, job) in jobs.into_iter().enumerate() {
            tokio::time::sleep_until(t0 + job.at).await;
            let c = job.client(senders.len());
            // A dispatcher ends only once its sender is dropped, below.
            let _ = senders[c].send((index, job));
        }
    }
    drop(senders);
    for d in dispatchers {
        if let Ok(calls) = d.await {
            for call in calls {
                let _ = call.await;
            }
        }
    }
    let mut records = records.lock().unwrap_or_else(|e| e.into_inner());
    records
        .iter_mut()
        .zip(at)
        // Every request is recorded by its dispatcher or its call; one that was not (a task
        // that panicked) counts as never answered.
        .map(|(r, at)| {
            r.take()
                .unwrap_or_else(|| Record::unconnected(at, Outcome::Timeout))
        })
        .collect()
}

/// One client's dispatcher: its arrivals in order, each sent once the service is ready (or
/// recorded as a timeout when its deadline passes first); returns its calls' tasks.
async fn dispatch<S>(
    mut service: S,
    mut arrivals: mpsc::UnboundedReceiver<(usize, Job)>,
    t0: Instant,
    deadline: Duration,
    records: Records,
) -> Vec<JoinHandle<()>>
where
    S: Service<LlRequest, Response = LlReply> + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    let us = move |t: Instant| t.saturating_duration_since(t0).as_micros() as u64;
    let mut calls = Vec::new();
    while let Some((index, job)) = arrivals.recv().await {
        let at_us = job.at.as_micros() as u64;
        let due = t0 + job.at + deadline;
        let record = |r: Record| {
            records.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(r);
        };
        if Instant::now() >= due {
            record(Record::unconnected(at_us, Outcome::Timeout));
            continue;
        }
        match tokio::time::timeout_at(due, service.ready()).await {
            Err(_) => {
                record(Record::unconnected(at_us, Outcome::Timeout));
                continue;
            }
            Ok(Err(_)) => {
                record(Record::unconnected(at_us, Outcome::Failed));
                continue;
            }
            Ok(Ok(_)) => {}
        }
        let sent = Instant::now();
        let call = service.call(LlRequest {
            index,
            at: job.at,
            work_us: job.work_us.first().copied().unwrap_or(0),
            coin: job.coin,
        });
        let records = Arc::clone(&records);
        calls.push(tokio::spawn(async move {
            let mut rec = Record::unconnected(at_us, Outcome::Timeout);
            rec.connected_us = Some(us(sent));
            match tokio::time::timeout_at(due, call).await {
                Ok(Ok(reply)) => {
                    rec.outcome = reply.outcome;
                    rec.server = reply.server;
                    rec.probes = reply.probes;
                    rec.probe_bytes = reply.probe_bytes;
                    rec.answer_us = reply.answer_us;
                    if reply.outcome == Outcome::Ok {
                        rec.done_us = Some(us(Instant::now()));
                    }
                }
                Ok(Err(_)) => rec.outcome = Outcome::Failed,
                Err(_) => rec.outcome = Outcome::Timeout,
            }
            records.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(rec);
        }));
    }
    calls
}
