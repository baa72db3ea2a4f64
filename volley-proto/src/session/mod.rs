//! An established session, the same on both sides: DATA sealing and opening, the replay
//! window, key updates, keepalive, idle timeout, orderly close, requests and replies
//! ([`request`]), and (on a server) address migration.
//!
//! Plaintext of every DATA packet is one frame: a type byte and its body (`docs/PROTOCOL.md` §5).
//! A client's session only ever talks to its server's address and drops DATA from any other
//! source. A server's session follows its client to a new address once the client proved it
//! is there ([`path`]): until then it sends there nothing but bounded PATH_CHALLENGEs.

use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::trace;

use crate::crypto::{SessionKeys, Suite};
use crate::packet::DataHeader;
use crate::rtt::RttEstimator;
use crate::{AEAD_TAG_LEN, DATA_HEADER_LEN, MAX_DATAGRAM_LEN};

mod close;
mod config;
pub mod fragment;
mod keys;
pub mod path;
mod replay;
pub mod request;

pub use close::{CloseCode, CloseReason, DataDrop, SendError};
pub use config::{DEFAULT_REKEY_AFTER_PACKETS, DEFAULT_REKEY_AFTER_TIME, SessionConfig};
pub use keys::{KEY_PHASES, KEY_UPDATE_MIN_INTERVAL, MAX_PHASE_JUMP, PREVIOUS_KEY_LIFETIME};
pub use replay::{REPLAY_WINDOW, ReplayWindow};
pub use request::{
    LOAD_REPORT_LEN, LoadReport, MAX_FRAME, MAX_REQUESTS, REPLY_HEADER_LEN, REQUEST_HEADER_LEN,
    Reply, ReplyStatus,
};

pub use fragment::{
    FRAGMENT_HEADER_LEN, MAX_DATAGRAM, MAX_FRAGMENTS, MAX_PARTIALS, MAX_REASSEMBLY_BYTES,
    REASSEMBLY_TIMEOUT, ReassemblyStats,
};

use fragment::{FragmentHeader, Reassembled, Reassembly};
use keys::{Opened, RecvKeys, SendKeys};
use path::{PATH_DATA_LEN, PathCheck};
use request::Requests;

/// Frame type bytes (first plaintext byte of DATA).
pub mod frame {
    /// An application datagram: the rest of the plaintext.
    pub const DATAGRAM: u8 = 0x00;
    /// Keepalive request: the receiver answers with PONG.
    pub const PING: u8 = 0x01;
    /// Keepalive answer.
    pub const PONG: u8 = 0x02;
    /// Orderly close: a big-endian u16 close code follows.
    pub const CLOSE: u8 = 0x03;
    /// Path validation request (server → client): 8 bytes the answer must echo.
    pub const PATH_CHALLENGE: u8 = 0x04;
    /// Path validation answer (client → server): the challenge's 8 bytes.
    pub const PATH_RESPONSE: u8 = 0x05;
    /// One piece of a datagram larger than one packet (§5.7): id, index, count, piece.
    pub const FRAGMENT: u8 = 0x06;
    /// A request (client → server, §5.8): its id, then its bytes.
    pub const REQUEST: u8 = 0x07;
    /// A reply (server → client, §5.8): the id it answers, a status, the server's load report,
    /// then its bytes.
    pub const REPLY: u8 = 0x08;
    /// One piece of a frame larger than one packet (a REQUEST or REPLY, §5.8): the same header
    /// as FRAGMENT; the pieces put together are a whole frame, type byte first.
    pub const FRAME_FRAGMENT: u8 = 0x09;
}

/// Largest application datagram one DATA packet carries: a full-size DATA packet less header,
/// frame byte and AEAD tag. Larger ones, up to [`MAX_DATAGRAM`], go in fragments (§5.7).
pub const MAX_APP_DATAGRAM: usize = MAX_DATAGRAM_LEN - DATA_HEADER_LEN - 1 - AEAD_TAG_LEN;
/// The smallest DATA packet size a session may be configured to ([`SessionConfig::max_packet`]):
/// IPv6's minimum MTU, 1,280, less IPv6 and UDP headers.
pub const MIN_PACKET: usize = 1232;
/// How many packets a session queues for sending before `send_datagram` refuses.
pub const MAX_SEND_QUEUE: usize = 1024;
/// Counters at or beyond this are never used; the session closes instead.
pub const MAX_COUNTER: u64 = 1 << 60;

