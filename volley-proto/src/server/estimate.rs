//! The speed-aware load signal: how long one more request would take at this server, from
//! what the server observes — its requests in flight, its parallel slots, and how fast it has
//! been completing requests.
//!
//! **The model.** A server with `c` slots (its configured capacity) serves up to `c` requests at
//! once, first come first served; the others wait. With `n` requests in flight and a mean service
//! time `S`, a new request finds a free slot when `n < c` and completes after `S`; otherwise it
//! waits for `n − c + 1` departures, which, with `c` slots each finishing at rate `1/S`, take
//! `(n − c + 1) × S / c` on average. So
//!
//! ```text
//! expected(n) = S × max(1, (n + 1) / c)
//! ```
//!
//! — the *shortest expected delay* (SED) rule's cost for a multi-slot server (Whitt 1986,
//! "Deciding which queue to join"; Selen, Adan, Kapodistria & van Leeuwaarden 2016 for SED(d)).
//! Without a capacity the server is taken to serve every request at once: `expected = S`.
//!
//! **Measuring `S`.** By Little's law applied to the service stage alone, the mean service time
//! is the mean number of requests *in service* divided by the completion rate. The server knows
//! both without any help from the application beyond its request count: requests in service are
//! `min(n, c)` at every instant, and completions are the decrements it is told about. Both are
//! integrated with an exponential forgetting window `τ` (default 1 s):
//!
//! ```text
//! B(t) = ∫ min(n(s), c) × e^{−(t−s)/τ} ds        K(t) = Σ_completions e^{−(t−tᵢ)/τ}
//! S = (B + S₀) / (K + 1)
//! ```
//!
//! where `S₀` is a prior (default 10 ms) that counts as one completion: it decides `S` until the
//! first completions arrive and fades as they accumulate. Busy time accrues *while* requests are
//! in service, so when a server slows down `S` starts rising at once, without waiting for the
//! slow requests to complete. The forgetting clock runs only while some request is in service:
//! a server that idles keeps its last estimate rather than drifting back to the prior. This is
//! the same idea as Prequal's latency-per-requests-in-flight estimate (Wydrowski et al., NSDI
//! 2024), reduced to one number per server by the queueing model above.
//!
//! An operator who knows the service time can state it instead ([`ServiceModel::Fixed`]).

use std::time::{Duration, Instant};

/// Default forgetting window of [`ServiceModel::Measured`].
pub const DEFAULT_SERVICE_WINDOW: Duration = Duration::from_secs(1);
/// Default prior of [`ServiceModel::Measured`]: what a server with no completions yet assumes.
pub const DEFAULT_SERVICE_PRIOR: Duration = Duration::from_millis(10);

/// Where a server's mean service time comes from. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceModel {
    /// Measured from the requests in flight and the completions the application reports.
    Measured {
        /// Exponential forgetting window τ. Default 1 s.
        window: Duration,
        /// Assumed before the first completions; weighs as one completion. Default 10 ms.
        prior: Duration,
    },
    /// Stated by the operator, never measured.
    Fixed(Duration),
}

impl Default for ServiceModel {
    fn default() -> Self {
        Self::Measured {
            window: DEFAULT_SERVICE_WINDOW,
            prior: DEFAULT_SERVICE_PRIOR,
        }
    }
}

/// The server's running estimate of its mean service time.
#[derive(Debug, Clone)]
pub(crate) struct ServiceEstimator {
    model: ServiceModel,
    /// Decayed slot-time in service, ns.
    busy: f64,
    /// Decayed completions.
    done: f64,
    /// Requests in service since `last` (`min(in_flight, slots)`).
    in_service: f64,
    last: Instant,
}

impl ServiceEstimator {
    pub fn new(now: Instant, model: ServiceModel) -> Self {
        Self {
            model,
            busy: 0.0,
            done: 0.0,
            in_service: 0.0,
            last: now,
        }
    }

    fn tau_ns(&self) -> f64 {
        match self.model {
            ServiceModel::Measured { window, .. } => (window.as_nanos() as f64).max(1.0),
            ServiceModel::Fixed(_) => 1.0,
        }
    }

    /// (busy, done) as of `now`, without changing anything.
    fn sums_at(&self, now: Instant) -> (f64, f64) {
        let dt = now.saturating_duration_since(self.last).as_nanos() as f64;
        if dt <= 0.0 || self.in_service <= 0.0 {
            return (self.busy, self.done);
        }
        let tau = self.tau_ns();
        let decay = (-dt / tau).exp();
        (
            self.busy * decay + self.in_service * tau * (1.0 - decay),
            self.done * decay,
        )
    }

