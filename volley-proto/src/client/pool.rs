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
//!
//! **Paths and loads** (PROTOCOL.md §6.1, §6.2.4). Every valid offer, late ones included, tells the
//! client its server's path (the answer time less the server's hold) and its expected
//! completion. Per server the client keeps the shortest path seen in the last
//! [`PATH_MEMORY`] (a minimum filter, as BBR keeps its min RTT: queues only add to a path), so a
//! fan-out can favour near servers; over the pool it keeps the last [`RECENT_EXPECTED`] expected
//! completions, whose least bounds what an offer still to come can announce; and, for the `Path`
//! policy's `learn`, a moving mean of the requests its sessions carried.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// The shortest path measured to it, and when; forgotten after [`PATH_MEMORY`].
    path: Option<(Duration, Instant)>,
}

/// Servers known before a new one makes the state forget the stale ones.
pub const PRUNE_AT: usize = 4096;
/// How long a server's shortest measured path is kept without a shorter or fresher sample.
pub const PATH_MEMORY: Duration = Duration::from_secs(30);
/// How many of the latest offers' expected completions bound what an offer still to come can
/// announce (the `Path` policy's "lately").
pub const RECENT_EXPECTED: usize = 16;
/// A server is *near* when its path is at most this factor times the nearest known path, plus
/// [`NEAR_SLACK`].
pub const NEAR_FACTOR: u32 = 2;
/// See [`NEAR_FACTOR`]: absorbs scheduling noise on a LAN, where every path is near.
pub const NEAR_SLACK: Duration = Duration::from_millis(1);
/// After this many decided races in a row in which every near target probed stayed silent past
/// its overdue time, a fan-out asks one near server per race instead of half (PROTOCOL.md §6.1).
pub const NEAR_SILENT_RACES: u32 = 2;
/// The weight of one session in the learned mean of requests per session (1/8, like RFC 6298's
/// smoothing).
pub const REQUESTS_GAIN: f64 = 0.125;

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
    /// The latest offers' expected completions (at most [`RECENT_EXPECTED`]).
    recent_expected: VecDeque<Duration>,
    /// How long the servers held the latest offers' probes (at most [`RECENT_EXPECTED`]).
    recent_held: VecDeque<Duration>,
    /// The learned mean of requests per session, once a session ended.
    requests: Option<f64>,
    /// Zone labels of pool servers set by the runtime (besides `ClientConfig::server_zones`).
    zones: HashMap<SocketAddr, String>,
    /// Decided races in a row in which every near target probed stayed silent past its
    /// overdue time (see [`NEAR_SILENT_RACES`]).
    near_silent: u32,
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

    /// Records what a valid offer (collected, won or late) said about its server at `now`: the
    /// path this race measured to it and the expected completion it announced (if any).
    pub fn offer_sample(
        &mut self,
        now: Instant,
        server: SocketAddr,
        path: Duration,
        expected: Option<Duration>,
    ) {
        if let Some(expected) = expected {
            if self.recent_expected.len() == RECENT_EXPECTED {
                self.recent_expected.pop_front();
            }
            self.recent_expected.push_back(expected);
        }
        if !self.servers.contains_key(&server) && self.servers.len() >= PRUNE_AT {
            self.prune(now);
        }
        let h = self.servers.entry(server).or_default();
        let keep = h
            .path
            .is_some_and(|(p, at)| p <= path && now.saturating_duration_since(at) < PATH_MEMORY);
        if !keep {
            h.path = Some((path, now));
        }
    }

    /// Forgets servers it knows nothing current about: a path older than [`PATH_MEMORY`] (or
    /// none) and no failure, ejection or probation — so that a pool whose addresses churn
    /// (discovery) does not grow the state for ever.
    fn prune(&mut self, now: Instant) {
        self.servers.retain(|_, h| {
            let path = h
                .path
                .is_some_and(|(_, at)| now.saturating_duration_since(at) < PATH_MEMORY);
            path || h.failures > 0 || h.ejected_until.is_some() || h.probation
        });
    }

    /// The shortest path measured to `server` lately, if any.
    pub fn path_to(&self, server: &SocketAddr) -> Option<Duration> {
        self.servers
            .get(server)
            .and_then(|h| h.path)
            .map(|(p, _)| p)
    }

    /// Labels pool servers with their zones, replacing earlier labels (a runtime whose pool
    /// comes from discovery keeps them current); used with `ClientConfig::server_zones`.
    pub fn set_server_zones(&mut self, zones: HashMap<SocketAddr, String>) {
        self.zones = zones
            .into_iter()
            .map(|(a, z)| (crate::util::canonical(a), z))
            .collect();
    }

    /// The zone a server is labelled with, by the configuration or [`Self::set_server_zones`].
    fn zone_of<'a>(
        &'a self,
        config: &'a super::ClientConfig,
        server: &SocketAddr,
    ) -> Option<&'a str> {
        config
            .server_zones
            .get(server)
            .or_else(|| self.zones.get(server))
            .map(String::as_str)
    }

    /// For each of `targets`, the shortest path measured to it lately, zero when unknown (a
    /// `Path` race's floors, [`super::race::Race::with_floors`]).
    pub fn path_floors(&self, targets: &[SocketAddr]) -> Vec<Duration> {
        targets
            .iter()
            .map(|t| self.path_to(t).unwrap_or_default())
            .collect()
    }

    /// Records how long a server held a valid offer's probe (`held_us`): what the longest hold
    /// lately is made of.
    pub fn hold_sample(&mut self, held: Duration) {
        if self.recent_held.len() == RECENT_EXPECTED {
            self.recent_held.pop_front();
        }
        self.recent_held.push_back(held);
    }

    /// The longest hold among the latest offers (zero before any).
    pub fn longest_hold(&self) -> Duration {
        self.recent_held.iter().copied().max().unwrap_or_default()
    }

    /// The least expected completion among the latest offers (`None` before any).
    pub fn least_expected(&self) -> Option<Duration> {
        self.recent_expected.iter().copied().min()
    }

    /// Records how many requests a session carried (`Path` with `learn`): a moving mean, each
    /// session weighing [`REQUESTS_GAIN`]. Sessions that carried none are not counted.
    pub fn requests_sample(&mut self, requests: u64) {
        if requests == 0 {
            return;
        }
        let x = requests as f64;
        self.requests = Some(match self.requests {
            None => x,
            Some(m) => m + REQUESTS_GAIN * (x - m),
        });
    }

    /// The learned mean of requests per session, once a session ended.
    pub fn learned_requests(&self) -> Option<f64> {
        self.requests
    }

    /// What a `Path` race of this client scores with (PROTOCOL.md §6.2.4): the requests per
    /// session (configured, or learned), one round trip per request plus one for the handshake
    /// unless the first request rides in the INIT (`early`), and the least expected completion
    /// announced lately.
    pub fn path_inputs(&self, config: &super::ClientConfig, early: bool) -> super::PathInputs {
        let configured = match config.policy {
            super::SelectionPolicy::Path(p) => p,
            _ => super::PathPolicy::default(),
        };
        let requests = if configured.learn {
            self.requests.unwrap_or(configured.requests)
        } else {
            configured.requests
        }
        .clamp(1.0, super::MAX_PATH_REQUESTS);
        super::PathInputs {
            round_trips: requests + if early { 0.0 } else { 1.0 },
            requests,
            least_expected: self.least_expected(),
            longest_hold: self.longest_hold(),
        }
    }

    /// Which of `candidates` (already in a random order, ejected ones left out) a race probes
    /// (PROTOCOL.md §6.1 step 4): all of them without a fan-out or when they are `fanout` or
    /// fewer; otherwise `⌈d/2⌉` near ones first — labelled with the client's own zone (a label
    /// decides when the client has a zone), or, unlabelled, measured within [`NEAR_FACTOR`] ×
    /// the nearest known path + [`NEAR_SLACK`] — then the
    /// others in their random order, near or far, measured or not, until `d` are taken. The
    /// order is kept otherwise, so with nothing measured and no labels it is the uniform
    /// random subset it always was.
    pub fn choose_targets(
        &self,
        candidates: Vec<SocketAddr>,
        fanout: Option<usize>,
        config: &super::ClientConfig,
    ) -> Vec<SocketAddr> {
        let Some(d) = fanout.map(|d| d.max(1)) else {
            return candidates;
        };
        if candidates.len() <= d {
            return candidates;
        }
        let near = self.near_among(&candidates, config);
        // Near servers that went silent (a zone outage) would take half of every race: one
        // keeps watch for their return, and the rest of the fan-out goes to the others first.
        let silent = self.near_silent >= NEAR_SILENT_RACES;
        let quota = if silent { 1 } else { d.div_ceil(2) };
        let mut chosen: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(&near)
            .take(quota)
            .collect();
        let rest = candidates.iter().filter(|c| !silent || !near(c));
        let then = candidates.iter().filter(|c| silent && near(c));
        for c in rest.chain(then) {
            if chosen.len() == d {
                break;
            }
            if !chosen.contains(c) {
                chosen.push(*c);
            }
        }
        chosen
    }

    /// Which of `candidates` are near: by label when the client knows its own zone and the
    /// server has one, else by measured path within [`NEAR_FACTOR`] × the nearest measured
    /// among them + [`NEAR_SLACK`].
    fn near_among<'a>(
        &'a self,
        candidates: &[SocketAddr],
        config: &'a super::ClientConfig,
    ) -> impl Fn(&SocketAddr) -> bool + 'a {
        let nearest = candidates.iter().filter_map(|c| self.path_to(c)).min();
        let own = config.zone.as_deref();
        // A label decides for a labelled server when the client knows its own zone; the
        // measured path decides for the others.
        move |c: &SocketAddr| match (own, self.zone_of(config, c)) {
            (Some(own), Some(zone)) => own == zone,
            _ => match (nearest, self.path_to(c)) {
                (Some(n), Some(p)) => p <= n.saturating_mul(NEAR_FACTOR) + NEAR_SLACK,
                _ => false,
            },
        }
    }

    /// A race was decided `elapsed` after its start, having heard from `heard` of its
    /// `targets`. A near target it did not hear from is silent when its offer is overdue:
    /// `2 × its measured path + the longest hold lately + 1 ms` (a near target not measured yet,
    /// near by its label, counts the nearest path measured among the race's near targets).
    /// When the race probed near targets and all of them were silent, one more race in a row
    /// found the near servers silent; when any near target answered, none did.
    pub fn race_decided(
        &mut self,
        targets: &[SocketAddr],
        heard: &[SocketAddr],
        elapsed: Duration,
        config: &super::ClientConfig,
    ) {
        let hold = self.longest_hold();
        let verdict = {
            let near = self.near_among(targets, config);
            let probed: Vec<&SocketAddr> = targets.iter().filter(|t| near(t)).collect();
            let nearest = probed.iter().filter_map(|t| self.path_to(t)).min();
            let silent = |t: &SocketAddr| {
                !heard.contains(t)
                    && self.path_to(t).or(nearest).is_some_and(|p| {
                        elapsed >= p.saturating_mul(2) + hold + super::race::OVERDUE_SLACK
                    })
            };
            (!probed.is_empty()).then(|| probed.iter().all(|t| silent(t)))
        };
        match verdict {
            None => {}
            Some(true) => self.near_silent = self.near_silent.saturating_add(1),
            Some(false) => self.near_silent = 0,
        }
    }

    /// Decided races in a row that found every near target probed silent.
    pub fn near_silent_races(&self) -> u32 {
        self.near_silent
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

    #[test]
    fn z2_a_churning_pool_does_not_grow_the_state_for_ever() {
        let mut state = PoolState::default();
        let t0 = Instant::now();
        let addr = |i: u32| SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 7001));
        // A failing server is remembered however many others come and go.
        state.report(t0, addr(0), ServerOutcome::Failure);
        for i in 1..=PRUNE_AT as u32 {
            state.offer_sample(t0, addr(i), Duration::from_millis(1), None);
        }
        assert_eq!(state.servers.len(), PRUNE_AT + 1);
        // Paths older than PATH_MEMORY go when the next new server comes.
        let later = t0 + PATH_MEMORY + Duration::from_secs(1);
        state.offer_sample(
            later,
            addr(PRUNE_AT as u32 + 1),
            Duration::from_millis(1),
            None,
        );
        assert_eq!(state.servers.len(), 2, "the failing server and the new one");
        assert!(state.path_to(&addr(1)).is_none());
    }
}
