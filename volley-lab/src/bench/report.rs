//! The datapath report: each ratio of two cases measured in the same repetition (median and
//! min–max over repetitions, against its goal), each case's figures, and the server core's.

use super::{BenchArgs, CASES, CaseResult, core, memory};
use crate::harness::stats::Spread;

/// Which figure of a case a ratio divides.
#[derive(Debug, Clone, Copy)]
enum Figure {
    Rate,
    P50,
    P99,
    /// Server CPU per reply or per connect.
    CpuPerOp,
}

/// The ratios reported: (name, figure, numerator case, denominator case, goal, whether the goal
/// is a floor (≥) rather than a ceiling (≤)).
const RATIOS: [(&str, Figure, &str, &str, f64, bool); 10] = [
    (
        "responder probes/s ÷ bare echo",
        Figure::Rate,
        "responder",
        "echo-256",
        0.90,
        true,
    ),
    (
        "handled/s, forged INITs ÷ PROBEs (flood)",
        Figure::Rate,
        "flood-forged",
        "flood-probe",
        0.90,
        true,
    ),
    (
        "DATA echo 64 B ÷ bare echo",
        Figure::Rate,
        "data-64",
        "echo-64",
        0.80,
        true,
    ),
    (
        "DATA echo 1,200 B ÷ bare echo",
        Figure::Rate,
        "data-1200",
        "echo-1200",
        0.80,
        true,
    ),
    (
        "connect p50: volley (race of 8) ÷ one quinn",
        Figure::P50,
        "connect-volley",
        "connect-quinn",
        0.5,
        false,
    ),
    (
        "connect p99: volley (race of 8) ÷ one quinn",
        Figure::P99,
        "connect-volley",
        "connect-quinn",
        0.5,
        false,
    ),
    (
        "server CPU per session: 8 quinn raced ÷ volley",
        Figure::CpuPerOp,
        "race8-quinn",
        "connect-volley",
        5.0,
        true,
    ),
    (
        "DATA echo 64 B under a PROBE flood ÷ clean",
        Figure::Rate,
        "flood+data-64",
        "data-64",
        0.8,
        true,
    ),
    (
        "connect p99 under a PROBE flood ÷ clean",
        Figure::P99,
        "flood+connect",
        "connect-volley",
        5.0,
        false,
    ),
    (
        "connect p99 under one source's PROBE flood and INIT replay ÷ clean (abuse)",
        Figure::P99,
        "abuse",
        "abuse-clean",
        5.0,
        false,
    ),
];

/// The abuse case's own figures against their goals (nothing when it did not run).
fn abuse_markdown(results: &[CaseResult]) -> String {
    let runs: Vec<_> = results
        .iter()
        .filter(|r| r.case == "abuse")
        .filter_map(|r| r.abuse)
        .collect();
    if runs.is_empty() {
        return String::new();
    }
    let row = |name: &str, values: Vec<f64>, goal: &str, ok: &dyn Fn(f64) -> bool| {
        goal_row(name, values, |x| format!("{x:.2}"), goal, Some(ok))
    };
    let mut s = String::from(
        "\n## One source floods (abuse): shares against the per-source limits\n\nThe PROBE flooder (127.0.0.2) and the INIT replayer (127.0.0.4) at the generator's full rate; eight other sources probing at 500/s each and a client connecting (median and min–max over repetitions).\n\n| figure | measured | goal | met? |\n|---|---|---|---|\n",
    );
    s.push_str(&row(
        "PROBE flooder: OFFERs/s ÷ its source's PROBE rate",
        runs.iter()
            .map(|a| a.flooder_offers_per_sec / a.probe_limit_per_sec)
            .collect(),
        "≤ 1.10",
        &|m| m <= 1.10,
    ));
    s.push_str(&row(
        "INIT replayer: handshakes attempted/s ÷ its source's INIT rate",
        runs.iter()
            .map(|a| a.replayer_handshakes_per_sec / a.init_limit_per_sec)
            .collect(),
        "≤ 1.10",
        &|m| m <= 1.10,
    ));
    s.push_str(&row(
        "other sources: share of PROBEs answered",
        runs.iter().map(|a| a.others_answered).collect(),
        "≥ 0.95",
        &|m| m >= 0.95,
    ));
    s.push_str(&goal_row(
        "PROBE flooder: PROBEs sent/s (for scale)",
        runs.iter().map(|a| a.flooder_sent_per_sec).collect(),
        |x| format!("{x:.0}"),
        "—",
        None,
    ));
    s.push_str(&goal_row(
        "INIT replayer: INITs sent/s (for scale)",
        runs.iter().map(|a| a.replayer_sent_per_sec).collect(),
        |x| format!("{x:.0}"),
        "—",
        None,
    ));
    s
}

