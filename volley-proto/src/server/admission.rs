//! Admission control: reflector source ports; a global budget of PROBEs and one of Noise
//! handshakes (whose exhaustion is the server's under-load mode); and per-source limits on both,
//! which engage only while the server is *pressed* — either budget below half — so that an idle
//! server never throttles one busy honest client (WireGuard's rule). Sources are keyed by
//! prefix: an IPv4 address, or the /64 of an IPv6 address (anyone holding a /64 holds 2^64
//! addresses).
//!
//! Entries in the per-source INIT table are created only for sources whose cookie already
//! verified (the address answered an OFFER), and the table is bounded. PROBEs come from
//! addresses nobody has proven, so their per-source limit lives in a fixed array of buckets
//! indexed by a salted hash of the prefix, allocated once: a probe changes a counter, it never
//! creates an entry.

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

/// Admission settings.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Session initiations per second allowed from one source prefix while the server is
    /// pressed. Default 1,000: a proxy host opening flows for many applications stays within
    /// it, and one abusive prefix gets at most ~5 % of a core of handshakes.
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
    /// PROBEs per second from one source prefix while the server is pressed. Default 1,000.
    pub probes_per_source_per_sec: u32,
    /// Burst above that rate. Default 2,000.
    pub probes_per_source_burst: u32,
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
    /// The server is pressed and this source prefix exceeded its rate.
    RateLimited,
}

/// Buckets in the fixed per-source PROBE array (about 100 KiB).
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

