//! One client connection: race → handshake → session, and back to a race when the server dies.
//!
//! The states are types named for what they wait for: a [`Race`] waits for offers, an
//! [`ExpectAccept`] for the winner's ACCEPT, a [`crate::session::Session`] carries the datagrams ([`State`]
//! holds the phase and answers what can be read of it). Where the
//! connection goes after losing its server is decided by its [`Failover`]; what the client knows
//! about its whole pool (answer times, ejected servers, session ids in use) is a [`PoolState`]
//! the caller passes into every call that learns or uses it — the core holds no lock.

mod events;
mod failover;
mod state;

pub use events::{ClientEvent, ConnectError, EarlyDataError};

use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use tracing::{debug, trace};

use super::handshake::{Accepted, ExpectAccept};
use super::pool::{Ejection, PoolState, ServerOutcome};
use super::race::{OfferOutcome, Race, RaceTimeout, Winner, classify_offer};
use super::route::{RouteKey, RouteView};
use super::{ClientConfig, ClientStats};
use crate::crypto::PublicKey;
use crate::packet::{KeyId, Offer, Packet, Tag};
use crate::session::{CloseCode, CloseReason, DataDrop, Delivered, LoadReport, SendError};
use crate::util::canonical;
use crate::{TAG_LEN, Transmit};
use failover::{Failover, Next};

/// A datagram that can ride in an INIT as early data (PROTOCOL.md §4.8): 1 to
/// [`crate::MAX_EARLY_DATA`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyData(Bytes);

impl EarlyData {
    /// `first`, if it can ride in an INIT: not empty (an empty one cannot be told from none on
    /// the wire) and at most [`crate::MAX_EARLY_DATA`] bytes.
    pub fn new(first: Bytes) -> Result<Self, EarlyDataError> {
        if first.is_empty() {
            return Err(EarlyDataError::Empty);
        }
        if first.len() > crate::MAX_EARLY_DATA {
            return Err(EarlyDataError::TooLarge(first.len()));
        }
        Ok(Self(first))
    }

    /// The datagram.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

/// Unanswered handshakes in a row after which a connection gives up (see `lose_server`).
const UNANSWERED_HANDSHAKES: u32 = 2;
use state::State;

/// A client connection's protocol state. Drive it with `handle`, `handle_timeout`, and the
/// `poll_*` methods after every input; pass the client's [`PoolState`] to the calls that take it
/// (one state for all the connections of one client instance).
pub struct Connection {
    config: ClientConfig,
    /// The pinned keys with their key ids, hashed once rather than per offer.
    pinned: Vec<(KeyId, PublicKey)>,
    rng: Box<dyn CryptoRngCore + Send>,
    state: State,
    /// The last decided race, kept only to classify late offers (its tag is retired).
    decided: Option<Race>,
    events: VecDeque<ClientEvent>,
    stats: ClientStats,
    /// The pool, REDIRECT additions, failovers left and refusal back-off.
    failover: Failover,
    /// `NBest`: the servers chosen besides this connection's, for sibling connections.
    extra_winners: Vec<Winner>,
    /// The session id this connection holds in the pool state (its handshake's or session's),
    /// given back when another replaces it or by [`Connection::retire`].
    session_id: Option<u32>,
    /// `stats.offers_unknown_key` when the current race started.
    unknown_key_at_race: u64,
    /// Handshakes in a row whose server offered but never accepted (reset by an ACCEPT).
    handshakes_unanswered: u32,
    /// A server of the live race that answered with VERSIONS naming only other versions.
    other_versions: Option<(SocketAddr, u8)>,
    /// The session's first datagram, to ride in the INIT (PROTOCOL.md §4.8) until a session
    /// is established: a REDIRECT or a failed handshake hands it to the next winner's INIT.
    early: Option<Bytes>,
    /// Requests the session carried: sends that followed something heard from the server (the
    /// first send counts), learned by the pool at [`Connection::retire`].
    requests: u64,
    /// Whether the server was heard from since the last send.
    heard: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("pool", &self.failover.pool())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts racing `servers` at `now`. `pool` is the client's knowledge of its pool, shared by
    /// all its connections (answer times set the retransmission timers, ejected servers sit
    /// races out, session ids stay unique).
    pub fn new(
        now: Instant,
        config: ClientConfig,
        servers: Vec<SocketAddr>,
        rng: Box<dyn CryptoRngCore + Send>,
        pool: &mut PoolState,
    ) -> Self {
        let mut c = Self::idle(config, servers, rng);
        if c.failover.pool().is_empty() || c.config.server_keys.is_empty() {
            c.events
                .push_back(ClientEvent::Failed(ConnectError::NothingToRace));
        } else {
            let targets = c.failover.pool().to_vec();
            c.start_race(now, targets, pool);
        }
        c
    }