#[derive(Debug)]
enum Outgoing {
    Datagram(Bytes),
    Fragment(FragmentHeader, Bytes),
    /// A REQUEST: its id and bytes.
    Request(u32, Bytes),
    /// A REPLY: its header (id, status, report) and bytes.
    Reply([u8; REPLY_HEADER_LEN], Bytes),
    /// A piece of a whole frame (type byte first) too large for one packet.
    FramePiece(FragmentHeader, Bytes),
    /// Tests: any plaintext, sealed as it is (malformed frames from an authentic peer).
    #[cfg(test)]
    Raw(Bytes),
    Ping,
    Pong,
    Close(CloseCode),
    PathChallenge([u8; PATH_DATA_LEN]),
    PathResponse([u8; PATH_DATA_LEN]),
}

/// One DATA packet written by [`Session::poll_transmit`].
#[must_use = "a SessionTransmit describes bytes that must be sent"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTransmit {
    /// Bytes at the start of the caller's buffer.
    pub size: usize,
    /// Where to send them: the session's address, or the address being validated (a
    /// PATH_CHALLENGE).
    pub destination: SocketAddr,
}

/// What an authentic DATA packet delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// An application datagram: the buffer it was decrypted in, handed over without a copy.
    Datagram(Bytes),
    /// A keepalive frame (nothing for the application).
    Keepalive,
    /// The peer closed the session.
    Closed(CloseCode),
    /// A server's session: a request (its id is now in flight until [`Session::send_reply`]
    /// answers it).
    Request {
        /// The id the client chose.
        id: u32,
        /// The request's bytes.
        body: Bytes,
    },
    /// A client's session: the reply to one of its requests in flight.
    Reply(Reply),
}

/// Per-session counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// DATA packets sent.
    pub packets_sent: u64,
    /// Authentic DATA packets received.
    pub packets_received: u64,
    /// Application datagrams delivered.
    pub datagrams_received: u64,
    /// Dropped: AEAD failure.
    pub dropped_auth: u64,
    /// Dropped: replay window.
    pub dropped_replay: u64,
    /// Dropped: malformed frame inside an authentic packet.
    pub dropped_bad_frame: u64,
    /// PINGs sent (keepalives and liveness probes).
    pub pings_sent: u64,
    /// Of those, liveness probes: PINGs sent because a datagram went unanswered.
    pub liveness_probes: u64,
    /// Dropped: from an address that is not the session's (a client's session; a server's
    /// follows its client, [`path`]).
    pub dropped_wrong_source: u64,
    /// Key updates of the sending direction (§5.5).
    pub key_updates_sent: u64,
    /// Key updates of the receiving direction the peer made and this side followed.
    pub key_updates_received: u64,
    /// Authentic packets opened with the previous receive key (reordered across an update).
    pub opened_with_previous_key: u64,
    /// PATH_CHALLENGEs sent to a new client address.
    pub path_challenges_sent: u64,
    /// PATH_CHALLENGEs not sent: the address had not sent enough to pay for them (3×).
    pub path_challenges_unpaid: u64,
    /// Address migrations completed (a validated new client address).
    pub migrations: u64,
    /// FRAGMENT and FRAME_FRAGMENT frames sent (pieces of datagrams, requests and replies
    /// larger than one packet, §5.7, §5.8).
    pub fragments_sent: u64,
    /// Requests queued (a client's session).
    pub requests_sent: u64,
    /// Replies received that answered a request in flight (a client's session).
    pub replies_received: u64,
    /// Replies received for no request in flight — never sent, already answered or forgotten:
    /// dropped (their load report is still taken).
    pub replies_unknown: u64,
    /// Requests received and handed on (a server's session).
    pub requests_received: u64,
    /// REQUESTs dropped: their id was already in flight (a server's session).
    pub requests_duplicate: u64,
    /// Replies queued (a server's session).
    pub replies_sent: u64,
}

