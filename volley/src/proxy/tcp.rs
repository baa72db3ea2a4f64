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

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
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
use crate::proxy::tcp_forward::REASON_GRACE;
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
    drain: crate::Drain,
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
            drain: crate::Drain::default(),
        }
    }

    /// A connection with no progress either way for this long — no byte read, none written
    /// (a slow reader taking bytes counts) — is reset, both the application's connection and
    /// its stream, and its session closed with `STREAM_IDLE` (the server side resets its
    /// backend's connection). Default 300 s.
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

    /// How to end once `serve`'s shutdown resolves: with a drain, the listener closes (no new
    /// connection) and the connections relayed go on until they end, the drain's timeout
    /// passes or its stop resolves; then `serve` returns (the connections left end with the
    /// process, or run on in a library). Default: return at once.
    pub fn drain(mut self, drain: crate::Drain) -> Self {
        self.drain = drain;
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
            drain,
        } = self;
        run(
            listener,
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
    #[error("bytes after the END record")]
    AfterEnd,
    #[error("no byte either way for {0:?} (idle)")]
    Idle(Duration),
    #[error("the stream's session ended")]
    SessionEnded,
    #[error("the session was revoked: the server's allow-list no longer holds the client's key")]
    Revoked,
}

impl StreamFailure {
    /// The close code the side that saw this failure ends the session with (PROTOCOL.md §13.4).
    pub(crate) fn close_code(&self) -> CloseCode {
        match self {
            Self::Idle(_) => CloseCode::STREAM_IDLE,
            _ => CloseCode::STREAM_BROKEN,
        }
    }
}

async fn run(
    listener: TcpListener,
    client: Client,
    pool: Pool,
    config: TcpProxyConfig,
    metrics: Arc<ProxyMetrics>,
    shutdown: impl Future<Output = ()>,
    drain: crate::Drain,
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
    drop(listener);
    let all = u32::try_from(config.max_connections.max(1)).unwrap_or(u32::MAX);
    let open = config.max_connections.max(1) - slots.available_permits();
    if !drain.timeout().is_zero() && open > 0 {
        info!(
            connections = open,
            timeout = ?drain.timeout(),
            "tcp proxy: draining: no new connections; waiting for the open ones to end"
        );
        let ended = slots.acquire_many(all);
        match drain.wait(ended).await {
            true => info!("tcp proxy: drained: every connection ended"),
            false => info!(
                connections = config.max_connections.max(1) - slots.available_permits(),
                "tcp proxy: drain over: the connections left end now"
            ),
        }
    }
    let stats = metrics.stats();
    info!(
        flows = stats.flows,
        connect_failures = stats.connect_failures,
        dropped = stats.dropped,
        idle_resets = stats.idle_resets,
        "tcp proxy stops"
    );
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
    let started = tokio::time::Instant::now();
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
                let error = crate::proxy::connect_failure(&e);
                if crate::proxy::is_key_mismatch(&e) {
                    warn!(%error, "tcp proxy: no session; connection closed");
                } else {
                    info!(%error, "tcp proxy: no session; connection closed");
                }
                break;
            }
        };
        let Ok(ticket) = session.stream_ticket().await else {
            continue; // lost between the handshake and now: race again
        };
        let mut stream = match open_stream(&ticket).await {
            Ok(s) => s,
            Err(e) => {
                debug!(attempt, server = %ticket.peer, error = %e, "tcp proxy: stream refused");
                session.report_failure();
                session.close();
                metrics.server_failed(ticket.peer);
                tried.push(ticket.peer);
                continue;
            }
        };
        session.report_success();
        let open = metrics.won(ticket.peer, started, &session);
        // A revoked key ends the connection at once, whatever the stream is doing (the server
        // resets its side too); any other end of the session leaves the stream to finish.
        let revoked = async {
            match session.closed().await {
                CloseReason::Remote(CloseCode::REVOKED) => {}
                _ => std::future::pending().await,
            }
        };
        let ended = {
            let spliced = splice(
                stream.split(),
                app.split(),
                &ticket.keys,
                Role::Client,
                Some(config.idle_timeout),
            );
            // Datagrams have no place on a stream's session: dropped as they come.
            tokio::select! {
                r = spliced => r,
                () = drop_datagrams(&session, |len| {
                    trace!(len, "tcp proxy: datagram on a stream session dropped");
                }) => Err(StreamFailure::SessionEnded),
                () = revoked => Err(StreamFailure::Revoked),
            }
        };
        drop(open);
        // A revoking server resets the stream and closes the session at once; the reset may win
        // the race, so a stream the server cut waits a moment for its session's CLOSE to say why.
        let ended = match ended {
            Err(StreamFailure::Io(_) | StreamFailure::Truncated)
                if matches!(
                    timeout(REASON_GRACE, session.closed()).await,
                    Ok(CloseReason::Remote(CloseCode::REVOKED))
                ) =>
            {
                Err(StreamFailure::Revoked)
            }
            other => other,
        };
        match ended {
            Ok(()) => {
                trace!(server = %ticket.peer, "tcp proxy: connection done");
                session.close();
            }
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
                // Why, from the server if it said (its CLOSE may have come first).
                let server_said = session.report().and_then(|r| {
                    r.losses.iter().rev().find_map(|(s, why)| match why {
                        CloseReason::Remote(code) if *s == ticket.peer => Some(*code),
                        _ => None,
                    })
                });
                if let StreamFailure::Idle(_) = e {
                    metrics.idle_resets.fetch_add(1, Ordering::Relaxed);
                }
                info!(server = %ticket.peer, reason = %e, ?server_said, "tcp proxy: connection reset");
                reset(&stream);
                reset(&app);
                session.close_with(e.close_code());
            }
        }
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

