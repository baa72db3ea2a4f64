//! The proxy report: each proxy case against its direct case in the same repetition (median and
//! min–max over repetitions, against its goal), then every case's figures.

use super::{CASES, ProxyBenchArgs, ProxyCaseResult};
use crate::bench::report::{Repetition, by_case, goal_row, median_over, per_rep};

/// A reported comparison: proxy case against direct case.
#[derive(Debug, Clone, Copy)]
enum Compare {
    /// Rate ÷ rate, with a floor.
    Ratio(Option<f64>),
    /// p50 difference in µs, with a ceiling.
    AddedP50(Option<f64>),
    /// p99 difference in µs (reported only).
    AddedP99,
}

const COMPARISONS: [(&str, &str, &str, Compare); 10] = [
    (
        "UDP requests/s, proxy ÷ direct",
        "udp-proxy",
        "udp-direct",
        Compare::Ratio(Some(0.7)),
    ),
    (
        "UDP added p50 latency per request (µs)",
        "udp-lat-proxy",
        "udp-lat-direct",
        Compare::AddedP50(Some(100.0)),
    ),
    (
        "UDP added p99 latency per request (µs)",
        "udp-lat-proxy",
        "udp-lat-direct",
        Compare::AddedP99,
    ),
    (
        "TCP requests/s, proxy ÷ direct",
        "tcp-proxy",
        "tcp-direct",
        Compare::Ratio(None),
    ),
    (
        "TCP added p50 latency per request (µs)",
        "tcp-lat-proxy",
        "tcp-lat-direct",
        Compare::AddedP50(Some(100.0)),
    ),
    (
        "TCP added p99 latency per request (µs)",
        "tcp-lat-proxy",
        "tcp-lat-direct",
        Compare::AddedP99,
    ),
    (
        "TCP new connection + request, added p50 (µs)",
        "tcp-connect-proxy",
        "tcp-connect-direct",
        Compare::AddedP50(None),
    ),
    (
        "TCP bulk, 1 stream, proxy ÷ direct",
        "bulk1-proxy",
        "bulk1-direct",
        Compare::Ratio(Some(0.5)),
    ),
    (
        "TCP bulk, 16 streams, proxy ÷ direct",
        "bulk16-proxy",
        "bulk16-direct",
        Compare::Ratio(Some(0.5)),
    ),
    (
        "TCP new connection + request, added p99 (µs)",
        "tcp-connect-proxy",
        "tcp-connect-direct",
        Compare::AddedP99,
    ),
];

/// `results.md`: each comparison of a proxy case with its direct case, then every case.
pub(super) fn markdown(args: &ProxyBenchArgs, results: &[ProxyCaseResult]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# volley-lab bench proxy\n\n{} repetitions × {:.1} s per case; {} flows/connections, UDP window {}, {} B requests; server host on CPU {}, client host (generator and client-side proxies) on CPU {}.\n\n",
        args.reps, args.seconds, args.flows, args.window, args.payload, args.server_cpu, args.client_cpu
    ));
    s.push_str("## Through the proxies against direct (same repetition; median and min–max over repetitions)\n\n| comparison | measured | goal | met? |\n|---|---|---|---|\n");
    for (name, num, den, how) in COMPARISONS {
        let per_rep = per_rep(results, args.reps, num, den, |n, d| match how {
            Compare::Ratio(_) => n.rate / d.rate,
            Compare::AddedP50(_) => n.p50_us - d.p50_us,
            Compare::AddedP99 => n.p99_us - d.p99_us,
        });
        // The goal as text, and as a bound: (value, whether it is a floor).
        let (goal, bound) = match how {
            Compare::Ratio(Some(g)) => (format!("≥ {g:.2}"), Some((g, true))),
            Compare::AddedP50(Some(g)) => (format!("≤ {g:.0} µs"), Some((g, false))),
            _ => ("—".to_string(), None),
        };
        let met = bound.map(|(g, floor)| move |m: f64| if floor { m >= g } else { m <= g });
        let fmt = |x: f64| match how {
            Compare::Ratio(_) => format!("{x:.2}"),
            _ => format!("{x:.0}"),
        };
        s.push_str(&goal_row(
            name,
            per_rep,
            fmt,
            &goal,
            met.as_ref().map(|ok| ok as &dyn Fn(f64) -> bool),
        ));
    }
    s.push_str("\n## Cases (median over repetitions)\n\nRate: requests/s, or MB/s for bulk (bytes the sink read). CPU: each host thread's own CPU time per second; busy: its core's /proc/stat share. Saturated: runs where a host thread used ≥ 0.9 of its core.\n\n| case | rate | p50 µs | p99 µs | lost | client CPU | server CPU | busy client/server | saturated runs |\n|---|---|---|---|---|---|---|---|---|\n");
    for (case, rs) in by_case(results, &CASES) {
        let med = |f: &dyn Fn(&ProxyCaseResult) -> f64| median_over(&rs, f);
        let rate = if case.starts_with("bulk") {
            format!("{:.0} MB/s", med(&|r| r.rate) / 1e6)
        } else {
            format!("{:.0}/s", med(&|r| r.rate))
        };
        let lat = |x: f64| {
            if x.is_finite() {
                format!("{x:.0}")
            } else {
                "—".to_string()
            }
        };
        s.push_str(&format!(
            "| {case} | {rate} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2}/{:.2} | {} of {} |\n",
            lat(med(&|r| r.p50_us)),
            lat(med(&|r| r.p99_us)),
            med(&|r| r.lost as f64),
            med(&|r| r.client_cpu),
            med(&|r| r.server_cpu),
            med(&|r| r.client_busy),
            med(&|r| r.server_busy),
            rs.iter().filter(|r| r.saturated).count(),
            rs.len()
        ));
    }
    s
}

impl Repetition for ProxyCaseResult {
    fn case(&self) -> &str {
        &self.case
    }
    fn rep(&self) -> usize {
        self.rep
    }
}
