//! C3 (Suresh, Canini, Schmid, Feldmann: "C3: Cutting Tail Latency in Cloud Data Stores via
//! Adaptive Replica Selection", NSDI '15) as one client runs it: replica ranking by piggybacked
//! feedback, and per-replica rate control with a backpressure queue. The constants and the
//! update rules are those of the paper and of its authors' simulator (`absim`, whose defaults
//! the Cassandra implementation shares).
//!
//! **Ranking.** Per replica the client keeps exponentially weighted moving averages of what each
//! reply carries and of what it sees itself: `q` the server's queue size, `µ` the server's
//! service rate (1 / service time), `R` the response time from send to reply. Its score is
//!
//! ```text
//! Ψ = R − 1/µ + q̂³ / µ,   q̂ = 1 + os · w + q
//! ```
//!
//! with `os` this client's requests outstanding at the replica and `w` the concurrency weight,
//! the number of clients (each client assumes the others send as much as it does). `R − 1/µ` is
//! the path and waiting the client sees beyond the service; the cubic term penalises long queues
//! far more than a linear one. A request is ranked among its **replica group** only (the servers
//! that hold its key: in the paper's Cassandra, 3 of them); a replica with no feedback yet
//! scores 0 and is tried first; ties keep the group's order.
//!
//! **Rate control.** Per replica a token bucket limits the sending rate `srate` (tokens per
//! interval δ, at most [`C3Config::max_tokens`] banked), and the receive rate `rrate` is an
//! EWMA of the replies received per δ. On every reply: if `srate < rrate` the rate grows along a
//! cubic, `srate = γ (T − ∛(β · R₀ / γ))³ + R₀`, `T` the time since the last decrease, `R₀` the
//! rate before it, each step at most [`C3Config::smax`]; if `srate > rrate` and no increase
//! happened in the last `hysteresis × δ`, it falls to `β · srate` (`R₀` remembers the old rate).
//! **Backpressure:** a request goes to the best-ranked replica of its group with a token; when
//! none has one, the request waits in its group's backlog queue (first in, first out: the later
//! requests for that group wait behind it) until the first of them earns its token.
//!
//! [`C3`] is the decision alone, with no clock and no I/O: the driver tells it the time as a
//! [`Duration`] since its own start.

use std::time::Duration;

/// The constants (absim's defaults; its time unit, and so γ's, is the millisecond).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct C3Config {
    /// Weight of the newest sample in every feedback EWMA (absim and Cassandra: 0.9).
    pub alpha: f64,
    /// The exponent of the queue penalty (the paper's b = 3).
    pub exponent: f64,
    /// The rate interval δ, ms (the paper's 20 ms).
    pub interval_ms: f64,
    /// Multiplicative decrease β (0.2).
    pub beta: f64,
    /// The cubic's scale γ, in tokens per δ per ms³ (0.000004).
    pub gamma: f64,
    /// The largest increase of one step, tokens per δ (10).
    pub smax: f64,
    /// No decrease within this many intervals of an increase (absim: 2).
    pub hysteresis: f64,
    /// The token bucket's depth, and the first rate and `R₀`, tokens per δ (absim: 10).
    pub max_tokens: f64,
    /// Weight of the last interval's count in the receive rate's EWMA (absim: 0.1).
    pub receive_alpha: f64,
    /// The lowest rate a decrease leaves, tokens per δ (absim: 0.01).
    pub min_rate: f64,
}

impl C3Config {
    /// The constants the lab runs (absim's; δ = 20 ms as in the paper).
    pub const PAPER: C3Config = C3Config {
        alpha: 0.9,
        exponent: 3.0,
        interval_ms: 20.0,
        beta: 0.2,
        gamma: 0.000_004,
        smax: 10.0,
        hysteresis: 2.0,
        max_tokens: 10.0,
        receive_alpha: 0.1,
        min_rate: 0.01,
    };
}

/// The service time below which a report counts (a server that fails at once reports none).
const MIN_SERVICE_MS: f64 = 0.001;

/// One replica's token bucket (absim's `RateLimiter`).
#[derive(Debug, Clone, Copy)]
struct Limiter {
    /// Tokens per interval.
    rate: f64,
    tokens: f64,
    last_sent: f64,
}

impl Limiter {
    fn tokens(&self, now: f64, cfg: &C3Config) -> f64 {
        (self.tokens + self.rate / cfg.interval_ms * (now - self.last_sent)).min(cfg.max_tokens)
    }

