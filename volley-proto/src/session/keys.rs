//! Key epochs (PROTOCOL.md §5.5): each direction's DATA key is replaced by a KDF of itself
//! after [`super::SessionConfig::rekey_after_packets`] packets or
//! [`super::SessionConfig::rekey_after_time`], whichever comes first, decided by the sender alone.
//! The sender's epoch modulo 16 travels in every DATA type byte; a receiver that sees a phase
//! ahead of its own derives forward (at most [`MAX_PHASE_JUMP`] steps) and switches only when
//! the packet authenticates. It keeps the previous key for [`PREVIOUS_KEY_LIFETIME`] so that
//! packets reordered across the switch still open, then erases it; a sender erases its old key
//! at the switch.

use std::time::{Duration, Instant};

use crate::crypto::DirectionKey;
use crate::packet::kind::KEY_PHASE_MASK;

/// Epochs the phase nibble tells apart.
pub const KEY_PHASES: u32 = 16;
/// The furthest ahead of its own epoch a receiver derives (a phase 8–15 steps ahead reads as
/// behind, and only the previous epoch is kept).
pub const MAX_PHASE_JUMP: u32 = 7;
/// A sender updates its key at most this often, so a receiver would have to miss every packet
/// of seven epochs — over 7 s, beyond the default idle timeout — to lose track of the phase.
pub const KEY_UPDATE_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a receiver keeps the previous epoch's key after switching.
pub const PREVIOUS_KEY_LIFETIME: Duration = Duration::from_secs(3);

/// The sending direction: the current key, its epoch, and what it has sealed.
#[derive(Debug)]
pub(super) struct SendKeys {
    key: DirectionKey,
    epoch: u32,
    packets: u64,
    since: Instant,
}

impl SendKeys {
    pub(super) fn new(now: Instant, key: DirectionKey) -> Self {
        Self {
            key,
            epoch: 0,
            packets: 0,
            since: now,
        }
    }

    /// The key (and its phase) the next packet is sealed with, updating first when one of the
    /// limits is reached and the last update is at least [`KEY_UPDATE_MIN_INTERVAL`] old.
    /// Returns whether it updated.
    pub(super) fn before_seal(
        &mut self,
        now: Instant,
        after_packets: u64,
        after_time: Duration,
    ) -> bool {
        let age = now.saturating_duration_since(self.since);
        let due = self.packets >= after_packets || age >= after_time;
        if due && age >= KEY_UPDATE_MIN_INTERVAL {
            // The old key is dropped (and its raw bytes erased) here.
            self.key = self.key.next();
            self.epoch += 1;
            self.packets = 0;
            self.since = now;
            return true;
        }
        false
    }

    pub(super) fn key(&self) -> &DirectionKey {
        &self.key
    }

    pub(super) fn phase(&self) -> u8 {
        (self.epoch % KEY_PHASES) as u8
    }

    pub(super) fn sealed(&mut self) {
        self.packets += 1;
    }

    pub(super) fn epoch(&self) -> u32 {
        self.epoch
    }
}

/// The receiving direction: the current key and epoch, the lowest counter seen under it, and
/// the previous key while it is kept.
#[derive(Debug)]
pub(super) struct RecvKeys {
    key: DirectionKey,
    epoch: u32,
    previous: Option<(DirectionKey, Instant)>,
}

/// Which key a packet opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opened {
    /// The current epoch's.
    Current,
    /// The previous epoch's (a packet reordered across a switch).
    Previous,
    /// A later epoch's: the receiver switched to it.
    Switched,
}

impl RecvKeys {
    pub(super) fn new(key: DirectionKey) -> Self {
        Self {
            key,
            epoch: 0,
            previous: None,
        }
    }

    /// Erases the previous key once its time is up.
    pub(super) fn expire(&mut self, now: Instant) {
        if self
            .previous
            .as_ref()
            .is_some_and(|(_, until)| now >= *until)
        {
            self.previous = None;
        }
    }

    /// When the previous key is to be erased, while it is kept.
    pub(super) fn previous_until(&self) -> Option<Instant> {
        self.previous.as_ref().map(|(_, until)| *until)
    }

    pub(super) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Opens `buf` (ciphertext ‖ tag) of a packet with phase `phase` and counter `counter`;
    /// `newest` says whether the counter is above every authentic counter so far (only such a
    /// packet may start a new epoch: a sender's counters grow across epochs). On success the
    /// plaintext length and which key opened it; a packet of a later epoch switches to it.
    pub(super) fn open(
        &mut self,
        now: Instant,
        phase: u8,
        counter: u64,
        newest: bool,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Option<(usize, Opened)> {
        self.expire(now);
        let ahead =
            (u32::from(phase & KEY_PHASE_MASK) + KEY_PHASES - self.epoch % KEY_PHASES) % KEY_PHASES;
        match ahead {
            0 => self
                .key
                .open(counter, aad, buf)
                .ok()
                .map(|p| (p.len(), Opened::Current)),
            1..=MAX_PHASE_JUMP if newest => {
                let candidate = self.key.advance(ahead);
                let len = candidate.open(counter, aad, buf).ok()?.len();
                // Authentic: the epoch before the new one is kept as the previous key; anything
                // older (the old previous key, skipped epochs) is dropped and erased here.
                let old = std::mem::replace(&mut self.key, candidate);
                let before = if ahead == 1 {
                    old
                } else {
                    old.advance(ahead - 1)
                };
                self.previous = Some((before, now + PREVIOUS_KEY_LIFETIME));
                self.epoch += ahead;
                Some((len, Opened::Switched))
            }
            _ if ahead == KEY_PHASES - 1 => {
                let (prev, _) = self.previous.as_ref()?;
                prev.open(counter, aad, buf)
                    .ok()
                    .map(|p| (p.len(), Opened::Previous))
            }
            _ => None,
        }
    }
}
