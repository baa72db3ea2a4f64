//! The load generator: ≥ 16 source ports on one thread, batched I/O (`recvmmsg`/`sendmmsg`
//! through `volley::unstable::udp`), in closed-loop (a window of requests in flight per port) or open-loop
//! (as fast as the socket takes them) mode, with an HDR histogram of reply latencies.
//!
//! Requests carry their send time (µs since the run's start) in bytes the reply returns: a
//! PROBE's tag, an echo's first 8 bytes, a session datagram's first 8 bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{RngCore, SeedableRng};
use tokio::net::UdpSocket;
use volley::unstable::udp::{self, RecvBatch, SendBatch};
use volley_proto::client::{ClientEvent, Connection, PoolState};
use volley_proto::packet::{Init, Packet, Probe, Tag};
use volley_proto::{ClientConfig, PublicKey};

/// What the generator sends.
#[derive(Debug, Clone)]
pub enum Request {
    /// A datagram of this many bytes for a bare echo server.
    Echo(usize),
    /// A 256-byte PROBE for service `echo`.
    Probe,
    /// An INIT whose cookie is a real one with its MAC flipped: it passes every check a server
    /// makes before the MAC (length, key id, age) and fails the MAC — the costliest forgery that
    /// creates no state. `cookie` comes from a real OFFER.
    ForgedInit { cookie: Vec<u8> },
}

/// What one port measured.
#[derive(Debug)]
pub struct PortResult {
    pub replies: u64,
    pub sent: u64,
    pub lost_windows: u64,
    pub latency: Histogram<u64>,
}

impl PortResult {
    fn new() -> Self {
        Self {
            replies: 0,
            sent: 0,
            lost_windows: 0,
            latency: histogram(),
        }
    }
}

/// The shared clock and phase of one run.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub start: Instant,
    /// Replies before this are warm-up.
    pub measure_from: Instant,
    pub end: Instant,
}

impl Phase {
    fn stamp(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_micros() as u64
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Writes one request stamped `stamp` into `buf`; returns its length.
fn write_request(req: &Request, stamp: u64, rng: &mut impl RngCore, buf: &mut [u8]) -> usize {
    match req {
        Request::Echo(len) => {
            let len = (*len).clamp(8, buf.len());
            buf[..8].copy_from_slice(&stamp.to_be_bytes());
            len
        }
        Request::Probe => {
            let mut tag = [0u8; 16];
            tag[..8].copy_from_slice(&stamp.to_be_bytes());
            rng.fill_bytes(&mut tag[8..]);
            Probe {
                tag: Tag(tag),
                service: b"echo",
            }
            .encode(buf, volley_proto::PROBE_MIN_LEN)
            .unwrap_or(0)
        }
        Request::ForgedInit { cookie } => {
            let mut tag = [0u8; 16];
            rng.fill_bytes(&mut tag);
            let mut noise = [0u8; 52];
            rng.fill_bytes(&mut noise);
            Init {
                tag: Tag(tag),
                service: b"echo",
                cookie,
                noise: &noise,
            }
            .encode(buf)
            .unwrap_or(0)
        }
    }
}

/// The send stamp a reply carries, if it is a reply to `req`.
fn reply_stamp(req: &Request, reply: &[u8]) -> Option<u64> {
    match req {
        Request::Echo(_) => reply
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap())),
        Request::Probe => match Packet::decode(reply) {
            Ok(Packet::Offer(o)) => Some(u64::from_be_bytes(o.tag.0[..8].try_into().unwrap())),
            _ => None,
        },
        Request::ForgedInit { .. } => None,
    }
}

/// Closed loop on one port: `window` requests in flight; each reply is answered by a new
/// request. A window that hears nothing for 50 ms is counted lost and sent again.
pub async fn closed_loop(
    socket: UdpSocket,
    server: SocketAddr,
    req: Request,
    window: usize,
    phase: Phase,
) -> PortResult {
    let mut rng = rand::thread_rng();
    // GRO on the generator's receive side only cuts its own cost; its sends stay one datagram
    // each (no GSO), as independent clients' would be.
    let mut rx = RecvBatch::with_gro(false, udp::enable_gro(&socket));
    let mut tx = SendBatch::default();
    let mut res = PortResult::new();
    let mut outstanding = 0usize;
    let mut last_reply = Instant::now();
    loop {
        let now = Instant::now();
        if now >= phase.end {
            break;
        }
        if outstanding == 0 || now.duration_since(last_reply) > Duration::from_millis(50) {
            if outstanding > 0 {
                res.lost_windows += 1;
            }
            outstanding = 0;
            last_reply = now;
            while outstanding < window {
                if tx.is_full() {
                    tx.flush(&socket).await;
                }
                let n = write_request(&req, phase.stamp(now), &mut rng, tx.slot());
                tx.commit(n, server, None);
                outstanding += 1;
                res.sent += 1;
            }
            tx.flush(&socket).await;
        }
        tokio::select! {
            r = socket.readable() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
        }
        let Ok(_) = rx.recv(&socket) else { continue };
        let now = Instant::now();
        let stamp_now = phase.stamp(now);
        for (_, reply) in rx.iter() {
            let Some(stamp) = reply_stamp(&req, reply) else {
                continue;
            };
            last_reply = now;
            outstanding = outstanding.saturating_sub(1);
            if now >= phase.measure_from {
                res.replies += 1;
                let _ = res.latency.record(stamp_now.saturating_sub(stamp).max(1));
            }
            if outstanding < window {
                if tx.is_full() {
                    tx.flush(&socket).await;
                }
                let n = write_request(&req, stamp_now, &mut rng, tx.slot());
                tx.commit(n, server, None);
                outstanding += 1;
                res.sent += 1;
            }
        }
        tx.flush(&socket).await;
    }
    res
}