/// Takes the session's datagrams as they come and drops them, calling `dropped` with each
/// one's length, until the session ends (then it never resolves: the stream decides).
pub(crate) async fn drop_datagrams(session: &crate::session::Session, dropped: impl Fn(usize)) {
    while let Ok(d) = session.recv().await {
        dropped(d.len());
    }
    std::future::pending::<()>().await
}

/// Writes all of `buf`, calling `touch` after every write that moved bytes: a slow reader that
/// takes them a little at a time keeps the relay active.
async fn write_touching<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut buf: &[u8],
    touch: &impl Fn(),
) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = w.write(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        touch();
        buf = &buf[n..];
    }
    Ok(())
}

/// Relays between `secure` (records, to the other proxy) and `plain` (bytes, the application or
/// the backend), each given as its read and write halves, until both directions have ended
/// cleanly (`Ok`) or one fails (`Err`: the caller resets both). `idle`: fail with
/// [`StreamFailure::Idle`] after this long without progress either way — a read that returned
/// bytes, or a write that moved some (a slow reader making progress is not idle).
///
/// After a direction's END, the receiver reads on until the sender's end of the connection:
/// a byte after END breaks the stream ([`StreamFailure::AfterEnd`], PROTOCOL.md §13.3).
pub(crate) async fn splice<SR, SW, PR, PW>(
    secure: (SR, SW),
    plain: (PR, PW),
    keys: &StreamKeys,
    me: Role,
    idle: Option<Duration>,
) -> Result<(), StreamFailure>
where
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
    PR: AsyncRead + Unpin,
    PW: AsyncWrite + Unpin,
{
    let (secure_r, mut secure_w) = secure;
    let (plain_r, mut plain_w) = plain;
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
            write_touching(&mut secure_w, &buf[..size], &touch).await?;
            if n == 0 {
                // END sent: nothing more this way.
                let _ = secure_w.shutdown().await;
                return Ok::<_, StreamFailure>(());
            }
        }
    };
    let inbound = async {
        let mut secure_r = BufReader::with_capacity(8 * 1024, secure_r);
        // Grown to the largest record seen: an interactive stream's are small.
        let mut body = Vec::new();
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
                // Nothing may follow END: the sender's end of the connection must come next.
                let mut after = [0u8; 1];
                return match secure_r.read(&mut after).await? {
                    0 => Ok(()),
                    _ => Err(StreamFailure::AfterEnd),
                };
            }
            write_touching(&mut plain_w, plain, &touch).await?;
        }
    };
    let idle_out = async {
        let Some(idle) = idle else {
            return std::future::pending::<Duration>().await;
        };
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            if Instant::now() >= deadline {
                return idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        both = async { tokio::try_join!(outbound, inbound) } => both.map(|_| ()),
        idle = idle_out => Err(StreamFailure::Idle(idle)),
    }
}

/// The relay itself on in-memory pipes and tokio's paused clock: what counts as activity, and
/// what may follow END.
#[cfg(test)]
mod tests {
    use tokio::io::{DuplexStream, duplex, split};
    use tokio::task::JoinHandle;

    use super::*;

    fn keys() -> StreamKeys {
        StreamKeys::derive(&[1; 32], &[2; 32])
    }

