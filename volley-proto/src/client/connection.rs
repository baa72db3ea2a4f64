//! One client connection: race → handshake → session, and back to a race when the server dies.

use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use thiserror::Error;
use tracing::{debug, trace};

use super::handshake::{Accepted, ExpectAccept};
use super::pool::{Ejection, PoolState, ServerOutcome, SharedPoolState};
use super::race::{OfferOutcome, Race, RaceTimeout, RaceTimers, Winner};
use super::{ClientConfig, ClientStats};
use crate::crypto::PublicKey;
use crate::packet::{KeyId, LoadHint, Offer, Packet, Tag};
use crate::session::{CloseCode, CloseReason, DataDrop, Delivered, SendError, Session};
use crate::util::canonical;
use crate::{TAG_LEN, Transmit};

/// Why a connection gave up. Terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No server answered the probe before the race deadline.
    #[error("no server answered within {0:?}")]
    NoOffer(Duration),
    /// The selected server never accepted, and no other server remained to race.
    #[error("handshake with {0} timed out")]
    HandshakeTimeout(SocketAddr),
    /// The selected server refused (full or under load), and no other server remained to race.
    #[error("{0} refused the session (full) and no other server remains")]
    Refused(SocketAddr),
    /// The session's server was lost, and no other server (or failover) remained.
    #[error("lost server {0} and no other server remains")]
    ServerLost(SocketAddr),
    /// The pool is empty, or no server key is pinned.
    #[error("no servers or no pinned server keys")]
    NothingToRace,
    /// Servers answered before the race deadline, but every offer named a key this client
    /// does not pin (`offers_unknown_key`; the count of such offers in the last race): the
    /// client was given the wrong server key, or the servers the wrong key file.
    #[error("{0} offers came from servers whose keys are not pinned, and none from a pinned one")]
    UnpinnedKey(u32),
}

/// What the application should know. Every outcome of C3–C6 and R5 shows up here.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A race started (`attempt` 0 is the first; more follow failovers).
    RaceStarted {
        /// 0 for the first race.
        attempt: u32,
        /// How many servers it probes.
        servers: usize,
    },
    /// The earliest valid offer won (C3, C4).
    Selected {
        /// The winner.
        server: SocketAddr,
        /// Its answer time (C3).
        answer_time: Duration,
        /// Its load hint.
        load: LoadHint,
    },
    /// A `Window` or `NBest` race collected a valid offer; the choice comes when the window
    /// closes (L3).
    Collected {
        /// Who offered.
        server: SocketAddr,
        /// Its answer time.
        answer_time: Duration,
        /// Its load hint.
        load: LoadHint,
    },
    /// The selected server refused and named other servers; those not known before joined the
    /// pool and the next race (R3).
    Redirected {
        /// The refusing server.
        from: SocketAddr,
        /// The addresses added to the pool.
        added: Vec<SocketAddr>,
    },
    /// An offer arrived after the race was decided: void (C5). Its answer time is still reported.
    LateOffer {
        /// Who answered late.
        server: SocketAddr,
        /// Its answer time.
        answer_time: Duration,
        /// Its load hint.
        load: LoadHint,
    },
    /// The session is up.
    Established {
        /// The server.
        server: SocketAddr,
        /// From INIT sent to ACCEPT received.
        handshake_time: Duration,
        /// The server this connection failed over from, if this is a failover.
        failover_from: Option<SocketAddr>,
    },
    /// An application datagram arrived (the buffer it was decrypted in).
    Datagram(Bytes),
    /// This connection's failure ejected a server from the client's races for `length` (L7).
    Ejected {
        /// The server.
        server: SocketAddr,
        /// How long it stays out before it is readmitted on probation.
        length: Duration,
    },
    /// The server was lost; a new race starts if failovers remain (R5).
    ServerLost {
        /// The lost server.
        server: SocketAddr,
        /// How it was lost.
        reason: CloseReason,
    },
    /// The connection failed for good.
    Failed(ConnectError),
    /// The connection is closed (locally, or by the server for good).
    Closed(CloseReason),
}

