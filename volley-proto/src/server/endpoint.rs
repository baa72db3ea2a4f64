//! The server endpoint: routes each datagram to the [`OfferDesk`] (PROBE), the [`Acceptor`]
//! (INIT) or an established session (DATA), and owns what they share — the settings, the cookie
//! jar, admission, counters, the [`Load`] and the [`SessionTable`]. State is created only after a
//! cookie verified, admission passed and the Noise message authenticated; only the endpoint
//! adds a session to the table or removes one. This file holds the dispatch and the
//! session-facing API (send, close, poll).

use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand_core::CryptoRngCore;
use tracing::{debug, trace};

use super::acceptor::{Acceptor, InitOutcome};
use super::admission::Admission;
use super::answer::{AnswerDelays, AnswerPolicy};
use super::context::Context;
use super::load::Load;
use super::offers::OfferDesk;
use super::sessions::{SessionId, SessionTable};
use super::{AppLoad, ServerConfig, ServerLoad, ServerStats};
use crate::Transmit;
use crate::allow::{AllowEntry, AllowList};
use crate::coding::DecodeError;
use crate::cookie::CookieJar;
use crate::crypto::PublicKey;
use crate::packet::Packet;
use crate::session::{
    CloseCode, CloseReason, DataDrop, Delivered, MAX_REQUESTS, ReplyStatus, SendError,
};
use crate::util::canonical;

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
        /// The client's authenticated static key, and its allow-list name.
        client: AllowEntry,
    },
    /// A datagram arrived on a session.
    Datagram {
        /// The session.
        id: SessionId,
        /// The plaintext (the buffer it was decrypted in).
        data: Bytes,
    },
    /// A request arrived on a session (a REQUEST frame, PROTOCOL.md §5.8). It counts as a
    /// request in flight from now until [`ServerEndpoint::reply`] answers it (or its session
    /// ends), and its time in flight feeds the service-time estimate.
    Request {
        /// The session.
        id: SessionId,
        /// The request's id, which the reply names.
        request: u32,
        /// The request's bytes.
        body: Bytes,
    },
    /// A session moved to a new, validated client address (its answers go there from now on).
    Migrated {
        /// The session.
        id: SessionId,
        /// The client's new address.
        remote: SocketAddr,
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
    config: ServerConfig,
    rng: Box<dyn CryptoRngCore + Send>,
    jar: CookieJar,
    admission: Admission,
    /// Established sessions, their timers, the duplicate-INIT filter and the ended list.
    sessions: SessionTable,
    events: VecDeque<ServerEvent>,
    /// See [`ServerEndpoint::set_draining`].
    draining: bool,
    stats: ServerStats,
    /// Requests in flight, offers outstanding, the service-time estimate.
    load: Load,
    /// PROBE answering: held probes and their answer delays.
    desk: OfferDesk,
    /// INIT acceptance.
    acceptor: Acceptor,
}

