//! Configuration that checks itself: [`ServerConfig::validate`], [`ClientConfig::validate`], and
//! builders whose `build` validates ([`ServerConfig::builder`], [`ClientConfig::builder`]).
//!
//! The configs stay plain structs with public fields (every default is documented there); these
//! are for callers who take settings from a user — a config file, flags — and want each mistake
//! named rather than a server that never answers or a client that never retransmits.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::MAX_SERVICE_LEN;
use crate::client::{ClientConfig, SelectionPolicy};
use crate::crypto::{PublicKey, StaticKeypair};
use crate::server::{AnswerPolicy, ServerConfig, ServiceModel};
use crate::session::SessionConfig;

/// A setting out of range. Each variant names one mistake; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A service name is empty or longer than [`MAX_SERVICE_LEN`] bytes.
    #[error("service names are 1 to {MAX_SERVICE_LEN} bytes; got {0} bytes")]
    ServiceName(usize),
    /// A server answers for no service at all.
    #[error("a server needs at least one service")]
    NoService,
    /// A limit of zero (capacity, max sessions, fan-out, n-best k, held probes) would serve
    /// nothing; leave it unset for no limit.
    #[error("{0} must be at least 1 (leave it unset for no limit)")]
    Zero(&'static str),
    /// A duration of zero where time must pass (timeouts, timers, lifetimes).
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// Two settings that contradict each other; the message says which and why.
    #[error("{0}")]
    Conflict(&'static str),
    /// A client with no server key pinned can accept no offer.
    #[error("a client needs at least one pinned server key")]
    NoServerKey,
    /// A fraction outside 0..=1.
    #[error("{0} must be between 0 and 1")]
    Fraction(&'static str),
    /// A DATA packet size outside 1,232..=1,452 bytes.
    #[error("the DATA packet size must be between 1,232 and 1,452 bytes; got {0}")]
    PacketSize(usize),
}

fn service(name: &[u8]) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_SERVICE_LEN {
        return Err(ConfigError::ServiceName(name.len()));
    }
    Ok(())
}

fn positive(what: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::ZeroDuration(what));
    }
    Ok(())
}

fn session(s: &SessionConfig) -> Result<(), ConfigError> {
    if !(crate::session::MIN_PACKET..=crate::MAX_DATAGRAM_LEN).contains(&s.max_packet) {
        return Err(ConfigError::PacketSize(s.max_packet));
    }
    positive("the keepalive interval", s.keepalive_interval)?;
    positive("the idle timeout", s.idle_timeout)?;
    if s.idle_timeout <= s.keepalive_interval {
        return Err(ConfigError::Conflict(
            "the idle timeout must be longer than the keepalive interval, or a quiet but live \
             peer is declared gone",
        ));
    }
    if s.liveness_probes > 0 {
        positive("the minimum probe timeout", s.min_probe_timeout)?;
        positive("the initial probe timeout", s.initial_probe_timeout)?;
        if s.max_probe_timeout < s.min_probe_timeout {
            return Err(ConfigError::Conflict(
                "the maximum probe timeout must not be below the minimum",
            ));
        }
    }
    Ok(())
}

impl ServerConfig {
    /// A builder starting from [`ServerConfig::new`]'s defaults; `build` validates.
    pub fn builder(keypair: StaticKeypair) -> ServerConfigBuilder {
        ServerConfigBuilder(ServerConfig::new(keypair))
    }

