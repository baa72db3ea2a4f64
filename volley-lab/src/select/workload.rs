//! Workloads (how each server's speed behaves over a run) and the trace: the open-loop Poisson
//! arrival times and every request's work, drawn once per (workload, load, seed) so that every
//! policy meets exactly the same arrivals, work and speed changes.

use std::time::Duration;

use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The fleet's shape: `docs/BENCHMARKS.md` §2 fixes 16 servers of 4 slots.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FleetShape {
    pub servers: usize,
    pub slots: usize,
    /// Mean work of one request at speed 1 (exponentially distributed).
    pub mean_work: Duration,
}

/// A fleet behaviour from `docs/BENCHMARKS.md` §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every server at speed 1.
    Homogeneous,
    /// Half the fleet (chosen by seed) at 0.5x speed.
    HalfSlow,
    /// 30% of the fleet (5 of 16) draws a new speed, uniform in [0.25, 1.75], every second.
    Noisy,
    /// Two servers drop to 0.2x for `recovery_drop` after the warm-up plus one second.
    Recovery,
    /// One server answers every request at once with a failure.
    Sinkhole,
    /// One server goes silent a third of the way into the measured period: it answers no probe
    /// and no request from then on.
    Silent,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Homogeneous,
        Workload::HalfSlow,
        Workload::Noisy,
        Workload::Recovery,
        Workload::Sinkhole,
        Workload::Silent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Homogeneous => "homogeneous",
            Workload::HalfSlow => "half-slow",
            Workload::Noisy => "noisy",
            Workload::Recovery => "recovery",
            Workload::Sinkhole => "sinkhole",
            Workload::Silent => "silent",
        }
    }
}

/// What one server does at a given moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Works at this speed (1.0 nominal).
    Work(f64),
    /// Answers every request at once with a failure.
    Sinkhole,
    /// Answers nothing.
    Silent,
}

/// The speed schedule of every server over a run, fixed by the trace's seed.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub workload: Workload,
    /// Per server: speed per whole second of the run (the last value holds beyond the end).
    pub speeds: Vec<Vec<f64>>,
    /// The server that is a sinkhole or goes silent, if any.
    pub odd_one: Option<usize>,
    /// When the silent server goes silent, or the recovery drop starts (from the run's start).
    pub event_at: Option<Duration>,
    /// How long the recovery drop lasts.
    pub event_len: Option<Duration>,
    /// The recovery workload's slowed servers.
    pub slowed: Vec<usize>,
    /// Servers that go silent at `event_at` besides the silent workload's odd one (a zone
    /// outage of `select --zones`).
    pub silent: Vec<usize>,
}

impl Schedule {
    /// What server `i` does `t` after the run's start.
    pub fn behaviour(&self, i: usize, t: Duration) -> Behaviour {
        if self.silent_at(i).is_some_and(|at| t >= at) {
            return Behaviour::Silent;
        }
        if self.odd_one == Some(i) && self.workload == Workload::Sinkhole {
            return Behaviour::Sinkhole;
        }
        if self.workload == Workload::Recovery
            && self.slowed.contains(&i)
            && let (Some(at), Some(len)) = (self.event_at, self.event_len)
            && t >= at
            && t < at + len
        {
            return Behaviour::Work(0.2);
        }
        let per_second = &self.speeds[i];
        let s = (t.as_secs() as usize).min(per_second.len().saturating_sub(1));
        Behaviour::Work(per_second.get(s).copied().unwrap_or(1.0))
    }

    /// When server `i` goes silent, if it does: the silent workload's odd one, or a server of a
    /// zone outage.
    pub fn silent_at(&self, i: usize) -> Option<Duration> {
        let odd = self.workload == Workload::Silent && self.odd_one == Some(i);
        if odd || self.silent.contains(&i) {
            self.event_at
        } else {
            None
        }
    }

    /// Capacity in requests per second of the servers that do real work (the sinkhole and the
    /// silent server excluded; noisy servers at their mean speed 1; the recovery drop ignored).
    pub fn capacity_rps(&self, shape: &FleetShape) -> f64 {
        let mut total = 0.0;
        for i in 0..shape.servers {
            if self.odd_one == Some(i) {
                continue;
            }
            let nominal = if self.workload == Workload::Noisy {
                1.0
            } else {
                self.speeds[i].first().copied().unwrap_or(1.0)
            };
            total += nominal * shape.slots as f64;
        }
        total / shape.mean_work.as_secs_f64()
    }

