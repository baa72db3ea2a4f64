//! The server side of the TCP proxy: [`TcpForward`].
//!
//! The server also listens for TCP on its UDP socket's address. Each new session waits (up to
//! [`STREAM_WAIT`]) for the client side's stream; a stream is accepted only when its HELLO names
//! an open session of this server that has no stream yet and its tag checks out with that
//! session's keys — a TCP peer without a session never reaches the backend. Then the server
//! connects to the backend, answers with its own HELLO and splices. The stream is a request in
//! flight (a [`crate::LoadGuard`]) from its HELLO to its end. Stream and session end together: a stream
//! that ends closes its session with a code saying why (`NORMAL`, `STREAM_BROKEN`,
//! `STREAM_IDLE`, `NO_STREAM`, `BACKEND_UNREACHABLE`: PROTOCOL.md §13.4), and a session that
//! ends resets its stream (unless the client closed it normally: then the stream's last records
//! get [`STREAM_SETUP_TIMEOUT`] to arrive). Datagrams on a stream's session are dropped and
//! counted.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, timeout};
use tracing::{debug, info, trace};
use volley_proto::stream::{HELLO_LEN, Role, StreamKeys, hello_session};

use crate::error::Error;
use crate::proxy::tcp::{STREAM_SETUP_TIMEOUT, StreamFailure, drop_datagrams, reset, splice};
use crate::server::{Server, ServerHandle};
use crate::session::Session;
use volley_proto::{CloseCode, CloseReason};

/// How long a new session waits for its stream before it is closed.
pub const STREAM_WAIT: Duration = Duration::from_secs(10);

/// TCP connections at once that have not yet sent a valid HELLO; beyond, new ones are closed at
/// once (a connection flood costs a bounded number of tasks).
pub const MAX_PENDING_STREAMS: usize = 1024;

/// Of those, at most this many from one IP address.
pub const MAX_PENDING_STREAMS_PER_SOURCE: usize = 64;

/// What a [`TcpForward`] counted, returned when it stops (see [`TcpForward`] for an example).
///
/// ```
/// use volley::proxy::TcpForwardStats;
///
/// let stats = TcpForwardStats::default();
/// // The server's own counters come with the streams'.
/// assert_eq!((stats.server.sessions_opened, stats.streams), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpForwardStats {
    /// The server's own counters.
    pub server: crate::ServerStats,
    /// Streams accepted (HELLO checked out) and spliced to the backend.
    pub streams: u64,
    /// TCP connections refused: no HELLO in time, bad magic or version, unknown session, a
    /// tag that did not check out, or too many pending.
    pub refused: u64,
    /// Streams closed because the backend could not be reached.
    pub backend_failures: u64,
    /// Streams that ended broken (truncated, forged record, reset) rather than cleanly.
    pub broken: u64,
    /// Streams reset for moving no byte either way for an idle timeout: this side's, or the
    /// client side's (its CLOSE `STREAM_IDLE`).
    pub idle: u64,
    /// Datagrams that came on a stream's session (a stream session carries none): dropped.
    pub datagrams_dropped: u64,
    /// Sessions whose first use was a datagram, relayed to the datagram backend
    /// ([`TcpForward::datagrams`]; always 0 without one).
    pub datagram_sessions: u64,
}

/// What a TCP forwarder counted so far ([`ForwardMetrics::stats`]): the stream fields of
/// [`TcpForwardStats`].
///
/// ```
/// use volley::proxy::ForwardMetrics;
///
/// let stats = ForwardMetrics::default().stats();
/// assert_eq!((stats.refused, stats.broken), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Streams accepted (HELLO checked out) and spliced to the backend.
    pub streams: u64,
    /// TCP connections refused before a valid HELLO.
    pub refused: u64,
    /// Streams closed because the backend could not be reached.
    pub backend_failures: u64,
    /// Streams that ended broken rather than cleanly.
    pub broken: u64,
    /// Streams reset for idleness (this side's idle timeout or the client side's).
    pub idle: u64,
    /// Datagrams that came on a stream's session: dropped.
    pub datagrams_dropped: u64,
    /// Sessions relayed to the datagram backend (their first use was a datagram).
    pub datagram_sessions: u64,
}

