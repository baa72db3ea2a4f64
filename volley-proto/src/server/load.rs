//! The server's load: the requests in flight the application reported, the
//! offers outstanding (reservations) and the service-time estimate, and what follows from them —
//! the expected completion of one more request, the load hint an OFFER carries, whether a slot is
//! free. The settings (capacity, whether sessions count, the reservation length) are the
//! endpoint's [`ServerConfig`], passed in with the number of open sessions, so that nothing here
//! copies a setting that can change.

use std::time::{Duration, Instant};

use super::answer::Reservations;
use super::estimate::{ServiceEstimator, expected_completion};
use super::{AppLoad, ServerConfig, ServerLoad};
use crate::packet::LoadHint;
use crate::session::LoadReport;

/// The load a server carries.
pub(super) struct Load {
    /// Requests in flight the application reported.
    app: u32,
    /// The application's running total of completed requests, as last reported.
    app_completed: u64,
    /// Requests that came as REQUEST frames and are not answered yet (PROTOCOL.md §5.8): the
    /// endpoint counts these itself, from arrival to reply.
    wire: u32,
    /// The mean service time estimate.
    service: ServiceEstimator,
    /// Recently sent offers, counted as load (expiry times only; at most 4 × capacity).
    reserved: Reservations,
}

impl Load {
    pub(super) fn new(now: Instant, config: &ServerConfig) -> Self {
        Self {
            app: 0,
            app_completed: 0,
            wire: 0,
            service: ServiceEstimator::new(now, config.service),
            reserved: Reservations::default(),
        }
    }

    /// How long an offer counts as load (PROTOCOL.md §7.2.3): `config.reservation`.
    pub(super) fn reservation(&self, config: &ServerConfig) -> Duration {
        config.reservation
    }

    /// Requests in flight: the application's, the REQUESTs not answered yet, plus the sessions
    /// when they count as load.
    pub(super) fn in_flight(&self, config: &ServerConfig, sessions: usize) -> u32 {
        let sessions = if config.count_sessions {
            sessions as u32
        } else {
            0
        };
        sessions.saturating_add(self.app).saturating_add(self.wire)
    }

    /// A REQUEST arrived at `now`: one more request in flight until its reply.
    pub(super) fn request_arrived(&mut self, now: Instant, config: &ServerConfig, sessions: usize) {
        self.wire = self.wire.saturating_add(1);
        self.record_service(now, config, sessions, 0);
    }

    /// `n` REQUESTs ended at `now` — answered, or their session ended — each a completion.
    pub(super) fn requests_done(
        &mut self,
        now: Instant,
        config: &ServerConfig,
        sessions: usize,
        n: u32,
    ) {
        self.wire = self.wire.saturating_sub(n);
        self.record_service(now, config, sessions, u64::from(n));
    }

    /// The load report a REPLY written at `now` carries (PROTOCOL.md §5.8): the hint an offer
    /// would carry (requests in flight plus offers outstanding, and the expected completion of
    /// one more), with the `leaving` requests this reply completes no longer counted.
    pub(super) fn report(
        &self,
        now: Instant,
        config: &ServerConfig,
        sessions: usize,
        leaving: u32,
    ) -> LoadReport {
        let effective = self
            .in_flight(config, sessions)
            .saturating_add(self.reserved.count_at(now))
            .saturating_sub(leaving);
        LoadReport::new(
            self.expected(now, config, effective),
            effective,
            config.capacity.unwrap_or(0),
        )
    }

    /// Requests in flight plus offers outstanding: what the answer policy and the hint weigh.
    pub(super) fn effective(
        &mut self,
        now: Instant,
        config: &ServerConfig,
        sessions: usize,
    ) -> u32 {
        self.in_flight(config, sessions)
            .saturating_add(self.reserved.count(now))
    }

    /// The expected completion time of one more request with `effective` requests and offers
    /// in flight.
    pub(super) fn expected(&self, now: Instant, config: &ServerConfig, effective: u32) -> Duration {
        expected_completion(self.service.mean(now), effective, config.capacity)
    }

