//! `volley serve --listen ADDR --key FILE [--service NAME] [--capacity N]`

use std::net::SocketAddr;
use std::path::PathBuf;

use volley::{Server, ServerConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on, e.g. 127.0.0.1:7001.
    #[arg(long)]
    listen: SocketAddr,
    /// Secret key file written by `volley keygen`.
    #[arg(long)]
    key: PathBuf,
    /// Service name to answer probes for.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Most sessions at once; when full, probes are not answered.
    #[arg(long)]
    capacity: Option<u32>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let key = crate::keygen::read_key(&args.key)?;
    let mut config = ServerConfig::new(key);
    anyhow::ensure!(
        !args.service.is_empty() && args.service.len() <= volley_proto::MAX_SERVICE_LEN,
        "service name must be 1 to {} bytes",
        volley_proto::MAX_SERVICE_LEN
    );
    config.services = vec![args.service.clone().into_bytes()];
    config.capacity = args.capacity;
    let server = Server::bind(args.listen, config).await?;
    println!(
        "volley serve: listening on {} (service {}, capacity {}), public key {}",
        server.local_addr(),
        args.service,
        args.capacity
            .map_or("unbounded".to_string(), |c| c.to_string()),
        server.public_key().to_hex()
    );
    let (stats_tx, stats_rx) = tokio::sync::oneshot::channel();
    volley::echo::serve_with(server, shutdown_signal(), move |s| {
        let _ = stats_tx.send(s);
    })
    .await;
    if let Ok(s) = stats_rx.await {
        println!(
            "volley serve: stopped. probes {} offers {} withheld(full) {} sessions opened {} closed {} \
             cookie rejects {} rate-limited {} malformed {}",
            s.probes_received,
            s.offers_sent,
            s.probes_withheld_full,
            s.sessions_opened,
            s.sessions_closed,
            s.init_cookie_bad_mac
                + s.init_cookie_expired
                + s.init_cookie_unknown_key
                + s.init_cookie_malformed,
            s.init_rate_limited,
            s.malformed_truncated
                + s.malformed_length
                + s.malformed_type
                + s.malformed_version
                + s.malformed_too_long,
        );
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