/// A TCP forwarder's live figures: its stream counters as they grow and the streams open now.
/// Hand one to [`TcpForward::metrics`] to watch a running forwarder, or to serve it with
/// [`crate::metrics::Metrics::forward`].
///
/// ```
/// use std::sync::Arc;
/// use volley::proxy::ForwardMetrics;
///
/// let metrics = Arc::new(ForwardMetrics::default());
/// // ... TcpForward::bind(server, backend).await?.metrics(Arc::clone(&metrics)) ...
/// assert_eq!(metrics.stats().streams, 0);
/// assert_eq!(metrics.open_streams(), 0);
/// ```
#[derive(Debug, Default)]
pub struct ForwardMetrics {
    streams: AtomicU64,
    refused: AtomicU64,
    backend_failures: AtomicU64,
    broken: AtomicU64,
    idle: AtomicU64,
    datagrams_dropped: AtomicU64,
    datagram_sessions: AtomicU64,
    open: AtomicU64,
}

impl ForwardMetrics {
    /// The counters now.
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            streams: self.streams.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            backend_failures: self.backend_failures.load(Ordering::Relaxed),
            broken: self.broken.load(Ordering::Relaxed),
            idle: self.idle.load(Ordering::Relaxed),
            datagrams_dropped: self.datagrams_dropped.load(Ordering::Relaxed),
            datagram_sessions: self.datagram_sessions.load(Ordering::Relaxed),
        }
    }

    /// (name, help, value) of every counter, for the metrics endpoint.
    pub(crate) fn counters(&self) -> [(&'static str, &'static str, u64); 7] {
        let s = self.stats();
        [
            (
                "streams",
                "Streams accepted (HELLO checked out) and spliced to the backend",
                s.streams,
            ),
            (
                "refused",
                "TCP connections refused before a valid HELLO",
                s.refused,
            ),
            (
                "backend_failures",
                "Streams closed because the backend could not be reached",
                s.backend_failures,
            ),
            (
                "broken",
                "Streams that ended broken (truncated, forged record, reset, session ended)",
                s.broken,
            ),
            (
                "idle",
                "Streams reset for moving no byte either way for an idle timeout (either side's)",
                s.idle,
            ),
            (
                "datagrams_dropped",
                "Datagrams that came on a stream's session (which carries none): dropped",
                s.datagrams_dropped,
            ),
            (
                "datagram_sessions",
                "Sessions whose first use was a datagram, relayed to the UDP backend",
                s.datagram_sessions,
            ),
        ]
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

type Counters = ForwardMetrics;

/// How long a HELLO for an id not (yet) known waits for its session to register: the client
/// side may send it the moment the ACCEPT arrives, before this side's session task has run.
pub const HELLO_WAIT_FOR_SESSION: Duration = Duration::from_secs(1);

/// Sessions waiting for their stream (the keys to check a HELLO with, and where to hand the
/// stream) and those that have theirs; `registered` wakes HELLOs that arrived first.
#[derive(Default)]
struct WaitingSessions {
    sessions: Mutex<Sessions>,
    registered: tokio::sync::Notify,
}

#[derive(Default)]
struct Sessions {
    waiting: HashMap<u32, (StreamKeys, oneshot::Sender<TcpStream>)>,
    /// Open sessions that have (had) their stream: a HELLO naming one is refused at once.
    streamed: std::collections::HashSet<u32>,
}

/// A session's place in [`WaitingSessions`], given up when its stream task ends.
struct Registered<'a> {
    waiting: &'a WaitingSessions,
    id: u32,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut sessions = lock(&self.waiting.sessions);
        sessions.waiting.remove(&self.id);
        sessions.streamed.remove(&self.id);
    }
}

type Waiting = Arc<WaitingSessions>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server side of the TCP proxy: serves every session of a [`Server`] by splicing the
/// session's stream — a TCP connection to the server's own address, encrypted with keys from
/// the session — to a connection of its own to a TCP service (the backend).
///
/// A stream is accepted only when its HELLO names an open session of this server that has no
/// stream yet and checks out with that session's keys: a TCP peer without a session never
/// reaches the backend. Each stream counts as a request in flight on the server until it ends.
/// See [`crate::proxy::TcpProxy`] for the client side and a whole example.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use std::sync::Arc;
/// use volley::proxy::{ForwardMetrics, TcpForward};
/// use volley::{Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key)).await?;
/// let backend = "127.0.0.1:8080".parse().unwrap(); // the TCP service
/// let metrics = Arc::new(ForwardMetrics::default());
/// // Listens for streams on TCP at the server's own address.
/// let forward = TcpForward::bind(server, backend).await?.metrics(Arc::clone(&metrics));
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let running = tokio::spawn(forward.serve(async { let _ = stopped.await; }));
/// let _ = stop.send(());
/// let stats = running.await.unwrap();
/// assert_eq!(stats.streams, metrics.stats().streams);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a forwarder does nothing until it is served"]
pub struct TcpForward {
    server: Server,
    listener: TcpListener,
    backend: SocketAddr,
    datagrams: Option<SocketAddr>,
    metrics: Option<Arc<ForwardMetrics>>,
    timers: StreamSettings,
    drain: crate::Drain,
    health: Option<crate::proxy::BackendHealth>,
}

