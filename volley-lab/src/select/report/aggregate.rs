//! Runs grouped by cell and policy: each figure's median and min–max over the valid seeds, and
//! the cells run at several client counts.

use std::collections::HashMap;

use serde::Serialize;

use super::summary::RunSummary;
use crate::harness::stats::Spread;
use crate::select::workload::{Requests, Workload};

/// One policy in one cell, over its valid seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    pub workload: Workload,
    pub load: f64,
    pub requests: Requests,
    pub clients: usize,
    pub policy: String,
    /// Valid runs (the figures are over these).
    pub seeds: usize,
    /// Runs in all, valid or not.
    pub runs: usize,
    pub p50_ms: Spread,
    pub p90_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    pub goodput: Spread,
    pub failed: Spread,
    pub timeouts: Spread,
    pub herding: Spread,
    pub probes_per_session: Spread,
    pub probe_bytes_per_session: Spread,
    pub answer_p50_ms: Spread,
    pub max_utilisation: Spread,
    pub fleet_cpu: Spread,
    pub client_cpu: Spread,
    pub recovery_s: Option<Spread>,
    /// `select --long-lived`: races per 1,000 requests (absent in §2's cells).
    pub races_per_1000: Option<Spread>,
}

/// A cell: workload, load (‰), requests, clients.
pub(super) type CellKey = (Workload, u64, Requests, usize);

pub(super) fn cell_of(r: &RunSummary) -> CellKey {
    (
        r.workload,
        (r.load * 1000.0).round() as u64,
        r.requests,
        r.clients,
    )
}

/// Groups runs by cell and policy, keeping first-seen order; the figures are over valid runs.
pub fn aggregate(runs: &[RunSummary]) -> Vec<Aggregate> {
    let mut order: Vec<(CellKey, String)> = Vec::new();
    let mut groups: HashMap<(CellKey, String), Vec<&RunSummary>> = HashMap::new();
    for r in runs {
        let key = (cell_of(r), r.policy.clone());
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    order
        .into_iter()
        .map(|key| {
            let all = &groups[&key];
            let g: Vec<&RunSummary> = all.iter().copied().filter(|r| !r.invalid_cpu).collect();
            let s = |f: &dyn Fn(&RunSummary) -> f64| Spread::of(g.iter().map(|r| f(r)));
            Aggregate {
                workload: key.0.0,
                load: all[0].load,
                requests: key.0.2,
                clients: key.0.3,
                policy: key.1.clone(),
                seeds: g.len(),
                runs: all.len(),
                p50_ms: s(&|r| r.p50_ms),
                p90_ms: s(&|r| r.p90_ms),
                p99_ms: s(&|r| r.p99_ms),
                p999_ms: s(&|r| r.p999_ms),
                goodput: s(&|r| r.goodput),
                failed: s(&|r| r.failed as f64),
                timeouts: s(&|r| r.timeouts as f64),
                herding: s(&|r| r.herding),
                probes_per_session: s(&|r| r.probes_per_session),
                probe_bytes_per_session: s(&|r| r.probe_bytes_per_session),
                answer_p50_ms: s(&|r| r.answer_p50_ms),
                max_utilisation: s(&|r| r.utilisation.iter().copied().fold(0.0, f64::max)),
                fleet_cpu: Spread::of(all.iter().map(|r| r.fleet_cpu)),
                client_cpu: Spread::of(all.iter().map(|r| r.client_cpu)),
                recovery_s: (!g.is_empty() && g.iter().all(|r| r.recovery_s.is_some()))
                    .then(|| s(&|r| r.recovery_s.unwrap_or(f64::NAN))),
                races_per_1000: (!g.is_empty() && g.iter().all(|r| r.races_per_1000.is_some()))
                    .then(|| s(&|r| r.races_per_1000.unwrap_or(f64::NAN))),
            }
        })
        .collect()
}

/// The cells run at more than one client count, with those counts in order.
pub fn swept_cells(aggs: &[Aggregate]) -> Vec<(Workload, f64, Requests, Vec<usize>)> {
    let mut out: Vec<(Workload, f64, Requests, Vec<usize>)> = Vec::new();
    for a in aggs {
        let found = out.iter_mut().find(|(w, l, r, _)| {
            *w == a.workload && (*l - a.load).abs() < 1e-9 && *r == a.requests
        });
        match found {
            Some((_, _, _, ms)) => {
                if !ms.contains(&a.clients) {
                    ms.push(a.clients);
                }
            }
            None => out.push((a.workload, a.load, a.requests, vec![a.clients])),
        }
    }
    out.retain(|(.., ms)| ms.len() > 1);
    for (.., ms) in &mut out {
        ms.sort_unstable();
    }
    out
}

/// Per policy of a swept cell: the median p99 at each client count of `swept_cells` (None where
/// the policy has no valid run there).
pub fn p99_by_clients(
    aggs: &[Aggregate],
    w: Workload,
    l: f64,
    r: Requests,
) -> Vec<(String, Vec<(usize, f64)>)> {
    let mut out: Vec<(String, Vec<(usize, f64)>)> = Vec::new();
    for a in aggs
        .iter()
        .filter(|a| a.workload == w && (a.load - l).abs() < 1e-9 && a.requests == r)
    {
        if a.seeds == 0 {
            continue;
        }
        match out.iter_mut().find(|(p, _)| *p == a.policy) {
            Some((_, v)) => v.push((a.clients, a.p99_ms.median)),
            None => out.push((a.policy.clone(), vec![(a.clients, a.p99_ms.median)])),
        }
    }
    out.retain(|(_, v)| v.len() > 1);
    for (_, v) in &mut out {
        v.sort_by_key(|(m, _)| *m);
    }
    out
}
