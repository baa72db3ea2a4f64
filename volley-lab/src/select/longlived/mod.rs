//! `select --long-lived` (issue 25, P4; docs/BENCHMARKS.md §7): M clients that live for the
//! whole run and balance **every request**, over long-lived connections, on §2's traces.
//!
//! Each arrival of the trace is one request (its work drawn as in §2) at one of the M clients
//! (drawn with the trace). A client's policy is a `tower::Service<LlRequest>`: for each of its
//! arrivals, in order, the runner ([`runner`]) awaits `ready()` then calls `call(request)`, and
//! the call runs as a task of its own, so a client has many requests in flight. The runner is
//! open loop: arrivals are handed to their client at their scheduled time whatever any policy
//! does, a request that its client cannot send yet waits, and latency runs from the scheduled
//! arrival, that wait included. A request not answered within [`DEADLINE`] of its scheduled
//! arrival is a timeout (infinitely late).
//!
//! The peers, each client with its own state, reach the servers over the fleet's plain request
//! path: one connection per (client, server) opened before the trace starts ([`conn`]); each
//! reply carries the server's load report (utilisation, queue, EWMA service time, qps, eps),
//! which only the policies that read it read ([`services`]):
//!
//! - `ll-p2c-pending`, `ll-p2c-peakewma`: tower's `Balance` (p2c) over one connection service
//!   per server, wrapped in `PendingRequests` or `PeakEwma`; a call is one request.
//! - `ll-prequal`: Prequal's probes and hot/cold rule ([`crate::peers::prequal`]) per request.
//! - `ll-wrr`: client-side weighted round robin by the reports ([`crate::peers::wrr`]).
//! - `ll-c3`: C3's ranking and rate control by the reports ([`crate::peers::c3`]), among each
//!   request's replica group of 3 servers, as in the paper's Cassandra.
//! - `ll-round-robin`: each client's own cursor.
//! - `ll-volley-race`: volley racing for every request, a one-request volley session each, with
//!   the primary configuration of §2 (`volley-window-immediate-d3`); every race is counted.
//! - `ll-oracle-sed`: §2's SED oracle per request: one central queue, a request leaves it when
//!   the fleet has a free slot, for the free slot of the fastest server (its true speed).
//!
//! **Adding `volley::Pool`.** A policy is one arm of [`services::build`] returning one
//! [`LlService`] per client. The Pool arm builds a `Pool` per client and adapts it to the lab's
//! request and reply with `tower::ServiceExt::map_request` (the request's bytes, §2's 8-byte
//! `seq, work_us`) and `map_response` (the reply's status into [`LlReply::outcome`]); the races
//! its members and replacements cost are added to [`RunCtx::races`](super::policy::RunCtx)
//! (the report's "races per 1,000 requests"). A new [`LlPolicy`] variant names it.

pub mod conn;
pub mod runner;
pub mod services;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::policy::{Outcome, Record, RunCtx};
use super::workload::Job;

/// How long a request may take from its scheduled arrival to its reply, its wait to be sent
/// included; later it is a timeout.
pub const DEADLINE: Duration = super::run::REQUEST_TIMEOUT;

/// One request as a client's policy receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlRequest {
    /// Its place in the trace.
    pub index: usize,
    /// Scheduled arrival, from the run's start.
    pub at: Duration,
    /// Work at speed 1, µs.
    pub work_us: u32,
    /// The trace's uniform draw for this request.
    pub coin: u64,
}

/// How a request ended, as its policy tells the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlReply {
    /// The server that answered, when one did.
    pub server: Option<u16>,
    /// Answered (done or failed), or not in time.
    pub outcome: Outcome,
    /// volley probes sent for this request.
    pub probes: u32,
    /// Bytes of selection traffic for this request (probes, load probes; both directions).
    pub probe_bytes: u32,
    /// volley's winning offer's answer time, µs.
    pub answer_us: Option<u32>,
}

