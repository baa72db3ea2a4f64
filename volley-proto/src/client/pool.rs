//! What a client learns about its pool across connections: how long servers take to answer
//! (probe and INIT retransmission timers) and which servers fail (outlier ejection).
//!
//! One [`PoolState`] belongs to one client instance and serves all its connections: each call
//! into a [`super::Connection`] that may learn or use something about the pool takes it as
//! `&mut PoolState`, so the core holds no lock and no shared pointer — how a runtime shares it
//! among its tasks is the runtime's business. Independent clients share nothing. It holds no
//! addresses beyond the servers it has heard about, and its per-server entries are bounded by
//! the pool.
//!
//! **Timers.** Answer times of won and collected offers (from the race's first probe) and
//! handshake times (INIT to ACCEPT) feed two estimators in the manner of RFC 6298: `srtt`,
//! `rttvar`, and a timeout of `srtt + max(1 ms, 4 × rttvar)`, clamped to
//! `[min_rto, max_rto]`. A race or handshake that retransmitted gives no sample (Karn's rule).
//! Before the first sample the configured cold-start values apply (250 ms), except that an INIT
//! sent before any handshake was timed takes its timeout from the answer times when they have a
//! sample (an answer time is never shorter than the round trip).
//!
//! **Ejection** (in the manner of Envoy's outlier detection and Finagle's failure accrual).
//! Failures are: a handshake that timed out or whose ACCEPT failed, a session whose server went
//! silent (idle timeout), and failures the application reports. `eject_after` failures of one
//! server, with no success reported in between and each within `failure_window` of the last,
//! eject it: it is left out of races for `base_ejection × 2^(ejections − 1)`, at most
//! `max_ejection`. Then it is readmitted **on probation**: one more failure within
//! `failure_window` ejects it again for twice as long; a success the application reports, or a
//! `failure_window` without failure, ends the probation. A race whose every candidate is ejected
//! races them all anyway (a client never strands itself).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use crate::rtt::RttEstimator;

/// Outlier ejection settings. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionConfig {
    /// Failures in a row (no success between, each within `failure_window` of the previous)
    /// that eject a server. Default 2; 0 turns ejection off.
    pub eject_after: u32,
    /// How long a failure is remembered. Default 10 s.
    pub failure_window: Duration,
    /// The first ejection's length; each ejection in a row doubles it. Default 1 s.
    pub base_ejection: Duration,
    /// The longest ejection. Default 30 s.
    pub max_ejection: Duration,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            eject_after: 2,
            failure_window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

/// What became of a server, as reported by the connection or the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerOutcome {
    /// The application's request succeeded.
    Success,
    /// The handshake or the session failed, or the application's request did.
    Failure,
}

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// Failures in a row.
    failures: u32,
    last_failure: Option<Instant>,
    /// Ejections in a row (the next lasts `base × 2^ejections`).
    ejections: u32,
    ejected_until: Option<Instant>,
    /// Readmitted after an ejection, not yet cleared.
    probation: bool,
    /// When it was last readmitted.
    readmitted_at: Option<Instant>,
}

/// What a report did to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Nothing changed that a race would see.
    Kept,
    /// The server is ejected from races until then.
    Ejected {
        /// When it is readmitted (on probation).
        until: Instant,
    },
}

/// One client's knowledge of its pool (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct PoolState {
    ejection: EjectionConfig,
    answers: RttEstimator,
    handshakes: RttEstimator,
    servers: HashMap<SocketAddr, Health>,
    /// The client session ids (ACCEPT's and DATA's `receiver_id`) this client's connections
    /// hold: drawn unique, so that connections sharing a socket never claim each other's DATA.
    session_ids: HashSet<u32>,
    /// The static key of a client configured without one, drawn once per client: anonymous to
    /// any allow-list, but one key for all of its connections (one X25519 key generation per
    /// client, not per handshake).
    anonymous: Option<crate::crypto::StaticKeypair>,
}

impl PoolState {
    /// Empty knowledge, ejecting by `ejection`.
    pub fn new(ejection: EjectionConfig) -> Self {
        Self {
            ejection,
            ..Self::default()
        }
    }

    /// The static key this client's handshakes prove: [`crate::ClientConfig::key`], or a
    /// random one drawn from `rng` the first time and kept for the client's life.
    pub fn identity(
        &mut self,
        config: &crate::ClientConfig,
        rng: &mut dyn rand_core::CryptoRngCore,
    ) -> crate::crypto::StaticKeypair {
        if let Some(key) = &config.key {
            return key.clone();
        }
        self.anonymous
            .get_or_insert_with(|| crate::crypto::StaticKeypair::generate(rng))
            .clone()
    }

    /// A random session id no connection of this client holds, now held until released.
    pub fn draw_session_id(&mut self, rng: &mut dyn rand_core::RngCore) -> u32 {
        loop {
            let id = rng.next_u32();
            if self.session_ids.insert(id) {
                return id;
            }
        }
    }

    /// Gives back an id from [`PoolState::draw_session_id`].
    pub fn release_session_id(&mut self, id: u32) {
        self.session_ids.remove(&id);
    }

    /// The answer-time estimator (offers, from the race's first probe).
    pub fn answers(&self) -> &RttEstimator {
        &self.answers
    }

    /// The handshake-time estimator (INIT to ACCEPT).
    pub fn handshakes(&self) -> &RttEstimator {
        &self.handshakes
    }

