//! `sim zones` (Z4): volley and the peers over zones — 10 zones × 1,000 servers by default,
//! a seeded round-trip matrix of 1–80 ms ([`rtt`]), hot-zone, outage and balanced workloads,
//! sessions of ~10 requests and of one, and M independent clients (docs/BENCHMARKS.md §3,
//! "sim zones").
//!
//! What is real protocol: volley's client `Race` under `SelectionPolicy::path()` (tags, the
//! path-aware decision, retransmission, deadline), each client's `PoolState` (targets, path
//! inputs and floors, offer samples, requests learned) and the servers' `ServerEndpoint` (paced
//! answers from the measured service time, held probes, reservations, load hints with the held
//! time), as in the rest of `sim` (`race`). What is modelled: the
//! network (one way = half the zones' round trip + a uniform jitter below 20 µs, no loss but
//! the outage's), the work (exponential, 40 ms mean, FIFO over 4 slots per server), the
//! peers' rules (`peers`), connections and the handshake (one round trip each, no
//! cryptography), and timeouts (`world`). Each policy pays what it would on a real network:
//! a peer's connection is one round trip to its server before the first request; volley pays
//! its race (probe out, offer back, the pace) and its handshake (one round trip; with early
//! data, none before the first request, which rides in the INIT).
//!
//! Everything is seeded: the seed draws the zone matrix, the trace (arrivals, their zones and
//! clients, request counts, works: the same for every policy of a seed) and the selection and
//! network randomness.

pub mod model;
mod peers;
mod race;
pub mod report;
pub mod rtt;
mod world;

#[cfg(test)]
mod tests;

pub use model::{Requests, ZoneOutcome, ZonePolicy, ZoneSetup, ZoneWorkload};
pub use world::run;

use std::time::Instant;

use anyhow::Context;

use super::SimArgs;
use crate::harness::results;
use report::{ZoneRecord, ZoneReport};
use rtt::RttMatrix;

/// Slots per server (and the endpoints' capacity), as in the rest of `sim`.
pub const SLOTS: u32 = super::policies::SLOTS;
/// Mean work of a request, ns (40 ms).
pub const MEAN_SERVICE: f64 = super::policies::MEAN_SERVICE;
/// One-way jitter bound, ns.
pub const JITTER: u64 = 20_000;

/// The sizes of a `sim zones` invocation.
#[derive(Debug, Clone)]
pub struct ZoneSizes {
    /// Zones.
    pub zones: usize,
    /// Servers per zone.
    pub per_zone: usize,
    /// Unmeasured start, ns.
    pub warmup: u64,
    /// Measured window, ns.
    pub window: u64,
}

impl ZoneSizes {
    fn new(args: &SimArgs) -> anyhow::Result<ZoneSizes> {
        let quick = args.quick;
        let zones = args.zones;
        anyhow::ensure!(zones >= 2, "at least 2 zones");
        let per_zone = args.zone_servers.unwrap_or(if quick { 100 } else { 1_000 });
        anyhow::ensure!(per_zone >= 2, "at least 2 servers per zone");
        let ms = 1_000_000;
        let warmup = args
            .zone_warmup_ms
            .unwrap_or(if quick { 1_500 } else { 3_000 })
            * ms;
        let window = args
            .zone_window_ms
            .unwrap_or(if quick { 600 } else { 2_000 })
            * ms;
        anyhow::ensure!(window > 0, "empty window");
        Ok(ZoneSizes {
            zones,
            per_zone,
            warmup,
            window,
        })
    }
}

/// One run's setup.
#[allow(clippy::too_many_arguments)]
pub fn setup(
    sizes: &ZoneSizes,
    workload: ZoneWorkload,
    requests: Requests,
    clients: usize,
    policy: ZonePolicy,
    seed: u64,
) -> ZoneSetup {
    ZoneSetup {
        rtt: RttMatrix::default_for(sizes.zones, seed),
        per_zone: sizes.per_zone,
        slots: SLOTS,
        mean_service: MEAN_SERVICE,
        jitter: JITTER,
        workload,
        requests,
        clients,
        policy,
        seed,
        warmup: sizes.warmup,
        window: sizes.window,
    }
}

/// Runs `volley-lab sim zones`: every workload × session kind × M × policy × seed, a line per
/// run on stderr, the tables on stdout, and with `--out` `results.json` and `results.md`.
pub fn run_zones(args: &SimArgs) -> anyhow::Result<()> {
    let sizes = ZoneSizes::new(args)?;
    let workloads = super::or_default(
        &args.zone_workloads,
        &[
            ZoneWorkload::HotZone,
            ZoneWorkload::Outage,
            ZoneWorkload::Balanced,
        ],
    );
    let kinds = super::or_default(&args.zone_requests, &[Requests::Ten, Requests::One]);
    let clients = super::or_default(&args.clients, &[16, 1_000, 10_000]);
    let policies = super::or_default(&args.zone_policies, &ZonePolicy::ALL);
    for &m in &clients {
        anyhow::ensure!(
            m >= sizes.zones,
            "M must be at least the zones ({}), not {m}",
            sizes.zones
        );
    }
    let seeds = args.seeds.clone();
    let started = Instant::now();
    let mut records = Vec::new();
    for &w in &workloads {
        for &k in &kinds {
            for &m in &clients {
                for &p in &policies {
                    for &seed in &seeds {
                        let s = setup(&sizes, w, k, m, p, seed);
                        let t0 = Instant::now();
                        let out = run(&s).with_context(|| {
                            format!("{} {} M={m} {} seed {seed}", w.name(), k.name(), p.name())
                        })?;
                        let r = ZoneRecord::new(&s, out, t0.elapsed().as_secs_f64());
                        eprintln!(
                            "{} {} M={m} {} seed {seed}: p99 {:.1} ms, outside {:.1} %, \
                             timeouts {}, ({:.1} s)",
                            w.name(),
                            k.name(),
                            p.name(),
                            r.p99_ms,
                            100.0 * r.outside_share,
                            r.timeouts,
                            r.wall_s
                        );
                        records.push(r);
                    }
                }
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let report = ZoneReport::new(&sizes, &seeds, records, wall);
    let md = report.markdown();
    println!("{md}");
    eprintln!("sim zones finished in {wall:.1} s");
    if let Some(dir) = &args.out {
        results::out_dir(dir)?;
        results::write_json(&dir.join("results.json"), &report)?;
        std::fs::write(dir.join("results.md"), &md)
            .with_context(|| format!("writing {}", dir.join("results.md").display()))?;
        eprintln!("wrote {0}/results.json and {0}/results.md", dir.display());
    }
    Ok(())
}
