//! `volley connect --server-key PUBKEY [--service NAME] [--send TEXT] ADDR...`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use volley::{Client, ClientConfig, PublicKey};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A pinned server public key (hex, from `volley keygen`). Repeat for fleets with several keys.
    #[arg(long = "server-key", required = true)]
    server_keys: Vec<String>,
    /// Service to ask for.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Send this text over the session and print the reply.
    #[arg(long)]
    send: Option<String>,
    /// Give up when no server answered within this many seconds.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Servers to race.
    #[arg(required = true)]
    servers: Vec<SocketAddr>,
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
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
    anyhow::ensure!(
        args.timeout > 0.0 && args.timeout < 3600.0,
        "--timeout must be between 0 and 3600 seconds"
    );
    let mut config = ClientConfig::new(keys);
    config.service = args.service.into_bytes();
    config.race.deadline = Duration::from_secs_f64(args.timeout);
    config.handshake_timeout = Duration::from_secs_f64(args.timeout);
    config.max_failovers = 0;
    let started = Instant::now();
    let mut session = match Client::new(config).connect(&args.servers).await {
        Ok(s) => s,
        Err(volley::Error::Connect(volley::ConnectError::NoOffer(_))) => bail!(
            "no server answered within {}s ({} probed; check addresses, --server-key and --service)",
            args.timeout,
            args.servers.len()
        ),
        Err(e) => return Err(e.into()),
    };
    let connect_time = started.elapsed();
    // Give the losers a moment to answer, so their (voided) offers are measured too.
    let wait_until = Instant::now() + Duration::from_millis(100);
    while session
        .report()
        .is_some_and(|r| r.offers.len() < args.servers.len())
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let report = session.report().context("client session has a report")?;
    let winner = session.remote();
    println!("winner:     {winner}");
    for (server, t) in &report.offers {
        let note = if *server == winner {
            "selected"
        } else {
            "late, voided"
        };
        println!(
            "  offer     {server:<22} answered in {:>10}  ({note})",
            ms(*t)
        );
    }
    for server in args
        .servers
        .iter()
        .filter(|s| !report.offers.iter().any(|(o, _)| o == *s))
    {
        println!("  offer     {server:<22} no answer");
    }
    println!("late offers voided: {}", report.late_offers);
    if let Some(h) = report.handshake_time {
        println!("handshake:  {}", ms(h));
    }
    println!("connect:    {} (race + handshake)", ms(connect_time));
    if let Some(text) = args.send {
        let sent = Instant::now();
        let mut reply = None;
        // Datagrams are unreliable: try a few times before giving up.
        for _ in 0..3 {
            session.send(text.as_bytes()).await?;
            if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), session.recv()).await {
                reply = Some(r?);
                break;
            }
        }
        let reply = reply.context("no reply to --send within 3 s")?;
        println!("sent:       {text:?}");
        println!(
            "reply:      {:?} in {}",
            String::from_utf8_lossy(&reply),
            ms(sent.elapsed())
        );
    }
    session.close();
    // Let the driver send the CLOSE before the runtime stops.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}