    /// Checks every setting against its range and the others.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.services.is_empty() {
            return Err(ConfigError::NoService);
        }
        for s in &self.services {
            service(s)?;
        }
        if self.capacity == Some(0) {
            return Err(ConfigError::Zero("capacity"));
        }
        if self.max_sessions == Some(0) {
            return Err(ConfigError::Zero("max sessions"));
        }
        if self.max_held == 0 {
            return Err(ConfigError::Zero("max held probes"));
        }
        match self.answer {
            AnswerPolicy::Paced { max_delay, divisor } => {
                positive("the paced answer's longest delay", max_delay)?;
                if divisor == 0 {
                    return Err(ConfigError::Zero("the pace divisor"));
                }
            }
            AnswerPolicy::Gated { max_hold } => {
                positive("the gated answer's longest hold", max_hold)?
            }
            _ => {}
        }
        if let ServiceModel::Fixed(d) = self.service {
            positive("a fixed service time", d)?;
        }
        positive("the cookie lifetime", self.cookie_lifetime)?;
        if self.cookie_rotation < self.cookie_lifetime {
            return Err(ConfigError::Conflict(
                "cookie keys must not rotate faster than a cookie lives (rotation ≥ lifetime), or \
                 a cookie could outlive the key that verifies it",
            ));
        }
        session(&self.session)?;
        if self.admission.inits_per_source_per_sec == 0 || self.admission.handshakes_per_sec == 0 {
            return Err(ConfigError::Zero("the handshake rate limits"));
        }
        if self.admission.probes_per_sec == 0 || self.admission.probes_per_source_per_sec == 0 {
            return Err(ConfigError::Zero("the probe rate limits"));
        }
        Ok(())
    }
}

/// Builds a [`ServerConfig`]; see [`ServerConfig::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ServerConfigBuilder(ServerConfig);

impl ServerConfigBuilder {
    /// The services answered (replacing the default `echo`).
    pub fn services<S: AsRef<[u8]>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.0.services = names.into_iter().map(|s| s.as_ref().to_vec()).collect();
        self
    }
    /// Requests served at once.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.0.capacity = Some(capacity);
        self
    }
    /// The hard session limit.
    pub fn max_sessions(mut self, max: u32) -> Self {
        self.0.max_sessions = Some(max);
        self
    }
    /// Open sessions count as requests in flight.
    pub fn count_sessions(mut self, yes: bool) -> Self {
        self.0.count_sessions = yes;
        self
    }
    /// How load turns into answer time.
    pub fn answer(mut self, answer: AnswerPolicy) -> Self {
        self.0.answer = answer;
        self
    }
    /// Where the service time comes from.
    pub fn service_model(mut self, model: ServiceModel) -> Self {
        self.0.service = model;
        self
    }
    /// Session keepalive and idle timers.
    pub fn session(mut self, session: SessionConfig) -> Self {
        self.0.session = session;
        self
    }
    /// Servers named in REDIRECTs.
    pub fn peers(mut self, peers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.0.peers = peers.into_iter().collect();
        self
    }
    /// Opens sessions only for the client keys `list` holds (PROTOCOL.md §4.7).
    pub fn allow(mut self, list: crate::allow::AllowList) -> Self {
        self.0.allow = Some(std::sync::Arc::new(list));
        self
    }
    /// Any other field, set directly.
    pub fn with(mut self, change: impl FnOnce(&mut ServerConfig)) -> Self {
        change(&mut self.0);
        self
    }
    /// The configuration, or the first setting out of range.
    pub fn build(self) -> Result<ServerConfig, ConfigError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

impl ClientConfig {
    /// A builder starting from [`ClientConfig::new`]'s defaults; `build` validates.
    pub fn builder(server_keys: impl IntoIterator<Item = PublicKey>) -> ClientConfigBuilder {
        ClientConfigBuilder(ClientConfig::new(server_keys.into_iter().collect()))
    }