    /// Takes a token at `now`, or says how long until there is one, ms.
    fn try_acquire(&mut self, now: f64, cfg: &C3Config) -> Result<(), f64> {
        let tokens = self.tokens(now, cfg);
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            self.last_sent = now;
            Ok(())
        } else {
            Err((1.0 - tokens) * cfg.interval_ms / self.rate)
        }
    }
}

/// Replies received per interval, an EWMA updated at each interval's end (absim's
/// `ReceiveRate`), kept lazily.
#[derive(Debug, Clone, Copy)]
struct ReceiveRate {
    rate: f64,
    count: f64,
    /// Start of the interval being counted.
    since: f64,
}

impl ReceiveRate {
    fn roll(&mut self, now: f64, cfg: &C3Config) {
        let ended = ((now - self.since) / cfg.interval_ms).floor();
        if ended >= 1.0 {
            let a = cfg.receive_alpha;
            self.rate = a * self.count + (1.0 - a) * self.rate;
            // Every further interval ended with nothing received.
            self.rate *= (1.0 - a).powf(ended - 1.0);
            self.count = 0.0;
            self.since += ended * cfg.interval_ms;
        }
    }
}

/// What one client knows of one replica.
#[derive(Debug, Clone, Copy)]
struct Replica {
    outstanding: u32,
    /// EWMAs: queue size, service rate (1/ms), response time (ms); `None` before feedback.
    queue: Option<f64>,
    mu: Option<f64>,
    response: Option<f64>,
    limiter: Limiter,
    received: ReceiveRate,
    last_decrease: f64,
    last_increase: f64,
    /// `R₀`: the rate before the last decrease.
    r0: f64,
}

/// One C3 client over `n` replicas.
#[derive(Debug, Clone)]
pub struct C3 {
    cfg: C3Config,
    /// The concurrency weight `w`: the number of clients.
    weight: f64,
    replicas: Vec<Replica>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ewma(old: Option<f64>, sample: f64, alpha: f64) -> f64 {
    old.map_or(sample, |o| alpha * sample + (1.0 - alpha) * o)
}

impl C3 {
    /// A client of `n` replicas among `clients` clients, at `now`.
    pub fn new(n: usize, clients: usize, cfg: C3Config, now: Duration) -> C3 {
        let t = ms(now);
        let replica = Replica {
            outstanding: 0,
            queue: None,
            mu: None,
            response: None,
            limiter: Limiter {
                rate: cfg.max_tokens,
                tokens: cfg.max_tokens,
                last_sent: t,
            },
            received: ReceiveRate {
                rate: 0.0,
                count: 0.0,
                since: t,
            },
            last_decrease: t,
            last_increase: t,
            r0: cfg.max_tokens,
        };
        C3 {
            cfg,
            weight: clients.max(1) as f64,
            replicas: vec![replica; n],
        }
    }

    /// Replica `i`'s score Ψ, ms (lower is better); 0 before any feedback from it.
    pub fn score(&self, i: usize) -> f64 {
        let Some(r) = self.replicas.get(i) else {
            return f64::INFINITY;
        };
        let (Some(q), Some(mu), Some(resp)) = (r.queue, r.mu, r.response) else {
            return 0.0;
        };
        let q_hat = 1.0 + f64::from(r.outstanding) * self.weight + q;
        resp - 1.0 / mu + q_hat.powf(self.cfg.exponent) / mu
    }

    /// `group`'s replicas, best score first (ties keep the group's order).
    pub fn rank(&self, group: &[usize]) -> Vec<usize> {
        let mut order: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| i < self.replicas.len())
            .collect();
        order.sort_by(|&a, &b| self.score(a).total_cmp(&self.score(b)));
        order
    }

    /// A request for the replica group `group` at `now`: its best-ranked replica with a token
    /// takes it (its outstanding count rises); when none has one, how long until the first
    /// earns one (backpressure).
    pub fn try_send(&mut self, group: &[usize], now: Duration) -> Result<usize, Duration> {
        let t = ms(now);
        let mut wait = f64::INFINITY;
        for i in self.rank(group) {
            let cfg = self.cfg;
            let r = &mut self.replicas[i];
            match r.limiter.try_acquire(t, &cfg) {
                Ok(()) => {
                    r.outstanding += 1;
                    return Ok(i);
                }
                Err(w) => wait = wait.min(w),
            }
        }
        // Rounded up to the next microsecond, so that the token is there when the wait ends.
        let wait = if wait.is_finite() { wait } else { 1.0 };
        Err(Duration::from_micros((wait * 1e3).ceil() as u64 + 1))
    }

