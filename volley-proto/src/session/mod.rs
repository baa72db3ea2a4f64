//! An established session, the same on both sides: DATA sealing and opening, the replay
//! window, keepalive, idle timeout and orderly close.
//!
//! Plaintext of every DATA packet is one frame: a type byte and its body (`docs/PROTOCOL.md` §5).
//! The session never sends to any address but the one fixed at the handshake, and DATA from any
//! other source is dropped by the endpoint before it reaches here.

use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::trace;

use crate::crypto::SessionKeys;
use crate::packet::DataHeader;
use crate::rtt::RttEstimator;
use crate::{AEAD_TAG_LEN, DATA_HEADER_LEN, MAX_DATAGRAM_LEN};

mod close;
mod config;
mod replay;

pub use close::{CloseCode, CloseReason, DataDrop, SendError};
pub use config::SessionConfig;
pub use replay::{REPLAY_WINDOW, ReplayWindow};

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
}

/// Largest application datagram a session carries: a full-size DATA packet less header, frame
/// byte and AEAD tag.
pub const MAX_APP_DATAGRAM: usize = MAX_DATAGRAM_LEN - DATA_HEADER_LEN - 1 - AEAD_TAG_LEN;
/// How many packets a session queues for sending before `send_datagram` refuses.
pub const MAX_SEND_QUEUE: usize = 1024;
/// Counters at or beyond this are never used; the session closes instead (rekey is not in v1).
pub const MAX_COUNTER: u64 = 1 << 60;

#[derive(Debug)]
enum Outgoing {
    Datagram(Bytes),
    Ping,
    Pong,
    Close(CloseCode),
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
}

/// An established, encrypted session with one peer.
#[derive(Debug)]
pub struct Session {
    local_id: u32,
    remote_id: u32,
    remote: SocketAddr,
    keys: SessionKeys,
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
        Self {
            local_id,
            remote_id,
            remote,
            keys,
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
        }
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

    /// The stream keys of this session for a side in `role` (`crate::stream`).
    pub fn stream_keys(&self, role: crate::stream::Role) -> crate::stream::StreamKeys {
        self.keys.stream_keys(role)
    }

    /// The peer's session id (the receiver id of DATA we send).
    pub fn remote_id(&self) -> u32 {
        self.remote_id
    }

    /// Our session id (the receiver id of DATA sent to us).
    pub fn local_id(&self) -> u32 {
        self.local_id
    }

    /// The peer's address, fixed at the handshake.
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

    /// Queues an application datagram.
    pub fn send_datagram(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.check_send(data.len())?;
        self.outgoing
            .push_back(Outgoing::Datagram(Bytes::copy_from_slice(data)));
        Ok(())
    }

    /// Queues an application datagram the caller already owns, without copying it; on refusal
    /// the datagram comes back with the reason.
    pub fn send_datagram_owned(&mut self, data: Bytes) -> Result<(), (SendError, Bytes)> {
        if let Err(e) = self.check_send(data.len()) {
            return Err((e, data));
        }
        self.outgoing.push_back(Outgoing::Datagram(data));
        Ok(())
    }

    fn check_send(&self, len: usize) -> Result<(), SendError> {
        if self.closed.is_some() {
            return Err(SendError::Closed);
        }
        if len > MAX_APP_DATAGRAM {
            return Err(SendError::TooLarge);
        }
        if self.outgoing.len() >= MAX_SEND_QUEUE {
            return Err(SendError::QueueFull);
        }
        Ok(())
    }

    /// Closes the session: a CLOSE frame is queued (sent by the next `poll_transmit`), then the
    /// session is done. Datagrams queued before are still sent first.
    pub fn close(&mut self, code: CloseCode) {
        if self.closed.is_none() {
            self.closed = Some(CloseReason::Local(code));
            self.outgoing.push_back(Outgoing::Close(code));
        }
    }

