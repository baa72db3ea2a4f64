//! Path validation (PROTOCOL.md §5.6): how a server's session follows its client to a new
//! address — a NAT rebinding, a phone changing networks — without ever being steered to a third
//! party.
//!
//! Only an authentic packet that is the newest the session has seen (its counter above every
//! earlier one) starts a check, so a replayed or reordered packet from another address moves
//! nothing. The check sends a PATH_CHALLENGE to the new address; the session moves only when an
//! authentic PATH_RESPONSE carrying the challenge arrives *from that address*. Until then all
//! other traffic still goes to the old address, and the new one receives nothing but
//! challenges, at most [`PATH_AMPLIFICATION`] times the bytes of authentic packets it sent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes of a PATH_CHALLENGE's and a PATH_RESPONSE's body.
pub const PATH_DATA_LEN: usize = 8;
/// Most bytes sent to an address being validated, per byte of authentic DATA received from it.
pub const PATH_AMPLIFICATION: usize = 3;
/// PATH_CHALLENGEs sent per check (the first and two retries, one PTO apart) before the check
/// is abandoned and the session stays where it was.
pub const PATH_CHALLENGE_TRIES: u32 = 3;

/// A new peer address under validation.
#[derive(Debug, Clone)]
pub struct PathCheck {
    addr: SocketAddr,
    challenge: [u8; PATH_DATA_LEN],
    received: usize,
    sent: usize,
    tries: u32,
    next_at: Instant,
}

impl PathCheck {
    /// A check of `addr`, started by the authentic packet with `counter`: the challenge is that
    /// counter, big-endian (unique per check; it need not be secret, because only the peer can
    /// write an authentic PATH_RESPONSE and only one that arrives from `addr` counts). The
    /// next try is due one `pto` later.
    pub(super) fn new(now: Instant, addr: SocketAddr, counter: u64, pto: Duration) -> Self {
        Self {
            addr,
            challenge: counter.to_be_bytes(),
            received: 0,
            sent: 0,
            tries: 1,
            next_at: now + pto,
        }
    }

    /// The address being validated.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) fn challenge(&self) -> [u8; PATH_DATA_LEN] {
        self.challenge
    }

    pub(super) fn next_at(&self) -> Instant {
        self.next_at
    }

    /// Counts `bytes` of an authentic packet from the address.
    pub(super) fn received(&mut self, bytes: usize) {
        self.received = self.received.saturating_add(bytes);
    }

    /// Whether `bytes` more may go to the address (and counts them if so).
    pub(super) fn pay(&mut self, bytes: usize) -> bool {
        let budget = self.received.saturating_mul(PATH_AMPLIFICATION);
        if self.sent.saturating_add(bytes) > budget {
            return false;
        }
        self.sent += bytes;
        true
    }

    /// The retry timer fired: true to send another challenge (due again one `pto` later),
    /// false when every try is spent.
    pub(super) fn retry(&mut self, now: Instant, pto: Duration) -> bool {
        if self.tries >= PATH_CHALLENGE_TRIES {
            return false;
        }
        self.tries += 1;
        self.next_at = now + pto;
        true
    }

    /// Whether a PATH_RESPONSE with `body`, arriving from `from`, completes this check.
    pub(super) fn answered_by(&self, from: SocketAddr, body: &[u8]) -> bool {
        from == self.addr && body == self.challenge
    }
}
