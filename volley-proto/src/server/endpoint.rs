//! The server endpoint: routes datagrams to the stateless responder or to an established session,
//! and owns the session table. State is created only after a cookie verified, admission passed
//! and the Noise message authenticated (S2, S3).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use rand_core::CryptoRngCore;
use tracing::{debug, trace};

use super::admission::{Admission, ProbeRefusal, Refusal};
use super::answer::{AnswerPolicy, Held, HeldQueue, Reservations, pace_delay};
use super::estimate::{ServiceEstimator, expected_completion};
use super::responder::{self, InitCheck};
use super::sessions::{Served, SessionTable};
use super::{AppLoad, ServerConfig, ServerLoad, ServerStats};
use crate::coding::DecodeError;
use crate::cookie::CookieJar;
use crate::crypto::{self, PublicKey};
use crate::packet::{
    Accept, Init, KeyId, LoadHint, MAX_REDIRECT_ADDRS, Packet, Probe, REDIRECT_ADDR_LEN, Redirect,
    Tag,
};
use crate::session::{CloseCode, CloseReason, DataDrop, Delivered, SendError, Session};
use crate::util::{canonical, encode_addr};
use crate::{INIT_AMPLIFICATION, MAX_NOISE_LEN, Transmit};

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
        /// The plaintext.
        data: Vec<u8>,
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
    key_id: KeyId,
    rng: Box<dyn CryptoRngCore + Send>,
    jar: CookieJar,
    admission: Admission,
    /// Established sessions, their timers, the duplicate-INIT filter and the ended list.
    sessions: SessionTable,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
    app_load: u32,
    /// The application's running total of completed requests, as last reported.
    app_completed: u64,
    /// The mean service time estimate (L5).
    service: ServiceEstimator,
    /// Probes held for a later offer (L1): bounded by `max_held`, fixed-size entries.
    held: HeldQueue,
    /// Recently sent offers, counted as load (expiry times only; at most 4 × capacity).
    reserved: Reservations,
    /// Where the next REDIRECT starts naming peers, so refusals spread over them.
    peer_cursor: usize,
    /// When the last well-formed INIT arrived (handshakes compete with a PROBE flood).
    last_init: Option<Instant>,
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
            last_init: None,
        }
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

    /// Tells the service estimate how many requests are in service from `now`, and how many
    /// just completed.
    fn record_service(&mut self, now: Instant, completed: u64) {
        let requests = self.in_flight();
        let in_service = self.config.capacity.map_or(requests, |c| requests.min(c));
        self.service.record(now, in_service, completed);
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

    /// Requests in flight: the application's, plus the sessions when they count as load.
    fn in_flight(&self) -> u32 {
        let sessions = if self.config.count_sessions {
            self.sessions.len() as u32
        } else {
            0
        };
        sessions.saturating_add(self.app_load)
    }

    /// Requests in flight plus offers outstanding: what the answer policy and the hint weigh.
    fn effective(&mut self, now: Instant) -> u32 {
        self.in_flight().saturating_add(self.reserved.count(now))
    }

    /// The expected completion time of one more request with `effective` requests and offers
    /// in flight (L5).
    fn expected(&self, now: Instant, effective: u32) -> std::time::Duration {
        expected_completion(self.service.mean(now), effective, self.config.capacity)
    }

    /// The load hint an offer written now carries (L2, L5); `own_reserved`: the offer's own
    /// reservation is already counted and must be left out.
    fn hint(&mut self, now: Instant, own_reserved: bool) -> LoadHint {
        let mut effective = self.effective(now);
        if own_reserved {
            effective = effective.saturating_sub(1);
        }
        let expected = self.expected(now, effective);
        LoadHint {
            in_flight: effective,
            capacity: self.config.capacity.unwrap_or(0),
            expected_us: expected.as_micros().clamp(1, u128::from(u32::MAX)) as u32,
        }
    }

    /// Whether every slot is taken by requests in flight (L6: such a server still answers).
    fn busy(&self) -> bool {
        self.config.capacity.is_some_and(|c| self.in_flight() >= c)
    }

    /// Whether a slot is free for one more request, counting offers outstanding (gated).
    fn slot_free(&mut self, now: Instant) -> bool {
        let effective = self.effective(now);
        self.config.capacity.is_none_or(|c| effective < c)
    }

    /// Whether the server cannot open another session: the hard `max_sessions` limit.
    fn full(&self) -> bool {
        self.config
            .max_sessions
            .is_some_and(|m| self.sessions.len() as u32 >= m)
    }

    /// Counts an offer as load for `config.reservation` from `from` (L4). Only with a capacity:
    /// without one there is nothing to reserve. At most 4 × capacity are kept (a flood of
    /// spoofed probes raises the expected completion by at most 4 service times).
    fn reserve(&mut self, from: Instant) {
        match self.config.capacity {
            Some(c) if !self.config.reservation.is_zero() => {
                let bound = (c as usize).saturating_mul(4).max(1);
                self.reserved.add(from + self.config.reservation, bound);
            }
            _ => {}
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

    /// A probe-sized datagram of another version gets VERSIONS (PROTOCOL.md §3.9): version 1
    /// is all this server speaks. Never for version 0 (itself a VERSIONS: two servers must not
    /// answer each other), never to a datagram shorter than a PROBE (no amplification), and
    /// charged to the PROBE budget like a PROBE.
    fn answer_versions(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        version: u8,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Option<Transmit> {
        if version == 0 || datagram.len() < crate::PROBE_MIN_LEN {
            return None;
        }
        match self.admission.admit_probe(now, remote.ip()) {
            Ok(()) => {}
            Err(ProbeRefusal::OverBudget) => {
                self.stats.probes_over_budget += 1;
                return None;
            }
            Err(ProbeRefusal::RateLimited) => {
                self.stats.probes_rate_limited += 1;
                return None;
            }
        }
        let size = crate::packet::encode_versions(datagram, out).ok()?;
        self.stats.versions_sent += 1;
        trace!(%remote, version, "other version: VERSIONS sent");
        Some(Transmit {
            destination: remote,
            size,
            source: Some(local),
        })
    }

    /// PROBE → OFFER now, later, or never, by the answer policy (L1). Nothing about the probe is
    /// kept unless it is held, and a held probe is a fixed-size entry in a bounded queue.
    fn handle_probe(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        probe: &Probe<'_>,
        probe_len: usize,
        out: &mut [u8],
    ) -> Option<Transmit> {
        self.stats.probes_received += 1;
        let Some(service) = self.config.services.iter().position(|s| s == probe.service) else {
            self.stats.probes_unknown_service += 1;
            trace!(%remote, "probe withheld: unknown service");
            return None;
        };
        if self.admission.under_load(now) {
            self.stats.probes_withheld_under_load += 1;
            trace!(%remote, "probe withheld: under load");
            return None;
        }
        if self.full() {
            self.stats.probes_withheld_full += 1;
            trace!(%remote, "probe withheld: at max_sessions");
            return None;
        }
        match self.admission.admit_probe(now, remote.ip()) {
            Ok(()) => {}
            Err(ProbeRefusal::OverBudget) => {
                self.stats.probes_over_budget += 1;
                trace!(%remote, "probe dropped: probe budget spent");
                return None;
            }
            Err(ProbeRefusal::RateLimited) => {
                self.stats.probes_rate_limited += 1;
                trace!(%remote, "probe dropped: source over its rate while pressed");
                return None;
            }
        }
        // (when the offer leaves, whether it reserves at arrival)
        let (due, reserve_early) = match (self.config.answer, self.config.capacity) {
            (AnswerPolicy::Gated { max_hold }, Some(_)) => {
                if self.slot_free(now) && self.held.len() == 0 {
                    (now, false)
                } else if max_hold.is_zero() {
                    // Nowhere to wait: answer at once, busy (L6).
                    (now, false)
                } else {
                    // No free slot (or earlier probes wait first): hold until one frees.
                    (now + max_hold, false)
                }
            }
            (AnswerPolicy::Paced { max_delay, divisor }, Some(_)) => {
                let effective = self.effective(now);
                let expected = self.expected(now, effective);
                (
                    now + pace_delay(expected, divisor, max_delay),
                    !self.config.reservation.is_zero(),
                )
            }
            _ => (now, false),
        };
        let held = Held {
            remote,
            local,
            tag: probe.tag,
            service: service as u16,
            probe_len: probe_len.min(usize::from(u16::MAX)) as u16,
            due,
            reserved: reserve_early,
        };
        if due == now {
            if reserve_early {
                self.reserve(now);
            }
            let t = self.write_offer(now, &held, out);
            if t.is_some() && !reserve_early {
                self.reserve(now);
            }
            return t;
        }
        if !self.held.push(held, self.config.max_held) {
            self.stats.probes_dropped_queue_full += 1;
            trace!(%remote, "probe dropped: held queue full");
            return None;
        }
        if reserve_early {
            // Reserved on arrival, so the next probe of a burst already sees this offer (L4).
            self.reserve(due);
        }
        self.stats.probes_held += 1;
        None
    }

    fn write_offer(&mut self, now: Instant, held: &Held, out: &mut [u8]) -> Option<Transmit> {
        let load = self.hint(now, held.reserved);
        let busy = self.busy();
        let service = self.config.services.get(usize::from(held.service))?;
        let t = responder::write_offer(
            now,
            &self.jar,
            &mut self.stats,
            held.tag,
            service,
            usize::from(held.probe_len),
            held.remote,
            held.local,
            self.key_id,
            load,
            out,
        );
        if t.is_some() && busy {
            self.stats.offers_busy += 1;
        }
        t
    }

    /// Sends the next held offer that is due (paced), has a free slot or has waited `max_hold`
    /// (gated), dropping held probes the server can no longer answer (`max_sessions` reached,
    /// under load).
    fn release_held(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        while let Some(front) = self.held.front().copied() {
            let gated = matches!(self.config.answer, AnswerPolicy::Gated { .. });
            let due = front.due <= now;
            if gated {
                // Gated: a free slot releases the first in line; `due` is its hold's end, when
                // it is answered anyway (busy, L6). Capacity removed: every slot is free.
                if !due && (!self.slot_free(now) || self.admission.under_load(now) || self.full()) {
                    return None;
                }
            } else if !due {
                return None;
            }
            self.held.pop();
            if self.full() || self.admission.under_load(now) {
                self.stats.probes_dropped_hold_expired += 1;
                trace!(remote = %front.remote, "held probe dropped: full or under load");
                continue;
            }
            if let Some(t) = self.write_offer(now, &front, out) {
                if gated {
                    self.reserve(now);
                }
                return Some(t);
            }
        }
        None
    }

    fn handle_init(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        init: &Init<'_>,
        init_len: usize,
        out: &mut [u8],
    ) -> Option<Transmit> {
        self.stats.inits_received += 1;
        self.last_init = Some(now);
        if !self.config.services.iter().any(|s| s == init.service) {
            self.stats.init_unknown_service += 1;
            return None;
        }
        let cookie_age = match responder::check_init(
            now,
            &self.jar,
            &mut self.stats,
            init,
            init_len,
            remote,
            local,
            out,
        ) {
            InitCheck::Drop => return None,
            InitCheck::Reply(t) => return Some(t),
            InitCheck::Proceed { age } => age,
        };
        // Duplicate filter, consulted only after the MAC (R1): same client, same race → same ACCEPT.
        if let Some(served) = self.sessions.by_origin(&(remote, init.tag)) {
            self.stats.init_duplicate += 1;
            let size = served.accept.len();
            out.get_mut(..size)?.copy_from_slice(&served.accept);
            return Some(Transmit {
                destination: remote,
                size,
                source: Some(local),
            });
        }
        if self.sessions.ended_recently(now, &(remote, init.tag)) {
            self.stats.init_after_close += 1;
            trace!(%remote, "INIT dropped: its session already ended");
            return None;
        }
        let mut honoured = false;
        if self.full() {
            // An offer made moments ago (within its reservation) promised this client a slot:
            // keep the promise (L6). Bounded: a server at `max_sessions` makes no new offers.
            // With reservations off, offers promise nothing.
            if cookie_age >= self.config.reservation {
                self.stats.init_refused_full += 1;
                return self.refuse(remote, local, &init.tag, init_len, out);
            }
            honoured = true;
        }
        match self.admission.admit(now, remote.ip()) {
            Ok(()) => {}
            Err(Refusal::RateLimited) => {
                // An abusive source gets nothing, not even a refusal.
                self.stats.init_rate_limited += 1;
                return None;
            }
            Err(Refusal::UnderLoad) => {
                self.stats.init_under_load += 1;
                return self.refuse(remote, local, &init.tag, init_len, out);
            }
        }
        let prologue = crypto::prologue(init.service, &init.tag, init.cookie);
        let local_id = self.fresh_session_id();
        let mut payload1 = [0u8; MAX_NOISE_LEN];
        let mut msg2 = [0u8; MAX_NOISE_LEN];
        let mut client_id = None;
        let result = crypto::respond(
            &self.config.keypair,
            &prologue,
            init.noise,
            &mut payload1,
            &mut *self.rng,
            |p| {
                if let Ok(id) = <[u8; 4]>::try_from(p) {
                    client_id = Some(u32::from_be_bytes(id));
                }
                local_id.to_be_bytes()
            },
            &mut msg2,
        );
        let (keys, n2, client_id) = match (result, client_id) {
            (Ok((_, n2, keys)), Some(cid)) => (keys, n2, cid),
            _ => {
                self.stats.init_handshake_failed += 1;
                trace!(%remote, "INIT dropped: handshake failed");
                return None;
            }
        };
        let size = Accept {
            receiver_id: client_id,
            noise: &msg2[..n2],
        }
        .encode(out)
        .ok()?;
        if size > init_len.saturating_mul(INIT_AMPLIFICATION) {
            self.stats.amplification_suppressed += 1;
            return None;
        }
        let session = Session::new(now, local_id, client_id, remote, keys, self.config.session);
        // The offer this session came from stays outstanding until it turns into load: now if
        // sessions count as load, else when the session's first request arrives.
        let counts = self.config.count_sessions;
        self.sessions.insert(
            local_id,
            Served {
                session,
                local,
                origin: (remote, init.tag),
                accept: out[..size].to_vec(),
                holds_reservation: !counts,
            },
        );
        if counts {
            self.reserved.release_one();
            self.record_service(now, 0);
        }
        if honoured {
            self.stats.init_honoured_full += 1;
        }
        self.stats.sessions_opened += 1;
        self.events.push_back(ServerEvent::Opened {
            id: local_id,
            remote,
        });
        debug!(%remote, id = local_id, "session opened");
        Some(Transmit {
            destination: remote,
            size,
            source: Some(local),
        })
    }

    /// Tells a client whose cookie verified (so its address is proven) that this server will not
    /// take it, so it re-races elsewhere at once: a REDIRECT naming up to
    /// [`MAX_REDIRECT_ADDRS`] of the configured peers (R3), as many as fit within the INIT's
    /// size. Successive refusals start at successive peers, so redirected clients spread.
    fn refuse(
        &mut self,
        remote: SocketAddr,
        local: SocketAddr,
        tag: &Tag,
        init_len: usize,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let fit = init_len.saturating_sub(Redirect::HEADER_LEN) / REDIRECT_ADDR_LEN;
        let peers: Vec<SocketAddr> = self
            .config
            .peers
            .iter()
            .copied()
            .filter(|p| *p != remote && *p != local)
            .collect();
        let n = peers.len().min(MAX_REDIRECT_ADDRS).min(fit);
        let mut addrs = [0u8; MAX_REDIRECT_ADDRS * REDIRECT_ADDR_LEN];
        for i in 0..n {
            let peer = peers[(self.peer_cursor + i) % peers.len()];
            addrs[i * REDIRECT_ADDR_LEN..(i + 1) * REDIRECT_ADDR_LEN]
                .copy_from_slice(&encode_addr(peer));
        }
        if !peers.is_empty() {
            self.peer_cursor = (self.peer_cursor + 1) % peers.len();
        }
        let size = Redirect {
            tag: *tag,
            servers: &addrs[..n * REDIRECT_ADDR_LEN],
        }
        .encode(out)
        .ok()?;
        if size > init_len {
            self.stats.amplification_suppressed += 1;
            return None;
        }
        self.stats.redirects_sent += 1;
        trace!(%remote, peers = n, "INIT refused: redirect sent");
        Some(Transmit {
            destination: remote,
            size,
            source: Some(local),
        })
    }

    fn fresh_session_id(&mut self) -> SessionId {
        loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.sessions.contains(id) {
                return id;
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
            if reason == CloseReason::IdleTimeout {
                self.stats.sessions_idle_timeout += 1;
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

    /// Queues a datagram on a session.
    pub fn send(&mut self, id: SessionId, data: &[u8]) -> Result<(), SendError> {
        let served = self.sessions.get_mut(id).ok_or(SendError::Closed)?;
        served.session.send_datagram(data)?;
        self.sessions.mark_ready(id);
        Ok(())
    }

    /// Queues a datagram the caller owns on a session, without copying it; on refusal it comes
    /// back with the reason.
    pub fn send_owned(&mut self, id: SessionId, data: Vec<u8>) -> Result<(), (SendError, Vec<u8>)> {
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
            if let Some(size) = served.session.poll_transmit(buf) {
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
