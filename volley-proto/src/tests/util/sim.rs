//! A simulated network for whole-protocol tests: one or more clients and N servers on a virtual
//! clock, with per-link delay, jitter (hence reordering), loss and duplication, and a filter that
//! can drop, edit or forge datagrams in flight. Everything is seeded; [`SeedGuard`] prints the seed
//! when a test fails, and `VOLLEY_SIM_SEED` replays one.
//!
//! On every run it checks the anti-amplification invariant (R6): a server's immediate reply to a
//! datagram (OFFER, COOKIE_CHANGE, ACCEPT — anything sent before the address is known to be in a
//! session) is never larger than the datagram that caused it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::client::{ClientConfig, ClientEvent, Connection, PoolState};
use crate::crypto::{PublicKey, StaticKeypair};
use crate::packet::{Packet, kind};
use crate::server::{ServerConfig, ServerEndpoint, ServerEvent};
use crate::{MAX_DATAGRAM_LEN, VERSION};

/// Prints the seed if the test panics.
pub struct SeedGuard(pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed with seed {} (replay: VOLLEY_SIM_SEED={})",
                self.0, self.0
            );
        }
    }
}

/// The seeds a test should run: `VOLLEY_SIM_SEED` if set, else `0..n`.
pub fn seeds(n: u64) -> Vec<u64> {
    match std::env::var("VOLLEY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => (0..n).collect(),
    }
}

/// Link behaviour towards one destination.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// One-way delay.
    pub latency: Duration,
    /// Extra uniformly random delay in `0..jitter` (reorders datagrams).
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            latency: Duration::from_micros(200),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// A datagram in flight, as the filter sees it.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Source address (a filter may spoof it).
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// Bytes (a filter may edit them).
    pub data: Vec<u8>,
}

/// What the filter decides.
pub enum Verdict {
    /// Deliver (possibly edited).
    Pass,
    /// Lose it.
    Drop,
    /// Deliver it and these forged datagrams too.
    PassAnd(Vec<Datagram>),
}

type Filter = Box<dyn FnMut(Instant, &mut Datagram) -> Verdict>;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

/// A simulated server.
pub struct SimServer {
    /// Its address.
    pub addr: SocketAddr,
    /// The protocol state.
    pub endpoint: ServerEndpoint,
    /// A dead server receives nothing and sends nothing.
    pub alive: bool,
    /// Every event it produced.
    pub events: Vec<ServerEvent>,
    /// Echo session datagrams back, and answer requests with their own bytes (the default
    /// service). When false, requests stay in flight for the test to answer.
    pub echo: bool,
}

/// A simulated client.
pub struct SimClient {
    /// Its address.
    pub addr: SocketAddr,
    /// The protocol state.
    pub conn: Connection,
    /// The client instance it belongs to: its index in [`Sim::pools`].
    pub instance: usize,
    /// Every event it produced, with the time.
    pub events: Vec<(Instant, ClientEvent)>,
}

/// Something sent, for assertions.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When.
    pub at: Instant,
    /// From.
    pub src: SocketAddr,
    /// To.
    pub dst: SocketAddr,
    /// The type byte (0 if none).
    pub kind: u8,
    /// Size.
    pub len: usize,
    /// The bytes as the sender wrote them (before any filter edit).
    pub data: Vec<u8>,
}

/// The whole simulated world.
pub struct Sim {
    /// Virtual time now.
    pub now: Instant,
    /// Virtual time zero.
    pub start: Instant,
    /// The seed.
    pub seed: u64,
    rng: ChaCha20Rng,
    /// Servers.
    pub servers: Vec<SimServer>,
    /// Clients.
    pub clients: Vec<SimClient>,
    /// Each client instance's pool knowledge, shared by its connections.
    pub pools: Vec<PoolState>,
    /// Default link behaviour.
    pub link: Link,
    /// Link behaviour towards specific destinations (overrides `link`).
    pub links: HashMap<SocketAddr, Link>,
    /// Edits, drops or forges datagrams in flight.
    pub filter: Option<Filter>,
    /// Every datagram put on the wire (before loss).
    pub sent: Vec<Sent>,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
}

