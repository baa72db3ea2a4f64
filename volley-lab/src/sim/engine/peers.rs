//! The balancers volley is compared with, as users run them: every client process balances on its
//! own, with only what it has seen itself (docs/BENCHMARKS.md §3).
//!
//! - **Round-robin**: each client's own cursor, starting at a random server.
//! - **p2c over pending requests** (tower `PendingRequests`): two distinct random servers, the
//!   one with fewer of *this client's* requests pending wins (ties: the first drawn, as tower's
//!   `Balance`).
//! - **p2c over peak-EWMA** (tower `PeakEwma`): cost = the client's peak-EWMA of the server's
//!   response time × (its pending requests + 1). The estimate follows tower's rule: a sample
//!   above it replaces it; otherwise it moves towards the sample by `1 − e^(−elapsed/decay)`;
//!   reading it decays it towards 0 the same way (tower decays on every `load()`). A server the
//!   client never heard from starts at `default_rtt`. Response time is measured from the
//!   client's decision to the reply reaching it.
//! - **Prequal** (Wydrowski et al., NSDI 2024): the rule `select` runs, the same code
//!   ([`crate::peers::prequal`]); load probes and their answers travel one network leg each way.
//!   A server's latency estimate is the exponentially weighted mean (α = 1/8) of its recent
//!   service times × (1 + requests queued beyond its slots / slots).
//! - **JSQ(d) and SED(d)**: references with exact, instant knowledge of every queue (and, for
//!   SED, of every server's speed).

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;

use super::{Kind, Nanos, P2cMetric, World};
use crate::peers::prequal::{self, ProbePool};

/// A client's peak-EWMA of one server (tower's `RttEstimate`).
#[derive(Debug, Clone, Copy)]
struct Ewma {
    rtt_ns: f64,
    update_at: Nanos,
}

impl Ewma {
    fn update(&mut self, rtt_ns: f64, now: Nanos, decay_ns: f64) -> f64 {
        if self.rtt_ns < rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_sub(self.update_at) as f64;
            let decay = (-elapsed / decay_ns).exp();
            self.rtt_ns = self.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        self.update_at = now;
        self.rtt_ns
    }
}

/// One client's own state.
#[derive(Debug, Default)]
pub(super) struct Peer {
    cursor: u32,
    pending: HashMap<u32, u32>,
    ewma: HashMap<u32, Ewma>,
    pool: ProbePool,
}

impl Peer {
    pub(super) fn starting_at(cursor: u32) -> Self {
        Self {
            cursor,
            ..Self::default()
        }
    }
}