    /// The load hint an offer written now carries; `own_reserved`: the offer's own
    /// reservation is already counted and must be left out.
    pub(super) fn hint(
        &mut self,
        now: Instant,
        config: &ServerConfig,
        sessions: usize,
        own_reserved: bool,
    ) -> LoadHint {
        let mut effective = self.effective(now, config, sessions);
        if own_reserved {
            effective = effective.saturating_sub(1);
        }
        let expected = self.expected(now, config, effective);
        LoadHint {
            in_flight: effective,
            capacity: config.capacity.unwrap_or(0),
            expected_us: expected.as_micros().clamp(1, u128::from(u32::MAX)) as u32,
        }
    }

    /// Whether every slot is taken by requests in flight (such a server still answers).
    pub(super) fn busy(&self, config: &ServerConfig, sessions: usize) -> bool {
        config
            .capacity
            .is_some_and(|c| self.in_flight(config, sessions) >= c)
    }

    /// Whether a slot is free for one more request, counting offers outstanding (gated).
    pub(super) fn slot_free(
        &mut self,
        now: Instant,
        config: &ServerConfig,
        sessions: usize,
    ) -> bool {
        let effective = self.effective(now, config, sessions);
        config.capacity.is_none_or(|c| effective < c)
    }

    /// Counts an offer as load for [`Self::reservation`] from `from`, so that a burst of
    /// simultaneous probes sees the load rise. Only with a capacity: without one there is
    /// nothing to reserve. At most 4 × capacity are kept (a flood of spoofed probes raises the
    /// expected completion by at most 4 service times).
    pub(super) fn reserve(&mut self, config: &ServerConfig, from: Instant) {
        match config.capacity {
            Some(c) if !config.reservation.is_zero() => {
                let bound = (c as usize).saturating_mul(4).max(1);
                let length = self.reservation(config);
                self.reserved.add(from + length, bound);
            }
            _ => {}
        }
    }

    /// An outstanding offer turned into load (its session counts, or its first request came).
    pub(super) fn release_reservation(&mut self) {
        self.reserved.release_one();
    }

    /// Forgets reservations that expired by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        self.reserved.count(now);
    }

    /// When the next reservation expires (a gated probe may find its slot then).
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.reserved.next_expiry()
    }

    /// Tells the service estimate how many requests are in service from `now`, and how many
    /// just completed.
    pub(super) fn record_service(
        &mut self,
        now: Instant,
        config: &ServerConfig,
        sessions: usize,
        completed: u64,
    ) {
        let requests = self.in_flight(config, sessions);
        let in_service = config.capacity.map_or(requests, |c| requests.min(c));
        self.service.record(now, in_service, completed);
    }

    /// What the application reports about its requests at `now`.
    pub(super) fn set_app_load(
        &mut self,
        now: Instant,
        config: &ServerConfig,
        sessions: usize,
        load: AppLoad,
    ) {
        // A total that went down (an application restarted its count) completes nothing.
        let done = load.completed.saturating_sub(self.app_completed);
        self.app_completed = load.completed;
        self.app = load.in_flight;
        self.record_service(now, config, sessions, done);
    }

    /// The application's running total of completed requests, as last reported.
    pub(super) fn app_completed(&self) -> u64 {
        self.app_completed
    }

    /// The load as the application sees it at `now`, with `held` probes waiting.
    pub(super) fn snapshot(
        &self,
        now: Instant,
        config: &ServerConfig,
        sessions: usize,
        held: usize,
    ) -> ServerLoad {
        let reserved = self.reserved.count_at(now);
        let requests = self.in_flight(config, sessions);
        let service_time = self.service.mean(now);
        ServerLoad {
            sessions: sessions as u32,
            app: self.app,
            wire: self.wire,
            requests,
            reserved,
            held: held as u32,
            capacity: config.capacity.unwrap_or(0),
            service_time,
            expected: expected_completion(
                service_time,
                requests.saturating_add(reserved),
                config.capacity,
            ),
        }
    }
}