/// The server address for index `i`: 10.0.0.(i+1):4433.
pub fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 4433))
}

/// The client address for index `i`: 192.168.(i/250).(i%250+1):50000.
pub fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 168, (i / 250) as u8, (i % 250 + 1) as u8], 50000))
}

impl Sim {
    /// An empty world with seed `seed`.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            now: start,
            start,
            seed,
            rng: ChaCha20Rng::seed_from_u64(seed),
            servers: Vec::new(),
            clients: Vec::new(),
            pools: Vec::new(),
            link: Link::default(),
            links: HashMap::new(),
            filter: None,
            sent: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// A child RNG for an endpoint.
    pub fn child_rng(&mut self) -> Box<ChaCha20Rng> {
        Box::new(ChaCha20Rng::seed_from_u64(self.rng.next_u64()))
    }

    /// A new server key pair from the world's RNG.
    pub fn keypair(&mut self) -> StaticKeypair {
        StaticKeypair::generate(&mut *self.child_rng())
    }

    /// Adds `n` servers sharing one pool key, configured by `tweak`; returns the pool's public key.
    pub fn add_servers(&mut self, n: usize, tweak: impl Fn(usize, &mut ServerConfig)) -> PublicKey {
        let kp = self.keypair();
        for _ in 0..n {
            let i = self.servers.len();
            let mut cfg = ServerConfig::new(kp.clone());
            tweak(i, &mut cfg);
            let rng = self.child_rng();
            let endpoint = ServerEndpoint::new(self.now, cfg, rng);
            self.servers.push(SimServer {
                addr: server_addr(i),
                endpoint,
                alive: true,
                events: Vec::new(),
                echo: true,
            });
        }
        kp.public()
    }

    /// A new client instance: pool knowledge its connections share. Returns its index.
    pub fn add_instance(&mut self, ejection: crate::client::EjectionConfig) -> usize {
        self.pools.push(PoolState::new(ejection));
        self.pools.len() - 1
    }

    /// Adds a client racing `pool`, an instance of its own; returns its index.
    pub fn add_client(&mut self, config: ClientConfig, pool: Vec<SocketAddr>) -> usize {
        let addr = client_addr(self.clients.len());
        self.add_client_at(config, pool, addr)
    }

    /// Adds a client racing `pool` whose INIT carries `first` as early data (PROTOCOL.md
    /// §4.8), an instance of its own; returns its index.
    pub fn add_client_early(
        &mut self,
        config: ClientConfig,
        pool: Vec<SocketAddr>,
        first: &[u8],
    ) -> usize {
        let addr = client_addr(self.clients.len());
        let instance = self.add_instance(config.ejection);
        let rng = self.child_rng();
        let conn = Connection::with_early_data(
            self.now,
            config,
            pool,
            crate::client::EarlyData::new(bytes::Bytes::copy_from_slice(first))
                .expect("early data within its limits"),
            rng,
            &mut self.pools[instance],
        );
        self.push(conn, addr, instance)
    }

    /// Adds a connection of client instance `instance` (see [`Sim::add_instance`]): it races
    /// `pool` sharing that instance's knowledge (answer times, ejected servers) with its other
    /// connections; returns its index.
    pub fn add_client_shared(
        &mut self,
        config: ClientConfig,
        pool: Vec<SocketAddr>,
        instance: usize,
    ) -> usize {
        let addr = client_addr(self.clients.len());
        self.push_client(config, pool, addr, instance)
    }

    /// Adds a client at a chosen address racing `pool`, an instance of its own; returns its index.
    pub fn add_client_at(
        &mut self,
        config: ClientConfig,
        pool: Vec<SocketAddr>,
        addr: SocketAddr,
    ) -> usize {
        let instance = self.add_instance(config.ejection);
        self.push_client(config, pool, addr, instance)
    }

