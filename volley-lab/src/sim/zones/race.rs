//! volley in the zone runs: the real race on the client side, the real endpoint on the server
//! side, every datagram crossing the zone matrix.
//!
//! Each client keeps its own `PoolState` and a `ClientConfig` of its zone: policy
//! `SelectionPolicy::path()` (requests per session learned from its own sessions), fan-out
//! `FANOUT`, its zone's label and every server's. A race's targets are what
//! `PoolState::choose_targets` makes of the candidates — ⌈d/2⌉ servers of the client's own zone
//! (by label), the rest whatever comes next — and the candidates are [`CANDIDATES`] servers
//! drawn uniformly from the fleet in random order: a client holding 10,000 servers would
//! shuffle them all per race (10⁴ steps), and the first near and far servers of a uniform
//! sample are distributed as those of the full shuffle whenever the sample holds ⌈d/2⌉ of the
//! client's zone (at 10 zones and 128 candidates, all but a chance below 10⁻⁴). The race runs
//! with the pool's path inputs (`PoolState::path_inputs`; `early` for the early-data variant)
//! and path floors, and every valid offer — won, collected or late — is fed back with
//! `PoolState::offer_sample`; each finished session teaches `requests_sample` its request count.
//! The servers answer with the protocol's default policy (paced). After the race, the winner's
//! INIT takes one way and the handshake's answer one way back before the first request leaves —
//! or, with early data, the first request rides in the INIT.

use std::net::{SocketAddr, SocketAddrV4};

use rand::Rng;
use volley_proto::client::race::{OfferOutcome, Race, RaceTimeout, RaceTimers, Winner};
use volley_proto::packet::{KeyId, Packet};
use volley_proto::{ClientConfig, PROBE_MIN_LEN, PublicKey, SelectionPolicy, Tag};

use super::model::{CONNECT_TIMEOUT, FANOUT, ZonePolicy};
use super::world::{Ev, Phase, World};
use crate::sim::engine::addr::{client_addr, client_slot, server_addr, server_index};
use crate::sim::queue::Nanos;

/// The service every race asks for (the endpoint's default).
const SERVICE: &[u8] = b"echo";

/// Candidates a race's targets are chosen from (the whole fleet when smaller).
pub const CANDIDATES: usize = 128;

/// The label of zone `z`.
pub(super) fn zone_label(z: usize) -> String {
    format!("zone-{z}")
}

/// The client configuration of zone `zone`'s clients: the pool key pinned, `Path`, fan-out
/// `FANOUT`, its zone and every server's labelled.
pub(super) fn zone_config(
    key: PublicKey,
    zone: usize,
    zones: usize,
    per_zone: usize,
) -> ClientConfig {
    let mut c = ClientConfig::new(vec![key]);
    c.policy = SelectionPolicy::path();
    c.fanout = Some(FANOUT);
    c.zone = Some(zone_label(zone));
    c.server_zones = (0..zones * per_zone)
        .map(|i| (server_addr(i), zone_label(i / per_zone)))
        .collect();
    c
}