/// How long a forwarder waits for things and lets them sit, how many connections may wait for
/// their HELLO, and what it tells the backend.
#[derive(Debug, Clone, Copy)]
struct StreamSettings {
    /// Connections waiting for their HELLO at once.
    max_pending: usize,
    /// A stream with no progress either way for this long is reset.
    idle: Duration,
    /// A new session without its stream after this long is closed.
    wait: Duration,
    /// Write a PROXY protocol v2 header to each backend connection first.
    proxy_protocol: bool,
}

/// The default [`TcpForward::idle_timeout`].
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl TcpForward {
    /// A forwarder from `server`'s sessions to the TCP service at `backend`, listening for
    /// streams on TCP at the server's own address (where the client side looks for them).
    /// [`Error::Bind`] if that port is taken for TCP.
    pub async fn bind(server: Server, backend: SocketAddr) -> Result<Self, Error> {
        let addr = server.local_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Self::from_listener(server, listener, backend))
    }

    /// Like [`TcpForward::bind`], with streams accepted on a listener the caller made (bound
    /// early to report a taken port before anything else starts, or any other address the
    /// client side is told about).
    pub fn from_listener(server: Server, listener: TcpListener, backend: SocketAddr) -> Self {
        Self {
            server,
            listener,
            backend,
            datagrams: None,
            metrics: None,
            drain: crate::Drain::default(),
            health: None,
            timers: StreamSettings {
                max_pending: MAX_PENDING_STREAMS,
                idle: STREAM_IDLE_TIMEOUT,
                wait: STREAM_WAIT,
                proxy_protocol: false,
            },
        }
    }

    /// A stream with no progress either way for this long — no byte read, none written (a
    /// slow reader taking bytes counts) — is reset, both its connection and the backend's,
    /// and its session closed with `STREAM_IDLE`. Default [`STREAM_IDLE_TIMEOUT`] (300 s, as
    /// the client side's): a client side that forgets its streams cannot hold backend
    /// connections for ever.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.timers.idle = idle;
        self
    }

    /// Most TCP connections waiting for their HELLO at once (each holds a file descriptor);
    /// beyond, new ones are closed at once and counted as refused. One address may hold at
    /// most [`MAX_PENDING_STREAMS_PER_SOURCE`] of them (fewer when this is lower). Default
    /// [`MAX_PENDING_STREAMS`]; see [`crate::proxy::ForwardLimits`] to derive it from the
    /// process's open files.
    pub fn max_pending(mut self, max_pending: usize) -> Self {
        self.timers.max_pending = max_pending.max(1);
        self
    }

    /// Starts every backend connection with a PROXY protocol v2 header (HAProxy's spec; see
    /// [`crate::proxy::proxy_protocol`]): the client's address (its session's, as the server
    /// validated it) as the source, the address it reached as the destination, and TLVs with
    /// the client's static key and its name on the allow-list. Only for backends that expect
    /// the header (nginx `listen … proxy_protocol`, HAProxy `accept-proxy`, …): to any other it
    /// is garbage before the stream's first byte. Default off.
    pub fn proxy_protocol(mut self, on: bool) -> Self {
        self.timers.proxy_protocol = on;
        self
    }

    /// How to end once `serve`'s shutdown resolves: drain first (PROTOCOL.md §7.9) — no new
    /// sessions, every stream spliced on until it ends, the drain's timeout passes or its stop
    /// resolves; then the streams left are reset and their sessions closed (GOING_AWAY).
    /// Default: at once.
    pub fn drain(mut self, drain: crate::Drain) -> Self {
        self.drain = drain;
        self
    }

    /// Tells `health` (started for this forwarder's server and backend) of every backend
    /// connection that fails: the passive half of the health check.
    pub fn health(mut self, health: crate::proxy::BackendHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Also serves datagram sessions: a session whose first use is a datagram (before any
    /// HELLO) is relayed to the UDP service at `backend`, as [`crate::proxy::UdpForward`]
    /// relays every session, and a HELLO naming it later is refused; a session whose stream
    /// comes first is a stream session, as without this (PROTOCOL.md §13.2). One server then
    /// carries a fleet's UDP and TCP alike (DNS over both, say): a `volley proxy` listening on
    /// UDP and TCP needs one pool. A session with neither within the stream wait (10 s) is
    /// closed with `NO_STREAM`. Default: none (datagrams on a session are dropped and
    /// counted).
    pub fn datagrams(mut self, backend: SocketAddr) -> Self {
        self.datagrams = Some(backend);
        self
    }

    /// How long a new session waits for its stream before it is closed (`NO_STREAM`).
    #[cfg(test)]
    fn stream_wait(mut self, wait: Duration) -> Self {
        self.timers.wait = wait;
        self
    }

    /// Counts into `metrics` as the forwarder runs (to watch it, or to serve it with
    /// [`crate::metrics::Metrics::forward`]).
    pub fn metrics(mut self, metrics: Arc<ForwardMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Forwards every session's stream until `shutdown` resolves; then shuts the server down
    /// gracefully and returns its final counters with the forwarder's.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> TcpForwardStats {
        let Self {
            server,
            listener,
            backend,
            datagrams,
            metrics,
            timers,
            drain,
            health,
        } = self;
        let counters = metrics.unwrap_or_default();
        let waiting: Waiting = Arc::default();
        let acceptor = tokio::spawn(accept_streams(
            listener,
            Arc::clone(&waiting),
            Arc::clone(&counters),
            timers.max_pending,
        ));
        let handle = server.handle();
        let stats = {
            let counters = Arc::clone(&counters);
            crate::handler::serve_sessions(server, shutdown, drain, move |session| {
                serve_stream(
                    session,
                    backend,
                    datagrams,
                    Arc::clone(&waiting),
                    handle.clone(),
                    Arc::clone(&counters),
                    timers,
                    health.clone(),
                )
            })
            .await
        };
        acceptor.abort();
        let s = counters.stats();
        TcpForwardStats {
            server: stats,
            streams: s.streams,
            refused: s.refused,
            backend_failures: s.backend_failures,
            broken: s.broken,
            idle: s.idle,
            datagrams_dropped: s.datagrams_dropped,
            datagram_sessions: s.datagram_sessions,
        }
    }
}

async fn accept_streams(
    listener: TcpListener,
    waiting: Waiting,
    counters: Arc<Counters>,
    max_pending: usize,
) {
    let pending = Arc::new(Semaphore::new(max_pending));
    let per_source_limit = MAX_PENDING_STREAMS_PER_SOURCE.min(max_pending);
    let per_source: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "forward: accept failed");
                // A shortage (fds) passes; do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            trace!(%peer, "forward: too many pending streams, closed");
            continue;
        };
        // One address cannot take every pending slot (connections that send nothing are held
        // until the HELLO times out).
        let Some(slot) = PerSource::take(&per_source, peer.ip(), per_source_limit) else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            trace!(%peer, "forward: too many pending streams from this address, closed");
            continue;
        };
        let waiting = Arc::clone(&waiting);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            if !take_hello(conn, &waiting).await {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                trace!(%peer, "forward: stream refused");
            }
            drop(slot);
            drop(permit);
        });
    }
}