    fn push_client(
        &mut self,
        config: ClientConfig,
        pool: Vec<SocketAddr>,
        addr: SocketAddr,
        instance: usize,
    ) -> usize {
        let rng = self.child_rng();
        let conn = Connection::new(self.now, config, pool, rng, &mut self.pools[instance]);
        self.push(conn, addr, instance)
    }

    /// Adds `conn`, of client instance `instance`, at `addr`; returns its index.
    fn push(&mut self, conn: Connection, addr: SocketAddr, instance: usize) -> usize {
        self.clients.push(SimClient {
            addr,
            conn,
            instance,
            events: Vec::new(),
        });
        self.clients.len() - 1
    }

    /// Lets go of client `i`'s connection as a runtime does ([`Connection::retire`]: its session
    /// id back, its requests learned); an idle connection with nothing to race takes its place.
    pub fn retire(&mut self, i: usize) {
        let instance = self.clients[i].instance;
        let rng = self.child_rng();
        let config = ClientConfig::new(Vec::new());
        let idle = Connection::new(self.now, config, Vec::new(), rng, &mut self.pools[instance]);
        let conn = std::mem::replace(&mut self.clients[i].conn, idle);
        conn.retire(&mut self.pools[instance]);
    }

    /// The pool knowledge of client `i`'s instance.
    pub fn pool_state(&self, i: usize) -> &PoolState {
        &self.pools[self.clients[i].instance]
    }

    /// Adds a sibling of client `i` at the same address: a connection opening a session with
    /// `winner`, an offer client `i`'s `NBest` race chose besides its own (see
    /// [`Connection::take_extra_winners`]); returns its index.
    pub fn add_sibling(
        &mut self,
        i: usize,
        config: ClientConfig,
        pool: Vec<SocketAddr>,
        winner: crate::client::Winner,
    ) -> usize {
        let tag = self.clients[i]
            .conn
            .decided_tag()
            .expect("the race chose its servers");
        let addr = self.clients[i].addr;
        let rng = self.child_rng();
        let instance = self.clients[i].instance;
        let state = &mut self.pools[instance];
        let conn = Connection::from_winner(self.now, config, pool, tag, winner, rng, state);
        self.push(conn, addr, instance)
    }

