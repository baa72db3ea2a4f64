//! The peers that balance each request from load reports carried by replies, each client with
//! only the reports of its own replies (docs/BENCHMARKS.md §3, "sim pools").
//!
//! - **Client-side weighted round robin** (gRPC A58, Envoy `client_side_weighted_round_robin`):
//!   every reply carries the server's ORCA report — its queries per second and its utilisation,
//!   measured by the server over an exponentially decaying window of [`ORCA_WINDOW_NS`] (busy
//!   slot-time ÷ slots, completions) — and the client sets that server's weight to
//!   `qps ÷ utilisation` (an empty report, with no utilisation or no qps yet, is ignored; no
//!   request fails here, so the error penalty is 0). Every [`WRR_UPDATE_NS`] the client rebuilds
//!   its scheduler from the weights it has, and picks with the static stride scheduler of gRPC's
//!   implementations over every server of the fleet: a sequence number that visits the servers
//!   in index order and takes server `i` in generation `g` when
//!   `(wᵢ × g + i × 32,767) mod 65,535 ≥ 65,535 − wᵢ`, the weights scaled so that the largest is
//!   65,535; the sequence starts at a random point per client. **The blackout (10 s) and the
//!   expiry (3 min) are not simulated as time**: a run lasts a few virtual seconds, shorter than
//!   the blackout alone, which would make WRR plain round-robin throughout, while a long-lived
//!   client has heard from every server long ago (at M = N a client's round visits each of
//!   10,000 servers every ~2.5 min, within the expiry). So every client starts as such a client
//!   would be: every server weighted by what its reports settle at on this fleet,
//!   `slots × speed ÷ mean work` (its capacity in requests per second), each weight then replaced
//!   by the server's next report to this client.
//! - **C3** (Suresh et al., NSDI '15, and the authors' simulator): every reply carries the
//!   server's queue (requests in flight there after this one left: the same number a volley
//!   report carries) and the request's service time; the client keeps per server exponentially
//!   weighted means (α = 0.9 on the new sample) of the queue `q`, the service time `1/µ` and the
//!   response time less the service time `R − 1/µ` (the path and the wait), and ranks
//!   `(R − 1/µ) + q̂³ / µ` with `q̂ = 1 + os × M + q`, `os` its own requests outstanding there and
//!   M the number of clients (concurrency compensation). A server it never heard from scores 0
//!   (it is tried first, as in the authors' simulator). C3 ranks a key's replica group (3 replicas
//!   in Cassandra); with no keys here, each request ranks `d` = 3 servers drawn uniformly, the
//!   lowest score wins (ties: the first drawn). **C3's rate control is not modelled**: its
//!   per-server sending rate adapts to the receive rate measured over 20 ms intervals, and here a
//!   client sends a given server one request every 1.6 s (M = 100) to 2.6 min (M = 10,000), so no
//!   interval holds more than one reply and the limiter, which starts at 10 requests per interval,
//!   never binds.

use std::collections::HashMap;

use super::pool::Report;
use super::{Kind, Nanos, World};

/// The window of the servers' ORCA measurements (utilisation, qps), ns.
pub const ORCA_WINDOW_NS: f64 = 1e9;
/// How often a WRR client rebuilds its scheduler from its weights (A58's default), ns.
pub const WRR_UPDATE_NS: Nanos = 1_000_000_000;
/// The stride scheduler's largest weight.
const MAX_WEIGHT: u64 = 65_535;
/// C3's smoothing: the weight of a new sample.
pub const C3_ALPHA: f64 = 0.9;

/// A server's ORCA measurements: decayed busy slot-time and completions.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Orca {
    busy_ns: f64,
    done: f64,
    last: Nanos,
}

/// One WRR client's weights and scheduler.
#[derive(Debug, Default)]
pub(super) struct WrrClient {
    /// The scheduler's sequence number.
    seq: u64,
    /// The latest weight reported by each server it heard from.
    reported: HashMap<u32, f64>,
    /// The weights of the scheduler in use (as of its last rebuild).
    scheduled: HashMap<u32, f64>,
    /// The largest weight of the scheduler in use.
    max: f64,
    /// When the scheduler is next rebuilt.
    rebuild_at: Nanos,
    /// Whether it was ever built.
    built: bool,
}

impl WrrClient {
    pub(super) fn starting_at(seq: u64) -> Self {
        Self {
            seq,
            ..Self::default()
        }
    }
}

/// One C3 client's view of a server.
#[derive(Debug, Clone, Copy)]
struct C3Seen {
    queue: f64,
    service_ns: f64,
    /// Response time less service time.
    wait_ns: f64,
}

