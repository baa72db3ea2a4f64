//! One run's figures: the latencies of its measured sessions (timeouts as infinitely late),
//! their percentiles, herding, recovery, utilisation and the fleet's counters — and the JSON form
//! the journal keeps them in.

use std::collections::HashMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use volley::ServerStats;

use super::float;
use crate::harness::cpu;
use crate::harness::stats::{median, quantile};
use crate::select::policy::{Outcome, Record};
use crate::select::workload::{Requests, Schedule, Workload};

/// Everything measured in one run (one policy, one cell, one seed), over the sessions scheduled
/// in the measured period. Scalars that can be undefined or infinite (a percentile that falls on
/// a timed-out session, a median of nothing) are written as the strings `"inf"` and `"nan"` in
/// JSON, so the journal reads back exactly what was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub workload: Workload,
    #[serde(with = "float")]
    pub load: f64,
    pub requests: Requests,
    /// Independent clients.
    pub clients: usize,
    pub policy: String,
    pub seed: u64,
    /// The client thread or the fleet used more than the CPU limit ([`crate::select::CPU_LIMIT`] unless
    /// `--cpu-limit` says otherwise) of a core in the measured period: the run measured the lab,
    /// and no figure counts it.
    pub invalid_cpu: bool,
    /// Sessions scheduled in the measured period.
    pub sessions: usize,
    pub ok: usize,
    pub failed: usize,
    pub timeouts: usize,
    /// End-to-end latency from the scheduled arrival to the last reply, ms; sessions that
    /// timed out count as infinitely late (`"inf"` in JSON), failed ones are left out.
    #[serde(with = "float")]
    pub p50_ms: f64,
    #[serde(with = "float")]
    pub p90_ms: f64,
    #[serde(with = "float")]
    pub p99_ms: f64,
    #[serde(with = "float")]
    pub p999_ms: f64,
    #[serde(with = "float")]
    pub mean_ms: f64,
    /// Successful sessions over sessions scheduled.
    #[serde(with = "float")]
    pub goodput: f64,
    /// Scheduled arrival to session established, median, ms.
    #[serde(with = "float")]
    pub connect_p50_ms: f64,
    /// The winning offer's answer time (probe RTT plus pacing), median, ms.
    #[serde(with = "float")]
    pub answer_p50_ms: f64,
    #[serde(with = "float")]
    pub probes_per_session: f64,
    #[serde(with = "float")]
    pub probe_bytes_per_session: f64,
    /// Most picks on one server within 1 ms, summed over windows, over the same sum expected of
    /// uniform random picks (1 = as random; lower = spread better than random).
    #[serde(with = "float")]
    pub herding: f64,
    /// Per server: slot time worked over slot time available in the measured period.
    pub utilisation: Vec<f64>,
    /// Per server: its share of the fleet's capacity.
    pub capacity_share: Vec<f64>,
    /// Per server: its share of the work done.
    pub work_share: Vec<f64>,
    /// Recovery workload: from the drop's start to the end of the last 250 ms bucket whose p99
    /// exceeded 1.5× the pre-drop p99, seconds.
    pub recovery_s: Option<f64>,
    /// Server counters summed over the fleet (whole run).
    pub withheld: u64,
    pub held: u64,
    pub hold_dropped: u64,
    /// Offers sent while every slot was busy (answered late, not withheld: L6).
    pub busy_offers: u64,
    pub init_refused: u64,
    /// CPU used in the measured period, in cores: the client thread (every policy's sessions),
    /// the fleet (its thread and its servers' timer threads), and each CPU's busy share.
    #[serde(with = "float")]
    pub client_cpu: f64,
    #[serde(with = "float")]
    pub fleet_cpu: f64,
    pub cpu_busy: Vec<f64>,
    /// `select --long-lived`: races run per 1,000 requests scheduled in the measured period
    /// (0 for the peers); absent in §2's runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub races_per_1000: Option<f64>,
}

