//! What a select invocation runs: the fleet and volley's settings from the flags, the seeds and
//! periods, and the matrix of cells — (workload, load, requests per session, clients) and the
//! policies each runs — in the order that puts the most telling cells first.

use std::time::Duration;

use anyhow::Context as _;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::journal::RunKey;
use super::policy::{Policy, VolleyKnobs};
use super::workload::{FleetShape, Requests, TraceSpec, Workload};
use super::{CORE_VOLLEY, HEADLINE_CLIENTS, HEADLINE_SWEEP, LOADS, SelectArgs};

/// One cell of the matrix and the policies run in it.
#[derive(Debug, Clone)]
pub(super) struct Cell {
    pub(super) workload: Workload,
    pub(super) load: f64,
    pub(super) requests: Requests,
    pub(super) clients: usize,
    pub(super) policies: Vec<Policy>,
    pub(super) measure: Duration,
}

/// Everything a select invocation is to run, from its flags: the fleet, the volley servers'
/// settings, the seeds, the periods, and the cells in the order they run.
pub(super) struct Plan {
    pub(super) shape: FleetShape,
    pub(super) knobs: VolleyKnobs,
    pub(super) seeds: Vec<u64>,
    pub(super) warmup: Duration,
    /// The measured period of a run (a cell may run longer: see [`Cell::measure`]).
    pub(super) measure: Duration,
    pub(super) recovery_drop: Duration,
    pub(super) cells: Vec<Cell>,
    /// The fleet and the clients on separate CPUs.
    pub(super) pin: bool,
    pub(super) cpus: usize,
}

impl Plan {
    /// The plan the flags ask for, checked.
    pub(super) fn new(args: &SelectArgs) -> anyhow::Result<Plan> {
        anyhow::ensure!(
            args.servers >= 2 && args.slots >= 1,
            "a fleet needs at least 2 servers of 1 slot"
        );
        anyhow::ensure!(args.cpu_limit > 0.0, "--cpu-limit must be positive");
        let shape = FleetShape {
            servers: args.servers,
            slots: args.slots,
            mean_work: Duration::from_secs_f64(args.mean_work_ms / 1e3),
        };
        let knobs = VolleyKnobs {
            capacity: args.capacity.unwrap_or(args.slots as u32),
            pace_max: Duration::from_secs_f64(args.pace_max_ms / 1e3),
            pace_divisor: args.pace_divisor,
            max_hold: Duration::from_secs_f64(args.max_hold_ms / 1e3),
            reservation: Duration::from_secs_f64(args.reservation_ms / 1e3),
        };
        let seeds: Vec<u64> = (0..args.seeds.unwrap_or(if args.quick { 1 } else { 5 }))
            .map(|k| args.first_seed + k)
            .collect();
        let (warmup, measure) = if args.quick {
            (
                Duration::from_millis(args.warmup_ms.unwrap_or(500)),
                Duration::from_millis(args.measure_ms.unwrap_or(1500)),
            )
        } else {
            (
                Duration::from_millis(args.warmup_ms.unwrap_or(1000)),
                Duration::from_millis(args.measure_ms.unwrap_or(5000)),
            )
        };
        let recovery_drop = Duration::from_secs_f64(if args.quick {
            args.recovery_drop_s.min(1.0)
        } else {
            args.recovery_drop_s
        });
        let cells = cells(args, measure, recovery_drop)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Plan {
            shape,
            knobs,
            seeds,
            warmup,
            measure,
            recovery_drop,
            cells,
            pin: !args.no_pin && cpus >= 2,
            cpus,
        })
    }

    /// What the journal checks before it resumes: everything besides a run's key that changes
    /// what the run measures.
    pub(super) fn settings(&self, args: &SelectArgs) -> serde_json::Value {
        let mut settings = serde_json::json!({
            "shape": self.shape,
            "knobs": self.knobs,
            "warmup_ms": self.warmup.as_millis() as u64,
            "measure_ms": self.measure.as_millis() as u64,
            "recovery_drop_ms": self.recovery_drop.as_millis() as u64,
            "cpu_limit": args.cpu_limit,
            "pinned": self.pin,
        });
        // A long-lived journal resumes only as one (a §2 journal's settings are as before).
        if args.long_lived {
            settings["mode"] = "long-lived".into();
        }
        settings
    }

    /// Runs in the plan: every policy of every cell at every seed.
    pub(super) fn runs(&self) -> usize {
        self.cells.iter().map(|c| c.policies.len()).sum::<usize>() * self.seeds.len()
    }

    /// The trace of `cell` at `seed`: what every policy of the cell replays.
    pub(super) fn trace_spec(&self, cell: &Cell, seed: u64) -> TraceSpec {
        TraceSpec {
            shape: self.shape,
            workload: cell.workload,
            load: cell.load,
            requests: cell.requests,
            seed,
            warmup: self.warmup,
            measure: cell.measure,
            recovery_drop: self.recovery_drop,
        }
    }
}

