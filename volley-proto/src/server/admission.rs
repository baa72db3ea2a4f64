//! Admission control: reflector source ports; a global budget of PROBEs and one of Noise
//! handshakes (whose exhaustion is the server's under-load mode); and per-source limits on both.
//! Sources are keyed by prefix: an IPv4 address, or the /64 of an IPv6 address (anyone holding a
//! /64 holds 2^64 addresses).
//!
//! **When per-source limits apply** (PROTOCOL.md §7.7). The server is *pressed* while either
//! budget is below half or the runtime reports a backlog, and stays pressed until none of that
//! has held for a quiet period (`pressed_quiet`, 1 s): a flood that the limits themselves make
//! cheap cannot switch them off by bringing the server back under the mark. A source prefix's
//! limit applies while the server is pressed, and, once the prefix was refused while pressed
//! (it is *limited*), until its bucket has refilled completely — it stayed within its rate for
//! burst / rate — whether the server is pressed or not. So after the server is first pressed a
//! flooder gets at most its burst and its rate, and an idle server still never throttles one
//! busy honest client (WireGuard's rule). A bucket is charged only while its limit applies.
//!
//! Entries in the per-source INIT table are created only for sources whose cookie already
//! verified (the address answered an OFFER), only while the server is pressed, and the table is
//! bounded; it keeps its entries in least-recently-used order, so that a new source costs O(1)
//! however full the table is: only the least recently used entry can be idle long enough to be
//! forgotten. PROBEs come from addresses nobody has proven, so their per-source limit lives in a
//! fixed array of buckets indexed by a salted hash of the prefix, allocated once: a probe changes
//! a counter, it never creates an entry.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Source ports of UDP services commonly abused as reflectors; datagrams from them are dropped
/// unread: echo, chargen, DNS, TFTP, portmap, NTP, NetBIOS, SNMP, CLDAP, SSDP, WS-Discovery,
/// mDNS, memcached — and port 0.
pub const DEFAULT_REFLECTOR_PORTS: &[u16] = &[
    0, 7, 17, 19, 53, 69, 111, 123, 137, 161, 389, 1900, 3702, 5353, 11211,
];

/// Default [`AdmissionConfig::pressed_quiet`].
pub const DEFAULT_PRESSED_QUIET: Duration = Duration::from_secs(1);

/// Admission settings.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Session initiations per second allowed from one source prefix while its limit applies
    /// (the server is pressed, or the prefix went over its rate while it was). Default 1,000:
    /// a proxy host opening flows for many applications stays within it, and one abusive
    /// prefix gets at most ~5 % of a core of handshakes.
    pub inits_per_source_per_sec: u32,
    /// Burst allowed above that rate. Default 2,000.
    pub inits_per_source_burst: u32,
    /// Most source IPs tracked at once; beyond it new sources are refused until entries go idle.
    /// Default 65,536.
    pub max_tracked_sources: usize,
    /// Noise handshakes per second the server performs before it enters under-load mode, where
    /// it withholds offers and refuses initiations. Default 15,000 (a handshake costs ~55 µs of
    /// server CPU on the reference machine: about 80 % of a core).
    pub handshakes_per_sec: u32,
    /// Source ports dropped unread. Default [`DEFAULT_REFLECTOR_PORTS`].
    pub reflector_ports: Vec<u16>,
    /// PROBEs per second the server answers in all (burst: one second's worth); beyond it they
    /// are dropped (`probes_over_budget`). Default 1,000,000: a ceiling above what one core
    /// answers on the reference machine, so that it never binds a server with nothing else to
    /// do; set it to a share of your server's measured rate to reserve CPU for sessions and
    /// handshakes under any PROBE load.
    pub probes_per_sec: u32,
    /// PROBEs per second from one source prefix while its limit applies. Default 1,000.
    pub probes_per_source_per_sec: u32,
    /// Burst above that rate. Default 2,000.
    pub probes_per_source_burst: u32,
    /// How long the server stays pressed after the last moment a budget was below half or a
    /// backlog was reported. Default 1 s ([`DEFAULT_PRESSED_QUIET`]).
    pub pressed_quiet: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            inits_per_source_per_sec: 1_000,
            inits_per_source_burst: 2_000,
            max_tracked_sources: 65_536,
            handshakes_per_sec: 15_000,
            reflector_ports: DEFAULT_REFLECTOR_PORTS.to_vec(),
            probes_per_sec: 1_000_000,
            probes_per_source_per_sec: 1_000,
            probes_per_source_burst: 2_000,
            pressed_quiet: DEFAULT_PRESSED_QUIET,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
    }
}

