//! The probe race (C1–C5, R1): one tag, one PROBE to every server of the pool at once, re-sent
//! with backoff until an offer wins or the deadline passes; the earliest valid offer wins and the
//! tag is retired on the spot, so later offers are void.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::Transmit;
use crate::crypto::PublicKey;
use crate::packet::{KeyId, LoadHint, Offer, Probe, Tag};

/// Timers of a race.
#[derive(Debug, Clone, Copy)]
pub struct RaceTimers {
    /// First retransmission after this long. Default 250 ms.
    pub initial_rto: Duration,
    /// Retransmission interval doubles up to this. Default 1 s.
    pub max_rto: Duration,
    /// The race fails when no offer arrived by then. Default 3 s.
    pub deadline: Duration,
}

impl Default for RaceTimers {
    fn default() -> Self {
        Self {
            initial_rto: Duration::from_millis(250),
            max_rto: Duration::from_secs(1),
            deadline: Duration::from_secs(3),
        }
    }
}

/// The offer that won.
#[derive(Debug, Clone)]
pub struct Winner {
    /// The server's address (as probed).
    pub server: SocketAddr,
    /// Its pinned static key.
    pub key: PublicKey,
    /// The cookie to present in INIT.
    pub cookie: Vec<u8>,
    /// Time from the race's first probe to this offer (C3).
    pub answer_time: Duration,
    /// The server's load hint.
    pub load: LoadHint,
}

/// What became of an offer.
#[derive(Debug, Clone)]
pub enum OfferOutcome {
    /// It is the earliest valid offer: the race is decided.
    Won(Winner),
    /// It carries the retired tag of a decided race: void, counted as late (C5).
    Late {
        /// Who answered late.
        server: SocketAddr,
        /// How late, from the race's first probe.
        answer_time: Duration,
    },
    /// Its tag is neither live nor retired (C2).
    UnknownTag,
    /// It came from an address this race did not probe (C2).
    Unprobed,
    /// Its server key id is not pinned (R4): ignored, the race goes on.
    UnknownKey,
}

/// One race over a set of servers.
#[derive(Debug)]
pub struct Race {
    live: Option<Tag>,
    retired: Option<Tag>,
    service: Vec<u8>,
    targets: Vec<SocketAddr>,
    queued: Vec<SocketAddr>,
    started: Instant,
    deadline: Instant,
    next_retransmit: Instant,
    rto: Duration,
    timers: RaceTimers,
    padding: usize,
    probes_sent: u64,
}

impl Race {
    /// Starts a race at `now`: every target gets a probe from the next `poll_transmit` calls.
    pub fn start(
        now: Instant,
        tag: Tag,
        service: &[u8],
        targets: Vec<SocketAddr>,
        timers: RaceTimers,
        padding: usize,
    ) -> Self {
        Self {
            live: Some(tag),
            retired: None,
            service: service.to_vec(),
            queued: targets.iter().rev().copied().collect(),
            targets,
            started: now,
            deadline: now + timers.deadline,
            next_retransmit: now + timers.initial_rto,
            rto: timers.initial_rto,
            timers,
            padding,
            probes_sent: 0,
        }
    }

    /// The servers this race probes.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// The tag once retired (decided or expired), kept only to classify late offers.
    pub fn retired_tag(&self) -> Option<Tag> {
        self.retired
    }

    /// Whether an offer has won.
    pub fn is_decided(&self) -> bool {
        self.live.is_none()
    }

    /// PROBEs written so far (first sends and retransmissions).
    pub fn probes_sent(&self) -> u64 {
        self.probes_sent
    }

    /// Writes the next PROBE into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let tag = self.live?;
        let destination = *self.queued.last()?;
        let size = Probe {
            tag,
            service: &self.service,
        }
        .encode(buf, self.padding)
        .ok()?;
        // Only now that it is written: a too-small buffer must not lose this server's probe.
        self.queued.pop();
        self.probes_sent += 1;
        Some(Transmit { destination, size })
    }

    /// When the race next needs `handle_timeout` (retransmission or deadline), while undecided.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.live.map(|_| self.next_retransmit.min(self.deadline))
    }

    /// Fires timers: queues a retransmission to every target, or reports the deadline (true).
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.live.is_none() {
            return false;
        }
        if now >= self.deadline {
            self.retire();
            return true;
        }
        if now >= self.next_retransmit {
            self.queued = self.targets.iter().rev().copied().collect();
            self.rto = (self.rto * 2).min(self.timers.max_rto);
            self.next_retransmit = now + self.rto;
        }
        false
    }

    fn retire(&mut self) {
        self.retired = self.live.take();
        self.queued.clear();
    }

    /// Classifies an offer; `pinned` finds the key for a key id.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        offer: &Offer<'_>,
        pinned: &impl Fn(&KeyId) -> Option<PublicKey>,
    ) -> OfferOutcome {
        if !self.targets.contains(&from) {
            return OfferOutcome::Unprobed;
        }
        let answer_time = now.saturating_duration_since(self.started);
        let matches = |t: &Option<Tag>| t.is_some_and(|t| bool::from(t.0.ct_eq(&offer.tag.0)));
        if matches(&self.live) {
            let Some(key) = pinned(&offer.server_key_id) else {
                return OfferOutcome::UnknownKey;
            };
            // Earliest valid offer: the race is decided and the tag forgotten as a live tag.
            self.retire();
            return OfferOutcome::Won(Winner {
                server: from,
                key,
                cookie: offer.cookie.to_vec(),
                answer_time,
                load: offer.load,
            });
        }
        if matches(&self.retired) {
            return OfferOutcome::Late {
                server: from,
                answer_time,
            };
        }
        OfferOutcome::UnknownTag
    }
}