/// An established, encrypted session with one peer.
#[derive(Debug)]
pub struct Session {
    local_id: u32,
    remote_id: u32,
    remote: SocketAddr,
    send: SendKeys,
    recv: RecvKeys,
    stream: crate::stream::StreamKeys,
    suite: Suite,
    next_counter: u64,
    replay: ReplayWindow,
    config: SessionConfig,
    last_recv: Instant,
    next_ping: Instant,
    outgoing: VecDeque<Outgoing>,
    closed: Option<CloseReason>,
    stats: SessionStats,
    /// RTT estimate from PING → PONG (and, on a client, the handshake), which sets the liveness
    /// probe timeout.
    rtt: RttEstimator,
    /// When the first datagram went out since the last authentic packet arrived.
    unanswered_since: Option<Instant>,
    /// Liveness probes sent in this silence, and when the last went out.
    probes: u32,
    last_probe: Option<Instant>,
    /// When the only unanswered PING went out (an RTT sample when its PONG comes).
    ping_sent: Option<Instant>,
    /// Another PING went out before a PONG came: the next PONG's sample would be ambiguous
    /// (Karn's rule), so it is not taken.
    ping_ambiguous: bool,
    /// Whether this side follows its peer to a new address (a server's sessions do).
    migrates: bool,
    /// A new peer address being validated.
    path: Option<PathCheck>,
    /// Datagrams larger than one packet, being put back together.
    reassembly: Reassembly,
    /// The next fragmented datagram's id.
    next_fragment_id: u32,
    /// Whether this side answers requests (a server's session) or sends them (a client's).
    serving: bool,
    /// Requests in flight and what their replies taught; allocated by the first request.
    requests: Option<Box<Requests>>,
}

impl Session {
    /// A session that starts now. `local_id` is what the peer puts in DATA to us; `remote_id` is
    /// what we put in DATA to it.
    pub fn new(
        now: Instant,
        local_id: u32,
        remote_id: u32,
        remote: SocketAddr,
        keys: SessionKeys,
        config: SessionConfig,
    ) -> Self {
        let suite = keys.seal.suite();
        Self {
            local_id,
            remote_id,
            remote,
            send: SendKeys::new(now, keys.seal),
            recv: RecvKeys::new(keys.open),
            stream: keys.stream,
            suite,
            next_counter: 0,
            replay: ReplayWindow::default(),
            config,
            last_recv: now,
            next_ping: now + config.keepalive_interval,
            outgoing: VecDeque::new(),
            closed: None,
            stats: SessionStats::default(),
            rtt: RttEstimator::default(),
            unanswered_since: None,
            probes: 0,
            last_probe: None,
            ping_sent: None,
            ping_ambiguous: false,
            migrates: false,
            path: None,
            reassembly: Reassembly::default(),
            next_fragment_id: 0,
            serving: false,
            requests: None,
        }
    }

    /// Makes this the answering side of requests (a server's session, PROTOCOL.md §5.8): it
    /// takes REQUESTs and sends REPLYs. A session is otherwise the asking side (a client's):
    /// it sends REQUESTs and takes REPLYs. A frame of the other direction is malformed.
    pub fn serving(mut self) -> Self {
        self.serving = true;
        self
    }

    /// Lets the session follow its peer to a new address after validating it (a server's
    /// sessions; PROTOCOL.md §5.6).
    pub fn with_migration(mut self) -> Self {
        self.migrates = true;
        self
    }

    /// The DATA cipher suite the handshake chose.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The current key epochs: (sending, receiving).
    pub fn key_epochs(&self) -> (u32, u32) {
        (self.send.epoch(), self.recv.epoch())
    }

    /// The address being validated, while a migration is pending.
    pub fn pending_path(&self) -> Option<SocketAddr> {
        self.path.as_ref().map(|p| p.addr())
    }

    /// Feeds an RTT measured outside the session (a client's handshake time).
    pub fn rtt_sample(&mut self, rtt: Duration) {
        self.rtt.sample(rtt);
    }

