//! The policies, all driving the same fleet with the same trace. Every session, whoever picks
//! its server, is a real volley session: a probe, an offer, a Noise handshake, then the
//! session's requests — so the data path is identical and only the choice of server differs.
//!
//! **Independent clients** (docs/BENCHMARKS.md §2). A run has `clients` client instances that share
//! nothing, and each session arrives at one of them (drawn with the trace, uniformly). Each has
//! its own balancer state: its own round-robin cursor, its own tower `Balance`, its own Prequal
//! pool and probe socket, its own volley `Client` (whose outcome reports, L7, stay its own).
//! With one client the balancer is *central*: it sees every request of the run.
//!
//! - `random`, `round-robin`: the client picks; it then probes just that server.
//! - `p2c-pending`, `p2c-peakewma`: `tower::balance::p2c::Balance` over one service per server,
//!   each wrapped in `tower::load::PendingRequests` or `tower::load::PeakEwma`; a call is a
//!   whole session.
//! - `prequal`: asynchronous load probes to each server's load port (3 per arrival, to random
//!   servers), a pool of the 16 freshest answers (100 ms at most, each reused at most twice,
//!   its in-flight count raised by each use), and the hot/cold rule: among answers whose
//!   in-flight count is at most the pool's 0.75 quantile, the lowest latency estimate; when none
//!   is, the lowest in-flight count.
//! - `oracle`: one central queue feeding every slot of the fleet: a session starts only when a
//!   slot is free, on a uniformly drawn free slot. Central whatever the number of clients.
//! - `oracle-sed`: the same queue, feeding the free slot with the shortest expected completion:
//!   the fastest server with a free slot, from the schedule's true speeds (the sinkhole and the
//!   silent server count at speed 1: the oracle knows speeds, not failures).
//! - `volley-…`: one race over the pool (or `fanout` of it) with the client's selection policy,
//!   servers answering by the answer policy. Sessions report each request's outcome to their
//!   client (`Session::report_failure`, `report_success`): the sinkhole's failures eject it (L7).

mod oracle;
mod prequal;
mod race;
mod spread;
mod tower;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;
use volley::{AnswerPolicy, Client, ClientConfig, PublicKey, SelectionPolicy};

use super::fleet::{Answering, Fleet};
use super::longlived::{self, LlPolicy};
use super::workload::{Job, Schedule};

/// How a volley client picks among offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pick {
    Earliest,
    Window,
    /// `SelectionPolicy::path()`: the offer expected to finish the session first, counting the
    /// measured path once per round trip (issue 23, Z1), learning the requests per session.
    Path,
}

/// How volley servers answer probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    Immediate,
    Paced,
    Gated,
}

/// A selection policy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    Random,
    RoundRobin,
    P2cPending,
    P2cPeakEwma,
    Prequal,
    Oracle,
    OracleSed,
    /// `fanout` None: every server.
    Volley {
        pick: Pick,
        answer: Answer,
        fanout: Option<u8>,
    },
    /// A policy of `select --long-lived`: long-lived clients balancing every request.
    LongLived(LlPolicy),
}

impl Policy {
    /// The six peers, then every volley combination: pick × answer × fan-out 2, 3, all; then
    /// the path-aware configuration of the zones (`volley-path-paced-d4`).
    pub fn all() -> Vec<Policy> {
        let mut v = Policy::peers();
        for pick in [Pick::Earliest, Pick::Window] {
            for answer in [Answer::Immediate, Answer::Paced, Answer::Gated] {
                for fanout in [Some(2), Some(3), None] {
                    v.push(Policy::Volley {
                        pick,
                        answer,
                        fanout,
                    });
                }
            }
        }
        v.push(Policy::PATH);
        v
    }

    /// volley's path-aware configuration (issue 23, Z1/Z3): `SelectionPolicy::path()`, paced
    /// servers, fan-out 4 (near servers first).
    pub const PATH: Policy = Policy::Volley {
        pick: Pick::Path,
        answer: Answer::Paced,
        fanout: Some(4),
    };

