//! The peers of the zone runs, each client with only what it has seen itself, and the oracle.
//!
//! - **p2c over peak-EWMA** (tower's `PeakEwma` and `p2c`): two distinct random servers — of
//!   the client's own zone (zone-local) or of the whole fleet (global) — the lower
//!   `estimate × (sessions pinned there by this client + 1)` wins (ties: the first drawn). The
//!   estimate follows tower's rule (a higher sample replaces it, a lower one pulls it by
//!   `1 − e^(−elapsed/10 s)`, reading decays it), starts at `DEFAULT_RTT` for a server never
//!   heard from, and is fed every request's time from sending to reply — so the path is in it.
//!   A timed-out connection or request feeds the time waited.
//! - **Load-aware locality** (Envoy's zone-aware routing with load-based weights): every
//!   second each zone reports its slot utilisation over the last second to every zone (one way
//!   from the reporting zone); a zone unheard of for `REPORT_STALE` is unhealthy. A zone's
//!   weight is its headroom, `servers × max(0, 1 − utilisation)` (its servers when no zone has
//!   headroom). With `W` the zones' shares of the weight and `D` their shares of the clients
//!   (by servers, as the clients are spread), a client routes to its own zone when
//!   `W_own ≥ D_own`; otherwise to its own zone with probability `W_own / D_own` and else to
//!   another zone drawn by its residual headroom `max(0, W_z − D_z)` (by `W_z` when no zone has
//!   a residual). Inside the chosen zone: p2c over peak-EWMA as above.
//! - **Prequal** over the whole fleet: the rule and pool of [`crate::peers::prequal`]; each
//!   selection sends its load probes to random servers of the fleet, whose answers come back a
//!   round trip later (the path between the zones) and serve later selections.
//! - **Oracle** (reference): exact, instant knowledge of every server's pinned sessions and of
//!   the round trips; it picks the live server with the smallest expected delay
//!   `(requests + 1) × rtt + requests × mean work × max(1, (pinned + 1) / slots)`, `requests`
//!   the session kind's mean (one round trip is the connection), ties to the lowest index.

use std::time::Duration;

use rand::Rng;
use volley_proto::client::{EjectionConfig, PoolState};

use super::model::{DEFAULT_RTT, REPORT_STALE, ZonePolicy, ZoneSetup};
use super::world::{Ev, PerServer, World};
use crate::peers::prequal::{self, ProbePool};
use crate::sim::queue::Nanos;

/// The decay of tower's peak-EWMA in its examples (and `select`).
const EWMA_DECAY_NS: f64 = 10e9;

/// A client's peak-EWMA of one server (tower's `RttEstimate`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ewma {
    rtt_ns: f64,
    update_at: Nanos,
}

impl Ewma {
    pub(super) fn update(&mut self, rtt_ns: f64, now: Nanos) -> f64 {
        if self.rtt_ns < rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_sub(self.update_at) as f64;
            let decay = (-elapsed / EWMA_DECAY_NS).exp();
            self.rtt_ns = self.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        self.update_at = now;
        self.rtt_ns
    }
}

/// One client's own state: entries only for the servers it used or heard from.
#[derive(Debug, Default)]
pub(super) struct ClientState {
    pub(super) ewma: PerServer<Ewma>,
    pub(super) pending: PerServer<u32>,
    pub(super) pool: ProbePool,
    /// volley's pool state (`PoolState`: paths measured per server heard from, the least
    /// expected completion lately, requests per session learned).
    pub(super) volley: Option<PoolState>,
}

impl ClientState {
    pub(super) fn new(s: &ZoneSetup) -> Self {
        Self {
            volley: s
                .policy
                .is_volley()
                .then(|| PoolState::new(EjectionConfig::default())),
            ..Self::default()
        }
    }
}

