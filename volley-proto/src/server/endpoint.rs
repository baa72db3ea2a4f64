//! The server endpoint: routes datagrams to the stateless responder or to an established session,
//! and owns the session table. State is created only after a cookie verified, admission passed
//! and the Noise message authenticated (S2, S3).
//!
//! The endpoint is split by idea: PROBE answering and the load behind it in [`super::offers`],
//! INIT acceptance in [`super::accept`], the session table in [`super::sessions`]; this file holds
//! the state, the dispatch of each datagram, and the session-facing API (send, close, poll).

use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use rand_core::CryptoRngCore;
use tracing::{debug, trace};

use super::admission::Admission;
use super::answer::{AnswerDelays, AnswerPolicy, HeldQueue, Reservations};
use super::estimate::{ServiceEstimator, expected_completion};
use super::sessions::SessionTable;
use super::{AppLoad, ServerConfig, ServerLoad, ServerStats};
use crate::Transmit;
use crate::coding::DecodeError;
use crate::cookie::CookieJar;
use crate::crypto::PublicKey;
use crate::packet::{KeyId, Packet};
use crate::session::{CloseCode, CloseReason, DataDrop, Delivered, SendError};
use crate::util::canonical;

/// A server-side session handle: the id the client puts in DATA.
pub type SessionId = u32;

/// Something the application should know.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A session was established with `remote`.
    Opened {
        /// The new session.
        id: SessionId,
        /// The client's address.
        remote: SocketAddr,
    },
    /// A datagram arrived on a session.
    Datagram {
        /// The session.
        id: SessionId,
        /// The plaintext (the buffer it was decrypted in).
        data: Bytes,
    },
    /// A session ended.
    Closed {
        /// The session.
        id: SessionId,
        /// Why.
        reason: CloseReason,
    },
}

/// A volley server's protocol state.
pub struct ServerEndpoint {
    pub(super) config: ServerConfig,
    pub(super) key_id: KeyId,
    pub(super) rng: Box<dyn CryptoRngCore + Send>,
    pub(super) jar: CookieJar,
    pub(super) admission: Admission,
    /// Established sessions, their timers, the duplicate-INIT filter and the ended list.
    pub(super) sessions: SessionTable,
    pub(super) events: VecDeque<ServerEvent>,
    pub(super) stats: ServerStats,
    pub(super) app_load: u32,
    /// The application's running total of completed requests, as last reported.
    pub(super) app_completed: u64,
    /// The mean service time estimate (L5).
    pub(super) service: ServiceEstimator,
    /// Probes held for a later offer (L1): bounded by `max_held`, fixed-size entries.
    pub(super) held: HeldQueue,
    /// Recently sent offers, counted as load (expiry times only; at most 4 × capacity).
    pub(super) reserved: Reservations,
    /// Where the next REDIRECT starts naming peers, so refusals spread over them.
    pub(super) peer_cursor: usize,
    /// From each probe's arrival to its OFFER (L1), for operators.
    pub(super) answer_delays: AnswerDelays,
    /// When the last well-formed INIT arrived (handshakes compete with a PROBE flood).
    pub(super) last_init: Option<Instant>,
}

