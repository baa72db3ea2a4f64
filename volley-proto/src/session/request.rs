//! Requests and replies on a session (PROTOCOL.md §5.8): the REQUEST and REPLY frames, the
//! reply's status and the per-reply load report, and each side's bookkeeping — the requests a
//! client has in flight (matched by id when their replies come, timed, and their server's latest
//! report kept) and the requests a server has not answered yet.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::trace;

use super::fragment::MAX_DATAGRAM;
use super::{DataDrop, Delivered, Outgoing, SendError, Session, SessionStats, frame};
use crate::rtt::RttEstimator;

/// Bytes of a REQUEST frame's body before the request's own bytes: its id (u32).
pub const REQUEST_HEADER_LEN: usize = 4;
/// Bytes of a per-reply load report: expected completion (u32 µs), requests in flight (u16),
/// capacity (u16).
pub const LOAD_REPORT_LEN: usize = 8;
/// Bytes of a REPLY frame's body before the reply's own bytes: the id it answers (u32), its
/// status (u8) and the load report ([`LOAD_REPORT_LEN`]).
pub const REPLY_HEADER_LEN: usize = 4 + 1 + LOAD_REPORT_LEN;
/// Most requests a client has in flight on one session; a server answers a REQUEST beyond it
/// at once with [`ReplyStatus::REFUSED`].
pub const MAX_REQUESTS: usize = 1024;
/// The largest frame a session reassembles from FRAME_FRAGMENTs: a type byte, a REPLY's header
/// and [`MAX_DATAGRAM`] bytes of reply.
pub const MAX_FRAME: usize = 1 + REPLY_HEADER_LEN + MAX_DATAGRAM;

/// A reply's status: whether the server's application answered the request, and if not why.
/// Values other than the named ones are delivered as they are (a later version may add some).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyStatus(pub u8);

impl ReplyStatus {
    /// The application answered: the body is its reply.
    pub const OK: ReplyStatus = ReplyStatus(0);
    /// The application let the request go without answering it (body empty).
    pub const DROPPED: ReplyStatus = ReplyStatus(1);
    /// The server did not take the request: [`MAX_REQUESTS`] were already in flight on the
    /// session, or the application could not queue it (body empty).
    pub const REFUSED: ReplyStatus = ReplyStatus(2);
}

/// The server's load as one REPLY reports it, in 8 bytes (PROTOCOL.md §5.8): the load hint of
/// an OFFER (§4.3) with its counts narrowed to 16 bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LoadReport {
    /// The server's expected completion of one more request when it wrote the reply, in
    /// microseconds (at least 1, saturating at 2^32 − 1); 0 means "no estimate".
    pub expected_us: u32,
    /// Requests in flight at the server (plus offers outstanding), saturating at 65,535.
    pub in_flight: u16,
    /// The server's capacity (requests it serves at once), saturating at 65,535; 0 means
    /// "unbounded".
    pub capacity: u16,
}

impl LoadReport {
    /// A report of `expected` with `in_flight` requests at a server of `capacity` slots (0:
    /// unbounded), each narrowed as the wire wants it.
    pub fn new(expected: Duration, in_flight: u32, capacity: u32) -> Self {
        Self {
            expected_us: expected.as_micros().clamp(1, u128::from(u32::MAX)) as u32,
            in_flight: in_flight.min(u32::from(u16::MAX)) as u16,
            capacity: capacity.min(u32::from(u16::MAX)) as u16,
        }
    }

    /// The expected completion time, if the server gave one.
    pub fn expected(&self) -> Option<Duration> {
        (self.expected_us > 0).then(|| Duration::from_micros(u64::from(self.expected_us)))
    }

    /// The report's [`LOAD_REPORT_LEN`] bytes, big-endian.
    pub fn encode(&self) -> [u8; LOAD_REPORT_LEN] {
        let mut out = [0u8; LOAD_REPORT_LEN];
        out[..4].copy_from_slice(&self.expected_us.to_be_bytes());
        out[4..6].copy_from_slice(&self.in_flight.to_be_bytes());
        out[6..].copy_from_slice(&self.capacity.to_be_bytes());
        out
    }