/// One source prefix's bucket and whether its limit applies even when the server is not
/// pressed (it went over its rate while the server was).
#[derive(Debug, Clone, Copy)]
struct SourceBucket {
    bucket: Bucket,
    limited: bool,
}

/// What charging a source's bucket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    /// Within its rate (or no limit applies): go on.
    Passed,
    /// Over its rate while its limit applies: refuse.
    Refused,
}

impl SourceBucket {
    fn full(now: Instant, burst: f64) -> Self {
        Self {
            bucket: Bucket {
                tokens: burst,
                last: now,
            },
            limited: false,
        }
    }

    /// Refills, and when its limit applies (`pressed`, or the source is limited) charges one
    /// token or refuses — and a source refused becomes limited until its bucket is full again.
    /// Returns the outcome and the change in "limited" (+1 became limited, −1 released, 0).
    fn charge(&mut self, now: Instant, rate: f64, burst: f64, pressed: bool) -> (Charge, i64) {
        self.bucket.refill(now, rate, burst);
        let mut change = 0;
        if self.limited && self.bucket.tokens >= burst {
            // Stayed within its rate for a whole burst's worth: released.
            self.limited = false;
            change = -1;
        }
        if !pressed && !self.limited {
            return (Charge::Passed, change);
        }
        if self.bucket.tokens < 1.0 {
            if !self.limited {
                self.limited = true;
                change += 1;
            }
            return (Charge::Refused, change);
        }
        self.bucket.tokens -= 1.0;
        (Charge::Passed, change)
    }
}

/// Why an initiation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source exceeded its rate (or the source table is full).
    RateLimited,
    /// The server's handshake budget is spent.
    UnderLoad,
}

/// Why a PROBE was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRefusal {
    /// The global PROBE budget is spent.
    OverBudget,
    /// This source prefix exceeded its rate while its limit applies.
    RateLimited,
}

/// Buckets in the fixed per-source PROBE array (about 128 KiB).
pub const PROBE_SOURCE_SLOTS: usize = 4096;

/// The key of a source: its IPv4 address, or its IPv6 /64 (an IPv4-mapped IPv6 address is its
/// IPv4 address).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(Ipv6Addr::from(o))
            }
        },
    }
}

/// No entry (the end of the recency list).
const NIL: u32 = u32::MAX;

/// One tracked INIT source: its bucket and its place in the recency list.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    key: IpAddr,
    source: SourceBucket,
    /// Less recently used neighbour.
    older: u32,
    /// More recently used neighbour.
    newer: u32,
}

/// The per-source INIT table: a map to slots of a slab threaded on a doubly linked list from the
/// least to the most recently used. Every operation is O(1): a lookup touches one entry, a new
/// source looks at the least recently used entry only (if that one cannot be forgotten, none
/// can: every other was used since).
#[derive(Debug, Default)]
struct SourceTable {
    index: HashMap<IpAddr, u32>,
    slots: Vec<Tracked>,
    free: Vec<u32>,
    /// Least recently used.
    oldest: u32,
    /// Most recently used.
    newest: u32,
    /// Entries looked at to find one to forget (a work counter, for tests).
    visits: u64,
}

