//! Summaries of a run: latency percentiles, selection time, utilisation spread, herding, probes
//! and failures — the metrics `select` reports, computed from an engine [`Outcome`].

use serde::Serialize;

use super::engine::{Outcome, ServerTotals};
use crate::harness::stats::quantile;

/// One run, summarised. Times in milliseconds of virtual time unless named otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Sessions measured (arrived after the warm-up).
    pub sessions: u64,
    /// Of those, completed.
    pub completed: u64,
    /// Of those, failed (race deadline with no offer).
    pub failed: u64,
    /// Failed because the race deadline passed with no offer.
    pub failed_no_offer: u64,
    /// Mean end-to-end latency: arrival → reply at the client (selection included).
    pub mean_ms: f64,
    /// Percentiles of end-to-end latency (`NaN` if latencies were not kept).
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// (mean end-to-end latency of the second half of the measured sessions − that of the first
    /// half) / overall mean: far from 0 means the run was not in a steady state.
    pub drift: f64,
    /// Mean time in system at the server (INIT arrival → departure).
    pub in_system_ms: f64,
    /// Mean selection time: arrival → race decided (probe RTT + answer delay + retries).
    pub selection_mean_ms: f64,
    /// 99th percentile of selection time.
    pub selection_p99_ms: f64,
    /// Longest selection time.
    pub selection_max_ms: f64,
    /// Mean time from arrival to the job reaching its server (selection + INIT leg + re-races).
    pub to_server_mean_ms: f64,
    /// Probes per measured session: volley's PROBEs (retransmissions included), or Prequal's
    /// load probes.
    pub probes_per_session: f64,
    /// Races per measured session (volley; 1: nothing is refused in the simulator).
    pub races_per_session: f64,
    /// Share of measured sessions whose race retransmitted (a probe timeout: no offer in time).
    pub retransmit_share: f64,
    /// Void late offers per measured session.
    pub late_offers_per_session: f64,
    /// Mean slot utilisation over the measurement window.
    pub util_mean: f64,
    /// Highest server utilisation over the mean.
    pub util_max_over_mean: f64,
    /// Mean utilisation per server group (workload order, e.g. fast then slow).
    pub util_by_group: Vec<f64>,
    /// Most sessions picking one server within one herding window.
    pub herd_max: u32,
    /// The same for uniformly random picks at the same instants.
    pub herd_max_uniform: u32,
    /// Server counters (whole run, warm-up included).
    pub server: ServerTotals,
    /// Sessions simulated in all (warm-up included).
    pub simulated: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time simulated, seconds.
    pub virtual_s: f64,
    /// Wall-clock time of the run, seconds.
    pub wall_s: f64,
    /// Simulated sessions per wall-clock second.
    pub sessions_per_s: f64,
}

fn ratio(a: f64, b: u64) -> f64 {
    if b == 0 { f64::NAN } else { a / b as f64 }
}

/// Summarises an outcome; `slots` per server, `wall_s` the run's wall time.
pub fn summarise(mut o: Outcome, slots: u32, wall_s: f64) -> Summary {
    const MS: f64 = 1e6;
    o.e2e.sort_by(f64::total_cmp);
    o.selection.sort_by(f64::total_cmp);
    let window = o.window.max(1.0);
    let util: Vec<f64> = o
        .busy
        .iter()
        .map(|b| b / (f64::from(slots) * window))
        .collect();
    let util_mean = util.iter().sum::<f64>() / util.len().max(1) as f64;
    let util_max = util.iter().copied().fold(0.0, f64::max);
    let groups = o.group_of.iter().copied().max().map_or(0, |g| g + 1);
    let mut sums = vec![(0.0, 0usize); groups];
    for (u, g) in util.iter().zip(&o.group_of) {
        sums[*g].0 += u;
        sums[*g].1 += 1;
    }
    let finished = o.completed + o.failed;
    Summary {
        sessions: o.measured,
        completed: o.completed,
        failed: o.failed,
        failed_no_offer: o.failed_no_offer,
        mean_ms: ratio(o.sum_e2e, o.completed) / MS,
        p50_ms: quantile(&o.e2e, 0.5) / MS,
        p90_ms: quantile(&o.e2e, 0.9) / MS,
        p99_ms: quantile(&o.e2e, 0.99) / MS,
        p999_ms: quantile(&o.e2e, 0.999) / MS,
        drift: (ratio(o.halves[1].0, o.halves[1].1) - ratio(o.halves[0].0, o.halves[0].1))
            / ratio(o.sum_e2e, o.completed),
        in_system_ms: ratio(o.sum_in_system, o.completed) / MS,
        selection_mean_ms: ratio(o.sum_selection, o.completed) / MS,
        selection_p99_ms: quantile(&o.selection, 0.99) / MS,
        selection_max_ms: o.max_selection as f64 / MS,
        to_server_mean_ms: ratio(o.sum_to_server, o.completed) / MS,
        probes_per_session: ratio((o.probes + o.load_probes) as f64, finished),
        races_per_session: ratio(o.races as f64, finished),
        retransmit_share: ratio(o.retransmitted as f64, finished),
        late_offers_per_session: ratio(o.offers_late as f64, o.measured),
        util_mean,
        util_max_over_mean: if util_mean > 0.0 {
            util_max / util_mean
        } else {
            f64::NAN
        },
        util_by_group: sums
            .iter()
            .map(|(s, n)| if *n == 0 { f64::NAN } else { s / *n as f64 })
            .collect(),
        herd_max: o.herd_max,
        herd_max_uniform: o.herd_max_uniform,
        server: o.server,
        simulated: o.simulated,
        events: o.events,
        virtual_s: o.end as f64 / 1e9,
        wall_s,
        sessions_per_s: if wall_s > 0.0 {
            o.simulated as f64 / wall_s
        } else {
            f64::NAN
        },
    }
}