    /// Each server's share of the fleet's capacity (as in `capacity_rps`).
    pub fn capacity_share(&self, shape: &FleetShape) -> Vec<f64> {
        let mut w: Vec<f64> = (0..shape.servers)
            .map(|i| {
                if self.odd_one == Some(i) {
                    0.0
                } else if self.workload == Workload::Noisy {
                    1.0
                } else {
                    self.speeds[i].first().copied().unwrap_or(1.0)
                }
            })
            .collect();
        let sum: f64 = w.iter().sum();
        if sum > 0.0 {
            w.iter_mut().for_each(|x| *x /= sum);
        }
        w
    }
}

/// One session of the trace.
#[derive(Debug, Clone)]
pub struct Job {
    /// Scheduled arrival, from the run's start.
    pub at: Duration,
    /// Work of each request at speed 1, in microseconds.
    pub work_us: Vec<u32>,
    /// A uniform draw for policies that need one per session (random pick, fan-out subset).
    pub coin: u64,
    /// A uniform draw that assigns the session to one of the run's independent clients.
    pub client_coin: u64,
}

impl Job {
    /// Which of `clients` independent clients this session arrives at.
    pub fn client(&self, clients: usize) -> usize {
        (self.client_coin % clients.max(1) as u64) as usize
    }
}

/// Everything a run replays.
#[derive(Debug, Clone)]
pub struct Trace {
    pub schedule: Schedule,
    pub jobs: Vec<Job>,
    /// Sessions arriving per second.
    pub rate: f64,
    /// Arrivals stop here; the measured period is `[warmup, end)`.
    pub end: Duration,
    pub warmup: Duration,
}

/// How many requests a session makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Requests {
    /// One request per session.
    One,
    /// Uniform in 5..=15 (mean 10).
    About10,
}

impl Requests {
    pub fn mean(self) -> f64 {
        match self {
            Requests::One => 1.0,
            Requests::About10 => 10.0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Requests::One => "1",
            Requests::About10 => "~10",
        }
    }
    /// The file-name tag: `r1` or `r10`.
    pub fn tag(self) -> &'static str {
        match self {
            Requests::One => "r1",
            Requests::About10 => "r10",
        }
    }
}

/// The parameters a trace is drawn from.
#[derive(Debug, Clone, Copy)]
pub struct TraceSpec {
    pub shape: FleetShape,
    pub workload: Workload,
    pub load: f64,
    pub requests: Requests,
    pub seed: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub recovery_drop: Duration,
}

impl TraceSpec {
    /// Draws the schedule and the jobs. Deterministic in the spec.
    pub fn draw(&self) -> Trace {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (self.workload as u64) << 40 ^ (self.load * 1000.0) as u64 ^ 0x5e1ec7,
        );
        let n = self.shape.servers;
        let end = self.warmup + self.measure;
        let seconds = end.as_secs() as usize + 2;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut speeds = vec![vec![1.0; seconds]; n];
        let mut odd_one = None;
        let mut event_at = None;
        let mut event_len = None;
        let mut slowed = Vec::new();
        match self.workload {
            Workload::Homogeneous => {}
            Workload::HalfSlow => {
                for &i in &order[..n / 2] {
                    speeds[i] = vec![0.5; seconds];
                }
            }
            Workload::Noisy => {
                let noisy = (n * 3).div_ceil(10);
                for &i in &order[..noisy] {
                    for s in speeds[i].iter_mut() {
                        *s = rng.gen_range(0.25..1.75);
                    }
                }
            }
            Workload::Recovery => {
                slowed = order[..2.min(n)].to_vec();
                event_at = Some(self.warmup + Duration::from_secs(1).min(self.measure / 4));
                event_len = Some(self.recovery_drop);
            }
            Workload::Sinkhole => odd_one = Some(order[0]),
            Workload::Silent => {
                odd_one = Some(order[0]);
                event_at = Some(self.warmup + self.measure / 3);
            }
        }
        let schedule = Schedule {
            workload: self.workload,
            speeds,
            odd_one,
            event_at,
            event_len,
            slowed,
            silent: Vec::new(),
        };
        let rate = self.load * schedule.capacity_rps(&self.shape) / self.requests.mean();
        let mean_us = self.shape.mean_work.as_secs_f64() * 1e6;
        let mut jobs = Vec::with_capacity((rate * end.as_secs_f64() * 1.1) as usize + 16);
        let mut t = 0.0f64;
        loop {
            t += exp(&mut rng, 1.0 / rate);
            let at = Duration::from_secs_f64(t);
            if at >= end {
                break;
            }
            let count = match self.requests {
                Requests::One => 1,
                Requests::About10 => rng.gen_range(5..=15),
            };
            let work_us = (0..count)
                .map(|_| exp(&mut rng, mean_us).round().clamp(1.0, 60e6) as u32)
                .collect();
            jobs.push(Job {
                at,
                work_us,
                coin: rng.r#gen(),
                client_coin: rng.r#gen(),
            });
        }
        Trace {
            schedule,
            jobs,
            rate,
            end,
            warmup: self.warmup,
        }
    }
}

