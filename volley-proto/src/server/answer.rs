//! Answer policies: how a server turns its load into the time it answers a probe.
//!
//! The patent's premise is that a busy server answers late or not at all. On a LAN every server
//! answers within microseconds, so answering the moment a probe is read makes "earliest offer"
//! measure scheduling noise. These policies make the answer time carry the load:
//!
//! - [`AnswerPolicy::Immediate`]: answer at once; the load shows only in the hint.
//! - [`AnswerPolicy::Paced`]: delay the offer by a fixed share of the server's *expected
//!   completion time* for one more request ([`super::estimate`]), capped: the earliest offer then
//!   comes from the server expected to finish the request first, whether it is less loaded or
//!   simply faster.
//! - [`AnswerPolicy::Gated`]: answer at once while a slot is free; otherwise hold the probe until
//!   one frees, and answer it anyway (a late, busy offer) when `max_hold` runs out.
//!
//! No policy goes silent because the server is busy: a busy server answers late, and its
//! hint says how busy it is, so a race always ends in a session as soon as any server can take
//! one. Only a server that cannot open another session at all (`max_sessions`) withholds.
//!
//! Held probes live in a `HeldQueue` of at most `max_held` fixed-size entries; each is gone the
//! moment its offer is sent or it is dropped. Offers sent recently are counted as
//! `Reservations` — one aggregate ring of expiry times, no per-client data — so that a burst of
//! simultaneous probes sees the load rise with every offer made and the burst spreads over the
//! fleet instead of herding onto the one least-loaded server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::packet::Tag;

/// How a server times its offers. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnswerPolicy {
    /// Answer every probe at once; load only in the hint.
    Immediate,
    /// Delay each offer by `min(expected / divisor, max_delay)`, where `expected` is the
    /// server's expected completion time of one more request.
    Paced {
        /// The longest delay. Default 10 ms.
        max_delay: Duration,
        /// The delay is this fraction's denominator of the expected completion time. Default
        /// 32: a client waits about 3 % of what the request will take anyway.
        divisor: u32,
    },
    /// Answer at once while a slot is free; otherwise hold the probe until one frees, and answer
    /// it (late, busy) after `max_hold` if none did.
    Gated {
        /// How long a probe waits for a free slot before it is answered anyway. Default 200 ms.
        max_hold: Duration,
    },
}

/// Default [`AnswerPolicy::Paced`] `max_delay`. With the default divisor it is reached at an
/// expected completion time of 320 ms; beyond that, servers are told apart by their hints only.
pub const DEFAULT_PACE_MAX_DELAY: Duration = Duration::from_millis(10);
/// Default [`AnswerPolicy::Paced`] `divisor`: the delay is 1/32 of the expected completion time.
/// A request the server expects to finish in 40 ms is offered 1.25 ms late; one more request
/// queued behind four busy slots (40 ms → 50 ms) moves the offer by 312 µs, well above loopback
/// and LAN answer-time noise (tens of µs).
pub const DEFAULT_PACE_DIVISOR: u32 = 32;
/// Default [`AnswerPolicy::Gated`] `max_hold`: just under the client's cold-start probe
/// retransmission (250 ms).
pub const DEFAULT_GATE_MAX_HOLD: Duration = Duration::from_millis(200);
/// Default bound on held probes.
pub const DEFAULT_MAX_HELD: usize = 1024;
/// Default time an offer counts as load after it is sent (see `Reservations`).
pub const DEFAULT_RESERVATION: Duration = Duration::from_millis(5);

impl AnswerPolicy {
    /// `Paced` with the default `max_delay` and `divisor`.
    pub const fn paced() -> Self {
        Self::Paced {
            max_delay: DEFAULT_PACE_MAX_DELAY,
            divisor: DEFAULT_PACE_DIVISOR,
        }
    }

    /// `Gated` with the default `max_hold`.
    pub const fn gated() -> Self {
        Self::Gated {
            max_hold: DEFAULT_GATE_MAX_HOLD,
        }
    }

    /// The policy's name as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Immediate => "immediate",
            Self::Paced { .. } => "paced",
            Self::Gated { .. } => "gated",
        }
    }
}

impl Default for AnswerPolicy {
    /// `Paced`: load decides the answer time out of the box.
    fn default() -> Self {
        Self::paced()
    }
}

/// The paced delay for an expected completion time: `min(expected / divisor, max_delay)`.
/// Linear in the expected completion time, so the earliest offer comes from the server expected
/// to finish first whenever the servers' network delays differ by less than the gap between
/// their expected completion times divided by `divisor`.
pub fn pace_delay(expected: Duration, divisor: u32, max_delay: Duration) -> Duration {
    (expected / divisor.max(1)).min(max_delay)
}

/// A probe held for a later offer: only what the offer needs, fixed size, no allocation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tag: Tag,
    /// Index into the server's service list.
    pub service: u16,
    /// Bytes of the probe, the offer's size bound (an offer is never larger than its probe).
    pub probe_len: u16,
    /// When to send (paced) — or, gated, when to drop it unsent.
    pub due: Instant,
    /// When the probe arrived (for the answer-delay histogram).
    pub arrived: Instant,
    /// Whether its reservation was taken already (paced reserves on arrival), so that the
    /// offer's load hint does not count the offer itself.
    pub reserved: bool,
}

/// The bounded queue of held probes, ordered by `due`.
#[derive(Debug, Default)]
pub(crate) struct HeldQueue {
    items: VecDeque<Held>,
}

