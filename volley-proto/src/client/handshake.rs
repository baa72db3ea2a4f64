//! The client's handshake with the race's winner: the state that waits for an ACCEPT, named
//! for what it waits for as rustls names its states. It is built only with its
//! INIT written (so there is no handshake without one to send), a COOKIE_CHANGE consumes it for a
//! new one with a fresh Noise message, and an ACCEPT consumes it for the session or for nothing:
//! the Noise state is spent either way, and no half-used state is left behind.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;

use super::race::Winner;
use crate::crypto::{
    self, ACCEPT_PAYLOAD_LEN, INIT_PAYLOAD_LEN, InitiatorHandshake, PublicKey, SessionKeys,
    StaticKeypair, Suite,
};
use crate::packet::{Init, Tag};
use crate::session::{Session, SessionConfig};
use crate::stream::Role;
use crate::{MAX_DATAGRAM_LEN, MAX_INIT_NOISE_LEN, MAX_NOISE_LEN, Transmit};

/// Waiting for the winner's ACCEPT, with the INIT to (re)send.
pub(super) struct ExpectAccept {
    /// The race's tag, carried in the INIT and bound into the prologue.
    tag: Tag,
    server: SocketAddr,
    key: PublicKey,
    /// The static key this client proves (its own, or an anonymous one).
    identity: StaticKeypair,
    /// INIT's `suites` byte: the DATA suites offered.
    offered: u8,
    /// This side's session id: the ACCEPT's `receiver_id`.
    local_id: u32,
    /// The session's first datagram, riding in message 1's payload (PROTOCOL.md §4.8): in
    /// every INIT of this handshake, retransmissions and a COOKIE_CHANGE's new one included.
    early: Option<Bytes>,
    /// One DATA from the selected server for this side's id that arrived before the ACCEPT
    /// (the reply to early data overtaking it), kept to be read once the session is up.
    held: Option<Vec<u8>>,
    noise: InitiatorHandshake,
    init: Vec<u8>,
    /// The INIT is due now (first send, retransmission, new cookie).
    send_now: bool,
    started: Instant,
    next_retransmit: Instant,
    rto: Duration,
    deadline: Instant,
    /// A COOKIE_CHANGE was followed once; a second one is ignored.
    cookie_changed: bool,
    /// Whether the INIT was sent more than once (its handshake time is then ambiguous).
    retransmitted: bool,
}

/// What an authentic ACCEPT gave.
pub(super) struct Accepted {
    pub(super) session: Session,
    pub(super) server: SocketAddr,
    /// From the first INIT to the ACCEPT.
    pub(super) handshake_time: Duration,
    /// One INIT, one ACCEPT: the time is an RTT sample.
    pub(super) clean: bool,
    /// A DATA that arrived before the ACCEPT, to be read now.
    pub(super) held: Option<Vec<u8>>,
}

impl ExpectAccept {
    /// The handshake with race winner `w`, its INIT written; None only if the INIT cannot be
    /// built (an unusable pinned key).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        now: Instant,
        tag: Tag,
        w: Winner,
        local_id: u32,
        identity: StaticKeypair,
        offered: u8,
        early: Option<Bytes>,
        rto: Duration,
        timeout: Duration,
        service: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Option<Self> {
        let payload = init_payload(local_id, offered, early.as_deref());
        let (noise, init) = write_init(&identity, &w.key, tag, &w.cookie, &payload, service, rng)?;
        Some(Self {
            tag,
            server: w.server,
            key: w.key,
            identity,
            offered,
            local_id,
            early,
            held: None,
            noise,
            init,
            send_now: true,
            started: now,
            next_retransmit: now + rto,
            rto,
            deadline: now + timeout,
            cookie_changed: false,
            retransmitted: false,
        })
    }

