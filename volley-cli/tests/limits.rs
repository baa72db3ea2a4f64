//! A5: `volley serve --forward` holds no more sessions than its open files allow. Started with
//! an open-file limit of 128 (`ulimit -n` in the shell that starts it), a TCP forwarder may hold
//! (128 − 64 − 8) / 2 = 28 sessions: the 29th client is refused (probes withheld, PROTOCOL.md
//! §7.2.1 step 4), while the metrics endpoint, the stream listener and the sessions it holds go
//! on working, and a freed place is taken again.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use common::{HANG_GUARD, Killed, keygen, ready, scrape, scratch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const OPEN_FILES: u32 = 128;
const SESSIONS: usize = 28;

fn addr(v: &serde_json::Value) -> SocketAddr {
    v.as_str().expect("an address").parse().unwrap()
}

/// A TCP echo service on a thread of its own.
fn echo_backend() -> SocketAddr {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in backend.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    at
}

/// One application connection through the proxy, with one echo through it.
async fn echoing(proxy: SocketAddr, i: usize) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let msg = format!("connection {i}");
    conn.write_all(msg.as_bytes()).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    timeout(HANG_GUARD, conn.read_exact(&mut back))
        .await
        .expect("an echo in time")
        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
    assert_eq!(back, msg.as_bytes());
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a5_serve_forward_holds_the_sessions_its_open_files_allow_and_keeps_serving() {
    let dir = scratch("fd-limit");
    let (key, public) = keygen(&dir);
    let backend = echo_backend();
    let ready_file = dir.join("serve.json");
    // The limit is set in the shell that then becomes volley (soft and hard alike).
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {OPEN_FILES} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_volley"))
        .args(["serve", "--listen", "127.0.0.1:0", "--key", &key])
        .args(["--forward", &format!("tcp://{backend}")])
        .args(["--metrics", "127.0.0.1:0", "--ready-file"])
        .arg(&ready_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    let said = ready(&mut child, &ready_file);
    let _serve = Killed(child);
    let server = addr(&said["udp"]);
    let metrics = addr(&said["metrics"]).to_string();

    // The client side in this process: a TCP proxy to that one server.
    let key = volley::PublicKey::from_hex(&public).unwrap();
    let client = volley::Client::new(volley::ClientConfig::new(vec![key]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let proxy_metrics = std::sync::Arc::new(volley::proxy::ProxyMetrics::default());
    tokio::spawn(
        volley::proxy::TcpProxy::new(client, vec![server])
            .attempts(1)
            .metrics(std::sync::Arc::clone(&proxy_metrics))
            .serve(listener, std::future::pending()),
    );

    // 28 connections, each a session with a stream and a backend connection: all served.
    let mut held = Vec::new();
    for i in 0..SESSIONS {
        held.push(echoing(proxy, i).await);
    }
    // One more: the server is full, withholds its offer, and the proxy resets the connection.
    let mut refused = tokio::net::TcpStream::connect(proxy).await.unwrap();
    refused.write_all(b"one too many").await.unwrap();
    let mut buf = [0u8; 16];
    let n = timeout(HANG_GUARD, refused.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the 29th connection got no echo");
    assert_eq!(proxy_metrics.stats().connect_failures, 1);
    // The metrics endpoint still answers, and says why.
    let page = tokio::task::spawn_blocking(move || scrape(&metrics))
        .await
        .unwrap();
    assert!(
        page.contains(&format!("volley_server_sessions {SESSIONS}")),
        "{page}"
    );
    let withheld = page
        .lines()
        .find_map(|l| l.strip_prefix("volley_server_probes_withheld_full_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("the counter");
    assert!(withheld >= 1, "{page}");
    assert!(page.contains("volley_forward_streams_total 28"), "{page}");
    // Every held stream still works.
    for (i, conn) in held.iter_mut().enumerate() {
        conn.write_all(b"still").await.unwrap();
        let mut back = [0u8; 5];
        timeout(HANG_GUARD, conn.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("held connection {i}: {e}"));
    }
    // One ends cleanly: its place is taken again by a new connection.
    let mut done = held.pop().unwrap();
    done.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(HANG_GUARD, done.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    drop(done);
    let again = timeout(HANG_GUARD, async {
        loop {
            let mut conn = tokio::net::TcpStream::connect(proxy).await.unwrap();
            conn.write_all(b"again").await.unwrap();
            let mut back = [0u8; 5];
            if let Ok(Ok(_)) = timeout(Duration::from_secs(10), conn.read_exact(&mut back)).await {
                return conn;
            }
        }
    })
    .await
    .expect("a freed place is taken again");
    drop(again);
    drop(held);
}
