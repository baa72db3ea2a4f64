//! What the soak samples: every process's resident memory, descriptors and CPU time (from
//! `/proc`), every server's open sessions and session counters (from its metrics endpoint, one
//! snapshot per scrape) and the clients' running totals; and `samples.csv`, their file.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::fleet::Fleet;
use super::load::Totals;
use super::metrics::{counter, scrape, session_counts};
use crate::harness::process::VolleyProcess;
use crate::harness::{cpu, footprint};

/// One process's figures at a sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    pub pid: u32,
    pub rss_kb: u64,
    pub fds: u64,
    /// CPU time used so far (user + system), seconds.
    pub cpu_s: f64,
}

/// One server's figures at a sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerSample {
    pub proc: ProcSample,
    /// Restarts of this server so far (its incarnation).
    pub incarnation: u32,
    pub sessions: u64,
    pub opened: u64,
    pub closed: u64,
    /// Whether the scrape answered.
    pub scraped: bool,
}

/// One sample of the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub servers: Vec<ServerSample>,
    pub proxy: ProcSample,
    pub proxy_flows: u64,
    pub proxy_open_flows: u64,
    pub lab: ProcSample,
    pub connects: u64,
    pub connect_failures: u64,
    pub misrouted: u64,
    pub requests: u64,
    pub request_failures: u64,
    pub failovers: u64,
    pub sessions_lost: u64,
    pub proxy_requests: u64,
    pub proxy_failures: u64,
    pub restarts: u64,
}

/// `VmRSS` (kB), open descriptors and CPU time of a process, from `/proc` (zeros for what
/// cannot be read: the process is gone).
pub fn proc_sample(pid: u32) -> ProcSample {
    ProcSample {
        pid,
        rss_kb: footprint::rss_kb(pid).unwrap_or(0),
        fds: footprint::open_fds(pid),
        cpu_s: cpu::process_cpu_s(pid).unwrap_or(0.0),
    }
}

/// What the scrapes have found so far.
pub(super) struct Tally {
    pub(super) scrapes: u64,
    /// Scrapes whose opened - closed was not the open sessions.
    pub(super) inconsistent: u64,
    /// Per server: (opened, closed) at the last scrape of its current incarnation.
    pub(super) last_counts: Vec<(u64, u64)>,
}

impl Tally {
    pub(super) fn new(servers: usize) -> Tally {
        Tally {
            scrapes: 0,
            inconsistent: 0,
            last_counts: vec![(0, 0); servers],
        }
    }
}

/// Samples every process and server now, `start` being the run's start.
pub(super) async fn sample(
    start: Instant,
    fleet: &Fleet,
    proxy: &VolleyProcess,
    totals: &Totals,
    restarts: u64,
    tally: &mut Tally,
) -> Sample {
    let mut servers = Vec::new();
    for (i, s) in fleet.servers.iter().enumerate() {
        let mut out = ServerSample {
            proc: proc_sample(s.pid()),
            incarnation: fleet.incarnation[i],
            ..ServerSample::default()
        };
        if let Some(m) = scrape(s.metrics).await {
            out.sessions = counter(&m, "volley_server_sessions");
            (out.opened, out.closed) = session_counts(&m);
            out.scraped = true;
            tally.scrapes += 1;
            if out.opened.checked_sub(out.closed) != Some(out.sessions) {
                tally.inconsistent += 1;
                tracing::warn!(server = i, ?out, "opened - closed is not the open sessions");
            }
            tally.last_counts[i] = (out.opened, out.closed);
        }
        servers.push(out);
    }
    let (mut flows, mut open_flows) = (0, 0);
    if let Some(m) = scrape(proxy.metrics).await {
        flows = counter(&m, "volley_proxy_flows_total");
        open_flows = counter(&m, "volley_proxy_open_flows");
    }
    let g = Totals::get;
    Sample {
        t_s: start.elapsed().as_secs_f64(),
        servers,
        proxy: proc_sample(proxy.pid()),
        proxy_flows: flows,
        proxy_open_flows: open_flows,
        lab: proc_sample(std::process::id()),
        connects: g(&totals.connects),
        connect_failures: g(&totals.connect_failures),
        misrouted: g(&totals.misrouted),
        requests: g(&totals.requests),
        request_failures: g(&totals.request_failures),
        failovers: g(&totals.failovers),
        sessions_lost: g(&totals.sessions_lost),
        proxy_requests: g(&totals.proxy_requests),
        proxy_failures: g(&totals.proxy_failures),
        restarts,
    }
}

/// Writes `samples.csv`: one row per sample, every figure of every process.
pub(super) fn write_csv(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let n = samples.first().map_or(0, |s| s.servers.len());
    let mut out = String::from("t_s");
    for i in 0..n {
        out.push_str(&format!(
            ",s{i}_incarnation,s{i}_rss_kb,s{i}_fds,s{i}_cpu_s,s{i}_sessions,s{i}_opened,s{i}_closed"
        ));
    }
    out.push_str(",proxy_rss_kb,proxy_fds,proxy_cpu_s,proxy_flows,proxy_open_flows,lab_rss_kb,lab_fds,lab_cpu_s,connects,connect_failures,misrouted,requests,request_failures,failovers,sessions_lost,proxy_requests,proxy_failures,restarts\n");
    for s in samples {
        out.push_str(&format!("{:.1}", s.t_s));
        for v in &s.servers {
            out.push_str(&format!(
                ",{},{},{},{:.2},{},{},{}",
                v.incarnation,
                v.proc.rss_kb,
                v.proc.fds,
                v.proc.cpu_s,
                v.sessions,
                v.opened,
                v.closed
            ));
        }
        out.push_str(&format!(
            ",{},{},{:.2},{},{},{},{},{:.2},{},{},{},{},{},{},{},{},{},{}\n",
            s.proxy.rss_kb,
            s.proxy.fds,
            s.proxy.cpu_s,
            s.proxy_flows,
            s.proxy_open_flows,
            s.lab.rss_kb,
            s.lab.fds,
            s.lab.cpu_s,
            s.connects,
            s.connect_failures,
            s.misrouted,
            s.requests,
            s.request_failures,
            s.failovers,
            s.sessions_lost,
            s.proxy_requests,
            s.proxy_failures,
            s.restarts
        ));
    }
    std::fs::write(path, out)?;
    Ok(())
}
