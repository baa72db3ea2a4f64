//! The probe race: one tag, one PROBE to every target at once, re-sent with backoff until the
//! race is decided or the deadline passes. Under [`SelectionPolicy::Earliest`] the earliest valid
//! offer wins and the tag is retired on the spot, so later offers are void. Under `Window` and
//! `NBest` the race collects offers for a short window after the first one, then decides and
//! retires the tag. Under `Path` it collects offers until no offer still to come could finish the
//! session's work sooner than the best one in hand (PROTOCOL.md §6.2.4), then decides.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::SelectionPolicy;
use crate::Transmit;
use crate::balance::{Report, spare_throughput};
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
    /// Time from the race's first probe to this offer.
    pub answer_time: Duration,
    /// The path's round trip as this race measured it: the answer time less the time the
    /// server says it held the probe (never more than the answer time).
    pub path: Duration,
    /// The server's load hint.
    pub load: LoadHint,
}

/// `d × k`, saturating (a factor that is not finite or not positive counts as 0 or the most).
fn times(d: Duration, k: f64) -> Duration {
    if k.is_nan() || k <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * k).unwrap_or(Duration::MAX)
}

/// See [`PathInputs::longest_hold`]: the margin on an overdue offer's expected arrival.
pub const OVERDUE_SLACK: Duration = Duration::from_millis(1);

/// What a `Path` race needs besides its offers (PROTOCOL.md §6.2.4); a client's
/// [`super::PoolState::path_inputs`] computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathInputs {
    /// Round trips the session needs before its work is done: its requests, plus one for the
    /// handshake unless the first request rides in the INIT.
    pub round_trips: f64,
    /// Requests the session is expected to carry, each of which waits the server's expected
    /// completion.
    pub requests: f64,
    /// The least expected completion any server announced lately: no offer still to come is
    /// expected to complete sooner. `None` (nothing heard yet): zero — a client's first race
    /// waits until every target answered or no path could still win.
    pub least_expected: Option<Duration>,
    /// The longest a server held a probe lately: a target whose offer has not come within
    /// twice its measured path plus this plus 1 ms is presumed not to answer this race.
    pub longest_hold: Duration,
}

impl PathInputs {
    /// The expected time for a session at `w`'s server to finish its work:
    /// `round_trips × path + requests × expected completion` (an offer without an estimate
    /// counts its path only).
    pub fn score(&self, w: &Winner) -> Duration {
        let expected = w.load.expected().unwrap_or_default();
        times(w.path, self.round_trips).saturating_add(times(expected, self.requests))
    }

    /// The least cost, counted from `elapsed` after the race's start, of waiting for the offer
    /// of a target whose path is at least `floor` and taking it: the wait until it can arrive
    /// (`floor − elapsed`, when positive) plus its least score — its path at least
    /// `max(elapsed, floor)`, its expected completion at least `least` (the least expected
    /// completion announced lately). An offer in hand costs its score alone: taking it waits
    /// for nothing.
    pub fn bound(&self, elapsed: Duration, floor: Duration, least: Duration) -> Duration {
        floor
            .saturating_sub(elapsed)
            .saturating_add(times(elapsed.max(floor), self.round_trips))
            .saturating_add(times(least, self.requests))
    }

    /// How long after the race's start [`Self::bound`] reaches `score` once the time elapsed
    /// is past the target's floor (before it, the bound falls as the wait shrinks; it is least
    /// at the floor).
    pub fn reach(&self, score: Duration, least: Duration) -> Duration {
        let rest = score.saturating_sub(times(least, self.requests));
        times(rest, 1.0 / self.round_trips.max(1.0))
    }
}

