//! The event loop: a fleet of FIFO multi-slot queues, each fronted by a real
//! [`ServerEndpoint`], and arriving sessions that pick a server by running a real
//! [`volley_proto::client::race::Race`] against `fanout` of them — or by one of the peers'
//! rules, each client with its own state (`peers`) — on a virtual clock, with no sockets.
//!
//! Time is `u64` nanoseconds from a fixed `Instant` base; the protocol sees `base + t`. Events
//! are ordered by (time, sequence number) ([`super::queue`]), so a seed fixes the whole run.
//!
//! One session's life under [`Selector::Protocol`] (`client` and `server` hold the handlers):
//!
//! 1. **Arrival** (Poisson, fleet-wide; it belongs to one of `clients` independent clients drawn
//!    uniformly): draw its work from the trace RNG, start a `Race` with a fresh tag against
//!    `fanout` servers drawn uniformly without replacement, and put each PROBE the race writes
//!    on the wire (one-way delay `net_base + U[0, net_jitter)` per datagram).
//! 2. **PROBE at a server**: `ServerEndpoint::handle` answers now or later (paced, gated: the
//!    held probe leaves through `poll_transmit` when the endpoint's own `poll_timeout` comes
//!    due). Every OFFER goes back on the wire.
//! 3. **OFFER at the client**: decoded and handed to `Race::handle_offer`; the race's own
//!    outcome (won, collected, late, …) decides. Race timers (probe retransmission, collection
//!    window, deadline) are the race's `poll_timeout`/`handle_timeout`.
//! 4. **Decided**: the Noise handshake is skipped (an X25519 operation per side would cost more
//!    than the whole rest of a session). The INIT leg is one network delay; then the session is
//!    a job: served FIFO by one of the server's slots for `work / speed`, then the reply takes
//!    one network delay.
//!
//! The server's load as the protocol sees it is the number of jobs there (in service and
//! queued), reported with `set_app_load` together with the running count of jobs completed, from
//! which the endpoint measures its service time (L5). No session opens inside the endpoint, so
//! the reservation an offer took is released when its job lands
//! (`ServerEndpoint::release_reservation`), as the session's first request releases it in the
//! real stack.
//!
//! The other selectors choose at arrival with no protocol: [`Selector::Random`], and the
//! local-view peers and exact references of `peers`. The per-request selectors of `sim pools`
//! treat each arrival as one request of a long-lived client: the volley pools of `pool` (real
//! races and endpoints for the pools' members, the balancer per client) and the peers of
//! `reports` that read load reports carried by replies. Their replies reach the client one
//! network leg after the departure, as an event, with what the server reported.
//!
//! Measurement: sessions arriving after `warmup` are measured, `measured` of them; arrivals stop
//! after the last one and the run ends when every measured session has finished (with FIFO
//! service a later arrival cannot change an earlier session's time). Utilisation and herding are
//! counted over the arrival window of the measured sessions (`measure` keeps the counts).
//!
//! `addr` holds the simulated network's addresses and `draw` the run's random draws.

pub(in crate::sim) mod addr;
mod client;
mod draw;
mod measure;
mod model;
mod peers;
pub(in crate::sim) mod pool;
mod reports;
mod server;

pub use model::{
    Group, Outcome, P2cMetric, PoolCounts, PoolSetup, ProtocolSetup, Selector, ServerTotals, Setup,
};
pub use reports::{C3_ALPHA, ORCA_WINDOW_NS, WRR_UPDATE_NS};

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::Rng;
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
use rand_core::{RngCore, SeedableRng};
use volley_proto::balance::MemberKey;
use volley_proto::client::race::Race;
use volley_proto::packet::KeyId;
use volley_proto::{MAX_DATAGRAM_LEN, PublicKey, ServerConfig, ServerEndpoint, StaticKeypair};

use addr::{CLIENT_PORT_SPAN, server_addr};
use draw::draw_from_tail;
pub use draw::{exp_sample, tail_of_histogram};
use peers::Peer;
use pool::{PoolClient, Report};
use reports::{C3Client, Orca, WrrClient};

pub use super::queue::Nanos;
use super::queue::Queue;