/// Open loop on one port: batches of requests as fast as the socket takes them, until the end.
/// Replies are read and discarded (the server counts what it handled).
pub async fn open_loop(socket: UdpSocket, server: SocketAddr, req: Request, phase: Phase) -> u64 {
    let mut rng = rand::thread_rng();
    // GRO on the generator's receive side only cuts its own cost; its sends stay one datagram
    // each (no GSO), as independent clients' would be.
    let mut rx = RecvBatch::with_gro(false, udp::enable_gro(&socket));
    let mut tx = SendBatch::default();
    let mut sent = 0u64;
    while Instant::now() < phase.end {
        let stamp = phase.stamp(Instant::now());
        while !tx.is_full() {
            let n = write_request(&req, stamp, &mut rng, tx.slot());
            tx.commit(n, server, None);
            sent += 1;
        }
        tx.flush(&socket).await;
        // Drain replies so that the socket's buffer does not hold the server back.
        while matches!(rx.recv(&socket), Ok(n) if n > 0) {}
        tokio::task::yield_now().await;
    }
    sent
}

/// Fetches one real cookie from `server` (for forged INITs) with a PROBE from `socket`.
pub async fn fetch_cookie(socket: &UdpSocket, server: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let mut buf = [0u8; volley_proto::MAX_DATAGRAM_LEN];
    let n = write_request(&Request::Probe, 0, &mut rand::thread_rng(), &mut buf);
    for _ in 0..20 {
        socket.send_to(&buf[..n], server).await?;
        let mut reply = [0u8; volley_proto::MAX_DATAGRAM_LEN];
        if let Ok(Ok((m, _))) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut reply)).await
            && let Ok(Packet::Offer(o)) = Packet::decode(&reply[..m])
        {
            let mut cookie = o.cookie.to_vec();
            // Flip the MAC's last byte: genuine length, key id and age; a MAC that fails.
            if let Some(last) = cookie.last_mut() {
                *last ^= 0xff;
            }
            return Ok(cookie);
        }
    }
    anyhow::bail!("no OFFER from {server}")
}

/// Closed loop over one volley session per port: `window` datagrams of `len` bytes in flight,
/// each echo answered by a new datagram. The session is opened first (probe race with one
/// server, Noise handshake) on the same socket.
pub async fn session_loop(
    socket: UdpSocket,
    server: SocketAddr,
    key: PublicKey,
    len: usize,
    window: usize,
    phase: Phase,
) -> anyhow::Result<PortResult> {
    let rng = Box::new(rand::rngs::StdRng::from_entropy());
    let mut pool = PoolState::default();
    let mut conn = Connection::new(
        Instant::now(),
        ClientConfig::new(vec![key]),
        vec![server],
        rng,
        &mut pool,
    );
    // GRO on the generator's receive side only cuts its own cost; its sends stay one datagram
    // each (no GSO), as independent clients' would be.
    let mut rx = RecvBatch::with_gro(false, udp::enable_gro(&socket));
    let mut tx = SendBatch::default();
    let mut res = PortResult::new();
    let mut payload = vec![0u8; len.max(8)];
    let mut established = false;
    let mut outstanding = 0usize;
    let mut last_reply = Instant::now();
    let handshake_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        if now >= phase.end {
            break;
        }
        if !established && now > handshake_deadline {
            anyhow::bail!("no session with {server}");
        }
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now, &mut pool);
        }
        while let Some(event) = conn.poll_event() {
            match event {
                ClientEvent::Established { .. } => established = true,
                ClientEvent::Datagram(d) => {
                    let Some(stamp) = d
                        .get(..8)
                        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
                    else {
                        continue;
                    };
                    last_reply = now;
                    outstanding = outstanding.saturating_sub(1);
                    if now >= phase.measure_from {
                        res.replies += 1;
                        let _ = res
                            .latency
                            .record(phase.stamp(now).saturating_sub(stamp).max(1));
                    }
                }
                ClientEvent::Failed(e) => anyhow::bail!("session with {server} failed: {e}"),
                _ => {}
            }
        }
        if established {
            if outstanding > 0 && now.duration_since(last_reply) > Duration::from_millis(50) {
                res.lost_windows += 1;
                outstanding = 0;
                last_reply = now;
            }
            while outstanding < window {
                payload[..8].copy_from_slice(&phase.stamp(now).to_be_bytes());
                if conn.send_datagram(&payload).is_err() {
                    break;
                }
                outstanding += 1;
                res.sent += 1;
            }
        }
        loop {
            if tx.is_full() {
                tx.flush(&socket).await;
            }
            let Some(t) = conn.poll_transmit(now, tx.slot()) else {
                break;
            };
            tx.commit(t.size, t.destination, None);
        }
        tx.flush(&socket).await;
        tokio::select! {
            r = socket.readable() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
        }
        if rx.recv(&socket).is_ok() {
            let now = Instant::now();
            for (meta, d) in rx.iter() {
                conn.handle(now, meta.from, d, &mut pool);
            }
        }
    }
    Ok(res)
}

/// Every port's results, merged into one.
pub fn merge(results: Vec<PortResult>) -> PortResult {
    let mut m = PortResult::new();
    for r in results {
        m.replies += r.replies;
        m.sent += r.sent;
        m.lost_windows += r.lost_windows;
        let _ = m.latency.add(&r.latency);
    }
    m
}
