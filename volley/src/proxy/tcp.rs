//! The TCP proxy. Client side, [`TcpProxy`]: accepts connections on a local TCP listener;
//! each races the pool for a volley session, opens a TCP stream to the winner (the same address
//! as its UDP socket), proves the session with a HELLO and relays the application's bytes as
//! encrypted records (`volley_proto::stream`, `docs/PROTOCOL.md` §13). Server side:
//! [`crate::proxy::TcpForward`], which accepts only streams whose HELLO checks out against an
//! open session and splices them to the backend.
//!
//! A connection whose stream to the winner fails before the server's HELLO (refused, backend
//! down behind it, timed out) reports the server as failed and races again without it, up to
//! [`TcpProxy::attempts`] times; an established stream is never moved (its bytes are in
//! flight): if its server goes away the application's connection is reset, and its next
//! connection races a pool without that server.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tracing::{debug, info, trace, warn};
use volley_proto::stream::{
    HELLO_LEN, RECORD_HEADER_LEN, RecordOpener, Role, StreamError, StreamKeys, StreamTicket,
};
use volley_proto::{CloseCode, CloseReason};

use crate::client::Client;
use crate::discovery::Pool;
use crate::error::Error;
use crate::proxy::{ProxyMetrics, ProxyStats};

/// Plaintext bytes read from one side per record. Records may be larger (up to
/// `volley_proto::stream::MAX_RECORD_PLAINTEXT`); this one sends at most this much each, which
/// bounds a connection's buffers to about 2 × 32 KiB per side.
pub(crate) const RECORD_PLAINTEXT: usize = 32 * 1024;

/// How long a stream may take from TCP connect to the peer's HELLO.
pub const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The client side of a TCP proxy: applications connect to a local TCP listener as if it were
/// the service; each connection races the pool for a volley session and rides an encrypted
/// stream, keyed from that session, to the winning server's [`crate::proxy::TcpForward`].
///
/// Built with options, then [`TcpProxy::serve`]d on a listener:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tokio::net::{TcpListener, TcpStream};
/// use volley::proxy::{TcpForward, TcpProxy};
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// // The service: a plain TCP echo that knows nothing of volley.
/// let service = TcpListener::bind("127.0.0.1:0").await?;
/// let backend = service.local_addr()?;
/// tokio::spawn(async move {
///     while let Ok((mut conn, _)) = service.accept().await {
///         tokio::spawn(async move {
///             let (mut r, mut w) = conn.split();
///             let _ = tokio::io::copy(&mut r, &mut w).await;
///         });
///     }
/// });
/// // The server side splices each session's stream to it.
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// let forward = TcpForward::bind(server, backend).await?;
/// tokio::spawn(forward.serve(std::future::pending()));
///
/// // The client side: the application connects to `proxy` instead of `backend`.
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let proxy = listener.local_addr()?;
/// let client = Client::new(ClientConfig::new(vec![key.public()]));
/// tokio::spawn(TcpProxy::new(client, pool).attempts(3).serve(listener, std::future::pending()));
///
/// let mut conn = TcpStream::connect(proxy).await?;
/// conn.write_all(b"hello").await?;
/// let mut buf = [0u8; 5];
/// conn.read_exact(&mut buf).await?;
/// assert_eq!(&buf, b"hello");
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a proxy does nothing until it is served"]
pub struct TcpProxy {
    client: Client,
    pool: Pool,
    config: TcpProxyConfig,
    metrics: Option<Arc<ProxyMetrics>>,
}

/// The options of a [`TcpProxy`], with their defaults.
#[derive(Debug, Clone)]
struct TcpProxyConfig {
    idle_timeout: Duration,
    max_connections: usize,
    attempts: u32,
}

impl Default for TcpProxyConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            attempts: 2,
        }
    }
}

impl TcpProxy {
    /// A proxy whose connections race `pool` (fixed addresses, or a [`Pool`] kept current from
    /// DNS) with `client`, with the default options.
    /// Every session proves `client`'s key ([`ClientConfig::key`](crate::ClientConfig::key)):
    /// servers with an allow-list serve only listed keys. A key they do not list fails each
    /// connect with [`ConnectError::HandshakeTimeout`](crate::ConnectError::HandshakeTimeout),
    /// logged as such; a key removed from the list ends its sessions (`Remote(REVOKED)`).
    pub fn new(client: Client, pool: impl Into<Pool>) -> Self {
        Self {
            client,
            pool: pool.into(),
            config: TcpProxyConfig::default(),
            metrics: None,
        }
    }

