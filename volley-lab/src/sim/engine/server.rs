//! The server side: the real endpoint answering probes on its own timers, and the FIFO slots
//! that serve the jobs.

use std::net::{SocketAddr, SocketAddrV4};

use volley_proto::AppLoad;

use super::{Kind, Nanos, Phase, World};

impl World<'_> {
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

    /// Arms a Wake at the endpoint's `poll_timeout`, unless one at or before it is pending.
    pub(super) fn schedule_wake(&mut self, server: u32, now: Nanos) {
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
        self.q.push(t, Kind::Wake { server });
    }

    /// Sends every OFFER the endpoint has ready, then re-arms its timer.
    fn drain_server(&mut self, now: Nanos, server: u32) {
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

    fn send_offer(&mut self, now: Nanos, server: u32, to: SocketAddr, size: usize) {
        let SocketAddr::V4(to) = to else {
            self.out.offers_void += 1;
            return;
        };
        let data: Box<[u8]> = self.buf[..size].into();
        let at = now + self.leg();
        self.q.push(
            at,
            Kind::Offer {
                server,
                to,
                sent: now,
                data,
            },
        );
    }

    pub(super) fn on_probe(&mut self, now: Nanos, server: u32, client: SocketAddrV4, data: &[u8]) {
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

    /// The INIT (or another selector's request) arrives: a job. (volley's servers have no
    /// session limit here, so nothing is refused.)
    pub(super) fn on_init(&mut self, now: Nanos, server: u32, slot: u32) {
        self.job_lands(now, server, slot);
    }

    pub(super) fn job_lands(&mut self, now: Nanos, server: u32, slot: u32) {
        self.account(server, now);
        if self.wrr_max > 0.0 {
            self.orca_account(server, now);
        }
        let sess = &mut self.sessions[slot as usize];
        sess.job_arrived = now;
        sess.phase = Phase::Served;
        let (work, until) = (sess.work, sess.reservation_until);
        let srv = &mut self.servers[server as usize];
        srv.jobs += 1;
        if until > now {
            // The offer it came from is load now (its first request, in the real stack).
            if let Some(ep) = srv.ep.as_mut() {
                ep.release_reservation();
            }
        }
        if srv.busy < self.s.slots {
            srv.busy += 1;
            let t = now + ((work / srv.speed) as Nanos).max(1);
            self.q.push(t, Kind::Depart { server, slot });
        } else {
            srv.waiting.push_back(slot);
        }
        self.sync_load(server, now);
    }

    pub(super) fn on_depart(&mut self, now: Nanos, server: u32, slot: u32) {
        self.account(server, now);
        if self.wrr_max > 0.0 {
            self.orca_account(server, now);
            self.orca_completed(server);
        }
        let service = self.sessions[slot as usize].work / self.servers[server as usize].speed;
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
            srv.busy += 1;
            let speed = srv.speed;
            let work = self.sessions[next as usize].work;
            let t = now + ((work / speed) as Nanos).max(1);
            self.q.push(t, Kind::Depart { server, slot: next });
        }
        self.sync_load(server, now);
        // A freed slot can release a held (gated) probe.
        self.drain_server(now, server);
        self.complete(now, slot);
    }
}