#[derive(Debug)]
enum Kind {
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
    Init {
        server: u32,
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
    Depart {
        server: u32,
        slot: u32,
    },
    Sample,
    /// A reply reaches its client with its server's report (per-request selectors).
    Reply {
        client: u32,
        server: u32,
        /// From the request's sending to now.
        latency: Nanos,
        report: Report,
    },
    PoolRaceTimer {
        client: u32,
        gen_: u32,
    },
    /// A pool race's handshakes are done: its servers join.
    PoolJoin {
        client: u32,
        gen_: u32,
    },
    /// A pool looks at its balancer again (a race was due but within the least gap).
    PoolPoll {
        client: u32,
    },
}

struct Server {
    ep: Option<ServerEndpoint>,
    addr: SocketAddr,
    speed: f64,
    jobs: u32,
    busy: u32,
    waiting: VecDeque<u32>,
    /// Times of this server's pending Wake events (a handful at most).
    wakes: Vec<Nanos>,
    /// Jobs completed (the running total the endpoint is told).
    completed: u64,
    /// Exponentially weighted mean of its jobs' service times (Prequal's latency estimate).
    service_ewma_ns: f64,
    busy_ns: f64,
    last: Nanos,
    herd: (u64, u32),
    herd_uniform: (u64, u32),
    /// ORCA measurements (weighted round robin's reports).
    orca: Orca,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    Racing,
    Joining,
    Served,
}

struct Session {
    gen_: u32,
    /// The client it belongs to.
    client: u32,
    phase: Phase,
    arrived: Nanos,
    work: f64,
    /// Which half of the measured sessions it belongs to; `None`: not measured.
    half: Option<usize>,
    race: Option<Race>,
    race_timer: Option<Nanos>,
    races: u32,
    probes: u64,
    retransmitted: bool,
    /// Offers taken by the current race: (server, sent at).
    offers: Vec<(u32, Nanos)>,
    selected_at: Nanos,
    server: u32,
    reservation_until: Nanos,
    job_arrived: Nanos,
    /// The pool member it was sent on ([`Selector::Pool`]).
    member: Option<MemberKey>,
}

impl Session {
    fn measured(&self) -> bool {
        self.half.is_some()
    }
}

/// Runs one simulation. `progress` is advanced by arrivals.
pub fn run(setup: &Setup, progress: Option<&indicatif::ProgressBar>) -> anyhow::Result<Outcome> {
    let mut w = World::new(setup)?;
    w.run(progress)?;
    Ok(w.finish())
}

struct World<'a> {
    s: &'a Setup,
    base: Instant,
    q: Queue<Kind>,
    servers: Vec<Server>,
    sessions: Vec<Session>,
    free: Vec<u32>,
    /// Arrival times and work sizes: the same for every selector under one seed.
    trace: ChaCha8Rng,
    /// Selection and network randomness.
    rng: ChaCha8Rng,
    /// Each client's own state, for the local-view selectors.
    peers: Vec<Peer>,
    /// Each client's pool ([`Selector::Pool`]).
    pools: Vec<PoolClient>,
    /// Each client's weights ([`Selector::Wrr`]).
    wrr: Vec<WrrClient>,
    /// The fleet's largest settled WRR weight.
    wrr_max: f64,
    /// Each client's scores ([`Selector::C3`]).
    c3: Vec<C3Client>,
    /// Reference picks for the herding baseline.
    herd_rng: ChaCha8Rng,
    key: PublicKey,
    key_id: KeyId,
    buf: Box<[u8]>,
    measuring: bool,
    measured_arrivals: u64,
    measured_done: u64,
    last_arrival: Nanos,
    out: Outcome,
}

