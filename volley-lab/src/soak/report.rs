//! The soak's figures and report: how flat memory and descriptors stayed after the warm-up, the
//! CPU share of each process, the counters' totals, and `results.md`.

use serde::Serialize;

use super::SoakArgs;
use super::fleet::Restart;
use super::load::{CONNECT_DEADLINE, REQUEST_DEADLINE};
use super::sample::{ProcSample, Sample, Tally};
use crate::harness::stats::{self, quantile};

/// Flatness of one series after the warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct Flatness {
    pub what: String,
    pub samples: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// (max - min) / median.
    pub spread: f64,
    /// Median of the last sixth of the run against the median of the first sixth after warm-up.
    pub drift: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Results {
    minutes: f64,
    servers: usize,
    clients: usize,
    proxy_flows: usize,
    restarts: Vec<Restart>,
    flatness: Vec<Flatness>,
    /// Share of one core per sample interval after the warm-up, per process: (name, median, max).
    cpu: Vec<(String, f64, f64)>,
    /// Scrapes whose opened - closed was not the open sessions.
    inconsistent_scrapes: u64,
    scrapes: u64,
    /// Sessions open on each server once every client had gone (should be 0).
    left_open: Vec<u64>,
    /// Per server: sessions opened over all its incarnations (last scrape of each).
    opened_total: Vec<u64>,
    closed_total: Vec<u64>,
    last: Sample,
}

/// The run's figures: flatness and CPU share after the warm-up, counter totals, and what was
/// left open at the end (`samples` ends with the sample taken once every client had gone).
pub(super) fn results(
    args: &SoakArgs,
    samples: &[Sample],
    restarts: Vec<Restart>,
    tally: &Tally,
    ended_counts: &[(u64, u64)],
) -> Results {
    let last = samples.last().cloned().unwrap_or_default();
    let warm_up = warm_up_s(args);
    let steady: Vec<&Sample> = samples[..samples.len().saturating_sub(1)]
        .iter()
        .filter(|s| s.t_s >= warm_up)
        .collect();
    let flatness = vec![
        flatness("server 0 RSS (kB)", &steady, |s| {
            s.servers[0].proc.rss_kb as f64
        }),
        flatness("server 0 open fds", &steady, |s| {
            s.servers[0].proc.fds as f64
        }),
        flatness("proxy RSS (kB)", &steady, |s| s.proxy.rss_kb as f64),
        flatness("proxy open fds", &steady, |s| s.proxy.fds as f64),
        flatness("lab (clients) RSS (kB)", &steady, |s| s.lab.rss_kb as f64),
        flatness("lab (clients) open fds", &steady, |s| s.lab.fds as f64),
    ];
    let cpu = vec![
        cpu_share("server 0", &steady, |s| s.servers[0].proc),
        cpu_share("proxy", &steady, |s| s.proxy),
        cpu_share("lab (clients)", &steady, |s| s.lab),
    ];
    Results {
        minutes: args.minutes,
        servers: args.servers,
        clients: args.clients,
        proxy_flows: args.proxy_flows,
        restarts,
        flatness,
        cpu,
        inconsistent_scrapes: tally.inconsistent,
        scrapes: tally.scrapes,
        left_open: last.servers.iter().map(|s| s.sessions).collect(),
        opened_total: (0..args.servers)
            .map(|i| ended_counts[i].0 + tally.last_counts[i].0)
            .collect(),
        closed_total: (0..args.servers)
            .map(|i| ended_counts[i].1 + tally.last_counts[i].1)
            .collect(),
        last,
    }
}

/// Seconds at the start left out of the flatness figures: `--warm-up-minutes`, at most a third
/// of the run.
pub(super) fn warm_up_s(args: &SoakArgs) -> f64 {
    (args.warm_up_minutes * 60.0).min(args.minutes * 20.0)
}

