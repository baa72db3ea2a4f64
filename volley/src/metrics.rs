//! Prometheus metrics: [`Metrics`] gathers what a server, a TCP forwarder or a proxy counts —
//! read afresh at each scrape — and serves it on a small HTTP endpoint answering
//! `GET /metrics` in the OpenMetrics text format. Every name starts with `volley_`:
//!
//! - a server ([`Metrics::server`]): every counter of [`crate::ServerStats`] as
//!   `volley_server_<name>_total`, its load as gauges (`volley_server_sessions`,
//!   `volley_server_requests`, `volley_server_capacity`, …), the answer-delay histogram
//!   `volley_server_answer_delay_seconds`, and with an allow-list the gauge
//!   `volley_server_allow_list_keys` (its counters `inits_unauthorized`, `sessions_revoked` and
//!   `sessions_migrated` are among the server's);
//! - a TCP forwarder ([`Metrics::forward`]): `volley_forward_<name>_total` for each field of
//!   [`crate::proxy::StreamStats`] and the gauge `volley_forward_open_streams`;
//! - a proxy ([`Metrics::proxy`]): `volley_proxy_<name>_total` for each field of
//!   [`crate::proxy::ProxyStats`], the gauge `volley_proxy_open_flows`, the histograms
//!   `volley_proxy_answer_time_seconds`, `volley_proxy_handshake_time_seconds` and
//!   `volley_proxy_connect_time_seconds` (flow start to session, and stream, ready), and per
//!   server (label `server="IP:PORT"`): `volley_proxy_server_flows_total`,
//!   `volley_proxy_server_open_flows`, `volley_proxy_server_answer_time_seconds` and (TCP)
//!   `volley_proxy_server_stream_failures_total`;
//! - a forwarder's backend health ([`Metrics::health`]): the gauge `volley_forward_backend_up`
//!   and the counters `volley_forward_backend_checks_total`,
//!   `volley_forward_backend_checks_failed_total`, `volley_forward_backend_refusals_total` and
//!   `volley_forward_backend_changes_total`.
//!
//! The endpoint also answers `GET /healthz` (200 `alive` while the process serves it: a
//! liveness probe) and `GET /readyz` (200 `ready`, or 503 with the reason, as
//! [`Metrics::readiness`] says: a readiness probe; 200 when nothing was registered).
//!
//! ```
//! use std::sync::Arc;
//! use volley::metrics::Metrics;
//! use volley::proxy::ProxyMetrics;
//!
//! // What `volley proxy --metrics` serves: one proxy's figures.
//! let proxy = Arc::new(ProxyMetrics::default());
//! let metrics = Metrics::new().proxy(Arc::clone(&proxy));
//! let text = metrics.render();
//! assert!(text.contains("volley_proxy_flows_total 0"));
//! assert!(text.contains("volley_proxy_open_flows 0"));
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;
use volley_proto::server::ANSWER_DELAY_BOUNDS_US;

use crate::error::Error;
use crate::server::ServerHandle;