    /// A reply from replica `i` at `now`, `response` after its request was sent, carrying the
    /// server's queue size and service time: the EWMAs, the receive rate and the sending rate
    /// move.
    pub fn on_reply(
        &mut self,
        i: usize,
        now: Duration,
        response: Duration,
        queue: f64,
        service: Duration,
    ) {
        let cfg = self.cfg;
        let Some(r) = self.replicas.get_mut(i) else {
            return;
        };
        let t = ms(now);
        r.outstanding = r.outstanding.saturating_sub(1);
        r.queue = Some(ewma(r.queue, queue, cfg.alpha));
        r.mu = Some(ewma(r.mu, 1.0 / ms(service).max(MIN_SERVICE_MS), cfg.alpha));
        r.response = Some(ewma(r.response, ms(response), cfg.alpha));
        r.received.roll(t, &cfg);
        r.received.count += 1.0;
        Self::update_rate(r, t, &cfg);
    }

    /// A request to replica `i` ended without a reply (given up): it is no longer outstanding.
    pub fn on_abandon(&mut self, i: usize) {
        if let Some(r) = self.replicas.get_mut(i) {
            r.outstanding = r.outstanding.saturating_sub(1);
        }
    }

    /// absim's `updateRates`: the cubic increase, the multiplicative decrease.
    fn update_rate(r: &mut Replica, t: f64, cfg: &C3Config) {
        let srate = r.limiter.rate;
        let rrate = r.received.rate;
        if srate < rrate {
            let since = t - r.last_decrease;
            r.last_increase = t;
            let k = (r.r0 * cfg.beta / cfg.gamma).cbrt();
            let next = cfg.gamma * (since - k).powi(3) + r.r0;
            r.limiter.rate = if next - srate > cfg.smax {
                srate + cfg.smax
            } else {
                next
            };
        } else if rrate > 0.0
            && srate > rrate
            && t - r.last_increase > cfg.interval_ms * cfg.hysteresis
        {
            r.r0 = srate;
            r.limiter.rate = (srate * cfg.beta).max(cfg.min_rate);
            r.last_decrease = t;
        }
        // A rate at or below zero would stall the bucket for ever (a cubic step far below R₀).
        r.limiter.rate = r.limiter.rate.max(cfg.min_rate);
    }

    /// Replica `i`'s sending rate, tokens per interval.
    pub fn rate(&self, i: usize) -> f64 {
        self.replicas.get(i).map_or(0.0, |r| r.limiter.rate)
    }

