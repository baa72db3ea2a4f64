//! CPU accounting over a measured period, to tell a lab that ran out of CPU from the thing it
//! measures: a thread's and the whole process's CPU time (getrusage), each CPU's busy share from
//! `/proc/stat` (softirq included: on loopback that is where packets are delivered), and another
//! process's CPU time from `/proc/PID/stat`.
//!
//! [`sample`] and [`between`] split a process in two: the calling thread (`select`'s client
//! thread, which drives every session) and the rest (its fleet's thread and its servers' timer
//! threads).

use std::time::Instant;

use nix::sys::resource::{UsageWho, getrusage};

/// A reading at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    process_us: u64,
    thread_us: u64,
    /// Per CPU: (busy, total) in clock ticks since boot; empty without `/proc/stat`.
    cpus: Vec<(u64, u64)>,
}

/// CPU used between two samples, in cores (1.0 = one CPU busy all the time).
#[derive(Debug, Clone)]
pub struct Usage {
    /// The client thread: every policy's sessions, probes and selection.
    pub client: f64,
    /// The rest of the process: the fleet's thread and its servers' timer threads.
    pub fleet: f64,
    /// Each CPU's busy share (user, system, interrupts), whoever used it.
    pub busy: Vec<f64>,
}

/// CPU time (user + system) of `who`, in µs.
pub fn cpu_us(who: UsageWho) -> u64 {
    match getrusage(who) {
        Ok(u) => {
            let us =
                |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
            us(u.user_time()) + us(u.system_time())
        }
        Err(_) => 0,
    }
}

/// CPU time of the calling thread, in µs.
pub fn thread_cpu_us() -> u64 {
    cpu_us(UsageWho::RUSAGE_THREAD)
}

/// Per-CPU (busy, total) ticks from `/proc/stat`'s `cpuN` lines.
pub fn proc_stat() -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    parse_proc_stat(&text)
}

fn parse_proc_stat(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let total: u64 = f.iter().sum();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// The busy share of one CPU between two of its `/proc/stat` readings (busy, total); `None`
/// when no tick passed.
pub fn busy_share(a: (u64, u64), b: (u64, u64)) -> Option<f64> {
    let total = b.1.saturating_sub(a.1);
    (total > 0).then(|| b.0.saturating_sub(a.0) as f64 / total as f64)
}

/// The busy share of CPU `cpu` between two [`proc_stat`] readings; `NaN` when unknown.
pub fn cpu_busy(a: &[(u64, u64)], b: &[(u64, u64)], cpu: usize) -> f64 {
    match (a.get(cpu), b.get(cpu)) {
        (Some(x), Some(y)) => busy_share(*x, *y).unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// The CPU time (user + system) process `pid` has used so far, in seconds, from
/// `/proc/PID/stat`; `None` when it cannot be read (the process is gone).
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(super::footprint::proc_dir(pid).join("stat")).ok()?;
    parse_process_cpu_s(&text)
}

/// utime and stime, fields 14 and 15 of /proc/PID/stat, counted after the parenthesised
/// command name (which may hold spaces); in USER_HZ ticks, which Linux fixes at 100 for /proc.
fn parse_process_cpu_s(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Reads the clocks now; call it on the thread [`Usage::client`] is to count.
pub fn sample() -> Sample {
    Sample {
        at: Instant::now(),
        process_us: cpu_us(UsageWho::RUSAGE_SELF),
        thread_us: cpu_us(UsageWho::RUSAGE_THREAD),
        cpus: proc_stat(),
    }
}

impl Sample {
    /// Seconds from this sample to `later`.
    pub fn seconds_to(&self, later: &Sample) -> f64 {
        later.at.saturating_duration_since(self.at).as_secs_f64()
    }

    /// The cores the sampling thread used from this sample to `later`.
    pub fn thread_cores_to(&self, later: &Sample) -> f64 {
        later.thread_us.saturating_sub(self.thread_us) as f64 / 1e6 / self.seconds_to(later)
    }

    /// CPU `cpu`'s busy share from this sample to `later`; `NaN` when unknown.
    pub fn cpu_busy_to(&self, later: &Sample, cpu: usize) -> f64 {
        cpu_busy(&self.cpus, &later.cpus, cpu)
    }
}

/// What was used from `a` to `b`.
pub fn between(a: &Sample, b: &Sample) -> Usage {
    let wall = b.at.saturating_duration_since(a.at).as_micros().max(1) as f64;
    let client = b.thread_us.saturating_sub(a.thread_us);
    let process = b.process_us.saturating_sub(a.process_us);
    Usage {
        client: client as f64 / wall,
        fleet: process.saturating_sub(client) as f64 / wall,
        busy: a
            .cpus
            .iter()
            .zip(&b.cpus)
            .map(|(x, y)| busy_share(*x, *y).unwrap_or(0.0))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_give_busy_and_total_per_cpu() {
        let text = "cpu  10 0 10 70 10 0 0 0 0 0\n\
                    cpu0 5 0 5 30 10 0 0 0 0 0\n\
                    cpu1 5 0 5 40 0 0 0 0 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_proc_stat(text), vec![(10, 50), (10, 50)]);
    }

    #[test]
    fn process_cpu_time_is_utime_and_stime_after_the_command_name() {
        // A command name with a space and a parenthesis in it.
        let stat = "4242 (volley (x) y) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0";
        assert_eq!(parse_process_cpu_s(stat), Some(4.0));
        assert_eq!(parse_process_cpu_s("garbage"), None);
        assert!(process_cpu_s(std::process::id()).is_some());
    }

    #[test]
    fn fleet_time_is_the_process_time_the_client_thread_did_not_use() {
        let t0 = Instant::now();
        let a = Sample {
            at: t0,
            process_us: 1_000_000,
            thread_us: 400_000,
            cpus: vec![(100, 1000), (50, 1000)],
        };
        let b = Sample {
            at: t0 + std::time::Duration::from_secs(2),
            process_us: 3_000_000,
            thread_us: 1_400_000,
            cpus: vec![(300, 1200), (50, 1200)],
        };
        let u = between(&a, &b);
        assert!((u.client - 0.5).abs() < 1e-9, "{u:?}");
        assert!((u.fleet - 0.5).abs() < 1e-9, "{u:?}");
        assert_eq!(u.busy, vec![1.0, 0.0]);
    }

    #[test]
    fn a_busy_loop_on_this_thread_shows_in_its_clock_and_the_process_clock() {
        let a = sample();
        let give_up = Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        while cpu_us(UsageWho::RUSAGE_THREAD).saturating_sub(a.thread_us) < 20_000
            && Instant::now() < give_up
        {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        let b = sample();
        assert!(b.thread_us - a.thread_us >= 20_000);
        assert!(b.process_us - a.process_us >= b.thread_us - a.thread_us);
    }
}
