//! Connect cases: sequential connects from the generator thread, measured per connect.
//!
//! - volley: a race over 8 local servers (probe every one, earliest offer wins) and the Noise
//!   handshake with the winner, through the public `Client`, then a normal close;
//! - quinn: one QUIC handshake (TLS 1.3, self-signed certificate pinned as the only root) with
//!   one local quinn server, then a close;
//! - quinn ×8: racing 8 quinn handshakes at once and keeping the first (Happy Eyeballs style),
//!   the server side's CPU per session being the comparison.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::future::select_ok;
use hdrhistogram::Histogram;
use volley::{Client, ClientConfig, PublicKey};

use super::load::histogram;

/// A self-signed certificate for "localhost": the server's chain and key, and the client's
/// trust anchor.
pub struct Tls {
    pub cert: rustls::pki_types::CertificateDer<'static>,
    pub key: rustls::pki_types::PrivatePkcs8KeyDer<'static>,
}

impl Tls {
    pub fn generate() -> anyhow::Result<Self> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        Ok(Self {
            cert: cert.cert.der().clone(),
            key: rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()),
        })
    }
}

/// Starts a quinn server on 127.0.0.1:0 that accepts every connection and lets it close.
pub fn quinn_server(tls: &Tls) -> anyhow::Result<(quinn::Endpoint, SocketAddr)> {
    let config =
        quinn::ServerConfig::with_single_cert(vec![tls.cert.clone()], tls.key.clone_key().into())?;
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    let accepting = endpoint.clone();
    tokio::task::spawn_local(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::task::spawn_local(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    Ok((endpoint, addr))
}

fn quinn_client(tls: &Tls) -> anyhow::Result<quinn::Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.cert.clone())?;
    let config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Connects, timed.
#[derive(Debug)]
pub struct Connects {
    pub count: u64,
    pub failed: u64,
    pub latency: Histogram<u64>,
}

impl Connects {
    fn new() -> Self {
        Self {
            count: 0,
            failed: 0,
            latency: histogram(),
        }
    }
}

/// Sequential volley connects over `pool` until `end`; those finishing after `measure_from`
/// are recorded.
pub async fn volley_connects(
    pool: Vec<SocketAddr>,
    key: PublicKey,
    measure_from: Instant,
    end: Instant,
) -> Connects {
    let mut config = ClientConfig::new(vec![key]);
    config.fanout = None;
    let client = Client::new(config);
    let mut out = Connects::new();
    while Instant::now() < end {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), client.connect(&pool)).await {
            Ok(Ok(session)) => {
                let done = Instant::now();
                session.close();
                drop(session);
                if done >= measure_from {
                    out.count += 1;
                    let _ = out.latency.record((done - t).as_micros().max(1) as u64);
                }
            }
            _ => out.failed += 1,
        }
    }
    out
}

/// Sequential quinn connects until `end`: to `servers[0]` alone, or racing all of `servers`
/// and keeping the first (the others are closed at once).
pub async fn quinn_connects(
    tls: &Tls,
    servers: Vec<SocketAddr>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Connects> {
    let endpoint = quinn_client(tls)?;
    let mut out = Connects::new();
    while Instant::now() < end {
        let t = Instant::now();
        let attempts = servers
            .iter()
            .map(|s| endpoint.connect(*s, "localhost"))
            .collect::<Result<Vec<_>, _>>()
            .context("quinn connect")?;
        let race = select_ok(attempts.into_iter().map(Box::pin));
        match tokio::time::timeout(Duration::from_secs(5), race).await {
            Ok(Ok((conn, rest))) => {
                let done = Instant::now();
                conn.close(0u32.into(), b"done");
                // The losers: closed as soon as they come up (their servers did the work).
                for pending in rest {
                    tokio::task::spawn_local(async move {
                        if let Ok(c) = pending.await {
                            c.close(0u32.into(), b"lost");
                        }
                    });
                }
                if done >= measure_from {
                    out.count += 1;
                    let _ = out.latency.record((done - t).as_micros().max(1) as u64);
                }
            }
            _ => out.failed += 1,
        }
    }
    endpoint.wait_idle().await;
    Ok(out)
}