    /// [`Connection::new`], with the session's first datagram `first` riding in the INIT as
    /// early data (PROTOCOL.md §4.8): a one-request session then costs the race and one round
    /// trip. The server delivers it once, as the session's first datagram, after the cookie,
    /// admission, the handshake and its allow-list passed; its reply may arrive before the
    /// ACCEPT and is kept until the session is up. Until a session is established the datagram
    /// goes with every INIT of the connection — retransmissions, a COOKIE_CHANGE's new INIT,
    /// and the next winner's after a REDIRECT or an unanswered handshake (so a server that
    /// took it but whose ACCEPTs were lost, and the next one, may both get it: send early only
    /// what may arrive twice, or carries its own check). Its confidentiality does not have
    /// forward secrecy (§4.8).
    pub fn with_early_data(
        now: Instant,
        config: ClientConfig,
        servers: Vec<SocketAddr>,
        first: EarlyData,
        rng: Box<dyn CryptoRngCore + Send>,
        pool: &mut PoolState,
    ) -> Self {
        let mut c = Self::idle(config, servers, rng);
        c.early = Some(first.0);
        // The early datagram is the session's first request (what the Path policy learns).
        c.count_request();
        if c.failover.pool().is_empty() || c.config.server_keys.is_empty() {
            c.events
                .push_back(ClientEvent::Failed(ConnectError::NothingToRace));
        } else {
            let targets = c.failover.pool().to_vec();
            c.start_race(now, targets, pool);
        }
        c
    }

    /// A connection that skips the race: it opens a session with `winner`, an offer another
    /// connection's `NBest` race chose (see [`Connection::take_extra_winners`]). It must send from
    /// the same address as that race (the cookie is bound to it); `tag` is that race's tag. On
    /// losing its server it races `servers` like any connection.
    pub fn from_winner(
        now: Instant,
        config: ClientConfig,
        servers: Vec<SocketAddr>,
        tag: Tag,
        winner: Winner,
        rng: Box<dyn CryptoRngCore + Send>,
        pool: &mut PoolState,
    ) -> Self {
        let mut c = Self::idle(config, servers, rng);
        c.begin_handshake(now, tag, winner, pool);
        c
    }

    /// A connection that has not started anything yet.
    fn idle(
        config: ClientConfig,
        servers: Vec<SocketAddr>,
        rng: Box<dyn CryptoRngCore + Send>,
    ) -> Self {
        let pinned = config
            .server_keys
            .iter()
            .map(|k| (k.key_id(), *k))
            .collect();
        Self {
            config,
            pinned,
            rng,
            state: State::Done,
            decided: None,
            events: VecDeque::new(),
            stats: ClientStats::default(),
            failover: Failover::new(servers),
            extra_winners: Vec::new(),
            session_id: None,
            unknown_key_at_race: 0,
            handshakes_unanswered: 0,
            other_versions: None,
            early: None,
            requests: 0,
            heard: true,
        }
    }

    /// Gives back what the connection holds in `pool` (its session id), so that a later
    /// connection may draw it. Call when letting go of a connection; one dropped without it
    /// only keeps its 4-byte id out of use.
    pub fn retire(mut self, pool: &mut PoolState) {
        if let Some(id) = self.session_id.take() {
            pool.release_session_id(id);
        }
        if matches!(self.config.policy, super::SelectionPolicy::Path(p) if p.learn) {
            pool.requests_sample(self.requests);
        }
    }

