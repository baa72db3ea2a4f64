//! Admission control for session initiations (R8): reflector source ports, a per-source token
//! bucket, and a global handshake budget whose exhaustion is the server's under-load mode.
//!
//! Entries in the per-source table are created only for sources whose cookie already verified
//! (the address answered an OFFER), and the table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
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
    /// Session initiations per second allowed from one source IP. Default 20.
    pub inits_per_source_per_sec: u32,
    /// Burst allowed above that rate. Default 40.
    pub inits_per_source_burst: u32,
    /// Most source IPs tracked at once; beyond it new sources are refused until entries go idle.
    /// Default 65,536.
    pub max_tracked_sources: usize,
    /// Noise handshakes per second the server performs before it enters under-load mode, where
    /// it withholds offers and refuses initiations. Default 5,000 (a handshake costs ~150 µs).
    pub handshakes_per_sec: u32,
    /// Source ports dropped unread. Default [`DEFAULT_REFLECTOR_PORTS`].
    pub reflector_ports: Vec<u16>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            inits_per_source_per_sec: 20,
            inits_per_source_burst: 40,
            max_tracked_sources: 65_536,
            handshakes_per_sec: 5_000,
            reflector_ports: DEFAULT_REFLECTOR_PORTS.to_vec(),
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

/// The admission state: a bounded per-source table and one global bucket.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

impl Admission {
    /// Starts with full buckets.
    pub fn new(now: Instant, config: AdmissionConfig) -> Self {
        let global = Bucket {
            tokens: f64::from(config.handshakes_per_sec),
            last: now,
        };
        Self {
            config,
            sources: HashMap::new(),
            global,
        }
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

    /// Charges one initiation from `ip`: per-source bucket first, then the global budget.
    pub fn admit(&mut self, now: Instant, ip: IpAddr) -> Result<(), Refusal> {
        let rate = f64::from(self.config.inits_per_source_per_sec);
        let burst = f64::from(self.config.inits_per_source_burst.max(1));
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.config.max_tracked_sources
        {
            self.sweep(now);
            if self.sources.len() >= self.config.max_tracked_sources {
                return Err(Refusal::RateLimited);
            }
        }
        let under_load = self.under_load(now);
        let bucket = self.sources.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        bucket.refill(now, rate, burst);
        if bucket.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        if under_load {
            return Err(Refusal::UnderLoad);
        }
        bucket.tokens -= 1.0;
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
            handshakes_per_sec: 4,
            ..Default::default()
        };
        let mut a = Admission::new(t0, cfg);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(a.admit(t0, ip), Ok(()));
        }
        assert_eq!(a.admit(t0, ip), Err(Refusal::RateLimited));
        assert_eq!(a.admit(t0 + Duration::from_millis(500), ip), Ok(()));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        // Global: 4 - 3 + 2 (refill) - 1 = 2 left; two more spend it.
        assert_eq!(a.admit(t0 + Duration::from_millis(500), other), Ok(()));
        assert_eq!(a.admit(t0 + Duration::from_millis(500), other), Ok(()));
        assert_eq!(
            a.admit(t0 + Duration::from_millis(500), other),
            Err(Refusal::UnderLoad)
        );
        assert!(a.under_load(t0 + Duration::from_millis(500)));
        assert!(!a.under_load(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn r8_source_table_is_bounded() {
        let t0 = Instant::now();
        let cfg = AdmissionConfig {
            max_tracked_sources: 2,
            ..Default::default()
        };
        let mut a = Admission::new(t0, cfg);
        for i in 1..=2u8 {
            assert_eq!(a.admit(t0, IpAddr::from([10, 0, 0, i])), Ok(()));
        }
        assert_eq!(
            a.admit(t0, IpAddr::from([10, 0, 0, 3])),
            Err(Refusal::RateLimited)
        );
        assert_eq!(a.tracked_sources(), 2);
        assert_eq!(
            a.admit(t0 + Duration::from_secs(10), IpAddr::from([10, 0, 0, 3])),
            Ok(())
        );
    }
}