    /// The policies volley is compared with.
    pub fn peers() -> Vec<Policy> {
        vec![
            Policy::Random,
            Policy::RoundRobin,
            Policy::P2cPending,
            Policy::P2cPeakEwma,
            Policy::Prequal,
            Policy::Oracle,
            Policy::OracleSed,
        ]
    }

    pub fn is_volley(&self) -> bool {
        match self {
            Policy::Volley { .. } => true,
            Policy::LongLived(p) => p.is_volley(),
            _ => false,
        }
    }

    /// A policy of `select --long-lived`.
    pub fn is_long_lived(&self) -> bool {
        matches!(self, Policy::LongLived(_))
    }

    /// Every policy of `select --long-lived`, in the report's order.
    pub fn long_lived() -> Vec<Policy> {
        LlPolicy::ALL.into_iter().map(Policy::LongLived).collect()
    }

    pub fn name(&self) -> String {
        match self {
            Policy::Random => "random".into(),
            Policy::RoundRobin => "round-robin".into(),
            Policy::P2cPending => "p2c-pending".into(),
            Policy::P2cPeakEwma => "p2c-peakewma".into(),
            Policy::Prequal => "prequal".into(),
            Policy::Oracle => "oracle".into(),
            Policy::OracleSed => "oracle-sed".into(),
            Policy::LongLived(p) => p.name().into(),
            Policy::Volley {
                pick,
                answer,
                fanout,
            } => {
                let pick = match pick {
                    Pick::Earliest => "earliest",
                    Pick::Window => "window",
                    Pick::Path => "path",
                };
                let answer = match answer {
                    Answer::Immediate => "immediate",
                    Answer::Paced => "paced",
                    Answer::Gated => "gated",
                };
                let d = match fanout {
                    Some(d) => format!("d{d}"),
                    None => "all".into(),
                };
                format!("volley-{pick}-{answer}-{d}")
            }
        }
    }

    /// Parses a name as printed by [`Policy::name`] (a long-lived policy's too).
    pub fn parse(s: &str) -> Option<Policy> {
        Policy::all()
            .into_iter()
            .find(|p| p.name() == s)
            .or_else(|| LlPolicy::parse(s).map(Policy::LongLived))
    }

    /// How the fleet answers for this policy.
    pub fn answering(&self, lab: &VolleyKnobs) -> Answering {
        match self {
            // Racing for every request, and the pools' servers (their capacity is what makes a
            // reply's report a queue, not only a time): the primary configuration of §2.
            Policy::LongLived(
                LlPolicy::VolleyRace
                | LlPolicy::VolleyPool2
                | LlPolicy::VolleyPool3
                | LlPolicy::VolleyPool4,
            ) => Policy::Volley {
                pick: Pick::Window,
                answer: Answer::Immediate,
                fanout: Some(3),
            }
            .answering(lab),
            Policy::Volley { answer, .. } => Answering {
                capacity: Some(lab.capacity),
                answer: match answer {
                    Answer::Immediate => AnswerPolicy::Immediate,
                    Answer::Paced => AnswerPolicy::Paced {
                        max_delay: lab.pace_max,
                        divisor: lab.pace_divisor,
                    },
                    Answer::Gated => AnswerPolicy::Gated {
                        max_hold: lab.max_hold,
                    },
                },
                reservation: lab.reservation,
            },
            _ => Answering {
                capacity: None,
                answer: AnswerPolicy::Immediate,
                reservation: Duration::ZERO,
            },
        }
    }
}

/// The volley server settings of a run (the same for every volley policy).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VolleyKnobs {
    pub capacity: u32,
    pub pace_max: Duration,
    pub pace_divisor: u32,
    pub max_hold: Duration,
    pub reservation: Duration,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// A request was answered with a failure, or the session closed under it.
    Failed,
    /// No session within the connect timeout, or a request unanswered within its timeout.
    Timeout,
}