    /// Requests this connection's sessions carried so far: sends that followed a datagram from
    /// the server, the first send included (what the `Path` policy learns from).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn count_request(&mut self) {
        if self.heard {
            self.heard = false;
            self.requests += 1;
        }
    }

    /// Reports a failure of `server` to the pool knowledge.
    fn report_failure(&mut self, now: Instant, server: SocketAddr, pool: &mut PoolState) {
        if let Ejection::Ejected { until } = pool.report(now, server, ServerOutcome::Failure) {
            self.stats.ejections += 1;
            let length = until.saturating_duration_since(now);
            debug!(%server, ?length, "server ejected from races");
            self.events
                .push_back(ClientEvent::Ejected { server, length });
        }
    }

    fn start_race(&mut self, now: Instant, candidates: Vec<SocketAddr>, pool: &mut PoolState) {
        self.unknown_key_at_race = self.stats.offers_unknown_key;
        let (targets, left_out) =
            self.failover
                .targets(now, candidates, pool, &self.config, &mut *self.rng);
        self.stats.ejected_skipped += left_out as u64;
        let mut tag = [0u8; TAG_LEN];
        self.rng.fill_bytes(&mut tag);
        self.stats.races += 1;
        let attempt = self.failover.attempts();
        self.events.push_back(ClientEvent::RaceStarted {
            attempt,
            servers: targets.len(),
        });
        debug!(servers = targets.len(), attempt, "race started");
        let floors = pool.path_floors(&targets);
        let race = Race::start(
            now,
            Tag(tag),
            &self.config.service,
            targets,
            pool.race_timers(&self.config),
            self.config.probe_size,
            self.config.policy,
        )
        // A first request riding in the INIT saves the handshake's round trip (§4.8).
        .with_path(pool.path_inputs(&self.config, self.early.is_some()))
        .with_floors(floors);
        self.state = State::ExpectOffer(race);
    }

    /// `NBest`: the offers chosen besides this connection's own, best first. Empty for other
    /// policies and after the first call.
    pub fn take_extra_winners(&mut self) -> Vec<Winner> {
        std::mem::take(&mut self.extra_winners)
    }

    /// The tag of the race that chose this connection's current server, once decided.
    pub fn decided_tag(&self) -> Option<Tag> {
        self.state.decided_tag(self.decided.as_ref())
    }

