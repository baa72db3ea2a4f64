//! `volley-lab chaos`: the fault measurement of `docs/BENCHMARKS.md` §5 on real sockets and
//! the real `volley` binary. This kernel has no netem, so faults come from our own seeded relay
//! ([`relay`]), one per server, between the clients and `volley serve` processes.
//!
//! Cells: 1 and 3 servers × loss 0/5/20/30 % each way (with 5 % duplication and up to 2 ms of
//! jitter, hence reordering, on a 5 ms one-way delay: a 10 ms path), each with `--connects`
//! connects of two kinds:
//! - **cold**: a fresh `volley connect --timeout 5 --send …` process per connect (nothing
//!   measured yet: cold-start timers). Success = it exited 0 with the reply; connect time as the
//!   binary reports it (race + handshake).
//! - **warm**: one in-process [`volley::Client`] per fleet making every connect of its cells
//!   (its measured answer and handshake times set its timers; 5 uncounted connects open each
//!   cell), each followed by an exchange of 10 datagrams; success = session and all 10 echoes
//!   within the deadline.
//!
//! Then the failure cases on 3 servers, clean path: a session sending every 50 ms whose server is
//! `kill -9`ed (time until echoes resume; the server is restarted with the same key and port
//! before the next round), stopped gracefully (SIGTERM), and partitioned (its relay blackholed for
//! 3 s, then healed).

mod connects;
mod failures;
pub mod relay;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use volley::{Client, ClientConfig, PublicKey};

use crate::harness::process::{EPHEMERAL, VolleyProcess, keygen, runtime, volley_binary};
use crate::harness::results;
pub use connects::Cell;
pub use failures::Failure;
use relay::{Netem, Relay};

/// Arguments of `volley-lab chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Connects per cell (and kind).
    #[arg(long, default_value_t = 100)]
    pub connects: usize,
    /// Loss rates to run, in percent, each way.
    #[arg(long, value_delimiter = ',', default_value = "0,5,20,30")]
    pub loss: Vec<f64>,
    /// Duplication, in percent, each way.
    #[arg(long, default_value_t = 5.0)]
    pub duplicate: f64,
    /// One-way delay in ms (the path's RTT is twice this).
    #[arg(long, default_value_t = 5.0)]
    pub delay_ms: f64,
    /// Jitter in ms: each datagram's extra delay is uniform in 0..this (reorders).
    #[arg(long, default_value_t = 2.0)]
    pub jitter_ms: f64,
    /// The deadline of each connect (and its exchange), seconds.
    #[arg(long, default_value_t = 5.0)]
    pub deadline: f64,
    /// Fleet sizes to run the connect cells with.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub servers: Vec<usize>,
    /// Rounds of each failure case (0: none).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// The relays' seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The `volley` binary [default: beside this one].
    #[arg(long)]
    pub volley: Option<PathBuf>,
    /// Directory for results.md and results.json.
    #[arg(long, default_value = "chaos-out")]
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Results {
    cells: Vec<Cell>,
    failures: Vec<Failure>,
}

/// Runs the measurement and writes `results.md` and `results.json` into `args.out`.
pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let volley = volley_binary(args.volley.as_deref())?;
    results::out_dir(&args.out)?;
    let results = runtime()?.block_on(measure(&args, &volley))?;
    results::publish(&args.out, &report::markdown(&args, &results), &results)
}

/// The servers of the connect cells and the failure cases, each behind its own relay.
struct Fleet {
    servers: Vec<VolleyProcess>,
    relays: Vec<Relay>,
    key_file: PathBuf,
    public: PublicKey,
}

async fn fleet(args: &ChaosArgs, volley: &Path, n: usize) -> anyhow::Result<Fleet> {
    let key_file = args.out.join("server.key");
    let public = keygen(volley, &key_file)?;
    let mut servers = Vec::new();
    let mut relays = Vec::new();
    for i in 0..n {
        let s = VolleyProcess::serve(volley, &key_file, EPHEMERAL, false)?;
        relays.push(relay::start(s.addr, args.seed.wrapping_add(i as u64)).await?);
        servers.push(s);
    }
    Ok(Fleet {
        servers,
        relays,
        key_file,
        public,
    })
}

fn netem(args: &ChaosArgs, loss_pct: f64) -> Netem {
    Netem {
        delay: Duration::from_secs_f64(args.delay_ms / 1e3),
        jitter: Duration::from_secs_f64(args.jitter_ms / 1e3),
        loss: loss_pct / 100.0,
        duplicate: args.duplicate / 100.0,
    }
}

async fn measure(args: &ChaosArgs, volley: &Path) -> anyhow::Result<Results> {
    let mut cells = Vec::new();
    for &n in &args.servers {
        let fleet = fleet(args, volley, n).await?;
        let pool: Vec<SocketAddr> = fleet.relays.iter().map(|r| r.addr).collect();
        let client = Client::new(ClientConfig::new(vec![fleet.public]));
        for &loss in &args.loss {
            for r in &fleet.relays {
                r.control.set(netem(args, loss));
            }
            let cold = connects::cold_cell(args, volley, &fleet, &pool, loss).await?;
            eprintln!(
                "{n} server(s), loss {loss}%: cold {}/{} p50 {:.1} p99 {:.1} ms",
                cold.ok, cold.connects, cold.p50_ms, cold.p99_ms
            );
            cells.push(cold);
            let warm = connects::warm_cell(args, &client, &fleet, &pool, loss).await?;
            eprintln!(
                "{n} server(s), loss {loss}%: warm {}/{} p50 {:.1} p99 {:.1} ms",
                warm.ok, warm.connects, warm.p50_ms, warm.p99_ms
            );
            cells.push(warm);
        }
    }
    let failures = if args.rounds > 0 {
        failures::failures(args, volley).await?
    } else {
        Vec::new()
    };
    Ok(Results { cells, failures })
}
