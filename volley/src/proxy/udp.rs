//! The client side of the UDP proxy ([`UdpProxy`]): one local socket; each flow — each
//! application source address — gets its own volley session, raced over the pool when the
//! flow's first datagram arrives, and is forgotten after its idle timeout without traffic
//! either way. A new flow that cannot connect drops what it queued and is tried again on its
//! next datagram; a flow whose server goes away fails over with its session. The pool may be a
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
use tracing::{debug, info, warn};
use volley_proto::{CloseCode, CloseReason};

use crate::client::Client;
use crate::discovery::Pool;
use crate::error::Error;
use crate::proxy::{ProxyMetrics, ProxyStats};

/// The client side of a UDP proxy: applications send their datagrams to a local UDP socket as
/// if it were the service, and each of their flows (a source address) races the pool for a
/// volley session of its own; the answers come back from the same socket.
///
/// Built with options, then [`UdpProxy::serve`]d on a socket:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use std::time::Duration;
/// use tokio::net::UdpSocket;
/// use volley::proxy::{UdpForward, UdpProxy};
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// // The service: a plain UDP echo that knows nothing of volley.
/// let service = UdpSocket::bind("127.0.0.1:0").await?;
/// let backend = service.local_addr()?;
/// tokio::spawn(async move {
///     let mut buf = [0u8; 1500];
///     while let Ok((n, from)) = service.recv_from(&mut buf).await {
///         let _ = service.send_to(&buf[..n], from).await;
///     }
/// });
/// // The server side forwards each session to it.
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// tokio::spawn(UdpForward::new(server, backend).serve(std::future::pending()));
///
/// // The client side: the application talks to `proxy` instead of `backend`.
/// let socket = UdpSocket::bind("127.0.0.1:0").await?;
/// let proxy = socket.local_addr()?;
/// let client = Client::new(ClientConfig::new(vec![key.public()]));
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let running = tokio::spawn(
///     UdpProxy::new(client, pool)
///         .idle_timeout(Duration::from_secs(10))
///         .serve(socket, async { let _ = stopped.await; }),
/// );
///
/// let app = UdpSocket::bind("127.0.0.1:0").await?;
/// app.send_to(b"hello", proxy).await?;
/// let mut buf = [0u8; 64];
/// let (n, _) = app.recv_from(&mut buf).await?;
/// assert_eq!(&buf[..n], b"hello");
///
/// let _ = stop.send(());
/// let stats = running.await.unwrap()?;
/// assert_eq!(stats.flows, 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a proxy does nothing until it is served"]
pub struct UdpProxy {
    client: Client,
    pool: Pool,
    config: UdpProxyConfig,
    metrics: Option<Arc<ProxyMetrics>>,
    drain: crate::Drain,
}

/// The options of a [`UdpProxy`], with their defaults.
#[derive(Debug, Clone)]
struct UdpProxyConfig {
    idle_timeout: Duration,
    queue: usize,
    max_flows: usize,
    early_data: bool,
}

impl Default for UdpProxyConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            queue: 64,
            max_flows: 65_536,
            early_data: false,
        }
    }
}

impl UdpProxy {
    /// A proxy whose flows race `pool` (fixed addresses, or a [`Pool`] kept current from DNS)
    /// with `client`, with the default options.
    /// Every session proves `client`'s key ([`ClientConfig::key`](crate::ClientConfig::key)):
    /// servers with an allow-list serve only listed keys. A key they do not list fails each
    /// connect with [`ConnectError::HandshakeTimeout`](crate::ConnectError::HandshakeTimeout),
    /// logged as such; a key removed from the list ends its sessions (`Remote(REVOKED)`).
    pub fn new(client: Client, pool: impl Into<Pool>) -> Self {
        Self {
            client,
            pool: pool.into(),
            config: UdpProxyConfig::default(),
            metrics: None,
            drain: crate::Drain::default(),
        }
    }

    /// How to end once `serve`'s shutdown resolves: with a drain, a datagram from an
    /// application address without a flow starts none (it is dropped and counted), and the
    /// flows open go on until they end (idle), the drain's timeout passes or its stop
    /// resolves; then the rest end. Without one (the default), every flow ends at once.
    pub fn drain(mut self, drain: crate::Drain) -> Self {
        self.drain = drain;
        self
    }

    /// A flow with no datagram either way for this long ends, and its session closes; the
    /// application's next datagram starts a new flow. Default 60 s.
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.config.idle_timeout = idle_timeout;
        self
    }

    /// Datagrams a flow holds while its session comes up (and while the session's own send
    /// queue is full); beyond, they are dropped and counted. Default 64, at least 1.
    pub fn queue(mut self, queue: usize) -> Self {
        self.config.queue = queue;
        self
    }

    /// Most flows at once; datagrams that would start another are dropped and counted.
    /// Default 65,536.
    pub fn max_flows(mut self, max_flows: usize) -> Self {
        self.config.max_flows = max_flows;
        self
    }

    /// Whether each new flow's first datagram rides in its session's handshake as early data
    /// ([`Client::connect_with_early`], PROTOCOL.md §4.8): a flow's first answer then comes
    /// one round trip sooner. Default false: early data is encrypted without forward secrecy
    /// (a later theft of the server's private key reveals it), which a proxy cannot judge for
    /// the protocol it carries. (Its other cost, that a flow's first datagram may reach two
    /// servers when the first never answers the handshake, is within UDP's own contract.) A
    /// first datagram longer than [`crate::MAX_EARLY_DATA`] goes after the handshake.
    pub fn early_data(mut self, early_data: bool) -> Self {
        self.config.early_data = early_data;
        self
    }

    /// Counts into `metrics` as the proxy runs (to watch it, or to serve it with
    /// [`crate::metrics::Metrics::proxy`]). Without it, the proxy counts for itself only.
    pub fn metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves the proxy on `socket` until `shutdown` resolves, and returns what it counted.
    /// [`Error::InvalidArgument`] when the pool is empty, [`Error::Io`] when the socket fails.
    pub async fn serve(
        self,
        socket: UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ProxyStats, Error> {
        let Self {
            client,
            pool,
            config,
            metrics,
            drain,
        } = self;
        run(
            socket,
            client,
            pool,
            config,
            metrics.unwrap_or_default(),
            shutdown,
            drain,
        )
        .await
    }
}