    /// Reads a report from its [`LOAD_REPORT_LEN`] bytes.
    pub fn decode(b: &[u8; LOAD_REPORT_LEN]) -> Self {
        Self {
            expected_us: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            in_flight: u16::from_be_bytes([b[4], b[5]]),
            capacity: u16::from_be_bytes([b[6], b[7]]),
        }
    }
}

/// A REPLY as the client's session delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The id of the request it answers.
    pub id: u32,
    /// Whether the application answered.
    pub status: ReplyStatus,
    /// The server's load when it wrote the reply.
    pub report: LoadReport,
    /// The reply's bytes (empty unless the status is [`ReplyStatus::OK`]).
    pub body: Bytes,
    /// From the request's queueing to this reply's arrival.
    pub elapsed: Duration,
}

/// A REQUEST frame's body split: (id, the request's bytes); None when it is shorter than its
/// header.
pub(super) fn decode_request(body: &Bytes) -> Option<(u32, Bytes)> {
    let head = body.get(..REQUEST_HEADER_LEN)?;
    let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    Some((id, body.slice(REQUEST_HEADER_LEN..)))
}

/// A REPLY frame's body split: (id, status, report, the reply's bytes); None when it is shorter
/// than its header.
pub(super) fn decode_reply(body: &Bytes) -> Option<(u32, ReplyStatus, LoadReport, Bytes)> {
    let head = body.get(..REPLY_HEADER_LEN)?;
    let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let status = ReplyStatus(head[4]);
    let mut report = [0u8; LOAD_REPORT_LEN];
    report.copy_from_slice(&head[5..REPLY_HEADER_LEN]);
    Some((
        id,
        status,
        LoadReport::decode(&report),
        body.slice(REPLY_HEADER_LEN..),
    ))
}

/// The REPLY header's bytes.
pub(super) fn reply_header(
    id: u32,
    status: ReplyStatus,
    report: LoadReport,
) -> [u8; REPLY_HEADER_LEN] {
    let mut h = [0u8; REPLY_HEADER_LEN];
    h[..4].copy_from_slice(&id.to_be_bytes());
    h[4] = status.0;
    h[5..].copy_from_slice(&report.encode());
    h
}

/// One session's requests, either side's; allocated on a session's first request, so that a
/// session that carries none pays a pointer.
#[derive(Debug, Default)]
pub(super) struct Requests {
    /// Client: requests in flight, by id, with when each was queued.
    pub(super) out: HashMap<u32, Instant>,
    /// Client: the next id [`Requests::allocate`] tries.
    pub(super) next_id: u32,
    /// Client: the smoothed time from a request's queueing to its (OK) reply.
    pub(super) reply_time: RttEstimator,
    /// Client: the latest report, and when it arrived.
    pub(super) report: Option<(LoadReport, Instant)>,
    /// Server: requests received and not answered yet.
    pub(super) inbound: HashSet<u32>,
}

impl Requests {
    /// The next id not in flight, counting up from the last one handed out (wrapping at 2^32).
    pub(super) fn allocate(&mut self) -> u32 {
        // At most MAX_REQUESTS ids are in flight, so this ends within MAX_REQUESTS + 1 steps.
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.out.contains_key(&id) {
                return id;
            }
        }
    }
}

/// A session's side of requests and replies: sending, answering, forgetting, and taking the
/// frames in (PROTOCOL.md §5.8). The frames go out through the session's send queue like any
/// other.
impl Session {
    pub(super) fn requests_mut(&mut self) -> &mut Requests {
        self.requests.get_or_insert_with(Box::default)
    }

    /// Client side: queues a request of `body` (at most [`MAX_DATAGRAM`] bytes; in
    /// FRAME_FRAGMENTs when it does not fit one packet) under the next id not in flight, and
    /// returns that id: its reply comes as [`Delivered::Reply`] with the same id
    /// (PROTOCOL.md §5.8). On refusal the body comes back with the reason.
    pub fn send_request(&mut self, now: Instant, body: Bytes) -> Result<u32, (SendError, Bytes)> {
        let start = self.requests.as_ref().map_or(0, |r| r.next_id);
        let id = self.requests.as_mut().map_or(0, |r| r.allocate());
        let sent = self.send_request_with_id(now, id, body);
        if let Some(r) = &mut self.requests {
            // A refused request uses up no id.
            r.next_id = if sent.is_ok() {
                id.wrapping_add(1)
            } else {
                start
            };
        }
        sent.map(|()| id)
    }