// One Connection exists per connect, so the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
enum State {
    /// Racing: waiting for offers.
    ExpectOffer(Race),
    /// Waiting for the winner's ACCEPT.
    ExpectAccept(ExpectAccept),
    Established {
        session: Session,
        server: SocketAddr,
    },
    /// Refused, waiting before racing `targets` again (L6).
    Backoff {
        until: Instant,
        targets: Vec<SocketAddr>,
    },
    Done,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(id) = self.session_id.take() {
            self.shared().release_session_id(id);
        }
    }
}

/// What identifies the client connection a datagram is for, read from the datagram alone: the
/// race tag (OFFER, COOKIE_CHANGE, REDIRECT) or the receiver id (ACCEPT, DATA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// A race's tag.
    Tag(Tag),
    /// The client's own session id.
    Receiver(u32),
}

impl RouteKey {
    /// The key `datagram` carries; None for anything a client does not take (or cannot decode).
    pub fn of(datagram: &[u8]) -> Option<Self> {
        match Packet::decode(datagram).ok()? {
            Packet::Offer(o) => Some(Self::Tag(o.tag)),
            Packet::CookieChange(cc) => Some(Self::Tag(cc.tag)),
            Packet::Redirect(rd) => Some(Self::Tag(rd.tag)),
            Packet::Accept(a) => Some(Self::Receiver(a.receiver_id)),
            Packet::Data(h, _) => Some(Self::Receiver(h.receiver_id)),
            _ => None,
        }
    }
}

/// A client connection's protocol state. Drive it with `handle`, `handle_timeout`, and the
/// `poll_*` methods after every input.
pub struct Connection {
    config: ClientConfig,
    pool: Vec<SocketAddr>,
    /// The pinned keys with their key ids, hashed once rather than per offer.
    pinned: Vec<(KeyId, PublicKey)>,
    rng: Box<dyn CryptoRngCore + Send>,
    state: State,
    /// The last decided race, kept only to classify late offers (its tag is retired).
    decided: Option<Race>,
    events: VecDeque<ClientEvent>,
    stats: ClientStats,
    attempts: u32,
    failover_from: Option<SocketAddr>,
    /// `NBest`: the servers chosen besides this connection's, for sibling connections.
    extra_winners: Vec<Winner>,
    /// Servers added by REDIRECTs, probed first in the next race (R3).
    redirected: Vec<SocketAddr>,
    /// How many servers REDIRECTs added over the connection's life (capped).
    redirect_added: usize,
    /// What the client knows about its pool, shared with its other connections (L6, L7).
    shared: SharedPoolState,
    /// Refusals in a row (reset by an established session), for the back-off.
    refusals: u32,
    /// The session id this connection holds in the shared state (its handshake's or session's),
    /// given back when another replaces it or the connection is dropped.
    session_id: Option<u32>,
    /// `stats.offers_unknown_key` when the current race started.
    unknown_key_at_race: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts racing `pool` at `now`, with pool knowledge of its own.
    pub fn new(
        now: Instant,
        config: ClientConfig,
        pool_in: Vec<SocketAddr>,
        rng: Box<dyn CryptoRngCore + Send>,
    ) -> Self {
        let shared = PoolState::shared(config.ejection);
        Self::with_state(now, config, pool_in, rng, shared)
    }

    /// Starts racing `pool` at `now`, sharing pool knowledge (answer times, ejected servers) with
    /// the other connections of one client.
    pub fn with_state(
        now: Instant,
        config: ClientConfig,
        pool_in: Vec<SocketAddr>,
        rng: Box<dyn CryptoRngCore + Send>,
        shared: SharedPoolState,
    ) -> Self {
        let mut pool: Vec<SocketAddr> = Vec::with_capacity(pool_in.len());
        for addr in pool_in.into_iter().map(canonical) {
            if !pool.contains(&addr) {
                pool.push(addr);
            }
        }
        let pinned = config
            .server_keys
            .iter()
            .map(|k| (k.key_id(), *k))
            .collect();
        let mut c = Self {
            config,
            pool,
            pinned,
            rng,
            state: State::Done,
            decided: None,
            events: VecDeque::new(),
            stats: ClientStats::default(),
            attempts: 0,
            failover_from: None,
            extra_winners: Vec::new(),
            redirected: Vec::new(),
            redirect_added: 0,
            shared,
            refusals: 0,
            session_id: None,
            unknown_key_at_race: 0,
        };
        if c.pool.is_empty() || c.config.server_keys.is_empty() {
            c.events
                .push_back(ClientEvent::Failed(ConnectError::NothingToRace));
        } else {
            let pool = c.pool.clone();
            c.start_race(now, pool);
        }
        c
    }