/// One session as the client saw it. Times are microseconds from the run's start.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub at_us: u64,
    pub connected_us: Option<u64>,
    pub done_us: Option<u64>,
    pub server: Option<u16>,
    pub outcome: Outcome,
    /// Volley probes this session's connect sent.
    pub probes: u32,
    /// Bytes of selection traffic (probes and load-port probes, both directions).
    pub probe_bytes: u32,
    /// The winning offer's answer time (probe RTT plus any pacing), µs.
    pub answer_us: Option<u32>,
}

impl Record {
    /// A session scheduled `at_us` that never connected, ended as `outcome`.
    pub(in crate::select) fn unconnected(at_us: u64, outcome: Outcome) -> Record {
        Record {
            at_us,
            connected_us: None,
            done_us: None,
            server: None,
            outcome,
            probes: 0,
            probe_bytes: 0,
            answer_us: None,
        }
    }
}

/// What every session of a run shares.
pub struct RunCtx {
    /// Independent client instances.
    pub clients: usize,
    /// The speed schedule (for `oracle-sed`), from `t0`.
    pub schedule: Arc<Schedule>,
    pub addrs: Vec<SocketAddr>,
    pub load_ports: Vec<SocketAddr>,
    /// Each server's plain request path (`select --long-lived`'s peers).
    pub direct_ports: Vec<SocketAddr>,
    pub key: PublicKey,
    pub t0: Instant,
    pub slots: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Default RTT for PeakEwma: the mean session length.
    pub ewma_default_rtt: Duration,
    pub ewma_decay: Duration,
    pub seed: u64,
    /// volley sessions send their first request as early data, in the INIT (`select --zones`).
    pub early: bool,
    /// Races run for the requests of `select --long-lived` (the report's races per 1,000
    /// requests; read at the start and the end of the measured period).
    pub races: AtomicU64,
    /// Bytes of one volley probe, as the clients send them.
    probe_size: u32,
    index: HashMap<SocketAddr, u16>,
}

impl RunCtx {
    /// What the sessions of a run against `fleet` share; `timeouts` are the connect and the
    /// request timeout.
    pub fn new(
        clients: usize,
        schedule: Arc<Schedule>,
        fleet: &Fleet,
        slots: usize,
        ewma_default_rtt: Duration,
        seed: u64,
        timeouts: (Duration, Duration),
    ) -> Self {
        let addrs = fleet.addrs.clone();
        let index = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, i as u16))
            .collect();
        Self {
            clients: clients.max(1),
            schedule,
            addrs,
            load_ports: fleet.load_ports.clone(),
            direct_ports: fleet.direct_ports.clone(),
            key: fleet.key,
            t0: fleet.start,
            slots,
            connect_timeout: timeouts.0,
            request_timeout: timeouts.1,
            ewma_default_rtt,
            ewma_decay: Duration::from_secs(10),
            seed,
            early: false,
            races: AtomicU64::new(0),
            probe_size: ClientConfig::new(Vec::new()).probe_size as u32,
            index,
        }
    }

    /// Sessions that reach server `index` at `addr` (a relay's address in front of it) are
    /// recorded as served by it.
    pub(in crate::select) fn alias(&mut self, addr: SocketAddr, index: u16) {
        self.index.insert(addr, index);
    }

    pub(super) fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_micros() as u64
    }

    pub(super) fn client(&self, policy: SelectionPolicy, fanout: Option<usize>) -> Client {
        let mut cfg = ClientConfig::new(vec![self.key]);
        cfg.policy = policy;
        cfg.fanout = fanout;
        Client::new(cfg)
    }
}