impl std::fmt::Debug for ServerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerEndpoint")
            .field("public_key", &self.config.keypair.public())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl ServerEndpoint {
    /// A server starting at `now`, drawing cookie keys, session ids and Noise ephemerals from `rng`.
    pub fn new(
        now: Instant,
        mut config: ServerConfig,
        mut rng: Box<dyn CryptoRngCore + Send>,
    ) -> Self {
        // Peers are named as given, once each.
        let mut peers: Vec<SocketAddr> = Vec::with_capacity(config.peers.len());
        for p in config.peers.iter().map(|p| canonical(*p)) {
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
        config.peers = peers;
        let jar = CookieJar::new(
            now,
            config.cookie_rotation,
            config.cookie_lifetime,
            &mut *rng,
        );
        let salt = jar.derive_secret(b"volley/1 probe buckets");
        let admission = Admission::new(now, config.admission.clone(), salt);
        let key_id = config.keypair.public().key_id();
        let service = ServiceEstimator::new(now, config.service);
        Self {
            config,
            key_id,
            rng,
            jar,
            admission,
            sessions: SessionTable::default(),
            events: VecDeque::new(),
            stats: ServerStats::default(),
            app_load: 0,
            app_completed: 0,
            service,
            held: HeldQueue::default(),
            reserved: Reservations::default(),
            peer_cursor: 0,
            answer_delays: AnswerDelays::default(),
            last_init: None,
        }
    }

    /// How long the answered probes waited for their offers (a histogram).
    pub fn answer_delays(&self) -> &AnswerDelays {
        &self.answer_delays
    }

    /// The static public key clients must pin.
    pub fn public_key(&self) -> PublicKey {
        self.config.keypair.public()
    }

    /// Counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Sessions currently open.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Per-probe state the endpoint holds: held probes, queued transmits and events, and the
    /// duplicate filter. S2 says this stays 0 however many probes arrive while no session exists
    /// and no probe is held.
    pub fn retained_state(&self) -> usize {
        self.sessions.retained() + self.events.len() + self.held.len()
    }

    /// The runtime reports whether datagrams are waiting beyond what it reads in one wake-up
    /// (its socket has a backlog) at `now`. While sessions are open, or an INIT arrived within
    /// the last second, that presses the server (PROTOCOL.md §7.7): per-source PROBE and INIT
    /// limits engage, so that a PROBE flood from a few sources is dropped cheaply instead of
    /// crowding out sessions and handshakes. A server with nothing but PROBEs to answer is
    /// never pressed by a backlog.
    pub fn set_backlog(&mut self, now: Instant, backlog: bool) {
        let handshaking = self
            .last_init
            .is_some_and(|t| now.saturating_duration_since(t) < std::time::Duration::from_secs(1));
        let pressing = backlog && (!self.sessions.is_empty() || handshaking);
        self.admission.set_backlog(pressing);
    }

    /// Changes the capacity (None: unbounded).
    pub fn set_capacity(&mut self, capacity: Option<u32>) {
        self.config.capacity = capacity;
    }

    /// Changes the hard session limit (None: unbounded).
    pub fn set_max_sessions(&mut self, max_sessions: Option<u32>) {
        self.config.max_sessions = max_sessions;
    }

    /// What the application reports about its requests at `now` (L1, L5): in flight now, and
    /// the running total completed. Call [`ServerEndpoint::poll_transmit`] afterwards: a freed
    /// slot can release a held probe.
    pub fn set_app_load(&mut self, now: Instant, load: AppLoad) {
        // A total that went down (an application restarted its count) completes nothing.
        let done = load.completed.saturating_sub(self.app_completed);
        self.app_completed = load.completed;
        self.app_load = load.in_flight;
        self.record_service(now, done);
    }

    /// An offer of this server turned into load without a session this endpoint opened — for a
    /// simulator that skips the handshake and hands each request straight to the application:
    /// releases one reservation, as that session's first request would (L6).
    pub fn release_reservation(&mut self) {
        self.reserved.release_one();
    }

    /// The application's running total of completed requests, as last reported.
    pub fn app_completed(&self) -> u64 {
        self.app_completed
    }

    /// The load now: sessions, application requests, outstanding offers, held probes, and the
    /// expected completion time of one more request.
    pub fn load(&self, now: Instant) -> ServerLoad {
        let reserved = self.reserved.count_at(now);
        let requests = self.in_flight();
        let service_time = self.service.mean(now);
        ServerLoad {
            sessions: self.sessions.len() as u32,
            app: self.app_load,
            requests,
            reserved,
            held: self.held.len() as u32,
            capacity: self.config.capacity.unwrap_or(0),
            service_time,
            expected: expected_completion(
                service_time,
                requests.saturating_add(reserved),
                self.config.capacity,
            ),
        }
    }

    /// Handles one datagram from `remote` that arrived on local address `local`. A stateless answer
    /// (OFFER, COOKIE_CHANGE, ACCEPT) is written into `response` (at least
    /// [`crate::MAX_DATAGRAM_LEN`] bytes) and returned; session output is queued for
    /// [`ServerEndpoint::poll_transmit`]. Never panics on any input.
    pub fn handle(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        datagram: &[u8],
        response: &mut [u8],
    ) -> Option<Transmit> {
        self.stats.datagrams_received += 1;
        let remote = canonical(remote);
        if self.admission.is_reflector_port(remote.port()) {
            self.stats.dropped_reflector_port += 1;
            trace!(%remote, "dropped: reflector source port");
            return None;
        }
        let packet = match Packet::decode(datagram) {
            Ok(p) => p,
            Err(e) => {
                let s = &mut self.stats;
                match e {
                    DecodeError::TooLong => s.malformed_too_long += 1,
                    DecodeError::Truncated => s.malformed_truncated += 1,
                    DecodeError::UnsupportedVersion(_) => s.malformed_version += 1,
                    DecodeError::UnknownType(_) => s.malformed_type += 1,
                    DecodeError::ProbeTooShort => s.probe_too_short += 1,
                    _ => s.malformed_length += 1,
                }
                trace!(%remote, error = %e, "dropped: malformed");
                if let DecodeError::UnsupportedVersion(v) = e {
                    return self.answer_versions(now, remote, local, v, datagram, response);
                }
                return None;
            }
        };
        match packet {
            Packet::Probe(probe) => {
                self.handle_probe(now, remote, local, &probe, datagram.len(), response)
            }
            Packet::Init(init) => {
                self.handle_init(now, remote, local, &init, datagram.len(), response)
            }
            Packet::Data(header, ciphertext) => {
                self.handle_data(now, remote, header, ciphertext);
                None
            }
            Packet::Offer(_)
            | Packet::Accept(_)
            | Packet::CookieChange(_)
            | Packet::Redirect(_) => {
                self.stats.unexpected_message += 1;
                trace!(%remote, "dropped: client-bound message");
                None
            }
        }
    }

    fn handle_data(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        header: crate::packet::DataHeader,
        ct: &[u8],
    ) {
        let Some(served) = self.sessions.get_mut(header.receiver_id) else {
            self.stats.data_unknown_session += 1;
            trace!(%remote, "DATA dropped: unknown session");
            return;
        };
        if served.session.remote() != remote {
            self.stats.data_wrong_source += 1;
            trace!(%remote, "DATA dropped: wrong source for session");
            return;
        }
        let id = header.receiver_id;
        match served.session.handle_data(now, header, ct) {
            Ok(Delivered::Datagram(data)) => {
                if std::mem::take(&mut served.holds_reservation) {
                    // The session's first request: its offer is load now.
                    self.reserved.release_one();
                }
                self.events.push_back(ServerEvent::Datagram { id, data })
            }
            Ok(Delivered::Keepalive) => self.sessions.mark_ready(id),
            Ok(Delivered::Closed(_)) => self.finish(now, id),
            Err(DataDrop::Auth) => self.stats.data_auth_failed += 1,
            Err(DataDrop::Replay) => self.stats.data_replayed += 1,
            Err(DataDrop::BadFrame) => self.stats.data_bad_frame += 1,
            Err(_) => {}
        }
    }

    fn finish(&mut self, now: Instant, id: SessionId) {
        let until = now + self.config.cookie_lifetime;
        if let Some(served) = self.sessions.remove(id, until) {
            let reason = served
                .session
                .close_reason()
                .unwrap_or(CloseReason::IdleTimeout);
            match reason {
                CloseReason::IdleTimeout => self.stats.sessions_idle_timeout += 1,
                CloseReason::Unresponsive => self.stats.sessions_unresponsive += 1,
                _ => {}
            }
            self.stats.sessions_closed += 1;
            if self.config.count_sessions {
                self.record_service(now, 1);
            }
            self.events.push_back(ServerEvent::Closed { id, reason });
            debug!(id, ?reason, "session closed");
        }
    }

    /// One open session's counters (packets, drops, pings).
    pub fn session_stats(&self, id: SessionId) -> Option<crate::session::SessionStats> {
        self.sessions.get(id).map(|s| s.session.stats())
    }

    /// What the server side needs to accept a stream (D2) for an open session: its id, the
    /// client's address and the stream keys. None once the session is gone.
    pub fn stream_ticket(&self, id: SessionId) -> Option<crate::stream::StreamTicket> {
        self.sessions.get(id).map(|s| crate::stream::StreamTicket {
            session_id: id,
            peer: s.session.remote(),
            keys: s.session.stream_keys(crate::stream::Role::Server),
        })
    }

    /// Queues a datagram on a session.
    pub fn send(&mut self, id: SessionId, data: &[u8]) -> Result<(), SendError> {
        let served = self.sessions.get_mut(id).ok_or(SendError::Closed)?;
        served.session.send_datagram(data)?;
        self.sessions.mark_ready(id);
        Ok(())
    }

    /// Queues a datagram the caller owns on a session, without copying it; on refusal it comes
    /// back with the reason.
    pub fn send_owned(&mut self, id: SessionId, data: Bytes) -> Result<(), (SendError, Bytes)> {
        let Some(served) = self.sessions.get_mut(id) else {
            return Err((SendError::Closed, data));
        };
        served.session.send_datagram_owned(data)?;
        self.sessions.mark_ready(id);
        Ok(())
    }

    /// Closes one session; its CLOSE frame goes out with the next transmits.
    pub fn close(&mut self, id: SessionId, code: CloseCode) {
        if let Some(served) = self.sessions.get_mut(id) {
            served.session.close(code);
            self.sessions.mark_ready(id);
        }
    }

    /// Closes every session (shutdown): `GOING_AWAY` tells clients to race the pool again.
    pub fn close_all(&mut self, code: CloseCode) {
        let ids = self.sessions.ids();
        for id in ids {
            self.close(id, code);
        }
    }

    /// Writes the next queued session packet into `buf`. Call until None after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.release_held(now, buf) {
            return Some(t);
        }
        while let Some(id) = self.sessions.pop_ready() {
            let Some(served) = self.sessions.get_mut(id) else {
                continue;
            };
            if let Some(size) = served.session.poll_transmit(now, buf) {
                let destination = served.session.remote();
                let source = served.local;
                self.sessions.unpop_ready(id);
                return Some(Transmit {
                    destination,
                    size,
                    source: Some(source),
                });
            }
            if served.session.is_drained() {
                self.finish(now, id);
            }
        }
        None
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When [`ServerEndpoint::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self.sessions.next_deadline();
        // Held probes: a paced offer's send time or the end of a gated probe's hold; while gated
        // probes wait, an expiring reservation may free their slot.
        let held = self.held.next_due();
        let gated_wait = match self.config.answer {
            AnswerPolicy::Gated { .. } if held.is_some() => self.reserved.next_expiry(),
            _ => None,
        };
        [sessions, held, gated_wait]
            .into_iter()
            .flatten()
            .chain(std::iter::once(self.jar.next_rotation()))
            .min()
    }

    /// Fires every timer due at `now`: cookie rotation (R7), keepalives, idle timeouts. Call
    /// [`ServerEndpoint::poll_transmit`] afterwards: held offers that came due (paced) or whose
    /// hold ended (gated) leave from there.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reserved.count(now);
        if self.jar.rotate_if_due(now, &mut *self.rng) {
            self.admission.sweep(now);
            self.sessions.sweep_ended(now);
            debug!("cookie keys rotated");
        }
        for id in self.sessions.fire_timers(now) {
            self.finish(now, id);
        }
    }

    /// Entries in the session timer heap (open sessions plus ended ones not yet due), for tests
    /// and benchmarks of the timer cost.
    pub fn timer_entries(&self) -> usize {
        self.sessions.timer_entries()
    }
}
