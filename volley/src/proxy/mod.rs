//! Proxies: put volley in front of a service without changing it, or its clients.
//!
//! Each side is a builder: options first, then `serve` until a shutdown future resolves, which
//! returns what it counted.
//!
//! - [`UdpProxy`], the client side for UDP: a local UDP socket that applications talk to as if
//!   it were the service; each of their flows (a source address) races the pool and rides its
//!   own volley session.
//! - [`UdpForward`], the server side for UDP: each session's datagrams go to the real service
//!   from a socket of their own, and the service's datagrams come back on the session.
//! - [`TcpProxy`] and [`TcpForward`], the same for TCP: each accepted connection races the pool
//!   for a session, and its bytes cross between the two sides on a TCP stream encrypted with
//!   keys from that session.
//!
//! To watch them run or serve their figures as Prometheus metrics, hand a proxy a
//! [`ProxyMetrics`] and a TCP forwarder a [`ForwardMetrics`] (see [`crate::metrics::Metrics`]).
//! `UdpProxy`'s example shows both UDP sides at work, `TcpProxy`'s both TCP sides.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), volley::Error> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use volley::proxy::{ProxyMetrics, UdpProxy};
//! use volley::{Client, ClientConfig, StaticKeypair};
//!
//! let key = StaticKeypair::generate(&mut volley::OsRng).public();
//! let client = Client::new(ClientConfig::new(vec![key]));
//! let metrics = Arc::new(ProxyMetrics::default());
//! let proxy = UdpProxy::new(client, vec!["127.0.0.1:7001".parse().unwrap()])
//!     .idle_timeout(Duration::from_secs(30))
//!     .max_flows(1_000)
//!     .metrics(Arc::clone(&metrics));
//! let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
//! // Serves until the shutdown future resolves: here, at once.
//! let stats = proxy.serve(socket, async {}).await?;
//! assert_eq!(stats, metrics.stats());
//! # Ok(()) }
//! ```

mod health;
mod limits;
pub mod proxy_protocol;
mod tcp;
mod tcp_forward;
mod udp;
mod udp_forward;

pub use health::{BackendHealth, HealthCheck, HealthStats};
pub use limits::{ForwardLimits, Forwarding, RESERVED_FDS, raise_open_files_limit};
pub use tcp::{STREAM_SETUP_TIMEOUT, TcpProxy};
pub use tcp_forward::{
    ForwardMetrics, HELLO_WAIT_FOR_SESSION, MAX_PENDING_STREAMS, MAX_PENDING_STREAMS_PER_SOURCE,
    STREAM_IDLE_TIMEOUT, STREAM_WAIT, StreamStats, TcpForward, TcpForwardStats,
};
pub use udp::UdpProxy;
pub use udp_forward::{UDP_REQUEST_TIMEOUT, UdpForward};

use std::sync::atomic::{AtomicU64, Ordering};

use volley_proto::{CloseCode, CloseReason, ConnectError};

use crate::error::Error;
use crate::session::Session;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A metric's labels: `server="IP:PORT"`.
pub(crate) type ServerLabel = Vec<(String, String)>;

/// Histograms of times, 100 µs to ~1.6 s, doubling.
fn time_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 15))
}

/// What a proxy ([`UdpProxy`] or [`TcpProxy`]) counted, returned when it stops and readable
/// while it runs from its [`ProxyMetrics`] (see [`UdpProxy`] for an example).
///
/// ```
/// use volley::proxy::ProxyStats;
///
/// let stats = ProxyStats::default();
/// // Flows that never got a session, and datagrams or connections turned away.
/// assert_eq!((stats.connect_failures, stats.dropped), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Flows started: first datagrams from a new source (UDP), connections accepted (TCP).
    pub flows: u64,
    /// Flows whose session (or, for TCP, whose stream to the server) could not be opened.
    pub connect_failures: u64,
    /// UDP: datagrams dropped (a flow's queue full, too many flows, larger than a session
    /// carries). TCP: connections refused at once (too many open).
    pub dropped: u64,
    /// TCP: connections reset because no byte moved either way for the idle timeout (their
    /// sessions closed with `STREAM_IDLE`).
    pub idle_resets: u64,
}
/// A proxy's live figures: the counters of [`ProxyStats`] as they grow, the flows open now, and
/// the answer and handshake times of its flows' races. Hand one to [`UdpProxy::metrics`] or
/// [`TcpProxy::metrics`] to watch a running proxy, or to serve it with
/// [`crate::metrics::Metrics::proxy`].
///
/// ```
/// use std::sync::Arc;
/// use volley::proxy::ProxyMetrics;
///
/// let metrics = Arc::new(ProxyMetrics::default());
/// // ... UdpProxy::new(client, pool).metrics(Arc::clone(&metrics)).serve(socket, shutdown) ...
/// assert_eq!(metrics.stats().flows, 0);
/// assert_eq!(metrics.open_flows(), 0);
/// ```
#[derive(Debug)]
pub struct ProxyMetrics {
    pub(crate) flows: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) idle_resets: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) answer_times: Histogram,
    pub(crate) handshake_times: Histogram,
    /// From a flow's start (its first datagram, its accepted connection) to its session (and,
    /// for TCP, its stream) ready.
    pub(crate) connect_times: Histogram,
    /// Per server (label `server`): flows it won, flows open with it, its answer times, streams
    /// it failed to set up (TCP).
    pub(crate) server_flows: Family<ServerLabel, Counter>,
    pub(crate) server_open: Family<ServerLabel, Gauge>,
    pub(crate) server_answer_times: Family<ServerLabel, Histogram>,
    pub(crate) server_failures: Family<ServerLabel, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            flows: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            idle_resets: AtomicU64::new(0),
            open: AtomicU64::new(0),
            answer_times: time_buckets(),
            handshake_times: time_buckets(),
            connect_times: time_buckets(),
            server_flows: Family::default(),
            server_open: Family::default(),
            server_answer_times: Family::new_with_constructor(time_buckets),
            server_failures: Family::default(),
        }
    }
}