    /// A client-side relay (idle timeout `idle`) between a peer proxy and an application that
    /// has room for `app_buffer` bytes in its pipe: returns the relay's task, the peer's end of
    /// the stream and the application's end.
    fn relay(
        idle: Duration,
        app_buffer: usize,
    ) -> (
        JoinHandle<Result<(), StreamFailure>>,
        DuplexStream,
        DuplexStream,
    ) {
        let (secure, peer) = duplex(64 * 1024);
        let (plain, app) = duplex(app_buffer);
        let task = tokio::spawn(async move {
            splice(
                split(secure),
                split(plain),
                &keys(),
                Role::Client,
                Some(idle),
            )
            .await
        });
        (task, peer, app)
    }

    /// Seals `data` (empty: END) as the server side's next record.
    fn record(sealer: &mut volley_proto::stream::RecordSealer, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_HEADER_LEN + data.len() + volley_proto::AEAD_TAG_LEN];
        buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + data.len()].copy_from_slice(data);
        let n = sealer.seal(&mut buf, data.len()).unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test(start_paused = true)]
    async fn a5_an_idle_relay_fails_as_idle_after_its_timeout() {
        let (task, _peer, _app) = relay(Duration::from_secs(1), 4096);
        let started = Instant::now();
        let ended = task.await.unwrap();
        assert!(matches!(ended, Err(StreamFailure::Idle(d)) if d == Duration::from_secs(1)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1_100),
            "{took:?}"
        );
        assert_eq!(
            StreamFailure::Idle(Duration::from_secs(1)).close_code(),
            CloseCode::STREAM_IDLE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a5_a_slow_reader_making_progress_keeps_the_relay_past_its_idle_timeout() {
        // The peer sends 128 KiB in 32 KiB records at once; the application's pipe holds 1 KiB
        // and it reads 1 KiB every 200 ms: each record takes 6.4 s to write, the whole 26 s,
        // against an idle timeout of 1 s. Every write that moves bytes is progress.
        let (task, mut peer, mut app) = relay(Duration::from_secs(1), 1024);
        let mut sealer = keys().sealer(Role::Server);
        let data: Vec<u8> = (0..128 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut records = Vec::new();
        for chunk in data.chunks(32 * 1024) {
            records.extend(record(&mut sealer, chunk));
        }
        records.extend(record(&mut sealer, b""));
        let writer = tokio::spawn(async move {
            peer.write_all(&records).await.unwrap();
            peer
        });
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let n = app.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            assert!(
                !task.is_finished(),
                "the relay ended after {:?}",
                started.elapsed()
            );
        }
        assert_eq!(got, data, "every byte, then the END");
        assert!(started.elapsed() > Duration::from_secs(20));
        // The application ends its side: END goes out, the peer ends the connection, done.
        app.shutdown().await.unwrap();
        let mut peer = writer.await.unwrap();
        let mut end = Vec::new();
        peer.read_to_end(&mut end).await.unwrap_or_default();
        drop(peer);
        assert!(matches!(task.await.unwrap(), Ok(())));
    }

    #[tokio::test(start_paused = true)]
    async fn d2_a_byte_after_end_breaks_the_stream_and_a_clean_end_does_not() {
        for after_end in [&b""[..], b"x"] {
            let (task, mut peer, mut app) = relay(Duration::from_secs(60), 4096);
            let mut sealer = keys().sealer(Role::Server);
            let mut bytes = record(&mut sealer, b"hello");
            bytes.extend(record(&mut sealer, b""));
            bytes.extend_from_slice(after_end);
            peer.write_all(&bytes).await.unwrap();
            // The application gets the bytes and the half-close.
            let mut got = Vec::new();
            app.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
            if after_end.is_empty() {
                // The application ends its side: the relay's END comes out, the peer ends the
                // connection, and the stream is over, cleanly.
                app.shutdown().await.unwrap();
                let mut buf = [0u8; 64];
                let n = peer.read(&mut buf).await.unwrap();
                assert_eq!(n, RECORD_HEADER_LEN + volley_proto::AEAD_TAG_LEN);
                peer.shutdown().await.unwrap();
                let ended = task.await.unwrap();
                assert!(matches!(ended, Ok(())), "{ended:?}");
            } else {
                // The byte after END breaks it at once, whatever the other direction does.
                let ended = task.await.unwrap();
                assert!(matches!(ended, Err(StreamFailure::AfterEnd)), "{ended:?}");
                assert_eq!(
                    StreamFailure::AfterEnd.close_code(),
                    CloseCode::STREAM_BROKEN
                );
            }
        }
    }
}