/// A pending connection's place in its source address's count.
struct PerSource {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerSource {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, limit: usize) -> Option<Self> {
        let mut map = lock(counts);
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for PerSource {
    fn drop(&mut self) {
        let mut map = lock(&self.counts);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Reads a HELLO and hands the connection to its session; false if it was refused.
async fn take_hello(mut conn: TcpStream, waiting: &Waiting) -> bool {
    let mut hello = [0u8; HELLO_LEN];
    match timeout(STREAM_SETUP_TIMEOUT, conn.read_exact(&mut hello)).await {
        Ok(Ok(_)) => {}
        _ => return false,
    }
    let Ok(id) = hello_session(&hello) else {
        return false;
    };
    let give_up = Instant::now() + HELLO_WAIT_FOR_SESSION;
    let deliver = loop {
        let registered = waiting.registered.notified();
        tokio::pin!(registered);
        // Registered before the look-up, so a session added between the two is not missed.
        registered.as_mut().enable();
        {
            let mut sessions = lock(&waiting.sessions);
            if sessions.streamed.contains(&id) {
                // One stream per session, ever: a replayed HELLO is refused at once.
                trace!(id, "forward: HELLO for a session that has its stream");
                return false;
            }
            if let Some((keys, _)) = sessions.waiting.get(&id) {
                if keys.check_hello(Role::Client, id, &hello).is_err() {
                    return false;
                }
                match sessions.waiting.remove(&id) {
                    Some((_, deliver)) => {
                        sessions.streamed.insert(id);
                        break deliver;
                    }
                    None => return false,
                }
            }
        }
        if tokio::time::timeout_at(give_up, registered).await.is_err() {
            return false;
        }
    };
    let _ = conn.set_nodelay(true);
    deliver.send(conn).is_ok()
}

/// One session of the forwarder: its stream, from the wait for its HELLO to its end. Datagrams
/// on the session are dropped and counted meanwhile; the session is closed with the code of
/// how the stream ended (PROTOCOL.md §13.4). With a datagram backend (`datagrams`), the
/// session's first use decides what it is (§13.2): a HELLO makes it a stream session as above,
/// a datagram that comes first makes it a datagram session relayed to that backend as
/// [`crate::proxy::UdpForward`] does (a HELLO naming it is then refused).
#[allow(clippy::too_many_arguments)]
async fn serve_stream(
    session: Session,
    backend: SocketAddr,
    datagrams: Option<SocketAddr>,
    waiting: Waiting,
    handle: ServerHandle,
    counters: Arc<Counters>,
    timers: StreamSettings,
    health: Option<crate::proxy::BackendHealth>,
) {
    let dropped = |len| {
        counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        trace!(len, "forward: datagram on a stream session dropped");
    };
    let Ok(ticket) = session.stream_ticket().await else {
        return; // gone already
    };
    let id = ticket.session_id;
    let (deliver, delivered) = oneshot::channel();
    lock(&waiting.sessions)
        .waiting
        .insert(id, (ticket.keys.clone(), deliver));
    let _registered = Registered {
        waiting: &waiting,
        id,
    };
    waiting.registered.notify_waiters();
    let first = match datagrams {
        None => {
            tokio::select! {
                s = wait_stream(&session, delivered, timers) => s.map(First::Stream),
                () = drop_datagrams(&session, dropped) => None,
            }
        }
        Some(udp) => tokio::select! {
            s = wait_stream(&session, delivered, timers) => s.map(First::Stream),
            r = session.recv_request() => r.ok().map(|r| First::Datagram(udp, r)),
        },
    };
    {
        let mut sessions = lock(&waiting.sessions);
        sessions.waiting.remove(&id);
        // A datagram session has had its chance at a stream: a HELLO naming it is refused at
        // once from now on, as a replayed one is.
        sessions.streamed.insert(id);
    }
    let code = match first {
        None => {
            debug!(id, "forward: no stream came for the session, closed");
            CloseCode::NO_STREAM
        }
        Some(First::Datagram(udp, request)) => {
            counters.datagram_sessions.fetch_add(1, Ordering::Relaxed);
            debug!(id, backend = %udp, "forward: the session's first use is a datagram: relayed to the UDP backend");
            crate::proxy::udp_forward::relay(&session, Some(request), udp, health).await;
            return;
        }
        Some(First::Stream(conn)) => {
            tokio::select! {
                code = stream(&session, conn, &ticket, backend, &handle, &counters, timers, health.as_ref()) => code,
                () = drop_datagrams(&session, dropped) => CloseCode::NORMAL,
            }
        }
    };
    session.close_with(code);
}

/// What a session of a forwarder with a datagram backend turned out to be.
enum First {
    /// A stream (its HELLO checked out) came first.
    Stream(TcpStream),
    /// A datagram came first: the backend it goes to, and the datagram.
    Datagram(SocketAddr, crate::session::Request),
}

/// Waits for the session's stream: None if none came in time or the session ended first.
async fn wait_stream(
    session: &Session,
    delivered: oneshot::Receiver<TcpStream>,
    timers: StreamSettings,
) -> Option<TcpStream> {
    tokio::select! {
        s = delivered => s.ok(),
        _ = tokio::time::sleep(timers.wait) => None,
        _ = session.closed() => None,
    }
}

/// Splices the session's stream to a backend connection and says how it ended.
#[allow(clippy::too_many_arguments)]
async fn stream(
    session: &Session,
    mut stream: TcpStream,
    ticket: &volley_proto::stream::StreamTicket,
    backend: SocketAddr,
    handle: &ServerHandle,
    counters: &Counters,
    timers: StreamSettings,
    health: Option<&crate::proxy::BackendHealth>,
) -> CloseCode {
    let id = ticket.session_id;
    let _guard = handle.load_guard();
    counters.streams.fetch_add(1, Ordering::Relaxed);
    counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenStream(counters);
    let mut upstream = match timeout(STREAM_SETUP_TIMEOUT, TcpStream::connect(backend)).await {
        Ok(Ok(s)) => s,
        _ => {
            // No HELLO back: the client side races again.
            counters.backend_failures.fetch_add(1, Ordering::Relaxed);
            debug!(%backend, "forward: backend unreachable");
            if let Some(h) = health {
                h.refused("connection");
            }
            return CloseCode::BACKEND_UNREACHABLE;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (key, name) = crate::proxy::client_of(session);
    if timers.proxy_protocol {
        let client_key = session.client_key();
        let header = match stream.local_addr() {
            Ok(reached) => crate::proxy::proxy_protocol::header_v2(
                session.remote(),
                reached,
                client_key.as_ref().map(|k| &k.0),
                session.client_name(),
            ),
            Err(_) => crate::proxy::proxy_protocol::header_local(),
        };
        if upstream.write_all(&header).await.is_err() {
            counters.backend_failures.fetch_add(1, Ordering::Relaxed);
            debug!(%backend, "forward: backend closed before the PROXY header");
            return CloseCode::BACKEND_UNREACHABLE;
        }
    }
    info!(
        id,
        client_key = %key,
        client_name = name,
        peer = %session.remote(),
        %backend,
        "forward: stream spliced to the backend"
    );
    if stream
        .write_all(&ticket.keys.hello(Role::Server, id))
        .await
        .is_err()
    {
        reset(&upstream);
        return CloseCode::STREAM_BROKEN;
    }
    let ended = {
        let spliced = splice(
            stream.split(),
            upstream.split(),
            &ticket.keys,
            Role::Server,
            Some(timers.idle),
        );
        tokio::pin!(spliced);
        tokio::select! {
            r = &mut spliced => r,
            reason = session.closed() => match reason {
                CloseReason::Remote(CloseCode::NORMAL) => {
                    // The client side closes its session once its stream is done, so the
                    // stream's last records may still be on their way: let them land.
                    match timeout(STREAM_SETUP_TIMEOUT, &mut spliced).await {
                        Ok(r) => r,
                        Err(_) => Err(StreamFailure::SessionEnded),
                    }
                }
                // The client side found the stream idle.
                CloseReason::Remote(CloseCode::STREAM_IDLE) => {
                    Err(StreamFailure::Idle(timers.idle))
                }
                CloseReason::Local(CloseCode::REVOKED) => {
                    // The allow-list dropped the client's key: the backend connection ends now.
                    info!(id, client_key = %key, client_name = name, "forward: session revoked, stream reset");
                    Err(StreamFailure::Revoked)
                }
                // Idle (the client is gone), going away, or the client's error.
                _ => Err(StreamFailure::SessionEnded),
            },
        }
    };
    let e = match ended {
        Ok(()) => return CloseCode::NORMAL,
        Err(e) => e,
    };
    reset(&stream);
    reset(&upstream);
    // A stream the client side cut (reset or truncated) is followed by its session's CLOSE,
    // which says why: wait a moment for it before counting.
    let e = match e {
        StreamFailure::Io(_) | StreamFailure::Truncated => {
            match timeout(REASON_GRACE, session.closed()).await {
                Ok(CloseReason::Remote(CloseCode::STREAM_IDLE)) => StreamFailure::Idle(timers.idle),
                _ => e,
            }
        }
        e => e,
    };
    match e {
        StreamFailure::Idle(_) => counters.idle.fetch_add(1, Ordering::Relaxed),
        _ => counters.broken.fetch_add(1, Ordering::Relaxed),
    };
    info!(id, reason = %e, "forward: stream reset");
    e.close_code()
}

/// How long a stream the other side cut waits for its session's CLOSE to say why (here and in
/// the client side's proxy, `tcp.rs`).
pub(crate) const REASON_GRACE: Duration = Duration::from_millis(250);

/// Counts a stream open until dropped.
struct OpenStream<'a>(&'a ForwardMetrics);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream's HELLO needs the session's keys, which only the crate can reach: this test forges
/// HELLOs from a real session's ticket.
#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use tokio::task::JoinHandle;
    use volley_proto::stream::StreamKeys;

    use super::*;
    use crate::{Client, ClientConfig, ServerConfig, StaticKeypair};

    const BOUND: Duration = Duration::from_secs(20);

    /// A TCP echo service that counts the connections it accepted.
    async fn backend() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        (addr, accepted)
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..400 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 4 s: {what}");
    }

    async fn forwarder(
        key: &StaticKeypair,
        backend: SocketAddr,
    ) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<TcpForwardStats>) {
        let (addr, stop, task, _) = forwarder_with(key, backend, |f| f).await;
        (addr, stop, task)
    }

    /// A forwarder with the options `options` sets, counting into the metrics returned.
    async fn forwarder_with(
        key: &StaticKeypair,
        backend: SocketAddr,
        options: impl FnOnce(TcpForward) -> TcpForward,
    ) -> (
        SocketAddr,
        oneshot::Sender<()>,
        JoinHandle<TcpForwardStats>,
        Arc<ForwardMetrics>,
    ) {
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig::new(key.clone()),
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = Arc::new(ForwardMetrics::default());
        let forward =
            options(TcpForward::bind(server, backend).await.unwrap()).metrics(Arc::clone(&metrics));
        let task = tokio::spawn(forward.serve(async {
            let _ = stopped.await;
        }));
        (addr, stop, task, metrics)
    }

    /// Whether the client session's server `server` was lost to a CLOSE with `code`.
    fn lost_to(session: &Session, server: SocketAddr, code: CloseCode) -> bool {
        session
            .report()
            .is_some_and(|r| r.losses.contains(&(server, CloseReason::Remote(code))))
    }

    #[tokio::test]
    async fn d2_the_server_closes_a_stream_session_with_a_code_that_says_why() {
        let key = StaticKeypair::generate(&mut crate::OsRng);
        // No stream within the wait: NO_STREAM. Datagrams on the session meanwhile are
        // dropped and counted.
        let (service, _) = backend().await;
        let (server, _stop, _task, metrics) =
            forwarder_with(&key, service, |f| f.stream_wait(Duration::from_millis(200))).await;
        let session = Client::new(ClientConfig::new(vec![key.public()]))
            .connect(&[server])
            .await
            .unwrap();
        for _ in 0..3 {
            session.send(b"not on a stream session").await.unwrap();
        }
        eventually("three datagrams dropped and counted", || {
            metrics.stats().datagrams_dropped == 3
        })
        .await;
        eventually("closed with NO_STREAM", || {
            lost_to(&session, server, CloseCode::NO_STREAM)
        })
        .await;

        // A backend nobody listens on: BACKEND_UNREACHABLE.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nowhere = closed.local_addr().unwrap();
        drop(closed);
        let (server, _stop, _task, metrics) = forwarder_with(&key, nowhere, |f| f).await;
        let session = Client::new(ClientConfig::new(vec![key.public()]))
            .connect(&[server])
            .await
            .unwrap();
        let ticket = session.stream_ticket().await.unwrap();
        let mut conn = TcpStream::connect(server).await.unwrap();
        conn.write_all(&ticket.keys.hello(Role::Client, ticket.session_id))
            .await
            .unwrap();
        let mut buf = [0u8; HELLO_LEN];
        let n = timeout(BOUND, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "no server HELLO without a backend");
        eventually("closed with BACKEND_UNREACHABLE", || {
            lost_to(&session, server, CloseCode::BACKEND_UNREACHABLE)
        })
        .await;
        assert_eq!(metrics.stats().backend_failures, 1);
    }

    /// A UDP service that answers `udp: ` and the datagram.
    async fn udp_backend() -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let answer = [&b"udp: "[..], &buf[..n]].concat();
                let _ = socket.send_to(&answer, from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn o6_with_a_datagram_backend_a_sessions_first_use_decides_where_it_goes() {
        let key = StaticKeypair::generate(&mut crate::OsRng);
        let (service, accepted) = backend().await;
        let datagrams = udp_backend().await;
        let (server, _stop, _task, metrics) =
            forwarder_with(&key, service, |f| f.datagrams(datagrams)).await;
        let client = Client::new(ClientConfig::new(vec![key.public()]));

        // A datagram first: the session is relayed to the UDP service, large datagrams too.
        let session = client.connect(&[server]).await.unwrap();
        session.send(b"first").await.unwrap();
        let answer = timeout(BOUND, session.recv()).await.unwrap().unwrap();
        assert_eq!(&answer[..], b"udp: first");
        let big = vec![7u8; 9_000];
        session.send(&big).await.unwrap();
        let answer = timeout(BOUND, session.recv()).await.unwrap().unwrap();
        assert_eq!((answer.len(), &answer[..5]), (9_005, &b"udp: "[..]));
        assert_eq!(metrics.stats().datagram_sessions, 1);
        // Its stream is refused from then on, at once, and never reaches the TCP service.
        let ticket = session.stream_ticket().await.unwrap();
        let mut conn = TcpStream::connect(server).await.unwrap();
        let asked = Instant::now();
        conn.write_all(&ticket.keys.hello(Role::Client, ticket.session_id))
            .await
            .unwrap();
        let mut buf = [0u8; HELLO_LEN];
        let n = timeout(BOUND, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "no server HELLO for a datagram session");
        assert!(asked.elapsed() < HELLO_WAIT_FOR_SESSION);
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        // The session goes on carrying datagrams.
        session.send(b"again").await.unwrap();
        let answer = timeout(BOUND, session.recv()).await.unwrap().unwrap();
        assert_eq!(&answer[..], b"udp: again");

        // A stream first: spliced to the TCP service; a datagram on it then is dropped.
        let session = client.connect(&[server]).await.unwrap();
        let ticket = session.stream_ticket().await.unwrap();
        let mut conn = TcpStream::connect(server).await.unwrap();
        conn.write_all(&ticket.keys.hello(Role::Client, ticket.session_id))
            .await
            .unwrap();
        let mut answer = [0u8; HELLO_LEN];
        timeout(BOUND, conn.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        ticket
            .keys
            .check_hello(Role::Server, ticket.session_id, &answer)
            .unwrap();
        eventually("the TCP service got the stream", || {
            accepted.load(Ordering::SeqCst) == 1
        })
        .await;
        session.send(b"not on a stream session").await.unwrap();
        eventually("the datagram dropped and counted", || {
            metrics.stats().datagrams_dropped == 1
        })
        .await;
        assert_eq!(metrics.stats().datagram_sessions, 1);
        assert_eq!(metrics.stats().streams, 1);
    }

    #[tokio::test]
    async fn d2_a_tcp_peer_without_a_session_never_reaches_the_backend() {
        let key = StaticKeypair::generate(&mut crate::OsRng);
        let (service, accepted) = backend().await;
        let (server, stop, task) = forwarder(&key, service).await;
        // Refused at once, whatever the peer sends: answered by a close, never by the backend.
        let refused = |mut conn: TcpStream| async move {
            let mut buf = [0u8; 64];
            let n = timeout(BOUND, conn.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            assert_eq!(n, 0, "a refused stream gets no bytes");
        };
        // Not a HELLO at all.
        let mut conn = TcpStream::connect(server).await.unwrap();
        conn.write_all(&[0x47; HELLO_LEN]).await.unwrap();
        refused(conn).await;

        // A real session, and HELLOs that do not prove it.
        let session = Client::new(ClientConfig::new(vec![key.public()]))
            .connect(&[server])
            .await
            .unwrap();
        let ticket = session.stream_ticket().await.unwrap();
        assert_eq!(ticket.peer, server);
        let wrong_keys = StreamKeys::derive(&[9; 32], &[8; 32]);
        for hello in [
            wrong_keys.hello(Role::Client, ticket.session_id),
            ticket.keys.hello(Role::Client, ticket.session_id ^ 1),
            ticket.keys.hello(Role::Server, ticket.session_id),
        ] {
            let mut conn = TcpStream::connect(server).await.unwrap();
            conn.write_all(&hello).await.unwrap();
            refused(conn).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "no stream reached the backend"
        );

        // The right HELLO works, once: the server answers with its own, checkable HELLO.
        let good = ticket.keys.hello(Role::Client, ticket.session_id);
        let mut conn = TcpStream::connect(server).await.unwrap();
        conn.write_all(&good).await.unwrap();
        let mut answer = [0u8; HELLO_LEN];
        timeout(BOUND, conn.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        ticket
            .keys
            .check_hello(Role::Server, ticket.session_id, &answer)
            .unwrap();
        eventually("the backend got the stream", || {
            accepted.load(Ordering::SeqCst) == 1
        })
        .await;
        // A replay of the same HELLO is refused, at once (not after waiting for a session to
        // register): one stream per session.
        let replayed = Instant::now();
        let mut replay = TcpStream::connect(server).await.unwrap();
        replay.write_all(&good).await.unwrap();
        refused(replay).await;
        assert!(
            replayed.elapsed() < HELLO_WAIT_FOR_SESSION,
            "refused after {:?}",
            replayed.elapsed()
        );
        // Records that do not authenticate break the stream (and the backend's connection);
        // the server closes the session saying so.
        conn.write_all(&[0, 20]).await.unwrap();
        conn.write_all(&[0u8; 20]).await.unwrap();
        let mut buf = [0u8; 16];
        let n = timeout(BOUND, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        eventually("closed with STREAM_BROKEN", || {
            lost_to(&session, server, CloseCode::STREAM_BROKEN)
        })
        .await;
        drop(session);
        let _ = stop.send(());
        let stats = timeout(BOUND, task).await.unwrap().unwrap();
        assert_eq!(stats.streams, 1, "{stats:?}");
        assert_eq!(stats.refused, 5, "{stats:?}");
        assert_eq!(stats.broken, 1, "{stats:?}");
    }
}