impl LlReply {
    /// A reply from `server` (when known) with the fleet's `status` (0 done, else failed), with
    /// no selection traffic of its own.
    pub fn answered(server: Option<u16>, status: u8) -> LlReply {
        LlReply {
            server,
            outcome: if status == 0 {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            probes: 0,
            probe_bytes: 0,
            answer_us: None,
        }
    }
}

impl From<conn::Answer> for LlReply {
    fn from(a: conn::Answer) -> LlReply {
        LlReply::answered(Some(a.server as u16), a.status)
    }
}

/// A client's policy, as the runner drives it.
pub type LlService = tower::util::BoxService<LlRequest, LlReply, tower::BoxError>;

/// A policy of the long-lived matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LlPolicy {
    /// `ll-p2c-pending`: tower p2c over `PendingRequests`.
    P2cPending,
    /// `ll-p2c-peakewma`: tower p2c over `PeakEwma`.
    P2cPeakEwma,
    /// `ll-prequal`: Prequal's probes and hot/cold rule per request.
    Prequal,
    /// `ll-wrr`: client-side weighted round robin from the per-reply reports.
    Wrr,
    /// `ll-c3`: C3's ranking and rate control from the per-reply reports.
    C3,
    /// `ll-round-robin`: each client's own cursor.
    RoundRobin,
    /// `ll-oracle-sed`: the central SED oracle, per request.
    OracleSed,
    /// `ll-volley-race`: volley racing for every request.
    VolleyRace,
    /// `ll-volley-pool-k2`: a `volley::Pool` of 2 sessions per client.
    VolleyPool2,
    /// `ll-volley-pool-k3`: a `volley::Pool` of 3 sessions per client.
    VolleyPool3,
    /// `ll-volley-pool-k4`: a `volley::Pool` of 4 sessions per client.
    VolleyPool4,
}

impl LlPolicy {
    /// Every policy, the peers first (in the report's order), then the oracle, then volley.
    pub const ALL: [LlPolicy; 11] = [
        LlPolicy::P2cPending,
        LlPolicy::P2cPeakEwma,
        LlPolicy::Prequal,
        LlPolicy::Wrr,
        LlPolicy::C3,
        LlPolicy::RoundRobin,
        LlPolicy::OracleSed,
        LlPolicy::VolleyRace,
        LlPolicy::VolleyPool2,
        LlPolicy::VolleyPool3,
        LlPolicy::VolleyPool4,
    ];

    /// The balancers in use today that volley is measured against ("the best peer": the oracle
    /// is not one).
    pub const PEERS: [LlPolicy; 6] = [
        LlPolicy::P2cPending,
        LlPolicy::P2cPeakEwma,
        LlPolicy::Prequal,
        LlPolicy::Wrr,
        LlPolicy::C3,
        LlPolicy::RoundRobin,
    ];

    /// The name in reports, journals and `--policies`.
    pub fn name(self) -> &'static str {
        match self {
            LlPolicy::P2cPending => "ll-p2c-pending",
            LlPolicy::P2cPeakEwma => "ll-p2c-peakewma",
            LlPolicy::Prequal => "ll-prequal",
            LlPolicy::Wrr => "ll-wrr",
            LlPolicy::C3 => "ll-c3",
            LlPolicy::RoundRobin => "ll-round-robin",
            LlPolicy::OracleSed => "ll-oracle-sed",
            LlPolicy::VolleyRace => "ll-volley-race",
            LlPolicy::VolleyPool2 => "ll-volley-pool-k2",
            LlPolicy::VolleyPool3 => "ll-volley-pool-k3",
            LlPolicy::VolleyPool4 => "ll-volley-pool-k4",
        }
    }

    /// The policy of a name as [`LlPolicy::name`] prints it.
    pub fn parse(s: &str) -> Option<LlPolicy> {
        LlPolicy::ALL.into_iter().find(|p| p.name() == s)
    }

    /// volley's own (the goals are computed for these).
    pub fn is_volley(self) -> bool {
        matches!(
            self,
            LlPolicy::VolleyRace
                | LlPolicy::VolleyPool2
                | LlPolicy::VolleyPool3
                | LlPolicy::VolleyPool4
        )
    }

    /// A `volley::Pool`'s members, for the pool policies.
    pub fn pool_members(self) -> Option<usize> {
        match self {
            LlPolicy::VolleyPool2 => Some(2),
            LlPolicy::VolleyPool3 => Some(3),
            LlPolicy::VolleyPool4 => Some(4),
            _ => None,
        }
    }
}

/// Runs `policy` over `jobs`, each an open-loop request at its own client; every request's
/// record, in the jobs' order.
pub async fn drive(
    policy: LlPolicy,
    ctx: Arc<RunCtx>,
    jobs: Vec<Job>,
) -> anyhow::Result<Vec<Record>> {
    let services = services::build(policy, &ctx).await?;
    let t0 = tokio::time::Instant::from_std(ctx.t0);
    Ok(runner::run(t0, services, jobs, DEADLINE).await)
}