    /// Replica `i`'s requests outstanding from this client.
    pub fn outstanding(&self, i: usize) -> u32 {
        self.replicas.get(i).map_or(0, |r| r.outstanding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A replica's EWMAs set by one reply: response `resp` ms, queue `q`, service `s` ms.
    fn feed(c: &mut C3, i: usize, resp: u64, q: f64, s: u64) {
        c.replicas[i].outstanding += 1;
        c.on_reply(i, Duration::ZERO, MS * resp as u32, q, MS * s as u32);
    }

    #[test]
    fn p4_c3_score_orders_replicas_as_the_paper_says() {
        let mut c = C3::new(4, 16, C3Config::PAPER, Duration::ZERO);
        // No feedback yet: every score 0, so the unexplored replicas come first, in the group's
        // order.
        assert_eq!(c.rank(&[2, 0, 3, 1]), vec![2, 0, 3, 1]);
        // Ψ = R − 1/µ + q̂³/µ: replica 0 answers in 3 ms, serves in 2 ms with 3 queued
        // (q̂ = 4): 3 − 2 + 64 × 2 = 129; replica 1 answers in 7 ms, serves in 6 ms with 1
        // queued (q̂ = 2): 7 − 6 + 8 × 6 = 49. A linear penalty (q̂/µ: 8 against 12) would prefer
        // the fast server with the queue; the cubic one prefers the slow server without.
        feed(&mut c, 0, 3, 3.0, 2);
        feed(&mut c, 1, 7, 1.0, 6);
        assert!(
            (c.score(0) - (3.0 - 2.0 + 64.0 * 2.0)).abs() < 1e-9,
            "{}",
            c.score(0)
        );
        assert!(
            (c.score(1) - (7.0 - 6.0 + 8.0 * 6.0)).abs() < 1e-9,
            "{}",
            c.score(1)
        );
        assert_eq!(c.rank(&[0, 1, 2, 3])[2..], [1, 0]);
        // The EWMAs weigh the newest sample 0.9.
        feed(&mut c, 1, 7, 11.0, 6);
        assert!((c.replicas[1].queue.unwrap() - (0.9 * 11.0 + 0.1 * 1.0)).abs() < 1e-9);
        // Concurrency compensation: one outstanding request counts as w = 16 queued ones.
        feed(&mut c, 2, 2, 0.0, 2);
        feed(&mut c, 3, 2, 0.0, 2);
        assert_eq!(c.score(2), c.score(3));
        c.replicas[2].outstanding = 1;
        let q_hat: f64 = 1.0 + 16.0;
        assert!(
            (c.score(2) - (0.0 + q_hat.powi(3) * 2.0)).abs() < 1e-6,
            "{}",
            c.score(2)
        );
        assert_eq!(c.rank(&[2, 3]), vec![3, 2]);
    }

    #[test]
    fn p4_c3_rate_control_backs_off_grows_cubically_and_holds_requests_back() {
        let cfg = C3Config::PAPER;
        let mut c = C3::new(1, 1, cfg, Duration::ZERO);
        // A full bucket: 10 tokens, then the 11th request waits for a token at 10 per 20 ms.
        for _ in 0..10 {
            assert_eq!(c.try_send(&[0], Duration::ZERO), Ok(0));
        }
        let wait = c.try_send(&[0], Duration::ZERO).expect_err("backpressure");
        assert!(
            wait >= Duration::from_millis(2) && wait < Duration::from_micros(2010),
            "{wait:?}"
        );
        assert_eq!(
            c.try_send(&[0], wait),
            Ok(0),
            "the token is there when the wait ends"
        );
        assert_eq!(c.outstanding(0), 11);
        // Replies arrive at 1 per interval: the receive rate settles near 1, below the sending
        // rate of 10, so the rate falls to β × 10 once no increase happened for 2 intervals.
        let mut t = 0.0;
        while c.rate(0) == 10.0 && t < 2000.0 {
            t += 20.0;
            c.on_reply(0, Duration::from_secs_f64(t / 1e3), MS, 0.0, MS);
        }
        assert!(
            (c.rate(0) - 2.0).abs() < 1e-9,
            "decreased to β·R₀: {}",
            c.rate(0)
        );
        assert_eq!(c.replicas[0].r0, 10.0);
        // Not at 40 ms: an increase (the start) less than 2 intervals before holds it back.
        assert_eq!(t, 60.0);
        let decreased_at = t;
        // Now replies come far faster than it sends: the rate climbs along the cubic towards
        // R₀ = 10, reaching it at T = ∛(β R₀ / γ) ≈ 79.4 ms and passing it after.
        c.replicas[0].received.rate = 50.0;
        let mut seen = Vec::new();
        for k in 1..=40 {
            t = decreased_at + f64::from(k) * 4.0;
            c.on_reply(0, Duration::from_secs_f64(t / 1e3), MS, 0.0, MS);
            seen.push((t - decreased_at, c.rate(0)));
        }
        let cubic = |x: f64| cfg.gamma * (x - (10.0 * cfg.beta / cfg.gamma).cbrt()).powi(3) + 10.0;
        for &(x, rate) in &seen {
            assert!(
                (rate - cubic(x)).abs() < 1e-9,
                "T = {x}: {rate} against {}",
                cubic(x)
            );
        }
        let plateau = seen
            .iter()
            .find(|(x, _)| (76.0..=84.0).contains(x))
            .unwrap();
        assert!(
            (plateau.1 - 10.0).abs() < 0.01,
            "the plateau at R₀: {plateau:?}"
        );
        assert!(seen.last().unwrap().1 > 10.0, "and beyond it");
    }

    #[test]
    fn p4_c3_sends_to_the_best_replica_of_the_group_that_has_a_token() {
        let mut c = C3::new(2, 1, C3Config::PAPER, Duration::ZERO);
        feed(&mut c, 0, 1, 0.0, 1);
        feed(&mut c, 1, 9, 5.0, 8);
        assert_eq!(c.rank(&[1, 0]), vec![0, 1]);
        c.replicas[0].limiter.tokens = 0.0;
        assert_eq!(
            c.try_send(&[0, 1], Duration::ZERO),
            Ok(1),
            "the best has no token"
        );
        // Only the group's replicas are candidates.
        assert!(c.try_send(&[0], Duration::ZERO).is_err());
        c.replicas[1].limiter.tokens = 0.0;
        let wait = c
            .try_send(&[0, 1], Duration::ZERO)
            .expect_err("no token anywhere");
        // 1 token at 10 per 20 ms: 2 ms.
        assert!(wait <= Duration::from_micros(2002), "{wait:?}");
    }
}