/// A server's metrics, read from its handle at each scrape.
#[derive(Debug)]
struct ServerCollector(ServerHandle);

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // One snapshot for everything, so that the counters and the gauges agree.
        let crate::server::Snapshot {
            stats,
            load,
            delays,
            allow_list_len,
        } = self.0.snapshot();
        for (name, value) in stats.counters() {
            let help = format!("volley server counter {name} (volley::ServerStats::{name})");
            let full = format!("volley_server_{name}");
            let metric = encoder.encode_descriptor(&full, &help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        let gauges: [(&str, &str, f64); 8] = [
            ("sessions", "Sessions open", f64::from(load.sessions)),
            (
                "app_requests",
                "Requests in flight the application reported",
                f64::from(load.app),
            ),
            (
                "requests",
                "Requests in flight as the server weighs them",
                f64::from(load.requests),
            ),
            (
                "reserved",
                "Offers sent and not yet taken, counted as load",
                f64::from(load.reserved),
            ),
            (
                "held_probes",
                "Probes held for a later offer",
                f64::from(load.held),
            ),
            (
                "capacity",
                "Requests served at once (0: unbounded)",
                f64::from(load.capacity),
            ),
            (
                "service_time_seconds",
                "Estimated mean service time of one request",
                load.service_time.as_secs_f64(),
            ),
            (
                "expected_completion_seconds",
                "Expected completion time of one more request",
                load.expected.as_secs_f64(),
            ),
        ];
        for (name, help, value) in gauges {
            let full = format!("volley_server_{name}");
            let metric = encoder.encode_descriptor(&full, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        if let Some(keys) = allow_list_len {
            let metric = encoder.encode_descriptor(
                "volley_server_allow_list_keys",
                "Client keys on the allow-list in force (absent: the server takes any client)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(keys as i64).encode(metric)?;
        }
        let mut buckets: Vec<(f64, u64)> = ANSWER_DELAY_BOUNDS_US
            .iter()
            .zip(delays.buckets)
            .map(|(&b, n)| (Duration::from_micros(b).as_secs_f64(), n))
            .collect();
        buckets.push((f64::INFINITY, delays.buckets[ANSWER_DELAY_BOUNDS_US.len()]));
        let mut metric = encoder.encode_descriptor(
            "volley_server_answer_delay_seconds",
            "From a probe's arrival to its offer (the answer policy's delay)",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<NoLabelSet>(
            Duration::from_micros(delays.sum_us).as_secs_f64(),
            delays.count,
            &buckets,
            None,
        )
    }
}

/// What a metrics endpoint serves: the figures of the servers, forwarders and proxies
/// registered with it (each once), and any metrics of your own
/// ([`Metrics::registry_mut`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::metrics::Metrics;
/// use volley::{Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key)).await?;
/// let metrics = Metrics::new().server(server.handle());
/// assert!(metrics.render().contains("volley_server_sessions_opened_total 0"));
/// // Served over HTTP at http://ADDR/metrics while `endpoint` lives.
/// let endpoint = metrics.serve("127.0.0.1:0".parse().unwrap()).await?;
/// assert_eq!(endpoint.local_addr().ip().to_string(), "127.0.0.1");
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    ready: Option<Readiness>,
}

/// What `/readyz` asks: `Ok` when ready, else why not.
type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("registry", &self.registry)
            .field("readiness", &self.ready.is_some())
            .finish()
    }
}

impl Metrics {
    /// Nothing registered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a server's counters, load gauges and answer-delay histogram, read from `server`
    /// at each scrape (`volley_server_…`).
    pub fn server(mut self, server: ServerHandle) -> Self {
        self.registry
            .register_collector(Box::new(ServerCollector(server)));
        self
    }

    /// Adds a TCP forwarder's stream counters and open streams, from the `metrics` handed to
    /// [`crate::proxy::TcpForward::metrics`] (`volley_forward_…`).
    pub fn forward(mut self, metrics: Arc<crate::proxy::ForwardMetrics>) -> Self {
        self.registry
            .register_collector(Box::new(ForwardCollector(metrics)));
        self
    }

    /// Adds a proxy's flows, failures, drops, open flows and the answer and handshake times of
    /// its flows' races, from the `metrics` handed to [`crate::proxy::UdpProxy::metrics`] or
    /// [`crate::proxy::TcpProxy::metrics`] (`volley_proxy_…`).
    pub fn proxy(mut self, metrics: Arc<crate::proxy::ProxyMetrics>) -> Self {
        let registry = self.registry.sub_registry_with_prefix("volley_proxy");
        registry.register(
            "answer_time_seconds",
            "From a flow's race start to the winning offer",
            metrics.answer_times.clone(),
        );
        registry.register(
            "handshake_time_seconds",
            "From INIT to ACCEPT for each flow's session",
            metrics.handshake_times.clone(),
        );
        registry.register(
            "connect_time_seconds",
            "From a flow's start (its first datagram, its accepted connection) to its session, and for TCP its stream, being ready: race, handshake and stream set-up",
            metrics.connect_times.clone(),
        );
        registry.register(
            "server_flows",
            "Flows each server won (label server: its address)",
            metrics.server_flows.clone(),
        );
        registry.register(
            "server_open_flows",
            "Flows open now with each server",
            metrics.server_open.clone(),
        );
        registry.register(
            "server_answer_time_seconds",
            "From a flow's race start to the winning offer, by the server that won",
            metrics.server_answer_times.clone(),
        );
        registry.register(
            "server_stream_failures",
            "TCP: streams a server won the race for but could not set up (the connection raced again without it)",
            metrics.server_failures.clone(),
        );
        registry.register_collector(Box::new(ProxyCollector(metrics)));
        self
    }

    /// Adds a forwarder's backend health (`volley_forward_backend_…`), read at each scrape.
    pub fn health(mut self, health: crate::proxy::BackendHealth) -> Self {
        self.registry
            .register_collector(Box::new(HealthCollector(health)));
        self
    }

    /// Adds a process's configuration reloads (`volley_config_reloads_total`,
    /// `volley_config_reload_failures_total`), read from `reloads` at each scrape.
    pub fn reloads(mut self, reloads: Arc<Reloads>) -> Self {
        self.registry
            .register_collector(Box::new(ReloadCollector(reloads)));
        self
    }

    /// What `GET /readyz` answers: 200 `ready` when `ready` returns `Ok`, else 503 with its
    /// reason (say, "draining" or "backend down: refused"). Asked at each request. Without it
    /// `/readyz` always answers 200.
    pub fn readiness(
        mut self,
        ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.ready = Some(Arc::new(ready));
        self
    }

    /// The underlying `prometheus-client` registry, to add metrics of your own before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics text of everything registered, as a scrape would get it.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Serves `GET /metrics` on `addr` (port 0 for any) until the returned endpoint is dropped;
    /// its [`MetricsEndpoint::local_addr`] says where. Anything else gets 404; a request that
    /// does not arrive whole within 5 s, or is larger than 8 KiB, is dropped; at most 16 are
    /// served at once. [`Error::Bind`] if `addr` cannot be bound.
    pub async fn serve(self, addr: SocketAddr) -> Result<MetricsEndpoint, Error> {
        serve(addr, self.registry, self.ready).await
    }
}

/// Configuration reloads of a process (SIGHUP), counted as they happen: see
/// [`Metrics::reloads`].
#[derive(Debug, Default)]
pub struct Reloads {
    done: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl Reloads {
    /// A reload took effect.
    pub fn done(&self) {
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A reload failed (the file did not parse or did not fit): the old configuration stays.
    pub fn failed(&self) {
        self.failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// (reloads that took effect, reloads that failed).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.done.load(std::sync::atomic::Ordering::Relaxed),
            self.failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
struct ReloadCollector(Arc<Reloads>);

impl Collector for ReloadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (done, failed) = self.0.counts();
        for (name, help, value) in [
            (
                "volley_config_reloads",
                "Configuration reloads (SIGHUP) that took effect",
                done,
            ),
            (
                "volley_config_reload_failures",
                "Configuration reloads (SIGHUP) that failed: the file did not parse or did not fit, and the old configuration stayed",
                failed,
            ),
        ] {
            encode_counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct HealthCollector(crate::proxy::BackendHealth);

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        for (name, help, value) in [
            (
                "volley_forward_backend_checks",
                "Active health checks of the backend made",
                s.checks,
            ),
            (
                "volley_forward_backend_checks_failed",
                "Active health checks of the backend that failed (refused, no answer in time, a wrong answer)",
                s.checks_failed,
            ),
            (
                "volley_forward_backend_refusals",
                "Times a forwarded datagram or connection was refused by the backend (ICMP port unreachable, connection refused)",
                s.refusals,
            ),
            (
                "volley_forward_backend_changes",
                "Times the backend's state was set: by the first check's result, then by each change between up and down",
                s.changes,
            ),
        ] {
            encode_counter(&mut encoder, name, help, value)?;
        }
        let metric = encoder.encode_descriptor(
            "volley_forward_backend_up",
            "1 while the backend is up (the server offers sessions), 0 while it is down (the server wins no race)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(s.up)).encode(metric)
    }
}

#[derive(Debug)]
struct ForwardCollector(Arc<crate::proxy::ForwardMetrics>);

impl Collector for ForwardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in self.0.counters() {
            encode_counter(&mut encoder, &format!("volley_forward_{name}"), help, value)?;
        }
        let metric = encoder.encode_descriptor(
            "volley_forward_open_streams",
            "Streams open now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.open_streams() as i64).encode(metric)
    }
}

#[derive(Debug)]
struct ProxyCollector(Arc<crate::proxy::ProxyMetrics>);

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        for (name, help, value) in [
            (
                "flows",
                "Flows started (a new UDP source, an accepted TCP connection)",
                s.flows,
            ),
            (
                "connect_failures",
                "Flows whose session (or TCP stream) could not be opened",
                s.connect_failures,
            ),
            (
                "dropped",
                "UDP datagrams dropped (a flow's queue full, too many flows); TCP connections refused (too many open)",
                s.dropped,
            ),
            (
                "idle_resets",
                "TCP connections reset after the idle timeout without a byte either way",
                s.idle_resets,
            ),
        ] {
            encode_counter(&mut encoder, name, help, value)?;
        }
        let metric = encoder.encode_descriptor(
            "open_flows",
            "Flows with a session now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.open_flows() as i64).encode(metric)
    }
}

/// One counter, read at a scrape: `name` (the encoder adds `_total`), its help, its value.
fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// The OpenMetrics text of `registry`.
fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Requests the metrics endpoint serves at once.
const MAX_REQUESTS: usize = 16;

/// Serves `GET /metrics` for `registry` on `addr`: see [`Metrics::serve`].
async fn serve(
    addr: SocketAddr,
    registry: Registry,
    ready: Option<Readiness>,
) -> Result<MetricsEndpoint, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener.local_addr()?;
    let registry = Arc::new(registry);
    // Scrapers are few: a bound on requests at once keeps a connection flood from piling up
    // tasks (a connection beyond it waits in the listen queue, then is dropped by its client).
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let registry = Arc::clone(&registry);
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &registry, ready.as_ref()).await {
                    debug!(%peer, error = %e, "metrics request dropped");
                }
                drop(permit);
            });
        }
    });
    Ok(MetricsEndpoint { local, task })
}