impl SourceTable {
    fn new() -> Self {
        Self {
            oldest: NIL,
            newest: NIL,
            ..Self::default()
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn unlink(&mut self, i: u32) {
        let Tracked { older, newer, .. } = self.slots[i as usize];
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
    }

    fn push_newest(&mut self, i: u32) {
        self.slots[i as usize].older = self.newest;
        self.slots[i as usize].newer = NIL;
        match self.newest {
            NIL => self.oldest = i,
            n => self.slots[n as usize].newer = i,
        }
        self.newest = i;
    }

    /// The entry of `key`, made the most recently used.
    fn touch(&mut self, key: &IpAddr) -> Option<&mut SourceBucket> {
        let i = *self.index.get(key)?;
        if self.newest != i {
            self.unlink(i);
            self.push_newest(i);
        }
        Some(&mut self.slots[i as usize].source)
    }

    /// Forgets the least recently used entry if it has been idle for `idle`; whether it did.
    fn forget_oldest(&mut self, now: Instant, idle: Duration) -> bool {
        if self.oldest == NIL {
            return false;
        }
        self.visits += 1;
        let i = self.oldest;
        let t = self.slots[i as usize];
        if now.saturating_duration_since(t.source.bucket.last) < idle {
            return false;
        }
        self.unlink(i);
        self.index.remove(&t.key);
        self.free.push(i);
        true
    }

    /// Adds `key` (not present) as the most recently used entry.
    fn insert(&mut self, key: IpAddr, source: SourceBucket) -> &mut SourceBucket {
        let entry = Tracked {
            key,
            source,
            older: NIL,
            newer: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = entry;
                i
            }
            None => {
                self.slots.push(entry);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.push_newest(i);
        &mut self.slots[i as usize].source
    }
}

/// The admission state: a bounded per-source INIT table, a fixed per-source PROBE array, two
/// global budgets and whether the server is pressed.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    sources: SourceTable,
    global: Bucket,
    probes: Bucket,
    probe_sources: Vec<SourceBucket>,
    /// PROBE slots limited now (while any is, PROBEs are looked up even when not pressed).
    probe_limited: u64,
    /// Secret salt of the PROBE array's hash, so that nobody can aim collisions at a victim.
    salt: u64,
    /// The runtime reports datagrams waiting beyond what it reads in one wake-up while sessions
    /// are open: PROBEs compete with sessions for the CPU.
    backlog: bool,
    /// Pressed until then: the last time a budget was below half or a backlog was reported,
    /// plus `pressed_quiet`.
    pressed_until: Option<Instant>,
}

impl Admission {
    /// Starts with full buckets; `salt` (random) keys the per-source PROBE array.
    pub fn new(now: Instant, config: AdmissionConfig, salt: u64) -> Self {
        let global = Bucket {
            tokens: f64::from(config.handshakes_per_sec),
            last: now,
        };
        let probes = Bucket {
            tokens: f64::from(config.probes_per_sec),
            last: now,
        };
        let burst = f64::from(config.probes_per_source_burst.max(1));
        let probe_sources = vec![SourceBucket::full(now, burst); PROBE_SOURCE_SLOTS];
        Self {
            config,
            sources: SourceTable::new(),
            global,
            probes,
            probe_sources,
            probe_limited: 0,
            salt,
            backlog: false,
            pressed_until: None,
        }
    }

    /// Sets whether datagrams wait beyond one wake-up's reading while sessions are open (see
    /// [`Admission::pressed`]).
    pub fn set_backlog(&mut self, now: Instant, backlog: bool) {
        self.backlog = backlog;
        if backlog {
            self.pressed_until = Some(now + self.config.pressed_quiet);
        }
    }

    /// Whether the server is pressed: either global budget is below half, or the runtime
    /// reports a backlog of datagrams while sessions are open — now or within the last
    /// `pressed_quiet`. Per-source limits apply then (and to sources still limited), so a
    /// server with nothing but PROBEs to answer answers all it can.
    pub fn pressed(&mut self, now: Instant) -> bool {
        let hs = f64::from(self.config.handshakes_per_sec);
        self.global.refill(now, hs, hs);
        let pr = f64::from(self.config.probes_per_sec);
        self.probes.refill(now, pr, pr);
        if self.backlog || self.global.tokens < hs / 2.0 || self.probes.tokens < pr / 2.0 {
            self.pressed_until = Some(now + self.config.pressed_quiet);
        }
        self.pressed_until.is_some_and(|until| now < until)
    }

    /// Charges one PROBE from `ip`: the global PROBE budget, and while its limit applies (the
    /// server pressed, or the prefix limited), the source prefix's bucket.
    pub fn admit_probe(&mut self, now: Instant, ip: IpAddr) -> Result<(), ProbeRefusal> {
        let pressed = self.pressed(now);
        if self.probes.tokens < 1.0 {
            return Err(ProbeRefusal::OverBudget);
        }
        if pressed || self.probe_limited > 0 {
            let rate = f64::from(self.config.probes_per_source_per_sec);
            let burst = f64::from(self.config.probes_per_source_burst.max(1));
            let slot = self.probe_slot(ip);
            let (charge, change) = self.probe_sources[slot].charge(now, rate, burst, pressed);
            self.probe_limited = self.probe_limited.saturating_add_signed(change);
            if charge == Charge::Refused {
                return Err(ProbeRefusal::RateLimited);
            }
        }
        self.probes.tokens -= 1.0;
        Ok(())
    }

    /// The PROBE array slot of `ip`'s prefix.
    fn probe_slot(&self, ip: IpAddr) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.salt.hash(&mut h);
        source_key(ip).hash(&mut h);
        (h.finish() % PROBE_SOURCE_SLOTS as u64) as usize
    }

    /// Whether datagrams from this source port are dropped unread.
    pub fn is_reflector_port(&self, port: u16) -> bool {
        self.config.reflector_ports.contains(&port)
    }

    /// Whether the global handshake budget is spent (offers are withheld meanwhile).
    pub fn under_load(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.config.handshakes_per_sec);
        self.global.refill(now, rate, rate);
        self.global.tokens < 1.0
    }