impl World<'_> {
    /// p2c over peak-EWMA among zone `zone`'s servers, or the whole fleet's.
    pub(super) fn pick_p2c(&mut self, now: Nanos, client: u32, zone: Option<u16>) -> u32 {
        let (lo, n) = match zone {
            Some(z) => (
                (usize::from(z) * self.s.per_zone) as u32,
                self.s.per_zone as u32,
            ),
            None => (0, self.servers.len() as u32),
        };
        let a = self.rng.gen_range(0..n);
        let mut b = self.rng.gen_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (lo + a, lo + b);
        let peer = &mut self.clients[client as usize];
        let mut cost = |s: u32| -> f64 {
            let pending = f64::from(peer.pending.get(&s).copied().unwrap_or(0));
            let e = peer.ewma.entry(s).or_insert(Ewma {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                update_at: now,
            });
            e.update(0.0, now) * (pending + 1.0)
        };
        let (ca, cb) = (cost(a), cost(b));
        if ca <= cb { a } else { b }
    }

    /// `client` pinned a session to `server`.
    pub(super) fn peer_sent(&mut self, client: u32, server: u32) {
        if self.s.policy.is_volley() || self.s.policy == ZonePolicy::Oracle {
            return;
        }
        *self.clients[client as usize]
            .pending
            .entry(server)
            .or_insert(0) += 1;
    }

    /// `client`'s session left `server`; `failed`: after a timeout of that long.
    pub(super) fn peer_done(
        &mut self,
        now: Nanos,
        client: u32,
        server: u32,
        failed: Option<Nanos>,
    ) {
        if self.s.policy.is_volley() || self.s.policy == ZonePolicy::Oracle {
            return;
        }
        let peer = &mut self.clients[client as usize];
        if let Some(p) = peer.pending.get_mut(&server) {
            *p = p.saturating_sub(1);
            if *p == 0 {
                peer.pending.remove(&server);
            }
        }
        if let Some(waited) = failed {
            self.ewma_sample(now, client, server, waited);
        }
    }

    /// A reply came `rtt` after its request left (the p2c peers' estimate).
    pub(super) fn peer_reply(&mut self, now: Nanos, client: u32, server: u32, rtt: Nanos) {
        if matches!(
            self.s.policy,
            ZonePolicy::ZoneP2c | ZonePolicy::GlobalP2c | ZonePolicy::Locality
        ) {
            self.ewma_sample(now, client, server, rtt);
        }
    }

    fn ewma_sample(&mut self, now: Nanos, client: u32, server: u32, rtt: Nanos) {
        let rtt = rtt as f64;
        self.clients[client as usize]
            .ewma
            .entry(server)
            .or_insert(Ewma {
                rtt_ns: rtt,
                update_at: now,
            })
            .update(rtt, now);
    }

    /// The locality weights seen from zone `zone` at `now`: each zone's share of the headroom
    /// (0 for an unhealthy zone).
    pub(super) fn locality_weights(&self, now: Nanos, zone: u16) -> Vec<f64> {
        let per_zone = self.s.per_zone as f64;
        let reports = &self.reports[usize::from(zone)];
        let healthy: Vec<bool> = reports
            .iter()
            .map(|(_, at)| now.saturating_sub(*at) <= REPORT_STALE)
            .collect();
        let mut w: Vec<f64> = reports
            .iter()
            .zip(&healthy)
            .map(|((u, _), h)| {
                if *h {
                    per_zone * (1.0 - u).max(0.0)
                } else {
                    0.0
                }
            })
            .collect();
        if w.iter().sum::<f64>() <= 0.0 {
            w = healthy
                .iter()
                .map(|h| if *h { per_zone } else { 0.0 })
                .collect();
        }
        let total: f64 = w.iter().sum();
        if total > 0.0 {
            w.iter_mut().for_each(|x| *x /= total);
        }
        w
    }

    /// Envoy-style load-aware locality: the zone a client of `zone` sends its session to.
    pub(super) fn pick_locality_zone(&mut self, now: Nanos, zone: u16) -> u16 {
        let w = self.locality_weights(now, zone);
        if w.iter().all(|x| *x <= 0.0) {
            return zone; // nothing healthy is known: stay home
        }
        let shares = self.s.clients_per_zone();
        let all = self.s.clients as f64;
        let d: Vec<f64> = shares.iter().map(|c| *c as f64 / all).collect();
        let own = usize::from(zone);
        if w[own] >= d[own] {
            return zone;
        }
        if self.rng.r#gen::<f64>() < w[own] / d[own] {
            return zone;
        }
        let mut residual: Vec<f64> = (0..w.len())
            .map(|z| {
                if z == own {
                    0.0
                } else {
                    (w[z] - d[z]).max(0.0)
                }
            })
            .collect();
        if residual.iter().sum::<f64>() <= 0.0 {
            residual = (0..w.len())
                .map(|z| if z == own { 0.0 } else { w[z] })
                .collect();
        }
        let total: f64 = residual.iter().sum();
        if total <= 0.0 {
            return zone;
        }
        let mut u = self.rng.r#gen::<f64>() * total;
        for (z, r) in residual.iter().enumerate() {
            if u < *r {
                return z as u16;
            }
            u -= r;
        }
        residual
            .iter()
            .rposition(|r| *r > 0.0)
            .map_or(zone, |z| z as u16)
    }

    /// Prequal: a selection's load probes to random servers of the fleet; how many.
    pub(super) fn send_load_probes(&mut self, now: Nanos, client: u32) -> u64 {
        let n = self.servers.len() as u32;
        let zone = self.client_zone[client as usize];
        for _ in 0..prequal::PROBES_PER_ARRIVAL {
            let server = self.rng.gen_range(0..n);
            let at = now + self.leg(zone, self.zone_of(server));
            self.q.push(at, Ev::LoadProbe { client, server });
        }
        prequal::PROBES_PER_ARRIVAL as u64
    }

    /// Prequal's pick from the client's pool, or a random server when it is empty.
    pub(super) fn pick_prequal(&mut self, now: Nanos, client: u32) -> u32 {
        let n = self.servers.len() as u32;
        match self.clients[client as usize]
            .pool
            .pick(Duration::from_nanos(now))
        {
            Some(s) => s,
            None => self.rng.gen_range(0..n),
        }
    }

    /// A load probe reaches `server`: unless silent, it answers with its requests in flight and
    /// its latency estimate, one way back to the client's zone.
    pub(super) fn on_load_probe(&mut self, now: Nanos, client: u32, server: u32) {
        if self.silent(server, now) {
            return;
        }
        let srv = &self.servers[server as usize];
        let rif = srv.jobs;
        let slots = f64::from(self.s.slots);
        let queued = (f64::from(rif) + 1.0 - slots).max(0.0);
        let latency_ns = (srv.service_ewma_ns * (1.0 + queued / slots)) as u64;
        let zone = self.client_zone[client as usize];
        let at = now + self.leg(self.zone_of(server), zone);
        self.q.push(
            at,
            Ev::LoadReply {
                client,
                server,
                rif,
                latency_ns,
            },
        );
    }

    pub(super) fn on_load_reply(
        &mut self,
        now: Nanos,
        client: u32,
        server: u32,
        rif: u32,
        latency_ns: u64,
    ) {
        self.clients[client as usize].pool.insert(
            server,
            rif,
            latency_ns,
            Duration::from_nanos(now),
        );
    }

    /// The oracle's expected delay of a session from zone `from` at a server of zone `to` with
    /// `pinned` sessions.
    pub(super) fn oracle_cost(&self, from: u16, to: u16, pinned: u32) -> f64 {
        let requests = self.s.requests.mean();
        let rtt = self.s.rtt.rtt(usize::from(from), usize::from(to)) as f64;
        let slots = f64::from(self.s.slots);
        (requests + 1.0) * rtt
            + requests * self.s.mean_service * ((f64::from(pinned) + 1.0) / slots).max(1.0)
    }

    /// The oracle's pick for a session of zone `zone`: the least loaded live server of each
    /// zone, the one of smallest expected delay.
    pub(super) fn pick_oracle(&mut self, now: Nanos, zone: u16) -> u32 {
        let mut best: Option<(f64, u32)> = None;
        for (z, set) in self.oracle.iter().enumerate() {
            let Some(&(pinned, server)) = set.first() else {
                continue;
            };
            if self.silent(server, now) {
                continue;
            }
            let c = self.oracle_cost(zone, z as u16, pinned);
            if best.is_none_or(|(b, _)| c < b) {
                best = Some((c, server));
            }
        }
        // Every zone silent: any server (its connection will time out).
        best.map_or_else(|| self.rng.gen_range(0..self.servers.len() as u32), |b| b.1)
    }

    /// The oracle's books: `server` gains (`+1`) or loses (`-1`) a pinned session.
    pub(super) fn oracle_move(&mut self, server: u32, by: i32) {
        if self.oracle.is_empty() {
            return;
        }
        let zone = usize::from(self.zone_of(server));
        let pinned = self.servers[server as usize].pinned;
        let set = &mut self.oracle[zone];
        if set.remove(&(pinned, server)) {
            set.insert((pinned.saturating_add_signed(by), server));
        }
    }
}
