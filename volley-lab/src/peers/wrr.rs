//! Client-side weighted round robin driven by per-reply load reports, as gRPC's
//! `weighted_round_robin` (gRFC A58) and Envoy's `client_side_weighted_round_robin` define it.
//!
//! - **Weight.** Each report (utilisation, qps, eps) sets its endpoint's weight to
//!   `qps / (utilisation + eps / qps × error_utilization_penalty)`; a report whose utilisation
//!   or qps is zero is ignored (A58's `UpdateWeight`).
//! - **Blackout.** A weight is used only once its endpoint has reported continuously for
//!   [`WrrConfig::blackout`] (`non_empty_since`), so that a new endpoint's first noisy reports do
//!   not steer the traffic.
//! - **Expiration.** A weight not refreshed for [`WrrConfig::expiration`] is dropped, and the
//!   blackout applies again to the next reports.
//! - **Scheduler.** Every [`WrrConfig::update`] the weights are read again and a new earliest
//!   deadline first (EDF) scheduler is built: each endpoint's period is `1 / weight`, its first
//!   deadline uniform in `[0, period]` (so that clients do not move in step); a pick takes the
//!   earliest deadline (ties: the lower index) and moves it on by its period. An endpoint with
//!   no usable weight is scheduled at the mean of the usable weights; with fewer than two usable
//!   weights every endpoint gets the same weight, i.e. round robin.
//!
//! The constants are A58's defaults scaled to a run of seconds (see [`WrrConfig::LAB`]).
//! [`Wrr`] is the decision alone, with no clock and no I/O: the driver tells it the time as a
//! [`Duration`] since its own start.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The policy's constants (A58's `WeightedRoundRobinLbConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrrConfig {
    /// How long an endpoint must have reported before its weight is used (A58: 10 s).
    pub blackout: Duration,
    /// How long a weight lasts without a new report (A58: 3 min).
    pub expiration: Duration,
    /// How often the scheduler is rebuilt from the weights (A58: 1 s, at least 100 ms).
    pub update: Duration,
    /// `error_utilization_penalty` (A58: 1.0).
    pub error_penalty: f64,
}

impl WrrConfig {
    /// The lab's constants. A58's defaults are for processes that live for hours: a 10 s
    /// blackout would keep every weight unused through a whole 6 s run. The lab keeps their
    /// proportions to its runs (1 s of warm-up, 5 s measured): the blackout is half the
    /// warm-up, so weights are in use when the measured period starts; the weights expire
    /// after 3 s without a report (reports come per call: at M = 64 a client hears from each
    /// server about once a second at load 0.85, so 3 s lets e^-3 ≈ 5 % of its weights lapse
    /// between two of its calls); the scheduler is rebuilt every 100 ms, A58's floor; the error
    /// penalty is A58's default.
    pub const LAB: WrrConfig = WrrConfig {
        blackout: Duration::from_millis(500),
        expiration: Duration::from_secs(3),
        update: Duration::from_millis(100),
        error_penalty: 1.0,
    };
}

/// One endpoint's weight and its two timestamps (A58's `last_updated`, `non_empty_since`).
#[derive(Debug, Clone, Copy, Default)]
struct Endpoint {
    weight: f64,
    last_updated: Option<Duration>,
    non_empty_since: Option<Duration>,
}

/// The EDF scheduler over one set of weights.
#[derive(Debug, Clone)]
struct Edf {
    periods: Vec<f64>,
    deadlines: Vec<f64>,
}