    /// Every server address.
    pub fn pool(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    /// Virtual time elapsed.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Puts a datagram on the wire through the link model and the filter.
    pub fn send(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let kind = if data.len() >= 2 && data[0] == VERSION {
            data[1]
        } else {
            0
        };
        self.sent.push(Sent {
            at: self.now,
            src,
            dst,
            kind,
            len: data.len(),
            data: data.clone(),
        });
        let mut d = Datagram { src, dst, data };
        let mut extra = Vec::new();
        if let Some(f) = self.filter.as_mut() {
            match f(self.now, &mut d) {
                Verdict::Pass => {}
                Verdict::Drop => return,
                Verdict::PassAnd(more) => extra = more,
            }
        }
        for d in std::iter::once(d).chain(extra) {
            let link = self.links.get(&d.dst).copied().unwrap_or(self.link);
            if self.chance(link.loss) {
                continue;
            }
            let copies = if self.chance(link.duplicate) { 2 } else { 1 };
            for _ in 0..copies {
                let jitter = if link.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(self.rng.next_u64() % link.jitter.as_nanos() as u64)
                };
                self.seq += 1;
                self.queue.push(Reverse(InFlight {
                    at: self.now + link.latency + jitter,
                    seq: self.seq,
                    src: d.src,
                    dst: d.dst,
                    data: d.data.clone(),
                }));
            }
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn deliver(&mut self, d: InFlight) {
        if let Some(si) = self.servers.iter().position(|s| s.addr == d.dst) {
            if !self.servers[si].alive {
                return;
            }
            let mut out = [0u8; MAX_DATAGRAM_LEN];
            let now = self.now;
            let server = &mut self.servers[si];
            if let Some(t) = server
                .endpoint
                .handle(now, d.src, server.addr, &d.data, &mut out)
            {
                // R6: an immediate reply is never larger than the datagram that caused it.
                assert!(
                    t.size <= d.data.len(),
                    "amplification: {} byte reply to a {} byte datagram (type {:#x})",
                    t.size,
                    d.data.len(),
                    d.data.get(1).copied().unwrap_or(0)
                );
                if Packet::decode(&d.data).is_ok_and(|p| matches!(p, Packet::Probe(_))) {
                    assert_eq!(out[1], kind::OFFER);
                }
                let src = server.addr;
                self.send(src, t.destination, out[..t.size].to_vec());
            }
        } else if let Some(ci) = self.client_for(d.src, d.dst, &d.data) {
            let now = self.now;
            let c = &mut self.clients[ci];
            c.conn
                .handle(now, d.src, &d.data, &mut self.pools[c.instance]);
        }
    }

    /// The client a datagram to `dst` goes to. Several connections may share one address (an
    /// `NBest` group): then the one that [`Connection::claims`] the datagram gets it, and the
    /// first at that address when none does (so that it is counted as a stray there).
    fn client_for(&self, src: SocketAddr, dst: SocketAddr, data: &[u8]) -> Option<usize> {
        // A runtime's index by route key must find every connection that claims a datagram:
        // checked on every datagram of every simulation.
        for c in self.clients.iter().filter(|c| c.addr == dst) {
            if c.conn.claims(src, data) {
                let key = crate::client::RouteKey::of(data);
                assert!(
                    key.is_some() && c.conn.route_keys().contains(&key),
                    "a claimed datagram's route key {key:?} is not among {:?}",
                    c.conn.route_keys()
                );
            }
        }
        let mut at = (0..self.clients.len()).filter(|&i| self.clients[i].addr == dst);
        let first = at.next()?;
        if self.clients[first].conn.claims(src, data) {
            return Some(first);
        }
        Some(
            at.find(|&i| self.clients[i].conn.claims(src, data))
                .unwrap_or(first),
        )
    }

    fn flush(&mut self) {
        let now = self.now;
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        for si in 0..self.servers.len() {
            if !self.servers[si].alive {
                continue;
            }
            while let Some(ev) = self.servers[si].endpoint.poll_event() {
                if let ServerEvent::Datagram { id, data } = &ev
                    && self.servers[si].echo
                {
                    let _ = self.servers[si].endpoint.send(*id, data);
                }
                if let ServerEvent::Request { id, request, body } = &ev
                    && self.servers[si].echo
                {
                    let ok = crate::session::ReplyStatus::OK;
                    let _ = self.servers[si]
                        .endpoint
                        .reply(now, *id, *request, ok, body.clone());
                }
                self.servers[si].events.push(ev);
            }
            while let Some(t) = self.servers[si].endpoint.poll_transmit(now, &mut buf) {
                let src = self.servers[si].addr;
                self.send(src, t.destination, buf[..t.size].to_vec());
            }
        }
        for ci in 0..self.clients.len() {
            while let Some(t) = self.clients[ci].conn.poll_transmit(now, &mut buf) {
                let src = self.clients[ci].addr;
                self.send(src, t.destination, buf[..t.size].to_vec());
            }
            while let Some(ev) = self.clients[ci].conn.poll_event() {
                self.clients[ci].events.push((now, ev));
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let q = self.queue.peek().map(|Reverse(d)| d.at);
        let s = self
            .servers
            .iter()
            .filter(|s| s.alive)
            .filter_map(|s| s.endpoint.poll_timeout())
            .min();
        let c = self
            .clients
            .iter()
            .filter_map(|c| c.conn.poll_timeout())
            .min();
        [q, s, c].into_iter().flatten().min()
    }

    /// Advances to the next event (delivery or timer) and processes everything due then.
    /// Returns false when nothing is scheduled at all.
    pub fn step(&mut self) -> bool {
        self.flush();
        let Some(t) = self.next_time() else {
            return false;
        };
        self.now = self.now.max(t);
        while self.queue.peek().is_some_and(|Reverse(d)| d.at <= self.now) {
            let Reverse(d) = self.queue.pop().expect("peeked");
            self.deliver(d);
        }
        let now = self.now;
        for s in self.servers.iter_mut().filter(|s| s.alive) {
            if s.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                s.endpoint.handle_timeout(now);
            }
        }
        for c in &mut self.clients {
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now, &mut self.pools[c.instance]);
            }
        }
        self.flush();
        true
    }

    /// Runs until `done` holds or `limit` of virtual time passes (then returns false). Virtual
    /// time never passes `now + limit`: when nothing is due before then, it stops there.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        // Bounded in steps as well as in virtual time.
        for _ in 0..10_000_000 {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return done(self);
            }
            // Never jump past the end: time stops at `end` when nothing is due before it.
            if self.next_time().is_none_or(|t| t > end) {
                self.flush();
                if self.next_time().is_none_or(|t| t > end) {
                    self.now = end;
                    return done(self);
                }
            }
            if !self.step() {
                return done(self);
            }
        }
        false
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(d, |s| s.now >= end);
    }

    /// Client `i`'s events, without the times.
    pub fn client_events(&self, i: usize) -> Vec<ClientEvent> {
        self.clients[i]
            .events
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Whether client `i` has an established session (its last Established not followed by a loss).
    pub fn established(&self, i: usize) -> bool {
        self.clients[i].conn.server().is_some()
    }

    /// Sets server `i`'s application load to `in_flight` requests at the current time (the
    /// running total of completions unchanged).
    pub fn set_app(&mut self, i: usize, in_flight: u32) {
        let now = self.now;
        let ep = &mut self.servers[i].endpoint;
        let completed = ep.app_completed();
        ep.set_app_load(
            now,
            crate::server::AppLoad {
                in_flight,
                completed,
            },
        );
    }

    /// Index of the server at `addr`.
    pub fn server_index(&self, addr: SocketAddr) -> usize {
        self.servers
            .iter()
            .position(|s| s.addr == addr)
            .expect("known server")
    }
}

