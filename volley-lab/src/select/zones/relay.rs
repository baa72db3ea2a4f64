//! The delay relay of `select --zones`: every datagram between a client and a server crosses it,
//! and it holds each one for the one-way delay of its path, in both directions.
//!
//! `tc netem` needs `sch_netem`, which lab machines often lack, and tokio's timers tick in whole
//! milliseconds (far too coarse for 0.25 ms ± 50 µs). So the relay is one dedicated OS thread
//! with non-blocking sockets in an epoll set and a `timerfd` armed at the absolute
//! `CLOCK_MONOTONIC` instant the earliest held datagram is due, less a margin it spins (the
//! timer's recent wake-up latency plus 10 µs, 10 to 100 µs: a wake-up's own latency would
//! otherwise be most of the error); its timer slack is 1 ns
//! (`prctl(PR_SET_TIMERSLACK)`). A wake-up sends every datagram then due, in due order.
//!
//! Each [`Route`] is one listening address of the relay in front of one target: the clients of
//! zone z reach server s's endpoint through the route (z, s, endpoint), whose delay is
//! d(z, zone(s)). The first datagram from a client source opens an upstream socket for that
//! (route, source), so the server sees one stable address per client source and its replies
//! find their way back; replies are held for the same delay and leave from the route's address.
//!
//! Every sent datagram's lateness (send time − due time) is kept (the first
//! [`LATENESS_SAMPLES`]) and [`calibrate`] measures the error end to end, against the nominal
//! delay: both go into the report.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{
    ClockId as TimerClock, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags,
};
use serde::Serialize;

use crate::harness::cpu::thread_cpu_us;
use crate::harness::process::pin_to;

/// Lateness samples kept per relay (each 4 bytes).
pub const LATENESS_SAMPLES: usize = 2_000_000;

/// One listening address of the relay: what it forwards to, after how long.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub target: SocketAddr,
    pub delay: Duration,
}

/// What a relay measured of itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayStats {
    /// Datagrams sent on (both directions).
    pub forwarded: u64,
    /// Datagrams the kernel refused to take at once (dropped: counted, never waited for).
    pub send_dropped: u64,
    /// Per datagram (the first [`LATENESS_SAMPLES`]): send time − due time, ns.
    #[serde(skip)]
    pub lateness_ns: Vec<u32>,
}

/// A running relay, owned by its thread.
pub struct Relay {
    /// One listening address per route, in the routes' order.
    pub addrs: Vec<SocketAddr>,
    /// The relay thread's CPU time so far, µs (refreshed every 20 ms).
    pub cpu_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<RelayStats>>>,
}