/// An exponential draw with this mean.
fn exp(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    let u: f64 = rng.r#gen::<f64>();
    -(1.0 - u).ln() * mean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(workload: Workload, load: f64) -> TraceSpec {
        TraceSpec {
            shape: FleetShape {
                servers: 16,
                slots: 4,
                mean_work: Duration::from_millis(40),
            },
            workload,
            load,
            requests: Requests::One,
            seed: 7,
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(4),
            recovery_drop: Duration::from_secs(2),
        }
    }

    #[test]
    fn trace_is_deterministic_and_offers_the_asked_load() {
        let a = spec(Workload::HalfSlow, 0.85).draw();
        let b = spec(Workload::HalfSlow, 0.85).draw();
        assert_eq!(a.jobs.len(), b.jobs.len());
        assert!(
            a.jobs
                .iter()
                .zip(&b.jobs)
                .all(|(x, y)| x.at == y.at && x.work_us == y.work_us)
        );
        // Half the fleet at 0.5x: 16 x 4 slots x 0.75 / 40 ms = 1200 requests/s at load 1.
        assert!((a.rate - 0.85 * 1200.0).abs() < 1e-6, "rate {}", a.rate);
        // Spread uniformly over independent clients.
        let mut per = [0usize; 16];
        for j in &a.jobs {
            per[j.client(16)] += 1;
        }
        let fair = a.jobs.len() as f64 / 16.0;
        assert!(
            per.iter().all(|&n| (n as f64 - fair).abs() < 0.25 * fair),
            "{per:?}"
        );
        let offered: f64 = a
            .jobs
            .iter()
            .flat_map(|j| j.work_us.iter())
            .map(|&w| w as f64 / 1e6)
            .sum::<f64>()
            / a.end.as_secs_f64();
        let capacity_seconds = 16.0 * 4.0 * 0.75;
        let load = offered / capacity_seconds;
        assert!((load - 0.85).abs() < 0.06, "offered load {load}");
        let slow = (0..16)
            .filter(|&i| a.schedule.behaviour(i, Duration::ZERO) == Behaviour::Work(0.5))
            .count();
        assert_eq!(slow, 8);
    }

    #[test]
    fn odd_servers_behave_as_their_workload_says() {
        let s = spec(Workload::Silent, 0.5).draw().schedule;
        let odd = s.odd_one.expect("a silent server");
        let at = s.event_at.expect("a time");
        assert_eq!(
            s.behaviour(odd, at - Duration::from_millis(1)),
            Behaviour::Work(1.0)
        );
        assert_eq!(s.behaviour(odd, at), Behaviour::Silent);
        let r = spec(Workload::Recovery, 0.5).draw().schedule;
        let at = r.event_at.expect("a drop");
        assert_eq!(r.behaviour(r.slowed[0], at), Behaviour::Work(0.2));
        assert_eq!(
            r.behaviour(r.slowed[0], at + Duration::from_secs(2)),
            Behaviour::Work(1.0)
        );
        let k = spec(Workload::Sinkhole, 0.5).draw().schedule;
        assert_eq!(
            k.behaviour(k.odd_one.expect("sinkhole"), Duration::ZERO),
            Behaviour::Sinkhole
        );
        assert_eq!(
            k.capacity_share(&spec(Workload::Sinkhole, 0.5).shape).len(),
            16
        );
    }
}