    /// Client side: queues a request under an id the caller chose, which must not be in flight
    /// ([`SendError::RequestInFlight`]). Otherwise like [`Session::send_request`]: refused when
    /// closed, on a serving session, larger than [`MAX_DATAGRAM`], with [`MAX_REQUESTS`] in
    /// flight already ([`SendError::TooManyRequests`]) or with no room in the send queue.
    pub fn send_request_with_id(
        &mut self,
        now: Instant,
        id: u32,
        body: Bytes,
    ) -> Result<(), (SendError, Bytes)> {
        if self.closed.is_some() {
            return Err((SendError::Closed, body));
        }
        if self.serving {
            return Err((SendError::WrongDirection, body));
        }
        if body.len() > MAX_DATAGRAM {
            return Err((SendError::TooLarge, body));
        }
        if let Some(r) = &self.requests {
            if r.out.contains_key(&id) {
                return Err((SendError::RequestInFlight, body));
            }
            if r.out.len() >= MAX_REQUESTS {
                return Err((SendError::TooManyRequests, body));
            }
        }
        self.queue_frame(frame::REQUEST, &id.to_be_bytes(), body, |body| {
            Outgoing::Request(id, body)
        })?;
        self.requests_mut().out.insert(id, now);
        self.stats.requests_sent += 1;
        Ok(())
    }

    /// Server side: queues the reply to request `id`, which must be in flight (received and
    /// not answered: else [`SendError::UnknownRequest`]), with `status` and the server's load
    /// `report`; the id is answered from then on. `body` is at most [`MAX_DATAGRAM`] bytes (in
    /// FRAME_FRAGMENTs when it does not fit one packet). On refusal the body comes back with
    /// the reason and the request stays in flight.
    pub fn send_reply(
        &mut self,
        id: u32,
        status: ReplyStatus,
        report: LoadReport,
        body: Bytes,
    ) -> Result<(), (SendError, Bytes)> {
        if self.closed.is_some() {
            return Err((SendError::Closed, body));
        }
        if !self.serving {
            return Err((SendError::WrongDirection, body));
        }
        if !self
            .requests
            .as_ref()
            .is_some_and(|r| r.inbound.contains(&id))
        {
            return Err((SendError::UnknownRequest, body));
        }
        if body.len() > MAX_DATAGRAM {
            return Err((SendError::TooLarge, body));
        }
        let header = reply_header(id, status, report);
        self.queue_frame(frame::REPLY, &header, body, |body| {
            Outgoing::Reply(header, body)
        })?;
        self.requests_mut().inbound.remove(&id);
        self.stats.replies_sent += 1;
        Ok(())
    }

    /// Forgets request `id`: on a client, its caller stopped waiting (its reply, if one comes,
    /// is counted as unknown); on a server, a request that will get no REPLY. Whether it was
    /// in flight.
    pub fn forget_request(&mut self, id: u32) -> bool {
        let serving = self.serving;
        self.requests.as_mut().is_some_and(|r| {
            if serving {
                r.inbound.remove(&id)
            } else {
                r.out.remove(&id).is_some()
            }
        })
    }

    /// Requests in flight: a client's sent and not answered (nor forgotten); a server's
    /// received and not answered.
    pub fn requests_in_flight(&self) -> usize {
        self.requests.as_ref().map_or(0, |r| {
            if self.serving {
                r.inbound.len()
            } else {
                r.out.len()
            }
        })
    }

    /// Takes every request in flight out of the session, for the caller to fail (a client's:
    /// their callers) or count (a server's: their load), as when the session ends: ids in no
    /// particular order.
    pub fn take_requests(&mut self) -> Vec<u32> {
        match self.requests.as_mut() {
            None => Vec::new(),
            Some(r) if self.serving => r.inbound.drain().collect(),
            Some(r) => r.out.drain().map(|(id, _)| id).collect(),
        }
    }

    /// Client side: the load report of the latest reply and when it arrived (PROTOCOL.md
    /// §5.8); None before the first reply.
    pub fn load_report(&self) -> Option<(LoadReport, Instant)> {
        self.requests.as_ref().and_then(|r| r.report)
    }

    /// Client side: the smoothed time from a request's queueing to its reply (status OK only),
    /// RFC 6298's weights; None before the first.
    pub fn reply_time(&self) -> Option<Duration> {
        self.requests.as_ref().and_then(|r| r.reply_time.smoothed())
    }

