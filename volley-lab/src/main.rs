//! `volley-lab`: volley's experiments, one subcommand each — `bench` (the datapath, and `bench
//! proxy` for the proxies), `select` (the side-by-side selection benchmark on loopback), `sim`
//! (the discrete-event simulator on the real protocol state machines), `chaos` (faults on real
//! sockets) and `soak` (the long run with restarts). The library's `harness` module holds the
//! plumbing they share and `peers` the balancers more than one of them runs. What each measures:
//! `docs/BENCHMARKS.md`; what they found: `docs/RESULTS.md` and `docs/RELIABILITY.md`.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "volley-lab",
    version,
    about = "volley's benchmarks and simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Side-by-side selection benchmark on loopback: 16 servers x 4 slots, open-loop Poisson
    /// arrivals, every policy on the same trace.
    Select(volley_lab::select::SelectArgs),
    /// Datapath benchmark: bare batched echo vs volley's responder, forged-INIT floods and
    /// encrypted DATA echo, server and generator pinned to one CPU each.
    Bench(volley_lab::bench::BenchArgs),
    /// Faults on real sockets (docs/BENCHMARKS.md §5): `volley serve` processes behind seeded UDP
    /// fault relays (delay, jitter, loss, duplication, blackhole), connects cold and warm, and a
    /// server killed, stopped and partitioned under a session.
    Chaos(volley_lab::chaos::ChaosArgs),
    /// The long run (docs/BENCHMARKS.md §5): `volley serve` processes, library clients and a
    /// `volley proxy` at moderate load for --minutes, with restarts and key rotations; memory,
    /// descriptors, sessions, failovers and counter consistency over time, and a plot.
    Soak(volley_lab::soak::SoakArgs),
    /// Discrete-event simulator driving the real volley-proto state machines: the supermarket
    /// check, then volley's policies at 10,000 servers, and zones.
    Sim(Box<volley_lab::sim::SimArgs>),
    /// (Internal) the child server of `bench`'s memory measurement.
    #[command(hide = true)]
    MemoryServer,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: not in a log file, a pipe or a journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Select(args) => volley_lab::select::run(args),
        Command::Sim(args) => volley_lab::sim::run(*args),
        Command::Bench(args) => volley_lab::bench::run(args),
        Command::Chaos(args) => volley_lab::chaos::run(args),
        Command::Soak(args) => volley_lab::soak::run(args),
        Command::MemoryServer => volley_lab::bench::memory::serve_child(),
    }
}