impl World<'_> {
    /// [`CANDIDATES`] distinct servers drawn uniformly, in random order (the whole fleet,
    /// shuffled, when it is smaller).
    pub(super) fn candidates(&mut self) -> Vec<SocketAddr> {
        let n = self.servers.len();
        if n <= CANDIDATES {
            let mut all: Vec<usize> = (0..n).collect();
            for i in 0..n {
                let j = self.rng.gen_range(i..n);
                all.swap(i, j);
            }
            return all.into_iter().map(server_addr).collect();
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        let mut out = Vec::with_capacity(CANDIDATES);
        while out.len() < CANDIDATES {
            let i = self.rng.gen_range(0..n);
            if self.marks[i] != self.stamp {
                self.marks[i] = self.stamp;
                out.push(server_addr(i));
            }
        }
        out
    }

    /// Starts a race for session `slot`: targets from the client's `PoolState`, the path
    /// inputs and floors from it too.
    pub(super) fn start_race(&mut self, now: Nanos, slot: u32) {
        let (zone, client) = {
            let s = &self.sessions[slot as usize];
            (s.zone, s.client)
        };
        let candidates = self.candidates();
        let early = self.s.policy == ZonePolicy::VolleyEarly;
        let cfg = &self.configs[usize::from(zone)];
        let Some(pool) = self.clients[client as usize].volley.as_ref() else {
            return self.fail(slot);
        };
        let targets = pool.choose_targets(candidates, cfg.fanout, cfg);
        let floors = pool.path_floors(&targets);
        let inputs = pool.path_inputs(cfg, early);
        let policy = cfg.policy;
        let mut tag = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut self.rng, &mut tag);
        let mut race = Race::start(
            self.at(now),
            Tag(tag),
            SERVICE,
            targets,
            RaceTimers::default(),
            PROBE_MIN_LEN,
            policy,
        )
        .with_path(inputs)
        .with_floors(floors);
        let sess = &mut self.sessions[slot as usize];
        if let Some(old) = sess.race.take() {
            sess.probes += old.probes_sent();
        }
        sess.offers.clear();
        sess.phase = Phase::Racing;
        sess.race_timer = None;
        sess.sent = now;
        let client = client_addr(slot, sess.gen_);
        self.send_probes(now, &mut race, client, zone);
        self.sessions[slot as usize].race = Some(race);
        self.schedule_race_timer(now, slot);
    }

    /// Puts every PROBE the race has queued on the wire; whether there was any.
    fn send_probes(
        &mut self,
        now: Nanos,
        race: &mut Race,
        client: SocketAddrV4,
        zone: u16,
    ) -> bool {
        let n = self.servers.len();
        let mut any = false;
        while let Some(t) = race.poll_transmit(&mut self.buf) {
            let Some(server) = server_index(t.destination, n) else {
                continue;
            };
            let data: Box<[u8]> = self.buf[..t.size].into();
            let at = now + self.leg(zone, self.zone_of(server));
            self.q.push(
                at,
                Ev::Probe {
                    server,
                    client,
                    data,
                },
            );
            any = true;
        }
        any
    }

    /// Arms the race's next timer unless an earlier one is pending.
    fn schedule_race_timer(&mut self, now: Nanos, slot: u32) {
        let sess = &self.sessions[slot as usize];
        let Some(next) = sess.race.as_ref().and_then(|r| r.poll_timeout()) else {
            self.sessions[slot as usize].race_timer = None;
            return;
        };
        let t = self.since(next).max(now);
        if sess.race_timer.is_some_and(|cur| cur <= t) {
            return;
        }
        let gen_ = sess.gen_;
        self.sessions[slot as usize].race_timer = Some(t);
        self.q.push_timer(now, t, Ev::RaceTimer { slot, gen_ });
    }

    pub(super) fn on_offer(
        &mut self,
        now: Nanos,
        server: u32,
        to: SocketAddrV4,
        sent: Nanos,
        data: &[u8],
    ) {
        let Some((slot, g)) = client_slot(SocketAddr::V4(to)) else {
            return;
        };
        if !self.live(slot, g, true) {
            return;
        }
        let Ok(Packet::Offer(offer)) = Packet::decode(data) else {
            return;
        };
        let (key, key_id) = (self.key, self.key_id);
        let pinned = move |id: &KeyId| (*id == key_id).then_some(key);
        let from = self.servers[server as usize].addr;
        let at = self.at(now);
        let sess = &mut self.sessions[slot as usize];
        let client = sess.client as usize;
        let Some(race) = sess.race.as_mut() else {
            return;
        };
        // Every valid offer, late ones included, teaches the client's pool state.
        let held = std::time::Duration::from_micros(u64::from(offer.held_us));
        let sample = |pool: &mut Option<volley_proto::client::PoolState>, path, expected| {
            if let Some(p) = pool.as_mut() {
                p.offer_sample(at, from, path, expected);
                p.hold_sample(held);
            }
        };
        match race.handle_offer(at, from, &offer, &pinned) {
            OfferOutcome::Won(w) => {
                sess.offers.push((server, sent));
                sample(&mut self.clients[client].volley, w.path, w.load.expected());
                self.decided(now, slot, w);
            }
            OfferOutcome::Collected { path, load, .. } => {
                sess.offers.push((server, sent));
                let decision = race.decide_if_complete();
                sample(&mut self.clients[client].volley, path, load.expected());
                match decision {
                    Some(w) => self.decided(now, slot, w),
                    None => self.schedule_race_timer(now, slot),
                }
            }
            OfferOutcome::Late { path, load, .. } => {
                sample(&mut self.clients[client].volley, path, load.expected());
            }
            _ => {}
        }
    }

    pub(super) fn on_race_timer(&mut self, now: Nanos, slot: u32, gen_: u32) {
        if !self.live(slot, gen_, false) {
            return;
        }
        let at = self.at(now);
        let sess = &mut self.sessions[slot as usize];
        if sess.race_timer != Some(now) || sess.phase != Phase::Racing {
            return; // superseded, or the race is decided
        }
        sess.race_timer = None;
        let (client, zone) = (client_addr(slot, sess.gen_), sess.zone);
        let Some(mut race) = sess.race.take() else {
            return;
        };
        let outcome = race.handle_timeout(at);
        if matches!(outcome, RaceTimeout::Pending) {
            self.send_probes(now, &mut race, client, zone);
        }
        self.sessions[slot as usize].race = Some(race);
        match outcome {
            RaceTimeout::Pending => self.schedule_race_timer(now, slot),
            RaceTimeout::Decided(w) => self.decided(now, slot, w),
            RaceTimeout::Expired => {
                // No offer by the deadline: a timeout, and the session races again.
                self.lost(now, slot, 0);
            }
        }
    }

    /// The race chose `w`: the handshake (or, with early data, the INIT carrying the first
    /// request) goes to the winner.
    fn decided(&mut self, now: Nanos, slot: u32, w: Winner) {
        // The client's pool learns whether its near servers answered (PROTOCOL.md §6.1).
        let at = self.at(now);
        let sess = &self.sessions[slot as usize];
        let cfg = &self.configs[usize::from(sess.zone)];
        if let (Some(race), Some(pool)) = (
            sess.race.as_ref(),
            self.clients[sess.client as usize].volley.as_mut(),
        ) {
            pool.race_decided(race.targets(), race.heard(), race.elapsed(at), cfg);
        }
        let Some(server) = server_index(w.server, self.servers.len()) else {
            return self.lost(now, slot, 0);
        };
        let offered = self.sessions[slot as usize]
            .offers
            .iter()
            .find(|(s, _)| *s == server)
            .map_or(now, |(_, t)| *t);
        let (zone, sz) = (self.sessions[slot as usize].zone, self.zone_of(server));
        let there = now + self.leg(zone, sz);
        let lands = !self.silent(server, there);
        let reservation = self.servers[server as usize]
            .ep
            .as_ref()
            .map_or(volley_proto::server::answer::DEFAULT_RESERVATION, |ep| {
                ep.reservation_length()
            });
        let sess = &mut self.sessions[slot as usize];
        sess.reservation_until = offered + reservation.as_nanos() as Nanos;
        sess.race_timer = None;
        sess.phase = Phase::Connecting;
        sess.sent = now;
        let gen_ = sess.gen_;
        self.pin(slot, server);
        if self.s.policy == ZonePolicy::VolleyEarly {
            self.q.push(there, Ev::Request { server, slot, gen_ });
        } else if !lands {
            self.q
                .push(now + CONNECT_TIMEOUT, Ev::Timeout { slot, gen_ });
        } else {
            let back = there + self.leg(sz, zone);
            self.q.push(back, Ev::Connected { slot, gen_ });
        }
    }

    /// Arms a Wake at the endpoint's `poll_timeout`, unless one at or before it is pending.
    fn schedule_wake(&mut self, server: u32, now: Nanos) {
        let srv = &self.servers[server as usize];
        let Some(next) = srv.ep.as_ref().and_then(|ep| ep.poll_timeout()) else {
            return;
        };
        // Never in the past, never at `now` again: a timer reported as due runs once.
        let t = self.since(next).max(now + 1);
        if srv.wakes.iter().any(|w| *w <= t) {
            return;
        }
        self.servers[server as usize].wakes.push(t);
        self.q.push(t, Ev::Wake { server });
    }

    /// Sends every OFFER the endpoint has ready, then re-arms its timer.
    pub(super) fn drain_server(&mut self, now: Nanos, server: u32) {
        let at = self.at(now);
        loop {
            let srv = &mut self.servers[server as usize];
            let Some(ep) = srv.ep.as_mut() else { return };
            let Some(t) = ep.poll_transmit(at, &mut self.buf) else {
                break;
            };
            self.send_offer(now, server, t.destination, t.size);
        }
        self.schedule_wake(server, now);
    }

    /// An OFFER leaves `server` for the session at `to` (dropped when the server is silent or
    /// the session gone).
    fn send_offer(&mut self, now: Nanos, server: u32, to: SocketAddr, size: usize) {
        let SocketAddr::V4(to) = to else {
            return;
        };
        if self.silent(server, now) {
            return;
        }
        let Some((slot, g)) = client_slot(SocketAddr::V4(to)) else {
            return;
        };
        if !self.live(slot, g, true) {
            return;
        }
        let zone = self.sessions[slot as usize].zone;
        let data: Box<[u8]> = self.buf[..size].into();
        let at = now + self.leg(self.zone_of(server), zone);
        self.q.push(
            at,
            Ev::Offer {
                server,
                to,
                sent: now,
                data,
            },
        );
    }

    pub(super) fn on_probe(&mut self, now: Nanos, server: u32, client: SocketAddrV4, data: &[u8]) {
        if self.silent(server, now) {
            return;
        }
        self.sync_load(server, now);
        let at = self.at(now);
        let srv = &mut self.servers[server as usize];
        let local = srv.addr;
        let Some(ep) = srv.ep.as_mut() else { return };
        if let Some(t) = ep.handle(at, SocketAddr::V4(client), local, data, &mut self.buf) {
            self.send_offer(now, server, t.destination, t.size);
        }
        self.drain_server(now, server);
    }

    pub(super) fn on_wake(&mut self, now: Nanos, server: u32) {
        let wakes = &mut self.servers[server as usize].wakes;
        if let Some(i) = wakes.iter().position(|w| *w == now) {
            wakes.swap_remove(i);
        }
        self.sync_load(server, now);
        let at = self.at(now);
        if let Some(ep) = self.servers[server as usize].ep.as_mut() {
            ep.handle_timeout(at);
        }
        self.drain_server(now, server);
    }
}