    /// The smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.smoothed()
    }

    /// The liveness probe timeout now: smoothed RTT + 4 × variation, clamped; the initial
    /// value before any sample.
    pub fn probe_timeout(&self) -> Duration {
        let c = &self.config;
        match self.rtt.smoothed() {
            None => c.initial_probe_timeout,
            Some(srtt) => srtt + 4 * self.rtt.variation().max(Duration::from_micros(250)),
        }
        .clamp(
            c.min_probe_timeout,
            c.max_probe_timeout.max(c.min_probe_timeout),
        )
    }

    /// When the next liveness step is due: the first probe, the next one, or the verdict.
    fn liveness_deadline(&self) -> Option<Instant> {
        if self.config.liveness_probes == 0 {
            return None;
        }
        let since = self.unanswered_since?;
        Some(self.last_probe.unwrap_or(since) + self.probe_timeout())
    }

    /// The stream keys of this session (`crate::stream`), derived at the handshake.
    pub fn stream_keys(&self) -> crate::stream::StreamKeys {
        self.stream.clone()
    }

    /// The peer's session id (the receiver id of DATA we send).
    pub fn remote_id(&self) -> u32 {
        self.remote_id
    }

    /// Our session id (the receiver id of DATA sent to us).
    pub fn local_id(&self) -> u32 {
        self.local_id
    }

    /// The peer's address: where the handshake came from, or the last validated address the
    /// client moved to.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Why it ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Whether the session is closed and has nothing left to send.
    pub fn is_drained(&self) -> bool {
        self.closed.is_some() && self.outgoing.is_empty()
    }

    /// Whether packets wait to be sent.
    pub fn has_pending(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The reassembly's counters (datagrams larger than one packet, §5.7).
    pub fn reassembly_stats(&self) -> ReassemblyStats {
        self.reassembly.stats()
    }

    /// Bytes held now for datagrams not yet whole (at most [`MAX_REASSEMBLY_BYTES`]).
    pub fn reassembly_held(&self) -> usize {
        self.reassembly.held()
    }

    /// Counts the datagram that rode in the handshake (a server session's early data,
    /// PROTOCOL.md §4.8) as received and delivered.
    pub fn count_early_datagram(&mut self) {
        self.stats.packets_received += 1;
        self.stats.datagrams_received += 1;
    }

    /// Queues an application datagram (up to [`MAX_DATAGRAM`] bytes: in fragments when it does
    /// not fit one packet of [`SessionConfig::max_packet`] bytes).
    pub fn send_datagram(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_datagram_owned(Bytes::copy_from_slice(data))
            .map_err(|(e, _)| e)
    }

    /// Queues an application datagram the caller already owns, without copying it; on refusal
    /// the datagram comes back with the reason. A datagram in fragments takes one place in the
    /// send queue per fragment, all or none.
    pub fn send_datagram_owned(&mut self, data: Bytes) -> Result<(), (SendError, Bytes)> {
        if self.closed.is_some() {
            return Err((SendError::Closed, data));
        }
        if data.len() > MAX_DATAGRAM {
            return Err((SendError::TooLarge, data));
        }
        match self.check_send(data.len(), data.len()) {
            Err(e) => Err((e, data)),
            Ok(None) => {
                self.outgoing.push_back(Outgoing::Datagram(data));
                Ok(())
            }
            Ok(Some(cut)) => {
                self.queue_pieces(&data, cut, Outgoing::Fragment);
                Ok(())
            }
        }
    }

    /// Queues `whole` cut into `count` pieces of `size` bytes (the last takes the rest), each
    /// made a frame by `piece`, under the next fragment id.
    fn queue_pieces(
        &mut self,
        whole: &Bytes,
        (count, size): (usize, usize),
        piece: fn(FragmentHeader, Bytes) -> Outgoing,
    ) {
        let id = self.next_fragment_id;
        self.next_fragment_id = self.next_fragment_id.wrapping_add(1);
        for index in 0..count {
            let bytes = whole.slice(index * size..((index + 1) * size).min(whole.len()));
            let header = FragmentHeader {
                id,
                index: index as u8,
                count: count as u8,
            };
            self.outgoing.push_back(piece(header, bytes));
        }
    }

    /// Queues a REQUEST or REPLY frame: whole when it fits one packet, else the frame (type
    /// byte, `header`, `body`) in FRAME_FRAGMENT pieces. The caller checked the body's size.
    fn queue_frame(
        &mut self,
        ty: u8,
        header: &[u8],
        body: Bytes,
        whole: impl FnOnce(Bytes) -> Outgoing,
    ) -> Result<(), (SendError, Bytes)> {
        let inner = header.len() + body.len();
        match self.check_send(inner, 1 + inner) {
            Err(e) => Err((e, body)),
            Ok(None) => {
                self.outgoing.push_back(whole(body));
                Ok(())
            }
            Ok(Some(cut)) => {
                let mut frame = bytes::BytesMut::with_capacity(1 + inner);
                frame.extend_from_slice(&[ty]);
                frame.extend_from_slice(header);
                frame.extend_from_slice(&body);
                self.queue_pieces(&frame.freeze(), cut, Outgoing::FramePiece);
                Ok(())
            }
        }
    }

    /// The largest datagram one packet carries under this session's packet size.
    fn max_unfragmented(&self) -> usize {
        self.config
            .max_packet
            .clamp(MIN_PACKET, MAX_DATAGRAM_LEN)
            .saturating_sub(DATA_HEADER_LEN + 1 + AEAD_TAG_LEN)
    }

    /// Whether a frame whose body (after its type byte) is `len` bytes may be queued now: None
    /// when it goes whole, or the fragments (count, size of each but the last) of its `whole`
    /// bytes (a datagram's own bytes; a request's or reply's whole frame).
    fn check_send(&self, len: usize, whole: usize) -> Result<Option<(usize, usize)>, SendError> {
        if self.closed.is_some() {
            return Err(SendError::Closed);
        }
        let single = self.max_unfragmented();
        let cut = if len <= single {
            None
        } else {
            Some(fragment::cut(whole, single - FRAGMENT_HEADER_LEN).ok_or(SendError::TooLarge)?)
        };
        let places = cut.map_or(1, |(count, _)| count);
        if self.outgoing.len() + places > MAX_SEND_QUEUE {
            return Err(SendError::QueueFull);
        }
        Ok(cut)
    }

    /// Tests: queues `plain` to be sealed as the whole plaintext of one DATA packet, whatever
    /// it holds (at most one packet's worth).
    #[cfg(test)]
    pub(crate) fn queue_raw(&mut self, plain: Bytes) {
        self.outgoing.push_back(Outgoing::Raw(plain));
    }

    /// Closes the session: a CLOSE frame is queued (sent by the next `poll_transmit`), then the
    /// session is done. Datagrams queued before are still sent first.
    pub fn close(&mut self, code: CloseCode) {
        if self.closed.is_none() {
            self.closed = Some(CloseReason::Local(code));
            self.outgoing.push_back(Outgoing::Close(code));
        }
    }

    /// Opens one DATA packet that arrived from `from`.
    pub fn handle_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: DataHeader,
        ciphertext: &[u8],
    ) -> Result<Delivered, DataDrop> {
        if self.closed.is_some() {
            return Err(DataDrop::Closed);
        }
        if from != self.remote && !self.migrates {
            self.stats.dropped_wrong_source += 1;
            trace!(%from, "DATA dropped: not from the session's address");
            return Err(DataDrop::WrongSource);
        }
        // Counters at or past MAX_COUNTER are never sent by a conforming peer: forged, and
        // refused before any AEAD work.
        if header.counter >= MAX_COUNTER {
            self.stats.dropped_auth += 1;
            return Err(DataDrop::Auth);
        }
        if !self.replay.check(header.counter) {
            self.stats.dropped_replay += 1;
            trace!(counter = header.counter, "DATA dropped: replay");
            return Err(DataDrop::Replay);
        }
        if ciphertext.len() > MAX_DATAGRAM_LEN {
            self.stats.dropped_auth += 1;
            return Err(DataDrop::Auth);
        }
        let mut aad = [0u8; DATA_HEADER_LEN];
        let _ = header.encode(&mut aad);
        let newest = self.replay.highest().is_none_or(|h| header.counter > h);
        // Opened in place in the buffer that, for a datagram frame, becomes the delivered
        // datagram: one copy of the ciphertext, none of the plaintext.
        let mut buf = ciphertext.to_vec();
        let Some((plain_len, opened)) = self.recv.open(
            now,
            header.key_phase,
            header.counter,
            newest,
            &aad,
            &mut buf,
        ) else {
            self.stats.dropped_auth += 1;
            trace!("DATA dropped: authentication failed");
            return Err(DataDrop::Auth);
        };
        match opened {
            Opened::Switched => self.stats.key_updates_received += 1,
            Opened::Previous => self.stats.opened_with_previous_key += 1,
            Opened::Current => {}
        }
        buf.truncate(plain_len);
        // Authentic from here on: the peer is alive, whatever the frame says.
        self.replay.commit(header.counter);
        self.stats.packets_received += 1;
        self.last_recv = now;
        self.next_ping = now + self.config.keepalive_interval;
        // Heard from the peer: whatever went unanswered is answered.
        self.unanswered_since = None;
        self.probes = 0;
        self.last_probe = None;
        if from != self.remote {
            self.heard_from_new_address(now, from, header.counter, newest, ciphertext.len());
        }
        let (&ty, body) = buf.split_first().ok_or(DataDrop::BadFrame)?;
        match (ty, body.len()) {
            (frame::DATAGRAM, _) => {
                self.stats.datagrams_received += 1;
                // The frame type goes; the body moves down one byte within the same buffer.
                buf.copy_within(1.., 0);
                buf.truncate(plain_len - 1);
                Ok(Delivered::Datagram(Bytes::from(buf)))
            }
            (frame::REQUEST | frame::REPLY, _) => {
                let body = Bytes::from(buf).slice(1..);
                self.take_frame(now, ty, body)
            }
            (frame::FRAGMENT | frame::FRAME_FRAGMENT, _) => {
                let Some((header, piece)) = FragmentHeader::decode(body) else {
                    self.stats.dropped_bad_frame += 1;
                    trace!("DATA dropped: malformed fragment");
                    return Err(DataDrop::BadFrame);
                };
                match self.reassembly.take(now, ty, header, piece) {
                    Reassembled::Whole(datagram) if ty == frame::FRAGMENT => {
                        self.stats.datagrams_received += 1;
                        Ok(Delivered::Datagram(datagram))
                    }
                    // A whole request or reply; nothing else comes in FRAME_FRAGMENTs (a large
                    // datagram has FRAGMENT, and one encoding).
                    Reassembled::Whole(whole) => match whole.first() {
                        Some(&inner @ (frame::REQUEST | frame::REPLY)) => {
                            self.take_frame(now, inner, whole.slice(1..))
                        }
                        _ => {
                            self.stats.dropped_bad_frame += 1;
                            trace!("DATA dropped: frame fragments make no request or reply");
                            Err(DataDrop::BadFrame)
                        }
                    },
                    Reassembled::Kept => Ok(Delivered::Keepalive),
                    Reassembled::Malformed => {
                        self.stats.dropped_bad_frame += 1;
                        trace!(
                            id = header.id,
                            "DATA dropped: fragment does not fit its datagram"
                        );
                        Err(DataDrop::BadFrame)
                    }
                }
            }
            (frame::PING, 0) => {
                if self.outgoing.len() < MAX_SEND_QUEUE {
                    self.outgoing.push_back(Outgoing::Pong);
                }
                Ok(Delivered::Keepalive)
            }
            (frame::PONG, 0) => {
                if let Some(sent) = self.ping_sent.take()
                    && !self.ping_ambiguous
                {
                    self.rtt.sample(now.saturating_duration_since(sent));
                }
                self.ping_ambiguous = false;
                Ok(Delivered::Keepalive)
            }
            (frame::CLOSE, 2) => {
                let code = CloseCode(u16::from_be_bytes([body[0], body[1]]));
                self.closed = Some(CloseReason::Remote(code));
                self.outgoing.clear();
                Ok(Delivered::Closed(code))
            }
            (frame::PATH_CHALLENGE, PATH_DATA_LEN) => {
                let mut data = [0u8; PATH_DATA_LEN];
                data.copy_from_slice(body);
                if self.outgoing.len() < MAX_SEND_QUEUE {
                    self.outgoing.push_back(Outgoing::PathResponse(data));
                }
                Ok(Delivered::Keepalive)
            }
            (frame::PATH_RESPONSE, PATH_DATA_LEN) => {
                if let Some(check) = &self.path
                    && check.answered_by(from, body)
                {
                    debug_assert!(self.migrates);
                    self.remote = from;
                    self.path = None;
                    self.stats.migrations += 1;
                    trace!(%from, "session moved to a validated address");
                }
                Ok(Delivered::Keepalive)
            }
            _ => {
                self.stats.dropped_bad_frame += 1;
                trace!(ty, "DATA dropped: malformed frame");
                Err(DataDrop::BadFrame)
            }
        }
    }

    /// An authentic packet from an address other than the session's: count what it sent (the
    /// 3× budget), and if it is the newest packet so far, validate that address (a replayed or
    /// reordered packet moves nothing).
    fn heard_from_new_address(
        &mut self,
        now: Instant,
        from: SocketAddr,
        counter: u64,
        newest: bool,
        ciphertext_len: usize,
    ) {
        let size = DATA_HEADER_LEN + ciphertext_len;
        match &mut self.path {
            Some(check) if check.addr() == from => check.received(size),
            _ if newest => {
                let mut check = PathCheck::new(now, from, counter, self.probe_timeout());
                check.received(size);
                self.path = Some(check);
                self.queue_challenge();
            }
            _ => {}
        }
    }

    fn queue_challenge(&mut self) {
        if let Some(check) = &self.path
            && self.outgoing.len() < MAX_SEND_QUEUE
        {
            self.outgoing
                .push_back(Outgoing::PathChallenge(check.challenge()));
        }
    }

    /// The next timer: keepalive, idle deadline, liveness, a path challenge's retry, or the
    /// erasure of the previous receive key. None once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let mut t = self
            .next_ping
            .min(self.last_recv + self.config.idle_timeout);
        for other in [
            self.liveness_deadline(),
            self.path.as_ref().map(|p| p.next_at()),
            self.recv.previous_until(),
            self.reassembly.deadline(),
        ]
        .into_iter()
        .flatten()
        {
            t = t.min(other);
        }
        Some(t)
    }

    /// Fires timers due at `now`. Returns the reason if the session just died of idleness.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<CloseReason> {
        if self.closed.is_some() {
            return None;
        }
        if now >= self.last_recv + self.config.idle_timeout {
            self.closed = Some(CloseReason::IdleTimeout);
            self.outgoing.clear();
            return self.closed;
        }
        self.recv.expire(now);
        self.reassembly.expire(now);
        let pto = self.probe_timeout();
        if let Some(check) = &mut self.path
            && now >= check.next_at()
        {
            if check.retry(now, pto) {
                self.queue_challenge();
            } else {
                trace!(addr = %check.addr(), "path validation failed: the session stays");
                self.path = None;
            }
        }
        if self.liveness_deadline().is_some_and(|t| now >= t) {
            if self.probes >= self.config.liveness_probes {
                self.closed = Some(CloseReason::Unresponsive);
                self.outgoing.clear();
                return self.closed;
            }
            self.probes += 1;
            self.last_probe = Some(now);
            if self.outgoing.len() < MAX_SEND_QUEUE {
                self.outgoing.push_back(Outgoing::Ping);
                self.stats.pings_sent += 1;
                self.stats.liveness_probes += 1;
            }
            // A probe stands in for the keepalive.
            self.next_ping = now + self.config.keepalive_interval;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.config.keepalive_interval;
            if self.outgoing.len() < MAX_SEND_QUEUE {
                self.outgoing.push_back(Outgoing::Ping);
                self.stats.pings_sent += 1;
            }
        }
        None
    }

    /// Writes the next DATA packet into `buf` (at least [`MAX_DATAGRAM_LEN`] bytes); returns its
    /// length and destination, or None when nothing is queued. Call until None after every
    /// input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<SessionTransmit> {
        loop {
            let out = self.outgoing.pop_front()?;
            if self.next_counter >= MAX_COUNTER {
                self.outgoing.clear();
                self.closed = Some(CloseReason::CounterExhausted);
                return None;
            }
            let plain_len = match &out {
                Outgoing::Datagram(d) => 1 + d.len(),
                Outgoing::Fragment(_, piece) | Outgoing::FramePiece(_, piece) => {
                    1 + FRAGMENT_HEADER_LEN + piece.len()
                }
                Outgoing::Request(_, body) => 1 + REQUEST_HEADER_LEN + body.len(),
                Outgoing::Reply(_, body) => 1 + REPLY_HEADER_LEN + body.len(),
                #[cfg(test)]
                Outgoing::Raw(plain) => plain.len(),
                Outgoing::Ping | Outgoing::Pong => 1,
                Outgoing::Close(_) => 3,
                Outgoing::PathChallenge(_) | Outgoing::PathResponse(_) => 1 + PATH_DATA_LEN,
            };
            if buf.len() < DATA_HEADER_LEN + plain_len + AEAD_TAG_LEN {
                // The caller's buffer is too small (it should be MAX_DATAGRAM_LEN): keep the frame.
                self.outgoing.push_front(out);
                return None;
            }
            let destination = match (&out, &mut self.path) {
                (Outgoing::PathChallenge(data), Some(check)) if check.challenge() == *data => {
                    // Only as much to an unvalidated address as it sent us, three times over.
                    if !check.pay(DATA_HEADER_LEN + plain_len + AEAD_TAG_LEN) {
                        self.stats.path_challenges_unpaid += 1;
                        continue;
                    }
                    self.stats.path_challenges_sent += 1;
                    check.addr()
                }
                // A challenge for a check since replaced or abandoned.
                (Outgoing::PathChallenge(_), _) => continue,
                _ => self.remote,
            };
            if self.send.before_seal(
                now,
                self.config.rekey_after_packets,
                self.config.rekey_after_time,
            ) {
                self.stats.key_updates_sent += 1;
                trace!(epoch = self.send.epoch(), "sending key updated");
            }
            let header = DataHeader {
                receiver_id: self.remote_id,
                counter: self.next_counter,
                key_phase: self.send.phase(),
            };
            let Ok(h) = header.encode(buf) else {
                self.outgoing.push_front(out);
                return None;
            };
            let (head, body) = buf.split_at_mut(h);
            let len = match &out {
                Outgoing::Datagram(d) => {
                    body[0] = frame::DATAGRAM;
                    body[1..1 + d.len()].copy_from_slice(d);
                    1 + d.len()
                }
                Outgoing::Fragment(header, piece) | Outgoing::FramePiece(header, piece) => {
                    body[0] = match out {
                        Outgoing::Fragment(..) => frame::FRAGMENT,
                        _ => frame::FRAME_FRAGMENT,
                    };
                    header.encode(&mut body[1..1 + FRAGMENT_HEADER_LEN]);
                    let at = 1 + FRAGMENT_HEADER_LEN;
                    body[at..at + piece.len()].copy_from_slice(piece);
                    at + piece.len()
                }
                Outgoing::Request(id, bytes) => {
                    body[0] = frame::REQUEST;
                    body[1..1 + REQUEST_HEADER_LEN].copy_from_slice(&id.to_be_bytes());
                    let at = 1 + REQUEST_HEADER_LEN;
                    body[at..at + bytes.len()].copy_from_slice(bytes);
                    at + bytes.len()
                }
                Outgoing::Reply(header, bytes) => {
                    body[0] = frame::REPLY;
                    body[1..1 + REPLY_HEADER_LEN].copy_from_slice(header);
                    let at = 1 + REPLY_HEADER_LEN;
                    body[at..at + bytes.len()].copy_from_slice(bytes);
                    at + bytes.len()
                }
                #[cfg(test)]
                Outgoing::Raw(plain) => {
                    body[..plain.len()].copy_from_slice(plain);
                    plain.len()
                }
                Outgoing::Ping => {
                    body[0] = frame::PING;
                    1
                }
                Outgoing::Pong => {
                    body[0] = frame::PONG;
                    1
                }
                Outgoing::Close(code) => {
                    body[0] = frame::CLOSE;
                    body[1..3].copy_from_slice(&code.0.to_be_bytes());
                    3
                }
                Outgoing::PathChallenge(data) | Outgoing::PathResponse(data) => {
                    body[0] = match out {
                        Outgoing::PathChallenge(_) => frame::PATH_CHALLENGE,
                        _ => frame::PATH_RESPONSE,
                    };
                    body[1..1 + PATH_DATA_LEN].copy_from_slice(data);
                    1 + PATH_DATA_LEN
                }
            };
            match self.send.key().seal(header.counter, head, body, len) {
                Ok(n) => {
                    self.next_counter += 1;
                    self.send.sealed();
                    match &out {
                        // A datagram wants an answer (of some kind) within a PTO (R9).
                        Outgoing::Datagram(_)
                        | Outgoing::Fragment(..)
                        | Outgoing::FramePiece(..)
                        | Outgoing::Request(..)
                        | Outgoing::Reply(..)
                            if self.unanswered_since.is_none() =>
                        {
                            self.unanswered_since = Some(now);
                        }
                        Outgoing::Ping => {
                            if self.ping_sent.is_some() {
                                self.ping_ambiguous = true;
                            }
                            self.ping_sent = Some(now);
                        }
                        _ => {}
                    }
                    self.stats.packets_sent += 1;
                    if let Outgoing::Fragment(..) | Outgoing::FramePiece(..) = out {
                        self.stats.fragments_sent += 1;
                    }
                    return Some(SessionTransmit {
                        size: h + n,
                        destination,
                    });
                }
                Err(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests;
