//! Where a connection races: the pool, the servers REDIRECTs added to it, the targets of each
//! race (ejected servers left out, a random order, the fan-out), and after a loss whether to race
//! again, back off first, or give up. A [`Failover`] decides; the connection carries the decision
//! out.

use std::net::SocketAddr;
use std::time::Instant;

use rand_core::RngCore;

use super::super::ClientConfig;
use super::super::pool::PoolState;
use crate::util::canonical;

/// What a connection does after losing its server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Race these servers now.
    Race(Vec<SocketAddr>),
    /// Refused with nowhere new to go: wait until `until`, then race `targets`.
    Backoff {
        until: Instant,
        targets: Vec<SocketAddr>,
    },
    /// No failover left, or no other server: the connection fails.
    GiveUp,
}

/// A connection's pool and its failover bookkeeping.
#[derive(Debug)]
pub(super) struct Failover {
    /// The servers the connection races: the pool it was given (canonical, each once), then the
    /// servers REDIRECTs added.
    pool: Vec<SocketAddr>,
    /// Servers REDIRECTs just added, probed first in the next race.
    redirected: Vec<SocketAddr>,
    /// How many servers REDIRECTs added over the connection's life (capped).
    redirect_added: usize,
    /// Failovers so far (the race after a loss or a refusal).
    attempts: u32,
    /// The server the current failover left, until a session is established elsewhere.
    from: Option<SocketAddr>,
    /// Refusals in a row (reset by an established session), for the back-off.
    refusals: u32,
}

impl Failover {
    /// Bookkeeping for a connection racing `pool`, each address once in canonical form.
    pub(super) fn new(pool: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut f = Self {
            pool: Vec::new(),
            redirected: Vec::new(),
            redirect_added: 0,
            attempts: 0,
            from: None,
            refusals: 0,
        };
        f.extend(pool);
        f
    }

    /// Adds servers to the pool (canonical, skipping those it has).
    pub(super) fn extend(&mut self, servers: impl IntoIterator<Item = SocketAddr>) {
        for addr in servers.into_iter().map(canonical) {
            if !self.pool.contains(&addr) {
                self.pool.push(addr);
            }
        }
    }

    /// The servers the connection races.
    pub(super) fn pool(&self) -> &[SocketAddr] {
        &self.pool
    }

    /// Failovers so far (0 during the first race).
    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The servers the next race probes, in the order the probes leave, out of `candidates`,
    /// and how many were left out for being ejected. Ejected servers sit races out, unless
    /// every candidate is ejected. The order is random: on a fast network the send order is a
    /// visible part of the answer time, and a fixed order would hand every race to the first
    /// server listed. With a fan-out of `d`, [`PoolState::choose_targets`] keeps `d` of the
    /// shuffle, near servers first. Servers a REDIRECT named since the last race go first (and
    /// are never cut by the fan-out), so the refusal's advice is followed.
    pub(super) fn targets(
        &mut self,
        now: Instant,
        candidates: Vec<SocketAddr>,
        pool: &PoolState,
        config: &ClientConfig,
        rng: &mut dyn RngCore,
    ) -> (Vec<SocketAddr>, usize) {
        let (mut targets, left_out) = pool.eligible(now, candidates);
        for i in (1..targets.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            targets.swap(i, j);
        }
        let redirected = std::mem::take(&mut self.redirected);
        targets.sort_by_key(|t| !redirected.contains(t));
        let first = redirected.iter().filter(|r| targets.contains(r)).count();
        if first > 0 {
            // The refusal's advice first, never cut; the fan-out applies to the rest only when
            // the advice leaves room.
            if let Some(d) = config.fanout {
                targets.truncate(d.max(1).max(first));
            }
            return (targets, left_out);
        }
        (
            pool.choose_targets(targets, config.fanout, config),
            left_out,
        )
    }

    /// A session is up: refusals no longer count, and the failover (if this was one) is over.
    /// Returns the server it failed over from.
    pub(super) fn established(&mut self) -> Option<SocketAddr> {
        self.refusals = 0;
        self.from.take()
    }

    /// Adds a REDIRECT's addresses to the pool: only usable unicast addresses of the pool's
    /// address family not known already, and no more than `max` over the connection's life. The
    /// client never probes an address it did not choose to add. Returns the addresses added
    /// and how many were ignored.
    pub(super) fn follow_redirect(
        &mut self,
        servers: impl Iterator<Item = SocketAddr>,
        max: usize,
    ) -> (Vec<SocketAddr>, u64) {
        let mut added = Vec::new();
        let mut ignored = 0;
        let v4_pool = self.pool.first().is_none_or(|a| a.is_ipv4());
        for addr in servers.map(canonical) {
            let ip = addr.ip();
            let usable = addr.port() != 0
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && addr.is_ipv4() == v4_pool
                && !matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
            if !usable || self.pool.contains(&addr) || self.redirect_added >= max {
                ignored += 1;
                continue;
            }
            self.redirect_added += 1;
            self.pool.push(addr);
            self.redirected.push(addr);
            added.push(addr);
        }
        (added, ignored)
    }