/// The admission state: a bounded per-source INIT table, a fixed per-source PROBE array and two
/// global budgets.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
    probes: Bucket,
    probe_sources: Vec<Bucket>,
    /// Secret salt of the PROBE array's hash, so that nobody can aim collisions at a victim.
    salt: u64,
    /// The runtime reports datagrams waiting beyond what it reads in one wake-up while sessions
    /// are open: PROBEs compete with sessions for the CPU.
    backlog: bool,
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
        let probe_sources = vec![
            Bucket {
                tokens: f64::from(config.probes_per_source_burst.max(1)),
                last: now,
            };
            PROBE_SOURCE_SLOTS
        ];
        Self {
            config,
            sources: HashMap::new(),
            global,
            probes,
            probe_sources,
            salt,
            backlog: false,
        }
    }

    /// Sets whether datagrams wait beyond one wake-up's reading while sessions are open (see
    /// [`Admission::pressed`]).
    pub fn set_backlog(&mut self, backlog: bool) {
        self.backlog = backlog;
    }

    /// Whether the server is pressed: either global budget is below half, or the runtime
    /// reports a backlog of datagrams while sessions are open. Per-source limits apply only
    /// then, so a server with nothing but PROBEs to answer answers all it can.
    pub fn pressed(&mut self, now: Instant) -> bool {
        let hs = f64::from(self.config.handshakes_per_sec);
        self.global.refill(now, hs, hs);
        let pr = f64::from(self.config.probes_per_sec);
        self.probes.refill(now, pr, pr);
        self.backlog || self.global.tokens < hs / 2.0 || self.probes.tokens < pr / 2.0
    }

    /// Charges one PROBE from `ip`: the global PROBE budget, and while the server is pressed,
    /// the source prefix's bucket.
    pub fn admit_probe(&mut self, now: Instant, ip: IpAddr) -> Result<(), ProbeRefusal> {
        let pressed = self.pressed(now);
        if self.probes.tokens < 1.0 {
            return Err(ProbeRefusal::OverBudget);
        }
        if pressed {
            let rate = f64::from(self.config.probes_per_source_per_sec);
            let burst = f64::from(self.config.probes_per_source_burst.max(1));
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.salt.hash(&mut h);
            source_key(ip).hash(&mut h);
            let slot = (h.finish() % PROBE_SOURCE_SLOTS as u64) as usize;
            let bucket = &mut self.probe_sources[slot];
            bucket.refill(now, rate, burst);
            if bucket.tokens < 1.0 {
                return Err(ProbeRefusal::RateLimited);
            }
            bucket.tokens -= 1.0;
        }
        self.probes.tokens -= 1.0;
        Ok(())
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

    /// Charges one initiation from `ip`: while the server is pressed, the source prefix's
    /// bucket first; then the global handshake budget. Both are charged only when both pass.
    pub fn admit(&mut self, now: Instant, ip: IpAddr) -> Result<(), Refusal> {
        let pressed = self.pressed(now);
        let mut bucket = None;
        if pressed {
            let ip = source_key(ip);
            let rate = f64::from(self.config.inits_per_source_per_sec);
            let burst = f64::from(self.config.inits_per_source_burst.max(1));
            if !self.sources.contains_key(&ip)
                && self.sources.len() >= self.config.max_tracked_sources
            {
                self.sweep(now);
                if self.sources.len() >= self.config.max_tracked_sources {
                    return Err(Refusal::RateLimited);
                }
            }
            let b = self.sources.entry(ip).or_insert(Bucket {
                tokens: burst,
                last: now,
            });
            b.refill(now, rate, burst);
            if b.tokens < 1.0 {
                return Err(Refusal::RateLimited);
            }
            bucket = Some(ip);
        }
        if self.global.tokens < 1.0 {
            return Err(Refusal::UnderLoad);
        }
        if let Some(b) = bucket.and_then(|ip| self.sources.get_mut(&ip)) {
            b.tokens -= 1.0;
        }
        self.global.tokens -= 1.0;
        Ok(())
    }

    /// Forgets sources whose bucket has refilled completely (they are indistinguishable from new).
    pub fn sweep(&mut self, now: Instant) {
        let rate = f64::from(self.config.inits_per_source_per_sec);
        let burst = f64::from(self.config.inits_per_source_burst.max(1));
        let full_after = Duration::from_secs_f64(if rate > 0.0 { burst / rate } else { 3600.0 });
        self.sources
            .retain(|_, b| now.saturating_duration_since(b.last) < full_after);
    }

    /// Sources currently tracked.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(a.admit(t0, ip), Ok(()));
        }
        // Pressed now (4 left): the source's bucket (burst 3) applies.
        assert!(a.pressed(t0));
        for _ in 0..3 {
            assert_eq!(a.admit(t0, ip), Ok(()));
        }
        assert_eq!(a.admit(t0, ip), Err(Refusal::RateLimited));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(a.admit(t0, other), Ok(()));
        // The budget is spent: refused as under load, and nothing is charged.
        let third: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(a.admit(t0, third), Err(Refusal::UnderLoad));
        assert!(a.under_load(t0));
        // 400 ms refill 4 handshakes: still pressed, so the source limit holds.
        let t1 = t0 + Duration::from_millis(400);
        assert!(!a.under_load(t1));
        assert_eq!(a.admit(t1, ip), Err(Refusal::RateLimited));
        assert_eq!(a.admit(t1, other), Ok(()));
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
        assert_eq!(a.admit(t0, same64[0].parse().unwrap()), Ok(()));
        assert_eq!(a.admit(t0, same64[1].parse().unwrap()), Ok(()));
        assert_eq!(
            a.admit(t0, same64[2].parse().unwrap()),
            Err(Refusal::RateLimited),
            "three addresses of one /64 share one bucket"
        );
        assert_eq!(a.admit(t0, "2001:db8:0:1::2".parse().unwrap()), Ok(()));
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
        // A second later the budget is full again: not pressed, no per-source limit.
        let t1 = t0 + Duration::from_secs(1);
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
            assert_eq!(a.admit(t0, IpAddr::from([10, 0, 0, i])), Ok(()));
        }
        assert_eq!(
            a.admit(t0, IpAddr::from([10, 0, 0, 3])),
            Err(Refusal::RateLimited)
        );
        assert_eq!(a.tracked_sources(), 2);
        // Later the budget is full (not pressed): admitted without an entry; entries idle for
        // burst / rate are swept.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(a.admit(later, IpAddr::from([10, 0, 0, 3])), Ok(()));
        a.sweep(later);
        assert_eq!(a.tracked_sources(), 0);
    }
}
