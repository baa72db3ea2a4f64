//! A pool client's races: the race that opens its pool (`NBest`), the balancer's races to fill
//! it, to replace a member behind or to grow it (`NBest`), their offers and timers, and the
//! members they bring.

use std::net::SocketAddr;
use std::time::Duration;

use volley_proto::balance::{RaceReason, Report};
use volley_proto::client::race::{OfferOutcome, Race, RaceTimeout, Winner};
use volley_proto::packet::{KeyId, Packet};
use volley_proto::{PROBE_MIN_LEN, SelectionPolicy, Tag};

use super::super::addr::{CLIENT_PORT_SPAN, server_addr, server_index};
use super::super::{Kind, Nanos, World};
use super::{Member, PoolRace, SERVICE, pool_addr};

impl World<'_> {
    /// `d` distinct uniformly random servers none of which is in `exclude` (fewer when the
    /// fleet has fewer).
    pub(in crate::sim::engine) fn pick_excluding(&mut self, d: usize, exclude: &[u32]) -> Vec<u32> {
        let n = self.servers.len();
        let avail = n.saturating_sub(exclude.len());
        let d = d.min(avail);
        if d == 0 {
            return Vec::new();
        }
        if d * 4 > avail {
            let mut all: Vec<u32> = (0..n as u32).filter(|i| !exclude.contains(i)).collect();
            for i in 0..d {
                let j = rand::Rng::gen_range(&mut self.rng, i..all.len());
                all.swap(i, j);
            }
            all.truncate(d);
            return all;
        }
        let mut picked: Vec<u32> = Vec::with_capacity(d);
        while picked.len() < d {
            let i = rand::Rng::gen_range(&mut self.rng, 0..n) as u32;
            if !exclude.contains(&i) && !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked
    }

    pub(super) fn start_pool_race(
        &mut self,
        now: Nanos,
        client: u32,
        targets: Vec<u32>,
        policy: SelectionPolicy,
        reason: Option<RaceReason>,
    ) {
        let Some(p) = self.pool_setup() else { return };
        let addrs: Vec<SocketAddr> = targets.iter().map(|i| server_addr(*i as usize)).collect();
        let mut tag = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut self.rng, &mut tag);
        let mut race = Race::start(
            self.at(now),
            Tag(tag),
            SERVICE,
            addrs,
            p.timers,
            PROBE_MIN_LEN,
            policy,
        );
        let counted = self.measuring;
        let span = self.in_span(now);
        let o = &mut self.out.pool;
        o.races_total += 1;
        o.span_races += u64::from(span && reason.is_some());
        if counted {
            o.races += 1;
            match reason {
                None => o.opening += 1,
                Some(RaceReason::Fill) => o.fill += 1,
                Some(RaceReason::Behind(_)) => o.behind += 1,
                Some(RaceReason::Grow(_)) => o.grow += 1,
            }
        }
        let pc = &mut self.pools[client as usize];
        pc.gen_ = pc.gen_.wrapping_add(1);
        let from = pool_addr(client, pc.gen_);
        self.send_probes(now, &mut race, from);
        self.pools[client as usize].race = Some(PoolRace {
            race,
            timer: None,
            reason,
            offers: Vec::new(),
            counted,
            winners: Vec::new(),
        });
        self.schedule_pool_timer(now, client);
    }

    /// Arms the race's next timer unless an earlier one is pending.
    fn schedule_pool_timer(&mut self, now: Nanos, client: u32) {
        let base = self.base;
        let pc = &mut self.pools[client as usize];
        let gen_ = pc.gen_;
        let Some(r) = pc.race.as_mut() else { return };
        let Some(next) = r.race.poll_timeout() else {
            r.timer = None;
            return;
        };
        let t = (next.saturating_duration_since(base).as_nanos() as Nanos).max(now);
        if r.timer.is_some_and(|cur| cur <= t) {
            return;
        }
        r.timer = Some(t);
        self.q
            .push_timer(now, t, Kind::PoolRaceTimer { client, gen_ });
    }

    /// An OFFER reaches a pool client: the current race takes it, or it is void.
    pub(in crate::sim::engine) fn on_pool_offer(
        &mut self,
        now: Nanos,
        server: u32,
        client: u32,
        g: u32,
        sent: Nanos,
        data: &[u8],
    ) {
        let Ok(Packet::Offer(offer)) = Packet::decode(data) else {
            self.out.offers_void += 1;
            return;
        };
        let (key, key_id) = (self.key, self.key_id);
        let pinned = move |id: &KeyId| (*id == key_id).then_some(key);
        let from = self.servers[server as usize].addr;
        let at = self.at(now);
        let Some(pc) = self.pools.get_mut(client as usize) else {
            self.out.offers_void += 1;
            return;
        };
        let current = pc.gen_ % CLIENT_PORT_SPAN == g;
        let Some(r) = pc.race.as_mut().filter(|r| current && r.winners.is_empty()) else {
            self.out.offers_void += 1;
            return;
        };
        match r.race.handle_offer(at, from, &offer, &pinned) {
            OfferOutcome::Won(w) => {
                r.offers.push((server, sent));
                self.pool_decided(now, client, w);
            }
            OfferOutcome::Collected { .. } => {
                r.offers.push((server, sent));
                match r.race.decide_if_complete() {
                    Some(w) => self.pool_decided(now, client, w),
                    None => self.schedule_pool_timer(now, client),
                }
            }
            OfferOutcome::Late { .. } => self.out.offers_late += 1,
            _ => self.out.offers_void += 1,
        }
    }

    /// A pool race's timer.
    pub(in crate::sim::engine) fn on_pool_race_timer(
        &mut self,
        now: Nanos,
        client: u32,
        gen_: u32,
    ) {
        let at = self.at(now);
        let pc = &mut self.pools[client as usize];
        if pc.gen_ != gen_ {
            return;
        }
        let Some(mut r) = pc.race.take() else { return };
        if r.timer != Some(now) || !r.winners.is_empty() {
            pc.race = Some(r);
            return; // superseded, or decided
        }
        r.timer = None;
        match r.race.handle_timeout(at) {
            RaceTimeout::Pending => {
                self.send_probes(now, &mut r.race, pool_addr(client, gen_));
                self.pools[client as usize].race = Some(r);
                self.schedule_pool_timer(now, client);
            }
            RaceTimeout::Decided(w) => {
                pc.race = Some(r);
                self.pool_decided(now, client, w);
            }
            RaceTimeout::Expired => {
                if r.reason.is_some() {
                    pc.balancer.race_failed();
                }
                if r.counted {
                    self.out.pool.failed += 1;
                    self.out.pool.probes += r.race.probes_sent();
                }
                self.pool_poll(now, client);
            }
        }
    }

    /// Client `client`'s race chose `w` (and, `NBest`, its runners-up): their handshakes go out,
    /// and they join one round trip later.
    fn pool_decided(&mut self, now: Nanos, client: u32, w: Winner) {
        let n = self.servers.len();
        let pc = &mut self.pools[client as usize];
        let gen_ = pc.gen_;
        let Some(r) = pc.race.as_mut() else { return };
        let mut chosen = vec![w];
        chosen.extend(r.race.take_runners_up());
        r.timer = None;
        let offers = std::mem::take(&mut r.offers);
        let mut winners = Vec::with_capacity(chosen.len());
        for w in chosen {
            let Some(server) = server_index(w.server, n) else {
                continue;
            };
            let offered = offers
                .iter()
                .find(|(s, _)| *s == server)
                .map_or(now, |(_, t)| *t);
            let length = self.servers[server as usize]
                .ep
                .as_ref()
                .map_or(Duration::ZERO, |ep| ep.reservation_length());
            winners.push((w, offered + length.as_nanos() as Nanos));
        }
        let handshake = self.leg() + self.leg();
        if let Some(r) = self.pools[client as usize].race.as_mut() {
            r.winners = winners;
        }
        self.q
            .push(now + handshake, Kind::PoolJoin { client, gen_ });
    }

    /// The handshakes of client `client`'s decided race are done: its servers join the pool.
    pub(in crate::sim::engine) fn on_pool_join(&mut self, now: Nanos, client: u32, gen_: u32) {
        let at = self.at(now);
        let n = self.servers.len();
        let window = self.measuring;
        let pc = &mut self.pools[client as usize];
        if pc.gen_ != gen_ || pc.race.as_ref().is_none_or(|r| r.winners.is_empty()) {
            return;
        }
        let Some(r) = pc.race.take() else { return };
        let mut retired = 0;
        for (w, until) in &r.winners {
            let Some(server) = server_index(w.server, n) else {
                continue;
            };
            let hint = w
                .load
                .expected()
                .map(|e| Report::new(e, w.load.in_flight, w.load.capacity));
            let rtt = Some(w.path);
            let key = match r.reason {
                None => pc.balancer.add(at, w.server, hint, rtt),
                Some(_) => {
                    let (key, out) = pc.balancer.race_won(at, w.server, hint, rtt);
                    retired += u64::from(out.is_some());
                    key
                }
            };
            pc.members.push(Member {
                key,
                server,
                reservation_until: *until,
            });
        }
        if r.counted {
            self.out.pool.probes += r.race.probes_sent();
        }
        if window {
            self.out.pool.retired += retired;
        }
        self.pool_reap(client);
        self.pool_dispatch(now, client);
        self.pool_poll(now, client);
    }
}