/// What [`ServerEndpoint::lend`] lends: disjoint borrows of the endpoint's parts.
struct Lent<'a> {
    cx: Context<'a>,
    desk: &'a mut OfferDesk,
    acceptor: &'a mut Acceptor,
    rng: &'a mut (dyn CryptoRngCore + Send),
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
        let desk = OfferDesk::new(config.keypair.public().key_id());
        let load = Load::new(now, &config);
        Self {
            config,
            rng,
            jar,
            admission,
            sessions: SessionTable::default(),
            events: VecDeque::new(),
            draining: false,
            stats: ServerStats::default(),
            load,
            desk,
            acceptor: Acceptor::default(),
        }
    }

    /// The endpoint's parts lent for one call: what the offer desk and the acceptor work with,
    /// the two of them, and the RNG.
    fn lend(&mut self) -> Lent<'_> {
        Lent {
            cx: Context {
                config: &self.config,
                jar: &self.jar,
                admission: &mut self.admission,
                stats: &mut self.stats,
                load: &mut self.load,
                sessions: &self.sessions,
                draining: self.draining,
            },
            desk: &mut self.desk,
            acceptor: &mut self.acceptor,
            rng: &mut *self.rng,
        }
    }

    /// How long the answered probes waited for their offers (a histogram).
    pub fn answer_delays(&self) -> &AnswerDelays {
        self.desk.answer_delays()
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
    /// duplicate filter. It stays 0 however many probes arrive while no session exists and no
    /// probe is held: answering a probe leaves nothing behind.
    pub fn retained_state(&self) -> usize {
        self.sessions.retained() + self.events.len() + self.desk.held()
    }

    /// The runtime reports whether datagrams are waiting beyond what it reads in one wake-up
    /// (its socket has a backlog) at `now`. While sessions are open, or an INIT arrived within
    /// the last second, that presses the server (PROTOCOL.md §7.7): per-source PROBE and INIT
    /// limits engage, so that a PROBE flood from a few sources is dropped cheaply instead of
    /// crowding out sessions and handshakes. A server with nothing but PROBEs to answer is
    /// never pressed by a backlog.
    pub fn set_backlog(&mut self, now: Instant, backlog: bool) {
        let pressing = backlog && (!self.sessions.is_empty() || self.acceptor.handshaking(now));
        self.admission.set_backlog(now, pressing);
    }

    /// Changes the capacity (None: unbounded).
    pub fn set_capacity(&mut self, capacity: Option<u32>) {
        self.config.capacity = capacity;
    }

    /// Starts (or ends) draining (PROTOCOL.md §7.8): while draining the server answers no
    /// PROBE, drops the probes it holds, and refuses every new INIT whose cookie checks out with
    /// a REDIRECT (naming its peers), so that it wins no race and its clients' next races go
    /// elsewhere; its sessions go on as before until they end or the application closes them
    /// (with `GOING_AWAY`).
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Whether the server is draining (see [`ServerEndpoint::set_draining`]).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Changes the hard session limit (None: unbounded).
    pub fn set_max_sessions(&mut self, max_sessions: Option<u32>) {
        self.config.max_sessions = max_sessions;
    }

    /// What the application reports about its requests at `now`: in flight now, and the running
    /// total completed. Call [`ServerEndpoint::poll_transmit`] afterwards: a freed
    /// slot can release a held probe.
    pub fn set_app_load(&mut self, now: Instant, load: AppLoad) {
        self.load
            .set_app_load(now, &self.config, self.sessions.len(), load);
    }

    /// An offer of this server turned into load without a session this endpoint opened — for a
    /// simulator that skips the handshake and hands each request straight to the application:
    /// releases one reservation, as that session's first request would.
    pub fn release_reservation(&mut self) {
        self.load.release_reservation();
    }

    /// How long an offer written now counts as load (PROTOCOL.md §7.2.3).
    pub fn reservation_length(&self) -> std::time::Duration {
        self.load.reservation(&self.config)
    }

    /// The application's running total of completed requests, as last reported.
    pub fn app_completed(&self) -> u64 {
        self.load.app_completed()
    }

    /// The load now: sessions, application requests, outstanding offers, held probes, and the
    /// expected completion time of one more request.
    pub fn load(&self, now: Instant) -> ServerLoad {
        self.load
            .snapshot(now, &self.config, self.sessions.len(), self.desk.held())
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
                    let Lent { mut cx, .. } = self.lend();
                    return OfferDesk::answer_versions(
                        &mut cx, now, remote, local, v, datagram, response,
                    );
                }
                return None;
            }
        };
        match packet {
            Packet::Probe(probe) => {
                let Lent { mut cx, desk, .. } = self.lend();
                desk.handle_probe(
                    &mut cx,
                    now,
                    remote,
                    local,
                    &probe,
                    datagram.len(),
                    response,
                )
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

    /// Hands an INIT to the acceptor and opens the session it accepts.
    fn handle_init(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        init: &crate::packet::Init<'_>,
        init_len: usize,
        response: &mut [u8],
    ) -> Option<Transmit> {
        let Lent {
            mut cx,
            acceptor,
            rng,
            ..
        } = self.lend();
        let outcome =
            acceptor.handle_init(&mut cx, rng, now, remote, local, init, init_len, response);
        let (id, mut served, honoured, accept, early) = match outcome {
            InitOutcome::Answer(answer) => return answer,
            InitOutcome::Open {
                id,
                served,
                honoured,
                accept,
                early,
            } => (id, served, honoured, accept, early),
        };
        let client = served.client.clone();
        // Early data (PROTOCOL.md §4.8): delivered once, as the session's first datagram, now
        // that the cookie, admission, Noise and the allow-list all passed — unless the same
        // client's INIT for the same race already delivered it to another session (it moved
        // and followed a COOKIE_CHANGE).
        let early = early.filter(|_| {
            let seen = self
                .sessions
                .early_seen(now, &served.origin.1, &served.client.key.0);
            if seen {
                self.stats.early_data_duplicate += 1;
                trace!(%remote, "early data dropped: this race's already delivered");
            }
            !seen
        });
        if let Some(data) = &early {
            served.early = true;
            served.session.count_early_datagram();
            self.stats.early_data_received += 1;
            self.stats.early_data_bytes += data.len() as u64;
        }
        let first_request = early.is_some() && std::mem::take(&mut served.holds_reservation);
        self.sessions.insert(id, served);
        if first_request {
            // The session's first request rode in: its offer is load now (§7.2.3).
            self.load.release_reservation();
        }
        if self.config.count_sessions {
            // The session itself is the load its offer promised.
            self.load.release_reservation();
            self.load
                .record_service(now, &self.config, self.sessions.len(), 0);
        }
        if honoured {
            self.stats.init_honoured_full += 1;
        }
        self.stats.sessions_opened += 1;
        self.events
            .push_back(ServerEvent::Opened { id, remote, client });
        if let Some(data) = early {
            self.events.push_back(ServerEvent::Datagram { id, data });
        }
        Some(accept)
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
        let id = header.receiver_id;
        // What a packet can change besides delivering: the client's address (a validation
        // answered) and the receive key epoch (a key update). Compared, not the whole stats.
        let (was_at, was_epoch) = (served.session.remote(), served.session.key_epochs().1);
        let was = served.session.reassembly_stats();
        let result = served.session.handle_data(now, remote, header, ct);
        let is = served.session.reassembly_stats();
        if is != was {
            self.stats.data_fragments += is.fragments_received - was.fragments_received;
            self.stats.data_reassembled += is.reassembled - was.reassembled;
            self.stats.data_reassembly_dropped +=
                (is.timed_out + is.evicted) - (was.timed_out + was.evicted);
        }
        if served.session.remote() != was_at {
            self.stats.sessions_migrated += 1;
            debug!(id, %remote, "session moved to a new client address");
            let remote = served.session.remote();
            self.events.push_back(ServerEvent::Migrated { id, remote });
        }
        if result.is_ok() && remote != served.session.remote() {
            self.stats.data_new_address += 1;
        }
        // The session's first request: its offer is load now.
        let first_request = matches!(
            result,
            Ok(Delivered::Datagram(_) | Delivered::Request { .. })
        ) && std::mem::take(&mut served.holds_reservation);
        // A request beyond the session's limit is refused at once, without becoming load.
        let over_limit = matches!(result, Ok(Delivered::Request { .. }))
            && served.session.requests_in_flight() > MAX_REQUESTS;
        // A path validation under way wants its retry one PTO on, a key update the previous
        // key's erasure; either may come before the deadline filed (PROTOCOL.md §5.5, §5.6).
        let refile =
            served.session.pending_path().is_some() || served.session.key_epochs().1 != was_epoch;
        if served.session.has_pending() {
            // A PONG, a PATH_CHALLENGE or a PATH_RESPONSE to send.
            self.sessions.mark_ready(id);
        }
        if first_request {
            self.load.release_reservation();
        }
        if refile {
            self.sessions.refile(id);
        }
        match result {
            Ok(Delivered::Datagram(data)) => {
                self.events.push_back(ServerEvent::Datagram { id, data })
            }
            Ok(Delivered::Request { id: request, .. }) if over_limit => {
                self.stats.requests_over_limit += 1;
                trace!(
                    id,
                    request, "REQUEST refused: too many in flight on its session"
                );
                // The request was never load; if even its refusal finds no room it is
                // forgotten, and its caller's timeout ends it.
                let refused =
                    self.reply_to(now, id, request, ReplyStatus::REFUSED, Bytes::new(), 0);
                if refused.is_err()
                    && let Some(served) = self.sessions.get_mut(id)
                {
                    served.session.forget_request(request);
                }
            }
            Ok(Delivered::Request { id: request, body }) => {
                self.stats.requests_received += 1;
                self.load
                    .request_arrived(now, &self.config, self.sessions.len());
                self.events
                    .push_back(ServerEvent::Request { id, request, body });
            }
            Ok(Delivered::Keepalive) => {}
            Ok(Delivered::Closed(_)) => self.finish(now, id),
            Err(DataDrop::Auth) => self.stats.data_auth_failed += 1,
            Err(DataDrop::Replay) => self.stats.data_replayed += 1,
            Err(DataDrop::BadFrame) => self.stats.data_bad_frame += 1,
            Err(DataDrop::DuplicateRequest) => self.stats.requests_duplicate += 1,
            // A server's session never takes a REPLY (it is a bad frame there), nor does
            // anything else reach it here.
            Ok(Delivered::Reply(_)) | Err(_) => {}
        }
    }

    /// Answers request `request` of session `id` with `status` and `body` (at most
    /// [`crate::MAX_DATAGRAM`] bytes): the REPLY carries the server's load report as of `now`
    /// (PROTOCOL.md §5.8), and the request stops counting as load — one completion, whose time
    /// in flight feeds the service-time estimate. Use [`ReplyStatus::OK`] for an answer,
    /// [`ReplyStatus::DROPPED`] for a request the application let go, [`ReplyStatus::REFUSED`]
    /// for one it could not take. Refused ([`SendError::UnknownRequest`]) for a request not in
    /// flight (never received, or answered); on any refusal the body comes back and the request
    /// stays in flight. Call [`ServerEndpoint::poll_transmit`] afterwards.
    pub fn reply(
        &mut self,
        now: Instant,
        id: SessionId,
        request: u32,
        status: ReplyStatus,
        body: Bytes,
    ) -> Result<(), (SendError, Bytes)> {
        self.reply_to(now, id, request, status, body, 1)?;
        self.load
            .requests_done(now, &self.config, self.sessions.len(), 1);
        match status {
            ReplyStatus::DROPPED => self.stats.replies_dropped += 1,
            ReplyStatus::REFUSED => self.stats.replies_refused += 1,
            _ => {}
        }
        Ok(())
    }

    /// Queues a REPLY whose report leaves out the `leaving` requests it completes.
    fn reply_to(
        &mut self,
        now: Instant,
        id: SessionId,
        request: u32,
        status: ReplyStatus,
        body: Bytes,
        leaving: u32,
    ) -> Result<(), (SendError, Bytes)> {
        let report = self
            .load
            .report(now, &self.config, self.sessions.len(), leaving);
        let Some(served) = self.sessions.get_mut(id) else {
            return Err((SendError::Closed, body));
        };
        served.session.send_reply(request, status, report, body)?;
        self.stats.replies_sent += 1;
        self.sessions.mark_ready(id);
        Ok(())
    }

    /// Forgets request `request` of session `id` without answering it (no REPLY goes: its
    /// caller's timeout ends it) — for a runtime that could not even queue a refusal. It stops
    /// counting as load. Whether it was in flight.
    pub fn forget_request(&mut self, now: Instant, id: SessionId, request: u32) -> bool {
        let forgotten = self
            .sessions
            .get_mut(id)
            .is_some_and(|s| s.session.forget_request(request));
        if forgotten {
            self.stats.requests_abandoned += 1;
            self.load
                .requests_done(now, &self.config, self.sessions.len(), 1);
        }
        forgotten
    }

    /// Requests in flight on session `id` (received, not answered); 0 once it is gone.
    pub fn requests_in_flight(&self, id: SessionId) -> usize {
        self.sessions
            .get(id)
            .map_or(0, |s| s.session.requests_in_flight())
    }

    fn finish(&mut self, now: Instant, id: SessionId) {
        let until = now + self.config.cookie_lifetime;
        // Every cookie a genuine client's INIT for this race can carry (the OFFER's, or one
        // COOKIE_CHANGE minted within its lifetime) is dead two lifetimes after the session
        // began, so after it ended (PROTOCOL.md §4.8).
        let early_until = now + 2 * self.config.cookie_lifetime;
        if let Some(mut served) = self.sessions.remove(id, until, early_until) {
            let reason = served
                .session
                .close_reason()
                .unwrap_or(CloseReason::IdleTimeout);
            // Its requests in flight end with it: no longer load (each a completion).
            let abandoned = served.session.take_requests().len() as u32;
            if abandoned > 0 {
                self.stats.requests_abandoned += u64::from(abandoned);
                self.load
                    .requests_done(now, &self.config, self.sessions.len(), abandoned);
            }
            match reason {
                CloseReason::IdleTimeout => self.stats.sessions_idle_timeout += 1,
                CloseReason::Unresponsive => self.stats.sessions_unresponsive += 1,
                CloseReason::Local(CloseCode::REVOKED) => self.stats.sessions_revoked += 1,
                _ => {}
            }
            self.stats.sessions_closed += 1;
            if self.config.count_sessions {
                self.load
                    .record_service(now, &self.config, self.sessions.len(), 1);
            }
            self.events.push_back(ServerEvent::Closed { id, reason });
            debug!(id, ?reason, "session closed");
        }
    }

    /// One open session's counters (packets, drops, pings).
    pub fn session_stats(&self, id: SessionId) -> Option<crate::session::SessionStats> {
        self.sessions.get(id).map(|s| s.session.stats())
    }

    /// What the server side needs to accept a stream (one proxied TCP connection,
    /// [`crate::stream`]) for an open session: its id, the client's address and the stream
    /// keys. None once the session is gone.
    pub fn stream_ticket(&self, id: SessionId) -> Option<crate::stream::StreamTicket> {
        self.sessions.get(id).map(|s| crate::stream::StreamTicket {
            session_id: id,
            peer: s.session.remote(),
            keys: s.session.stream_keys(),
        })
    }

    /// Whether an open session's first datagram rode in its INIT as early data (PROTOCOL.md
    /// §4.8): encrypted without forward secrecy, and possibly also sent to another server by a
    /// client that lost this one's ACCEPTs. An application that must not run a request twice
    /// can refuse it when this is true. None once the session is gone.
    pub fn early_data(&self, id: SessionId) -> Option<bool> {
        self.sessions.get(id).map(|s| s.early)
    }

    /// The authenticated client of an open session: its static key and allow-list name.
    pub fn client(&self, id: SessionId) -> Option<&AllowEntry> {
        self.sessions.get(id).map(|s| &s.client)
    }

    /// The client's address of an open session (where the handshake came from, or where the
    /// client validly moved to).
    pub fn remote(&self, id: SessionId) -> Option<SocketAddr> {
        self.sessions.get(id).map(|s| s.session.remote())
    }

    /// The allow-list in force (None: any client).
    pub fn allow_list(&self) -> Option<&Arc<AllowList>> {
        self.config.allow.as_ref()
    }

    /// Replaces the allow-list (None: any client may connect) at once: new INITs are judged by
    /// it, and every open session whose client key it no longer lists is closed with
    /// [`CloseCode::REVOKED`] (its CLOSE goes out with the next transmits; counted in
    /// `sessions_revoked` when it ends). Returns how many sessions were revoked. A session's
    /// name follows the new list.
    pub fn set_allow_list(&mut self, allow: Option<Arc<AllowList>>) -> usize {
        let mut revoked = 0;
        for id in self.sessions.ids() {
            let Some(served) = self.sessions.get_mut(id) else {
                continue;
            };
            match allow.as_deref().map(|l| l.get(&served.client.key)) {
                None => {}
                Some(Some(entry)) => served.client = entry,
                Some(None) => {
                    if served.session.close_reason().is_none() {
                        debug!(id, client = %served.client.key.to_hex(), "session revoked");
                        revoked += 1;
                    }
                    self.close(id, CloseCode::REVOKED);
                }
            }
        }
        self.acceptor.retain_secrets(allow.as_deref());
        self.config.allow = allow;
        revoked
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
        let Lent { mut cx, desk, .. } = self.lend();
        if let Some(t) = desk.release_held(&mut cx, now, buf) {
            return Some(t);
        }
        while let Some(id) = self.sessions.pop_ready() {
            let Some(served) = self.sessions.get_mut(id) else {
                continue;
            };
            if let Some(t) = served.session.poll_transmit(now, buf) {
                let (size, destination) = (t.size, t.destination);
                let source = served.local;
                // A datagram sent may want its liveness probe before the deadline filed.
                self.sessions.refile(id);
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
        let held = self.desk.next_due();
        let gated_wait = match self.config.answer {
            AnswerPolicy::Gated { .. } if held.is_some() => self.load.next_expiry(),
            _ => None,
        };
        [sessions, held, gated_wait]
            .into_iter()
            .flatten()
            .chain(std::iter::once(self.jar.next_rotation()))
            .min()
    }

    /// Fires every timer due at `now`: cookie rotation, keepalives, idle timeouts. Call
    /// [`ServerEndpoint::poll_transmit`] afterwards: held offers that came due (paced) or whose
    /// hold ended (gated) leave from there.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.load.expire(now);
        if self.jar.rotate_if_due(now, &mut *self.rng) {
            self.admission.sweep(now);
            self.sessions.sweep_ended(now);
            debug!("cookie keys rotated");
        }
        for id in self.sessions.fire_timers(now) {
            self.finish(now, id);
        }
        self.stats.data_reassembly_dropped += self.sessions.take_reassembly_timeouts();
    }

    /// Entries in the session timer heap (open sessions plus ended ones not yet due), for tests
    /// and benchmarks of the timer cost.
    pub fn timer_entries(&self) -> usize {
        self.sessions.timer_entries()
    }
}
