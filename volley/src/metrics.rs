//! Prometheus metrics (D5): a [`Registry`] holding a server's counters, load gauges and
//! answer-delay histogram — read from the server's published snapshot at each scrape — and
//! [`serve`], a small HTTP endpoint answering `GET /metrics` in the OpenMetrics text format.
//! Every name starts with `volley_`.

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
        let (stats, load, delays) = self.0.snapshot();
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

/// A registry with `server`'s metrics; add your own to it before serving it.
pub fn server_registry(server: ServerHandle) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector(server)));
    registry
}

/// Adds a TCP forwarder's stream counters to `registry` (a server's, from [`server_registry`]):
/// `volley_forward_<name>_total` and the `volley_forward_open_streams` gauge.
pub fn register_forward(
    registry: &mut Registry,
    counters: Arc<crate::proxy::forward::StreamCounters>,
) {
    registry.register_collector(Box::new(ForwardCollector(counters)));
}

#[derive(Debug)]
struct ForwardCollector(Arc<crate::proxy::forward::StreamCounters>);

impl Collector for ForwardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in self.0.counters() {
            let full = format!("volley_forward_{name}");
            let metric = encoder.encode_descriptor(&full, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "volley_forward_open_streams",
            "Streams open now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.open() as i64).encode(metric)
    }
}

/// A registry with a proxy's metrics (UDP or TCP): flows, connect failures, drops, open flows, and the
/// answer and handshake times of the flows' races.
pub fn proxy_registry(proxy: Arc<crate::proxy::ProxyMetrics>) -> Registry {
    let mut registry = Registry::with_prefix("volley_proxy");
    registry.register(
        "answer_time_seconds",
        "From a flow's race start to the winning offer",
        proxy.answer_times.clone(),
    );
    registry.register(
        "handshake_time_seconds",
        "From INIT to ACCEPT for each flow's session",
        proxy.handshake_times.clone(),
    );
    registry.register_collector(Box::new(ProxyCollector(proxy)));
    registry
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
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
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

/// The OpenMetrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Requests the metrics endpoint serves at once.
const MAX_REQUESTS: usize = 16;

/// Serves `GET /metrics` on `addr` until the task is dropped: the handle's `local_addr` says
/// where. Anything else gets 404; a request that does not arrive whole within 5 s, or is
/// larger than 8 KiB, is dropped; at most 16 are served at once.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<MetricsEndpoint, Error> {
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
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &registry).await {
                    debug!(%peer, error = %e, "metrics request dropped");
                }
                drop(permit);
            });
        }
    });
    Ok(MetricsEndpoint { local, task })
}

/// A running metrics endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsEndpoint {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
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
    let (status, kind, body) =
        if method == b"GET" && (path == b"/metrics" || path.starts_with(b"/metrics?")) {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(registry),
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found: try /metrics\n".to_string(),
            )
        };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