    /// Opens one DATA packet from the session's peer.
    pub fn handle_data(
        &mut self,
        now: Instant,
        header: DataHeader,
        ciphertext: &[u8],
    ) -> Result<Delivered, DataDrop> {
        if self.closed.is_some() {
            return Err(DataDrop::Closed);
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
        // Opened in place in the buffer that, for a datagram frame, becomes the delivered
        // datagram: one copy of the ciphertext, none of the plaintext.
        let mut buf = ciphertext.to_vec();
        let plain_len = match self.keys.open(header.counter, &aad, &mut buf) {
            Ok(p) => p.len(),
            Err(_) => {
                self.stats.dropped_auth += 1;
                trace!("DATA dropped: authentication failed");
                return Err(DataDrop::Auth);
            }
        };
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
        let (&ty, body) = buf.split_first().ok_or(DataDrop::BadFrame)?;
        match (ty, body.len()) {
            (frame::DATAGRAM, _) => {
                self.stats.datagrams_received += 1;
                // The frame type goes; the body moves down one byte within the same buffer.
                buf.copy_within(1.., 0);
                buf.truncate(plain_len - 1);
                Ok(Delivered::Datagram(Bytes::from(buf)))
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
            _ => {
                self.stats.dropped_bad_frame += 1;
                trace!(ty, "DATA dropped: malformed frame");
                Err(DataDrop::BadFrame)
            }
        }
    }

    /// The next timer: keepalive or idle deadline. None once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let t = self
            .next_ping
            .min(self.last_recv + self.config.idle_timeout);
        Some(self.liveness_deadline().map_or(t, |l| l.min(t)))
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
    /// length, or None when nothing is queued. Call until None after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        loop {
            let out = self.outgoing.pop_front()?;
            if self.next_counter >= MAX_COUNTER {
                self.outgoing.clear();
                self.closed = Some(CloseReason::CounterExhausted);
                return None;
            }
            let plain_len = match &out {
                Outgoing::Datagram(d) => 1 + d.len(),
                Outgoing::Ping | Outgoing::Pong => 1,
                Outgoing::Close(_) => 3,
            };
            if buf.len() < DATA_HEADER_LEN + plain_len + AEAD_TAG_LEN {
                // The caller's buffer is too small (it should be MAX_DATAGRAM_LEN): keep the frame.
                self.outgoing.push_front(out);
                return None;
            }
            let header = DataHeader {
                receiver_id: self.remote_id,
                counter: self.next_counter,
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
            };
            match self.keys.seal(header.counter, head, body, len) {
                Ok(n) => {
                    self.next_counter += 1;
                    match &out {
                        // A datagram wants an answer (of some kind) within a PTO (R9).
                        Outgoing::Datagram(_) if self.unanswered_since.is_none() => {
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
                    return Some(h + n);
                }
                Err(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(now: Instant) -> (Session, Session) {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let cfg = SessionConfig::default();
        let x = Session::new(
            now,
            1,
            2,
            "127.0.0.1:2".parse().unwrap(),
            SessionKeys::new(&a, &b),
            cfg,
        );
        let y = Session::new(
            now,
            2,
            1,
            "127.0.0.1:1".parse().unwrap(),
            SessionKeys::new(&b, &a),
            cfg,
        );
        (x, y)
    }

    fn deliver(
        from: &mut Session,
        to: &mut Session,
        now: Instant,
    ) -> Vec<Result<Delivered, DataDrop>> {
        let mut out = vec![];
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        while let Some(n) = from.poll_transmit(now, &mut buf) {
            let crate::packet::Packet::Data(h, ct) =
                crate::packet::Packet::decode(&buf[..n]).unwrap()
            else {
                panic!("not data")
            };
            out.push(to.handle_data(now, h, ct));
        }
        out
    }

    #[test]
    fn r5_keepalive_then_idle_timeout() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(a.poll_timeout(), Some(t1));
        assert_eq!(a.handle_timeout(t1), None);
        assert_eq!(deliver(&mut a, &mut b, t1), vec![Ok(Delivered::Keepalive)]);
        assert_eq!(deliver(&mut b, &mut a, t1), vec![Ok(Delivered::Keepalive)]);
        // b goes silent: a dies 5 s after the last thing it heard.
        let mut t = t1;
        for _ in 0..4 {
            t += Duration::from_secs(1);
            assert_eq!(a.handle_timeout(t), None);
        }
        assert_eq!(
            a.handle_timeout(t1 + Duration::from_secs(5)),
            Some(CloseReason::IdleTimeout)
        );
        assert_eq!(a.send_datagram(b"x"), Err(SendError::Closed));
    }

    #[test]
    fn r9_rtt_samples_come_from_unambiguous_ping_pong_round_trips() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        assert_eq!(a.srtt(), None);
        // A keepalive PING answered 10 ms later: the first sample.
        let t1 = t0 + Duration::from_secs(1);
        a.handle_timeout(t1);
        deliver(&mut a, &mut b, t1);
        let t2 = t1 + Duration::from_millis(10);
        deliver(&mut b, &mut a, t2);
        assert_eq!(a.srtt(), Some(Duration::from_millis(10)));
        // A PING lost, a second sent a second later, its PONG after 500 ms: which PING does it
        // answer? Ambiguous, so no sample (Karn's rule).
        let t3 = t2 + Duration::from_secs(1);
        a.handle_timeout(t3);
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        while a.poll_transmit(t3, &mut buf).is_some() {}
        let t4 = t3 + Duration::from_secs(1);
        a.handle_timeout(t4);
        deliver(&mut a, &mut b, t4);
        deliver(&mut b, &mut a, t4 + Duration::from_millis(500));
        assert_eq!(a.srtt(), Some(Duration::from_millis(10)));
        // The next clean round trip samples again.
        let t5 = t4 + Duration::from_millis(1_500);
        a.handle_timeout(t5);
        deliver(&mut a, &mut b, t5);
        deliver(&mut b, &mut a, t5 + Duration::from_millis(18));
        assert_eq!(a.srtt(), Some(Duration::from_millis(11)));
    }

    #[test]
    fn r5_small_buffer_keeps_the_frame() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send_datagram(&[7u8; 100]).unwrap();
        let mut small = [0u8; 64];
        assert_eq!(a.poll_transmit(t0, &mut small), None);
        assert_eq!(
            deliver(&mut a, &mut b, t0),
            vec![Ok(Delivered::Datagram(vec![7u8; 100].into()))]
        );
    }

    #[test]
    fn r5_orderly_close_reaches_peer() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send_datagram(b"last").unwrap();
        a.close(CloseCode::GOING_AWAY);
        assert_eq!(
            deliver(&mut a, &mut b, t0),
            vec![
                Ok(Delivered::Datagram(bytes::Bytes::from_static(b"last"))),
                Ok(Delivered::Closed(CloseCode::GOING_AWAY))
            ]
        );
        assert_eq!(
            b.close_reason(),
            Some(CloseReason::Remote(CloseCode::GOING_AWAY))
        );
        assert!(a.is_drained());
    }

    #[test]
    fn s4_tampered_data_is_dropped() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send_datagram(b"secret").unwrap();
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let n = a.poll_transmit(t0, &mut buf).unwrap();
        assert!(
            !buf[..n].windows(6).any(|w| w == b"secret"),
            "plaintext on the wire"
        );
        for i in 2..n {
            let mut t = buf;
            t[i] ^= 0x80;
            if let Ok(crate::packet::Packet::Data(h, ct)) = crate::packet::Packet::decode(&t[..n]) {
                assert!(b.handle_data(t0, h, ct).is_err(), "flip at {i} accepted");
            }
        }
        let crate::packet::Packet::Data(h, ct) = crate::packet::Packet::decode(&buf[..n]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            b.handle_data(t0, h, ct),
            Ok(Delivered::Datagram(bytes::Bytes::from_static(b"secret")))
        );
        assert_eq!(b.handle_data(t0, h, ct), Err(DataDrop::Replay));
        assert_eq!(b.stats().dropped_replay, 1);
    }
}