impl ProxyMetrics {
    /// The counters now.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            flows: self.flows.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            idle_resets: self.idle_resets.load(Ordering::Relaxed),
        }
    }

    /// Flows with a session now.
    pub fn open_flows(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Flows `server` won so far.
    pub fn server_flows(&self, server: std::net::SocketAddr) -> u64 {
        self.server_flows.get_or_create(&label(server)).get()
    }

    /// A flow's session is up with `server`, `since` its start: counted for it (and open
    /// until the returned guard is dropped).
    pub(crate) fn won(
        &self,
        server: std::net::SocketAddr,
        since: tokio::time::Instant,
        session: &Session,
    ) -> OpenFlow<'_> {
        let l = label(server);
        self.connect_times.observe(since.elapsed().as_secs_f64());
        if let Some(report) = session.report() {
            if let Some(t) = report.answer_time {
                self.answer_times.observe(t.as_secs_f64());
                self.server_answer_times
                    .get_or_create(&l)
                    .observe(t.as_secs_f64());
            }
            if let Some(t) = report.handshake_time {
                self.handshake_times.observe(t.as_secs_f64());
            }
        }
        self.server_flows.get_or_create(&l).inc();
        self.server_open.get_or_create(&l).inc();
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenFlow {
            metrics: self,
            label: l,
        }
    }

    /// `server` won a race but its stream could not be set up (TCP).
    pub(crate) fn server_failed(&self, server: std::net::SocketAddr) {
        self.server_failures.get_or_create(&label(server)).inc();
    }
}

fn label(server: std::net::SocketAddr) -> ServerLabel {
    vec![("server".to_string(), server.to_string())]
}

/// A flow open with a server: counted in `volley_proxy_open_flows` and its server's
/// `volley_proxy_server_open_flows` until dropped.
pub(crate) struct OpenFlow<'a> {
    metrics: &'a ProxyMetrics,
    label: ServerLabel,
}

impl Drop for OpenFlow<'_> {
    fn drop(&mut self) {
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.server_open.get_or_create(&self.label).dec();
    }
}

/// Why a proxy's connect failed, in one line an operator can act on, as `volley connect` says
/// it: a key mismatch names the key at fault and how to check it (a wrong server key reads
/// "servers answered, but with a key other than the pinned server key", an unlisted client key
/// "accepted no session for this client key"), anything else the connect error's own words.
pub(crate) fn connect_failure(e: &Error) -> String {
    match e {
        Error::Connect(ConnectError::UnpinnedKey(n)) => format!(
            "servers answered, but with a key other than the pinned server key(s) ({n} offers \
             from unpinned keys): check the proxy's --server-key against the servers' key \
             (`volley pubkey SERVER_KEYFILE` prints it)"
        ),
        Error::Connect(ConnectError::HandshakeTimeout(last, n)) => format!(
            "the servers answered but accepted no session for this client key ({n} handshake(s) \
             unanswered, last with {last}): is the proxy's client key (`volley pubkey` of its \
             --key file) on their allow-list? Without --key the proxy's key is random and on no \
             allow-list"
        ),
        Error::Connect(c) => c.to_string(),
        Error::Closed(reason) => closed(*reason),
        other => other.to_string(),
    }
}

/// Whether `e` is a key mismatch (wrong server key, client key not allowed): a setting to fix,
/// logged as a warning rather than as one flow's bad luck.
pub(crate) fn is_key_mismatch(e: &Error) -> bool {
    matches!(
        e,
        Error::Connect(
            ConnectError::UnpinnedKey(_)
                | ConnectError::HandshakeTimeout(..)
                | ConnectError::Revoked(_)
        )
    )
}

/// How a session ended, in words; a revocation says so.
pub(crate) fn closed(reason: CloseReason) -> String {
    match reason {
        CloseReason::Remote(CloseCode::REVOKED) => {
            "revoked: the server's allow-list no longer holds this client's key".to_string()
        }
        other => format!("session ended ({other:?})"),
    }
}

/// A server session's client for the logs: its key in hex, and its allow-list name if any.
pub(crate) fn client_of(session: &Session) -> (String, &str) {
    (
        session
            .client_key()
            .map_or_else(String::new, |k| k.to_hex()),
        session.client_name().unwrap_or(""),
    )
}