impl Link {
    /// A clean link with a one-way delay of `ms` milliseconds.
    pub fn ms(ms: u64) -> Self {
        Self {
            latency: Duration::from_millis(ms),
            ..Self::default()
        }
    }
}

impl Sim {
    /// Sets the one-way delay of the link towards `addr` to `ms` milliseconds.
    pub fn set_latency(&mut self, addr: SocketAddr, ms: u64) {
        self.links.insert(addr, Link::ms(ms));
    }

    /// Sets the link towards `addr` to a one-way delay of `latency` plus `0..jitter` at random.
    pub fn set_jitter(&mut self, addr: SocketAddr, latency: Duration, jitter: Duration) {
        self.links.insert(
            addr,
            Link {
                latency,
                jitter,
                ..Link::default()
            },
        );
    }

    /// Datagrams of type `kind` put on the wire so far, in order.
    pub fn sent_of(&self, kind: u8) -> Vec<&Sent> {
        self.sent.iter().filter(|s| s.kind == kind).collect()
    }

    /// Datagrams from `src` to `dst` so far, in order.
    pub fn sent_between(&self, src: SocketAddr, dst: SocketAddr) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|s| s.src == src && s.dst == dst)
            .collect()
    }

    /// Runs until client `i` is established, panicking (with its events) after `limit`.
    pub fn establish(&mut self, i: usize, limit: Duration) {
        if !self.run_until(limit, |s| s.established(i)) {
            panic!(
                "client {i} not established after {limit:?}: {:?}",
                self.client_events(i)
            );
        }
    }

    /// Queues `data` on client `i`'s session and runs until the echo comes back.
    pub fn echo(&mut self, i: usize, data: &[u8], limit: Duration) -> bool {
        let before = self.count_datagrams(i, data);
        if self.clients[i].conn.send_datagram(data).is_err() {
            return false;
        }
        self.run_until(limit, |s| s.count_datagrams(i, data) > before)
    }

    /// How many times client `i` received `data` as a session datagram.
    pub fn count_datagrams(&self, i: usize, data: &[u8]) -> usize {
        self.clients[i]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, ClientEvent::Datagram(d) if d == data))
            .count()
    }
}