/// Application datagrams the proxy reads per system call (64 KiB each: 1 MiB in all).
const APP_RECV_SLOTS: usize = 16;

enum FlowEvent {
    /// The flow (application address, flow number) ended; whether it had a session.
    Ended(SocketAddr, u64, bool),
}

async fn run(
    socket: UdpSocket,
    client: Client,
    pool: Pool,
    config: UdpProxyConfig,
    metrics: Arc<ProxyMetrics>,
    shutdown: impl Future<Output = ()>,
    drain: crate::Drain,
) -> Result<ProxyStats, Error> {
    if pool.current().is_empty() {
        return Err(Error::InvalidArgument("the proxy's pool is empty"));
    }
    let socket = Arc::new(socket);
    // Each flow's number tells a late end apart from the flow that replaced it.
    let mut flows: HashMap<SocketAddr, (u64, mpsc::Sender<Bytes>)> = HashMap::new();
    let mut next_flow = 0u64;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Datagrams are read a batch per system call (recvmmsg) when several are waiting.
    // Slots of 64 KiB: an application datagram of any size goes through (in fragments).
    let mut rx = crate::udp::RecvBatch::large(APP_RECV_SLOTS);
    let shared = |events: &mpsc::UnboundedSender<FlowEvent>| Shared {
        socket: Arc::clone(&socket),
        client: client.clone(),
        pool: pool.clone(),
        idle_timeout: config.idle_timeout,
        early_data: config.early_data,
        events: events.clone(),
        metrics: Arc::clone(&metrics),
    };
    tokio::pin!(shutdown);
    let mut drain = Some(drain);
    // Set once the shutdown resolved and a drain began: no new flows, and this resolves when
    // the drain is over.
    let mut draining: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = None;
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
                        if data.len() > crate::MAX_DATAGRAM {
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
                        if draining.is_some() || flows.len() >= config.max_flows {
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
                if draining.is_some() && flows.is_empty() {
                    info!("udp proxy: drained: every flow ended");
                    break;
                }
            }
            () = &mut shutdown, if drain.is_some() => {
                let drain = drain.take().unwrap_or_default();
                if drain.timeout().is_zero() || flows.is_empty() {
                    break;
                }
                info!(
                    flows = flows.len(),
                    timeout = ?drain.timeout(),
                    "udp proxy: draining: no new flows; waiting for the open ones to end"
                );
                draining = Some(Box::pin(drain.over()));
            }
            () = async {
                match draining.as_mut() {
                    Some(over) => over.await,
                    None => std::future::pending().await,
                }
            }, if draining.is_some() => {
                info!(flows = flows.len(), "udp proxy: drain over: the flows left end now");
                break;
            }
        }
    }
    let stats = metrics.stats();
    info!(
        flows = stats.flows,
        connect_failures = stats.connect_failures,
        dropped = stats.dropped,
        idle_resets = stats.idle_resets,
        "udp proxy stops"
    );
    Ok(stats)
}

/// What every flow of one proxy shares.
struct Shared {
    socket: Arc<UdpSocket>,
    client: Client,
    pool: Pool,
    idle_timeout: Duration,
    early_data: bool,
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
        early_data,
        events,
        metrics,
    } = shared;
    let started = tokio::time::Instant::now();
    // The pool as it is now (a DNS pool may have changed since the last flow), in one address
    // family.
    let servers = crate::discovery::one_family(pool.current());
    // The flow's first datagram (queued before the flow started) rides in the handshake when
    // early data is on and it fits.
    let early = early_data
        .then(|| from_app.try_recv().ok())
        .flatten()
        .map(|first| volley_proto::EarlyData::new(first.clone()).map_err(|_| first));
    let (connected, after) = match early {
        Some(Ok(first)) => (
            client
                .connect_with_early(&servers, first.bytes().clone())
                .await,
            None,
        ),
        Some(Err(first)) => (client.connect(&servers).await, Some(first)),
        None => (client.connect(&servers).await, None),
    };
    let session = match connected {
        Ok(s) => s,
        Err(e) => {
            let error = crate::proxy::connect_failure(&e);
            if crate::proxy::is_key_mismatch(&e) {
                warn!(%app, %error, "flow: no session; its datagrams are dropped");
            } else {
                info!(%app, %error, "flow: no session; its datagrams are dropped");
            }
            let _ = events.send(FlowEvent::Ended(app, number, false));
            return;
        }
    };
    debug!(%app, server = %session.remote(), "flow: session up");
    let open = metrics.won(session.remote(), started, &session);
    let sent = match after {
        Some(first) => session.send_bytes(first).await.is_ok(),
        None => true,
    };
    if sent {
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
                        Err(Error::Closed(reason @ CloseReason::Remote(CloseCode::REVOKED))) => {
                            warn!(%app, "flow: {}", crate::proxy::closed(reason));
                            break;
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
    }
    drop(open);
    let _ = events.send(FlowEvent::Ended(app, number, true));
}
