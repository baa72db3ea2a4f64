//! The chaos report: the connect cells' table, the cold connects that failed, and the failure
//! cases' recovery times.

use super::failures::CASES;
use super::{Cell, ChaosArgs, Results};
use crate::harness::stats::quantile;

pub(super) fn markdown(args: &ChaosArgs, r: &Results) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# volley-lab chaos\n\nRelay per server: {} ms one way (+0–{} ms jitter), {} % duplication, loss each way as below; deadline {} s per connect (and its exchange); {} connects per cell; seed {}.\n\n",
        args.delay_ms, args.jitter_ms, args.duplicate, args.deadline, args.connects, args.seed
    ));
    s.push_str("## Connects\n\ncold: a fresh `volley connect --send` process each (success = exit 0 with the reply); warm: one library client for the whole cell (success = session and 10 echoes). Times: race + handshake, ms.\n\n| servers | loss | kind | within deadline | p50 | p90 | p99 | max | misrouted |\n|---|---|---|---|---|---|---|---|---|\n");
    for Cell {
        kind,
        servers,
        loss_pct,
        connects,
        ok,
        p50_ms,
        p90_ms,
        p99_ms,
        max_ms,
        misrouted,
        ..
    } in &r.cells
    {
        s.push_str(&format!("| {servers} | {loss_pct} % | {kind} | {ok}/{connects} | {p50_ms:.1} | {p90_ms:.1} | {p99_ms:.1} | {max_ms:.1} | {misrouted} |\n"));
    }
    let failed: Vec<_> = r
        .cells
        .iter()
        .flat_map(|c| c.failed.iter().map(move |f| (c, f)))
        .collect();
    if !failed.is_empty() {
        s.push_str("\nCold connects that failed (servers, loss, index, how long the process ran, exit, its last line):\n\n");
        for (c, (i, ms, status, line)) in failed {
            s.push_str(&format!(
                "- {} server(s), {} %: #{i} after {ms:.0} ms, {status}: `{line}`\n",
                c.servers, c.loss_pct
            ));
        }
    }
    if r.failures.is_empty() {
        return s;
    }
    s.push_str("\n## Failures (3 servers, clean path, a session sending every 50 ms)\n\nFrom the fault to the first echo after it.\n\n| case | rounds | resumed: median | max | never (10 s) |\n|---|---|---|---|---|\n");
    for case in CASES {
        let mut v: Vec<f64> = r
            .failures
            .iter()
            .filter(|f| f.case == case)
            .filter_map(|f| f.resumed_ms)
            .collect();
        let never = r
            .failures
            .iter()
            .filter(|f| f.case == case && f.resumed_ms.is_none())
            .count();
        v.sort_by(f64::total_cmp);
        s.push_str(&format!(
            "| {case} | {} | {:.0} ms | {:.0} ms | {never} |\n",
            v.len() + never,
            quantile(&v, 0.5),
            v.last().copied().unwrap_or(f64::NAN)
        ));
    }
    s
}