    /// Checks every setting against its range and the others.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server_keys.is_empty() {
            return Err(ConfigError::NoServerKey);
        }
        service(&self.service)?;
        match self.policy {
            SelectionPolicy::Window { delta, quantile } => {
                positive("the window", delta)?;
                if !(0.0..=1.0).contains(&quantile) {
                    return Err(ConfigError::Fraction("the hot/cold quantile"));
                }
                if self.fanout == Some(1) {
                    return Err(ConfigError::Conflict(
                        "a window needs a fan-out of at least 2: with one server probed there is \
                         nothing to choose between",
                    ));
                }
            }
            SelectionPolicy::Spare { delta } => {
                positive("the spare window", delta)?;
                if self.fanout == Some(1) {
                    return Err(ConfigError::Conflict(
                        "a spare window needs a fan-out of at least 2: with one server probed \
                         there is nothing to choose between",
                    ));
                }
            }
            SelectionPolicy::NBest { k, delta } => {
                if k == 0 {
                    return Err(ConfigError::Zero("n-best k"));
                }
                positive("the n-best window", delta)?;
                if self.fanout.is_some_and(|d| d < k) {
                    return Err(ConfigError::Conflict(
                        "n-best k is larger than the fan-out: fewer servers are probed than \
                         sessions wanted",
                    ));
                }
            }
            SelectionPolicy::Path(p)
                if !(1.0..=crate::client::MAX_PATH_REQUESTS).contains(&p.requests) =>
            {
                return Err(ConfigError::Conflict(
                    "the path policy's requests per session must be between 1 and 1,000,000",
                ));
            }
            _ => {}
        }
        if self.fanout == Some(0) {
            return Err(ConfigError::Zero("fan-out"));
        }
        positive("the race deadline", self.race.deadline)?;
        positive("the first probe retransmission", self.race.initial_rto)?;
        positive("the longest retransmission interval", self.race.max_rto)?;
        positive("the handshake timeout", self.handshake_timeout)?;
        positive("the first INIT retransmission", self.init_rto)?;
        positive("the shortest retransmission timeout", self.min_rto)?;
        if self.min_rto > self.race.max_rto {
            return Err(ConfigError::Conflict(
                "the shortest retransmission timeout is longer than the longest",
            ));
        }
        if self.handshake_timeout >= self.session.idle_timeout {
            return Err(ConfigError::Conflict(
                "the handshake timeout must be shorter than the session idle timeout: a server \
                 drops a half-open session (INIT answered, no DATA yet) after its idle timeout, \
                 and an INIT retried past that is a replay it never answers (R10)",
            ));
        }
        if self.probe_size < crate::PROBE_MIN_LEN || self.probe_size > crate::MAX_DATAGRAM_LEN {
            return Err(ConfigError::Conflict(
                "probes are padded to between PROBE_MIN_LEN and MAX_DATAGRAM_LEN bytes",
            ));
        }
        session(&self.session)
    }
}

/// Builds a [`ClientConfig`]; see [`ClientConfig::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientConfigBuilder(ClientConfig);