impl Edf {
    fn new(weights: &[f64], rng: &mut ChaCha8Rng) -> Edf {
        let periods: Vec<f64> = weights.iter().map(|w| 1.0 / w).collect();
        let deadlines = periods.iter().map(|p| rng.r#gen::<f64>() * p).collect();
        Edf { periods, deadlines }
    }

    fn pick(&mut self) -> usize {
        let mut best = 0;
        for k in 1..self.deadlines.len() {
            if self.deadlines[k] < self.deadlines[best] {
                best = k;
            }
        }
        self.deadlines[best] += self.periods[best];
        best
    }
}

/// One client's weighted round robin over `n` endpoints.
#[derive(Debug, Clone)]
pub struct Wrr {
    cfg: WrrConfig,
    endpoints: Vec<Endpoint>,
    scheduler: Option<Edf>,
    next_update: Duration,
    rng: ChaCha8Rng,
}

impl Wrr {
    /// A client of `n` endpoints with no report yet; `seed` draws the scheduler's first
    /// deadlines.
    pub fn new(n: usize, cfg: WrrConfig, seed: u64) -> Wrr {
        Wrr {
            cfg,
            endpoints: vec![Endpoint::default(); n],
            scheduler: None,
            next_update: Duration::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A reply from endpoint `i` at `now` reported its server's `qps`, `eps` and
    /// `utilisation` (A58's `UpdateWeight`).
    pub fn on_report(&mut self, i: usize, qps: f64, eps: f64, utilisation: f64, now: Duration) {
        let Some(e) = self.endpoints.get_mut(i) else {
            return;
        };
        if !(utilisation > 0.0 && qps > 0.0) {
            return;
        }
        let weight = qps / (utilisation + eps / qps * self.cfg.error_penalty);
        if !(weight.is_finite() && weight > 0.0) {
            return;
        }
        e.weight = weight;
        e.last_updated = Some(now);
        if e.non_empty_since.is_none() {
            e.non_empty_since = Some(now);
        }
    }

    /// Endpoint `i`'s weight at `now`, 0 when it has none it may use: no report yet, expired
    /// (which restarts its blackout), or still in its blackout (A58's `GetWeight`).
    pub fn weight(&mut self, i: usize, now: Duration) -> f64 {
        let cfg = self.cfg;
        let Some(e) = self.endpoints.get_mut(i) else {
            return 0.0;
        };
        let Some(updated) = e.last_updated else {
            return 0.0;
        };
        if now.saturating_sub(updated) >= cfg.expiration {
            e.non_empty_since = None;
            return 0.0;
        }
        match e.non_empty_since {
            Some(since) if cfg.blackout.is_zero() || now.saturating_sub(since) >= cfg.blackout => {
                e.weight
            }
            _ => 0.0,
        }
    }

    /// The weights the scheduler uses at `now`: each endpoint's usable weight, the mean of
    /// those for the endpoints without one, and all equal when fewer than two have one.
    pub fn weights(&mut self, now: Duration) -> Vec<f64> {
        let raw: Vec<f64> = (0..self.endpoints.len())
            .map(|i| self.weight(i, now))
            .collect();
        let usable: Vec<f64> = raw.iter().copied().filter(|w| *w > 0.0).collect();
        if usable.len() < 2 {
            return vec![1.0; raw.len()];
        }
        let mean = usable.iter().sum::<f64>() / usable.len() as f64;
        raw.into_iter()
            .map(|w| if w > 0.0 { w } else { mean })
            .collect()
    }

    /// The endpoint for a request at `now`: the scheduler is rebuilt first when its update
    /// period has passed. `None` with no endpoint at all.
    pub fn pick(&mut self, now: Duration) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        if self.scheduler.is_none() || now >= self.next_update {
            let weights = self.weights(now);
            self.scheduler = Some(Edf::new(&weights, &mut self.rng));
            self.next_update = now + self.cfg.update;
        }
        self.scheduler.as_mut().map(Edf::pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn counts(w: &mut Wrr, now: Duration, picks: usize) -> Vec<usize> {
        let mut c = vec![0; w.endpoints.len()];
        for _ in 0..picks {
            c[w.pick(now).expect("endpoints")] += 1;
        }
        c
    }

    #[test]
    fn p4_wrr_weights_follow_utilisation_after_the_blackout_and_expire() {
        let cfg = WrrConfig::LAB;
        let mut w = Wrr::new(3, cfg, 7);
        // Same qps, utilisation 0.25 against 1.0: weights 400 and 100; endpoint 2 never
        // reports and is scheduled at their mean, 250.
        let report = |w: &mut Wrr, t: Duration| {
            w.on_report(0, 100.0, 0.0, 0.25, t);
            w.on_report(1, 100.0, 0.0, 1.0, t);
        };
        report(&mut w, Duration::ZERO);
        // Inside the blackout nothing is usable: round robin.
        assert_eq!(w.weights(cfg.blackout - MS), vec![1.0; 3]);
        let c = counts(&mut w, cfg.blackout - MS, 300);
        assert_eq!(c, vec![100, 100, 100], "round robin in the blackout");
        // Reports keep coming; past the blackout the weights are in use.
        report(&mut w, cfg.blackout);
        let now = cfg.blackout + cfg.update;
        assert_eq!(w.weights(now), vec![400.0, 100.0, 250.0]);
        let c = counts(&mut w, now, 750);
        assert!(c[0].abs_diff(400) <= 1 && c[1].abs_diff(100) <= 1, "{c:?}");
        assert!(c[2].abs_diff(250) <= 1, "{c:?}");
        // Errors count as utilisation: eps/qps = 0.5 halves endpoint 1's share of 1/(1+0.5).
        w.on_report(1, 100.0, 50.0, 1.0, now);
        assert!((w.weight(1, now) - 100.0 / 1.5).abs() < 1e-9);
        // An empty report (no utilisation) changes nothing.
        w.on_report(0, 100.0, 0.0, 0.0, now);
        assert_eq!(w.weight(0, now), 400.0);
        // No report for the expiration period: the weight goes, and when reports return the
        // blackout applies again before it is used.
        let later = now + cfg.expiration;
        w.on_report(1, 100.0, 0.0, 1.0, later);
        assert_eq!(w.weight(0, later), 0.0, "expired");
        w.on_report(0, 100.0, 0.0, 0.5, later + MS);
        assert_eq!(w.weight(0, later + MS), 0.0, "blackout again");
        assert_eq!(w.weight(0, later + MS + cfg.blackout), 200.0);
    }

    #[test]
    fn p4_wrr_rebuilds_its_scheduler_every_update_period() {
        let cfg = WrrConfig::LAB;
        let mut w = Wrr::new(2, cfg, 1);
        let t = cfg.blackout * 2;
        for i in 0..2 {
            w.on_report(i, 100.0, 0.0, 0.5, Duration::ZERO);
            w.on_report(i, 100.0, 0.0, 0.5, t);
        }
        assert_eq!(counts(&mut w, t, 100), vec![50, 50]);
        // Endpoint 0's utilisation falls to 0.125: its weight quadruples, but the scheduler
        // built at `t` holds until the update period has passed.
        w.on_report(0, 100.0, 0.0, 0.125, t);
        assert_eq!(counts(&mut w, t + cfg.update - MS, 100), vec![50, 50]);
        let c = counts(&mut w, t + cfg.update, 500);
        assert!(c[0].abs_diff(400) <= 1, "{c:?}");
    }
}