/// How flat one series is: its spread and its drift (see [`Flatness`]).
fn flatness(what: &str, samples: &[&Sample], f: impl Fn(&Sample) -> f64) -> Flatness {
    let series: Vec<f64> = samples.iter().map(|s| f(s)).collect();
    let mut sorted = series.clone();
    sorted.sort_by(f64::total_cmp);
    let median = quantile(&sorted, 0.5);
    let (min, max) = (
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    let sixth = (series.len() / 6).max(1);
    let med = |v: &[f64]| stats::median(v.to_vec());
    let drift = if series.len() >= 2 {
        let first = med(&series[..sixth.min(series.len())]);
        let last = med(&series[series.len() - sixth.min(series.len())..]);
        (last - first) / first
    } else {
        f64::NAN
    };
    Flatness {
        what: what.to_string(),
        samples: series.len(),
        min,
        median,
        max,
        spread: (max - min) / median,
        drift,
    }
}

/// The median and largest share of one core a process used per sample interval.
fn cpu_share(
    what: &str,
    samples: &[&Sample],
    f: impl Fn(&Sample) -> ProcSample,
) -> (String, f64, f64) {
    let mut shares: Vec<f64> = samples
        .windows(2)
        .filter(|w| f(w[0]).pid == f(w[1]).pid && w[1].t_s > w[0].t_s)
        .map(|w| (f(w[1]).cpu_s - f(w[0]).cpu_s) / (w[1].t_s - w[0].t_s))
        .collect();
    shares.sort_by(f64::total_cmp);
    (
        what.to_string(),
        quantile(&shares, 0.5),
        shares.last().copied().unwrap_or(f64::NAN),
    )
}

/// `results.md`.
pub(super) fn markdown(args: &SoakArgs, r: &Results) -> String {
    let l = &r.last;
    let mut s = format!(
        "# volley-lab soak\n\n{} min; {} servers (server 0 never restarted; the others restarted in turn every {} s, alternately kill -9 and SIGTERM, each time with the other of two pinned static keys); {} library clients (a long session at 10 requests/s and a churn of 20-request sessions each); {} plain-UDP applications through one `volley proxy` (100-request flows); sampled every {} s; warm-up left out of the flatness figures: {} min.\n\n",
        r.minutes,
        r.servers,
        args.restart_every,
        r.clients,
        r.proxy_flows,
        args.sample_every,
        (args.warm_up_minutes).min(args.minutes / 3.0)
    );
    s.push_str("## Flat (after the warm-up)\n\n| series | samples | min | median | max | spread (max−min)/median | drift (last sixth vs first) |\n|---|---|---|---|---|---|---|\n");
    for f in &r.flatness {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} % | {:+.1} % |\n",
            f.what,
            f.samples,
            f.min,
            f.median,
            f.max,
            f.spread * 100.0,
            f.drift * 100.0
        ));
    }
    s.push_str("\n## CPU (share of one core per sample interval, after the warm-up)\n\n| process | median | max |\n|---|---|---|\n");
    for (what, median, max) in &r.cpu {
        s.push_str(&format!("| {what} | {median:.2} | {max:.2} |\n"));
    }
    s.push_str(&format!(
        "\n## Counters\n\n- restarts: {} ({} kill -9, {} SIGTERM)\n- library connects: {} ({} failed within {} s)\n- requests: {} ({} not echoed within {} s)\n- failovers of open sessions: {}; long sessions that ended and reconnected: {}\n- proxy requests: {} ({} not echoed within 5 s); proxy flows: {}\n- sessions with a server other than their race selected (or outside the pool): {}\n- scrapes where opened − closed ≠ open sessions: {} of {}\n- sessions left open once every client had gone: {:?}\n- sessions opened over all incarnations, per server: {:?}; closed: {:?}\n",
        r.restarts.len(),
        r.restarts.iter().filter(|x| x.how == "kill -9").count(),
        r.restarts.iter().filter(|x| x.how == "SIGTERM").count(),
        l.connects,
        l.connect_failures,
        CONNECT_DEADLINE.as_secs(),
        l.requests,
        l.request_failures,
        REQUEST_DEADLINE.as_secs(),
        l.failovers,
        l.sessions_lost,
        l.proxy_requests,
        l.proxy_failures,
        l.proxy_flows,
        l.misrouted,
        r.inconsistent_scrapes,
        r.scrapes,
        r.left_open,
        r.opened_total,
        r.closed_total,
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatness_measures_spread_and_drift_after_the_warm_up() {
        let samples: Vec<Sample> = (0u32..12)
            .map(|i| Sample {
                t_s: f64::from(i),
                lab: ProcSample {
                    rss_kb: 1000 + u64::from(i) * 10,
                    ..ProcSample::default()
                },
                ..Sample::default()
            })
            .collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let f = flatness("lab", &refs, |s| s.lab.rss_kb as f64);
        assert_eq!((f.samples, f.min, f.max), (12, 1000.0, 1110.0));
        // Spread: 110 over the median (1050 or 1060 by nearest rank).
        assert!((f.spread - 110.0 / f.median).abs() < 1e-12);
        assert!(f.median == 1050.0 || f.median == 1060.0, "{}", f.median);
        // Drift: the last two samples' median against the first two's, about +10 %.
        assert!(f.drift > 0.08 && f.drift < 0.12, "{}", f.drift);
        let flat: Vec<&Sample> = samples.iter().take(1).collect();
        let f = flatness("lab", &flat, |_| 5.0);
        assert_eq!((f.spread, f.drift.is_nan()), (0.0, true));
    }
}