/// What became of an offer.
#[derive(Debug, Clone)]
pub enum OfferOutcome {
    /// It is the earliest valid offer: the race is decided.
    Won(Winner),
    /// It carries the retired tag of a decided race: void, counted as late.
    Late {
        /// Who answered late.
        server: SocketAddr,
        /// How late, from the race's first probe.
        answer_time: Duration,
        /// The path's round trip: the answer time less the server's hold.
        path: Duration,
        /// Its load hint (unauthenticated, like every hint).
        load: LoadHint,
    },
    /// Its tag is neither live nor retired.
    UnknownTag,
    /// It came from an address this race did not probe.
    Unprobed,
    /// Its server key id is not pinned: ignored, the race goes on.
    UnknownKey,
    /// A valid offer collected by a `Window` or `NBest` race that is not decided yet.
    Collected {
        /// Who offered.
        server: SocketAddr,
        /// Its answer time.
        answer_time: Duration,
        /// The path's round trip: the answer time less the server's hold.
        path: Duration,
        /// Its load hint.
        load: LoadHint,
    },
    /// A second valid offer from a server this race already collected: ignored.
    Duplicate,
}

/// What a race's timer did.
#[derive(Debug, Clone)]
pub enum RaceTimeout {
    /// Nothing final: maybe a retransmission was queued.
    Pending,
    /// The deadline passed with no valid offer.
    Expired,
    /// The collection window closed (or the deadline passed with offers in hand): this won.
    Decided(Winner),
}

/// The utilisation a load hint reports: `in_flight / capacity`, or `in_flight` when the server
/// has no capacity.
pub fn utilisation(load: LoadHint) -> f64 {
    if load.capacity == 0 {
        f64::from(load.in_flight)
    } else {
        f64::from(load.in_flight) / f64::from(load.capacity)
    }
}

/// The `q`-quantile of `values` (sorted in place), interpolating linearly between neighbours.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let Some(last) = values.len().checked_sub(1) else {
        return 0.0;
    };
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

/// Prequal's hot/cold rule over collected offers: an offer is cold when its utilisation is
/// below the `q`-quantile of the offers' utilisations; among cold offers the lowest answer time
/// wins, and when none is cold, the lowest utilisation (ties: the earliest). Returns an index
/// into `offers`, which must not be empty and is in arrival order.
pub fn hot_cold_pick(offers: &[Winner], q: f64) -> usize {
    let mut us: Vec<f64> = offers.iter().map(|w| utilisation(w.load)).collect();
    let threshold = quantile(&mut us, q);
    let cold = offers
        .iter()
        .enumerate()
        .filter(|(_, w)| utilisation(w.load) < threshold)
        .min_by_key(|(_, w)| w.answer_time)
        .map(|(i, _)| i);
    cold.unwrap_or_else(|| {
        offers
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| utilisation(a.load).total_cmp(&utilisation(b.load)))
            .map_or(0, |(i, _)| i)
    })
}