impl Cell {
    /// The journal's key of `policy`'s run of this cell at `seed`.
    pub(super) fn key(&self, policy: &Policy, seed: u64) -> RunKey {
        RunKey::new(
            self.workload,
            self.load,
            self.requests,
            self.clients,
            &policy.name(),
            seed,
        )
    }

    /// The cell in file names: `WORKLOAD-LOAD-rREQUESTS-mCLIENTS`.
    pub(super) fn stem(&self) -> String {
        cell_stem(self.workload, self.load, self.requests, self.clients)
    }

    /// The cell's policies in the order they run at `seed`: shuffled, seeded by the seed and
    /// the cell.
    pub(super) fn order(&self, seed: u64) -> Vec<Policy> {
        let mut order = self.policies.clone();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            seed ^ cell_salt(self.workload, self.load, self.requests, self.clients),
        ));
        order
    }
}

/// A cell in file names (plots, records): `WORKLOAD-LOAD-rREQUESTS-mCLIENTS`.
pub(super) fn cell_stem(
    workload: Workload,
    load: f64,
    requests: Requests,
    clients: usize,
) -> String {
    format!(
        "{}-{:.2}-{}-m{}",
        workload.name(),
        load,
        requests.tag(),
        clients
    )
}

/// What a cell's policy order is shuffled with (besides the seed): the cell itself, not its
/// place in the plan, so filtering the matrix does not change the order of a cell's runs.
fn cell_salt(workload: Workload, load: f64, requests: Requests, clients: usize) -> u64 {
    let w = Workload::ALL
        .iter()
        .position(|&x| x == workload)
        .unwrap_or(0) as u64;
    let r = match requests {
        Requests::One => 1,
        Requests::About10 => 10,
    };
    (w << 48) ^ (((load * 1000.0).round() as u64) << 32) ^ (r << 24) ^ clients as u64
}

/// Where a cell comes in the run: the headline cell (half-slow, 0.85) at M = 16, then at the
/// other client counts, then every workload at 0.85, then the other loads from the most
/// telling (near and past capacity) down, then the sessions of ~10 requests.
fn priority(cell: &Cell) -> (u8, u8) {
    let at = |l: f64| (cell.load - l).abs() < 1e-9;
    if cell.requests != Requests::One {
        return (9, 0);
    }
    if cell.workload == Workload::HalfSlow && at(0.85) {
        return (0, u8::from(cell.clients != HEADLINE_CLIENTS));
    }
    let rank = [0.85, 0.95, 1.05, 0.7, 0.5]
        .iter()
        .position(|&l| at(l))
        .map_or(8, |k| k as u8 + 1);
    (rank, 0)
}

