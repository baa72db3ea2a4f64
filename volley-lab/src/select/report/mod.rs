//! What a select run reports: each run's figures (`summary`), grouped by cell and policy over
//! seeds (`aggregate`), the goals of `docs/BENCHMARKS.md` §2 read from them (`goals`) and those
//! of §7 for `--long-lived` (`long_lived`), the tables (`tables`), and the JSON form of
//! undefined and infinite figures ([`float`]).

mod aggregate;
pub mod float;
mod goals;
mod long_lived;
mod summary;
mod tables;

pub use aggregate::{Aggregate, aggregate, p99_by_clients, swept_cells};
pub use goals::goals;
pub use long_lived::long_lived_goals;
pub use summary::{RunMeta, RunSummary, latencies, summarise};
pub use tables::markdown;

#[cfg(test)]
mod tests {
    use super::goals::ratios;
    use super::*;
    use crate::select::workload::{Requests, Workload};

    fn summary(policy: &str, seed: u64, p99: f64, cpu: f64) -> RunSummary {
        RunSummary {
            workload: Workload::HalfSlow,
            load: 0.85,
            requests: Requests::One,
            clients: crate::select::HEADLINE_CLIENTS,
            policy: policy.into(),
            seed,
            invalid_cpu: cpu > crate::select::CPU_LIMIT,
            sessions: 100,
            ok: 100,
            failed: 0,
            timeouts: 0,
            p50_ms: p99 / 4.0,
            p90_ms: p99 / 2.0,
            p99_ms: p99,
            p999_ms: p99,
            mean_ms: p99 / 4.0,
            goodput: 1.0,
            connect_p50_ms: 1.0,
            answer_p50_ms: 0.3,
            probes_per_session: 3.0,
            probe_bytes_per_session: 768.0,
            herding: 1.0,
            utilisation: vec![0.8],
            capacity_share: vec![1.0],
            work_share: vec![1.0],
            recovery_s: None,
            withheld: 0,
            held: 0,
            hold_dropped: 0,
            busy_offers: 0,
            init_refused: 0,
            client_cpu: cpu,
            fleet_cpu: 0.3,
            cpu_busy: vec![],
            races_per_1000: None,
        }
    }

    #[test]
    fn select_runs_over_the_cpu_limit_are_invalid_and_left_out() {
        let runs = vec![
            summary("p2c-pending", 1, 400.0, 0.5),
            summary("p2c-peakewma", 1, 300.0, 0.5),
            summary("volley-x", 1, 240.0, 0.5),
            summary("p2c-pending", 2, 500.0, 0.5),
            summary("p2c-peakewma", 2, 380.0, 0.5),
            // A saturated client thread: not a figure, and not a ratio either.
            summary("volley-x", 2, 9000.0, 0.97),
        ];
        let aggs = aggregate(&runs);
        let v = aggs.iter().find(|a| a.policy == "volley-x").unwrap();
        assert_eq!((v.seeds, v.runs), (1, 2));
        assert_eq!(v.p99_ms.median, 240.0, "the invalid run is left out");
        // Only seed 1 pairs validly: 240 / min(400, 300).
        let r = ratios(
            &runs,
            (Workload::HalfSlow, 850, Requests::One, 16),
            "volley-x",
            &["p2c-pending", "p2c-peakewma"],
            |r| r.p99_ms,
        );
        assert_eq!(r, vec![0.8]);
        let all_bad = vec![summary("p2c-pending", 1, 9.0, 0.99)];
        let md = markdown(&aggregate(&all_bad));
        assert!(md.contains("invalid (cpu)"), "{md}");
        assert!(goals(&runs, "volley-x").contains("0.80 (0.80–0.80), 1 seeds"));
    }
}