impl Figure {
    fn of(self, r: &CaseResult) -> f64 {
        match self {
            Figure::Rate => r.rate,
            Figure::P50 => r.p50_us as f64,
            Figure::P99 => r.p99_us as f64,
            Figure::CpuPerOp => r.server_cpu_us_per_op,
        }
    }
}

/// The server core's section (nothing when it did not run).
pub(super) fn core_markdown(cores: &[core::CoreResult]) -> String {
    if cores.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## The server core without sockets (one pinned thread)\n\n| sessions | server CPU per handshake | handshakes/s | bytes per session (RSS) | timer wake-up |\n|---|---|---|---|---|\n",
    );
    for r in cores {
        s.push_str(&format!(
            "| {} | {:.1} µs | {:.0} | {:.0} | {:.0} ns ({} wake-ups) |\n",
            r.sessions,
            r.handshake_us,
            r.handshakes_per_sec,
            r.bytes_per_session,
            r.wake_ns,
            r.wakes
        ));
    }
    if let (Some(a), Some(b)) = (cores.first(), cores.last()) {
        s.push_str(&format!(
            "\nTimer wake-up at {} sessions ÷ at {}: {:.2} (goal ≤ 1.3). Authenticated handshakes/s on one core (IK, listed client keys): {:.0} (goal ≥ 12,000). Bytes per idle session: {:.0} (goal ≤ 1,024).\n",
            b.sessions,
            a.sessions,
            b.wake_ns / a.wake_ns,
            b.handshakes_per_sec,
            b.bytes_per_session
        ));
    }
    s
}

/// The whole server's memory section.
pub(super) fn memory_markdown(m: &memory::MemoryResult) -> String {
    format!(
        "\n## A whole server (runtime, core, echo service), child process\n\nAfter {} sessions beyond a warm-up of 1,000: {:.0} bytes of resident memory per idle session (VmRSS {} → {} bytes; {} sessions open; connects took {:.1} s). Goal ≤ 1,024.\n",
        m.sessions,
        m.bytes_per_session,
        m.rss_warm,
        m.rss_end,
        m.server_sessions,
        m.connect_seconds
    )
}

/// A case's result in one repetition, as both benchmarks' reports read them.
pub(super) trait Repetition {
    fn case(&self) -> &str;
    fn rep(&self) -> usize;
}

impl Repetition for CaseResult {
    fn case(&self) -> &str {
        &self.case
    }
    fn rep(&self) -> usize {
        self.rep
    }
}

/// Median and min–max over repetitions of the finite values; `None` when there is none.
pub(super) fn median_min_max(values: Vec<f64>) -> Option<Spread> {
    Spread::try_of(values.into_iter().filter(|x| x.is_finite()))
}

/// `compare(numerator's result, denominator's)` in each of `reps` repetitions where both cases
/// ran: a comparison within one repetition, so that what drifts between repetitions cancels.
pub(super) fn per_rep<R: Repetition>(
    results: &[R],
    reps: usize,
    numerator: &str,
    denominator: &str,
    compare: impl Fn(&R, &R) -> f64,
) -> Vec<f64> {
    let find = |rep: usize, case: &str| results.iter().find(|r| r.rep() == rep && r.case() == case);
    (0..reps)
        .filter_map(|rep| Some(compare(find(rep, numerator)?, find(rep, denominator)?)))
        .collect()
}

/// A comparison's row, `| name | median (min–max) | goal | met? |`, from its per-repetition
/// values (`not run` when there is none); `met` is `None` for a comparison without a goal.
pub(super) fn goal_row(
    name: &str,
    values: Vec<f64>,
    fmt: impl Fn(f64) -> String,
    goal: &str,
    met: Option<&dyn Fn(f64) -> bool>,
) -> String {
    match median_min_max(values) {
        Some(m) => format!(
            "| {name} | {} ({}–{}) | {goal} | {} |\n",
            fmt(m.median),
            fmt(m.min),
            fmt(m.max),
            match met {
                None => "—",
                Some(ok) if ok(m.median) => "yes",
                Some(_) => "**no**",
            }
        ),
        None => format!("| {name} | not run | {goal} | — |\n"),
    }
}

