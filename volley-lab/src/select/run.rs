//! Executing the plan: cell by cell, seed by seed, each policy of the cell replays the cell's
//! trace against a fresh fleet; runs the journal already holds are taken from it instead, and
//! every run that finishes is appended to it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use volley::StaticKeypair;

use super::SelectArgs;
use super::fleet::{Fleet, ServerState};
use super::journal::{Entry, Journal, RunKey};
use super::plan::{Cell, Plan, cell_stem};
use super::policy::{self, Policy, Record, RunCtx, VolleyKnobs};
use super::report::{self, RunMeta, RunSummary};
use super::workload::{Trace, TraceSpec};
use crate::harness::cpu;

/// How long a session may take to connect, and each of its requests to be answered.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Per (cell, policy): latencies over seeds, per-seed utilisation (slowest server first), and
/// the capacity shares in that order.
pub(super) type Pooled = (Vec<f64>, Vec<Vec<f64>>, Vec<f64>);

/// What the runs of an invocation gave.
#[derive(Default)]
pub(super) struct Runs {
    /// Every run's summary, in plan order (from this invocation or the journal).
    pub(super) summaries: Vec<RunSummary>,
    /// Pooled latencies and sorted utilisation for the plots, per (cell index, policy);
    /// invalid runs are left out.
    pub(super) pooled: HashMap<(usize, String), Pooled>,
    /// Runs taken from the journal of an earlier invocation.
    pub(super) held: u64,
}

impl Runs {
    /// Adds one run to the figures: its summary, and unless it was invalid its latencies and
    /// utilisation to the pooled plots of its cell.
    fn add(&mut self, ci: usize, summary: RunSummary, latencies: Vec<f64>) {
        if !summary.invalid_cpu {
            let entry = self.pooled.entry((ci, summary.policy.clone())).or_default();
            entry.0.extend(latencies);
            let mut idx: Vec<usize> = (0..summary.utilisation.len()).collect();
            idx.sort_by(|&a, &b| {
                summary.capacity_share[a]
                    .total_cmp(&summary.capacity_share[b])
                    .then(a.cmp(&b))
            });
            entry
                .1
                .push(idx.iter().map(|&i| summary.utilisation[i]).collect());
            entry.2 = idx.iter().map(|&i| summary.capacity_share[i]).collect();
        }
        self.summaries.push(summary);
    }
}

