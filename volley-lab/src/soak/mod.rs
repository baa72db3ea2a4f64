//! `volley-lab soak`: the long run of `docs/BENCHMARKS.md` §5 on real sockets and the real
//! `volley` binary. Clients and servers at moderate load for `--minutes`, with restarts and key
//! rotations, sampled every `--sample-every` seconds.
//!
//! - **Servers**: `--servers` `volley serve` processes (echo service, `--metrics`). Server 0 is
//!   never restarted: its memory and descriptors are what "flat" is judged on. The others are
//!   restarted in turn every `--restart-every` seconds, alternately with `kill -9` and SIGTERM
//!   (which drains the server's sessions for 2 s, `serve --drain-timeout 2s`, then closes them),
//!   each time on the same port with the other of two static keys (both pinned by every client):
//!   a key rotation. Cookie keys rotate inside every server on their own timer (30 s).
//! - **Library clients**: `--clients` independent [`volley::Client`]s in this process, each with
//!   one long-lived session sending a request every 100 ms (it fails over when its server goes)
//!   and one task churning short sessions (connect, 20 requests 25 ms apart, close). A request
//!   is a datagram echoed back, resent at RTT-scaled intervals, failed after 5 s.
//! - **Proxy**: one `volley proxy --listen udp://…` process in front of the same servers, with
//!   `--proxy-flows` plain-UDP applications, each sending 100 requests 50 ms apart from a fresh
//!   socket (a new flow) and then moving to another; flows idle out of the proxy after 10 s.
//!
//! Each sample records, for every process, resident memory (`VmRSS`) and open descriptors (from
//! `/proc`), every server's open sessions and its session counters (from its metrics endpoint,
//! one snapshot per scrape), and the clients' running totals. Checks: every scrape's
//! `sessions_opened - sessions_closed` equals its open sessions; every session, at its connect
//! and after each failover, is with a server of the pool that its own race selected; at the end,
//! with every client gone, no server holds a session. Writes `samples.csv`, `results.json`,
//! `results.md` and `soak.svg` into `--out`.

mod fleet;
mod load;
mod metrics;
mod plot;
mod report;
mod sample;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::process::{VolleyProcess, runtime, volley_binary};
use crate::harness::results;
use fleet::{Fleet, Restart};
use load::Totals;
use report::Results;
use sample::{Sample, Tally, sample, write_csv};

/// Arguments of `volley-lab soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 60.0)]
    pub minutes: f64,
    /// `volley serve` processes (at least 2: server 0 is never restarted).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Independent library clients, each with a long session and a churning one.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Plain-UDP applications sending through one `volley proxy`.
    #[arg(long, default_value_t = 4)]
    pub proxy_flows: usize,
    /// Seconds between restarts (one server each time, in turn; never server 0).
    #[arg(long, default_value_t = 60.0)]
    pub restart_every: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
    /// Minutes at the start left out of the flatness figures (allocators and caches warming
    /// up); at most a third of the run.
    #[arg(long, default_value_t = 5.0)]
    pub warm_up_minutes: f64,
    /// The `volley` binary [default: beside this one].
    #[arg(long)]
    pub volley: Option<PathBuf>,
    /// Directory for samples.csv, results.md, results.json and soak.svg.
    #[arg(long, default_value = "soak-out")]
    pub out: PathBuf,
}

/// Runs the soak and writes its files into `args.out`.
pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.servers >= 2, "--servers must be at least 2");
    anyhow::ensure!(
        args.minutes > 0.0 && args.sample_every > 0.0 && args.restart_every > 0.0,
        "--minutes, --sample-every and --restart-every must be positive"
    );
    let volley = volley_binary(args.volley.as_deref())?;
    results::out_dir(&args.out)?;
    let results = runtime()?.block_on(soak(&args, &volley))?;
    results::publish(&args.out, &report::markdown(&args, &results), &results)
}

