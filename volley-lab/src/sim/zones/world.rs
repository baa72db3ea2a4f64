//! The zone engine's event loop: a fleet of zones of FIFO multi-slot servers (each fronted by a
//! real [`ServerEndpoint`] under volley), clients in every zone, and sessions of one or ~10
//! requests pinned to the server their policy chose, on a virtual clock.
//!
//! Every datagram crosses the zone matrix: one way is half the round trip between the two
//! zones plus a uniform jitter drawn per datagram — volley's PROBEs, OFFERs, INIT and handshake
//! answer, every request and reply, the peers' connection set-up, Prequal's load probes and
//! their answers, and the locality reports. A session's life:
//!
//! 1. **Arrival** (Poisson per zone, at the rate the workload gives the zone's clients; it
//!    belongs to one of that zone's clients, drawn uniformly). Its request count and every
//!    request's work are drawn then, from the trace RNG, so every policy of a seed sees the same
//!    trace.
//! 2. **Selection.** volley: a real `Race` of `FANOUT` probes; the winner's INIT then takes one
//!    way and the handshake's answer one way back (with early data the first request rides in
//!    the INIT instead). Peers and the oracle: a choice at once, then a connection (one round
//!    trip) to the chosen server.
//! 3. **Requests**, one after the other on that server: each crosses to the server, waits for a
//!    slot (FIFO), is served for its work, and its reply crosses back.
//!
//! Outage: from `outage_at` the hot zone's servers are silent — every datagram reaching them is
//! dropped, and the replies of the jobs they still hold too. A lost message arms the client's
//! timeout (`CONNECT_TIMEOUT` for a connection or a handshake, `REQUEST_TIMEOUT` from a
//! request's sending; a race's own timers handle probes); a timed-out session chooses again and
//! resends its request, up to `MAX_ATTEMPTS` attempts. The timer is only armed when a message
//! is really lost, which is what a client would observe (no false timeouts on slow servers).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::Rng;
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
use rand_core::{RngCore, SeedableRng};
use volley_proto::client::race::Race;
use volley_proto::packet::KeyId;
use volley_proto::{
    AppLoad, MAX_DATAGRAM_LEN, PublicKey, ServerConfig, ServerEndpoint, StaticKeypair,
};

use super::model::{
    CONNECT_TIMEOUT, HOT_ZONE, MAX_ATTEMPTS, REPORT_EVERY, REQUEST_TIMEOUT, ZoneOutcome,
    ZonePolicy, ZoneSetup,
};
use super::peers::ClientState;
use crate::sim::engine::addr::{CLIENT_PORT_SPAN, server_addr};
use crate::sim::engine::exp_sample;
use crate::sim::queue::{Nanos, Queue};

#[derive(Debug)]
pub(super) enum Ev {
    Arrival,
    Probe {
        server: u32,
        client: SocketAddrV4,
        data: Box<[u8]>,
    },
    Offer {
        server: u32,
        to: SocketAddrV4,
        sent: Nanos,
        data: Box<[u8]>,
    },
    RaceTimer {
        slot: u32,
        gen_: u32,
    },
    Wake {
        server: u32,
    },
    /// The connection (or handshake) is up at the client: its first request leaves.
    Connected {
        slot: u32,
        gen_: u32,
    },
    /// A request reaches its server.
    Request {
        server: u32,
        slot: u32,
        gen_: u32,
    },
    Depart {
        server: u32,
        slot: u32,
    },
    /// A reply reaches its client.
    Reply {
        slot: u32,
        gen_: u32,
    },
    /// A lost message's timer at the client.
    Timeout {
        slot: u32,
        gen_: u32,
    },
    LoadProbe {
        client: u32,
        server: u32,
    },
    LoadReply {
        client: u32,
        server: u32,
        rif: u32,
        latency_ns: u64,
    },
    /// Every zone computes its utilisation over the last period and reports it to every zone.
    Report,
    /// A zone's report reaches the clients of zone `to`.
    ReportAt {
        from: u16,
        to: u16,
        util: f64,
    },
    /// The window opens (`false`) or closes (`true`): utilisation snapshots.
    Mark(bool),
}