    /// The probe retransmission timers of a client's next race: the first retransmission
    /// follows the measured answer times, `config.race.initial_rto` before any.
    pub fn race_timers(&self, config: &super::ClientConfig) -> super::RaceTimers {
        let mut t = config.race;
        t.initial_rto =
            self.answers
                .rto(config.race.initial_rto, config.min_rto, config.race.max_rto);
        t
    }

    /// The first INIT retransmission timeout of a client's next handshake: from the handshake
    /// times measured; before any handshake is timed, from the answer times (the race just
    /// measured this path: an offer's answer time is its round trip plus the server's answer
    /// delay, never less than the round trip); and only then `config.init_rto`, the cold-start
    /// value.
    pub fn init_rto(&self, config: &super::ClientConfig) -> Duration {
        let estimator = if self.handshakes.smoothed().is_some() {
            &self.handshakes
        } else {
            &self.answers
        };
        estimator.rto(config.init_rto, config.min_rto, config.race.max_rto)
    }

    /// Records a valid offer's answer time from a race that did not retransmit.
    pub fn answer_sample(&mut self, answer_time: Duration) {
        self.answers.sample(answer_time);
    }

    /// Records a handshake time from a handshake that did not retransmit.
    pub fn handshake_sample(&mut self, time: Duration) {
        self.handshakes.sample(time);
    }

    /// Records what became of `server` at `now`.
    pub fn report(&mut self, now: Instant, server: SocketAddr, outcome: ServerOutcome) -> Ejection {
        let cfg = self.ejection;
        let h = self.servers.entry(server).or_default();
        Self::refresh(h, now, &cfg);
        match outcome {
            ServerOutcome::Success => {
                h.failures = 0;
                h.probation = false;
                h.ejections = h.ejections.saturating_sub(1);
                Ejection::Kept
            }
            ServerOutcome::Failure => {
                if h.ejected_until.is_some() {
                    // Already out (a session that was open when it was ejected): no new verdict.
                    h.last_failure = Some(now);
                    return Ejection::Kept;
                }
                let recent = h
                    .last_failure
                    .is_some_and(|t| now.saturating_duration_since(t) <= cfg.failure_window);
                h.failures = if recent { h.failures + 1 } else { 1 };
                h.last_failure = Some(now);
                if cfg.eject_after == 0 || !(h.probation || h.failures >= cfg.eject_after) {
                    return Ejection::Kept;
                }
                let factor = 1u32 << h.ejections.min(16);
                let length = cfg
                    .base_ejection
                    .saturating_mul(factor)
                    .min(cfg.max_ejection);
                let until = now + length;
                h.ejected_until = Some(until);
                h.ejections = h.ejections.saturating_add(1);
                h.failures = 0;
                h.probation = false;
                Ejection::Ejected { until }
            }
        }
    }

    /// An ejection that ran out puts the server on probation; a probation that saw no failure
    /// for a whole failure window since readmission ends.
    fn refresh(h: &mut Health, now: Instant, cfg: &EjectionConfig) {
        if h.ejected_until.is_some_and(|t| now >= t) {
            h.ejected_until = None;
            h.probation = true;
            h.readmitted_at = Some(now);
        }
        if h.probation {
            let quiet_since = h.last_failure.max(h.readmitted_at);
            if quiet_since.is_none_or(|t| now.saturating_duration_since(t) > cfg.failure_window) {
                h.probation = false;
                h.ejections = h.ejections.saturating_sub(1);
            }
        }
    }

    /// Whether `server` is ejected at `now`.
    pub fn is_ejected(&self, now: Instant, server: &SocketAddr) -> bool {
        self.servers
            .get(server)
            .and_then(|h| h.ejected_until)
            .is_some_and(|t| now < t)
    }

    /// Whether `server` is on probation at `now` (readmitted, not yet cleared).
    pub fn on_probation(&mut self, now: Instant, server: &SocketAddr) -> bool {
        let cfg = self.ejection;
        match self.servers.get_mut(server) {
            Some(h) => {
                Self::refresh(h, now, &cfg);
                h.probation
            }
            None => false,
        }
    }

    /// `candidates` without the servers ejected at `now`, and how many were left out; all of
    /// them when every one is ejected.
    pub fn eligible(&self, now: Instant, candidates: Vec<SocketAddr>) -> (Vec<SocketAddr>, usize) {
        let kept: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|s| !self.is_ejected(now, s))
            .collect();
        if kept.is_empty() {
            return (candidates, 0);
        }
        let left_out = candidates.len() - kept.len();
        (kept, left_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields the given values in turn.
    struct Script(Vec<u32>);

    impl rand_core::RngCore for Script {
        fn next_u32(&mut self) -> u32 {
            self.0.remove(0)
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            dest.fill(0);
            Ok(())
        }
    }

    #[test]
    fn c6_client_session_ids_are_unique_among_a_clients_connections() {
        // Two connections of one client share a socket: an id drawn twice would let one claim
        // the other's DATA. A draw that repeats a held id draws again; a released id is free.
        let mut state = PoolState::default();
        let mut rng = Script(vec![5, 5, 7, 5]);
        assert_eq!(state.draw_session_id(&mut rng), 5);
        assert_eq!(state.draw_session_id(&mut rng), 7, "5 is held");
        state.release_session_id(5);
        assert_eq!(state.draw_session_id(&mut rng), 5, "5 was given back");
    }
}