/// Opens a session on `pool` with `client` and runs the job's requests.
pub(super) async fn run_session(
    ctx: Arc<RunCtx>,
    client: Client,
    pool: Vec<SocketAddr>,
    job: Job,
) -> Record {
    let mut rec = Record::unconnected(job.at.as_micros() as u64, Outcome::Timeout);
    let request = |seq: usize, work: u32| -> [u8; 8] {
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&(seq as u32).to_be_bytes());
        req[4..].copy_from_slice(&work.to_be_bytes());
        req
    };
    // With `early`, the first request rides in the INIT (PROTOCOL.md §4.8).
    let first = job
        .work_us
        .first()
        .filter(|_| ctx.early)
        .map(|&w| volley::Bytes::copy_from_slice(&request(0, w)));
    let connect = async {
        match &first {
            Some(f) => client.connect_with_early(&pool, f.clone()).await,
            None => client.connect(&pool).await,
        }
    };
    let session = match tokio::time::timeout(ctx.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => return rec,
    };
    rec.connected_us = Some(ctx.us(Instant::now()));
    if let Some(report) = session.report() {
        rec.server = report.server.and_then(|a| ctx.index.get(&a).copied());
        rec.probes = report.stats.probes_sent as u32;
        rec.probe_bytes = rec.probes * ctx.probe_size;
        rec.answer_us = report.answer_time.map(|d| d.as_micros() as u32);
    }
    for (seq, &work) in job.work_us.iter().enumerate() {
        let req = request(seq, work);
        if (seq > 0 || first.is_none()) && session.send(&req).await.is_err() {
            rec.outcome = Outcome::Failed;
            return rec;
        }
        let deadline = tokio::time::Instant::now() + ctx.request_timeout;
        loop {
            match tokio::time::timeout_at(deadline, session.recv()).await {
                Ok(Ok(d)) if d.len() >= 5 && d[..4] == req[..4] => {
                    if d[4] != 0 {
                        // The application tells its client (L7).
                        session.report_failure();
                        rec.outcome = Outcome::Failed;
                        return rec;
                    }
                    session.report_success();
                    break;
                }
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => {
                    rec.outcome = Outcome::Failed;
                    return rec;
                }
                Err(_) => {
                    session.report_failure();
                    rec.outcome = Outcome::Timeout;
                    return rec;
                }
            }
        }
    }
    rec.done_us = Some(ctx.us(Instant::now()));
    rec.outcome = Outcome::Ok;
    session.close();
    rec
}

/// Runs `policy` over `jobs` in open loop, each job at its own client; returns every session's
/// record once all ended.
pub async fn drive(
    policy: Policy,
    ctx: Arc<RunCtx>,
    jobs: Vec<Job>,
) -> anyhow::Result<Vec<Record>> {
    let handles = match policy {
        Policy::Random => spread::spread(&ctx, jobs, false).await,
        Policy::RoundRobin => spread::spread(&ctx, jobs, true).await,
        Policy::P2cPending => tower::p2c_pending(&ctx, jobs).await?,
        Policy::P2cPeakEwma => tower::p2c_peak_ewma(&ctx, jobs).await?,
        Policy::Prequal => prequal::prequal(&ctx, jobs).await?,
        Policy::Oracle => return oracle::oracle(&ctx, jobs, false).await,
        Policy::OracleSed => return oracle::oracle(&ctx, jobs, true).await,
        Policy::Volley { pick, fanout, .. } => race::race(&ctx, jobs, pick, fanout).await,
        Policy::LongLived(p) => return longlived::drive(p, ctx, jobs).await,
    };
    collect(handles).await
}

/// Every session's record, once all ended.
pub(super) async fn collect(handles: Vec<JoinHandle<Record>>) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip_and_cover_the_matrix() {
        let all = Policy::all();
        assert_eq!(all.len(), 7 + 2 * 3 * 3 + 1);
        for p in &all {
            assert_eq!(Policy::parse(&p.name()), Some(*p), "{}", p.name());
        }
        assert!(Policy::parse("volley-earliest-paced-d3").is_some());
        assert_eq!(Policy::parse("volley-path-paced-d4"), Some(Policy::PATH));
        assert!(Policy::parse("nonsense").is_none());
        for p in Policy::long_lived() {
            assert_eq!(Policy::parse(&p.name()), Some(p), "{}", p.name());
            assert!(!all.contains(&p), "§2's matrix runs no long-lived policy");
        }
    }
}
