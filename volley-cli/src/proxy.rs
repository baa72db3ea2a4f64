//! `volley proxy --listen udp://ADDR --server-key PUB [--service NAME] POOL...`: the client side
//! of the UDP proxy (D1). Applications send to ADDR as if it were the service; each flow races
//! the pool and rides its own encrypted session to the server-side proxy
//! (`volley serve --forward udp://BACKEND`).

use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::net::UdpSocket;
use volley::proxy::udp::UdpProxyConfig;
use volley::{Client, ClientConfig, PublicKey};

use crate::target::{Target, resolve};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where applications send: udp://IP:PORT (or udp://HOST:PORT).
    #[arg(long)]
    listen: Target,
    /// A pinned server public key (hex, from `volley keygen` or `volley pubkey`). Repeat for
    /// fleets with several keys.
    #[arg(long = "server-key", required = true)]
    server_keys: Vec<String>,
    /// Service to ask for (as the servers' --service).
    #[arg(long, default_value = "echo")]
    service: String,
    /// End a flow after this many seconds without a datagram either way.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout: f64,
    /// Serve Prometheus metrics (flows, failures, drops, answer and handshake times) at
    /// http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// The servers: IP:PORT or HOST:PORT (every address of a name joins the pool).
    #[arg(required = true, value_name = "POOL")]
    servers: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let keys = args
        .server_keys
        .iter()
        .map(|k| {
            PublicKey::from_hex(k)
                .with_context(|| format!("--server-key {k:?} is not 64 hex digits"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        args.idle_timeout.is_finite() && args.idle_timeout > 0.0 && args.idle_timeout <= 86_400.0,
        "--idle-timeout must be above 0 and at most 86400 seconds"
    );
    let mut pool = Vec::new();
    for s in &args.servers {
        pool.extend(resolve(s).await?);
    }
    // One socket races a pool, so one family: names that resolve to both (`localhost`) keep
    // the first address's family; literal addresses of both families are refused.
    let family = pool[0].is_ipv4();
    let literal_mix = args
        .servers
        .iter()
        .filter_map(|s| s.parse::<std::net::SocketAddr>().ok())
        .any(|a| a.is_ipv4() != family);
    ensure!(
        !literal_mix,
        "the pool mixes IPv4 and IPv6 addresses; run one proxy per family"
    );
    let before = pool.len();
    pool.retain(|a| a.is_ipv4() == family);
    if pool.len() < before {
        tracing::info!(
            kept = pool.len(),
            left_out = before - pool.len(),
            "names resolved to both families: racing the first address's family"
        );
    }
    let mut config = ClientConfig::new(keys);
    config.service = args.service.clone().into_bytes();
    config
        .validate()
        .context("the client's settings do not fit together")?;
    let Target::Udp(listen) = &args.listen;
    let listen = crate::target::resolve_one(listen).await?;
    let socket = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    say!(
        "volley proxy: udp://{} → {} server(s) ({}), service {}",
        socket.local_addr()?,
        pool.len(),
        pool.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        args.service
    );
    let proxy = UdpProxyConfig {
        idle_timeout: Duration::from_secs_f64(args.idle_timeout),
        ..UdpProxyConfig::default()
    };
    let metrics = std::sync::Arc::new(volley::proxy::udp::UdpProxyMetrics::default());
    let _endpoint = match args.metrics {
        Some(addr) => {
            let endpoint = volley::metrics::serve(
                addr,
                volley::metrics::proxy_registry(std::sync::Arc::clone(&metrics)),
            )
            .await?;
            say!(
                "volley proxy: metrics at http://{}/metrics",
                endpoint.local_addr()
            );
            Some(endpoint)
        }
        None => None,
    };
    let stats = volley::proxy::udp::run_with_metrics(
        socket,
        Client::new(config),
        pool,
        proxy,
        metrics,
        crate::serve::shutdown_signal(),
    )
    .await?;
    say!(
        "volley proxy: stopped. flows {} connect failures {} dropped {}",
        stats.flows,
        stats.connect_failures,
        stats.dropped
    );
    Ok(())
}