/// Each of `cases` that ran, with its results over the repetitions, in `cases`' order.
pub(super) fn by_case<'a, R: Repetition>(
    results: &'a [R],
    cases: &[&'a str],
) -> Vec<(&'a str, Vec<&'a R>)> {
    cases
        .iter()
        .map(|&case| (case, results.iter().filter(|r| r.case() == case).collect()))
        .filter(|(_, rs): &(&str, Vec<&R>)| !rs.is_empty())
        .collect()
}

/// The median over repetitions of `figure` of `runs` (one case's results); `NaN` when none is
/// finite.
pub(super) fn median_over<R>(runs: &[&R], figure: impl Fn(&R) -> f64) -> f64 {
    median_min_max(runs.iter().map(|r| figure(r)).collect()).map_or(f64::NAN, |x| x.median)
}

/// The ratios and the cases.
pub(super) fn markdown(args: &BenchArgs, results: &[CaseResult]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# volley-lab bench\n\n{} repetitions × {:.1} s per case; {} generator ports, window {} per port; server on CPU {}, generator on CPU {}.\n\n",
        args.reps, args.seconds, args.ports, args.window, args.server_cpu, args.generator_cpu
    ));
    s.push_str("## Ratios (same repetition, median and min–max over repetitions)\n\n| ratio | measured | goal | met? |\n|---|---|---|---|\n");
    for (name, figure, num, den, goal, floor) in RATIOS {
        let per_rep = per_rep(results, args.reps, num, den, |n, d| {
            figure.of(n) / figure.of(d)
        });
        let sign = if floor { "≥" } else { "≤" };
        let met = move |m: f64| (floor && m >= goal) || (!floor && m <= goal);
        s.push_str(&goal_row(
            name,
            per_rep,
            |x| format!("{x:.2}"),
            &format!("{sign} {goal:.2}"),
            Some(&met),
        ));
    }
    s.push_str("\n## Cases (median over repetitions)\n\nRate: replies/s at the generator (closed loop), datagrams handled/s by the server (floods), connects/s (connect cases, sequential).\n\n| case | rate /s | p50 µs | p99 µs | server CPU | server CPU µs/op | generator CPU | CPU busy server/gen | gen-bound runs |\n|---|---|---|---|---|---|---|---|---|\n");
    for (case, rs) in by_case(results, &CASES) {
        let med = |f: &dyn Fn(&CaseResult) -> f64| median_over(&rs, f);
        s.push_str(&format!(
            "| {case} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2}/{:.2} | {} of {} |\n",
            med(&|r| r.rate),
            med(&|r| r.p50_us as f64),
            med(&|r| r.p99_us as f64),
            med(&|r| r.server_cpu),
            med(&|r| r.server_cpu_us_per_op),
            med(&|r| r.generator_cpu),
            med(&|r| r.server_cpu_busy),
            med(&|r| r.generator_cpu_busy),
            rs.iter().filter(|r| r.gen_bound).count(),
            rs.len()
        ));
    }
    s.push_str(&abuse_markdown(results));
    s
}

/// The key-update run (PROTOCOL.md §5.5): goal 0 lost and 0 rejected across at least 5 updates
/// each way.
pub(super) fn rekey_markdown(r: &super::rekey::RekeyResult) -> String {
    let lost = r.sent.saturating_sub(r.echoed);
    let met = lost == 0
        && r.rejected == 0
        && r.client_updates.min(r.server_updates) >= 5
        && r.client_updates == r.server_followed
        && r.server_updates == r.client_followed;
    format!(
        "\n## Key updates under load\n\nOne session, {rate} datagrams/s each way for {secs} s, both \
         sides updating once a second.\n\n| sent | echoed | lost | rejected | client updates (server followed) | \
         server updates (client followed) | opened with the previous key | goal: 0 lost, 0 rejected, ≥ 5 updates each way |\n\
         |---|---|---|---|---|---|---|---|\n| {sent} | {echoed} | {lost} | {rejected} | {cu} ({sf}) | {su} ({cf}) | {prev} | {met} |\n\n\
         Datagrams dropped by a full application receive queue (not the protocol): {q}.\n",
        rate = r.rate,
        secs = r.seconds,
        sent = r.sent,
        echoed = r.echoed,
        rejected = r.rejected,
        cu = r.client_updates,
        sf = r.server_followed,
        su = r.server_updates,
        cf = r.client_followed,
        prev = r.opened_with_previous_key,
        met = if met { "met" } else { "**missed**" },
        q = r.queue_dropped,
    )
}