    /// The pool knowledge, locked. A poisoned lock only ever guards plain numbers: use them.
    fn shared(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool knowledge this connection shares with its client's other connections.
    pub fn pool_state(&self) -> SharedPoolState {
        SharedPoolState::clone(&self.shared)
    }

    /// Reports a failure of `server` to the shared pool knowledge (L7).
    fn report_failure(&mut self, now: Instant, server: SocketAddr) {
        let verdict = self.shared().report(now, server, ServerOutcome::Failure);
        if let Ejection::Ejected { until } = verdict {
            self.stats.ejections += 1;
            let length = until.saturating_duration_since(now);
            debug!(%server, ?length, "server ejected from races");
            self.events
                .push_back(ClientEvent::Ejected { server, length });
        }
    }

    /// The probe retransmission timers of the next race: the first retransmission follows the
    /// measured answer times (L6).
    fn race_timers(&self) -> RaceTimers {
        let mut t = self.config.race;
        t.initial_rto = self.shared().answers().rto(
            self.config.race.initial_rto,
            self.config.min_rto,
            self.config.race.max_rto,
        );
        t
    }

    fn start_race(&mut self, now: Instant, targets: Vec<SocketAddr>) {
        self.unknown_key_at_race = self.stats.offers_unknown_key;
        // Ejected servers sit races out (L7), unless every candidate is ejected.
        let (mut targets, left_out) = self.shared().eligible(now, targets);
        self.stats.ejected_skipped += left_out as u64;
        // Probes leave in a random order: on a fast network the send order is a visible part of
        // the answer time, and a fixed order would hand every race to the first server listed.
        for i in (1..targets.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            targets.swap(i, j);
        }
        // Fan-out (L3): the first d of the shuffle are a uniform random subset. Servers a
        // REDIRECT just named go in first, so the refusal's advice is followed (R3).
        let redirected = std::mem::take(&mut self.redirected);
        targets.sort_by_key(|t| !redirected.contains(t));
        if let Some(d) = self.config.fanout {
            let keep = d
                .max(1)
                .max(redirected.iter().filter(|r| targets.contains(r)).count());
            targets.truncate(keep);
        }
        let mut tag = [0u8; TAG_LEN];
        self.rng.fill_bytes(&mut tag);
        self.stats.races += 1;
        self.events.push_back(ClientEvent::RaceStarted {
            attempt: self.attempts,
            servers: targets.len(),
        });
        debug!(
            servers = targets.len(),
            attempt = self.attempts,
            "race started"
        );
        let timers = self.race_timers();
        let race = Race::start(
            now,
            Tag(tag),
            &self.config.service,
            targets,
            timers,
            self.config.probe_size,
            self.config.policy,
        );
        self.state = State::ExpectOffer(race);
    }

    /// A connection that skips the race: it opens a session with `winner`, an offer another
    /// connection's `NBest` race chose (see [`Connection::take_extra_winners`]). It must send from
    /// the same address as that race (the cookie is bound to it); `tag` is that race's tag. On
    /// losing its server it races `pool` like any connection.
    pub fn from_winner(
        now: Instant,
        config: ClientConfig,
        pool: Vec<SocketAddr>,
        tag: Tag,
        winner: Winner,
        rng: Box<dyn CryptoRngCore + Send>,
        shared: SharedPoolState,
    ) -> Self {
        let mut c = Self::with_state(now, config, Vec::new(), rng, shared);
        c.events.clear();
        for addr in pool.into_iter().map(canonical) {
            if !c.pool.contains(&addr) {
                c.pool.push(addr);
            }
        }
        c.begin_handshake(now, tag, winner);
        c
    }

    /// `NBest`: the offers chosen besides this connection's own, best first. Empty for other
    /// policies and after the first call.
    pub fn take_extra_winners(&mut self) -> Vec<Winner> {
        std::mem::take(&mut self.extra_winners)
    }

    /// The tag of the race that chose this connection's current server, once decided.
    pub fn decided_tag(&self) -> Option<Tag> {
        match &self.state {
            State::ExpectAccept(hs) => Some(hs.tag),
            _ => self.decided.as_ref().and_then(|r| r.retired_tag()),
        }
    }

    /// The keys a datagram for this connection can carry (see [`RouteKey::of`]): its live and
    /// retired race tags, its handshake's tag and receiver id, or its session's receiver id.
    /// A runtime serving many connections on one socket indexes them by these — refreshed after
    /// every call into the connection — and confirms a hit with [`Connection::claims`].
    pub fn route_keys(&self) -> [Option<RouteKey>; 2] {
        let retired = self
            .decided
            .as_ref()
            .and_then(|r| r.retired_tag())
            .map(RouteKey::Tag);
        match &self.state {
            State::ExpectOffer(r) => [r.live_tag().map(RouteKey::Tag), retired],
            State::ExpectAccept(hs) => [
                Some(RouteKey::Tag(hs.tag)),
                Some(RouteKey::Receiver(hs.local_id)),
            ],
            State::Established { session, .. } => {
                [retired, Some(RouteKey::Receiver(session.local_id()))]
            }
            State::Backoff { .. } | State::Done => [retired, None],
        }
    }

    /// Whether `datagram` from `from` belongs to this connection: its race's tag, its handshake
    /// (server and tag, or receiver id) or its session's receiver id. For a runtime that runs
    /// several connections (an `NBest` group) on one socket.
    pub fn claims(&self, from: SocketAddr, datagram: &[u8]) -> bool {
        let from = canonical(from);
        let Ok(packet) = Packet::decode(datagram) else {
            return false;
        };
        let race_tag = |tag: &Tag| {
            let live = match &self.state {
                State::ExpectOffer(r) => r.live_tag() == Some(*tag),
                _ => false,
            };
            live || self
                .decided
                .as_ref()
                .is_some_and(|r| r.retired_tag() == Some(*tag) && r.targets().contains(&from))
        };
        match (&packet, &self.state) {
            (Packet::Offer(o), _) => race_tag(&o.tag),
            (Packet::CookieChange(cc), State::ExpectAccept(hs)) => {
                from == hs.server && cc.tag == hs.tag
            }
            (Packet::Redirect(rd), State::ExpectAccept(hs)) => {
                from == hs.server && rd.tag == hs.tag
            }
            (Packet::Accept(a), State::ExpectAccept(hs)) => a.receiver_id == hs.local_id,
            (Packet::Data(h, _), State::Established { session, .. }) => {
                h.receiver_id == session.local_id()
            }
            _ => false,
        }
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        let mut s = self.stats;
        if let State::ExpectOffer(race) = &self.state {
            s.probes_sent += race.probes_sent();
        }
        if let State::Established { session, .. } = &self.state {
            let ss = session.stats();
            s.data_dropped += ss.dropped_auth + ss.dropped_replay + ss.dropped_bad_frame;
        }
        s
    }

    /// The established session's own counters (packets, drops, pings); None while racing,
    /// handshaking or done. They start from zero with each new session (after a failover).
    pub fn session_stats(&self) -> Option<crate::session::SessionStats> {
        match &self.state {
            State::Established { session, .. } => Some(session.stats()),
            _ => None,
        }
    }

    /// What the client side needs to open a stream (D2) on the established session: the
    /// server's session id and address and the stream keys. None unless established; a
    /// failover gives a new ticket (another server, other keys).
    pub fn stream_ticket(&self) -> Option<crate::stream::StreamTicket> {
        match &self.state {
            State::Established { session, server } => Some(crate::stream::StreamTicket {
                session_id: session.remote_id(),
                peer: *server,
                keys: session.stream_keys(crate::stream::Role::Client),
            }),
            _ => None,
        }
    }

    /// The server of the established session, if any.
    pub fn server(&self) -> Option<SocketAddr> {
        match &self.state {
            State::Established { server, .. } => Some(*server),
            _ => None,
        }
    }

    /// Whether the connection is over (failed or closed) and has nothing left to send.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Queues an application datagram on the session.
    pub fn send_datagram(&mut self, data: &[u8]) -> Result<(), SendError> {
        match &mut self.state {
            State::Established { session, .. } => session.send_datagram(data),
            State::Done => Err(SendError::Closed),
            _ => Err(SendError::NotEstablished),
        }
    }

    /// Queues an application datagram the caller owns, without copying it; on refusal it
    /// comes back with the reason.
    pub fn send_datagram_owned(&mut self, data: Bytes) -> Result<(), (SendError, Bytes)> {
        match &mut self.state {
            State::Established { session, .. } => session.send_datagram_owned(data),
            State::Done => Err((SendError::Closed, data)),
            _ => Err((SendError::NotEstablished, data)),
        }
    }

    /// Closes the connection; an established session sends CLOSE first.
    pub fn close(&mut self, code: CloseCode) {
        match &mut self.state {
            State::Established { session, .. } => session.close(code),
            State::Done => {}
            _ => {
                self.state = State::Done;
                self.events
                    .push_back(ClientEvent::Closed(CloseReason::Local(code)));
            }
        }
    }

    /// Handles one datagram from `from`. Never panics on any input.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let from = canonical(from);
        let packet = match Packet::decode(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                trace!(%from, error = %e, "dropped: malformed");
                return;
            }
        };
        match packet {
            Packet::Offer(offer) => {
                let outcome = self.classify_offer(now, from, &offer);
                self.on_offer(now, outcome);
            }
            Packet::CookieChange(cc) => self.on_cookie_change(now, from, cc.tag, cc.cookie),
            Packet::Redirect(rd) => {
                match &self.state {
                    State::ExpectAccept(hs) if from == hs.server && rd.tag == hs.tag => {}
                    _ => {
                        self.stats.unexpected += 1;
                        return;
                    }
                }
                self.stats.redirects += 1;
                let added = self.follow_redirect(rd.servers());
                debug!(server = %from, ?added, "selected server refused; racing the rest of the pool");
                if !added.is_empty() {
                    self.events
                        .push_back(ClientEvent::Redirected { from, added });
                }
                self.lose_server(now, from, CloseReason::Refused);
            }
            Packet::Accept(accept) => self.on_accept(now, from, accept.receiver_id, accept.noise),
            Packet::Data(header, ct) => {
                let State::Established { session, server } = &mut self.state else {
                    self.stats.unexpected += 1;
                    return;
                };
                if from != *server || header.receiver_id != session.local_id() {
                    self.stats.unexpected += 1;
                    return;
                }
                let server = *server;
                match session.handle_data(now, header, ct) {
                    Ok(Delivered::Datagram(d)) => self.events.push_back(ClientEvent::Datagram(d)),
                    Ok(Delivered::Keepalive) => {}
                    Ok(Delivered::Closed(code)) => {
                        self.lose_server(now, server, CloseReason::Remote(code));
                    }
                    Err(DataDrop::Closed) => {}
                    Err(_) => {}
                }
            }
            Packet::Probe(_) | Packet::Init(_) => {
                self.stats.unexpected += 1;
            }
        }
    }

    /// Asks the live race about an offer, and the last decided race when the live one does not
    /// know it: during a failover race the previous race's stragglers are late, not strangers.
    fn classify_offer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        offer: &Offer<'_>,
    ) -> OfferOutcome {
        let pinned = &self.pinned;
        let lookup = |id: &KeyId| pinned.iter().find(|(k, _)| k == id).map(|(_, key)| *key);
        let live = match &mut self.state {
            State::ExpectOffer(race) => race.handle_offer(now, from, offer, &lookup),
            _ => OfferOutcome::UnknownTag,
        };
        if !matches!(live, OfferOutcome::UnknownTag | OfferOutcome::Unprobed) {
            return live;
        }
        match self
            .decided
            .as_mut()
            .map(|prev| prev.handle_offer(now, from, offer, &lookup))
        {
            Some(late @ OfferOutcome::Late { .. }) => late,
            Some(other) if !matches!(self.state, State::ExpectOffer(_)) => other,
            _ => live,
        }
    }

    /// Adds a REDIRECT's addresses to the pool (R3): only usable unicast addresses of the
    /// pool's address family not known already, and no more than `max_redirect_servers` over
    /// the connection's life. The client never probes an address it did not choose to add.
    fn follow_redirect(&mut self, servers: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
        let mut added = Vec::new();
        let v4_pool = self.pool.first().is_none_or(|a| a.is_ipv4());
        for addr in servers.map(canonical) {
            let ip = addr.ip();
            let usable = addr.port() != 0
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && addr.is_ipv4() == v4_pool
                && !matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
            if !usable
                || self.pool.contains(&addr)
                || self.redirect_added >= self.config.max_redirect_servers
            {
                self.stats.redirect_servers_ignored += 1;
                continue;
            }
            self.redirect_added += 1;
            self.stats.redirect_servers_added += 1;
            self.pool.push(addr);
            self.redirected.push(addr);
            added.push(addr);
        }
        added
    }

    fn on_offer(&mut self, now: Instant, outcome: OfferOutcome) {
        match outcome {
            OfferOutcome::Won(w) => self.on_won(now, w),
            OfferOutcome::Collected {
                server,
                answer_time,
                load,
            } => {
                trace!(%server, ?answer_time, "offer collected");
                self.events.push_back(ClientEvent::Collected {
                    server,
                    answer_time,
                    load,
                });
                let decided = match &mut self.state {
                    State::ExpectOffer(race) => race.decide_if_complete(),
                    _ => None,
                };
                if let Some(winner) = decided {
                    self.on_won(now, winner);
                }
            }
            OfferOutcome::Duplicate => self.stats.offers_duplicate += 1,
            OfferOutcome::Late {
                server,
                answer_time,
                load,
            } => {
                self.stats.offers_late += 1;
                trace!(%server, ?answer_time, "late offer voided");
                self.events.push_back(ClientEvent::LateOffer {
                    server,
                    answer_time,
                    load,
                });
            }
            OfferOutcome::UnknownTag => self.stats.offers_unknown_tag += 1,
            OfferOutcome::Unprobed => self.stats.offers_unprobed_source += 1,
            OfferOutcome::UnknownKey => self.stats.offers_unknown_key += 1,
        }
    }

    /// The race is decided: `w` won. Start the handshake with it.
    fn on_won(&mut self, now: Instant, w: Winner) {
        self.stats.offers_won += 1;
        if let State::ExpectOffer(race) = &self.state
            && !race.retransmitted()
        {
            self.shared().answer_sample(w.answer_time);
        }
        self.events.push_back(ClientEvent::Selected {
            server: w.server,
            answer_time: w.answer_time,
            load: w.load,
        });
        debug!(server = %w.server, answer_time = ?w.answer_time, "offer won");
        let State::ExpectOffer(mut race) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let tag = self.current_tag(&race);
        self.stats.probes_sent += race.probes_sent();
        self.stats.offers_not_chosen += race.not_chosen();
        self.extra_winners = race.take_runners_up();
        self.decided = Some(race);
        self.begin_handshake(now, tag, w);
    }

    fn begin_handshake(&mut self, now: Instant, tag: Tag, w: Winner) {
        // Unique among the client's connections (they may share a socket); the previous
        // handshake's or session's id is free again.
        let local_id = {
            let shared = SharedPoolState::clone(&self.shared);
            let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = self.session_id.take() {
                state.release_session_id(old);
            }
            state.draw_session_id(&mut *self.rng)
        };
        self.session_id = Some(local_id);
        // Before any handshake is timed, the answer times stand in (the race just measured
        // this path: an offer's answer time is its round trip plus the server's answer delay,
        // never less than the round trip), and only then the cold-start value (R10).
        let rto = {
            let shared = self.shared();
            let estimator = if shared.handshakes().smoothed().is_some() {
                shared.handshakes()
            } else {
                shared.answers()
            };
            estimator.rto(
                self.config.init_rto,
                self.config.min_rto,
                self.config.race.max_rto,
            )
        };
        let server = w.server;
        match ExpectAccept::start(
            now,
            tag,
            w,
            local_id,
            rto,
            self.config.handshake_timeout,
            &self.config.service,
            &mut *self.rng,
        ) {
            Some(hs) => self.state = State::ExpectAccept(hs),
            // Cannot happen with sane inputs (bad pinned key?); treat as lost server.
            None => self.lose_server(now, server, CloseReason::IdleTimeout),
        }
    }

    fn current_tag(&self, race: &Race) -> Tag {
        race.retired_tag()
            .expect("a decided race has a retired tag")
    }

    fn on_cookie_change(&mut self, now: Instant, from: SocketAddr, tag: Tag, cookie: &[u8]) {
        // Check before taking the state out: a COOKIE_CHANGE in any other state (anyone can send
        // one) must leave the race or session untouched.
        match &self.state {
            State::ExpectAccept(hs) if from == hs.server && tag == hs.tag && !hs.cookie_changed => {
            }
            _ => {
                self.stats.cookie_changes_ignored += 1;
                return;
            }
        }
        let State::ExpectAccept(hs) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        self.stats.cookie_changes += 1;
        debug!(server = %from, "cookie change: retrying INIT with the fresh cookie");
        match hs.with_cookie(now, cookie, &self.config.service, &mut *self.rng) {
            Some(hs) => self.state = State::ExpectAccept(hs),
            None => self.lose_server(now, from, CloseReason::IdleTimeout),
        }
    }

    fn on_accept(&mut self, now: Instant, from: SocketAddr, receiver_id: u32, noise: &[u8]) {
        let State::ExpectAccept(hs) = &self.state else {
            self.stats.unexpected += 1;
            return;
        };
        if from != hs.server || receiver_id != hs.local_id {
            self.stats.unexpected += 1;
            return;
        }
        let State::ExpectAccept(hs) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let server = hs.server;
        match hs.finish(now, noise, self.config.session) {
            Some(Accepted {
                session,
                server,
                handshake_time,
                clean,
            }) => {
                self.stats.sessions_established += 1;
                self.refusals = 0;
                if clean {
                    self.shared().handshake_sample(handshake_time);
                }
                self.events.push_back(ClientEvent::Established {
                    server,
                    handshake_time,
                    failover_from: self.failover_from.take(),
                });
                debug!(%server, ?handshake_time, "session established");
                self.state = State::Established { session, server };
            }
            None => {
                // The handshake state is spent; an ACCEPT that fails Noise means the session
                // cannot come up with this server.
                self.stats.accepts_invalid += 1;
                self.report_failure(now, server);
                self.lose_server(now, server, CloseReason::IdleTimeout);
            }
        }
    }

    /// Folds a session's drop counters into the connection's as the session ends, so that
    /// [`Connection::stats`] never goes down.
    fn keep_session_stats(&mut self, ss: crate::session::SessionStats) {
        self.stats.data_dropped += ss.dropped_auth + ss.dropped_replay + ss.dropped_bad_frame;
    }

    /// The server is gone (idle timeout, GOING_AWAY, failed handshake): re-race the rest of the
    /// pool if failovers remain, else fail.
    fn lose_server(&mut self, now: Instant, server: SocketAddr, reason: CloseReason) {
        let was_established = matches!(self.state, State::Established { .. });
        match &self.state {
            State::ExpectOffer(race) => self.stats.probes_sent += race.probes_sent(),
            State::Established { session, .. } => self.keep_session_stats(session.stats()),
            _ => {}
        }
        self.state = State::Done;
        if reason == CloseReason::Remote(CloseCode::NORMAL) {
            self.events.push_back(ClientEvent::Closed(reason));
            return;
        }
        self.events
            .push_back(ClientEvent::ServerLost { server, reason });
        let others: Vec<SocketAddr> = self.pool.iter().copied().filter(|a| *a != server).collect();
        if self.attempts >= self.config.max_failovers || others.is_empty() {
            let err = if reason == CloseReason::Refused {
                ConnectError::Refused(server)
            } else if was_established {
                ConnectError::ServerLost(server)
            } else {
                ConnectError::HandshakeTimeout(server)
            };
            self.events.push_back(ClientEvent::Failed(err));
            return;
        }
        self.attempts += 1;
        self.stats.failovers += 1;
        self.failover_from = Some(server);
        if reason == CloseReason::Refused && self.redirected.is_empty() {
            // Refused with nowhere new to go: the pool is busy. Back off before racing again
            // rather than adding a race to the load at once (L6).
            self.refusals = self.refusals.saturating_add(1);
            let base = self
                .config
                .refusal_backoff
                .saturating_mul(1 << (self.refusals - 1).min(16))
                .min(self.config.race.max_rto);
            let jitter = 0.5 + (self.rng.next_u32() as f64 / f64::from(u32::MAX));
            let until = now + base.mul_f64(jitter);
            self.stats.refusal_backoffs += 1;
            debug!(?until, refusals = self.refusals, "refused: backing off");
            self.state = State::Backoff {
                until,
                targets: others,
            };
            return;
        }
        self.start_race(now, others);
    }

    /// Writes the next datagram to send into `buf` (at least [`MAX_DATAGRAM_LEN`] bytes).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        match &mut self.state {
            State::ExpectOffer(race) => race.poll_transmit(buf),
            State::ExpectAccept(hs) => {
                if !hs.send_now {
                    return None;
                }
                hs.send_now = false;
                let size = hs.init().len();
                buf.get_mut(..size)?.copy_from_slice(hs.init());
                self.stats.inits_sent += 1;
                Some(Transmit {
                    destination: hs.server,
                    size,
                    source: None,
                })
            }
            State::Established { session, server } => {
                let destination = *server;
                match session.poll_transmit(now, buf) {
                    Some(size) => Some(Transmit {
                        destination,
                        size,
                        source: None,
                    }),
                    None => {
                        if session.is_drained() {
                            let reason = session
                                .close_reason()
                                .unwrap_or(CloseReason::Local(CloseCode::NORMAL));
                            let stats = session.stats();
                            self.keep_session_stats(stats);
                            self.state = State::Done;
                            self.events.push_back(ClientEvent::Closed(reason));
                        }
                        None
                    }
                }
            }
            State::Backoff { .. } | State::Done => None,
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::ExpectOffer(race) => race.poll_timeout(),
            State::ExpectAccept(hs) => Some(hs.next_retransmit.min(hs.deadline)),
            State::Established { session, .. } => session.poll_timeout(),
            State::Backoff { until, .. } => Some(*until),
            State::Done => None,
        }
    }

    /// Fires timers due at `now`: probe and INIT retransmission (R1), deadlines, keepalive and
    /// idle timeout (R5).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::ExpectOffer(race) => match race.handle_timeout(now) {
                RaceTimeout::Pending => {}
                RaceTimeout::Decided(w) => self.on_won(now, w),
                RaceTimeout::Expired => {
                    let deadline = self.config.race.deadline;
                    self.stats.probes_sent += race.probes_sent();
                    if let State::ExpectOffer(race) =
                        std::mem::replace(&mut self.state, State::Done)
                    {
                        self.decided = Some(race);
                    }
                    let unpinned = self.stats.offers_unknown_key - self.unknown_key_at_race;
                    let error = if unpinned > 0 {
                        debug!(unpinned, "race failed: only offers from unpinned keys");
                        ConnectError::UnpinnedKey(unpinned.min(u64::from(u32::MAX)) as u32)
                    } else {
                        debug!("race failed: no offer");
                        ConnectError::NoOffer(deadline)
                    };
                    self.events.push_back(ClientEvent::Failed(error));
                }
            },
            State::ExpectAccept(hs) => {
                if now >= hs.deadline {
                    let server = hs.server;
                    debug!(%server, "handshake timed out");
                    self.report_failure(now, server);
                    self.lose_server(now, server, CloseReason::IdleTimeout);
                } else if now >= hs.next_retransmit {
                    hs.send_now = true;
                    hs.retransmitted = true;
                    hs.rto = (hs.rto * 2).min(self.config.race.max_rto);
                    hs.next_retransmit = now + hs.rto;
                }
            }
            State::Established { session, server } => {
                let server = *server;
                if let Some(reason) = session.handle_timeout(now) {
                    debug!(%server, ?reason, "server lost");
                    if matches!(reason, CloseReason::IdleTimeout | CloseReason::Unresponsive) {
                        // The server went silent under the session (L7).
                        self.report_failure(now, server);
                    }
                    self.lose_server(now, server, reason);
                }
            }
            State::Backoff { until, .. } => {
                if now >= *until {
                    let State::Backoff { targets, .. } =
                        std::mem::replace(&mut self.state, State::Done)
                    else {
                        return;
                    };
                    self.start_race(now, targets);
                }
            }
            State::Done => {}
        }
    }
}