pub(super) struct Srv {
    pub(super) ep: Option<ServerEndpoint>,
    pub(super) addr: SocketAddr,
    pub(super) zone: u16,
    pub(super) jobs: u32,
    pub(super) busy: u32,
    pub(super) waiting: VecDeque<u32>,
    pub(super) wakes: Vec<Nanos>,
    pub(super) completed: u64,
    /// Exponentially weighted mean of its jobs' service times (Prequal's latency estimate).
    pub(super) service_ewma_ns: f64,
    /// Sessions pinned to it (the oracle's load).
    pub(super) pinned: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Free,
    Racing,
    Connecting,
    Requesting,
}

pub(super) struct Sess {
    pub(super) gen_: u32,
    pub(super) client: u32,
    pub(super) zone: u16,
    pub(super) phase: Phase,
    pub(super) arrived: Nanos,
    pub(super) measured: bool,
    pub(super) works: Vec<f64>,
    /// The next request to be answered.
    pub(super) next: usize,
    pub(super) server: u32,
    pub(super) pinned: bool,
    /// When the current request (or connection) was sent.
    pub(super) sent: Nanos,
    pub(super) attempts: u8,
    pub(super) race: Option<Race>,
    pub(super) race_timer: Option<Nanos>,
    pub(super) probes: u64,
    pub(super) offers: Vec<(u32, Nanos)>,
    pub(super) reservation_until: Nanos,
}

/// Runs one zone simulation.
pub fn run(setup: &ZoneSetup) -> anyhow::Result<ZoneOutcome> {
    let mut w = World::new(setup)?;
    w.run()?;
    Ok(w.finish())
}

pub(super) struct World<'a> {
    pub(super) s: &'a ZoneSetup,
    pub(super) base: Instant,
    pub(super) q: Queue<Ev>,
    pub(super) servers: Vec<Srv>,
    pub(super) sessions: Vec<Sess>,
    free: Vec<u32>,
    /// Arrival times, zones, clients, request counts and works: the same for every policy.
    trace: ChaCha8Rng,
    /// Selection and network randomness.
    pub(super) rng: ChaCha8Rng,
    /// Cumulative session rates per zone (for drawing an arrival's zone) and their total.
    cum_rates: Vec<f64>,
    /// Per zone: its first client and how many it has.
    zone_clients: Vec<(u32, u32)>,
    pub(super) client_zone: Vec<u16>,
    /// Each client's own state (peers' views; volley's pool state).
    pub(super) clients: Vec<ClientState>,
    /// Locality: per client zone, the last report of every zone as received there (util, when).
    pub(super) reports: Vec<Vec<(f64, Nanos)>>,
    /// Oracle: per zone, its live servers by (pinned sessions, index).
    pub(super) oracle: Vec<BTreeSet<(u32, u32)>>,
    /// volley: the client configuration of each zone's clients.
    pub(super) configs: Vec<volley_proto::ClientConfig>,
    /// volley: marks for drawing distinct candidates (`stamp` marks this draw's).
    pub(super) marks: Vec<u32>,
    pub(super) stamp: u32,
    pub(super) key: PublicKey,
    pub(super) key_id: KeyId,
    pub(super) buf: Box<[u8]>,
    pub(super) outage_at: Option<Nanos>,
    /// Per zone: busy slots now, when last accounted, busy slot-ns so far, and at the last
    /// report / the window's opening.
    zone_busy: Vec<u32>,
    zone_last: Vec<Nanos>,
    zone_busy_ns: Vec<f64>,
    zone_reported_ns: Vec<f64>,
    zone_window_ns: Vec<f64>,
    arrivals_open: bool,
    measured_done: u64,
    pub(super) out: ZoneOutcome,
}

