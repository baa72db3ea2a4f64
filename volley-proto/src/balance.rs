//! The request balancer of a pool of sessions (PROTOCOL.md §6.10): which member takes the next
//! request, and when a background race should look for a better member.
//!
//! A pool holds `k` sessions with different servers, opened by one n-best race. Every reply
//! carries its server's expected completion of one more request (a *report*, §5.8); the
//! balancer keeps, per member, the latest report (expected completion E, requests in flight n,
//! capacity C) and its age, the path's round-trip time, and the requests this client sent there
//! since. From a report it reads the server's service time exactly: `E = S × max(1, (n + 1) / C)`
//! (§4.3), so `S = E × C / max(C, n + 1)` (`S = E` for an unbounded server, C = 0). The next
//! request goes to the member with the **shortest expected delay**:
//!
//! ```text
//! delay(m) = rtt(m) + S(m) + (E(m) − S(m)) × exp(−age(m) / memory) + unreported(m) × S(m) / C(m)
//! ```
//!
//! The report ages: its service time stays, the queue it announced fades over `memory` (1 s).
//! It does not drain at one second per second, as it would if this client were alone: the
//! server's other clients keep feeding the queue that this client's requests no longer reach,
//! and a wait taken as drained brings every client of a pool back to the same server at once.
//! (In `volley-lab sim pools`, a linear drain gave 1.19× the SED oracle's p99 where no aging
//! gave 1.08×; in the lab's long-lived matrix a linear drain left half the runs overloaded.)
//! `rtt` is the session's handshake time (INIT to ACCEPT): an offer's answer time includes
//! the hold of a busy server, which is load, and the report says it already. `unreported`: this client's requests sent since the report, which the
//! server had not counted; each adds `S / C` (an unbounded server adds nothing). A member
//! without a report yet counts as the members' median report.
//!
//! Two things the reports cannot say. A member whose replies the caller takes for failures
//! (three in a row; [`Balancer::replied_with`]) is **failing** for a second: it takes no request
//! while another member is not, a race replaces it first — a server that answers every request
//! at once with an error looks idle in its reports. And a member that stopped answering: its
//! delay is at least the time this client has waited there with requests in flight and no reply
//! (`silence`), so a server that went silent or stalled is left after about one expected delay.
//!
//! Races: a race runs in the background when the pool has fewer than `k` live members (a member
//! failed, its server died or drained), at most one every `min_race_gap`; and when a member has
//! fallen **behind** — its aged report more than `behind` times the best member's, or every
//! member's more than `behind` times its own service time (the whole pool queues) — within a
//! budget of `races_per_1000` races per 1,000 requests (a token bucket that starts full, with
//! `race_burst` races). Only reports from replies count for *behind*: an offer's hint from an
//! idle server is its prior service time, not what it is. The race's winner joins;
//! the pool then retires its worst member (no new requests; its session closes once its
//! requests in flight are answered), which may be the newcomer if it is no better.
//!
//! **Size.** `k` is the least the pool keeps. A client whose requests need more servers than
//! `k` — a single client carrying a whole fleet's load, say — grows its pool. It keeps the
//! server slots its own requests keep busy ([`Balancer::load`]): a time average over
//! [`LOAD_MEMORY`] (1 s) of its request rate times the service time of the member each went
//! to — Little's law for the service alone, so neither queueing nor other clients' load makes a
//! client look big (until the first request is a second old, the average is over the time
//! since, so that a client starting at full rate is seen at once). When that exceeds `grow_at` (1/2) of its live members' slots (the
//! capacities their reports give), a race within the budget asks for as many new members as
//! bring it back to `grow_at` (an n-best race; none retires), up to `max_members` (256). When it
//! would stay under half of that with one member fewer, the pool retires one member (at most
//! one per `min_race_gap`), down to `k`. A client with a small share of a fleet keeps `k`.
//!
//! Pure: time comes in as `now`, and nothing here does I/O.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use volley_proto::balance::{BalanceConfig, Balancer, Report};
//!
//! let now = Instant::now();
//! let mut pool = Balancer::new(BalanceConfig::default());
//! let ms = Duration::from_millis;
//! let rtt = Some(ms(1));
//! let idle = |e| Some(Report::new(ms(e), 0, 4));
//! let fast = pool.add(now, "192.0.2.1:7001".parse().unwrap(), idle(10), rtt);
//! let slow = pool.add(now, "192.0.2.2:7001".parse().unwrap(), idle(40), rtt);
//! assert_eq!(pool.pick(now), Some(fast));
//! // A reply from the fast member says it is now far behind: the next request goes to the other.
//! pool.sent(now, fast);
//! pool.replied(now, fast, rtt, Some(Report::new(ms(200), 79, 4)));
//! assert_eq!(pool.pick(now), Some(slow));
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How a [`Balancer`] weighs its members and when it races.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceConfig {
    /// Members the pool keeps at least (`k`, at least 1). Default 3.
    pub members: usize,
    /// Members the pool may grow to when this client's requests need more servers than `k`
    /// (see [`BalanceConfig::grow_at`]; `members` or less: never grows). Default 256.
    pub max_members: usize,
    /// The pool grows when the slots this client's requests keep busy ([`Balancer::load`])
    /// exceed this share of its live members' slots (their reported capacities), to as many
    /// members as bring the share back to it; it shrinks, one member at a time, back towards
    /// `members` when they would stay under half of it with one member fewer. Default 0.5.
    pub grow_at: f64,
    /// Races allowed per 1,000 requests to replace a member that fell behind (a token bucket
    /// filled by requests). Races to replace a failed member do not draw on it. Default 4.
    pub races_per_1000: u32,
    /// Most tokens the bucket holds (races in a burst). Default 2.
    pub race_burst: u32,
    /// Least time between two races, whatever their reason. Default 100 ms.
    pub min_race_gap: Duration,
    /// A member is behind when its aged report exceeds this many times the best member's; the
    /// whole pool is, when every member's aged report exceeds this many times its own service
    /// time (every member is queueing). Default 2.0.
    pub behind: f64,
    /// How long a report's queue is remembered: the part of a reported expected completion
    /// above the service time fades as `exp(−age / report_memory)`. Default 1 s.
    pub report_memory: Duration,
}

/// A server's load as an OFFER's hint or a REPLY's report gives it (PROTOCOL.md §4.3, §5.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Its expected completion of one more request.
    pub expected: Duration,
    /// Its requests in flight.
    pub in_flight: u32,
    /// Its capacity (requests served at once); 0: unbounded.
    pub capacity: u32,
}