    /// How long a source's INIT bucket takes to refill completely: an entry idle this long is
    /// indistinguishable from a new source.
    fn init_full_after(&self) -> Duration {
        let rate = f64::from(self.config.inits_per_source_per_sec);
        let burst = f64::from(self.config.inits_per_source_burst.max(1));
        Duration::from_secs_f64(if rate > 0.0 { burst / rate } else { 3600.0 })
    }

    /// Charges one INIT whose cookie verified to its source prefix while the prefix's limit
    /// applies (PROTOCOL.md §7.3 step 6a). While the server is pressed an untracked prefix gets
    /// an entry (full), forgetting the least recently used one if that one is idle; when none
    /// can be forgotten the INIT is refused as rate-limited. O(1) either way.
    pub fn admit_source(&mut self, now: Instant, ip: IpAddr) -> Result<(), Refusal> {
        let pressed = self.pressed(now);
        let key = source_key(ip);
        let rate = f64::from(self.config.inits_per_source_per_sec);
        let burst = f64::from(self.config.inits_per_source_burst.max(1));
        let source = match self.sources.touch(&key) {
            Some(s) => s,
            None if !pressed => return Ok(()),
            None => {
                if self.sources.len() >= self.config.max_tracked_sources {
                    let idle = self.init_full_after();
                    if !self.sources.forget_oldest(now, idle) {
                        return Err(Refusal::RateLimited);
                    }
                }
                self.sources.insert(key, SourceBucket::full(now, burst))
            }
        };
        match source.charge(now, rate, burst, pressed).0 {
            Charge::Passed => Ok(()),
            Charge::Refused => Err(Refusal::RateLimited),
        }
    }

    /// Charges one Noise handshake to the global budget (PROTOCOL.md §7.3 step 10), or refuses
    /// it when the budget is spent (under-load mode).
    pub fn admit_handshake(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.under_load(now) {
            return Err(Refusal::UnderLoad);
        }
        self.global.tokens -= 1.0;
        Ok(())
    }

    /// Forgets sources whose INIT bucket has refilled completely (they are indistinguishable from
    /// new), least recently used first: O(1) per entry forgotten. Releases PROBE slots that
    /// have refilled completely, so that PROBEs skip the array again once no source is limited.
    pub fn sweep(&mut self, now: Instant) {
        let idle = self.init_full_after();
        while self.sources.forget_oldest(now, idle) {}
        if self.probe_limited > 0 {
            let rate = f64::from(self.config.probes_per_source_per_sec);
            let burst = f64::from(self.config.probes_per_source_burst.max(1));
            for slot in &mut self.probe_sources {
                if slot.limited {
                    slot.bucket.refill(now, rate, burst);
                    if slot.bucket.tokens >= burst {
                        slot.limited = false;
                        self.probe_limited -= 1;
                    }
                }
            }
        }
    }