/// The shortest-expected-delay pick over collected offers: the offer whose server expects
/// to complete one more request soonest, counting the time its offer took to come back
/// (`expected + answer_time`: the client pays the network too). Ties go to the offer collected
/// first. `None` when some offer carries no estimate (then [`hot_cold_pick`] decides).
pub fn expected_delay_pick(offers: &[Winner]) -> Option<usize> {
    let mut best: Option<(usize, Duration)> = None;
    for (i, w) in offers.iter().enumerate() {
        let score = w.load.expected()? + w.answer_time;
        if best.is_none_or(|(_, b)| score < b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// `Spare`'s choice: the offer with the most spare throughput, `max(0, C − n) / S` (S the
/// service time its hint implies, `E × C / max(C, n + 1)`), ties to the shorter expected delay
/// (`E` + answer time). None when some offer has no capacity or no estimate, or none has a free
/// slot: the caller falls back to the expected delay.
pub fn spare_pick(offers: &[Winner]) -> Option<usize> {
    let mut best: Option<(usize, f64, Duration)> = None;
    for (i, w) in offers.iter().enumerate() {
        let e = w.load.expected()?;
        let (c, n) = (w.load.capacity, w.load.in_flight);
        if c == 0 {
            return None;
        }
        let spare = spare_throughput(c, n, Report::new(e, n, c).service());
        let delay = e + w.answer_time;
        let better = best.is_none_or(|(_, bs, bd)| spare > bs || (spare == bs && delay < bd));
        if better {
            best = Some((i, spare, delay));
        }
    }
    best.filter(|(_, spare, _)| *spare > 0.0).map(|(i, _, _)| i)
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
    policy: SelectionPolicy,
    /// Valid offers collected while a `Window` or `NBest` race is open, in arrival order.
    candidates: Vec<Winner>,
    /// When the collection window closes (set by the first valid offer).
    decide_at: Option<Instant>,
    /// `NBest`: the offers chosen after the winner, best first.
    runners_up: Vec<Winner>,
    /// Valid offers collected but not chosen when the race was decided.
    not_chosen: u64,
    /// `Path`: what the score and the bound need.
    path: PathInputs,
    /// `Path`: the best offer in hand cannot be beaten any more.
    settled: bool,
    /// `Path`: per target (same order), the shortest path measured to it lately: its offer
    /// cannot come back sooner (zero when unknown).
    floors: Vec<Duration>,
    /// The targets whose valid offer came while the race was live.
    heard: Vec<SocketAddr>,
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
        policy: SelectionPolicy,
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
            policy,
            candidates: Vec::new(),
            decide_at: None,
            runners_up: Vec::new(),
            not_chosen: 0,
            path: PathInputs {
                round_trips: match policy {
                    SelectionPolicy::Path(p) => p.requests + 1.0,
                    _ => 2.0,
                },
                requests: match policy {
                    SelectionPolicy::Path(p) => p.requests,
                    _ => 1.0,
                },
                least_expected: None,
                longest_hold: Duration::ZERO,
            },
            settled: false,
            floors: Vec::new(),
            heard: Vec::new(),
        }
    }

    /// A `Path` race's floors: for each target, in order, the shortest path measured to it
    /// lately (zero when unknown), which its offer cannot beat. Without them every server
    /// could answer as soon as the time elapsed.
    pub fn with_floors(mut self, floors: Vec<Duration>) -> Self {
        self.floors = floors;
        self.first_retransmit_after_overdue();
        self
    }

    /// When target `i`'s offer is overdue (see [`PathInputs::longest_hold`]), from the race's
    /// start; `None` when its path was never measured.
    fn overdue(&self, i: usize) -> Option<Duration> {
        let floor = self.floors.get(i).copied().unwrap_or_default();
        (!floor.is_zero()).then(|| floor * 2 + self.path.longest_hold + OVERDUE_SLACK)
    }

    /// `Path`: no probe is re-sent before every measured target's offer is overdue — a far
    /// target's offer is not lost for taking longer than the near ones' round trip, which is
    /// what the retransmission timeout follows.
    fn first_retransmit_after_overdue(&mut self) {
        if !matches!(self.policy, SelectionPolicy::Path(_)) || self.probes_sent > 0 {
            return;
        }
        let latest = (0..self.targets.len())
            .filter_map(|i| self.overdue(i))
            .max()
            .unwrap_or_default();
        let at = self.started + latest.max(self.rto);
        self.next_retransmit = at.min(self.deadline);
    }

    /// A `Path` race's inputs (without them: the policy's requests, one round trip for the
    /// handshake, nothing known about other servers' expected completions).
    pub fn with_path(mut self, inputs: PathInputs) -> Self {
        self.path = inputs;
        self.first_retransmit_after_overdue();
        self
    }

    /// The inputs a `Path` race scores with.
    pub fn path_inputs(&self) -> PathInputs {
        self.path
    }

    /// Valid offers this race collected but did not choose.
    pub fn not_chosen(&self) -> u64 {
        self.not_chosen
    }

    /// `NBest`: the servers chosen besides the winner, best first (taken once).
    pub fn take_runners_up(&mut self) -> Vec<Winner> {
        std::mem::take(&mut self.runners_up)
    }

    /// Picks the winner among the collected offers by the policy, retires the tag.
    fn decide(&mut self) -> Option<Winner> {
        if self.candidates.is_empty() {
            return None;
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        self.retire();
        match self.policy {
            SelectionPolicy::Window { quantile, .. } => {
                let i = expected_delay_pick(&candidates)
                    .unwrap_or_else(|| hot_cold_pick(&candidates, quantile));
                self.not_chosen = candidates.len() as u64 - 1;
                Some(candidates.swap_remove(i))
            }
            SelectionPolicy::Spare { .. } => {
                let i = spare_pick(&candidates)
                    .or_else(|| expected_delay_pick(&candidates))
                    .unwrap_or(0);
                self.not_chosen = candidates.len() as u64 - 1;
                Some(candidates.swap_remove(i))
            }
            SelectionPolicy::NBest { k, .. } => {
                // The earliest k: under a paced or gated fleet, answer order is load order.
                self.not_chosen = candidates.len().saturating_sub(k.max(1)) as u64;
                candidates.truncate(k.max(1));
                let winner = candidates.remove(0);
                self.runners_up = candidates;
                Some(winner)
            }
            SelectionPolicy::Path(_) => {
                let mut best = 0;
                for (i, w) in candidates.iter().enumerate() {
                    if self.path.score(w) < self.path.score(&candidates[best]) {
                        best = i;
                    }
                }
                self.not_chosen = candidates.len() as u64 - 1;
                Some(candidates.swap_remove(best))
            }
            SelectionPolicy::Earliest => Some(candidates.swap_remove(0)),
        }
    }

    /// `Path`: after an offer was collected at `now`, whether the best offer in hand can still
    /// be beaten, and if so when the bound on offers still to come reaches it.
    fn settle(&mut self, now: Instant) {
        let Some(best) = self.candidates.iter().map(|w| self.path.score(w)).min() else {
            return;
        };
        let least = self.path.least_expected.unwrap_or_default();
        let elapsed = now.saturating_duration_since(self.started);
        let reach = self.path.reach(best, least);
        // Only the targets that have not answered and could still beat the best: an offer's path
        // is at least the time elapsed and at least its floor, and a target farther than the
        // time elapsed also costs the wait for its offer. A measured target whose offer is
        // overdue (twice its floor, the longest hold lately, 1 ms) is presumed not to answer
        // this race — lost, silent, or holding longer than its peers: it no longer keeps the
        // race open (its offer is still collected if it comes first).
        let mut open_until = Duration::ZERO;
        for (i, t) in self.targets.iter().enumerate() {
            let floor = self.floors.get(i).copied().unwrap_or_default();
            if self.candidates.iter().any(|c| c.server == *t)
                || self.path.bound(elapsed, floor, least) >= best
            {
                continue;
            }
            let overdue = self.overdue(i).unwrap_or(Duration::MAX);
            if elapsed >= overdue {
                continue;
            }
            open_until = open_until.max(reach.min(overdue));
        }
        if open_until <= elapsed {
            self.settled = true;
            return;
        }
        let at = self
            .started
            .checked_add(open_until)
            .unwrap_or(self.deadline);
        self.decide_at = Some(at.max(now));
    }

    /// After a `Collected` offer: decides at once when every probed server has answered (or,
    /// `NBest`, k have), with no reason to wait out the window.
    pub fn decide_if_complete(&mut self) -> Option<Winner> {
        if self.live.is_some()
            && !self.candidates.is_empty()
            && (self.candidates.len() >= self.targets.len() || self.window_full() || self.settled)
        {
            return self.decide();
        }
        None
    }

    fn window_full(&self) -> bool {
        match self.policy {
            SelectionPolicy::NBest { k, .. } => self.candidates.len() >= k.max(1),
            _ => false,
        }
    }

    /// The servers this race probes.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// The live tag, while undecided.
    pub fn live_tag(&self) -> Option<Tag> {
        self.live
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

    /// The targets whose valid offer came while the race was live.
    pub fn heard(&self) -> &[SocketAddr] {
        &self.heard
    }

    /// Time since the race's start (its first probe).
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Whether the race re-sent its probes (its answer times are then ambiguous: Karn's rule).
    pub fn retransmitted(&self) -> bool {
        self.probes_sent > self.targets.len() as u64
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
        Some(Transmit {
            destination,
            size,
            source: None,
        })
    }

    /// When the race next needs `handle_timeout` (retransmission or deadline), while undecided.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.live.map(|_| {
            let t = self.next_retransmit.min(self.deadline);
            self.decide_at.map_or(t, |d| d.min(t))
        })
    }

    /// Fires timers: queues a retransmission to every target, closes a collection window, or
    /// reports the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> RaceTimeout {
        if self.live.is_none() {
            return RaceTimeout::Pending;
        }
        if self.decide_at.is_some_and(|d| now >= d)
            || (now >= self.deadline && !self.candidates.is_empty())
        {
            return self
                .decide()
                .map_or(RaceTimeout::Pending, RaceTimeout::Decided);
        }
        if now >= self.deadline {
            self.retire();
            return RaceTimeout::Expired;
        }
        if now >= self.next_retransmit {
            let path = matches!(self.policy, SelectionPolicy::Path(_));
            // (`Path` re-sends only to the targets that have not answered: an offer in hand
            // needs no second copy.)
            self.queued = self
                .targets
                .iter()
                .rev()
                .filter(|t| !path || !self.candidates.iter().any(|c| c.server == **t))
                .copied()
                .collect();
            self.rto = (self.rto * 2).min(self.timers.max_rto);
            self.next_retransmit = now + self.rto;
        }
        RaceTimeout::Pending
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
        let path = answer_time.saturating_sub(Duration::from_micros(u64::from(offer.held_us)));
        let matches = |t: &Option<Tag>| t.is_some_and(|t| bool::from(t.0.ct_eq(&offer.tag.0)));
        if matches(&self.live) {
            let Some(key) = pinned(&offer.server_key_id) else {
                return OfferOutcome::UnknownKey;
            };
            if !self.heard.contains(&from) {
                self.heard.push(from);
            }
            let winner = Winner {
                server: from,
                key,
                cookie: offer.cookie.to_vec(),
                answer_time,
                path,
                load: offer.load,
            };
            let delta = match self.policy {
                SelectionPolicy::Window { delta, .. }
                | SelectionPolicy::NBest { delta, .. }
                | SelectionPolicy::Spare { delta } => Some(delta),
                SelectionPolicy::Path(_) => None,
                SelectionPolicy::Earliest => {
                    // Earliest valid offer: the race is decided and the tag forgotten as a live
                    // tag.
                    self.retire();
                    return OfferOutcome::Won(winner);
                }
            };
            if self.candidates.iter().any(|c| c.server == from) {
                return OfferOutcome::Duplicate;
            }
            self.candidates.push(winner);
            match delta {
                Some(delta) => {
                    self.decide_at.get_or_insert(now + delta);
                }
                None => self.settle(now),
            }
            // The caller asks `decide_if_complete` next: this offer may close the window.
            return OfferOutcome::Collected {
                server: from,
                answer_time,
                path,
                load: offer.load,
            };
        }
        if matches(&self.retired) {
            return OfferOutcome::Late {
                server: from,
                answer_time,
                path,
                load: offer.load,
            };
        }
        OfferOutcome::UnknownTag
    }
}

/// Classifies an offer against the live race, if one is running, and the last decided race when
/// the live one does not know it: during a failover race the previous race's stragglers are
/// late, not strangers. `pinned` finds the key for a key id.
pub fn classify_offer(
    live: Option<&mut Race>,
    decided: Option<&mut Race>,
    now: Instant,
    from: SocketAddr,
    offer: &Offer<'_>,
    pinned: &impl Fn(&KeyId) -> Option<PublicKey>,
) -> OfferOutcome {
    let racing = live.is_some();
    let first = match live {
        Some(race) => race.handle_offer(now, from, offer, pinned),
        None => OfferOutcome::UnknownTag,
    };
    if !matches!(first, OfferOutcome::UnknownTag | OfferOutcome::Unprobed) {
        return first;
    }
    match decided.map(|prev| prev.handle_offer(now, from, offer, pinned)) {
        Some(late @ OfferOutcome::Late { .. }) => late,
        Some(other) if !racing => other,
        _ => first,
    }
}