    /// A whole REQUEST or REPLY frame's body (from one packet or put together from pieces).
    pub(super) fn take_frame(
        &mut self,
        now: Instant,
        ty: u8,
        body: Bytes,
    ) -> Result<Delivered, DataDrop> {
        let bad = |stats: &mut SessionStats, why: &str| {
            stats.dropped_bad_frame += 1;
            trace!(ty, why, "DATA dropped: malformed request or reply");
            Err(DataDrop::BadFrame)
        };
        if ty == frame::REQUEST {
            if !self.serving {
                return bad(&mut self.stats, "a request to a client");
            }
            let Some((id, body)) = decode_request(&body) else {
                return bad(&mut self.stats, "shorter than its id");
            };
            if !self.requests_mut().inbound.insert(id) {
                self.stats.requests_duplicate += 1;
                trace!(id, "REQUEST dropped: its id is in flight");
                return Err(DataDrop::DuplicateRequest);
            }
            self.stats.requests_received += 1;
            return Ok(Delivered::Request { id, body });
        }
        if self.serving {
            return bad(&mut self.stats, "a reply to a server");
        }
        let Some((id, status, report, body)) = decode_reply(&body) else {
            return bad(&mut self.stats, "shorter than its header");
        };
        let requests = self.requests_mut();
        // Authentic and fresh whatever it answers: the report is the server's load now.
        requests.report = Some((report, now));
        let Some(sent) = requests.out.remove(&id) else {
            self.stats.replies_unknown += 1;
            trace!(id, "REPLY dropped: no such request in flight");
            return Err(DataDrop::UnknownReply);
        };
        let elapsed = now.saturating_duration_since(sent);
        if status == ReplyStatus::OK {
            requests.reply_time.sample(elapsed);
        }
        self.stats.replies_received += 1;
        Ok(Delivered::Reply(Reply {
            id,
            status,
            report,
            body,
            elapsed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2_a_load_report_is_eight_bytes_and_saturates() {
        let r = LoadReport::new(Duration::from_micros(12_345), 70_000, 8);
        assert_eq!(
            r,
            LoadReport {
                expected_us: 12_345,
                in_flight: u16::MAX,
                capacity: 8
            }
        );
        let wire = r.encode();
        assert_eq!(wire.len(), 8);
        assert_eq!(wire, [0, 0, 0x30, 0x39, 0xff, 0xff, 0, 8]);
        assert_eq!(LoadReport::decode(&wire), r);
        // At least 1 µs (0 would say "no estimate"), at most u32::MAX.
        assert_eq!(LoadReport::new(Duration::ZERO, 0, 0).expected_us, 1);
        assert_eq!(
            LoadReport::new(Duration::from_secs(10_000), 0, 100_000),
            LoadReport {
                expected_us: u32::MAX,
                in_flight: 0,
                capacity: u16::MAX
            }
        );
        assert_eq!(LoadReport::default().expected(), None);
        assert_eq!(REPLY_HEADER_LEN, 13);
    }

    #[test]
    fn p1_request_and_reply_bodies_split_or_are_refused() {
        let body = Bytes::from_static(&[0, 0, 1, 0, b'h', b'i']);
        assert_eq!(
            decode_request(&body),
            Some((256, Bytes::from_static(b"hi")))
        );
        assert_eq!(decode_request(&Bytes::from_static(&[0, 0, 1])), None);
        let report = LoadReport::new(Duration::from_millis(3), 2, 4);
        let mut reply = reply_header(9, ReplyStatus::DROPPED, report).to_vec();
        assert_eq!(
            decode_reply(&Bytes::from(reply.clone())),
            Some((9, ReplyStatus::DROPPED, report, Bytes::new()))
        );
        reply.pop();
        assert_eq!(decode_reply(&Bytes::from(reply)), None);
    }

    #[test]
    fn p1_ids_are_allocated_in_order_skipping_those_in_flight() {
        let mut r = Requests {
            next_id: u32::MAX,
            ..Requests::default()
        };
        r.out.insert(0, Instant::now());
        assert_eq!(r.allocate(), u32::MAX);
        assert_eq!(r.allocate(), 1, "0 is in flight: skipped");
        assert_eq!(r.allocate(), 2);
    }
}