/// Runs every run of `plan` the journal does not hold (none with `--report-only`), cell by
/// cell, every seed of a cell before the next cell: the most important cells come first (see
/// the plan), so an interrupted run has them complete.
pub(super) fn run_all(
    args: &SelectArgs,
    plan: &Plan,
    journal: &mut Journal,
    done: Vec<Entry>,
) -> anyhow::Result<Runs> {
    let mut done: HashMap<RunKey, Entry> = done.into_iter().map(|e| (e.key(), e)).collect();
    let planned = plan.runs();
    let (missing, missing_s) = plan
        .cells
        .iter()
        .flat_map(|c| plan.seeds.iter().map(move |&s| (c, s)))
        .flat_map(|(c, s)| c.policies.iter().map(move |p| (c, s, p)))
        .filter(|(c, s, p)| !done.contains_key(&c.key(p, *s)))
        .fold((0u64, 0.0f64), |(n, t), (c, _, _)| {
            (n + 1, t + (plan.warmup + c.measure).as_secs_f64())
        });
    let held = planned as u64 - missing;
    let (to_run, to_run_s) = if args.report_only {
        (0, 0.0)
    } else {
        (missing, missing_s)
    };
    eprintln!(
        "volley-lab select: {} cells, {} runs over {} seed(s); {} in the journal, {} to run, about {:.0} s of arrivals; results in {}",
        plan.cells.len(),
        planned,
        plan.seeds.len(),
        held,
        to_run,
        to_run_s,
        args.out.display()
    );
    let bar = ProgressBar::new(to_run);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} runs (eta {eta}) {msg}",
        )?
        .progress_chars("=> "),
    );
    let runner = Runner {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        plan,
        key: StaticKeypair::generate(&mut rand::rngs::OsRng),
        cpu_limit: args.cpu_limit,
    };
    let mut runs = Runs {
        held,
        ..Runs::default()
    };
    for (ci, cell) in plan.cells.iter().enumerate() {
        for &seed in &plan.seeds {
            let spec = plan.trace_spec(cell, seed);
            let mut trace = None;
            for policy in cell.order(seed) {
                if let Some(entry) = done.remove(&cell.key(&policy, seed)) {
                    let latencies = entry.latencies();
                    runs.add(ci, entry.summary, latencies);
                    continue;
                }
                if args.report_only {
                    continue;
                }
                let trace = trace.get_or_insert_with(|| spec.draw());
                bar.set_message(format!(
                    "seed {seed} {} {:.2} {} M={} {}",
                    cell.workload.name(),
                    cell.load,
                    cell.requests.name(),
                    cell.clients,
                    policy.name()
                ));
                let (summary, records) = runner.one(trace, &spec, policy, cell.clients)?;
                if args.records {
                    write_records(&args.out, &summary, &records)?;
                }
                if summary.invalid_cpu {
                    bar.println(invalid_line(cell, seed, &summary));
                }
                let latencies = report::latencies(&records, plan.warmup, trace.end);
                journal.append(&Entry::new(summary.clone(), &latencies))?;
                runs.add(ci, summary, latencies);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    Ok(runs)
}

/// The line that says a run measured the lab, not the policy.
fn invalid_line(cell: &Cell, seed: u64, summary: &RunSummary) -> String {
    format!(
        "invalid (cpu): seed {seed} {} {:.2} M={} {}: client {:.2}, fleet {:.2} cores",
        cell.workload.name(),
        cell.load,
        cell.clients,
        summary.policy,
        summary.client_cpu,
        summary.fleet_cpu
    )
}

/// What every run of an invocation shares: the client thread's runtime, the plan, the fleet's
/// key, and the CPU limit above which a run is invalid.
struct Runner<'a> {
    rt: tokio::runtime::Runtime,
    plan: &'a Plan,
    key: StaticKeypair,
    cpu_limit: f64,
}

impl Runner<'_> {
    /// `policy` replays `trace` with `clients` independent clients against a fresh fleet; the
    /// fleet's slot time and both sides' CPU are read at the start and the end of the measured
    /// period.
    fn one(
        &self,
        trace: &Trace,
        spec: &TraceSpec,
        policy: Policy,
        clients: usize,
    ) -> anyhow::Result<(RunSummary, Vec<Record>)> {
        let shape = self.plan.shape;
        let (fleet, ctx) = start_fleet(
            spec,
            trace,
            policy,
            &self.plan.knobs,
            &self.key,
            self.plan.pin.then_some(0),
            clients,
        )?;
        let states = fleet.state.clone();
        let (warm_at, end_at) = (fleet.start + trace.warmup, fleet.start + trace.end);
        let counted = Arc::clone(&ctx);
        let (records, busy_us, cpu, races) = self.rt.block_on(async {
            // Slot time worked and races run in the measured period: read at its start and end.
            let snap = tokio::spawn(async move {
                let read = |s: &[Arc<ServerState>]| -> Vec<u64> {
                    s.iter()
                        .map(|x| x.busy_us.load(Ordering::Relaxed))
                        .collect()
                };
                tokio::time::sleep_until(warm_at.into()).await;
                let (a, cpu_a) = (read(&states), cpu::sample());
                let races_a = counted.races.load(Ordering::Relaxed);
                tokio::time::sleep_until(end_at.into()).await;
                let (b, cpu_b) = (read(&states), cpu::sample());
                let races = counted
                    .races
                    .load(Ordering::Relaxed)
                    .saturating_sub(races_a);
                let busy = a
                    .iter()
                    .zip(b)
                    .map(|(a, b)| b.saturating_sub(*a))
                    .collect::<Vec<u64>>();
                (busy, cpu::between(&cpu_a, &cpu_b), races)
            });
            let records = policy::drive(policy, ctx, trace.jobs.clone()).await?;
            let (busy, cpu, races) = snap.await?;
            anyhow::Ok((records, busy, cpu, races))
        })?;
        let stats = fleet.stop()?;
        let summary = report::summarise(
            &records,
            RunMeta {
                workload: spec.workload,
                load: spec.load,
                requests: spec.requests,
                clients,
                policy: policy.name(),
                seed: spec.seed,
                warmup: trace.warmup,
                end: trace.end,
                schedule: &trace.schedule,
                busy_us,
                slots: shape.slots,
                servers: shape.servers,
                capacity_share: trace.schedule.capacity_share(&shape),
                stats: &stats,
                cpu,
                cpu_limit: self.cpu_limit,
                races: policy.is_long_lived().then_some(races),
            },
        );
        Ok((summary, records))
    }
}

/// A fresh fleet serving `trace`'s schedule as `policy` needs (pinned to CPU `pin`), and what
/// the run's `clients` share.
pub(super) fn start_fleet(
    spec: &TraceSpec,
    trace: &Trace,
    policy: Policy,
    knobs: &VolleyKnobs,
    key: &StaticKeypair,
    pin: Option<usize>,
    clients: usize,
) -> anyhow::Result<(Fleet, Arc<RunCtx>)> {
    let shape = spec.shape;
    let fleet = Fleet::start(
        shape,
        trace.schedule.clone(),
        policy.answering(knobs),
        key.clone(),
        pin,
    )?;
    let ctx = Arc::new(RunCtx::new(
        clients,
        Arc::new(trace.schedule.clone()),
        &fleet,
        shape.slots,
        shape.mean_work.mul_f64(spec.requests.mean()),
        spec.seed,
        (CONNECT_TIMEOUT, REQUEST_TIMEOUT),
    ));
    Ok((fleet, ctx))
}

/// Writes every session's record of one run (JSON lines) under `out/records/`.
fn write_records(out: &Path, s: &RunSummary, records: &[Record]) -> anyhow::Result<()> {
    let cell = cell_stem(s.workload, s.load, s.requests, s.clients);
    let name = format!("{cell}-{}-seed{}.jsonl", s.policy, s.seed);
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    std::fs::write(out.join("records").join(name), text)?;
    Ok(())
}