impl Report {
    /// A report of `expected` with `in_flight` requests at a server of `capacity` (0:
    /// unbounded).
    pub fn new(expected: Duration, in_flight: u32, capacity: u32) -> Self {
        Self {
            expected,
            in_flight,
            capacity,
        }
    }

    /// The server's service time S the report implies: `E × C / max(C, n + 1)`, or E for an
    /// unbounded server.
    pub fn service(&self) -> Duration {
        if self.capacity == 0 {
            return self.expected;
        }
        let c = self.capacity;
        let ahead = c.max(self.in_flight.saturating_add(1));
        self.expected * c / ahead
    }
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            members: 3,
            max_members: 256,
            grow_at: 0.5,
            races_per_1000: 4,
            race_burst: 2,
            min_race_gap: Duration::from_millis(100),
            behind: 2.0,
            report_memory: Duration::from_secs(1),
        }
    }
}

/// A member of a [`Balancer`]: stable for the member's life, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey(pub u64);

/// Why a race should run ([`Balancer::poll_race`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaceRequest {
    /// Servers already in the pool (live or retiring): race the others.
    pub exclude: Vec<SocketAddr>,
    /// What the race is for.
    pub reason: RaceReason,
}

/// What a race is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaceReason {
    /// The pool has fewer than `k` live members.
    Fill,
    /// This member fell behind.
    Behind(MemberKey),
    /// This client's requests need more servers: the race should find this many (an n-best
    /// race), and every one it finds joins without a member retiring.
    Grow(usize),
}

impl RaceRequest {
    /// How many servers the race should find: 1, or a growth's count.
    pub fn wanted(&self) -> usize {
        match self.reason {
            RaceReason::Grow(n) => n.max(1),
            _ => 1,
        }
    }
}

/// What a [`Balancer`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BalanceStats {
    /// Requests sent.
    pub requests: u64,
    /// Races started to fill the pool (a member failed or left).
    pub fill_races: u64,
    /// Races started because a member fell behind.
    pub behind_races: u64,
    /// Races started to grow the pool (this client's requests needed more servers).
    pub grow_races: u64,
    /// Members retired to shrink the pool back (this client's requests needed fewer).
    pub shrunk: u64,
    /// Races that found no new server.
    pub races_failed: u64,
    /// Members retired after a race found a better one (the newcomer itself included, when it
    /// was the worst).
    pub retired: u64,
    /// Members that failed (their session ended).
    pub failed: u64,
}

/// A member as the balancer sees it ([`Balancer::members`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberView {
    /// The member.
    pub key: MemberKey,
    /// Its server.
    pub server: SocketAddr,
    /// This client's requests in flight there.
    pub in_flight: u32,
    /// Its latest report (the server's expected completion) and its age.
    pub report: Option<(Duration, Duration)>,
    /// The service time its latest report implies.
    pub service: Option<Duration>,
    /// The expected delay of one more request there now.
    pub delay: Duration,
    /// Retiring: it takes no new request.
    pub retiring: bool,
}

#[derive(Debug, Clone)]
struct Member {
    key: MemberKey,
    server: SocketAddr,
    /// Requests served at once; None: unbounded (extra requests add no wait).
    capacity: Option<u32>,
    in_flight: u32,
    /// Requests sent since the latest report.
    unreported: u32,
    report: Option<(Duration, Instant)>,
    /// The service time the latest report implies.
    service: Option<Duration>,
    /// The requests in flight at the server the latest report counted.
    reported_in_flight: Option<u32>,
    rtt: Option<Duration>,
    /// A reply reported its server's load (not only the offer): only then can it be behind.
    heard: bool,
    /// Since when this client has had requests there with no reply: the time of the first
    /// request after an idle spell, or of the latest reply since (None: nothing in flight).
    waiting_since: Option<Instant>,
    /// The replies that were failures (the caller's classification), weighted: an EWMA with
    /// weight [`FAILURE_WEIGHT`].
    failure: f64,
    /// Failing (its failure EWMA reached [`FAILING`]) until then: no requests while another
    /// member is not, and the first to be replaced.
    failing_until: Option<Instant>,
    retiring: bool,
}

/// The request balancer of a pool of sessions (see the module documentation).
#[derive(Debug, Clone)]
pub struct Balancer {
    config: BalanceConfig,
    members: Vec<Member>,
    next_key: u64,
    /// The race budget, in thousandths of a race (exact: each request adds `races_per_1000`).
    tokens: u64,
    last_race: Option<Instant>,
    racing: Option<RaceReason>,
    stats: BalanceStats,
    /// Servers retired while failing, and until when races leave them out.
    shunned: Vec<(SocketAddr, Instant)>,
    /// Live members the pool keeps now: `members`, more after a growth.
    target: usize,
    /// The slots this client's requests keep busy (see [`Balancer::load`]).
    busy: BusySlots,
    /// When the pool last shrank.
    last_shrink: Option<Instant>,
    /// A growth found no server: no other before then.
    no_growth_until: Option<Instant>,
}

impl Balancer {
    /// An empty pool.
    pub fn new(config: BalanceConfig) -> Self {
        let members = config.members.max(1);
        Self {
            config: BalanceConfig {
                members,
                max_members: config.max_members.max(members),
                ..config
            },
            members: Vec::new(),
            next_key: 0,
            tokens: RACE * u64::from(config.race_burst.max(1)),
            last_race: None,
            racing: None,
            stats: BalanceStats::default(),
            shunned: Vec::new(),
            target: members,
            busy: BusySlots::default(),
            last_shrink: None,
            no_growth_until: None,
        }
    }

    /// The live members the pool keeps now: `members`, or more after it grew.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The server slots this client's requests keep busy, at `now`: a time average over
    /// [`LOAD_MEMORY`] of its request rate times the service time of the member each request
    /// went to (Little's law for the service alone: queueing and the path are left out, so
    /// a client whose servers are slow or shared is not taken for a big one).
    pub fn load(&self, now: Instant) -> f64 {
        self.busy.at(now)
    }

    /// The live members' slots (their reported capacities), when every one has reported one.
    fn slots(&self) -> Option<u32> {
        self.members
            .iter()
            .filter(|m| !m.retiring)
            .map(|m| m.capacity)
            .sum()
    }