impl HeldQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Inserts in `due` order (FIFO among equal times); false when `bound` entries are held.
    pub fn push(&mut self, held: Held, bound: usize) -> bool {
        if self.items.len() >= bound {
            return false;
        }
        let at = self.items.partition_point(|h| h.due <= held.due);
        self.items.insert(at, held);
        true
    }

    pub fn front(&self) -> Option<&Held> {
        self.items.front()
    }

    pub fn pop(&mut self) -> Option<Held> {
        self.items.pop_front()
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.items.front().map(|h| h.due)
    }
}

/// Offers sent in the last `reservation` that have not turned into sessions: an offer promises a
/// slot, so it counts as load until the client could have taken it. A ring of expiry times,
/// bounded; the session an offer turns into releases the oldest reservation.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    expiries: VecDeque<Instant>,
}

impl Reservations {
    /// Reservations still live at `now`.
    pub fn count(&mut self, now: Instant) -> u32 {
        while self.expiries.front().is_some_and(|t| *t <= now) {
            self.expiries.pop_front();
        }
        self.expiries.len() as u32
    }

    /// Without expiring anything (for read-only reports).
    pub fn count_at(&self, now: Instant) -> u32 {
        // Kept in expiry order: the live ones are those after the last expired.
        (self.expiries.len() - self.expiries.partition_point(|t| *t <= now)) as u32
    }

    /// Adds a reservation ending at `expiry`, kept in expiry order; at `bound` the earliest goes.
    pub fn add(&mut self, expiry: Instant, bound: usize) {
        if bound == 0 {
            return;
        }
        if self.expiries.len() >= bound {
            self.expiries.pop_front();
        }
        let at = self.expiries.partition_point(|t| *t <= expiry);
        self.expiries.insert(at, expiry);
    }

    /// A session opened: the offer it came from is no longer outstanding.
    pub fn release_one(&mut self) {
        self.expiries.pop_front();
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.front().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l5_pace_delay_is_a_share_of_the_expected_completion_capped() {
        let ms = Duration::from_millis;
        let max = ms(10);
        assert_eq!(pace_delay(ms(40), 32, max), Duration::from_micros(1250));
        assert_eq!(pace_delay(ms(80), 32, max), ms(80) / 32);
        assert_eq!(pace_delay(ms(320), 32, max), max);
        assert_eq!(pace_delay(ms(5000), 32, max), max, "capped at max_delay");
        assert_eq!(pace_delay(Duration::ZERO, 32, max), Duration::ZERO);
        assert_eq!(
            pace_delay(ms(3), 0, max),
            ms(3),
            "a zero divisor counts as 1"
        );
    }

    #[test]
    fn l1_answer_delays_fall_in_their_buckets() {
        let mut d = AnswerDelays::default();
        d.record(Duration::ZERO);
        d.record(Duration::from_micros(50));
        d.record(Duration::from_micros(51));
        d.record(Duration::from_millis(3));
        d.record(Duration::from_secs(2));
        assert_eq!(d.buckets[0], 2, "at once and 50 µs: the first bucket");
        assert_eq!(d.buckets[1], 1);
        assert_eq!(d.buckets[6], 1, "3 ms: ≤ 5 ms");
        assert_eq!(d.buckets[ANSWER_DELAY_BOUNDS_US.len()], 1, "overflow");
        assert_eq!(d.count, 5);
        assert_eq!(d.sum_us, 50 + 51 + 3_000 + 2_000_000);
    }

    #[test]
    fn s2_held_queue_is_bounded_and_ordered() {
        let now = Instant::now();
        let held = |ms: u64| Held {
            remote: "192.0.2.1:1".parse().unwrap(),
            local: "192.0.2.2:2".parse().unwrap(),
            tag: Tag([0; 16]),
            service: 0,
            probe_len: 256,
            due: now + Duration::from_millis(ms),
            arrived: now,
            reserved: false,
        };
        let mut q = HeldQueue::default();
        assert!(q.push(held(5), 3));
        assert!(q.push(held(1), 3));
        assert!(q.push(held(3), 3));
        assert!(!q.push(held(0), 3), "beyond the bound: refused");
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop().unwrap().due, now + Duration::from_millis(1));
        assert_eq!(q.next_due(), Some(now + Duration::from_millis(3)));
    }

    #[test]
    fn l4_reservations_expire_and_are_bounded() {
        let now = Instant::now();
        let hold = Duration::from_millis(5);
        let mut r = Reservations::default();
        for _ in 0..10 {
            r.add(now + hold, 4);
        }
        assert_eq!(r.count(now), 4, "bounded");
        r.release_one();
        assert_eq!(r.count(now), 3);
        assert_eq!(r.count(now + hold), 0, "expired");
    }
}

/// Upper bounds of the answer-delay histogram's buckets, in microseconds (a last bucket holds
/// the rest): from "at once" to past the longest default hold.
pub const ANSWER_DELAY_BOUNDS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 250_000,
];

/// How long the server took to answer the probes it answered: from a probe's arrival to its
/// OFFER, per bucket of [`ANSWER_DELAY_BOUNDS_US`] (not cumulative; the last entry is the
/// overflow), with their sum and count. What the answer policy did to answer times, as an operator
/// sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerDelays {
    /// Offers per bucket.
    pub buckets: [u64; ANSWER_DELAY_BOUNDS_US.len() + 1],
    /// Sum of the delays, microseconds.
    pub sum_us: u64,
    /// Offers counted.
    pub count: u64,
}

impl AnswerDelays {
    /// Counts one offer answered `delay` after its probe arrived.
    pub fn record(&mut self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let i = ANSWER_DELAY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(ANSWER_DELAY_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}