    /// The server moved our cookie (our address changed, as after a NAT rebinding): the same
    /// handshake with `cookie` and a fresh Noise message, sent at once. None if the INIT cannot
    /// be built.
    pub(super) fn with_cookie(
        self,
        now: Instant,
        cookie: &[u8],
        service: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Option<Self> {
        let payload = init_payload(self.local_id, self.offered, self.early.as_deref());
        let (noise, init) = write_init(
            &self.identity,
            &self.key,
            self.tag,
            cookie,
            &payload,
            service,
            rng,
        )?;
        Some(Self {
            noise,
            init,
            // A new Noise message makes new keys: nothing kept under the old ones can be read.
            held: None,
            send_now: true,
            next_retransmit: now + self.rto,
            cookie_changed: true,
            retransmitted: true,
            ..self
        })
    }

    /// The selected server.
    pub(super) fn server(&self) -> SocketAddr {
        self.server
    }

    /// The race's tag.
    pub(super) fn tag(&self) -> Tag {
        self.tag
    }

    /// This side's session id, which the ACCEPT names.
    pub(super) fn local_id(&self) -> u32 {
        self.local_id
    }

    /// Whether a COOKIE_CHANGE from `from` for `tag` is this handshake's, and one it follows:
    /// only from the selected server, for this race, and only once.
    pub(super) fn follows_cookie_change(&self, from: SocketAddr, tag: Tag) -> bool {
        from == self.server && tag == self.tag && !self.cookie_changed
    }

    /// Whether a REDIRECT from `from` for `tag` is the selected server refusing this handshake.
    pub(super) fn is_refusal(&self, from: SocketAddr, tag: Tag) -> bool {
        from == self.server && tag == self.tag
    }

    /// Whether this handshake's INIT carries early data.
    pub(super) fn has_early(&self) -> bool {
        self.early.is_some()
    }

    /// Keeps `datagram`, a DATA from `from` naming `receiver_id`, to be read after the ACCEPT,
    /// if it is this handshake's (from the selected server, for this side's id) and none is
    /// kept yet. Returns whether it was kept.
    pub(super) fn hold_data(
        &mut self,
        from: SocketAddr,
        receiver_id: u32,
        datagram: &[u8],
    ) -> bool {
        if from != self.server || receiver_id != self.local_id || self.held.is_some() {
            return false;
        }
        self.held = Some(datagram.to_vec());
        true
    }

    /// Whether an ACCEPT from `from` naming `receiver_id` answers this handshake.
    pub(super) fn is_accept(&self, from: SocketAddr, receiver_id: u32) -> bool {
        from == self.server && receiver_id == self.local_id
    }

    /// The INIT, into `buf`, when one is due (the first, a retransmission, or one with a new
    /// cookie).
    pub(super) fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if !self.send_now {
            return None;
        }
        let size = self.init.len();
        buf.get_mut(..size)?.copy_from_slice(&self.init);
        self.send_now = false;
        Some(Transmit {
            destination: self.server,
            size,
            source: None,
        })
    }

    /// The next retransmission or the deadline, whichever is first.
    pub(super) fn poll_timeout(&self) -> Instant {
        self.next_retransmit.min(self.deadline)
    }

    /// Fires the handshake's timers at `now`: a retransmission is due (the timeout doubles,
    /// up to `max_rto`), or the deadline passed — then it returns true: the handshake failed.
    pub(super) fn handle_timeout(&mut self, now: Instant, max_rto: Duration) -> bool {
        if now >= self.deadline {
            return true;
        }
        if now >= self.next_retransmit {
            self.send_now = true;
            self.retransmitted = true;
            self.rto = (self.rto * 2).min(max_rto);
            self.next_retransmit = now + self.rto;
        }
        false
    }

    /// Reads the ACCEPT's Noise message: the session, or None when it fails Noise, its payload
    /// is not the server session id and a suite, or the suite is not one this side offered
    /// (the state is spent either way).
    pub(super) fn finish(
        self,
        now: Instant,
        noise: &[u8],
        config: SessionConfig,
    ) -> Option<Accepted> {
        let mut payload = [0u8; MAX_NOISE_LEN];
        let (n, split) = self.noise.finish(noise, &mut payload).ok()?;
        let p = <[u8; ACCEPT_PAYLOAD_LEN]>::try_from(payload.get(..n)?).ok()?;
        let suite = Suite::from_id(p[4]).filter(|s| self.offered & s.id() != 0)?;
        let keys = SessionKeys::from_split(&split, suite, Role::Client);
        let mut session = Session::new(
            now,
            self.local_id,
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            self.server,
            keys,
            config,
        );
        if !self.retransmitted {
            // INIT → ACCEPT is one round trip (plus the server's handshake): the session's first
            // RTT sample, for its liveness checks (R9).
            session.rtt_sample(now.saturating_duration_since(self.started));
        }
        Some(Accepted {
            session,
            server: self.server,
            handshake_time: now.saturating_duration_since(self.started),
            clean: !self.retransmitted,
            held: self.held,
        })
    }
}

/// INIT's Noise payload: the client's session id and the suites it offers, then the early
/// data if any (PROTOCOL.md §4.5, §4.8).
fn init_payload(local_id: u32, offered: u8, early: Option<&[u8]>) -> Vec<u8> {
    let early = early.unwrap_or_default();
    let mut p = Vec::with_capacity(INIT_PAYLOAD_LEN + early.len());
    p.extend_from_slice(&local_id.to_be_bytes());
    p.push(offered);
    p.extend_from_slice(early);
    p
}

/// Noise message 1 from `identity` towards `key` in an INIT for `tag` and `cookie`.
fn write_init(
    identity: &StaticKeypair,
    key: &PublicKey,
    tag: Tag,
    cookie: &[u8],
    payload: &[u8],
    service: &[u8],
    rng: &mut dyn CryptoRngCore,
) -> Option<(InitiatorHandshake, Vec<u8>)> {
    let prologue = crypto::prologue(service, &tag, cookie);
    let mut msg1 = [0u8; MAX_INIT_NOISE_LEN];
    let (noise, n) =
        InitiatorHandshake::start(identity, key, &prologue, payload, &mut msg1, rng).ok()?;
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let size = Init {
        tag,
        service,
        cookie,
        noise: &msg1[..n],
    }
    .encode(&mut buf)
    .ok()?;
    Some((noise, buf[..size].to_vec()))
}