impl ClientConfigBuilder {
    /// The service asked for (default `echo`).
    pub fn service(mut self, name: impl AsRef<[u8]>) -> Self {
        self.0.service = name.as_ref().to_vec();
        self
    }
    /// How the race picks.
    pub fn policy(mut self, policy: SelectionPolicy) -> Self {
        self.0.policy = policy;
        self
    }
    /// Probe a subset of this many servers per race (near ones first, PROTOCOL.md §6.1).
    pub fn fanout(mut self, d: usize) -> Self {
        self.0.fanout = Some(d);
        self
    }
    /// This client's zone: servers labelled with it count as near before any is measured.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.0.zone = Some(zone.into());
        self
    }
    /// A pool server's zone label.
    pub fn server_zone(mut self, server: SocketAddr, zone: impl Into<String>) -> Self {
        self.0
            .server_zones
            .insert(crate::util::canonical(server), zone.into());
        self
    }
    /// The race deadline (no offer by then: the connect fails).
    pub fn race_deadline(mut self, d: Duration) -> Self {
        self.0.race.deadline = d;
        self
    }
    /// The handshake timeout.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.0.handshake_timeout = d;
        self
    }
    /// Session keepalive and idle timers.
    pub fn session(mut self, session: SessionConfig) -> Self {
        self.0.session = session;
        self
    }
    /// Re-races after losing a server (0: no failover).
    pub fn max_failovers(mut self, n: u32) -> Self {
        self.0.max_failovers = n;
        self
    }
    /// The static key this client proves (PROTOCOL.md §4.5); without one, a random key per
    /// client.
    pub fn key(mut self, key: crate::StaticKeypair) -> Self {
        self.0.key = Some(key);
        self
    }
    /// Any other field, set directly.
    pub fn with(mut self, change: impl FnOnce(&mut ClientConfig)) -> Self {
        change(&mut self.0);
        self
    }
    /// The configuration, or the first setting out of range.
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn key() -> StaticKeypair {
        StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(1))
    }

    #[test]
    fn defaults_are_valid() {
        ServerConfig::new(key()).validate().unwrap();
        ClientConfig::new(vec![key().public()]).validate().unwrap();
    }

    #[test]
    fn d6_server_builder_names_each_mistake() {
        let b = || ServerConfig::builder(key());
        assert_eq!(
            b().capacity(0).build().unwrap_err(),
            ConfigError::Zero("capacity")
        );
        assert_eq!(
            b().max_sessions(0).build().unwrap_err(),
            ConfigError::Zero("max sessions")
        );
        assert_eq!(
            b().services(Vec::<&str>::new()).build().unwrap_err(),
            ConfigError::NoService
        );
        assert_eq!(
            b().services(["x".repeat(65)]).build().unwrap_err(),
            ConfigError::ServiceName(65)
        );
        assert!(matches!(
            b().session(SessionConfig {
                keepalive_interval: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(5),
                ..SessionConfig::default()
            })
            .build(),
            Err(ConfigError::Conflict(_))
        ));
        assert!(matches!(
            b().answer(AnswerPolicy::Paced {
                max_delay: Duration::ZERO,
                divisor: 32
            })
            .build(),
            Err(ConfigError::ZeroDuration(_))
        ));
        assert!(matches!(
            b().with(|c| c.cookie_rotation = Duration::from_secs(1))
                .build(),
            Err(ConfigError::Conflict(_))
        ));
        let ok = b().capacity(8).services(["dns"]).build().unwrap();
        assert_eq!(ok.capacity, Some(8));
        assert_eq!(ok.services, vec![b"dns".to_vec()]);
    }

    #[test]
    fn d6_client_builder_names_each_mistake() {
        let b = || ClientConfig::builder([key().public()]);
        assert_eq!(
            ClientConfig::builder([]).build().unwrap_err(),
            ConfigError::NoServerKey
        );
        assert!(matches!(
            b().policy(SelectionPolicy::window()).fanout(1).build(),
            Err(ConfigError::Conflict(_))
        ));
        assert_eq!(
            b().fanout(0).build().unwrap_err(),
            ConfigError::Zero("fan-out")
        );
        assert!(matches!(
            b().race_deadline(Duration::ZERO).build(),
            Err(ConfigError::ZeroDuration(_))
        ));
        assert!(matches!(
            b().handshake_timeout(Duration::ZERO).build(),
            Err(ConfigError::ZeroDuration(_))
        ));
        assert!(matches!(
            b().policy(SelectionPolicy::NBest {
                k: 3,
                delta: Duration::from_millis(2)
            })
            .fanout(2)
            .build(),
            Err(ConfigError::Conflict(_))
        ));
        assert_eq!(
            b().service("").build().unwrap_err(),
            ConfigError::ServiceName(0)
        );
        let ok = b()
            .policy(SelectionPolicy::window())
            .fanout(3)
            .build()
            .unwrap();
        assert_eq!(ok.fanout, Some(3));
    }

    #[test]
    fn r10_an_init_may_not_be_retried_past_the_idle_timeout_that_ends_its_half_open_session() {
        let b = || ClientConfig::builder([key().public()]);
        // The default session idle timeout is 5 s: a handshake timeout of 5 s or more would
        // retry an INIT whose half-open session the server has already ended.
        for secs in [5, 10] {
            let err = b()
                .handshake_timeout(Duration::from_secs(secs))
                .build()
                .unwrap_err();
            assert!(
                matches!(err, ConfigError::Conflict(m) if m.contains("half-open")),
                "{err:?}"
            );
        }
        assert!(
            b().handshake_timeout(Duration::from_secs(4))
                .build()
                .is_ok()
        );
        // A longer idle timeout allows a longer handshake.
        assert!(
            b().handshake_timeout(Duration::from_secs(10))
                .session(SessionConfig {
                    idle_timeout: Duration::from_secs(30),
                    ..SessionConfig::default()
                })
                .build()
                .is_ok()
        );
    }
}