    /// The configuration in force.
    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    /// Adds a member with `server`, whose offer's load hint is its first report (None: the
    /// offer gave none), reached in `rtt`.
    pub fn add(
        &mut self,
        now: Instant,
        server: SocketAddr,
        hint: Option<Report>,
        rtt: Option<Duration>,
    ) -> MemberKey {
        let key = MemberKey(self.next_key);
        self.next_key += 1;
        self.members.push(Member {
            key,
            server,
            capacity: hint.map(|h| h.capacity).filter(|&c| c > 0),
            in_flight: 0,
            unreported: 0,
            report: hint.map(|h| (h.expected, now)),
            service: hint.map(|h| h.service()),
            reported_in_flight: hint.map(|h| h.in_flight),
            rtt,
            heard: false,
            waiting_since: None,
            failure: 0.0,
            failing_until: None,
            retiring: false,
        });
        key
    }

    fn member(&mut self, key: MemberKey) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.key == key)
    }

    /// The members' median service time (None when none has one).
    fn median_service(&self) -> Option<Duration> {
        let mut services: Vec<Duration> = self.members.iter().filter_map(|m| m.service).collect();
        if services.is_empty() {
            return None;
        }
        services.sort_unstable();
        Some(services[services.len() / 2])
    }

    /// The members' median report, for a member that has none yet.
    fn median_report(&self, now: Instant) -> Duration {
        let mut reports: Vec<Duration> = self
            .members
            .iter()
            .filter_map(|m| {
                m.report
                    .map(|(e, at)| aged(e, at, now, m.service, self.config.report_memory))
            })
            .collect();
        if reports.is_empty() {
            return Duration::ZERO;
        }
        reports.sort_unstable();
        reports[reports.len() / 2]
    }

    /// The aged report of `m` (the median's when it has none): what one more request would
    /// wait and take at its server, as last heard, before this client's own additions.
    fn expected(&self, m: &Member, now: Instant) -> Duration {
        match m.report {
            Some((e, at)) => aged(e, at, now, m.service, self.config.report_memory),
            None => self.median_report(now),
        }
    }

    /// The expected delay of one more request on `m`.
    fn delay(&self, m: &Member, now: Instant) -> Duration {
        let mut d = m.rtt.unwrap_or(Duration::ZERO) + self.expected(m, now);
        if let (Some(c), Some(service)) = (m.capacity, m.service) {
            d += service * m.unreported / c;
        }
        d.max(silence(m, now))
    }

    /// Whether `m` is failing at `now` (see [`Balancer::replied_with`]).
    fn failing(m: &Member, now: Instant) -> bool {
        m.failing_until.is_some_and(|t| now < t)
    }

    /// The member that should take the next request: the live member with the shortest
    /// expected delay (ties: fewer requests in flight, then the older member). None when the
    /// pool has no live member.
    pub fn pick(&self, now: Instant) -> Option<MemberKey> {
        let live = self.members.iter().filter(|m| !m.retiring);
        // A failing member takes requests only when every live member is failing.
        let healthy = live.clone().any(|m| !Self::failing(m, now));
        live.filter(|m| !healthy || !Self::failing(m, now))
            .min_by_key(|m| (self.delay(m, now), m.in_flight, m.key))
            .map(|m| m.key)
    }

    /// A request was sent on `key` at `now`.
    pub fn sent(&mut self, now: Instant, key: MemberKey) {
        self.stats.requests += 1;
        // The request's work: its member's service time, else the members' median.
        let service = self
            .members
            .iter()
            .find(|m| m.key == key)
            .and_then(|m| m.service)
            .or_else(|| self.median_service());
        if let Some(s) = service {
            self.busy.add(now, s);
        }
        let cap = u64::from(self.config.race_burst.max(1)) * RACE;
        self.tokens = (self.tokens + u64::from(self.config.races_per_1000)).min(cap);
        if let Some(m) = self.member(key) {
            if m.in_flight == 0 {
                m.waiting_since = Some(now);
            }
            m.in_flight += 1;
            m.unreported += 1;
        }
    }

    /// A reply came on `key`, with the path's round-trip sample (if the caller has one) and the
    /// server's report (None: the reply carried no estimate).
    pub fn replied(
        &mut self,
        now: Instant,
        key: MemberKey,
        rtt: Option<Duration>,
        report: Option<Report>,
    ) {
        self.replied_with(now, key, rtt, report, true);
    }

    /// A reply came on `key`, as [`Balancer::replied`], and `ok` says whether the caller took
    /// it for a success: a reply its server's application answered with a failure (an HTTP
    /// 5xx, say) is not. A member whose replies fail — its failure EWMA (weight 1/4) reaches
    /// 1/2, three failures in a row from none — is **failing** for [`FAILING_HOLD`] from the
    /// latest failure: it takes no request while another member is not failing, it is behind
    /// (a race replaces it, within the budget), and it is the first to retire. A server that
    /// answers every request at once with an error looks idle in its reports; this is what
    /// keeps a pool off it.
    pub fn replied_with(
        &mut self,
        now: Instant,
        key: MemberKey,
        rtt: Option<Duration>,
        report: Option<Report>,
        ok: bool,
    ) {
        if let Some(m) = self.member(key) {
            m.in_flight = m.in_flight.saturating_sub(1);
            m.waiting_since = (m.in_flight > 0).then_some(now);
            m.failure *= 1.0 - FAILURE_WEIGHT;
            if !ok {
                m.failure += FAILURE_WEIGHT;
                if m.failure >= FAILING {
                    m.failing_until = Some(now + FAILING_HOLD);
                }
            }
            if let Some(sample) = rtt {
                m.rtt = Some(sample);
            }
            match report {
                Some(r) => {
                    m.report = Some((r.expected, now));
                    m.service = Some(r.service());
                    m.reported_in_flight = Some(r.in_flight);
                    m.capacity = Some(r.capacity).filter(|&c| c > 0);
                    m.unreported = 0;
                    m.heard = true;
                }
                None => m.unreported = m.unreported.saturating_sub(1),
            }
        }
    }

    /// A request on `key` ended without a reply (timed out, cancelled, refused).
    pub fn lost(&mut self, key: MemberKey) {
        if let Some(m) = self.member(key) {
            m.in_flight = m.in_flight.saturating_sub(1);
            if m.in_flight == 0 {
                m.waiting_since = None;
            }
            m.unreported = m.unreported.saturating_sub(1);
        }
    }

    /// `key`'s session ended: the member leaves the pool (and a race will fill its place).
    pub fn failed(&mut self, key: MemberKey) {
        let before = self.members.len();
        self.members.retain(|m| m.key != key);
        if self.members.len() < before {
            self.stats.failed += 1;
        }
    }

    /// `key` leaves the pool (a retired member whose requests are answered).
    pub fn remove(&mut self, key: MemberKey) {
        self.members.retain(|m| m.key != key);
    }

    /// Retired members with no request in flight: close their sessions and
    /// [`Balancer::remove`] them.
    pub fn idle_retired(&self) -> Vec<MemberKey> {
        self.members
            .iter()
            .filter(|m| m.retiring && m.in_flight == 0)
            .map(|m| m.key)
            .collect()
    }

    /// The live members (not retiring).
    pub fn live(&self) -> usize {
        self.members.iter().filter(|m| !m.retiring).count()
    }

    /// Whether a race should start now; if so, it counts as started (call
    /// [`Balancer::race_won`] or [`Balancer::race_failed`] when it ends). At most one race
    /// runs at a time.
    pub fn poll_race(&mut self, now: Instant) -> Option<RaceRequest> {
        self.shunned.retain(|(_, until)| now < *until);
        if self.racing.is_some() {
            return None;
        }
        if self
            .last_race
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.min_race_gap)
        {
            return None;
        }
        let reason = if self.live() < self.target {
            RaceReason::Fill
        } else {
            if self.tokens < RACE {
                return None;
            }
            let held = self.no_growth_until.is_some_and(|t| now < t);
            match self.growth(now).filter(|_| !held) {
                Some(n) => RaceReason::Grow(n),
                None => RaceReason::Behind(self.behind(now)?),
            }
        };
        match reason {
            RaceReason::Fill => self.stats.fill_races += 1,
            RaceReason::Behind(_) => {
                self.tokens -= RACE;
                self.stats.behind_races += 1;
            }
            RaceReason::Grow(n) => {
                self.tokens -= RACE;
                self.stats.grow_races += 1;
                self.target += n;
            }
        }
        self.racing = Some(reason);
        self.last_race = Some(now);
        Some(RaceRequest {
            exclude: self
                .members
                .iter()
                .map(|m| m.server)
                .chain(self.shunned.iter().map(|(s, _)| *s))
                .collect(),
            reason,
        })
    }

    /// How many members the pool should grow by, if it should: the slots this client keeps
    /// busy exceed `grow_at` of its live members' slots. Enough members to bring them back to
    /// `grow_at` of the slots at the members' mean capacity, up to `max_members`.
    fn growth(&self, now: Instant) -> Option<usize> {
        let live = self.live();
        if live == 0 || live >= self.config.max_members {
            return None;
        }
        let slots = f64::from(self.slots()?);
        let share = self.config.grow_at;
        let busy = self.load(now);
        if slots <= 0.0 || share <= 0.0 || busy <= share * slots {
            return None;
        }
        let per_member = slots / live as f64;
        let wanted = (busy / (share * per_member)).ceil() as usize;
        let n = wanted
            .min(self.config.max_members)
            .saturating_sub(live)
            .max(1);
        Some(n)
    }

    /// Whether the pool should shrink, and if so retires one member (the one a race's winner
    /// would displace: failing, then least spare, then longest delay) and returns it. It
    /// shrinks while it holds more than `members` live members, no race runs, and the slots
    /// this client keeps busy would stay under half of `grow_at` of the slots with one member
    /// fewer; at most once every `min_race_gap`. Close the member's session once its
    /// requests are answered ([`Balancer::idle_retired`]).
    pub fn poll_shrink(&mut self, now: Instant) -> Option<MemberKey> {
        let live = self.live();
        if live <= self.config.members || self.racing.is_some() {
            return None;
        }
        if self
            .last_shrink
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.min_race_gap)
        {
            return None;
        }
        let slots = f64::from(self.slots()?);
        let fewer = slots * (live - 1) as f64 / live as f64;
        if self.load(now) >= self.config.grow_at / 2.0 * fewer {
            return None;
        }
        let key = self.retire_worst(now)?;
        self.target = (live - 1).max(self.config.members);
        self.last_shrink = Some(now);
        self.stats.shrunk += 1;
        Some(key)
    }

    /// The live member that fell behind, if one did: the one with the largest aged report, when
    /// it exceeds `behind` times the best's.
    fn behind(&self, now: Instant) -> Option<MemberKey> {
        if let Some(m) = self
            .members
            .iter()
            .find(|m| !m.retiring && Self::failing(m, now))
        {
            return Some(m.key);
        }
        let live: Vec<(&Member, Duration)> = self
            .members
            .iter()
            .filter(|m| !m.retiring)
            .filter_map(|m| {
                // A member heard from; or one not yet, whose first reply is overdue (its
                // offer's hint says nothing about it, its silence does).
                let d = self.delay_without_own(m, now);
                let overdue =
                    silence(m, now) > m.rtt.unwrap_or(Duration::ZERO) + self.expected(m, now);
                (m.heard || overdue).then_some((m, d))
            })
            .collect();
        // The reference is a member whose replies succeed: one that answers errors at once
        // looks fastest of all.
        let best = live
            .iter()
            .filter(|(m, _)| m.failure < FAILING / 2.0)
            .map(|(_, d)| *d)
            .min()?;
        let (worst, d) = live.iter().max_by_key(|(m, d)| (*d, m.key))?;
        if d.as_secs_f64() > self.config.behind * best.as_secs_f64() {
            return Some(worst.key);
        }
        // Every member queueing (its aged report over `behind` times its own floor, the service
        // time): the whole pool is behind what a race over the rest of the fleet may find.
        let congested = live.iter().all(|(m, _)| match (m.report, m.service) {
            (Some((e, at)), Some(service)) => {
                aged(e, at, now, Some(service), self.config.report_memory).as_secs_f64()
                    > self.config.behind * service.as_secs_f64()
            }
            _ => false,
        });
        congested.then_some(worst.key)
    }

    /// The race found `server` (its offer's load hint, the race's answer time): it joins.
    /// Returns the new member and, when the pool now holds more live members than it keeps
    /// ([`Balancer::target`]), the member retired to make room (see `retire_worst`: failing,
    /// least spare, longest delay), which may be the new one. Call it once per server a
    /// growth's race found.
    pub fn race_won(
        &mut self,
        now: Instant,
        server: SocketAddr,
        hint: Option<Report>,
        rtt: Option<Duration>,
    ) -> (MemberKey, Option<MemberKey>) {
        self.racing = None;
        let key = self.add(now, server, hint, rtt);
        if self.live() <= self.target {
            return (key, None);
        }
        let worst = self.retire_worst(now);
        if worst.is_some() {
            self.stats.retired += 1;
        }
        (key, worst)
    }

    /// Retires the live member that should leave first — failing, then the least spare
    /// throughput (the race chose its winner for its room, PROTOCOL.md §6.2.5), then the
    /// longest delay — and returns it. A failing member's server is shunned from races.
    fn retire_worst(&mut self, now: Instant) -> Option<MemberKey> {
        let worst = self
            .members
            .iter()
            .filter(|m| !m.retiring)
            .max_by(|a, b| {
                // Failing first; then the least spare throughput (the race chose its winner
                // for its room, PROTOCOL.md §6.2.5); then the longest delay.
                let key = |m: &Member| (Self::failing(m, now), std::cmp::Reverse(spare_rank(m)));
                key(a)
                    .cmp(&key(b))
                    .then_with(|| {
                        self.delay_without_own(a, now)
                            .cmp(&self.delay_without_own(b, now))
                    })
                    .then_with(|| a.key.cmp(&b.key))
            })
            .map(|m| m.key);
        let m = self.member(worst?)?;
        m.retiring = true;
        let shun = Self::failing(m, now).then_some(m.server);
        if let Some(server) = shun {
            // Not raced again for a while: its offers would look as good as ever.
            self.shunned.push((server, now + SHUN));
        }
        worst
    }

    /// A member's expected delay, leaving out this client's own unreported requests (they
    /// follow the choice; they should not decide who leaves), its silence included.
    fn delay_without_own(&self, m: &Member, now: Instant) -> Duration {
        (m.rtt.unwrap_or(Duration::ZERO) + self.expected(m, now)).max(silence(m, now))
    }

    /// The race ended without a new server. A growth that found none, or a race to fill the
    /// rest of one that found fewer than it asked for, stops the pool at the members it has;
    /// a growth that found none holds further growth for [`GROW_HOLD`] from its start (every
    /// server may be a member already).
    pub fn race_failed(&mut self) {
        if let (Some(RaceReason::Grow(_)), Some(at)) = (self.racing, self.last_race) {
            self.no_growth_until = Some(at + GROW_HOLD);
        }
        self.racing = None;
        self.stats.races_failed += 1;
        self.target = self.target.min(self.live()).max(self.config.members);
    }

    /// What was counted so far.
    pub fn stats(&self) -> BalanceStats {
        self.stats
    }

    /// Every member, as the balancer sees it at `now`.
    pub fn members(&self, now: Instant) -> Vec<MemberView> {
        self.members
            .iter()
            .map(|m| MemberView {
                key: m.key,
                server: m.server,
                in_flight: m.in_flight,
                report: m
                    .report
                    .map(|(e, at)| (e, now.saturating_duration_since(at))),
                service: m.service,
                delay: self.delay(m, now),
                retiring: m.retiring,
            })
            .collect()
    }
}

