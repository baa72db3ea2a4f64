//! A process's metrics endpoint as the soak reads it: `GET /metrics`, the samples without labels
//! by name, and a server's session counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` from a process's metrics endpoint, if it has one: every sample line without
/// labels, by name; `None` when there is no endpoint or it did not answer 200 within 2 s.
pub(super) async fn scrape(endpoint: Option<SocketAddr>) -> Option<HashMap<String, f64>> {
    let addr = endpoint?;
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()??;
    let (head, text) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| parse_metrics(text))
}

/// The samples of an OpenMetrics text that carry no labels, by name.
pub(super) fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A server's session counters in one scrape: (opened, closed).
pub(super) fn session_counts(metrics: &HashMap<String, f64>) -> (u64, u64) {
    (
        counter(metrics, "volley_server_sessions_opened_total"),
        counter(metrics, "volley_server_sessions_closed_total"),
    )
}

/// One counter or gauge of a scrape; 0 when missing.
pub(super) fn counter(metrics: &HashMap<String, f64>, name: &str) -> u64 {
    metrics.get(name).copied().unwrap_or(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_samples_without_labels_are_read_by_name() {
        let text = "# HELP volley_server_sessions Sessions open\n# TYPE volley_server_sessions gauge\nvolley_server_sessions 7\nvolley_server_sessions_opened_total 12\nvolley_server_answer_delay_seconds_bucket{le=\"0.001\"} 3\n# EOF\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("volley_server_sessions"), Some(&7.0));
        assert_eq!(m.get("volley_server_sessions_opened_total"), Some(&12.0));
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(session_counts(&m), (12, 0));
    }
}
