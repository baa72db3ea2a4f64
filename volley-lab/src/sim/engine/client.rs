//! The client side of a session: the real race, its timers and its decision.

use std::net::SocketAddr;
use std::time::Duration;

use volley_proto::client::race::{OfferOutcome, Race, RaceTimeout, Winner};
use volley_proto::packet::{KeyId, Packet};
use volley_proto::{PROBE_MIN_LEN, Tag};

use super::addr::{client_addr, client_slot, server_addr, server_index};
use super::{Kind, Nanos, Phase, Selector, World};

/// The service every race asks for (the endpoint's default).
const SERVICE: &[u8] = b"echo";

impl World<'_> {
    /// Starts a race for `slot` against `fanout` random servers.
    pub(super) fn start_race(&mut self, now: Nanos, slot: u32) {
        let Selector::Protocol(p) = self.s.selector else {
            return;
        };
        let picks = self.pick_distinct(p.fanout, None);
        let targets: Vec<SocketAddr> = picks.iter().map(|i| server_addr(*i as usize)).collect();
        let mut tag = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut self.rng, &mut tag);
        let mut race = Race::start(
            self.at(now),
            Tag(tag),
            SERVICE,
            targets,
            p.timers,
            PROBE_MIN_LEN,
            p.client,
        );
        let sess = &mut self.sessions[slot as usize];
        if let Some(old) = sess.race.take() {
            sess.probes += old.probes_sent();
        }
        sess.offers.clear();
        sess.races += 1;
        sess.phase = Phase::Racing;
        sess.race_timer = None;
        let client = client_addr(slot, sess.gen_);
        self.send_probes(now, &mut race, client);
        self.sessions[slot as usize].race = Some(race);
        self.schedule_race_timer(now, slot);
    }

    /// Puts every PROBE the race has queued on the wire; whether there was any.
    pub(super) fn send_probes(
        &mut self,
        now: Nanos,
        race: &mut Race,
        client: std::net::SocketAddrV4,
    ) -> bool {
        let n = self.servers.len();
        let mut any = false;
        while let Some(t) = race.poll_transmit(&mut self.buf) {
            let Some(server) = server_index(t.destination, n) else {
                continue;
            };
            let data: Box<[u8]> = self.buf[..t.size].into();
            let at = now + self.leg();
            self.q.push(
                at,
                Kind::Probe {
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
        self.q.push_timer(now, t, Kind::RaceTimer { slot, gen_ });
    }

    pub(super) fn on_offer(
        &mut self,
        now: Nanos,
        server: u32,
        to: std::net::SocketAddrV4,
        sent: Nanos,
        data: &[u8],
    ) {
        if !self.pools.is_empty()
            && let Some((client, g)) = super::pool::pool_client(to)
        {
            return self.on_pool_offer(now, server, client, g, sent, data);
        }
        let Some((slot, g)) = client_slot(SocketAddr::V4(to)) else {
            self.out.offers_void += 1;
            return;
        };
        if !self.live(slot, g, true) {
            self.out.offers_void += 1;
            return;
        }
        let Ok(Packet::Offer(offer)) = Packet::decode(data) else {
            self.out.offers_void += 1;
            return;
        };
        let (key, key_id) = (self.key, self.key_id);
        let pinned = move |id: &KeyId| (*id == key_id).then_some(key);
        let from = self.servers[server as usize].addr;
        let at = self.at(now);
        let sess = &mut self.sessions[slot as usize];
        let Some(race) = sess.race.as_mut() else {
            self.out.offers_void += 1;
            return;
        };
        match race.handle_offer(at, from, &offer, &pinned) {
            OfferOutcome::Won(w) => {
                sess.offers.push((server, sent));
                self.decided(now, slot, w);
            }
            OfferOutcome::Collected { .. } => {
                sess.offers.push((server, sent));
                match race.decide_if_complete() {
                    Some(w) => self.decided(now, slot, w),
                    None => self.schedule_race_timer(now, slot),
                }
            }
            OfferOutcome::Late { .. } => {
                if sess.measured() {
                    self.out.offers_late += 1;
                }
            }
            _ => self.out.offers_void += 1,
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
        let client = client_addr(slot, sess.gen_);
        let Some(mut race) = sess.race.take() else {
            return;
        };
        let outcome = race.handle_timeout(at);
        let retransmitted =
            matches!(outcome, RaceTimeout::Pending) && self.send_probes(now, &mut race, client);
        let sess = &mut self.sessions[slot as usize];
        sess.race = Some(race);
        sess.retransmitted |= retransmitted;
        match outcome {
            RaceTimeout::Pending => self.schedule_race_timer(now, slot),
            RaceTimeout::Decided(w) => self.decided(now, slot, w),
            RaceTimeout::Expired => {
                if sess.measured() {
                    self.out.failed_no_offer += 1;
                }
                self.fail(slot);
            }
        }
    }

    /// The race chose `w`: note the winning offer's reservation, then send the INIT.
    fn decided(&mut self, now: Nanos, slot: u32, w: Winner) {
        let Some(server) = server_index(w.server, self.servers.len()) else {
            return self.fail(slot);
        };
        let reservation = match self.s.selector {
            Selector::Protocol(p) => p.reservation,
            _ => Duration::ZERO,
        };
        let sess = &mut self.sessions[slot as usize];
        let sent = sess
            .offers
            .iter()
            .find(|(s, _)| *s == server)
            .map_or(now, |(_, t)| *t);
        sess.reservation_until = if reservation.is_zero() {
            0
        } else {
            sent + reservation.as_nanos() as Nanos
        };
        sess.race_timer = None;
        self.decide_direct(now, slot, server);
    }

    /// `slot` goes to `server`: its INIT (or, for the references, the job) is on its way.
    pub(super) fn decide_direct(&mut self, now: Nanos, slot: u32, server: u32) {
        let sess = &mut self.sessions[slot as usize];
        sess.selected_at = now;
        sess.server = server;
        sess.phase = Phase::Joining;
        let gen_ = sess.gen_;
        self.record_pick(now, server);
        let at = now + self.leg();
        self.q.push(at, Kind::Init { server, slot, gen_ });
    }
}