/// One race in the token bucket's units (thousandths).
const RACE: u64 = 1000;

/// How long a pool does not grow after a growth's race found no server.
pub const GROW_HOLD: Duration = Duration::from_secs(10);

/// The time constant of a pool's load average ([`Balancer::load`]: the slots this client's
/// requests keep busy).
pub const LOAD_MEMORY: Duration = Duration::from_secs(1);

/// A time average of the slots a client's requests keep busy (see [`Balancer::load`]): each
/// request adds its service time over [`LOAD_MEMORY`], and the sum decays as
/// `exp(−dt / LOAD_MEMORY)` — at a steady rate λ of requests of service time S, it is λ × S.
/// Until the first request is [`LOAD_MEMORY`] old the sum covers less than that, and is
/// divided by the share it covers, `1 − exp(−age / LOAD_MEMORY)` (age at least
/// [`LOAD_FIRST_SPAN`]): a client that starts at full rate is seen at its rate at once, not a
/// second later.
#[derive(Debug, Clone, Copy, Default)]
struct BusySlots {
    /// The decayed sum as of `at`.
    value: f64,
    at: Option<Instant>,
    /// The first request.
    since: Option<Instant>,
}

impl BusySlots {
    /// The average at `now`.
    fn at(&self, now: Instant) -> f64 {
        let (Some(at), Some(since)) = (self.at, self.since) else {
            return 0.0;
        };
        let age = now.saturating_duration_since(since).max(LOAD_FIRST_SPAN);
        self.value * decay(now.saturating_duration_since(at)) / (1.0 - decay(age))
    }