/// One C3 client's state.
#[derive(Debug, Default)]
pub(super) struct C3Client {
    seen: HashMap<u32, C3Seen>,
    outstanding: HashMap<u32, u32>,
}

/// C3's score of a server: `(R − 1/µ) + (1 + os × clients + q)³ / µ`, 0 when never heard from.
fn c3_score(seen: Option<&C3Seen>, outstanding: u32, clients: f64) -> f64 {
    match seen {
        None => 0.0,
        Some(s) => {
            let q_hat = 1.0 + f64::from(outstanding) * clients + s.queue;
            s.wait_ns + q_hat.powi(3) * s.service_ns
        }
    }
}

/// Whether the stride scheduler takes a server of scaled weight `w` at index `i` in generation
/// `g`.
fn stride_takes(w: u64, i: u64, g: u64) -> bool {
    let offset = MAX_WEIGHT / 2;
    (w.wrapping_mul(g).wrapping_add(i.wrapping_mul(offset))) % MAX_WEIGHT >= MAX_WEIGHT - w
}

impl World<'_> {
    /// Server `server`'s capacity in requests per ns: what its WRR weight settles at.
    fn settled_weight(&self, server: u32) -> f64 {
        f64::from(self.s.slots) * self.servers[server as usize].speed / self.s.mean_service
    }

    /// Brings server `server`'s ORCA window to `now` (call before its busy slots change).
    pub(super) fn orca_account(&mut self, server: u32, now: Nanos) {
        let srv = &mut self.servers[server as usize];
        let o = &mut srv.orca;
        let dt = now.saturating_sub(o.last) as f64;
        if dt > 0.0 {
            let decay = (-dt / ORCA_WINDOW_NS).exp();
            o.busy_ns = o.busy_ns * decay + f64::from(srv.busy) * ORCA_WINDOW_NS * (1.0 - decay);
            o.done *= decay;
            o.last = now;
        }
    }

    /// Server `server` completed a request (after [`World::orca_account`]).
    pub(super) fn orca_completed(&mut self, server: u32) {
        self.servers[server as usize].orca.done += 1.0;
    }

    /// The weight server `server`'s ORCA report gives: qps ÷ utilisation, in requests per ns
    /// (`slots × completions ÷ busy slot-time` over the window); `None` when either is zero.
    pub(super) fn orca_weight(&self, server: u32) -> Option<f64> {
        let o = &self.servers[server as usize].orca;
        (o.busy_ns > 0.0 && o.done > 0.0).then(|| f64::from(self.s.slots) * o.done / o.busy_ns)
    }

    /// The largest settled weight of the fleet (see [`World::settled_weight`]).
    pub(super) fn settled_max(&self) -> f64 {
        (0..self.servers.len() as u32)
            .map(|s| self.settled_weight(s))
            .fold(0.0, f64::max)
    }

    /// Client `client`'s next server under weighted round robin.
    pub(super) fn pick_wrr(&mut self, now: Nanos, client: u32) -> u32 {
        let n = self.servers.len() as u64;
        let fleet_max = self.wrr_max;
        let c = &mut self.wrr[client as usize];
        if !c.built || now >= c.rebuild_at {
            c.scheduled.clone_from(&c.reported);
            c.max = c.scheduled.values().copied().fold(fleet_max, f64::max);
            c.rebuild_at = now + WRR_UPDATE_NS;
            c.built = true;
        }
        loop {
            let c = &mut self.wrr[client as usize];
            let seq = c.seq;
            c.seq = c.seq.wrapping_add(1);
            let (i, g) = (seq % n, seq / n);
            let (known, max) = (c.scheduled.get(&(i as u32)).copied(), c.max);
            let w = known.unwrap_or_else(|| self.settled_weight(i as u32));
            if !(max.is_finite() && max > 0.0 && w.is_finite()) {
                return i as u32; // no usable weights: round robin
            }
            let scaled = (w / max * MAX_WEIGHT as f64)
                .round()
                .clamp(0.0, MAX_WEIGHT as f64);
            if stride_takes(scaled as u64, i, g) {
                return i as u32;
            }
        }
    }

    /// Client `client`'s C3 choice among `d` random servers; counts the request outstanding.
    pub(super) fn pick_c3(&mut self, client: u32, d: usize) -> u32 {
        let picks = self.pick_distinct(d, None);
        let clients = self.s.clients as f64;
        let c = &mut self.c3[client as usize];
        let mut best = picks[0];
        let mut best_score = f64::INFINITY;
        for &s in &picks {
            let os = c.outstanding.get(&s).copied().unwrap_or(0);
            let score = c3_score(c.seen.get(&s), os, clients);
            if score < best_score {
                best = s;
                best_score = score;
            }
        }
        *c.outstanding.entry(best).or_insert(0) += 1;
        best
    }

    /// The report a reply from `server` carries to a client of this run's selector, as the reply
    /// leaves (`None`: the selector reads none).
    pub(super) fn reply_report(
        &self,
        now: Nanos,
        server: u32,
        service_ns: f64,
        member: Option<volley_proto::balance::MemberKey>,
    ) -> Option<Report> {
        match self.s.selector {
            super::Selector::Pool(_) => member.map(|key| self.pool_report(now, server, key)),
            super::Selector::Wrr => Some(Report::Wrr {
                weight: self.orca_weight(server),
            }),
            super::Selector::C3(_) => Some(Report::C3 {
                queue: self.servers[server as usize].jobs,
                service_ns,
            }),
            _ => None,
        }
    }

    /// Puts a reply with its report on the wire to its client: it arrives at `at`.
    pub(super) fn send_reply(
        &mut self,
        at: Nanos,
        client: u32,
        server: u32,
        latency: Nanos,
        report: Report,
    ) {
        self.q.push(
            at,
            Kind::Reply {
                client,
                server,
                latency,
                report,
            },
        );
    }

    /// A reply reaches `client`, `latency` after the request was sent, with its report.
    pub(super) fn on_reply(
        &mut self,
        now: Nanos,
        client: u32,
        server: u32,
        latency: Nanos,
        report: Report,
    ) {
        match report {
            Report::Pool { key, report } => self.on_pool_reply(now, client, key, report),
            Report::Wrr { weight } => {
                if let Some(w) = weight {
                    self.wrr[client as usize].reported.insert(server, w);
                }
            }
            Report::C3 { queue, service_ns } => {
                let c = &mut self.c3[client as usize];
                if let Some(o) = c.outstanding.get_mut(&server) {
                    *o = o.saturating_sub(1);
                    if *o == 0 {
                        c.outstanding.remove(&server);
                    }
                }
                let sample = C3Seen {
                    queue: f64::from(queue),
                    service_ns,
                    wait_ns: (latency as f64 - service_ns).max(0.0),
                };
                c.seen
                    .entry(server)
                    .and_modify(|s| {
                        let a = C3_ALPHA;
                        s.queue = a * sample.queue + (1.0 - a) * s.queue;
                        s.service_ns = a * sample.service_ns + (1.0 - a) * s.service_ns;
                        s.wait_ns = a * sample.wait_ns + (1.0 - a) * s.wait_ns;
                    })
                    .or_insert(sample);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p5_stride_scheduler_takes_each_server_in_proportion_to_its_weight() {
        // Four servers, weights 65,535 / 32,768 / 16,384 / 0 (scaled): over many generations
        // they are taken about 1 : 1/2 : 1/4 : 0.
        let w = [65_535u64, 32_768, 16_384, 0];
        let mut taken = [0u64; 4];
        for seq in 0..4 * 65_535u64 {
            let (i, g) = (seq % 4, seq / 4);
            if stride_takes(w[i as usize], i, g) {
                taken[i as usize] += 1;
            }
        }
        assert_eq!(
            taken[0], 65_535,
            "the largest weight is taken every generation"
        );
        assert!(
            (taken[1] as f64 / 65_535.0 - 0.5).abs() < 0.001,
            "{taken:?}"
        );
        assert!(
            (taken[2] as f64 / 65_535.0 - 0.25).abs() < 0.001,
            "{taken:?}"
        );
        assert_eq!(taken[3], 0, "a zero weight is never taken");
    }

    #[test]
    fn p5_c3_score_is_cubic_in_the_compensated_queue() {
        let s = C3Seen {
            queue: 2.0,
            service_ns: 10.0,
            wait_ns: 5.0,
        };
        // q̂ = 1 + 0 × 100 + 2 = 3: 5 + 27 × 10.
        assert_eq!(c3_score(Some(&s), 0, 100.0), 275.0);
        // One request of this client outstanding there: q̂ = 1 + 100 + 2.
        assert_eq!(c3_score(Some(&s), 1, 100.0), 5.0 + 103f64.powi(3) * 10.0);
        assert_eq!(
            c3_score(None, 5, 100.0),
            0.0,
            "never heard from: tried first"
        );
    }
}
