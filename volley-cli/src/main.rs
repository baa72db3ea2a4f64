//! `volley`: keygen, serve, connect, demo. Each subcommand lives in its own module; this file only
//! parses arguments, sets up logging and maps errors to one line and an exit code.

mod connect;
mod demo;
mod keygen;
mod serve;

use clap::{Parser, Subcommand};

/// Client-driven server load distribution over UDP.
#[derive(Parser, Debug)]
#[command(name = "volley", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new server secret key to a file (mode 0600) and print its public key.
    Keygen(keygen::Args),
    /// Serve the echo service until SIGINT or SIGTERM.
    Serve(serve::Args),
    /// Race servers, open a session with the winner (or the K best), optionally send a datagram.
    Connect(connect::Args),
    /// Race clients against an in-process fleet with uneven load on loopback, once per answer
    /// policy, and show where the sessions went.
    Demo(demo::Args),
}

fn main() {
    let cli = Cli::parse();
    let default = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Serve(a) => runtime().and_then(|rt| rt.block_on(serve::run(a))),
        Command::Connect(a) => runtime().and_then(|rt| rt.block_on(connect::run(a))),
        Command::Demo(a) => runtime().and_then(|rt| rt.block_on(demo::run(a))),
    };
    if let Err(e) = result {
        eprintln!("volley: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
