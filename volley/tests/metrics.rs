//! The Prometheus endpoint, scraped over HTTP on loopback (D5).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use volley::{Client, ClientConfig, Server, ServerConfig, ServerStats, StaticKeypair};

const BOUND: Duration = Duration::from_secs(20);

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    timeout(BOUND, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn d5_metrics_endpoint_serves_every_counter_the_load_and_answer_delays() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let mut cfg = ServerConfig::new(key.clone());
    cfg.capacity = Some(4);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let endpoint = volley::metrics::Metrics::new()
        .server(handle.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    tokio::spawn(volley::echo::serve(server, std::future::pending()));
    let session = Client::new(ClientConfig::new(vec![key.public()]))
        .connect(&[addr])
        .await
        .unwrap();
    session.send(b"ping").await.unwrap();
    timeout(BOUND, session.recv()).await.unwrap().unwrap();
    // The server publishes after its wake-ups; wait for the session to show.
    timeout(BOUND, async {
        while handle.stats().sessions_opened != 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap();

    let page = get(endpoint.local_addr(), "/metrics").await;
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("Content-Type: application/openmetrics-text"));
    for (name, _) in ServerStats::default().counters() {
        assert!(
            page.contains(&format!("volley_server_{name}_total ")),
            "missing counter {name}"
        );
    }
    assert!(
        page.contains("volley_server_probes_received_total 1\n"),
        "{page}"
    );
    assert!(page.contains("volley_server_sessions_opened_total 1\n"));
    assert!(
        page.contains("volley_server_sessions 1"),
        "load gauges: {page}"
    );
    assert!(page.contains("volley_server_capacity 4"), "{page}");
    assert!(
        page.contains("volley_server_answer_delay_seconds_count 1\n"),
        "one offer answered"
    );
    assert!(page.contains("volley_server_answer_delay_seconds_bucket{le=\"+Inf\"} 1\n"));
    assert!(page.trim_end().ends_with("# EOF"));

    let missing = get(endpoint.local_addr(), "/other").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}