impl<'a> World<'a> {
    pub(super) fn new(s: &'a ZoneSetup) -> anyhow::Result<Self> {
        let zones = s.zones();
        anyhow::ensure!(zones >= 1 && zones < u16::MAX as usize, "zones: 1..65535");
        anyhow::ensure!(s.per_zone >= 2, "at least 2 servers per zone");
        let n = zones * s.per_zone;
        anyhow::ensure!(n < (1 << 24), "too many servers");
        anyhow::ensure!(s.slots > 0, "no slots");
        anyhow::ensure!(s.mean_service > 0.0, "mean service must be positive");
        anyhow::ensure!(s.window > 0, "empty window");
        anyhow::ensure!(
            s.clients >= zones,
            "at least one client per zone ({zones} zones, {} clients)",
            s.clients
        );
        anyhow::ensure!(
            !s.policy.is_volley() || super::model::FANOUT <= n,
            "fan-out above the fleet"
        );
        let mut seeder = ChaCha20Rng::seed_from_u64(s.seed ^ 0x5eed_5eed);
        let keypair = StaticKeypair::generate(&mut seeder);
        let key = keypair.public();
        let base = Instant::now();
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            let ep = if s.policy.is_volley() {
                let mut cfg = ServerConfig::new(keypair.clone());
                cfg.capacity = Some(s.slots);
                let rng = Box::new(ChaCha20Rng::seed_from_u64(seeder.next_u64()));
                Some(ServerEndpoint::new(base, cfg, rng))
            } else {
                None
            };
            servers.push(Srv {
                ep,
                addr: server_addr(i),
                zone: (i / s.per_zone) as u16,
                jobs: 0,
                busy: 0,
                waiting: VecDeque::new(),
                wakes: Vec::new(),
                completed: 0,
                service_ewma_ns: 0.0,
                pinned: 0,
            });
        }
        let mut cum = 0.0;
        let cum_rates = (0..zones)
            .map(|z| {
                cum += s.session_rate(z);
                cum
            })
            .collect();
        let mut zone_clients = Vec::with_capacity(zones);
        let mut client_zone = Vec::with_capacity(s.clients);
        for (z, &k) in s.clients_per_zone().iter().enumerate() {
            zone_clients.push((client_zone.len() as u32, k as u32));
            client_zone.extend(std::iter::repeat_n(z as u16, k));
        }
        let clients = (0..s.clients).map(|_| ClientState::new(s)).collect();
        let oracle = if s.policy == ZonePolicy::Oracle {
            (0..zones)
                .map(|z| {
                    (z * s.per_zone..(z + 1) * s.per_zone)
                        .map(|i| (0, i as u32))
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let configs = if s.policy.is_volley() {
            (0..zones)
                .map(|z| super::race::zone_config(key, z, zones, s.per_zone))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            s,
            base,
            q: Queue::default(),
            servers,
            sessions: Vec::new(),
            free: Vec::new(),
            trace: ChaCha8Rng::seed_from_u64(s.seed),
            rng: ChaCha8Rng::seed_from_u64(s.seed ^ 0x0123_4567_89ab_cdef),
            cum_rates,
            zone_clients,
            client_zone,
            clients,
            reports: vec![vec![(0.0, 0); zones]; zones],
            oracle,
            configs,
            marks: vec![0; n],
            stamp: 0,
            key,
            key_id: key.key_id(),
            buf: vec![0u8; MAX_DATAGRAM_LEN].into_boxed_slice(),
            outage_at: s.outage_at(),
            zone_busy: vec![0; zones],
            zone_last: vec![0; zones],
            zone_busy_ns: vec![0.0; zones],
            zone_reported_ns: vec![0.0; zones],
            zone_window_ns: vec![0.0; zones],
            arrivals_open: true,
            measured_done: 0,
            out: ZoneOutcome::default(),
        })
    }

    pub(super) fn at(&self, t: Nanos) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    pub(super) fn since(&self, i: Instant) -> Nanos {
        i.saturating_duration_since(self.base).as_nanos() as Nanos
    }

    /// One datagram's trip from zone `from` to zone `to`: half the round trip plus jitter.
    pub(super) fn leg(&mut self, from: u16, to: u16) -> Nanos {
        let j = if self.s.jitter == 0 {
            0
        } else {
            self.rng.gen_range(0..self.s.jitter)
        };
        self.s.rtt.one_way(from as usize, to as usize) + j
    }

    /// Whether `server` is silent at `t` (outage).
    pub(super) fn silent(&self, server: u32, t: Nanos) -> bool {
        self.outage_at.is_some_and(|o| t >= o)
            && usize::from(self.servers[server as usize].zone) == HOT_ZONE
    }

    pub(super) fn zone_of(&self, server: u32) -> u16 {
        self.servers[server as usize].zone
    }

    /// Whether session `slot` is live and of generation `gen_` (modulo the port span if `wrap`).
    pub(super) fn live(&self, slot: u32, gen_: u32, wrap: bool) -> bool {
        self.sessions.get(slot as usize).is_some_and(|s| {
            s.phase != Phase::Free
                && if wrap {
                    s.gen_ % CLIENT_PORT_SPAN == gen_
                } else {
                    s.gen_ == gen_
                }
        })
    }

    pub(super) fn alloc(&mut self, now: Nanos, client: u32, measured: bool) -> u32 {
        let zone = self.client_zone[client as usize];
        let fresh = |gen_, works, offers| Sess {
            gen_,
            client,
            zone,
            phase: Phase::Racing,
            arrived: now,
            measured,
            works,
            next: 0,
            server: 0,
            pinned: false,
            sent: now,
            attempts: 0,
            race: None,
            race_timer: None,
            probes: 0,
            offers,
            reservation_until: 0,
        };
        match self.free.pop() {
            Some(slot) => {
                let old = &mut self.sessions[slot as usize];
                let mut works = std::mem::take(&mut old.works);
                let mut offers = std::mem::take(&mut old.offers);
                works.clear();
                offers.clear();
                *old = fresh(old.gen_.wrapping_add(1), works, offers);
                slot
            }
            None => {
                self.sessions.push(fresh(0, Vec::new(), Vec::new()));
                (self.sessions.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, slot: u32) {
        let s = &mut self.sessions[slot as usize];
        s.phase = Phase::Free;
        s.race = None;
        s.race_timer = None;
        self.free.push(slot);
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let total = *self.cum_rates.last().unwrap_or(&0.0);
        anyhow::ensure!(total > 0.0, "no arrivals");
        let first = exp_sample(&mut self.trace, 1.0 / total);
        self.q.push(first as Nanos, Ev::Arrival);
        self.q.push(self.s.warmup, Ev::Mark(false));
        self.q.push(self.s.warmup + self.s.window, Ev::Mark(true));
        if self.s.policy == ZonePolicy::Locality {
            self.q.push(REPORT_EVERY, Ev::Report);
        }
        // A generous bound against a run that never ends: a request needs a few dozen events.
        let end = (self.s.warmup + self.s.window) as f64;
        let expected = end * total * self.s.requests.mean();
        let budget = 200 * (expected as u64 + 1_000);
        while let Some((now, ev)) = self.q.pop() {
            self.out.events += 1;
            anyhow::ensure!(
                self.out.events <= budget,
                "event budget exhausted ({budget} events at t = {now} ns): the run does not end"
            );
            self.out.end = now;
            self.dispatch(now, ev);
            if !self.arrivals_open && self.measured_done >= self.out.measured {
                break;
            }
        }
        anyhow::ensure!(
            !self.arrivals_open && self.measured_done >= self.out.measured,
            "the run ended with {} of {} measured sessions unfinished",
            self.out.measured - self.measured_done,
            self.out.measured
        );
        Ok(())
    }

    pub(super) fn dispatch(&mut self, now: Nanos, ev: Ev) {
        match ev {
            Ev::Arrival => self.on_arrival(now),
            Ev::Probe {
                server,
                client,
                data,
            } => self.on_probe(now, server, client, &data),
            Ev::Offer {
                server,
                to,
                sent,
                data,
            } => self.on_offer(now, server, to, sent, &data),
            Ev::RaceTimer { slot, gen_ } => self.on_race_timer(now, slot, gen_),
            Ev::Wake { server } => self.on_wake(now, server),
            Ev::Connected { slot, gen_ } => {
                if self.live(slot, gen_, false) {
                    self.sessions[slot as usize].phase = Phase::Requesting;
                    self.send_request(now, slot);
                }
            }
            Ev::Request { server, slot, gen_ } => {
                if self.live(slot, gen_, false) {
                    self.on_request(now, server, slot);
                }
            }
            Ev::Depart { server, slot } => self.on_depart(now, server, slot),
            Ev::Reply { slot, gen_ } => {
                if self.live(slot, gen_, false) {
                    self.on_reply(now, slot);
                }
            }
            Ev::Timeout { slot, gen_ } => {
                if self.live(slot, gen_, false) {
                    self.on_timeout(now, slot);
                }
            }
            Ev::LoadProbe { client, server } => self.on_load_probe(now, client, server),
            Ev::LoadReply {
                client,
                server,
                rif,
                latency_ns,
            } => self.on_load_reply(now, client, server, rif, latency_ns),
            Ev::Report => self.on_report(now),
            Ev::ReportAt { from, to, util } => {
                self.reports[usize::from(to)][usize::from(from)] = (util, now);
            }
            Ev::Mark(end) => {
                for z in 0..self.zone_busy.len() {
                    self.zone_account(z, now);
                }
                if end {
                    self.arrivals_open = false;
                    self.out.zone_busy = self
                        .zone_busy_ns
                        .iter()
                        .zip(&self.zone_window_ns)
                        .map(|(a, b)| a - b)
                        .collect();
                } else {
                    self.zone_window_ns = self.zone_busy_ns.clone();
                }
            }
        }
    }

    fn on_arrival(&mut self, now: Nanos) {
        if !self.arrivals_open {
            return;
        }
        let total = *self.cum_rates.last().unwrap_or(&1.0);
        let next = exp_sample(&mut self.trace, 1.0 / total);
        let u: f64 = self.trace.r#gen::<f64>() * total;
        let zone = self
            .cum_rates
            .iter()
            .position(|c| u < *c)
            .unwrap_or(self.cum_rates.len() - 1);
        let (first, count) = self.zone_clients[zone];
        let client = first + self.trace.gen_range(0..count);
        let k = self.s.requests.draw(&mut self.trace);
        let measured = now >= self.s.warmup;
        let slot = self.alloc(now, client, measured);
        for _ in 0..k {
            let w = exp_sample(&mut self.trace, self.s.mean_service);
            self.sessions[slot as usize].works.push(w);
        }
        self.q.push(now + (next as Nanos).max(1), Ev::Arrival);
        self.out.simulated += 1;
        if measured {
            self.out.measured += 1;
        }
        self.select(now, slot);
    }

    /// Session `slot` chooses a server (again, after a timeout).
    pub(super) fn select(&mut self, now: Nanos, slot: u32) {
        if self.s.policy.is_volley() {
            return self.start_race(now, slot);
        }
        let (client, zone, measured) = {
            let s = &self.sessions[slot as usize];
            (s.client, s.zone, s.measured)
        };
        let server = match self.s.policy {
            ZonePolicy::ZoneP2c => self.pick_p2c(now, client, Some(zone)),
            ZonePolicy::GlobalP2c => self.pick_p2c(now, client, None),
            ZonePolicy::Locality => {
                let z = self.pick_locality_zone(now, zone);
                self.pick_p2c(now, client, Some(z))
            }
            ZonePolicy::Prequal => {
                let sent = self.send_load_probes(now, client);
                if measured {
                    self.sessions[slot as usize].probes += sent;
                }
                self.pick_prequal(now, client)
            }
            ZonePolicy::Oracle | ZonePolicy::Volley | ZonePolicy::VolleyEarly => {
                self.pick_oracle(now, zone)
            }
        };
        self.connect(now, slot, server);
    }

    /// A peer opens its connection to `server`: one round trip before the first request.
    pub(super) fn connect(&mut self, now: Nanos, slot: u32, server: u32) {
        self.pin(slot, server);
        let (zone, gen_) = {
            let s = &mut self.sessions[slot as usize];
            s.phase = Phase::Connecting;
            s.sent = now;
            (s.zone, s.gen_)
        };
        let sz = self.zone_of(server);
        let there = now + self.leg(zone, sz);
        if self.silent(server, there) {
            self.q
                .push(now + CONNECT_TIMEOUT, Ev::Timeout { slot, gen_ });
        } else {
            let back = there + self.leg(sz, zone);
            self.q.push(back, Ev::Connected { slot, gen_ });
        }
    }

    /// `slot` goes to `server`: counted as its pinned session (the oracle's load, p2c's
    /// pending count).
    pub(super) fn pin(&mut self, slot: u32, server: u32) {
        let s = &mut self.sessions[slot as usize];
        s.server = server;
        s.pinned = true;
        let client = s.client;
        self.oracle_move(server, 1);
        self.servers[server as usize].pinned += 1;
        self.peer_sent(client, server);
    }

    /// Undoes `pin`; `failed`: after a timeout of `waited`.
    fn unpin(&mut self, now: Nanos, slot: u32, failed: Option<Nanos>) {
        let s = &mut self.sessions[slot as usize];
        if !s.pinned {
            return;
        }
        s.pinned = false;
        let (client, server) = (s.client, s.server);
        self.oracle_move(server, -1);
        let srv = &mut self.servers[server as usize];
        srv.pinned = srv.pinned.saturating_sub(1);
        self.peer_done(now, client, server, failed);
    }

    /// Sends the session's next request.
    pub(super) fn send_request(&mut self, now: Nanos, slot: u32) {
        let (zone, server, gen_) = {
            let s = &mut self.sessions[slot as usize];
            s.sent = now;
            (s.zone, s.server, s.gen_)
        };
        let at = now + self.leg(zone, self.zone_of(server));
        self.q.push(at, Ev::Request { server, slot, gen_ });
    }

    fn on_request(&mut self, now: Nanos, server: u32, slot: u32) {
        let s = &mut self.sessions[slot as usize];
        // With early data the first request is the INIT: lost, it times out as a handshake.
        let timeout = if s.phase == Phase::Connecting {
            CONNECT_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        s.phase = Phase::Requesting;
        if self.silent(server, now) {
            return self.lost(now, slot, timeout);
        }
        self.job_lands(now, server, slot);
    }

    /// A message of session `slot` was lost: its client's timer fires `timeout` after the
    /// sending.
    pub(super) fn lost(&mut self, now: Nanos, slot: u32, timeout: Nanos) {
        let s = &self.sessions[slot as usize];
        let (at, gen_) = ((s.sent + timeout).max(now), s.gen_);
        self.q.push(at, Ev::Timeout { slot, gen_ });
    }

    fn on_reply(&mut self, now: Nanos, slot: u32) {
        let s = &mut self.sessions[slot as usize];
        let from = if s.next == 0 { s.arrived } else { s.sent };
        let (client, server, sent) = (s.client, s.server, s.sent);
        if s.measured {
            self.out.request_ns.push((now - from) as f64);
        }
        s.next += 1;
        let more = s.next < s.works.len();
        self.peer_reply(now, client, server, now - sent);
        if more {
            self.send_request(now, slot);
        } else {
            self.complete(now, slot);
        }
    }

    fn on_timeout(&mut self, now: Nanos, slot: u32) {
        let s = &mut self.sessions[slot as usize];
        let waited = now.saturating_sub(s.sent);
        s.attempts += 1;
        let (measured, attempts) = (s.measured, s.attempts);
        if measured {
            self.out.timeouts += 1;
        }
        self.unpin(now, slot, Some(waited));
        if attempts >= MAX_ATTEMPTS {
            return self.fail(slot);
        }
        self.select(now, slot);
    }

    pub(super) fn fail(&mut self, slot: u32) {
        let s = &self.sessions[slot as usize];
        if s.measured {
            self.out.failed += 1;
            self.out.probes += s.probes + s.race.as_ref().map_or(0, |r| r.probes_sent());
            self.measured_done += 1;
        }
        self.unpin(self.out.end, slot, None);
        self.release(slot);
    }

    fn complete(&mut self, now: Nanos, slot: u32) {
        self.unpin(now, slot, None);
        let s = &self.sessions[slot as usize];
        // volley's client learns how many requests its sessions carry.
        let requests = s.works.len() as u64;
        if let Some(pool) = self.clients[s.client as usize].volley.as_mut() {
            pool.requests_sample(requests);
        }
        let s = &self.sessions[slot as usize];
        if s.measured {
            let outside = self.zone_of(s.server) != s.zone;
            self.out.completed += 1;
            self.out.outside += u64::from(outside);
            self.out.session_ns.push((now - s.arrived) as f64);
            self.out.probes += s.probes + s.race.as_ref().map_or(0, |r| r.probes_sent());
            self.measured_done += 1;
        }
        self.release(slot);
    }

    fn zone_account(&mut self, zone: usize, now: Nanos) {
        let dt = now.saturating_sub(self.zone_last[zone]) as f64;
        self.zone_busy_ns[zone] += f64::from(self.zone_busy[zone]) * dt;
        self.zone_last[zone] = now;
    }

    /// Hands the endpoint its app load: the jobs there and the running total completed.
    pub(super) fn sync_load(&mut self, server: u32, now: Nanos) {
        let at = self.at(now);
        let srv = &mut self.servers[server as usize];
        if let Some(ep) = srv.ep.as_mut() {
            ep.set_app_load(
                at,
                AppLoad {
                    in_flight: srv.jobs,
                    completed: srv.completed,
                },
            );
        }
    }

    fn start_job(&mut self, now: Nanos, server: u32, slot: u32) {
        let zone = usize::from(self.servers[server as usize].zone);
        self.zone_account(zone, now);
        self.zone_busy[zone] += 1;
        self.servers[server as usize].busy += 1;
        let s = &self.sessions[slot as usize];
        let t = now + (s.works[s.next] as Nanos).max(1);
        self.q.push(t, Ev::Depart { server, slot });
    }

    fn job_lands(&mut self, now: Nanos, server: u32, slot: u32) {
        let s = &self.sessions[slot as usize];
        let release = s.next == 0 && s.reservation_until > now;
        let srv = &mut self.servers[server as usize];
        srv.jobs += 1;
        if release {
            // The offer it came from is load now (its first request, in the real stack).
            if let Some(ep) = srv.ep.as_mut() {
                ep.release_reservation();
            }
        }
        if srv.busy < self.s.slots {
            self.start_job(now, server, slot);
        } else {
            srv.waiting.push_back(slot);
        }
        self.sync_load(server, now);
    }

    fn on_depart(&mut self, now: Nanos, server: u32, slot: u32) {
        let zone = usize::from(self.servers[server as usize].zone);
        self.zone_account(zone, now);
        self.zone_busy[zone] = self.zone_busy[zone].saturating_sub(1);
        let s = &self.sessions[slot as usize];
        let service = s.works[s.next];
        let srv = &mut self.servers[server as usize];
        srv.jobs = srv.jobs.saturating_sub(1);
        srv.busy = srv.busy.saturating_sub(1);
        srv.completed += 1;
        srv.service_ewma_ns = if srv.service_ewma_ns == 0.0 {
            service
        } else {
            (srv.service_ewma_ns * 7.0 + service) / 8.0
        };
        if let Some(next) = srv.waiting.pop_front() {
            self.start_job(now, server, next);
        }
        self.sync_load(server, now);
        // A freed slot can release a held (gated) probe.
        self.drain_server(now, server);
        if self.silent(server, now) {
            return self.lost(now, slot, REQUEST_TIMEOUT);
        }
        let (zone, gen_) = {
            let s = &self.sessions[slot as usize];
            (s.zone, s.gen_)
        };
        let at = now + self.leg(self.zone_of(server), zone);
        self.q.push(at, Ev::Reply { slot, gen_ });
    }

    /// Every zone's utilisation since the last report, to every zone's clients (one way from
    /// the reporting zone). A silent zone does not report.
    pub(super) fn on_report(&mut self, now: Nanos) {
        let zones = self.zone_busy.len();
        let capacity = (self.s.per_zone as f64) * f64::from(self.s.slots) * REPORT_EVERY as f64;
        for z in 0..zones {
            self.zone_account(z, now);
            let util = (self.zone_busy_ns[z] - self.zone_reported_ns[z]) / capacity;
            self.zone_reported_ns[z] = self.zone_busy_ns[z];
            let first = (z * self.s.per_zone) as u32;
            if self.silent(first, now) {
                continue;
            }
            for to in 0..zones {
                let at = now + self.leg(z as u16, to as u16);
                self.q.push(
                    at,
                    Ev::ReportAt {
                        from: z as u16,
                        to: to as u16,
                        util,
                    },
                );
            }
        }
        if self.arrivals_open || self.measured_done < self.out.measured {
            self.q.push(now + REPORT_EVERY, Ev::Report);
        }
    }

    fn finish(mut self) -> ZoneOutcome {
        self.out.window = self.s.window as f64;
        if self.out.zone_busy.is_empty() {
            self.out.zone_busy = vec![0.0; self.zone_busy.len()];
        }
        self.out
    }
}

/// Per-client state kept by the peers: only the servers a client heard from.
pub(super) type PerServer<T> = HashMap<u32, T>;