    /// A request of `service` was sent at `now`.
    fn add(&mut self, now: Instant, service: Duration) {
        let now = self.at.map_or(now, |at| at.max(now));
        let left = self.at.map_or(0.0, |at| {
            self.value * decay(now.saturating_duration_since(at))
        });
        self.value = left + service.as_secs_f64() / LOAD_MEMORY.as_secs_f64();
        self.at = Some(now);
        self.since.get_or_insert(now);
    }
}

/// The least age a pool's load average ([`Balancer::load`]) counts its first request at: it takes
/// this long to see a rate.
pub const LOAD_FIRST_SPAN: Duration = Duration::from_millis(100);

/// What is left of the load average after `dt`.
fn decay(dt: Duration) -> f64 {
    (-dt.as_secs_f64() / LOAD_MEMORY.as_secs_f64()).exp()
}

/// The weight of each reply in a member's failure EWMA.
const FAILURE_WEIGHT: f64 = 0.25;

/// The failure EWMA at which a member is failing: three failures in a row from none
/// (0.25, 0.44, 0.58).
const FAILING: f64 = 0.5;

/// How long a member stays failing after its latest failure (then it may take a request
/// again, and one more failure marks it again).
pub const FAILING_HOLD: Duration = Duration::from_secs(1);

/// A member's spare throughput from its latest report, in requests per second (rounded down),
/// for retirement: `max(0, C − n − unreported) / S`. 0 without a capacity or a report (the
/// delay decides between those).
fn spare_rank(m: &Member) -> u64 {
    let (Some(c), Some(service), Some(n)) = (m.capacity, m.service, m.reported_in_flight) else {
        return 0;
    };
    spare_throughput(c, n.saturating_add(m.unreported), service) as u64
}

/// A server's spare throughput, in requests per second: its free slots over its service time,
/// `max(0, C − n) / S` (PROTOCOL.md §6.2.5); 0 with no free slot, no capacity (C = 0) or no
/// service time.
pub fn spare_throughput(capacity: u32, in_flight: u32, service: Duration) -> f64 {
    let free = capacity.saturating_sub(in_flight);
    let s = service.as_secs_f64();
    if free == 0 || s <= 0.0 {
        return 0.0;
    }
    f64::from(free) / s
}

/// How long races leave out a server retired while failing.
pub const SHUN: Duration = Duration::from_secs(10);

/// How long this client has waited on `m` with no reply while requests were in flight there:
/// no request sent now is expected back sooner (a server that went silent, or stalled, is
/// avoided after about one expected delay, before this client's unanswered requests add up).
fn silence(m: &Member, now: Instant) -> Duration {
    m.waiting_since
        .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
}