    /// A connection with no byte either way for this long is closed. Default 300 s.
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.config.idle_timeout = idle_timeout;
        self
    }

    /// Most connections relayed at once; connections beyond are closed at once and counted.
    /// Default 10,000.
    pub fn max_connections(mut self, max_connections: usize) -> Self {
        self.config.max_connections = max_connections;
        self
    }

    /// Races per connection when the winner's stream cannot be set up (each leaves out the
    /// servers that failed before). Default 2, at least 1.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.config.attempts = attempts;
        self
    }

    /// Counts into `metrics` as the proxy runs (to watch it, or to serve it with
    /// [`crate::metrics::Metrics::proxy`]). Without it, the proxy counts for itself only.
    pub fn metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves the proxy on `listener` until `shutdown` resolves, and returns what it counted.
    /// [`Error::InvalidArgument`] when the pool is empty, [`Error::Io`] when the listener fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ProxyStats, Error> {
        let Self {
            client,
            pool,
            config,
            metrics,
        } = self;
        run(
            listener,
            client,
            pool,
            config,
            metrics.unwrap_or_default(),
            shutdown,
        )
        .await
    }
}

/// Why a stream did not come up or ended badly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamFailure {
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("timed out")]
    Timeout,
    #[error("the stream ended without its END record (truncated)")]
    Truncated,
    #[error("the stream's session ended")]
    SessionEnded,
    #[error("the session was revoked: the server's allow-list no longer holds the client's key")]
    Revoked,
}

async fn run(
    listener: TcpListener,
    client: Client,
    pool: Pool,
    config: TcpProxyConfig,
    metrics: Arc<ProxyMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<ProxyStats, Error> {
    if pool.current().is_empty() {
        return Err(Error::InvalidArgument("the proxy's pool is empty"));
    }
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (app, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) if crate::socket::transient(&e) || accept_transient(&e) => {
                        debug!(error = %e, "tcp proxy: accept failed");
                        // A shortage (fds, memory) passes; do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(Error::Io(e)),
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, "tcp proxy: too many connections, closed");
                    continue;
                };
                metrics.flows.fetch_add(1, Ordering::Relaxed);
                let client = client.clone();
                let pool = pool.clone();
                let config = config.clone();
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    connection(app, client, pool, config, &metrics).await;
                    drop(slot);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    let stats = metrics.stats();
    info!(?stats, "tcp proxy stops");
    Ok(stats)
}

/// Accept errors that concern one connection or a passing shortage (fds), not the listener.
fn accept_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset)
        || matches!(e.raw_os_error(), Some(code) if code == 24 || code == 23 || code == 105 || code == 12)
}

/// One application connection: race, stream, relay.
async fn connection(
    mut app: TcpStream,
    client: Client,
    pool: Pool,
    config: TcpProxyConfig,
    metrics: &ProxyMetrics,
) {
    let _ = app.set_nodelay(true);
    // Servers whose stream failed for this connection: the next race leaves them out (while
    // any other is left).
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    for attempt in 0..config.attempts.max(1) {
        let mut servers = crate::discovery::one_family(pool.current());
        if servers.iter().any(|s| !tried.contains(s)) {
            servers.retain(|s| !tried.contains(s));
        }
        let session = match client.connect(&servers).await {
            Ok(s) => s,
            Err(e) => {
                info!(
                    error = %crate::proxy::connect_failure(&e),
                    "tcp proxy: no session; connection closed"
                );
                break;
            }
        };
        if let Some(report) = session.report() {
            if let Some(t) = report.answer_time {
                metrics.answer_times.observe(t.as_secs_f64());
            }
            if let Some(t) = report.handshake_time {
                metrics.handshake_times.observe(t.as_secs_f64());
            }
        }
        let Ok(ticket) = session.stream_ticket().await else {
            continue; // lost between the handshake and now: race again
        };
        let mut stream = match open_stream(&ticket).await {
            Ok(s) => s,
            Err(e) => {
                debug!(attempt, server = %ticket.peer, error = %e, "tcp proxy: stream refused");
                session.report_failure();
                session.close();
                tried.push(ticket.peer);
                continue;
            }
        };
        session.report_success();
        metrics.open.fetch_add(1, Ordering::Relaxed);
        // A revoked key ends the connection at once, whatever the stream is doing (the server
        // resets its side too); any other end of the session leaves the stream to finish.
        let revoked = async {
            match session.closed().await {
                CloseReason::Remote(CloseCode::REVOKED) => {}
                _ => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            ended = splice(
                &mut stream,
                &mut app,
                &ticket.keys,
                Role::Client,
                Some(config.idle_timeout),
            ) => ended,
            () = revoked => Err(StreamFailure::Revoked),
        };
        metrics.open.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Ok(()) => trace!(server = %ticket.peer, "tcp proxy: connection done"),
            Err(StreamFailure::Revoked) => {
                warn!(
                    server = %ticket.peer,
                    "tcp proxy: session revoked (the server's allow-list no longer holds this \
                     client's key); connection reset"
                );
                reset(&stream);
                reset(&app);
            }
            Err(e) => {
                debug!(server = %ticket.peer, error = %e, "tcp proxy: connection reset");
                reset(&stream);
                reset(&app);
            }
        }
        session.close();
        return;
    }
    metrics.connect_failures.fetch_add(1, Ordering::Relaxed);
    reset(&app);
}