    /// Records, at `now`, that `completed` requests finished and that `in_service` requests are
    /// in service from now on.
    pub fn record(&mut self, now: Instant, in_service: u32, completed: u64) {
        if now > self.last {
            let (busy, done) = self.sums_at(now);
            self.busy = busy;
            self.done = done;
            self.last = now;
        }
        self.done += completed as f64;
        self.in_service = f64::from(in_service);
    }

    /// The mean service time as of `now`.
    pub fn mean(&self, now: Instant) -> Duration {
        match self.model {
            ServiceModel::Fixed(s) => s,
            ServiceModel::Measured { prior, .. } => {
                let (busy, done) = self.sums_at(now);
                let ns = (busy + prior.as_nanos() as f64) / (done + 1.0);
                Duration::from_nanos(ns.clamp(0.0, u64::MAX as f64) as u64)
            }
        }
    }
}

/// The expected completion time of one more request with `n` in flight (offers outstanding
/// included) at a server of `slots` slots whose mean service time is `mean` (see the module
/// docs): `mean × max(1, (n + 1) / slots)`; `mean` when the server has no capacity.
pub fn expected_completion(mean: Duration, n: u32, slots: Option<u32>) -> Duration {
    match slots {
        Some(c) if c > 0 && n.saturating_add(1) > c => {
            let factor = (f64::from(n) + 1.0) / f64::from(c);
            Duration::from_nanos((mean.as_nanos() as f64 * factor).min(u64::MAX as f64) as u64)
        }
        _ => mean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn l5_expected_completion_is_flat_while_a_slot_is_free_then_linear() {
        let s = 40 * MS;
        assert_eq!(expected_completion(s, 0, Some(4)), s);
        assert_eq!(
            expected_completion(s, 3, Some(4)),
            s,
            "the 4th slot is free"
        );
        assert_eq!(
            expected_completion(s, 4, Some(4)),
            50 * MS,
            "waits for 1 of 4"
        );
        assert_eq!(expected_completion(s, 7, Some(4)), 80 * MS);
        assert_eq!(
            expected_completion(s, 100, None),
            s,
            "no capacity: no queue"
        );
        // A slow idle server and a fast one with three requests queued look alike (SED).
        assert_eq!(
            expected_completion(80 * MS, 0, Some(4)),
            expected_completion(s, 7, Some(4))
        );
    }

    #[test]
    fn l5_measured_service_time_follows_busy_time_over_completions() {
        let t0 = Instant::now();
        let mut e = ServiceEstimator::new(t0, ServiceModel::default());
        assert_eq!(
            e.mean(t0),
            DEFAULT_SERVICE_PRIOR,
            "the prior before any completion"
        );
        // Four slots busy, one completion every 10 ms: S = 4 × 10 ms = 40 ms.
        let mut now = t0;
        e.record(now, 4, 0);
        for _ in 0..500 {
            now += 10 * MS;
            e.record(now, 4, 1);
        }
        let s = e.mean(now).as_secs_f64() * 1e3;
        assert!((s - 40.0).abs() < 1.0, "{s} ms");
        // The server slows down 4×: busy time keeps accruing, completions come 4× rarer, and
        // the estimate follows within a few windows.
        for _ in 0..150 {
            now += 40 * MS;
            e.record(now, 4, 1);
        }
        let s = e.mean(now).as_secs_f64() * 1e3;
        assert!((s - 160.0).abs() < 10.0, "{s} ms");
        // An idle server keeps its estimate.
        e.record(now, 0, 0);
        let later = now + Duration::from_secs(5);
        let idle = e.mean(later).as_secs_f64() * 1e3;
        assert!((idle - s).abs() < 0.5 + s * 0.02, "{idle} vs {s}");
    }

    #[test]
    fn l5_a_stuck_server_looks_slower_before_anything_completes() {
        let t0 = Instant::now();
        let mut e = ServiceEstimator::new(t0, ServiceModel::default());
        let mut now = t0;
        e.record(now, 2, 0);
        for _ in 0..100 {
            now += 5 * MS;
            e.record(now, 2, 1);
        }
        let before = e.mean(now);
        // Requests stay in service, nothing completes: within 300 ms the estimate has grown
        // by half, within a second it has more than doubled.
        let after = e.mean(now + 300 * MS);
        assert!(after > before * 3 / 2, "{before:?} -> {after:?}");
        let later = e.mean(now + 1000 * MS);
        assert!(later > before * 2, "{before:?} -> {later:?}");
    }

    #[test]
    fn l5_fixed_service_time_is_never_measured() {
        let t0 = Instant::now();
        let mut e = ServiceEstimator::new(t0, ServiceModel::Fixed(7 * MS));
        e.record(t0 + MS, 4, 100);
        assert_eq!(e.mean(t0 + 2 * MS), 7 * MS);
    }
}