impl World<'_> {
    /// The next server in client `client`'s own order.
    pub(super) fn pick_round_robin(&mut self, client: u32) -> u32 {
        let n = self.servers.len() as u32;
        let peer = &mut self.peers[client as usize];
        peer.cursor = (peer.cursor + 1) % n;
        peer.cursor
    }

    /// Two distinct random servers; the one with the lower cost in `client`'s own view wins.
    pub(super) fn pick_p2c(&mut self, now: Nanos, client: u32, metric: P2cMetric) -> u32 {
        let n = self.servers.len() as u32;
        let a = self.rng.gen_range(0..n);
        let mut b = self.rng.gen_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        let peer = &mut self.peers[client as usize];
        let mut cost = |s: u32| -> f64 {
            let pending = f64::from(peer.pending.get(&s).copied().unwrap_or(0));
            match metric {
                P2cMetric::Pending => pending,
                P2cMetric::PeakEwma { default_rtt, decay } => {
                    let e = peer.ewma.entry(s).or_insert(Ewma {
                        rtt_ns: default_rtt.as_nanos() as f64,
                        update_at: now,
                    });
                    e.update(0.0, now, decay.as_nanos() as f64) * (pending + 1.0)
                }
            }
        };
        let (ca, cb) = (cost(a), cost(b));
        if ca <= cb { a } else { b }
    }

    /// `client` sent a request to `server` (p2c's pending count).
    pub(super) fn peer_sent(&mut self, client: u32, server: u32) {
        if let Some(peer) = self.peers.get_mut(client as usize) {
            *peer.pending.entry(server).or_insert(0) += 1;
        }
    }

    /// `client`'s request to `server` got its reply `latency` after the decision (p2c).
    pub(super) fn peer_done(&mut self, now: Nanos, client: u32, server: u32, latency: f64) {
        let decay = match self.s.selector {
            super::Selector::P2c(P2cMetric::PeakEwma { decay, .. }) => decay.as_nanos() as f64,
            _ => 1.0,
        };
        let default = match self.s.selector {
            super::Selector::P2c(P2cMetric::PeakEwma { default_rtt, .. }) => {
                default_rtt.as_nanos() as f64
            }
            _ => latency,
        };
        let Some(peer) = self.peers.get_mut(client as usize) else {
            return;
        };
        if let Some(p) = peer.pending.get_mut(&server) {
            *p = p.saturating_sub(1);
            if *p == 0 {
                peer.pending.remove(&server);
            }
        }
        if matches!(
            self.s.selector,
            super::Selector::P2c(P2cMetric::PeakEwma { .. })
        ) {
            peer.ewma
                .entry(server)
                .or_insert(Ewma {
                    rtt_ns: default,
                    update_at: now,
                })
                .update(latency, now, decay);
        }
    }

    /// A Prequal arrival: probes for later arrivals go out now; this one picks from the pool.
    pub(super) fn pick_prequal(&mut self, now: Nanos, client: u32, measured: bool) -> u32 {
        let n = self.servers.len() as u32;
        for _ in 0..prequal::PROBES_PER_ARRIVAL {
            let server = self.rng.gen_range(0..n);
            let at = now + self.leg();
            self.q.push(at, Kind::LoadProbe { client, server });
        }
        if measured {
            self.out.load_probes += prequal::PROBES_PER_ARRIVAL as u64;
        }
        match self.peers[client as usize]
            .pool
            .pick(Duration::from_nanos(now))
        {
            Some(s) => s,
            None => self.rng.gen_range(0..n),
        }
    }

    /// A load probe reaches `server`: it answers with its requests in flight and its latency
    /// estimate, which reach the client one network leg later.
    pub(super) fn on_load_probe(&mut self, now: Nanos, client: u32, server: u32) {
        let srv = &self.servers[server as usize];
        let rif = srv.jobs;
        let slots = f64::from(self.s.slots);
        let queued = (f64::from(rif) + 1.0 - slots).max(0.0);
        let latency_ns = (srv.service_ewma_ns * (1.0 + queued / slots)) as u64;
        let at = now + self.leg();
        self.q.push(
            at,
            Kind::LoadReply {
                client,
                server,
                rif,
                latency_ns,
            },
        );
    }

    /// A load probe's answer reaches `client`: it joins the pool, replacing that server's older
    /// answer; the oldest goes when the pool is full.
    pub(super) fn on_load_reply(
        &mut self,
        now: Nanos,
        client: u32,
        server: u32,
        rif: u32,
        latency_ns: u64,
    ) {
        self.peers[client as usize]
            .pool
            .insert(server, rif, latency_ns, Duration::from_nanos(now));
    }

    /// The shortest of `d` random queues by their true length (ties uniform).
    pub(super) fn shortest_of(&mut self, d: usize) -> u32 {
        let picks = self.pick_distinct(d, None);
        let mut best = picks[0];
        let mut ties = 1u32;
        for &i in &picks[1..] {
            let (a, b) = (
                self.servers[i as usize].jobs,
                self.servers[best as usize].jobs,
            );
            if a < b {
                best = i;
                ties = 1;
            } else if a == b {
                ties += 1;
                if self.rng.gen_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        best
    }

    /// The shortest expected delay of `d` random servers, from their true queues and speeds.
    pub(super) fn shortest_expected_of(&mut self, d: usize) -> u32 {
        let picks = self.pick_distinct(d, None);
        let slots = f64::from(self.s.slots);
        let expected = |w: &World<'_>, i: u32| {
            let srv = &w.servers[i as usize];
            (1.0 / srv.speed) * ((f64::from(srv.jobs) + 1.0) / slots).max(1.0)
        };
        let mut best = picks[0];
        let mut best_e = expected(self, best);
        let mut ties = 1u32;
        for &i in &picks[1..] {
            let e = expected(self, i);
            if e < best_e - 1e-12 {
                best = i;
                best_e = e;
                ties = 1;
            } else if (e - best_e).abs() <= 1e-12 {
                ties += 1;
                if self.rng.gen_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_follows_towers_rule() {
        let mut e = Ewma {
            rtt_ns: 100.0,
            update_at: 0,
        };
        // A higher sample replaces the estimate at once.
        assert_eq!(e.update(300.0, 10, 1_000.0), 300.0);
        // A lower one pulls it by 1 − e^(−elapsed/decay).
        let got = e.update(100.0, 10 + 1_000, 1_000.0);
        let want = 300.0 * (-1.0f64).exp() + 100.0 * (1.0 - (-1.0f64).exp());
        assert!((got - want).abs() < 1e-9);
        // Reading (a zero sample) decays it towards 0.
        let read = e.update(0.0, 10 + 2_000, 1_000.0);
        assert!((read - want * (-1.0f64).exp()).abs() < 1e-9);
    }
}