/// The inputs of a summary besides the records.
pub struct RunMeta<'a> {
    pub workload: Workload,
    pub load: f64,
    pub requests: Requests,
    pub clients: usize,
    pub policy: String,
    pub seed: u64,
    pub warmup: Duration,
    pub end: Duration,
    pub schedule: &'a Schedule,
    pub busy_us: Vec<u64>,
    pub slots: usize,
    pub servers: usize,
    pub capacity_share: Vec<f64>,
    pub stats: &'a [ServerStats],
    pub cpu: cpu::Usage,
    /// Above this share of a core on either side the run is invalid.
    pub cpu_limit: f64,
    /// `select --long-lived`: races run in the measured period.
    pub races: Option<u64>,
}

/// The latencies (ms) of the measured sessions: successful ones, and timeouts as infinity.
pub fn latencies(records: &[Record], warmup: Duration, end: Duration) -> Vec<f64> {
    let (lo, hi) = (warmup.as_micros() as u64, end.as_micros() as u64);
    let mut v: Vec<f64> = records
        .iter()
        .filter(|r| r.at_us >= lo && r.at_us < hi)
        .filter_map(|r| match (r.outcome, r.done_us) {
            (Outcome::Ok, Some(d)) => Some(d.saturating_sub(r.at_us) as f64 / 1e3),
            (Outcome::Timeout, _) => Some(f64::INFINITY),
            _ => None,
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

pub fn summarise(records: &[Record], meta: RunMeta<'_>) -> RunSummary {
    let (lo, hi) = (meta.warmup.as_micros() as u64, meta.end.as_micros() as u64);
    let measured: Vec<&Record> = records
        .iter()
        .filter(|r| r.at_us >= lo && r.at_us < hi)
        .collect();
    let lat = latencies(records, meta.warmup, meta.end);
    let count = |o| measured.iter().filter(|r| r.outcome == o).count();
    let (ok, failed, timeouts) = (
        count(Outcome::Ok),
        count(Outcome::Failed),
        count(Outcome::Timeout),
    );
    let finite: Vec<f64> = lat.iter().copied().filter(|x| x.is_finite()).collect();
    let mean_ms = if finite.is_empty() {
        f64::NAN
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    };
    let connect: Vec<f64> = measured
        .iter()
        .filter_map(|r| {
            r.connected_us
                .map(|c| c.saturating_sub(r.at_us) as f64 / 1e3)
        })
        .collect();
    let answer: Vec<f64> = measured
        .iter()
        .filter_map(|r| r.answer_us.map(|a| a as f64 / 1e3))
        .collect();
    let n = measured.len().max(1) as f64;
    let probes = measured.iter().map(|r| r.probes as f64).sum::<f64>() / n;
    let probe_bytes = measured.iter().map(|r| r.probe_bytes as f64).sum::<f64>() / n;
    let span = meta.end.saturating_sub(meta.warmup).as_secs_f64().max(1e-9);
    let utilisation: Vec<f64> = meta
        .busy_us
        .iter()
        .map(|&b| b as f64 / 1e6 / (meta.slots as f64 * span))
        .collect();
    let busy_total: f64 = meta.busy_us.iter().map(|&b| b as f64).sum::<f64>().max(1.0);
    let work_share = meta
        .busy_us
        .iter()
        .map(|&b| b as f64 / busy_total)
        .collect();
    let recovery_s = (meta.workload == Workload::Recovery)
        .then(|| recovery(records, meta.schedule, meta.warmup, meta.end))
        .flatten();
    let sum = |f: fn(&ServerStats) -> u64| meta.stats.iter().map(f).sum::<u64>();
    RunSummary {
        workload: meta.workload,
        load: meta.load,
        requests: meta.requests,
        clients: meta.clients,
        policy: meta.policy,
        seed: meta.seed,
        invalid_cpu: meta.cpu.client > meta.cpu_limit || meta.cpu.fleet > meta.cpu_limit,
        sessions: measured.len(),
        ok,
        failed,
        timeouts,
        p50_ms: quantile(&lat, 0.5),
        p90_ms: quantile(&lat, 0.9),
        p99_ms: quantile(&lat, 0.99),
        p999_ms: quantile(&lat, 0.999),
        mean_ms,
        goodput: ok as f64 / n,
        connect_p50_ms: median(connect),
        answer_p50_ms: median(answer),
        probes_per_session: probes,
        probe_bytes_per_session: probe_bytes,
        herding: herding(&measured, meta.servers),
        utilisation,
        capacity_share: meta.capacity_share,
        work_share,
        recovery_s,
        withheld: sum(|s| s.probes_withheld_full + s.probes_withheld_under_load),
        held: sum(|s| s.probes_held),
        hold_dropped: sum(|s| s.probes_dropped_hold_expired + s.probes_dropped_queue_full),
        busy_offers: sum(|s| s.offers_busy),
        init_refused: sum(|s| s.init_refused_full + s.init_under_load),
        client_cpu: meta.cpu.client,
        fleet_cpu: meta.cpu.fleet,
        cpu_busy: meta.cpu.busy,
        races_per_1000: meta.races.map(|r| r as f64 * 1000.0 / n),
    }
}

/// Picks per 1 ms window (by the time the session was established): the busiest server's count,
/// summed, over what uniform random picks among the servers would give (Monte Carlo, seeded).
fn herding(measured: &[&Record], servers: usize) -> f64 {
    let mut windows: HashMap<u64, HashMap<u16, u32>> = HashMap::new();
    for r in measured {
        if let (Some(c), Some(s)) = (r.connected_us, r.server) {
            *windows.entry(c / 1000).or_default().entry(s).or_default() += 1;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0x4e7d);
    let mut expected_cache: HashMap<u32, f64> = HashMap::new();
    let (mut seen, mut expected) = (0.0, 0.0);
    for w in windows.values() {
        let n: u32 = w.values().sum();
        if n < 2 {
            continue;
        }
        seen += *w.values().max().unwrap_or(&0) as f64;
        expected += *expected_cache.entry(n).or_insert_with(|| {
            let draws = 400;
            let mut total = 0u64;
            let mut counts = vec![0u32; servers.max(1)];
            for _ in 0..draws {
                counts.iter_mut().for_each(|c| *c = 0);
                for _ in 0..n {
                    counts[rng.gen_range(0..servers.max(1))] += 1;
                }
                total += *counts.iter().max().unwrap_or(&0) as u64;
            }
            total as f64 / draws as f64
        });
    }
    if expected > 0.0 {
        seen / expected
    } else {
        f64::NAN
    }
}

/// See [`RunSummary::recovery_s`]. None when there is no drop in the measured period.
fn recovery(
    records: &[Record],
    schedule: &Schedule,
    warmup: Duration,
    end: Duration,
) -> Option<f64> {
    let drop_at = schedule.event_at?;
    let before = latencies(records, warmup, drop_at);
    let base = quantile(&before, 0.99);
    if !base.is_finite() {
        return None;
    }
    let threshold = 1.5 * base;
    let bucket = Duration::from_millis(250);
    let mut t = drop_at;
    let mut last_bad = None;
    while t < end {
        let next = (t + bucket).min(end);
        let l = latencies(records, t, next);
        if !l.is_empty() && quantile(&l, 0.99) > threshold {
            last_bad = Some(next);
        }
        t = next;
    }
    Some(last_bad.map_or(0.0, |b| b.saturating_sub(drop_at).as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herding_is_one_for_random_like_picks_and_high_for_a_herd() {
        let rec = |c: u64, s: u16| Record {
            at_us: 0,
            connected_us: Some(c),
            done_us: Some(c + 1),
            server: Some(s),
            outcome: Outcome::Ok,
            probes: 1,
            probe_bytes: 0,
            answer_us: None,
        };
        // 200 windows of 8 picks, all on one server: the busiest takes 8 where random gives ~2.
        let herd: Vec<Record> = (0..1600).map(|i| rec((i / 8) * 1000, 3)).collect();
        let refs: Vec<&Record> = herd.iter().collect();
        assert!(herding(&refs, 16) > 3.0);
        // Spread perfectly: 8 distinct servers per window — better than random.
        let spread: Vec<Record> = (0..1600)
            .map(|i| rec((i / 8) * 1000, (i % 8) as u16))
            .collect();
        let refs: Vec<&Record> = spread.iter().collect();
        assert!(herding(&refs, 16) < 1.0);
    }
}