async fn soak(args: &SoakArgs, volley: &Path) -> anyhow::Result<Results> {
    let (mut fleet, publics) = Fleet::start(args, volley)?;
    let proxy = fleet.proxy(&publics)?;
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load::start(args, &publics, &fleet.pool(), proxy.addr, &totals, &stop);
    let start = Instant::now();
    let mut run = Timeline::new(args.servers);
    run.follow(args, start, &mut fleet, &proxy, &totals).await?;
    // Everyone leaves; then nothing may be left open.
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    // Closed sessions are gone at once; the proxy's flows idle out after its 10 s.
    tokio::time::sleep(Duration::from_secs(13)).await;
    // Server 0's reloads, as it counted them.
    if let Some(m) = metrics::scrape(fleet.servers[0].metrics).await {
        let (done, failed) = (
            metrics::counter(&m, "volley_config_reloads_total"),
            metrics::counter(&m, "volley_config_reload_failures_total"),
        );
        let line = format!(
            "{{\"sighup_sent\":{},\"reloads\":{done},\"reload_failures\":{failed}}}\n",
            run.reloads
        );
        eprint!("soak: server 0 reloads: {line}");
        std::fs::write(args.out.join("reloads.json"), line)?;
    }
    let last = sample(
        start,
        &fleet,
        &proxy,
        &totals,
        run.restarts.len() as u64,
        &mut run.tally,
    )
    .await;
    run.samples.push(last);
    drop(proxy);
    drop(fleet);
    write_csv(&args.out.join("samples.csv"), &run.samples)?;
    plot::draw(
        &args.out.join("soak.svg"),
        &run.samples,
        &run.restarts,
        report::warm_up_s(args),
    )?;
    Ok(report::results(
        args,
        &run.samples,
        run.restarts,
        &run.tally,
        &run.ended_counts,
    ))
}

/// What happened over the run: the samples, the restarts, the scrapes' tally, and the counters
/// of every server's ended incarnations.
struct Timeline {
    samples: Vec<Sample>,
    restarts: Vec<Restart>,
    tally: Tally,
    /// Per server: (opened, closed) summed over its incarnations that ended.
    ended_counts: Vec<(u64, u64)>,
    /// SIGHUPs sent to server 0 (one config reload per turn of the restart cycle).
    reloads: u64,
}

impl Timeline {
    fn new(servers: usize) -> Timeline {
        Timeline {
            samples: Vec::new(),
            restarts: Vec::new(),
            tally: Tally::new(servers),
            ended_counts: vec![(0, 0); servers],
            reloads: 0,
        }
    }

    /// Samples every `--sample-every` and restarts a server every `--restart-every` (never
    /// server 0; in turn, alternately kill -9 and SIGTERM) until `--minutes` have passed.
    async fn follow(
        &mut self,
        args: &SoakArgs,
        start: Instant,
        fleet: &mut Fleet,
        proxy: &VolleyProcess,
        totals: &Totals,
    ) -> anyhow::Result<()> {
        let end = start + Duration::from_secs_f64(args.minutes * 60.0);
        let restart_every = Duration::from_secs_f64(args.restart_every);
        let sample_every = Duration::from_secs_f64(args.sample_every);
        let mut next_restart = start + restart_every;
        let mut next_sample = start;
        let mut k = 0usize;
        while Instant::now() < end {
            let wake = next_sample.min(next_restart).min(end);
            tokio::time::sleep_until(wake.into()).await;
            let now = Instant::now();
            if now >= next_sample {
                next_sample += sample_every;
                let restarts = self.restarts.len() as u64;
                let s = sample(start, fleet, proxy, totals, restarts, &mut self.tally).await;
                eprintln!("{}", progress(&s, self.tally.inconsistent));
                self.samples.push(s);
            }
            if now >= next_restart && now < end {
                next_restart += restart_every;
                let i = 1 + k % (args.servers - 1);
                let how = if k.is_multiple_of(2) {
                    "kill -9"
                } else {
                    "SIGTERM"
                };
                k += 1;
                // Server 0 reloads its config file (SIGHUP) in every turn of the cycle.
                fleet::write_config(&args.out.join("soak-0.toml"), fleet::RELOADED[(k + 1) % 2])?;
                fleet.servers[0].hangup();
                self.reloads += 1;
                let restart = fleet
                    .restart(start, i, how, &mut self.tally.last_counts)
                    .await?;
                self.restarts.push(restart);
                let (o, c) = self.tally.last_counts[i];
                self.ended_counts[i].0 += o;
                self.ended_counts[i].1 += c;
                self.tally.last_counts[i] = (0, 0);
            }
        }
        Ok(())
    }
}

/// The progress line of one sample, for whoever watches the run.
fn progress(s: &Sample, inconsistent: u64) -> String {
    format!(
        "soak {:>6.0} s: rss kB {} proxy {} lab {}; fds {} / {} / {}; sessions {:?}; connects {} (failed {}), requests {} (failed {}), failovers {}, misrouted {}, proxy {} (failed {}), inconsistent scrapes {}",
        s.t_s,
        s.servers[0].proc.rss_kb,
        s.proxy.rss_kb,
        s.lab.rss_kb,
        s.servers[0].proc.fds,
        s.proxy.fds,
        s.lab.fds,
        s.servers.iter().map(|v| v.sessions).collect::<Vec<_>>(),
        s.connects,
        s.connect_failures,
        s.requests,
        s.request_failures,
        s.failovers,
        s.misrouted,
        s.proxy_requests,
        s.proxy_failures,
        inconsistent,
    )
}
