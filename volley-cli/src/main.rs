//! `volley`: keygen, pubkey, serve, connect, demo. Each subcommand lives in its own module; this file only
//! parses arguments, sets up logging and maps errors to one line and an exit code.

/// `println!` that never panics: when stdout is closed (`volley serve | head -1`) the process
/// ends quietly with status 0, as a Unix tool that dies of SIGPIPE would end; another write
/// error ends it with one line on stderr and status 1.
macro_rules! say {
    () => {
        $crate::say_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

mod config_file;
mod connect;
mod demo;
mod keygen;
mod proxy;
mod pubkey;
mod serve;
mod target;

use clap::{Parser, Subcommand};

/// Client-driven server load distribution over UDP.
#[derive(Parser, Debug)]
#[command(name = "volley", version, about)]
struct Cli {
    /// Log lines as plain text or one JSON object per line (levels and targets from RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new server secret key to a file (mode 0600) and print its public key.
    Keygen(keygen::Args),
    /// Print the public key of a key file written by `keygen`.
    Pubkey(pubkey::Args),
    /// Serve the echo service until SIGINT or SIGTERM.
    Serve(serve::Args),
    /// Race servers, open a session with the winner (or the K best), optionally send a datagram.
    Connect(connect::Args),
    /// Put volley in front of a UDP service: applications send here, each flow races the pool.
    Proxy(proxy::Args),
    /// Race clients against an in-process fleet with uneven load on loopback, once per answer
    /// policy, and show where the sessions went.
    Demo(demo::Args),
}

fn main() {
    let cli = Cli::parse();
    let default = match cli.command {
        Command::Serve(_) | Command::Proxy(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour codes only on a terminal: not in a log file, a pipe or a journal.
        LogFormat::Plain => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let result = match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Pubkey(a) => pubkey::run(a),
        Command::Serve(a) => runtime().and_then(|rt| rt.block_on(serve::run(a))),
        Command::Connect(a) => runtime().and_then(|rt| rt.block_on(connect::run(a))),
        Command::Proxy(a) => runtime().and_then(|rt| rt.block_on(proxy::run(a))),
        Command::Demo(a) => runtime().and_then(|rt| rt.block_on(demo::run(a))),
    };
    if let Err(e) = result {
        eprintln!("volley: {e:#}");
        std::process::exit(1);
    }
}

/// Writes one line to stdout (see [`say!`]).
pub(crate) fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("volley: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