    /// `server` is lost (`refused`: it refused the session). Race the rest of the pool if
    /// failovers remain — after a jittered back-off when it refused and no REDIRECT named
    /// anywhere new — else give up.
    pub(super) fn after_loss(
        &mut self,
        now: Instant,
        server: SocketAddr,
        refused: bool,
        config: &ClientConfig,
        rng: &mut dyn RngCore,
    ) -> Next {
        let others: Vec<SocketAddr> = self.pool.iter().copied().filter(|a| *a != server).collect();
        if self.attempts >= config.max_failovers || others.is_empty() {
            return Next::GiveUp;
        }
        self.attempts += 1;
        self.from = Some(server);
        if !(refused && self.redirected.is_empty()) {
            return Next::Race(others);
        }
        // Refused with nowhere new to go: the pool is busy. Back off before racing again rather
        // than adding a race to the load at once.
        self.refusals = self.refusals.saturating_add(1);
        let base = config
            .refusal_backoff
            .saturating_mul(1 << (self.refusals - 1).min(16))
            .min(config.race.max_rto);
        let jitter = 0.5 + (rng.next_u32() as f64 / f64::from(u32::MAX));
        Next::Backoff {
            until: now + base.mul_f64(jitter),
            targets: others,
        }
    }

    /// Refusals in a row, for logs.
    pub(super) fn refusals(&self) -> u32 {
        self.refusals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Always the middle of the range: jitter factor 1.0.
    struct Half;

    impl RngCore for Half {
        fn next_u32(&mut self) -> u32 {
            u32::MAX / 2
        }
        fn next_u64(&mut self) -> u64 {
            u64::MAX / 2
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            dest.fill(0);
            Ok(())
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 4433))
    }

    #[test]
    fn l6_refusals_back_off_doubling_and_a_session_resets_them() {
        let mut config = ClientConfig::new(Vec::new());
        config.refusal_backoff = Duration::from_millis(10);
        let mut f = Failover::new([addr(1), addr(2)]);
        let now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..3 {
            match f.after_loss(now, addr(1), true, &config, &mut Half) {
                Next::Backoff { until, targets } => {
                    assert_eq!(targets, vec![addr(2)]);
                    waits.push((until - now).as_millis());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, vec![10, 20, 40]);
        assert_eq!(f.established(), Some(addr(1)));
        match f.after_loss(now, addr(1), true, &config, &mut Half) {
            Next::Backoff { until, .. } => assert_eq!((until - now).as_millis(), 10),
            other => panic!("{other:?}"),
        }
        // A loss that is not a refusal races at once.
        assert_eq!(
            f.after_loss(now, addr(2), false, &config, &mut Half),
            Next::Race(vec![addr(1)])
        );
    }

    #[test]
    fn r5_failovers_run_out_and_a_lone_server_gives_up() {
        let mut config = ClientConfig::new(Vec::new());
        config.max_failovers = 1;
        let now = Instant::now();
        let mut f = Failover::new([addr(1), addr(2), addr(1)]);
        assert_eq!(f.pool(), &[addr(1), addr(2)], "each server once");
        assert_eq!(
            f.after_loss(now, addr(1), false, &config, &mut Half),
            Next::Race(vec![addr(2)])
        );
        assert_eq!(
            f.after_loss(now, addr(2), false, &config, &mut Half),
            Next::GiveUp
        );
        let mut lone = Failover::new([addr(1)]);
        assert_eq!(
            lone.after_loss(now, addr(1), false, &config, &mut Half),
            Next::GiveUp
        );
    }

    #[test]
    fn r3_redirects_add_only_new_usable_servers_up_to_the_cap() {
        let mut f = Failover::new([addr(1)]);
        let offered = [
            addr(1),                                // known
            SocketAddr::from(([0, 0, 0, 0], 4433)), // unspecified
            SocketAddr::from(([192, 0, 2, 9], 0)),  // port 0
            "[2001:db8::1]:4433".parse().unwrap(),  // other family
            addr(2),
            addr(3),
            addr(4),
        ];
        let (added, ignored) = f.follow_redirect(offered.into_iter(), 2);
        assert_eq!(added, vec![addr(2), addr(3)]);
        assert_eq!(ignored, 5, "four unusable or known, one over the cap");
        assert_eq!(f.redirected, vec![addr(2), addr(3)]);
    }
}
