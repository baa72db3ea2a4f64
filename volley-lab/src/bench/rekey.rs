//! Key updates under load (PROTOCOL.md §5.5): one session over loopback carrying `rate`
//! datagrams a second each way (an echo) for `seconds`, both sides updating their sending key
//! once a second (`rekey_after_packets` = `rate`, the 1 s floor binding too). It counts what the
//! client sent, what came back, what either side dropped (authentication, replay) and the key
//! updates each side made and followed. The server runs on one pinned thread, the client on
//! another.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use volley::{Client, ClientConfig, Server, ServerConfig, SessionConfig, StaticKeypair};

use crate::harness::process::pin_to;

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RekeyResult {
    pub rate: u64,
    pub seconds: f64,
    /// Datagrams the client sent, and distinct ones that came back.
    pub sent: u64,
    pub echoed: u64,
    /// Key updates: the client's sending key, the server's sending key, and each side's
    /// receiving key following the other.
    pub client_updates: u64,
    pub server_updates: u64,
    pub client_followed: u64,
    pub server_followed: u64,
    /// Packets opened with the previous key (reordered across a switch).
    pub opened_with_previous_key: u64,
    /// Packets either side dropped as forged or replayed.
    pub rejected: u64,
    /// Datagrams the application side dropped for a full receive queue (not the protocol's).
    pub queue_dropped: u64,
}

fn session_config(rate: u64) -> SessionConfig {
    SessionConfig {
        rekey_after_packets: rate,
        idle_timeout: Duration::from_secs(30),
        ..SessionConfig::default()
    }
}

/// Runs the session for `seconds` at `rate` datagrams a second, the server pinned to
/// `server_cpu` and the client to `client_cpu`.
pub fn run(
    rate: u64,
    seconds: f64,
    server_cpu: usize,
    client_cpu: usize,
) -> anyhow::Result<RekeyResult> {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let public = key.public();
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let (stats_tx, stats_rx) = mpsc::channel();
    let server = thread::spawn(move || -> anyhow::Result<()> {
        pin_to(server_cpu);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut cfg = ServerConfig::new(key);
            cfg.session = session_config(rate);
            let mut server = Server::bind("127.0.0.1:0".parse()?, cfg).await?;
            addr_tx.send(server.local_addr())?;
            let session = server
                .accept()
                .await
                .ok_or_else(|| anyhow::anyhow!("no session"))?;
            // Echo until the client closes.
            while let Ok(d) = session.recv().await {
                let _ = session.send_bytes(d).await;
            }
            stats_tx.send((session.stats(), server.stats()))?;
            Ok(())
        })
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(5))?;
    pin_to(client_cpu);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (client_stats, sent, echoed) = rt.block_on(async move {
        let mut cfg = ClientConfig::new(vec![public]);
        cfg.session = session_config(rate);
        let session = Client::new(cfg).connect(&[addr]).await?;
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let mut seen = HashSet::new();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let per_tick = (rate / 1000).max(1);
        while Instant::now() < end {
            tokio::select! {
                _ = tick.tick() => {
                    // Catch up with the schedule: `rate` a second since the start.
                    let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                    let n = due.saturating_sub(sent).min(per_tick * 4);
                    for _ in 0..n {
                        if session.try_send(&sent.to_be_bytes()).is_ok() {
                            sent += 1;
                        }
                    }
                }
                d = session.recv() => {
                    if let Ok(d) = d && let Ok(b) = <[u8; 8]>::try_from(&d[..]) {
                        seen.insert(u64::from_be_bytes(b));
                    }
                }
            }
        }
        // The last replies.
        let drain = Instant::now() + Duration::from_millis(300);
        while let Ok(Ok(d)) = tokio::time::timeout_at(drain.into(), session.recv()).await {
            if let Ok(b) = <[u8; 8]>::try_from(&d[..]) {
                seen.insert(u64::from_be_bytes(b));
            }
        }
        let stats = session.stats();
        session.close();
        // Let the CLOSE go out.
        tokio::time::sleep(Duration::from_millis(50)).await;
        anyhow::Ok((stats, sent, seen.len() as u64))
    })?;
    let (server_session, server_stats) = stats_rx.recv_timeout(Duration::from_secs(10))?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    let (c, s) = (client_stats.protocol, server_session.protocol);
    Ok(RekeyResult {
        rate,
        seconds,
        sent,
        echoed,
        client_updates: c.key_updates_sent,
        server_updates: s.key_updates_sent,
        client_followed: c.key_updates_received,
        server_followed: s.key_updates_received,
        opened_with_previous_key: c.opened_with_previous_key + s.opened_with_previous_key,
        rejected: c.dropped_auth
            + c.dropped_replay
            + server_stats.data_auth_failed
            + server_stats.data_replayed,
        queue_dropped: client_stats.received_dropped + server_session.received_dropped,
    })
}
