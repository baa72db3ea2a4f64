//! Proxies (D1, D2): put volley in front of a service without changing it.
//!
//! - [`udp::run`], the client side for UDP: a local UDP socket that applications talk to as if
//!   it were the service; each of their flows (a source address) races the pool and rides its own
//!   volley session.
//! - [`forward::udp`], the server side for UDP: each session's datagrams go to the real backend
//!   from a socket of their own, and the backend's datagrams come back on the session.
//! - [`tcp::run`] and [`forward::tcp`], the same for TCP: each accepted connection races the
//!   pool for a session, and its bytes cross between the proxies on a TCP stream encrypted with
//!   keys from that session (`volley_proto::stream`).

pub mod forward;
pub mod tcp;
pub mod udp;

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// What the proxy counted, returned when it stops.
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
}
/// The proxy's live figures, for metrics ([`crate::metrics::proxy_registry`]): the counters of
/// [`ProxyStats`] as they grow, and the answer and handshake times of its flows' races.
#[derive(Debug)]
pub struct ProxyMetrics {
    pub(crate) flows: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) answer_times: Histogram,
    pub(crate) handshake_times: Histogram,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        // 100 µs to ~1.6 s, doubling.
        let buckets = || Histogram::new(exponential_buckets(0.000_1, 2.0, 15));
        Self {
            flows: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            open: AtomicU64::new(0),
            answer_times: buckets(),
            handshake_times: buckets(),
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
        }
    }

    /// Flows with a session now.
    pub fn open_flows(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}