    /// What identifies this connection's datagrams now (see [`RouteView`]).
    pub fn route_view(&self) -> RouteView<'_> {
        self.state.route_view(self.decided.as_ref())
    }

    /// The keys a datagram for this connection can carry ([`RouteView::keys`]).
    pub fn route_keys(&self) -> [Option<RouteKey>; 2] {
        self.route_view().keys()
    }

    /// Whether `datagram` from `from` belongs to this connection ([`RouteView::claims`]).
    pub fn claims(&self, from: SocketAddr, datagram: &[u8]) -> bool {
        self.route_view().claims(from, datagram)
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        let mut s = self.stats;
        s.probes_sent += self.state.probes_sent();
        if let Some(ss) = self.state.session_stats() {
            s.data_dropped += ss.dropped_auth + ss.dropped_replay + ss.dropped_bad_frame;
            s.requests_sent += ss.requests_sent;
            s.replies_received += ss.replies_received;
            s.replies_unknown += ss.replies_unknown;
        }
        s
    }

    /// The established session's own counters (packets, drops, pings); None while racing,
    /// handshaking or done. They start from zero with each new session (after a failover).
    pub fn session_stats(&self) -> Option<crate::session::SessionStats> {
        self.state.session_stats()
    }

    /// What the client side needs to open a stream (one proxied TCP connection,
    /// [`crate::stream`]) on the established session: the server's session id and address and
    /// the stream keys. None unless established; a failover gives a new ticket (another server,
    /// other keys).
    pub fn stream_ticket(&self) -> Option<crate::stream::StreamTicket> {
        self.state.stream_ticket()
    }

    /// The server of the established session, if any.
    pub fn server(&self) -> Option<SocketAddr> {
        self.state.server()
    }

    /// Whether the connection is over (failed or closed) and has nothing left to send.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Queues an application datagram on the session.
    pub fn send_datagram(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.state.send_datagram(data)?;
        self.count_request();
        Ok(())
    }

    /// Queues an application datagram the caller owns, without copying it; on refusal it
    /// comes back with the reason.
    pub fn send_datagram_owned(&mut self, data: Bytes) -> Result<(), (SendError, Bytes)> {
        self.state.send_datagram_owned(data)?;
        self.count_request();
        Ok(())
    }

    /// Queues a request of `body` (at most [`crate::MAX_DATAGRAM`] bytes) on the established
    /// session under the next id not in flight, and returns the id: its reply comes as
    /// [`ClientEvent::Reply`] with the same id, or [`ClientEvent::RequestsLost`] names it when
    /// the session ends first (PROTOCOL.md §5.8). Nothing is retransmitted: a request or reply
    /// lost on the way is the caller's to time out (then [`Connection::forget_request`]). On
    /// refusal the body comes back with the reason ([`SendError::NotEstablished`] while racing
    /// or handshaking: queue it again once established).
    pub fn send_request(&mut self, now: Instant, body: Bytes) -> Result<u32, (SendError, Bytes)> {
        let Some(session) = self.state.session_mut() else {
            return Err((self.state.not_established(), body));
        };
        let id = session.send_request(now, body)?;
        self.count_request();
        Ok(id)
    }

    /// [`Connection::send_request`] under an id the caller chose (one not in flight on the
    /// session: [`SendError::RequestInFlight`] otherwise).
    pub fn send_request_with_id(
        &mut self,
        now: Instant,
        id: u32,
        body: Bytes,
    ) -> Result<(), (SendError, Bytes)> {
        let Some(session) = self.state.session_mut() else {
            return Err((self.state.not_established(), body));
        };
        session.send_request_with_id(now, id, body)?;
        self.count_request();
        Ok(())
    }

    /// Forgets request `id` (its caller stopped waiting): a reply that still comes is counted
    /// in `replies_unknown` and dropped. Whether it was in flight.
    pub fn forget_request(&mut self, id: u32) -> bool {
        self.state
            .session_mut()
            .is_some_and(|s| s.forget_request(id))
    }

    /// Requests in flight on the established session (0 without one).
    pub fn requests_in_flight(&self) -> usize {
        self.state.session().map_or(0, |s| s.requests_in_flight())
    }

    /// The established session's latest load report from its server and when it arrived
    /// (PROTOCOL.md §5.8); None before its first reply (a new server after a failover starts
    /// with none).
    pub fn load_report(&self) -> Option<(LoadReport, Instant)> {
        self.state.session().and_then(|s| s.load_report())
    }

    /// The established session's smoothed time from a request's queueing to its reply (OK
    /// replies only); None before the first.
    pub fn reply_time(&self) -> Option<Duration> {
        self.state.session().and_then(|s| s.reply_time())
    }

    /// The established session ends for `reason`: its requests in flight are lost, and the
    /// application hears of them at once.
    fn lose_requests(&mut self, reason: CloseReason) {
        let Some(session) = self.state.session_mut() else {
            return;
        };
        let ids = session.take_requests();
        if !ids.is_empty() {
            self.stats.requests_lost += ids.len() as u64;
            self.events
                .push_back(ClientEvent::RequestsLost { ids, reason });
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
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        pool: &mut PoolState,
    ) {
        let from = canonical(from);
        let packet = match Packet::decode(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                trace!(%from, error = %e, "dropped: malformed");
                if let Some((versions, echo)) = crate::packet::decode_versions(datagram) {
                    self.on_versions(from, versions, echo);
                }
                return;
            }
        };
        match packet {
            Packet::Offer(offer) => {
                let outcome = self.classify_offer(now, from, &offer);
                self.on_offer(now, outcome, pool);
            }
            Packet::CookieChange(cc) => self.on_cookie_change(now, from, cc.tag, cc.cookie, pool),
            Packet::Redirect(rd) => {
                if !matches!(&self.state, State::ExpectAccept(hs) if hs.is_refusal(from, rd.tag)) {
                    self.stats.unexpected += 1;
                    return;
                }
                self.stats.redirects += 1;
                let (added, ignored) = self
                    .failover
                    .follow_redirect(rd.servers(), self.config.max_redirect_servers);
                self.stats.redirect_servers_added += added.len() as u64;
                self.stats.redirect_servers_ignored += ignored;
                debug!(server = %from, ?added, "selected server refused; racing the rest of the pool");
                if !added.is_empty() {
                    self.events
                        .push_back(ClientEvent::Redirected { from, added });
                }
                self.lose_server(now, from, CloseReason::Refused, pool);
            }
            Packet::Accept(accept) => {
                self.on_accept(now, from, accept.receiver_id, accept.noise, pool)
            }
            Packet::Data(header, ct) => {
                if let State::ExpectAccept(hs) = &mut self.state {
                    // A DATA can overtake its ACCEPT (the reply to early data, sent right after
                    // it): one is kept and read once the session is up (PROTOCOL.md §6.5).
                    if hs.hold_data(from, header.receiver_id, datagram) {
                        self.stats.data_held += 1;
                        trace!(%from, "DATA before the ACCEPT: kept");
                    } else {
                        self.stats.unexpected += 1;
                    }
                    return;
                }
                self.on_data(now, from, header, ct, pool);
            }
            Packet::Probe(_) | Packet::Init(_) => {
                self.stats.unexpected += 1;
            }
        }
    }

    /// A DATA for the established session.
    fn on_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: crate::packet::DataHeader,
        ct: &[u8],
        pool: &mut PoolState,
    ) {
        let State::Established { session, server } = &mut self.state else {
            self.stats.unexpected += 1;
            return;
        };
        if header.receiver_id != session.local_id() {
            self.stats.unexpected += 1;
            return;
        }
        let server = *server;
        match session.handle_data(now, from, header, ct) {
            Ok(Delivered::Datagram(d)) => {
                self.heard = true;
                self.events.push_back(ClientEvent::Datagram(d));
            }
            Ok(Delivered::Reply(reply)) => {
                self.heard = true;
                self.events.push_back(ClientEvent::Reply(reply));
            }
            // A client's session takes no REQUEST (a bad frame there).
            Ok(Delivered::Request { .. }) => {}
            Ok(Delivered::Keepalive) => {}
            Ok(Delivered::Closed(code)) => {
                self.lose_server(now, server, CloseReason::Remote(code), pool);
            }
            Err(DataDrop::Closed) => {}
            Err(_) => {}
        }
    }

    /// A VERSIONS answer: kept (for the error the race gives if no offer comes) only when it
    /// echoes a PROBE of the live race, sent to `from`.
    fn on_versions(&mut self, from: SocketAddr, versions: &[u8], echo: &[u8]) {
        let State::ExpectOffer(race) = &self.state else {
            return;
        };
        let ours = race.live_tag().is_some_and(|tag| {
            echo.first() == Some(&crate::VERSION)
                && echo.get(1) == Some(&crate::packet::kind::PROBE)
                && echo.get(2..2 + TAG_LEN) == Some(&tag.0[..])
        }) && race.targets().contains(&from);
        if ours && !versions.contains(&crate::VERSION) {
            debug!(%from, ?versions, "server speaks other protocol versions");
            self.stats.versions_received += 1;
            let highest = versions.iter().copied().max().unwrap_or(0);
            self.other_versions = Some((from, highest));
        }
    }

    /// Asks the live race and the last decided one about an offer ([`classify_offer`]).
    fn classify_offer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        offer: &Offer<'_>,
    ) -> OfferOutcome {
        let pinned = &self.pinned;
        let lookup = |id: &KeyId| pinned.iter().find(|(k, _)| k == id).map(|(_, key)| *key);
        let live = match &mut self.state {
            State::ExpectOffer(race) => Some(race),
            _ => None,
        };
        classify_offer(live, self.decided.as_mut(), now, from, offer, &lookup)
    }

    fn on_offer(&mut self, now: Instant, outcome: OfferOutcome, pool: &mut PoolState) {
        match outcome {
            OfferOutcome::Won(w) => self.on_won(now, w, pool),
            OfferOutcome::Collected {
                server,
                answer_time,
                path,
                load,
            } => {
                trace!(%server, ?answer_time, ?path, "offer collected");
                pool.offer_sample(now, server, path, load.expected());
                pool.hold_sample(answer_time.saturating_sub(path));
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
                    self.on_won(now, winner, pool);
                }
            }
            OfferOutcome::Duplicate => self.stats.offers_duplicate += 1,
            OfferOutcome::Late {
                server,
                answer_time,
                path,
                load,
            } => {
                self.stats.offers_late += 1;
                pool.offer_sample(now, server, path, load.expected());
                pool.hold_sample(answer_time.saturating_sub(path));
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
    fn on_won(&mut self, now: Instant, w: Winner, pool: &mut PoolState) {
        self.stats.offers_won += 1;
        if matches!(self.config.policy, super::SelectionPolicy::Earliest) {
            // (collected offers were sampled as they came)
            pool.offer_sample(now, w.server, w.path, w.load.expected());
            pool.hold_sample(w.answer_time.saturating_sub(w.path));
        }
        if let State::ExpectOffer(race) = &self.state
            && !race.retransmitted()
        {
            pool.answer_sample(w.answer_time);
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
        let tag = race
            .retired_tag()
            .expect("a decided race has a retired tag");
        self.stats.probes_sent += race.probes_sent();
        self.stats.offers_not_chosen += race.not_chosen();
        self.extra_winners = race.take_runners_up();
        pool.race_decided(
            race.targets(),
            race.heard(),
            race.elapsed(now),
            &self.config,
        );
        self.decided = Some(race);
        self.begin_handshake(now, tag, w, pool);
    }

    fn begin_handshake(&mut self, now: Instant, tag: Tag, w: Winner, pool: &mut PoolState) {
        // Unique among the client's connections (they may share a socket); the previous
        // handshake's or session's id is free again.
        if let Some(old) = self.session_id.take() {
            pool.release_session_id(old);
        }
        let local_id = pool.draw_session_id(&mut *self.rng);
        self.session_id = Some(local_id);
        let rto = pool.init_rto(&self.config);
        let server = w.server;
        let identity = pool.identity(&self.config, &mut *self.rng);
        match ExpectAccept::start(
            now,
            tag,
            w,
            local_id,
            identity,
            self.config.session.cipher.offer(),
            self.early.clone(),
            rto,
            self.config.handshake_timeout,
            &self.config.service,
            &mut *self.rng,
        ) {
            Some(hs) => {
                if hs.has_early() {
                    self.stats.early_data_sent += 1;
                }
                self.state = State::ExpectAccept(hs);
            }
            // Cannot happen with sane inputs (bad pinned key?); treat as lost server.
            None => self.lose_server(now, server, CloseReason::IdleTimeout, pool),
        }
    }

    fn on_cookie_change(
        &mut self,
        now: Instant,
        from: SocketAddr,
        tag: Tag,
        cookie: &[u8],
        pool: &mut PoolState,
    ) {
        // Check before taking the state out: a COOKIE_CHANGE in any other state (anyone can send
        // one) must leave the race or session untouched.
        if !matches!(&self.state, State::ExpectAccept(hs) if hs.follows_cookie_change(from, tag)) {
            self.stats.cookie_changes_ignored += 1;
            return;
        }
        let State::ExpectAccept(hs) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        self.stats.cookie_changes += 1;
        debug!(server = %from, "cookie change: retrying INIT with the fresh cookie");
        match hs.with_cookie(now, cookie, &self.config.service, &mut *self.rng) {
            Some(hs) => self.state = State::ExpectAccept(hs),
            None => self.lose_server(now, from, CloseReason::IdleTimeout, pool),
        }
    }

    fn on_accept(
        &mut self,
        now: Instant,
        from: SocketAddr,
        receiver_id: u32,
        noise: &[u8],
        pool: &mut PoolState,
    ) {
        if !matches!(&self.state, State::ExpectAccept(hs) if hs.is_accept(from, receiver_id)) {
            self.stats.unexpected += 1;
            return;
        }
        let State::ExpectAccept(hs) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let server = hs.server();
        match hs.finish(now, noise, self.config.session) {
            Some(Accepted {
                session,
                server,
                handshake_time,
                clean,
                held,
            }) => {
                self.stats.sessions_established += 1;
                // The early data, if any, reached a session: it goes with no other INIT.
                self.early = None;
                self.handshakes_unanswered = 0;
                if clean {
                    pool.handshake_sample(handshake_time);
                }
                self.events.push_back(ClientEvent::Established {
                    server,
                    handshake_time,
                    failover_from: self.failover.established(),
                });
                debug!(%server, ?handshake_time, "session established");
                self.state = State::Established { session, server };
                if let Some(datagram) = held {
                    // The DATA that overtook the ACCEPT (the reply to early data), read now as
                    // if it arrived after it.
                    if let Ok(Packet::Data(header, ct)) = Packet::decode(&datagram) {
                        self.on_data(now, server, header, ct, pool);
                    }
                }
            }
            None => {
                // The handshake state is spent; an ACCEPT that fails Noise means the session
                // cannot come up with this server.
                self.stats.accepts_invalid += 1;
                self.report_failure(now, server, pool);
                self.lose_server(now, server, CloseReason::IdleTimeout, pool);
            }
        }
    }

    /// Folds a session's drop counters into the connection's as the session ends, so that
    /// [`Connection::stats`] never goes down.
    fn keep_session_stats(&mut self, ss: crate::session::SessionStats) {
        self.stats.data_dropped +=
            ss.dropped_auth + ss.dropped_replay + ss.dropped_bad_frame + ss.dropped_wrong_source;
        self.stats.requests_sent += ss.requests_sent;
        self.stats.replies_received += ss.replies_received;
        self.stats.replies_unknown += ss.replies_unknown;
    }

    /// The server is gone (idle timeout, GOING_AWAY, failed handshake): re-race the rest of the
    /// pool if failovers remain, else fail.
    fn lose_server(
        &mut self,
        now: Instant,
        server: SocketAddr,
        reason: CloseReason,
        pool: &mut PoolState,
    ) {
        let was_established = matches!(self.state, State::Established { .. });
        self.lose_requests(reason);
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
        if reason == CloseReason::Remote(CloseCode::REVOKED) {
            // The server no longer lets this key in; the rest of the pool shares its list.
            debug!(%server, "session revoked: this client key is no longer allowed");
            self.events
                .push_back(ClientEvent::ServerLost { server, reason });
            self.events
                .push_back(ClientEvent::Failed(ConnectError::Revoked(server)));
            return;
        }
        self.events
            .push_back(ClientEvent::ServerLost { server, reason });
        let refused = reason == CloseReason::Refused;
        // Two handshakes in a row that servers answered with an OFFER but never with an ACCEPT
        // is what a client whose key is not allowed sees (a server with an allow-list says
        // nothing to it, §4.7); racing the pool again would only repeat it.
        let next = if !was_established && self.handshakes_unanswered >= UNANSWERED_HANDSHAKES {
            Next::GiveUp
        } else {
            self.failover
                .after_loss(now, server, refused, &self.config, &mut *self.rng)
        };
        match next {
            Next::GiveUp => {
                let err = if refused {
                    ConnectError::Refused(server)
                } else if was_established {
                    ConnectError::ServerLost(server)
                } else {
                    ConnectError::HandshakeTimeout(server, self.handshakes_unanswered)
                };
                self.events.push_back(ClientEvent::Failed(err));
            }
            Next::Backoff { until, targets } => {
                self.stats.failovers += 1;
                self.stats.refusal_backoffs += 1;
                debug!(
                    ?until,
                    refusals = self.failover.refusals(),
                    "refused: backing off"
                );
                self.state = State::Backoff { until, targets };
            }
            Next::Race(targets) => {
                self.stats.failovers += 1;
                self.start_race(now, targets, pool);
            }
        }
    }

    /// Writes the next datagram to send into `buf` (at least [`crate::MAX_DATAGRAM_LEN`] bytes).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        match &mut self.state {
            State::ExpectOffer(race) => race.poll_transmit(buf),
            State::ExpectAccept(hs) => {
                let t = hs.poll_transmit(buf)?;
                self.stats.inits_sent += 1;
                Some(t)
            }
            State::Established { session, .. } => match session.poll_transmit(now, buf) {
                Some(t) => Some(Transmit {
                    destination: t.destination,
                    size: t.size,
                    source: None,
                }),
                None => {
                    if session.is_drained() {
                        let reason = session
                            .close_reason()
                            .unwrap_or(CloseReason::Local(CloseCode::NORMAL));
                        self.lose_requests(reason);
                        let stats = self.state.session_stats()?;
                        self.keep_session_stats(stats);
                        self.state = State::Done;
                        self.events.push_back(ClientEvent::Closed(reason));
                    }
                    None
                }
            },
            State::Backoff { .. } | State::Done => None,
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.state.poll_timeout()
    }

    /// Fires timers due at `now`: probe and INIT retransmission, deadlines, keepalive and idle
    /// timeout.
    pub fn handle_timeout(&mut self, now: Instant, pool: &mut PoolState) {
        match &mut self.state {
            State::ExpectOffer(race) => match race.handle_timeout(now) {
                RaceTimeout::Pending => {}
                RaceTimeout::Decided(w) => self.on_won(now, w, pool),
                RaceTimeout::Expired => self.race_failed(),
            },
            State::ExpectAccept(hs) => {
                if hs.handle_timeout(now, self.config.race.max_rto) {
                    let server = hs.server();
                    self.handshakes_unanswered += 1;
                    debug!(%server, "handshake timed out");
                    self.report_failure(now, server, pool);
                    self.lose_server(now, server, CloseReason::IdleTimeout, pool);
                }
            }
            State::Established { session, server } => {
                let server = *server;
                if let Some(reason) = session.handle_timeout(now) {
                    debug!(%server, ?reason, "server lost");
                    if matches!(reason, CloseReason::IdleTimeout | CloseReason::Unresponsive) {
                        // The server went silent under the session (L7).
                        self.report_failure(now, server, pool);
                    }
                    self.lose_server(now, server, reason, pool);
                }
            }
            State::Backoff { until, .. } => {
                if now >= *until {
                    let State::Backoff { targets, .. } =
                        std::mem::replace(&mut self.state, State::Done)
                    else {
                        return;
                    };
                    self.start_race(now, targets, pool);
                }
            }
            State::Done => {}
        }
    }

    /// The race's deadline passed with no offer it could take: the connection fails, saying
    /// whether only unpinned keys answered.
    fn race_failed(&mut self) {
        let State::ExpectOffer(race) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        self.stats.probes_sent += race.probes_sent();
        self.decided = Some(race);
        let unpinned = self.stats.offers_unknown_key - self.unknown_key_at_race;
        let error = if let Some((server, versions)) = self.other_versions.take() {
            ConnectError::VersionMismatch(server, versions)
        } else if unpinned > 0 {
            debug!(unpinned, "race failed: only offers from unpinned keys");
            ConnectError::UnpinnedKey(unpinned.min(u64::from(u32::MAX)) as u32)
        } else {
            debug!("race failed: no offer");
            ConnectError::NoOffer(self.config.race.deadline)
        };
        self.events.push_back(ClientEvent::Failed(error));
    }
}