    /// Sources currently tracked.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Entries of the source table looked at to find one to forget, since the start: one per
    /// new source at a full table, one per entry a sweep forgets (plus one), never a scan.
    pub fn source_visits(&self) -> u64 {
        self.sources.visits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One INIT through both of its admission steps, as the acceptor runs them.
    fn admit(a: &mut Admission, now: Instant, ip: IpAddr) -> Result<(), Refusal> {
        a.admit_source(now, ip)?;
        a.admit_handshake(now)
    }

    #[test]
    fn r8_per_source_limit_and_global_budget() {
        let t0 = Instant::now();
        let cfg = AdmissionConfig {
            inits_per_source_per_sec: 2,
            inits_per_source_burst: 3,
            handshakes_per_sec: 10,
            ..Default::default()
        };
        let mut a = Admission::new(t0, cfg, 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // Not pressed (5 or more of 10 tokens left): no per-source limit.
        for _ in 0..6 {
            assert!(!a.pressed(t0));
            assert_eq!(admit(&mut a, t0, ip), Ok(()));
        }
        // Pressed now (4 left): the source's bucket (burst 3) applies.
        assert!(a.pressed(t0));
        for _ in 0..3 {
            assert_eq!(admit(&mut a, t0, ip), Ok(()));
        }
        assert_eq!(admit(&mut a, t0, ip), Err(Refusal::RateLimited));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(admit(&mut a, t0, other), Ok(()));
        // The budget is spent: refused as under load.
        let third: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(admit(&mut a, t0, third), Err(Refusal::UnderLoad));
        assert!(a.under_load(t0));
        // 400 ms refill 4 handshakes: still pressed, so the source limit holds.
        let t1 = t0 + Duration::from_millis(400);
        assert!(!a.under_load(t1));
        assert_eq!(admit(&mut a, t1, ip), Err(Refusal::RateLimited));
        assert_eq!(admit(&mut a, t1, other), Ok(()));
        assert!(!a.under_load(t0 + Duration::from_secs(2)));
    }

    /// An admission state pressed from the start: 10 of 100 handshake tokens left.
    fn pressed(max_tracked_sources: usize, burst: u32) -> Admission {
        let cfg = AdmissionConfig {
            inits_per_source_per_sec: 1,
            inits_per_source_burst: burst,
            handshakes_per_sec: 100,
            max_tracked_sources,
            ..Default::default()
        };
        let mut a = Admission::new(Instant::now(), cfg, 1);
        a.global.tokens = 10.0;
        a
    }

    #[test]
    fn r8_ipv6_sources_are_limited_by_their_64() {
        let mut a = pressed(100, 2);
        let t0 = a.global.last;
        assert!(a.pressed(t0));
        let same64 = ["2001:db8::2", "2001:db8::ffff:1", "2001:db8:0:0:8000::9"];
        assert_eq!(admit(&mut a, t0, same64[0].parse().unwrap()), Ok(()));
        assert_eq!(admit(&mut a, t0, same64[1].parse().unwrap()), Ok(()));
        assert_eq!(
            admit(&mut a, t0, same64[2].parse().unwrap()),
            Err(Refusal::RateLimited),
            "three addresses of one /64 share one bucket"
        );
        assert_eq!(
            admit(&mut a, t0, "2001:db8:0:1::2".parse().unwrap()),
            Ok(())
        );
        assert_eq!(
            source_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn r8_probe_budget_and_per_source_probe_limit_while_pressed() {
        let t0 = Instant::now();
        let cfg = AdmissionConfig {
            probes_per_sec: 100,
            probes_per_source_per_sec: 5,
            probes_per_source_burst: 10,
            ..Default::default()
        };
        let mut a = Admission::new(t0, cfg, 7);
        let busy: IpAddr = "198.51.100.1".parse().unwrap();
        // Not pressed (50 or more of 100 left): one source may probe freely.
        for _ in 0..51 {
            assert_eq!(a.admit_probe(t0, busy), Ok(()));
        }
        // Pressed: the source's bucket (burst 10) applies.
        assert!(a.pressed(t0));
        for _ in 0..10 {
            assert_eq!(a.admit_probe(t0, busy), Ok(()));
        }
        assert_eq!(a.admit_probe(t0, busy), Err(ProbeRefusal::RateLimited));
        // Others still get in until the global budget is spent (one that happened to share
        // the busy source's bucket would be refused without being charged).
        let ok = (0..100u8)
            .filter(|i| a.admit_probe(t0, IpAddr::from([203, 0, 113, *i])).is_ok())
            .count();
        assert_eq!(ok, 100 - 61);
        assert_eq!(
            a.admit_probe(t0, "203.0.113.200".parse().unwrap()),
            Err(ProbeRefusal::OverBudget)
        );
        // Two seconds later the budget is full again and the server no longer pressed; the busy
        // source, quiet for two seconds, has its whole bucket back: no per-source limit.
        let t1 = t0 + Duration::from_secs(2);
        assert!(!a.pressed(t1));
        for _ in 0..20 {
            assert_eq!(a.admit_probe(t1, busy), Ok(()));
        }
    }

    #[test]
    fn r8_source_table_is_bounded() {
        let mut a = pressed(2, 40);
        let t0 = a.global.last;
        for i in 1..=2u8 {
            assert_eq!(admit(&mut a, t0, IpAddr::from([10, 0, 0, i])), Ok(()));
        }
        assert_eq!(
            admit(&mut a, t0, IpAddr::from([10, 0, 0, 3])),
            Err(Refusal::RateLimited)
        );
        assert_eq!(a.tracked_sources(), 2);
        // Later the budget is full (not pressed): admitted without an entry; entries idle for
        // burst / rate are swept.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(admit(&mut a, later, IpAddr::from([10, 0, 0, 3])), Ok(()));
        a.sweep(later);
        assert_eq!(a.tracked_sources(), 0);
    }

    #[test]
    fn a5_pressed_holds_for_a_quiet_period_after_the_last_pressing_moment() {
        let t0 = Instant::now();
        let cfg = AdmissionConfig {
            handshakes_per_sec: 100,
            ..Default::default()
        };
        let mut a = Admission::new(t0, cfg, 1);
        let ms = Duration::from_millis;
        assert!(!a.pressed(t0));
        // A backlog presses; it clears at once, the server stays pressed for the quiet period.
        a.set_backlog(t0, true);
        a.set_backlog(t0 + ms(1), false);
        assert!(a.pressed(t0 + ms(2)));
        assert!(a.pressed(t0 + ms(999)));
        assert!(!a.pressed(t0 + ms(1_001)));
        // The budget below half presses; refilled above half 10 ms later, the server stays
        // pressed a whole quiet second from the last moment it was below half.
        let t1 = t0 + ms(2_000);
        a.global.refill(t1, 100.0, 100.0);
        a.global.tokens = 49.0;
        assert!(a.pressed(t1));
        assert!(
            a.pressed(t1 + ms(10)),
            "51 tokens: above half, still pressed"
        );
        assert!(a.pressed(t1 + ms(999)));
        assert!(!a.pressed(t1 + ms(1_001)));
    }

    #[test]
    fn a5_a_source_refused_while_pressed_stays_limited_until_its_bucket_refills() {
        let t0 = Instant::now();
        let cfg = AdmissionConfig {
            probes_per_sec: 1_000,
            probes_per_source_per_sec: 10,
            probes_per_source_burst: 20,
            inits_per_source_per_sec: 10,
            inits_per_source_burst: 20,
            handshakes_per_sec: 1_000,
            pressed_quiet: Duration::from_millis(100),
            ..Default::default()
        };
        let mut a = Admission::new(t0, cfg, 3);
        let flooder: IpAddr = "198.51.100.7".parse().unwrap();
        let honest: IpAddr = "203.0.113.9".parse().unwrap();
        // A backlog presses the server: the flooder gets its burst of each, then nothing.
        a.set_backlog(t0, true);
        a.set_backlog(t0, false);
        let probes = (0..100)
            .filter(|_| a.admit_probe(t0, flooder).is_ok())
            .count();
        let inits = (0..100)
            .filter(|_| a.admit_source(t0, flooder).is_ok())
            .count();
        assert_eq!((probes, inits), (20, 20));
        // The server is no longer pressed, but the flooder, still over its rate, stays held to
        // it: 10 a second, second after second.
        let mut t = t0;
        for _ in 0..5 {
            t += Duration::from_secs(1);
            assert!(!a.pressed(t));
            let probes = (0..100)
                .filter(|_| a.admit_probe(t, flooder).is_ok())
                .count();
            let inits = (0..100)
                .filter(|_| a.admit_source(t, flooder).is_ok())
                .count();
            assert_eq!((probes, inits), (10, 10), "at {:?}", t - t0);
        }
        // Everyone else is not limited at all while the server is not pressed.
        assert_eq!(
            (0..100)
                .filter(|_| a.admit_probe(t, honest).is_ok())
                .count(),
            100
        );
        // Quiet for burst / rate (2 s): its bucket is full, the limit lifts.
        let later = t + Duration::from_secs(2);
        assert_eq!(
            (0..100)
                .filter(|_| a.admit_probe(later, flooder).is_ok())
                .count(),
            100
        );
        assert_eq!(
            (0..100)
                .filter(|_| a.admit_source(later, flooder).is_ok())
                .count(),
            100
        );
    }

    #[test]
    fn a5_a_full_source_table_costs_one_visit_per_new_source() {
        // 65,536 sources fill the table while the server is pressed; a new source then looks at
        // the least recently used entry only, whether it can be forgotten or not.
        let t0 = Instant::now();
        let cfg = AdmissionConfig {
            inits_per_source_per_sec: 1_000,
            inits_per_source_burst: 2_000,
            handshakes_per_sec: 100,
            max_tracked_sources: 65_536,
            ..Default::default()
        };
        let mut a = Admission::new(t0, cfg, 1);
        a.set_backlog(t0, true);
        let ip = |i: u32| IpAddr::from(i.to_be_bytes());
        let ms = Duration::from_millis;
        for i in 0..65_536u32 {
            // Spread over 1 s: source i was last seen at i × 15 µs.
            let t = t0 + Duration::from_micros(u64::from(i) * 15);
            assert_eq!(a.admit_source(t, ip(0x0a00_0000 + i)), Ok(()));
        }
        assert_eq!((a.tracked_sources(), a.source_visits()), (65_536, 0));
        // Source 0 comes back (it becomes the most recently used).
        let t1 = t0 + ms(1_000);
        a.set_backlog(t1, true);
        assert_eq!(a.admit_source(t1, ip(0x0a00_0000)), Ok(()));
        // 1.5 s after the first: nobody has been idle for 2 s (burst / rate): new sources are
        // refused, one visit each.
        let t2 = t0 + ms(1_500);
        a.set_backlog(t2, true);
        for n in 0..1_000u32 {
            assert_eq!(
                a.admit_source(t2, ip(0x0b00_0000 + n)),
                Err(Refusal::RateLimited)
            );
        }
        assert_eq!(a.source_visits(), 1_000);
        // 2.5 s after the first: sources 1.. idle since before t0 + 0.5 s can be forgotten; a
        // new source replaces the least recently used one (source 1), one visit each.
        let t3 = t0 + ms(2_500);
        a.set_backlog(t3, true);
        for n in 0..1_000u32 {
            assert_eq!(a.admit_source(t3, ip(0x0c00_0000 + n)), Ok(()));
        }
        assert_eq!(a.source_visits(), 2_000);
        assert_eq!(a.tracked_sources(), 65_536);
        // Source 0 (used at t1) was not forgotten: still tracked, its bucket charged.
        assert!(a.sources.index.contains_key(&ip(0x0a00_0000)));
        assert!(!a.sources.index.contains_key(&ip(0x0a00_0001)));
        // A sweep at t0 + 2.7 s forgets exactly those idle for 2 s (seen before t0 + 0.7 s):
        // one visit per entry forgotten, plus one for the first it keeps.
        let before = a.source_visits();
        let tracked = a.tracked_sources();
        a.sweep(t0 + ms(2_700));
        let forgotten = (tracked - a.tracked_sources()) as u64;
        assert!(forgotten > 10_000, "{forgotten}");
        assert_eq!(a.source_visits() - before, forgotten + 1);
    }
}
