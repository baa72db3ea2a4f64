//! `prequal`: asynchronous load probes to each server's load port, and the hot/cold rule over
//! each client's pool of answers ([`crate::peers::prequal`], the rule `sim` runs too).

use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use volley::{Client, SelectionPolicy};

use super::{Record, RunCtx, run_session};
use crate::peers::prequal::{self, ProbePool};
use crate::select::workload::Job;

/// One client's Prequal state: its probe socket and its pool, filled by its receiver task.
struct PrequalClient {
    socket: Arc<UdpSocket>,
    pool: Arc<Mutex<ProbePool>>,
    receiver: JoinHandle<()>,
    session_client: Client,
}

/// Each job at its client: probes for later arrivals go out, then the pool picks (a random
/// server when it is empty).
pub(super) async fn prequal(
    ctx: &Arc<RunCtx>,
    jobs: Vec<Job>,
) -> anyhow::Result<Vec<JoinHandle<Record>>> {
    let n = ctx.addrs.len();
    let mut clients = Vec::with_capacity(ctx.clients);
    for _ in 0..ctx.clients {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let pool: Arc<Mutex<ProbePool>> = Arc::default();
        let receiver = {
            let socket = Arc::clone(&socket);
            let pool = Arc::clone(&pool);
            let t0 = ctx.t0;
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
        clients.push(PrequalClient {
            socket,
            pool,
            receiver,
            session_client: ctx.client(SelectionPolicy::Earliest, None),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x9e0a1);
    let probe_bytes = (prequal::PROBES_PER_ARRIVAL * (8 + 16)) as u32;
    let mut handles = Vec::with_capacity(jobs.len());
    for job in jobs {
        tokio::time::sleep_until((ctx.t0 + job.at).into()).await;
        let me = &clients[job.client(ctx.clients)];
        // Probes for later arrivals go out now; this arrival uses what the pool holds.
        for _ in 0..prequal::PROBES_PER_ARRIVAL {
            let s = rng.gen_range(0..n);
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(s as u32).to_be_bytes());
            let _ = me.socket.try_send_to(&msg, ctx.load_ports[s]);
        }
        let pick = me
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pick(ctx.t0.elapsed());
        let i = pick.map_or_else(|| rng.gen_range(0..n), |s| s as usize);
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