/// A running metrics endpoint ([`Metrics::serve`]); dropping it stops it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use volley::metrics::Metrics;
///
/// let endpoint = Metrics::new().serve("127.0.0.1:0".parse().unwrap()).await?;
/// let mut scrape = tokio::net::TcpStream::connect(endpoint.local_addr()).await?;
/// scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: volley\r\n\r\n").await?;
/// let mut page = String::new();
/// scrape.read_to_string(&mut page).await?;
/// assert!(page.starts_with("HTTP/1.1 200 OK"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MetricsEndpoint {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Where it listens: scrape `http://{local_addr}/metrics`.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    ready: Option<&Readiness>,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let head = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            request.extend_from_slice(&buf[..n]);
            if request.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if request.len() > 8 * 1024 {
                return Ok(false);
            }
        }
    })
    .await
    .unwrap_or(Ok(false))?;
    if !head {
        return Ok(());
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let text = "text/plain; charset=utf-8";
    let (status, kind, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        (b"GET", b"/healthz") => ("200 OK", text, "alive\n".to_string()),
        (b"GET", b"/readyz") => match ready.map_or(Ok(()), |r| r()) {
            Ok(()) => ("200 OK", text, "ready\n".to_string()),
            Err(why) => (
                "503 Service Unavailable",
                text,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            text,
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::proxy::{ForwardMetrics, ProxyMetrics};

    #[test]
    fn a5_the_limits_counters_are_served_under_the_usual_names() {
        let forward = Arc::new(ForwardMetrics::default());
        let proxy = Arc::new(ProxyMetrics::default());
        proxy.idle_resets.fetch_add(2, Ordering::Relaxed);
        let page = Metrics::new()
            .forward(Arc::clone(&forward))
            .proxy(Arc::clone(&proxy))
            .render();
        for line in [
            "volley_forward_idle_total 0\n",
            "volley_forward_datagrams_dropped_total 0\n",
            "volley_forward_datagram_sessions_total 0\n",
            "volley_proxy_idle_resets_total 2\n",
        ] {
            assert!(page.contains(line), "missing {line:?} in {page}");
        }
        // Every server counter is served by its field's name (a test in `tests/metrics.rs`
        // checks the page); the new one is among them.
        assert!(
            volley_proto::ServerStats::default()
                .counters()
                .iter()
                .any(|(name, _)| *name == "versions_refused")
        );
    }
}