impl Relay {
    /// Binds one address per route on 127.0.0.1 and starts the relay thread (pinned to CPU
    /// `pin` when given).
    pub fn start(routes: &[Route], pin: Option<usize>) -> anyhow::Result<Relay> {
        let mut fronts = Vec::with_capacity(routes.len());
        let mut addrs = Vec::with_capacity(routes.len());
        for _ in routes {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            addrs.push(s.local_addr()?);
            fronts.push(s);
        }
        let routes = routes.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let cpu_us = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, cpu_us) = (Arc::clone(&stop), Arc::clone(&cpu_us));
            std::thread::Builder::new()
                .name("lab-relay".into())
                .spawn(move || {
                    if let Some(cpu) = pin {
                        pin_to(cpu);
                    }
                    // Precise wake-ups: the kernel may not defer the timer to batch it.
                    let _ = nix::sys::prctl::set_timerslack(1);
                    relay_loop(fronts, routes, &stop, &cpu_us)
                })
                .context("the relay thread did not start")?
        };
        Ok(Relay {
            addrs,
            cpu_us,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the relay; returns what it measured.
    pub fn stop(mut self) -> anyhow::Result<RelayStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => Ok(t
                .join()
                .map_err(|_| anyhow::anyhow!("the relay thread panicked"))??),
            None => Ok(RelayStats::default()),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `CLOCK_MONOTONIC` now, ns.
fn mono_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// Where a held datagram leaves from.
#[derive(Debug, Clone, Copy)]
enum Out {
    /// Route k's listening socket (a reply on its way back to a client).
    Front(usize),
    /// Upstream socket j (a client's datagram on its way to the server).
    Up(usize),
}

/// A datagram held until `due` (ns, `CLOCK_MONOTONIC`); `seq` keeps arrival order among equal
/// due times.
struct Held {
    due: u64,
    seq: u64,
    out: Out,
    dest: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // The heap is a max-heap: the earliest due compares greatest.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

const TIMER: u64 = u64::MAX;
/// How early the timer fires before a datagram is due (the relay spins the rest): the timer's
/// recent wake-up latency plus 10 µs, within these bounds. Spinning costs CPU on every wake-up
/// (thousands a second under load), so the margin stays small: a busy relay wakes fast and
/// spins little; an idle one (a CPU in a deep sleep state) is late by what exceeds 100 µs.
const SPIN_MIN_NS: u64 = 10_000;
const SPIN_MAX_NS: u64 = 100_000;
const UP: u64 = 1 << 32;

fn relay_loop(
    fronts: Vec<UdpSocket>,
    routes: Vec<Route>,
    stop: &AtomicBool,
    cpu_us: &AtomicU64,
) -> io::Result<RelayStats> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let timer = TimerFd::new(
        TimerClock::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?;
    epoll.add(timer.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TIMER))?;
    for (k, s) in fronts.iter().enumerate() {
        epoll.add(s.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, k as u64))?;
    }
    let delays: Vec<u64> = routes.iter().map(|r| r.delay.as_nanos() as u64).collect();
    let mut ups: Vec<(UdpSocket, usize, SocketAddr)> = Vec::new();
    let mut up_of: HashMap<(usize, SocketAddr), usize> = HashMap::new();
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut stats = RelayStats::default();
    let mut seq = 0u64;
    let mut armed: Option<u64> = None;
    // When the armed timer was to fire, and the smoothed lateness of its wake-ups (ns).
    let mut fire_at = 0u64;
    let mut wake_late = 20_000u64;
    let mut spin = SPIN_MIN_NS;
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = vec![0u8; 65_536];
    let mut cpu_read_at = 0u64;
    loop {
        // The timer fires `spin` early: spin the rest of the way to the earliest due time
        // (a wake-up's own latency is most of the error otherwise).
        let mut now = mono_ns();
        if let Some(due) = held.peek().map(|h| h.due)
            && due > now
            && due - now <= spin
        {
            while now < due {
                std::hint::spin_loop();
                now = mono_ns();
            }
        }
        // Send everything due.
        while held.peek().is_some_and(|h| h.due <= now) {
            let Some(h) = held.pop() else { break };
            let sock = match h.out {
                Out::Front(k) => &fronts[k],
                Out::Up(j) => &ups[j].0,
            };
            // Lateness at the send (on loopback the send call itself delivers the datagram to
            // its receiver: that cost is the network's, and the calibration counts it).
            now = mono_ns();
            if stats.lateness_ns.len() < LATENESS_SAMPLES {
                stats
                    .lateness_ns
                    .push(now.saturating_sub(h.due).min(u32::MAX as u64) as u32);
            }
            match sock.send_to(&h.data, h.dest) {
                Ok(_) => stats.forwarded += 1,
                Err(_) => stats.send_dropped += 1,
            }
            now = mono_ns();
        }
        if now.saturating_sub(cpu_read_at) > 20_000_000 {
            cpu_us.store(thread_cpu_us(), Ordering::Relaxed);
            cpu_read_at = now;
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(stats);
        }
        let next = held.peek().map(|h| h.due);
        if next != armed {
            match next {
                Some(due) => {
                    let due = due.saturating_sub(spin);
                    fire_at = due;
                    let at =
                        TimeSpec::new((due / 1_000_000_000) as i64, (due % 1_000_000_000) as i64);
                    timer.set(
                        Expiration::OneShot(at),
                        TimerSetTimeFlags::TFD_TIMER_ABSTIME,
                    )?;
                }
                None => timer.unset()?,
            }
            armed = next;
        }
        // Wake at the timer, a datagram, or every 50 ms to see the stop flag.
        let n = match epoll.wait(&mut events, EpollTimeout::from(50u16)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == TIMER {
                // Drain the expiration count (EAGAIN when it was already read).
                let _ = timer.wait();
                armed = None;
                let late = mono_ns().saturating_sub(fire_at).min(SPIN_MAX_NS);
                wake_late = (wake_late * 7 + late) / 8;
                spin = (wake_late + 10_000).clamp(SPIN_MIN_NS, SPIN_MAX_NS);
                continue;
            }
            if token >= UP {
                let j = (token - UP) as usize;
                let (k, src) = (ups[j].1, ups[j].2);
                while let Ok((len, _)) = ups[j].0.recv_from(&mut buf) {
                    let at = mono_ns();
                    seq += 1;
                    held.push(Held {
                        due: at + delays[k],
                        seq,
                        out: Out::Front(k),
                        dest: src,
                        data: buf[..len].to_vec(),
                    });
                }
                continue;
            }
            let k = token as usize;
            loop {
                let (len, src) = match fronts[k].recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error reported on the socket: nothing to forward.
                    Err(_) => continue,
                };
                let at = mono_ns();
                let j = match up_of.get(&(k, src)) {
                    Some(&j) => j,
                    None => {
                        let s = UdpSocket::bind("127.0.0.1:0")?;
                        s.set_nonblocking(true)?;
                        let j = ups.len();
                        epoll.add(
                            s.as_fd(),
                            EpollEvent::new(EpollFlags::EPOLLIN, UP + j as u64),
                        )?;
                        ups.push((s, k, src));
                        up_of.insert((k, src), j);
                        j
                    }
                };
                seq += 1;
                held.push(Held {
                    due: at + delays[k],
                    seq,
                    out: Out::Up(j),
                    dest: routes[k].target,
                    data: buf[..len].to_vec(),
                });
            }
        }
    }
}