/// The matrix of the mode, filtered by the flags.
fn cells(
    args: &SelectArgs,
    measure: Duration,
    recovery_drop: Duration,
) -> anyhow::Result<Vec<Cell>> {
    // The mode's policies: §2's, or the long-lived matrix's (`--long-lived`).
    let known = if args.long_lived {
        Policy::long_lived()
    } else {
        Policy::all()
    };
    let explicit: Option<Vec<Policy>> = if args.policies.is_empty() {
        None
    } else if args.policies.iter().any(|p| p == "all") {
        Some(known.clone())
    } else {
        Some(
            args.policies
                .iter()
                .map(|n| {
                    Policy::parse(n)
                        .filter(|p| known.contains(p))
                        .with_context(|| {
                            format!(
                                "unknown policy {n:?}{}; known: {}",
                                if args.long_lived {
                                    " for --long-lived"
                                } else {
                                    ""
                                },
                                known
                                    .iter()
                                    .map(|p| p.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })
                })
                .collect::<anyhow::Result<_>>()?,
        )
    };
    let mut core = Policy::peers();
    core.extend(CORE_VOLLEY.iter().filter_map(|n| Policy::parse(n)));
    let (core, full) = if args.long_lived {
        (known.clone(), known)
    } else {
        (core, Policy::all())
    };
    anyhow::ensure!(
        args.clients.iter().all(|&c| (1..=1024).contains(&c)),
        "--clients must be 1..=1024"
    );
    let explicit_clients = !args.clients.is_empty();
    let clients_for = |headline: bool| -> Vec<usize> {
        if explicit_clients {
            args.clients.clone()
        } else if headline && !args.quick {
            HEADLINE_SWEEP.to_vec()
        } else {
            vec![HEADLINE_CLIENTS]
        }
    };
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    let loads: Vec<f64> = if args.loads.is_empty() {
        LOADS.to_vec()
    } else {
        args.loads.clone()
    };
    anyhow::ensure!(
        loads.iter().all(|&l| l > 0.0 && l < 2.0),
        "loads must be in (0, 2)"
    );
    let recovery_measure = (recovery_drop
        + if args.quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(3)
        })
    .max(measure);
    let mut cells = Vec::new();
    let headline = |w: Workload, l: f64| w == Workload::HalfSlow && (l - 0.85).abs() < 1e-9;
    for &w in &workloads {
        let cell_loads: Vec<f64> = if args.quick {
            loads
                .iter()
                .copied()
                .filter(|l| (l - 0.85).abs() < 1e-9 || !args.loads.is_empty())
                .collect()
        } else if w == Workload::Recovery && args.loads.is_empty() {
            // A 10 s drop per run: at 0.85 only (see docs/RESULTS.md).
            vec![0.85]
        } else {
            loads.clone()
        };
        for l in cell_loads {
            for m in clients_for(headline(w, l)) {
                let policies = match &explicit {
                    Some(p) => p.clone(),
                    None if headline(w, l) && m == HEADLINE_CLIENTS && !args.quick => full.clone(),
                    None => core.clone(),
                };
                cells.push(Cell {
                    workload: w,
                    load: l,
                    requests: Requests::One,
                    clients: m,
                    policies,
                    measure: if w == Workload::Recovery {
                        recovery_measure
                    } else {
                        measure
                    },
                });
            }
        }
    }
    // Sessions of ~10 requests: §2 only (a long-lived client has no sessions).
    if args.long_sessions && !args.quick && !args.long_lived {
        for &w in workloads
            .iter()
            .filter(|w| matches!(w, Workload::Homogeneous | Workload::HalfSlow))
        {
            if loads.iter().any(|l| (l - 0.85).abs() < 1e-9) {
                for m in clients_for(false) {
                    cells.push(Cell {
                        workload: w,
                        load: 0.85,
                        requests: Requests::About10,
                        clients: m,
                        policies: explicit.clone().unwrap_or_else(|| core.clone()),
                        measure: measure * 2,
                    });
                }
            }
        }
    }
    anyhow::ensure!(!cells.is_empty(), "nothing to run");
    cells.sort_by_key(priority);
    Ok(cells)
}
