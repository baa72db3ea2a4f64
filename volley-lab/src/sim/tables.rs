//! The tables of `sim sweep` and `sim policies`: one per workload, load and clients with every
//! metric, and the sweep's pivot of p99 against the number of independent clients.

use super::policies::{MEAN_SERVICE, NET_BASE, NET_JITTER, Record, SLOTS, Warmup, Workload};
use crate::harness::stats::quantile;

/// `x` with `digits` decimals; `–` when undefined.
fn f(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{x:.digits$}")
    }
}

/// One Markdown table per (workload, load, clients).
pub fn markdown(records: &[Record], servers: usize, sessions: u64, warmup: &Warmup) -> String {
    let mut s = format!(
        "### volley and the peers: {servers} servers × {SLOTS} slots, work exp. mean {} ms, \
         network {} µs + U[0, {} µs) one way, protocol defaults (paced 1/32 of the expected \
         completion up to 10 ms, gated max_hold 200 ms, reservation {} ms, window 2 ms, service \
         time measured, probe retransmission 250 ms); {sessions} measured sessions per run; volley \
         and the exact references started from a {} ms pilot on {} servers, then {} ms \
         unmeasured; the local-view peers started empty, then {} ms unmeasured\n\n",
        MEAN_SERVICE / 1e6,
        NET_BASE / 1000,
        NET_JITTER / 1000,
        volley_proto::server::answer::DEFAULT_RESERVATION.as_millis(),
        warmup.pilot.as_millis(),
        warmup.pilot_servers,
        warmup.warmup.as_millis(),
        warmup.local_warmup.as_millis(),
    );
    s.push_str(
        "Latency: end to end (arrival → reply, selection included), ms. sel: mean selection time \
         (probe RTT + answer delay + retries), ms. util max/mean: busiest server's utilisation over \
         the mean; util groups: mean utilisation per group (half-slow: fast / slow). herd: most \
         picks of one server within 1 ms / the same for uniform random picks. probes/sess: volley \
         probes, or Prequal's load probes, per session. retx: share of sessions whose probes timed \
         out and were re-sent. failed: sessions with no server. drift: mean latency of the second \
         half of the measured sessions vs the first, relative (steady state: near 0).\n",
    );
    let seeded = records.iter().any(|r| r.seed != records[0].seed);
    let mut keys: Vec<(Workload, f64, usize)> = Vec::new();
    for r in records {
        if !keys
            .iter()
            .any(|(w, l, c)| *w == r.workload && *l == r.load && *c == r.clients)
        {
            keys.push((r.workload, r.load, r.clients));
        }
    }
    for (w, l, c) in keys {
        s.push_str(&format!(
            "\n#### {} fleet, load {l}, {c} client(s)\n\n",
            w.name()
        ));
        s.push_str(
            "| policy | p50 | p90 | p99 | p99.9 | mean | sel | util max/mean | util groups | herd | \
             probes/sess | retx | failed | drift |\n",
        );
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in records
            .iter()
            .filter(|r| r.workload == w && r.load == l && r.clients == c)
        {
            let m = &r.summary;
            let groups: Vec<String> = m.util_by_group.iter().map(|u| f(*u, 2)).collect();
            s.push_str(&format!(
                "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} |\n",
                r.policy,
                match (r.unstable, seeded) {
                    (false, false) => String::new(),
                    (true, false) => " (unstable)".into(),
                    (false, true) => format!(" (seed {})", r.seed),
                    (true, true) => format!(" (seed {}, unstable)", r.seed),
                },
                f(m.p50_ms, 2),
                f(m.p90_ms, 2),
                f(m.p99_ms, 2),
                f(m.p999_ms, 2),
                f(m.mean_ms, 2),
                f(m.selection_mean_ms, 3),
                f(m.util_max_over_mean, 2),
                groups.join(" / "),
                m.herd_max,
                m.herd_max_uniform,
                f(m.probes_per_session, 2),
                f(m.retransmit_share * 100.0, 3) + " %",
                m.failed,
                f(m.drift * 100.0, 1) + " %",
            ));
        }
    }
    let wall: f64 = records.iter().map(|r| r.summary.wall_s).sum();
    let simulated: u64 = records.iter().map(|r| r.summary.simulated).sum();
    s.push_str(&format!(
        "\n{} runs, {simulated} sessions simulated in {wall:.1} s ({:.0} sessions/s).\n",
        records.len(),
        simulated as f64 / wall.max(1e-9)
    ));
    s
}

/// The sweep's pivot: p99 (ms) per policy against the number of clients, one table per
/// (workload, load); the median over seeds with the min–max, `†` where a seed's run drifted by
/// more than 10 % (queues still growing) or is unstable.
pub fn sweep_markdown(records: &[Record]) -> String {
    let mut clients: Vec<usize> = records.iter().map(|r| r.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    let mut cells: Vec<(Workload, f64)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for r in records {
        if !cells.iter().any(|(w, l)| *w == r.workload && *l == r.load) {
            cells.push((r.workload, r.load));
        }
        if !names.contains(&r.policy) {
            names.push(r.policy.clone());
        }
    }
    let mut s = String::new();
    for (w, l) in cells {
        s.push_str(&format!(
            "\n#### p99 end to end (ms) against independent clients: {} fleet, load {l}\n\n",
            w.name()
        ));
        s.push_str("| policy |");
        for c in &clients {
            s.push_str(&format!(" M = {c} |"));
        }
        s.push('\n');
        s.push('|');
        s.push_str(&"---|".repeat(clients.len() + 1));
        s.push('\n');
        for name in &names {
            s.push_str(&format!("| {name} |"));
            for c in &clients {
                let runs: Vec<&Record> = records
                    .iter()
                    .filter(|r| {
                        r.workload == w && r.load == l && r.clients == *c && &r.policy == name
                    })
                    .collect();
                if runs.is_empty() {
                    s.push_str(" |");
                    continue;
                }
                let mut p99: Vec<f64> = runs.iter().map(|r| r.summary.p99_ms).collect();
                p99.sort_by(f64::total_cmp);
                let mid = quantile(&p99, 0.5);
                let flag = runs
                    .iter()
                    .any(|r| r.unstable || r.summary.drift.abs() > 0.10);
                let dagger = if flag { " †" } else { "" };
                if p99.len() > 1 {
                    s.push_str(&format!(
                        " {} ({}–{}){dagger} |",
                        f(mid, 1),
                        f(p99[0], 1),
                        f(p99[p99.len() - 1], 1)
                    ));
                } else {
                    s.push_str(&format!(" {}{dagger} |", f(mid, 1)));
                }
            }
            s.push('\n');
        }
    }
    s.push_str(
        "\n† a run of this cell was unstable or still drifting (second half of the measured \
         sessions more than 10 % slower or faster than the first): queues growing, figures \
         depend on the run's length.\n",
    );
    s
}