/// Percentiles of the relay's error, µs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ErrorStats {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl ErrorStats {
    /// From errors in ns (any order).
    pub fn of_ns(mut ns: Vec<f64>) -> ErrorStats {
        ns.sort_by(f64::total_cmp);
        let q = |p: f64| crate::harness::stats::quantile(&ns, p) / 1e3;
        ErrorStats {
            samples: ns.len(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: ns.last().map_or(f64::NAN, |x| x / 1e3),
        }
    }
}

/// The relay's end-to-end error against the nominal delay: `rounds` echoes straight to an echo
/// thread give the loopback's own round trip; as many through a relay of `delay` each way give
/// `2 × delay + error`. The error of a round trip (two relay passes) is its round trip minus
/// `2 × delay` minus the median straight round trip.
pub fn calibrate(delay: Duration, rounds: usize, pin: Option<usize>) -> anyhow::Result<ErrorStats> {
    let echo = UdpSocket::bind("127.0.0.1:0")?;
    echo.set_read_timeout(Some(Duration::from_millis(20)))?;
    let echo_addr = echo.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo_thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("lab-relay-echo".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = echo.recv_from(&mut buf) {
                        let _ = echo.send_to(&buf[..n], from);
                    }
                }
            })?
    };
    let relay = Relay::start(
        &[Route {
            target: echo_addr,
            delay,
        }],
        pin,
    )?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_millis(500) + delay * 4))?;
    let round = |to: SocketAddr| -> anyhow::Result<u64> {
        let t = mono_ns();
        client.send_to(&t.to_be_bytes(), to)?;
        let mut buf = [0u8; 64];
        loop {
            let (n, _) = client.recv_from(&mut buf)?;
            if n == 8 && buf[..8] == t.to_be_bytes() {
                return Ok(mono_ns() - t);
            }
        }
    };
    let mut straight = Vec::with_capacity(rounds);
    let mut relayed = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        straight.push(round(echo_addr)? as f64);
        relayed.push(round(relay.addrs[0])? as f64);
    }
    relay.stop()?;
    stop.store(true, Ordering::Relaxed);
    let _ = echo_thread.join();
    let base = crate::harness::stats::median(straight);
    let nominal = 2.0 * delay.as_nanos() as f64;
    Ok(ErrorStats::of_ns(
        relayed.iter().map(|r| r - nominal - base).collect(),
    ))
}