/// Connects to the ticket's server, sends the client HELLO and waits for the server's.
async fn open_stream(ticket: &StreamTicket) -> Result<TcpStream, StreamFailure> {
    let setup = async {
        let mut stream = TcpStream::connect(ticket.peer).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(&ticket.keys.hello(Role::Client, ticket.session_id))
            .await?;
        let mut hello = [0u8; HELLO_LEN];
        stream.read_exact(&mut hello).await?;
        ticket
            .keys
            .check_hello(Role::Server, ticket.session_id, &hello)?;
        Ok::<_, StreamFailure>(stream)
    };
    timeout(STREAM_SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| StreamFailure::Timeout)?
}

/// Ends a TCP connection with a reset rather than a clean close: the peer must not take a
/// broken relay for a complete one.
pub(crate) fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Relays between `secure` (records, to the other proxy) and `plain` (bytes, the application or
/// the backend) until both directions have ended cleanly (`Ok`) or one fails (`Err`: the caller
/// resets both). `idle`: end (cleanly) after this long without a byte either way.
pub(crate) async fn splice(
    secure: &mut TcpStream,
    plain: &mut TcpStream,
    keys: &StreamKeys,
    me: Role,
    idle: Option<Duration>,
) -> Result<(), StreamFailure> {
    let (secure_r, mut secure_w) = secure.split();
    let (plain_r, mut plain_w) = plain.split();
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || {
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    };
    let mut sealer = keys.sealer(me);
    let mut opener = keys.opener(me);
    let outbound = async {
        let mut plain_r = plain_r;
        let mut buf = vec![0u8; RECORD_HEADER_LEN + RECORD_PLAINTEXT + volley_proto::AEAD_TAG_LEN];
        loop {
            let n = plain_r
                .read(&mut buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + RECORD_PLAINTEXT])
                .await?;
            touch();
            let size = sealer.seal(&mut buf, n)?;
            secure_w.write_all(&buf[..size]).await?;
            if n == 0 {
                // END sent: nothing more this way.
                let _ = secure_w.shutdown().await;
                return Ok::<_, StreamFailure>(());
            }
        }
    };
    let inbound = async {
        let mut secure_r = BufReader::with_capacity(8 * 1024, secure_r);
        let mut body = vec![0u8; RECORD_PLAINTEXT + volley_proto::AEAD_TAG_LEN];
        loop {
            let mut header = [0u8; RECORD_HEADER_LEN];
            match secure_r.read_exact(&mut header).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(StreamFailure::Truncated);
                }
                Err(e) => return Err(e.into()),
            }
            let len = RecordOpener::body_len(header)?;
            if body.len() < len {
                body.resize(len, 0);
            }
            match secure_r.read_exact(&mut body[..len]).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(StreamFailure::Truncated);
                }
                Err(e) => return Err(e.into()),
            }
            touch();
            let plain = opener.open(header, &mut body[..len])?;
            if plain.is_empty() {
                let _ = plain_w.shutdown().await;
                return Ok(());
            }
            plain_w.write_all(plain).await?;
        }
    };
    let idle_out = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        both = async { tokio::try_join!(outbound, inbound) } => both.map(|_| ()),
        _ = idle_out => {
            trace!("stream idle, closed");
            Ok(())
        }
    }
}