impl<'a> World<'a> {
    fn new(s: &'a Setup) -> anyhow::Result<Self> {
        let n: usize = s.groups.iter().map(|g| g.servers).sum();
        anyhow::ensure!(n > 0, "no servers");
        anyhow::ensure!(n < (1 << 24), "too many servers");
        anyhow::ensure!(s.slots > 0, "no slots");
        anyhow::ensure!(s.measured > 0, "nothing to measure");
        anyhow::ensure!(
            s.arrival_rate > 0.0 && s.mean_service > 0.0,
            "rates must be positive"
        );
        anyhow::ensure!(
            s.groups.iter().all(|g| g.speed > 0.0),
            "speeds must be positive"
        );
        anyhow::ensure!(s.clients >= 1, "at least one client");
        anyhow::ensure!(n >= 2, "at least two servers");
        match s.selector {
            Selector::Protocol(p) => {
                anyhow::ensure!(
                    (1..=n).contains(&p.fanout),
                    "fan-out must be 1..={n}, not {}",
                    p.fanout
                );
                anyhow::ensure!(
                    p.capacity == s.slots,
                    "the endpoints' capacity ({}) must be the servers' slots ({})",
                    p.capacity,
                    s.slots
                );
            }
            Selector::Pool(p) => {
                let k = p.balance.members;
                anyhow::ensure!((1..n).contains(&k), "a pool's k must be 1..{n}, not {k}");
                anyhow::ensure!(
                    (k..=n).contains(&p.open_fanout),
                    "the opening race's fan-out must be {k}..={n}, not {}",
                    p.open_fanout
                );
                anyhow::ensure!(
                    p.race_fanout >= 1,
                    "a pool race's fan-out must be at least 1"
                );
                anyhow::ensure!(
                    p.capacity == s.slots,
                    "the endpoints' capacity ({}) must be the servers' slots ({})",
                    p.capacity,
                    s.slots
                );
                anyhow::ensure!(
                    s.clients <= pool::MAX_POOL_CLIENTS,
                    "at most {} pool clients",
                    pool::MAX_POOL_CLIENTS
                );
            }
            Selector::IdealJsq(d) | Selector::IdealSed(d) | Selector::C3(d) => {
                anyhow::ensure!((1..=n).contains(&d), "d must be 1..={n}")
            }
            Selector::Random
            | Selector::RoundRobin
            | Selector::P2c(_)
            | Selector::Prequal
            | Selector::Wrr => {}
        }
        let mut seeder = ChaCha20Rng::seed_from_u64(s.seed ^ 0x5eed_5eed);
        let keypair = StaticKeypair::generate(&mut seeder);
        let key = keypair.public();
        let base = Instant::now();
        let mut servers = Vec::with_capacity(n);
        let mut group_of = Vec::with_capacity(n);
        for (gi, g) in s.groups.iter().enumerate() {
            for _ in 0..g.servers {
                let i = servers.len();
                let answer = match s.selector {
                    Selector::Protocol(p) => Some((p.capacity, p.service, p.answer, p.reservation)),
                    Selector::Pool(p) => Some((p.capacity, p.service, p.answer, p.reservation)),
                    _ => None,
                };
                let ep = answer.map(|(capacity, service, answer, reservation)| {
                    let mut cfg = ServerConfig::new(keypair.clone());
                    cfg.capacity = Some(capacity);
                    cfg.service = service;
                    cfg.answer = answer;
                    cfg.reservation = reservation;
                    let rng = Box::new(ChaCha20Rng::seed_from_u64(seeder.next_u64()));
                    ServerEndpoint::new(base, cfg, rng)
                });
                servers.push(Server {
                    ep,
                    addr: server_addr(i),
                    speed: g.speed,
                    jobs: 0,
                    busy: 0,
                    waiting: VecDeque::new(),
                    wakes: Vec::new(),
                    completed: 0,
                    service_ewma_ns: 0.0,
                    busy_ns: 0.0,
                    last: 0,
                    herd: (u64::MAX, 0),
                    herd_uniform: (u64::MAX, 0),
                    orca: Orca::default(),
                });
                group_of.push(gi);
            }
        }
        let out = Outcome {
            busy: vec![0.0; n],
            group_of,
            queue_hist: vec![Vec::new(); s.groups.len()],
            ..Outcome::default()
        };
        let local = matches!(
            s.selector,
            Selector::RoundRobin | Selector::P2c(_) | Selector::Prequal
        );
        let mut starts = ChaCha8Rng::seed_from_u64(s.seed ^ 0x9ee2_0000_0000_0001);
        let peers = if local {
            (0..s.clients)
                .map(|_| Peer::starting_at(starts.gen_range(0..n as u32)))
                .collect()
        } else {
            Vec::new()
        };
        let pools = match s.selector {
            Selector::Pool(p) => (0..s.clients).map(|_| PoolClient::new(&p)).collect(),
            _ => Vec::new(),
        };
        let wrr = match s.selector {
            Selector::Wrr => (0..s.clients)
                .map(|_| WrrClient::starting_at(u64::from(starts.r#gen::<u32>())))
                .collect(),
            _ => Vec::new(),
        };
        let c3 = match s.selector {
            Selector::C3(_) => (0..s.clients).map(|_| C3Client::default()).collect(),
            _ => Vec::new(),
        };
        let mut w = Self {
            s,
            base,
            q: Queue::default(),
            servers,
            sessions: Vec::new(),
            free: Vec::new(),
            trace: ChaCha8Rng::seed_from_u64(s.seed),
            rng: ChaCha8Rng::seed_from_u64(s.seed ^ 0x0123_4567_89ab_cdef),
            peers,
            pools,
            wrr,
            wrr_max: 0.0,
            c3,
            herd_rng: ChaCha8Rng::seed_from_u64(s.seed ^ 0x4e7d_0000_0000_0001),
            key,
            key_id: key.key_id(),
            buf: vec![0u8; MAX_DATAGRAM_LEN].into_boxed_slice(),
            measuring: false,
            measured_arrivals: 0,
            measured_done: 0,
            last_arrival: 0,
            out,
        };
        if matches!(s.selector, Selector::Wrr) {
            w.wrr_max = w.settled_max();
        }
        Ok(w)
    }

    fn at(&self, t: Nanos) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn since(&self, i: Instant) -> Nanos {
        i.saturating_duration_since(self.base).as_nanos() as Nanos
    }

    /// One network leg.
    fn leg(&mut self) -> Nanos {
        let j = if self.s.net_jitter == 0 {
            0
        } else {
            self.rng.gen_range(0..self.s.net_jitter)
        };
        self.s.net_base + j
    }

    fn alloc(&mut self, arrived: Nanos, work: f64, half: Option<usize>, client: u32) -> u32 {
        let fresh = Session {
            gen_: 0,
            client,
            phase: Phase::Racing,
            arrived,
            work,
            half,
            race: None,
            race_timer: None,
            races: 0,
            probes: 0,
            retransmitted: false,
            offers: Vec::new(),
            selected_at: arrived,
            server: 0,
            reservation_until: 0,
            job_arrived: arrived,
            member: None,
        };
        match self.free.pop() {
            Some(slot) => {
                let old = &mut self.sessions[slot as usize];
                let gen_ = old.gen_.wrapping_add(1);
                let mut offers = std::mem::take(&mut old.offers);
                offers.clear();
                *old = Session {
                    gen_,
                    offers,
                    ..fresh
                };
                slot
            }
            None => {
                self.sessions.push(fresh);
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

    /// Whether session `slot` is live and of generation `gen_` (modulo the port span if `wrap`).
    fn live(&self, slot: u32, gen_: u32, wrap: bool) -> bool {
        self.sessions.get(slot as usize).is_some_and(|s| {
            s.phase != Phase::Free
                && if wrap {
                    s.gen_ % CLIENT_PORT_SPAN == gen_
                } else {
                    s.gen_ == gen_
                }
        })
    }

    fn seed_initial_state(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.s.seed ^ 0x1417_1a15_7a7e_0000);
        let mut starts = Vec::new();
        for server in 0..self.servers.len() {
            let group = self.out.group_of[server];
            let k = draw_from_tail(&mut rng, &self.s.groups[group].initial_tail);
            for _ in 0..k {
                let work = exp_sample(&mut rng, self.s.mean_service);
                let slot = self.alloc(0, work, None, 0);
                starts.push((server as u32, slot));
            }
        }
        for (server, slot) in starts {
            self.job_lands(0, server, slot);
        }
    }

    fn run(&mut self, progress: Option<&indicatif::ProgressBar>) -> anyhow::Result<()> {
        self.seed_initial_state();
        for server in 0..self.servers.len() as u32 {
            self.sync_load(server, 0);
            self.schedule_wake(server, 0);
        }
        let first = exp_sample(&mut self.trace, 1.0 / self.s.arrival_rate);
        self.q.push(first as Nanos, Kind::Arrival);
        if self.s.sample_every > 0 {
            self.q.push(self.s.warmup, Kind::Sample);
        }
        // A generous bound against a run that never ends: a session needs a few dozen events.
        let warmup_sessions = (self.s.warmup as f64 * self.s.arrival_rate) as u64;
        let budget = 2_000 * (self.s.measured + warmup_sessions + 1_000);
        let mut tick = 0u64;
        while let Some((now, kind)) = self.q.pop() {
            self.out.events += 1;
            anyhow::ensure!(
                self.out.events <= budget,
                "event budget exhausted ({budget} events at t = {now} ns): the run does not end"
            );
            self.out.end = now;
            if let Kind::Arrival = kind {
                self.on_arrival(now);
                tick += 1;
                if tick.is_multiple_of(4096)
                    && let Some(p) = progress
                {
                    p.inc(4096);
                }
            } else {
                self.dispatch(now, kind);
            }
            if !self.measuring && self.measured_done >= self.s.measured {
                break;
            }
        }
        if let Some(p) = progress {
            p.inc(tick % 4096);
        }
        anyhow::ensure!(
            self.measured_done >= self.s.measured,
            "the run ended with {} of {} measured sessions unfinished",
            self.s.measured - self.measured_done,
            self.s.measured
        );
        Ok(())
    }

    /// Handles one event other than an arrival.
    fn dispatch(&mut self, now: Nanos, kind: Kind) {
        match kind {
            Kind::Arrival => self.on_arrival(now),
            Kind::Probe {
                server,
                client,
                data,
            } => self.on_probe(now, server, client, &data),
            Kind::Offer {
                server,
                to,
                sent,
                data,
            } => self.on_offer(now, server, to, sent, &data),
            Kind::RaceTimer { slot, gen_ } => self.on_race_timer(now, slot, gen_),
            Kind::Wake { server } => self.on_wake(now, server),
            Kind::Init { server, slot, gen_ } => {
                if self.live(slot, gen_, false) {
                    self.on_init(now, server, slot);
                }
            }
            Kind::LoadProbe { client, server } => self.on_load_probe(now, client, server),
            Kind::LoadReply {
                client,
                server,
                rif,
                latency_ns,
            } => self.on_load_reply(now, client, server, rif, latency_ns),
            Kind::Depart { server, slot } => self.on_depart(now, server, slot),
            Kind::Sample => self.on_sample(now),
            Kind::Reply {
                client,
                server,
                latency,
                report,
            } => self.on_reply(now, client, server, latency, report),
            Kind::PoolRaceTimer { client, gen_ } => self.on_pool_race_timer(now, client, gen_),
            Kind::PoolJoin { client, gen_ } => self.on_pool_join(now, client, gen_),
            Kind::PoolPoll { client } => self.on_pool_poll(now, client),
        }
    }

    fn on_arrival(&mut self, now: Nanos) {
        let work = exp_sample(&mut self.trace, self.s.mean_service);
        let next = exp_sample(&mut self.trace, 1.0 / self.s.arrival_rate);
        self.out.simulated += 1;
        let mut half = None;
        if now >= self.s.warmup {
            half = Some(usize::from(self.measured_arrivals >= self.s.measured / 2));
            if self.measured_arrivals == 0 {
                self.out.backlog.0 = self.backlog();
            }
            self.measuring = true;
            self.measured_arrivals += 1;
            self.last_arrival = now;
            if self.measured_arrivals >= self.s.measured {
                // The last measured arrival: close the utilisation window, stop arriving.
                for server in 0..self.servers.len() as u32 {
                    self.account(server, now);
                }
                self.out.backlog.1 = self.backlog();
                self.measuring = false;
            }
        }
        if self.measuring || half.is_none() {
            self.q.push(now + (next as Nanos).max(1), Kind::Arrival);
        }
        let client = if self.s.clients > 1 {
            self.rng.gen_range(0..self.s.clients as u32)
        } else {
            0
        };
        let slot = self.alloc(now, work, half, client);
        let server = match self.s.selector {
            Selector::Protocol(_) => return self.start_race(now, slot),
            Selector::Pool(_) => return self.pool_request(now, slot, client),
            Selector::Wrr => self.pick_wrr(now, client),
            Selector::C3(d) => self.pick_c3(client, d),
            Selector::Random => self.rng.gen_range(0..self.servers.len()) as u32,
            Selector::RoundRobin => self.pick_round_robin(client),
            Selector::P2c(metric) => self.pick_p2c(now, client, metric),
            Selector::Prequal => self.pick_prequal(now, client, half.is_some()),
            Selector::IdealJsq(d) => self.shortest_of(d),
            Selector::IdealSed(d) => self.shortest_expected_of(d),
        };
        self.peer_sent(client, server);
        self.decide_direct(now, slot, server);
    }

    /// Jobs at the servers (in service and queued), fleet-wide.
    fn backlog(&self) -> u64 {
        self.servers.iter().map(|s| u64::from(s.jobs)).sum()
    }

    fn on_sample(&mut self, now: Nanos) {
        // From the warm-up's end (it is first scheduled then) to the last measured arrival.
        if !self.measuring && self.measured_arrivals > 0 {
            return;
        }
        for (i, srv) in self.servers.iter().enumerate() {
            let hist = &mut self.out.queue_hist[self.out.group_of[i]];
            let k = srv.jobs as usize;
            if hist.len() <= k {
                hist.resize(k + 1, 0);
            }
            hist[k] += 1;
        }
        let next = now + self.s.sample_every;
        self.q.push_timer(now, next, Kind::Sample);
    }

    /// `d` distinct uniformly random server indexes, none equal to `except`.
    fn pick_distinct(&mut self, d: usize, except: Option<u32>) -> Vec<u32> {
        let n = self.servers.len();
        let avail = n - usize::from(except.is_some());
        let d = d.min(avail).max(1);
        if d * 4 > avail {
            let mut all: Vec<u32> = (0..n as u32).filter(|i| Some(*i) != except).collect();
            for i in 0..d.min(all.len()) {
                let j = self.rng.gen_range(i..all.len());
                all.swap(i, j);
            }
            all.truncate(d);
            return all;
        }
        let mut picked: Vec<u32> = Vec::with_capacity(d);
        while picked.len() < d {
            let i = self.rng.gen_range(0..n) as u32;
            if Some(i) != except && !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked
    }
}
