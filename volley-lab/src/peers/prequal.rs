//! Prequal (Wydrowski et al., NSDI 2024) as the lab runs it: each arrival sends
//! [`PROBES_PER_ARRIVAL`] load probes to random servers, whose answers arrive a network round
//! trip later and serve later arrivals; a client keeps a pool of the [`POOL`] freshest answers,
//! at most [`MAX_AGE`] old, each used at most [`REUSE`] times (its in-flight count raised by each
//! use), and picks by the hot/cold rule: among answers whose in-flight count is at most the
//! pool's [`HOT_QUANTILE`] quantile, the lowest latency estimate; when none is, the lowest
//! in-flight count. With nothing in the pool the driver picks a random server.
//!
//! [`ProbePool`] is the decision alone, with no clock and no I/O: `select` drives it from real
//! sockets and `Instant`s, `sim` from its virtual clock, each telling it the time as a
//! [`Duration`] since its own start.

use std::collections::VecDeque;
use std::time::Duration;

/// Load probes each arrival sends (for later arrivals).
pub const PROBES_PER_ARRIVAL: usize = 3;
/// Answers one client's pool keeps.
pub const POOL: usize = 16;
/// The oldest answer a client uses.
pub const MAX_AGE: Duration = Duration::from_millis(100);
/// Uses of one answer.
pub const REUSE: u8 = 2;
/// The hot/cold quantile of the pool's in-flight counts.
pub const HOT_QUANTILE: f64 = 0.75;

/// One server's answer to a load probe.
#[derive(Debug, Clone, Copy)]
struct Answer {
    server: u32,
    /// Requests in flight at the server (raised by each use of this answer).
    rif: u32,
    /// The server's latency estimate, in the driver's unit (only compared with each other).
    latency: u64,
    /// When it arrived, on the driver's clock.
    at: Duration,
    uses: u8,
}

/// One client's pool of load-probe answers.
#[derive(Debug, Default)]
pub struct ProbePool {
    answers: VecDeque<Answer>,
}

impl ProbePool {
    /// A load probe's answer arrives at `at`: it joins the pool, replacing that server's older
    /// answer; the oldest goes when the pool is full.
    pub fn insert(&mut self, server: u32, rif: u32, latency: u64, at: Duration) {
        self.answers.retain(|e| e.server != server);
        if self.answers.len() >= POOL {
            self.answers.pop_front();
        }
        self.answers.push_back(Answer {
            server,
            rif,
            latency,
            at,
            uses: 0,
        });
    }

    /// An arrival at `now` picks a server: answers older than [`MAX_AGE`] are dropped, then the
    /// hot/cold rule decides; the chosen answer's in-flight count rises and its uses count.
    /// `None` when the pool is empty.
    pub fn pick(&mut self, now: Duration) -> Option<u32> {
        self.answers.retain(|e| now.saturating_sub(e.at) <= MAX_AGE);
        let k = self.hot_cold()?;
        let chosen = &mut self.answers[k];
        let server = chosen.server;
        chosen.rif += 1;
        chosen.uses += 1;
        if chosen.uses >= REUSE {
            self.answers.remove(k);
        }
        Some(server)
    }

    /// The index of the answer the hot/cold rule picks. The quantile of the in-flight counts is
    /// interpolated between ranks: it is part of the policy under test, not a reported figure,
    /// so it keeps its own definition rather than the reports' nearest rank.
    fn hot_cold(&self) -> Option<usize> {
        if self.answers.is_empty() {
            return None;
        }
        let mut rifs: Vec<u32> = self.answers.iter().map(|e| e.rif).collect();
        rifs.sort_unstable();
        let pos = HOT_QUANTILE * (rifs.len() - 1) as f64;
        let lo = f64::from(rifs[pos.floor() as usize]);
        let hi = f64::from(rifs[pos.ceil() as usize]);
        let threshold = lo + (hi - lo) * (pos - pos.floor());
        let cold = self
            .answers
            .iter()
            .enumerate()
            .filter(|(_, e)| f64::from(e.rif) <= threshold)
            .min_by_key(|(_, e)| (e.latency, e.rif))
            .map(|(k, _)| k);
        cold.or_else(|| {
            self.answers
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.rif)
                .map(|(k, _)| k)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prequal_prefers_a_cold_fast_server_and_spends_its_answers() {
        let now = Duration::from_secs(1);
        let mut pool = ProbePool::default();
        for (server, rif, latency) in [
            (0, 2, 900),
            (1, 1, 300),
            (2, 3, 800),
            (3, 9, 100),
            (4, 2, 700),
        ] {
            pool.insert(server, rif, latency, now);
        }
        // Server 3 is the fastest but hot (rif 9 above the 0.75 quantile); 1 is cold and fast.
        assert_eq!(pool.pick(now), Some(1));
        // Used once: its in-flight count rose to 2, still cold and still the fastest.
        assert_eq!(pool.pick(now), Some(1));
        // Spent after two uses.
        assert!(pool.answers.iter().all(|p| p.server != 1));
        assert_eq!(pool.pick(now), Some(4));
        assert_eq!(ProbePool::default().pick(now), None);
    }

    #[test]
    fn a_newer_answer_replaces_the_servers_older_one_and_stale_answers_are_not_used() {
        let mut pool = ProbePool::default();
        pool.insert(7, 9, 100, Duration::ZERO);
        pool.insert(7, 0, 100, Duration::from_millis(10));
        assert_eq!(pool.answers.len(), 1, "one answer per server");
        assert_eq!(pool.answers[0].rif, 0);
        for server in 0..POOL as u32 + 4 {
            pool.insert(100 + server, 1, 1, Duration::from_millis(20));
        }
        assert_eq!(pool.answers.len(), POOL, "the oldest went");
        assert!(pool.answers.iter().all(|a| a.server != 7));
        // 100 ms after the newest answers, they are still fresh; a moment later, gone.
        assert!(pool.pick(Duration::from_millis(120)).is_some());
        assert_eq!(pool.pick(Duration::from_millis(121)), None);
    }
}
