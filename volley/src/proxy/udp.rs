//! The client side of the UDP proxy: one local socket; each flow — each application source
//! address — gets its own volley session, raced over the pool when the flow's first datagram
//! arrives, and is forgotten after [`UdpProxyConfig::idle_timeout`] without traffic either way.
//! A new flow that cannot connect drops what it queued and is tried again on its next datagram;
//! a flow whose server goes away fails over with its session (R5). The pool may be a
//! [`Pool`] kept current from DNS: each new flow races the pool as it is then.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::client::Client;
use crate::discovery::Pool;
use crate::error::Error;
use crate::proxy::{ProxyMetrics, ProxyStats};

/// How the client side of a UDP proxy behaves.
#[derive(Debug, Clone)]
pub struct UdpProxyConfig {
    /// A flow with no datagram either way for this long ends (its session closes). Default 60 s.
    pub idle_timeout: Duration,
    /// Datagrams a flow queues while its session comes up; beyond, they are dropped. Default 64.
    pub queue: usize,
    /// Most flows at once; datagrams of new flows beyond it are dropped. Default 65,536.
    pub max_flows: usize,
}

impl Default for UdpProxyConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            queue: 64,
            max_flows: 65_536,
        }
    }
}

enum FlowEvent {
    /// The flow (application address, flow number) ended; whether it had a session.
    Ended(SocketAddr, u64, bool),
}

/// Serves the UDP proxy on `socket` until `shutdown` resolves: flows from the applications
/// that send to it race `pool` with `client`.
pub async fn run(
    socket: UdpSocket,
    client: Client,
    pool: impl Into<Pool>,
    config: UdpProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ProxyStats, Error> {
    let metrics = Arc::new(ProxyMetrics::default());
    run_with_metrics(socket, client, pool, config, metrics, shutdown).await
}

/// Like [`run`], counting into `metrics` as it goes (serve them with
/// [`crate::metrics::proxy_registry`]).
pub async fn run_with_metrics(
    socket: UdpSocket,
    client: Client,
    pool: impl Into<Pool>,
    config: UdpProxyConfig,
    metrics: Arc<ProxyMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<ProxyStats, Error> {
    let pool = pool.into();
    if pool.current().is_empty() {
        return Err(Error::InvalidArgument("the proxy's pool is empty"));
    }
    let socket = Arc::new(socket);
    // Each flow's number tells a late end apart from the flow that replaced it.
    let mut flows: HashMap<SocketAddr, (u64, mpsc::Sender<Bytes>)> = HashMap::new();
    let mut next_flow = 0u64;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Datagrams are read a batch per system call (recvmmsg) when several are waiting.
    let mut rx = crate::udp::RecvBatch::new(false);
    let shared = |events: &mpsc::UnboundedSender<FlowEvent>| Shared {
        socket: Arc::clone(&socket),
        client: client.clone(),
        pool: pool.clone(),
        idle_timeout: config.idle_timeout,
        events: events.clone(),
        metrics: Arc::clone(&metrics),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            ready = socket.readable() => {
                ready.map_err(Error::Io)?;
                // A few batches, then the other branches get a turn.
                for _ in 0..4 {
                    match rx.recv(&socket) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if crate::socket::transient(&e) => continue,
                        Err(e) => return Err(Error::Io(e)),
                    }
                    for (meta, data) in rx.iter() {
                        let from = meta.from;
                        if data.len() > crate::MAX_APP_DATAGRAM {
                            // Larger than a session carries: dropped, the flow goes on.
                            metrics.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let data = Bytes::copy_from_slice(data);
                        let data = if let Some((_, flow)) = flows.get(&from) {
                            match flow.try_send(data) {
                                Ok(()) => continue,
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    metrics.dropped.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                // The flow just ended (idle) and its end is not yet processed:
                                // this datagram starts the next one.
                                Err(mpsc::error::TrySendError::Closed(data)) => {
                                    flows.remove(&from);
                                    data
                                }
                            }
                        } else {
                            data
                        };
                        if flows.len() >= config.max_flows {
                            metrics.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        metrics.flows.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = mpsc::channel(config.queue.max(1));
                        let _ = tx.try_send(data);
                        let number = next_flow;
                        next_flow += 1;
                        flows.insert(from, (number, tx));
                        tokio::spawn(flow(from, number, rx, shared(&events_tx)));
                    }
                }
            }
            Some(FlowEvent::Ended(app, number, connected)) = events.recv() => {
                if flows.get(&app).is_some_and(|(n, _)| *n == number) {
                    flows.remove(&app);
                }
                if !connected {
                    metrics.connect_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = &mut shutdown => break,
        }
    }
    let stats = metrics.stats();
    info!(?stats, "udp proxy stops");
    Ok(stats)
}

/// What every flow of one proxy shares.
struct Shared {
    socket: Arc<UdpSocket>,
    client: Client,
    pool: Pool,
    idle_timeout: Duration,
    events: mpsc::UnboundedSender<FlowEvent>,
    metrics: Arc<ProxyMetrics>,
}

/// One flow: a session with the race's winner, datagrams both ways, until idle.
async fn flow(app: SocketAddr, number: u64, mut from_app: mpsc::Receiver<Bytes>, shared: Shared) {
    let Shared {
        socket,
        client,
        pool,
        idle_timeout,
        events,
        metrics,
    } = shared;
    // The pool as it is now (a DNS pool may have changed since the last flow), in one address
    // family.
    let servers = crate::discovery::one_family(pool.current());
    let session = match client.connect(&servers).await {
        Ok(s) => s,
        Err(e) => {
            info!(%app, error = %e, "flow: no session; its datagrams are dropped");
            let _ = events.send(FlowEvent::Ended(app, number, false));
            return;
        }
    };
    debug!(%app, server = %session.remote(), "flow: session up");
    if let Some(report) = session.report() {
        if let Some(t) = report.answer_time {
            metrics.answer_times.observe(t.as_secs_f64());
        }
        if let Some(t) = report.handshake_time {
            metrics.handshake_times.observe(t.as_secs_f64());
        }
    }
    metrics.open.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            data = from_app.recv() => {
                let Some(data) = data else { break };
                if session.send_bytes(data).await.is_err() {
                    break;
                }
            }
            reply = session.recv() => {
                match reply {
                    Ok(reply) => {
                        let _ = socket.send_to(&reply, app).await;
                    }
                    Err(_) => break,
                }
            }
            _ = tokio::time::sleep(idle_timeout) => {
                debug!(%app, "flow: idle, ended");
                break;
            }
        }
    }
    metrics.open.fetch_sub(1, Ordering::Relaxed);
    let _ = events.send(FlowEvent::Ended(app, number, true));
}