/// A report `e` heard at `at`, aged to `now`: the service time itself stays, the queue above
/// it fades as `exp(−age / memory)` (other clients keep feeding a queue that this client's
/// requests no longer reach; see the module documentation).
fn aged(
    e: Duration,
    at: Instant,
    now: Instant,
    service: Option<Duration>,
    memory: Duration,
) -> Duration {
    let floor = service.unwrap_or(Duration::ZERO).min(e);
    let age = now.saturating_duration_since(at).as_secs_f64();
    let tau = memory.as_secs_f64();
    if tau <= 0.0 {
        return floor;
    }
    let left = (-(age / tau).min(50.0)).exp();
    floor + (e - floor).mul_f64(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// An idle server's report: E is its service time.
    fn idle(e: u64, capacity: u32) -> Option<Report> {
        Some(Report::new(ms(e), 0, capacity))
    }

    /// A report of E from a server of 4 slots and a 10 ms service time: as many in flight as
    /// that takes.
    fn queued(e: u64) -> Option<Report> {
        let in_flight = (e * 4 / 10).saturating_sub(1) as u32;
        let r = Report::new(ms(e), in_flight, 4);
        assert_eq!(r.service(), ms(10));
        Some(r)
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 7001))
    }

    #[test]
    fn p3_each_request_goes_to_the_member_with_the_shortest_expected_delay() {
        let now = Instant::now();
        let mut b = Balancer::new(BalanceConfig::default());
        let a = b.add(now, addr(1), idle(10, 4), Some(ms(1)));
        let c = b.add(now, addr(2), idle(10, 4), Some(ms(5)));
        // Same report: the shorter path wins.
        assert_eq!(b.pick(now), Some(a));
        // Each request sent there adds S / C = 2.5 ms until a report covers it: after two,
        // a's delay (1 + 10 + 5) passes c's (5 + 10).
        b.sent(now, a);
        assert_eq!(b.pick(now), Some(a));
        b.sent(now, a);
        assert_eq!(b.pick(now), Some(c));
        // A report that covers them (and says a is idle again) brings a back.
        b.replied(now, a, None, queued(10));
        assert_eq!(b.pick(now), Some(a));
    }

    #[test]
    fn p3_a_member_that_turns_slow_stops_getting_requests_and_its_report_ages() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig::default());
        let a = b.add(t0, addr(1), idle(10, 4), Some(ms(1)));
        let c = b.add(t0, addr(2), idle(12, 4), Some(ms(1)));
        assert_eq!(b.pick(t0), Some(a));
        b.sent(t0, a);
        // a's server says one more request would take 100 ms there: c takes the next ones.
        b.replied(t0, a, None, queued(100));
        for i in 0..50 {
            let now = t0 + ms(i);
            assert_eq!(b.pick(now), Some(c), "at {i} ms");
        }
        // The announced queue (90 ms above the 10 ms service time) fades over the report
        // memory (1 s): a third of it is left after 1 s, and c still wins at 3.5 s (a: 1 + 10 +
        // 2.7 ms against c's 13); at 4 s a is back (1 + 10 + 1.6 ms) and wins.
        let view = b.members(t0 + ms(1_000));
        let delay = view.iter().find(|m| m.key == a).unwrap().delay;
        assert!(delay > ms(43) && delay < ms(45), "{delay:?}");
        assert_eq!(b.pick(t0 + ms(3_500)), Some(c));
        assert_eq!(b.pick(t0 + ms(4_000)), Some(a));
    }

    #[test]
    fn p3_a_member_whose_replies_fail_takes_no_request_and_is_replaced_first() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            ..BalanceConfig::default()
        });
        let a = b.add(t0, addr(1), idle(10, 4), Some(ms(1)));
        let c = b.add(t0, addr(2), idle(12, 4), Some(ms(1)));
        // a answers at once, and its reports say it is idle; but the caller takes its replies
        // for failures. Two failures: still a's (the EWMA is at 0.44).
        for i in 0..2 {
            assert_eq!(b.pick(t0), Some(a), "failure {i}");
            b.sent(t0, a);
            b.replied_with(t0, a, None, idle(10, 4), false);
        }
        assert_eq!(b.pick(t0), Some(a));
        // The third makes it failing: the requests go to c, though a looks faster.
        b.sent(t0, a);
        b.replied_with(t0, a, None, idle(1, 4), false);
        assert_eq!(b.pick(t0), Some(c));
        assert!(b.members(t0).iter().any(|m| m.key == a && m.delay < ms(5)));
        // It is the member behind, and the first to retire after the race.
        let race = b.poll_race(t0).expect("a race");
        assert_eq!(race.reason, RaceReason::Behind(a));
        let (_, retired) = b.race_won(t0, addr(3), idle(50, 4), None);
        assert_eq!(retired, Some(a), "failing goes before slow");
        // Races leave its server out for SHUN, though it is no longer a member.
        b.idle_retired().into_iter().for_each(|k| b.remove(k));
        b.failed(c);
        let race = b.poll_race(t0 + ms(100)).expect("a race to fill");
        assert!(race.exclude.contains(&addr(1)), "{:?}", race.exclude);
        b.race_failed();
        let race = b.poll_race(t0 + SHUN).expect("a race to fill");
        assert!(!race.exclude.contains(&addr(1)), "{:?}", race.exclude);

        // Without a race to replace it, a failing member gets a request again once
        // FAILING_HOLD has passed since its latest failure; a success clears it.
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            ..BalanceConfig::default()
        });
        let a = b.add(t0, addr(1), idle(10, 4), Some(ms(1)));
        let c = b.add(t0, addr(2), idle(12, 4), Some(ms(1)));
        for _ in 0..3 {
            b.sent(t0, a);
            b.replied_with(t0, a, None, idle(10, 4), false);
        }
        assert_eq!(b.pick(t0 + FAILING_HOLD - ms(1)), Some(c));
        let later = t0 + FAILING_HOLD;
        assert_eq!(b.pick(later), Some(a));
        b.sent(later, a);
        b.replied_with(later, a, None, idle(10, 4), true);
        assert_eq!(b.pick(later), Some(a));
        // Every member failing: the least bad still takes requests (nothing else can).
        for m in [a, c] {
            for _ in 0..3 {
                b.sent(later, m);
                b.replied_with(later, m, None, idle(10, 4), false);
            }
        }
        assert_eq!(b.pick(later), Some(a));
    }

    #[test]
    fn p3_a_member_that_falls_silent_is_avoided_after_about_one_expected_delay() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            ..BalanceConfig::default()
        });
        let a = b.add(t0, addr(1), idle(10, 4), Some(ms(1)));
        let c = b.add(t0, addr(2), idle(10, 4), Some(ms(1)));
        // c reported a queue: 30 ms for one more request.
        b.sent(t0, c);
        b.replied(t0, c, None, queued(30));
        // a takes a request and never answers it.
        assert_eq!(b.pick(t0), Some(a));
        b.sent(t0, a);
        // 10 ms later a is still the better bet (1 + 10 + 2.5 ms against c's ~31).
        assert_eq!(b.pick(t0 + ms(10)), Some(a));
        // 40 ms without a reply while a request is there: no request sent now is expected back
        // sooner than that, and c's 31 ms wins.
        assert_eq!(b.pick(t0 + ms(40)), Some(c));
        // At 100 ms it is behind (more than twice c's) and a race is due.
        let race = b.poll_race(t0 + ms(100)).expect("a race");
        assert_eq!(race.reason, RaceReason::Behind(a));
        b.race_failed();
        // Its reply, late, ends the silence.
        b.replied(t0 + ms(120), a, None, idle(10, 4));
        assert_eq!(b.pick(t0 + ms(120)), Some(a));
    }

    #[test]
    fn p3_after_a_race_the_member_with_the_least_room_retires() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            ..BalanceConfig::default()
        });
        // a: a fast server with a queue (S = 40 ms, 6 in flight of 4 slots: no room); c: a
        // fast idle one (100/s spare).
        let a = b.add(t0, addr(1), Some(Report::new(ms(70), 6, 4)), None);
        let c = b.add(t0, addr(2), idle(40, 4), None);
        // The race found an idle server at half speed (E = 80 ms, 50/s spare): it stays, and
        // a leaves, though one more request would finish sooner on a (70 ms).
        let (new, retired) = b.race_won(t0, addr(3), idle(80, 4), None);
        assert_eq!(retired, Some(a));
        assert!(b.members(t0).iter().any(|m| m.key == new && !m.retiring));
        assert!(b.members(t0).iter().any(|m| m.key == c && !m.retiring));
        // Among members without room, the longest delay leaves (here the newcomer itself).
        let mut b = Balancer::new(BalanceConfig {
            members: 1,
            ..BalanceConfig::default()
        });
        let a = b.add(t0, addr(1), Some(Report::new(ms(70), 6, 4)), None);
        let (new, retired) = b.race_won(t0, addr(3), Some(Report::new(ms(90), 8, 4)), None);
        assert_eq!(retired, Some(new));
        assert_eq!(b.pick(t0), Some(a));
    }

    #[test]
    fn p3_offers_alone_never_make_a_member_behind_and_the_budget_starts_full() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            race_burst: 2,
            ..BalanceConfig::default()
        });
        // Offers from an idle fleet carry the servers' prior, not what they are: however
        // unequal, no race is due on them.
        let a = b.add(t0, addr(1), idle(10, 4), None);
        let c = b.add(t0, addr(2), idle(100, 4), None);
        assert_eq!(b.poll_race(t0), None);
        // Replies confirm c is 10 times behind a: a race, and a second one once the first
        // ended and the gap passed (the bucket starts full, with `race_burst` races).
        for (m, e) in [(a, 10), (c, 100)] {
            b.sent(t0, m);
            b.replied(t0, m, None, idle(e, 4));
        }
        assert_eq!(
            b.poll_race(t0).map(|r| r.reason),
            Some(RaceReason::Behind(c))
        );
        b.race_failed();
        let next = t0 + ms(100);
        assert_eq!(
            b.poll_race(next).map(|r| r.reason),
            Some(RaceReason::Behind(c))
        );
        b.race_failed();
        assert_eq!(b.poll_race(next + ms(100)), None, "the bucket is empty");
    }

    #[test]
    fn p3_a_failed_member_is_replaced_by_a_race_that_excludes_the_pool() {
        let now = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            ..BalanceConfig::default()
        });
        let a = b.add(now, addr(1), idle(10, 4), None);
        b.add(now, addr(2), idle(10, 4), None);
        assert_eq!(
            b.poll_race(now),
            None,
            "a full pool of equal members races not"
        );
        b.failed(a);
        let race = b.poll_race(now).expect("a race to fill the pool");
        assert_eq!(race.reason, RaceReason::Fill);
        assert_eq!(race.exclude, vec![addr(2)]);
        assert_eq!(b.poll_race(now), None, "one race at a time");
        let (new, retired) = b.race_won(now, addr(3), idle(10, 4), None);
        assert_eq!(retired, None);
        assert_eq!(b.live(), 2);
        assert!(b.members(now).iter().any(|m| m.key == new));
        assert_eq!(b.stats().fill_races, 1);
    }

    #[test]
    fn p3_a_member_behind_is_raced_within_the_budget_and_the_worst_retires() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            races_per_1000: 5,
            race_burst: 1,
            ..BalanceConfig::default()
        });
        let a = b.add(t0, addr(1), idle(10, 4), None);
        let slow = b.add(t0, addr(2), idle(10, 4), None);
        b.sent(t0, slow);
        b.sent(t0, slow);
        b.replied(t0, slow, None, queued(500));
        // The first token is there: a race, for the member behind.
        let race = b.poll_race(t0).expect("a race");
        assert_eq!(race.reason, RaceReason::Behind(slow));
        let (new, retired) = b.race_won(t0, addr(3), idle(10, 4), None);
        assert_eq!(retired, Some(slow), "the worst member retires");
        assert_eq!(b.pick(t0).map(|k| k == a || k == new), Some(true));
        // It takes no new request, and leaves once its request is answered.
        assert!(b.idle_retired().is_empty(), "one request still in flight");
        b.replied(t0, slow, None, None);
        assert_eq!(b.idle_retired(), vec![slow]);
        b.remove(slow);
        // Another member falls behind: the bucket (full at one race) went to the first race;
        // each request adds 5 thousandths, so the 200th request since buys the next.
        let later = t0 + ms(1_000);
        b.sent(t0, new);
        b.replied(later, new, None, queued(500));
        assert_eq!(b.poll_race(later), None, "no token");
        for _ in 0..198 {
            b.sent(t0, a);
            b.replied(later, a, None, queued(10));
        }
        assert_eq!(b.poll_race(later), None, "not yet a whole race");
        b.sent(t0, a);
        b.replied(later, a, None, queued(10));
        let race = b.poll_race(later).expect("a race bought by the requests");
        assert_eq!(race.reason, RaceReason::Behind(new));
        assert_eq!(b.stats().behind_races, 2);
    }

    #[test]
    fn p3_a_pool_whose_every_member_queues_races_for_a_better_one() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            ..BalanceConfig::default()
        });
        let a = b.add(t0, addr(1), idle(10, 4), None);
        let c = b.add(t0, addr(2), idle(10, 4), None);
        // Both alike and at their floor: nothing to race for.
        assert_eq!(b.poll_race(t0), None);
        // Both queue (30 and 25 ms against a 10 ms service time): neither is behind the other,
        // but the pool is behind the fleet; the worst is the one to replace.
        b.sent(t0, a);
        b.replied(t0, a, None, queued(30));
        b.sent(t0, c);
        b.replied(t0, c, None, queued(25));
        let race = b.poll_race(t0).expect("a race");
        assert_eq!(race.reason, RaceReason::Behind(a));
        // The newcomer offers 10 ms: the worst member retires.
        let (_, retired) = b.race_won(t0, addr(3), idle(10, 4), None);
        assert_eq!(retired, Some(a));
    }

    #[test]
    fn p3_races_are_spaced_by_the_least_gap() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            ..BalanceConfig::default()
        });
        b.add(t0, addr(1), idle(10, 4), None);
        assert!(b.poll_race(t0).is_some());
        b.race_failed();
        assert_eq!(b.poll_race(t0 + ms(50)), None, "within 100 ms of the last");
        assert!(b.poll_race(t0 + ms(100)).is_some());
        assert_eq!(b.stats().races_failed, 1);
    }

    #[test]
    fn p3_a_member_without_a_report_counts_as_the_median() {
        let now = Instant::now();
        let mut b = Balancer::new(BalanceConfig::default());
        let fast = b.add(now, addr(1), idle(5, 4), None);
        b.add(now, addr(2), idle(50, 4), None);
        let unknown = b.add(now, addr(3), None, None);
        let view = b.members(now);
        let d = |k| view.iter().find(|m| m.key == k).unwrap().delay;
        assert_eq!(
            d(unknown),
            ms(50),
            "the median of 5 and 50 ms: the upper one"
        );
        assert_eq!(b.pick(now), Some(fast));
    }

    #[test]
    fn p3_an_unbounded_server_is_not_charged_for_requests_in_flight() {
        let now = Instant::now();
        let mut b = Balancer::new(BalanceConfig::default());
        let unbounded = b.add(now, addr(1), idle(10, 0), None);
        b.add(now, addr(2), idle(11, 1), None);
        for _ in 0..100 {
            assert_eq!(b.pick(now), Some(unbounded));
            b.sent(now, unbounded);
        }
    }

    /// Sends `rate` requests per second on `b` from `from` for `millis` (no replies: the load
    /// average counts requests sent); the time of the last.
    fn send_at(b: &mut Balancer, from: Instant, rate: u64, millis: u64) -> Instant {
        let gap = Duration::from_secs(1) / rate as u32;
        let mut t = from;
        for _ in 0..rate * millis / 1000 {
            t += gap;
            let k = b.pick(t).unwrap();
            b.sent(t, k);
        }
        t
    }

    #[test]
    fn p3_a_client_whose_requests_need_more_servers_grows_its_pool_then_shrinks_back() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            ..BalanceConfig::default()
        });
        b.add(t0, addr(1), idle(10, 4), Some(ms(1)));
        b.add(t0, addr(2), idle(10, 4), Some(ms(1)));
        // 900 requests a second of 10 ms keep 9 slots busy; the two members have 8. The
        // average covers the 200 ms since the first request: 9, over half of the 8 slots:
        // grow to ⌈9 / 2⌉ = 5 members, 3 more, in one race.
        let t1 = send_at(&mut b, t0, 900, 200);
        let load = b.load(t1);
        assert!((load - 9.0).abs() < 0.1, "{load}");
        let race = b.poll_race(t1).expect("a growth");
        assert_eq!(race.reason, RaceReason::Grow(3));
        assert_eq!(race.wanted(), 3);
        assert_eq!(b.target(), 5);
        for i in 3..6 {
            let (_, retired) = b.race_won(t1, addr(i), idle(10, 4), Some(ms(1)));
            assert_eq!(
                retired, None,
                "a growth's members join without one retiring"
            );
        }
        assert_eq!(b.live(), 5);
        assert_eq!(b.poll_shrink(t1), None, "still busy");
        // No request for 3 s: 0.09 slots, under a quarter of the slots of one member fewer.
        // The pool shrinks one member per least gap (100 ms), back to k = 2.
        let mut t = t1 + ms(3_000);
        let mut shrunk = 0;
        while b.poll_shrink(t).is_some() {
            shrunk += 1;
            assert_eq!(b.poll_shrink(t), None, "one per least gap");
            t += ms(100);
        }
        assert_eq!(shrunk, 3);
        assert_eq!((b.live(), b.target()), (2, 2));
        let stats = b.stats();
        assert_eq!((stats.grow_races, stats.shrunk, stats.retired), (1, 3, 0));
    }

    #[test]
    fn p3_a_client_with_a_small_share_keeps_k_and_growth_stops_at_max_members() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceConfig::default());
        for i in 1..=3 {
            b.add(t0, addr(i), idle(10, 4), Some(ms(1)));
        }
        // One of many clients: 400 requests a second of 10 ms keep 4 of its members' 12 slots
        // busy (whatever queue its requests meet: the average counts their service alone).
        let t1 = send_at(&mut b, t0, 400, 10_000);
        assert!((b.load(t1) - 4.0).abs() < 0.01);
        assert_eq!(b.poll_race(t1), None);
        assert_eq!(b.target(), 3);

        // A client whose requests need 20 members, allowed 8: a growth of 6 at most.
        let mut b = Balancer::new(BalanceConfig {
            members: 2,
            max_members: 8,
            ..BalanceConfig::default()
        });
        b.add(t0, addr(1), idle(10, 4), Some(ms(1)));
        b.add(t0, addr(2), idle(10, 4), Some(ms(1)));
        let t1 = send_at(&mut b, t0, 4_000, 5_000);
        let race = b.poll_race(t1).expect("a growth");
        assert_eq!(race.reason, RaceReason::Grow(6));
        // It finds no server (every one is a member): the pool stays at 2, and grows no more
        // for GROW_HOLD (10 s) from the race's start.
        b.race_failed();
        assert_eq!(b.target(), 2);
        let t2 = send_at(&mut b, t1, 4_000, 9_000);
        assert_eq!(b.poll_race(t2), None);
        let t3 = send_at(&mut b, t2, 4_000, 1_000);
        let again = b.poll_race(t3).expect("a growth after the hold");
        assert_eq!(again.reason, RaceReason::Grow(6));
    }
}
