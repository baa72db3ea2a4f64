//! The abuse cases (A5, `docs/BENCHMARKS.md` §1): `abuse` floods one volley server with PROBEs
//! from one source (127.0.0.2) and with one INIT replayed from another (127.0.0.4) — a genuine
//! cookie with a Noise message that fails, so that each replay costs the server a handshake
//! attempt unless its source's limit stops it — both at the generator's full rate, while other
//! sources (127.0.0.10–17) probe at a steady 500/s each and a client (127.0.0.1) connects
//! over and over. `abuse-clean` runs the same other sources without the two floods.
//!
//! Reported: the flooder's OFFERs per second and the replayer's handshake attempts per second
//! against their sources' limits (1,000/s each by default), the other sources' share of PROBEs
//! answered, and the connects' latency (the `abuse` ÷ `abuse-clean` p99 ratio).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::UdpSocket;
use volley::PublicKey;
use volley::unstable::udp::{RecvBatch, SendBatch};
use volley_proto::client::{Connection, PoolState};
use volley_proto::packet::{Packet, Probe, Tag};
use volley_proto::server::AdmissionConfig;
use volley_proto::{ClientConfig, MAX_DATAGRAM_LEN};

use super::connect;
use super::load::Phase;

/// Sources that probe like well-behaved clients, and the rate of each.
const PROBERS: u8 = 8;
const PROBES_PER_SEC: u64 = 500;

/// What an abuse case measured, beside its connects.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AbuseFigures {
    /// OFFERs the PROBE flooder received per second (measured period), and the per-source
    /// PROBE rate it is held to.
    pub flooder_offers_per_sec: f64,
    pub probe_limit_per_sec: f64,
    /// PROBEs the flooder sent per second.
    pub flooder_sent_per_sec: f64,
    /// Handshakes the server attempted for the INIT replayer per second (its replays that
    /// reached Noise and failed there), and the per-source INIT rate it is held to.
    pub replayer_handshakes_per_sec: f64,
    pub init_limit_per_sec: f64,
    /// INITs the replayer sent per second.
    pub replayer_sent_per_sec: f64,
    /// The other sources' PROBEs sent in the measured period, and the share answered.
    pub others_probes: u64,
    pub others_answered: f64,
}

/// What [`run`] hands back to the generator.
pub(super) struct AbuseRun {
    pub(super) connects: connect::Connects,
    pub(super) figures: AbuseFigures,
    /// Datagrams the floods sent.
    pub(super) flood_sent: u64,
}

/// Runs the other sources, and with `flood` the two floods, against `server` for `phase`.
/// The replayer's handshakes per second are left to the caller, which reads the server's count
/// of failed handshakes at its marks (only the replayer's fail).
pub(super) async fn run(
    server: SocketAddr,
    key: PublicKey,
    phase: Phase,
    flood: bool,
) -> anyhow::Result<AbuseRun> {
    let mut probers = Vec::new();
    for i in 0..PROBERS {
        let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 10 + i], 0))).await?;
        probers.push(tokio::task::spawn_local(paced_probes(
            socket,
            server,
            PROBES_PER_SEC,
            phase,
        )));
    }
    let mut floods = Vec::new();
    if flood {
        let flooder = UdpSocket::bind("127.0.0.2:0").await?;
        floods.push(tokio::task::spawn_local(counting_flood(
            flooder,
            server,
            probe(0, 0),
            true,
            phase,
        )));
        let replayer = UdpSocket::bind("127.0.0.4:0").await?;
        let mut init = genuine_init(&replayer, server, key).await?;
        // Its Noise message's tag: the handshake fails, the cookie (checked first) stays good.
        if let Some(last) = init.last_mut() {
            *last ^= 0x55;
        }
        floods.push(tokio::task::spawn_local(counting_flood(
            replayer, server, init, false, phase,
        )));
    }
    let connects = connect::volley_connects(vec![server], key, phase.measure_from, phase.end).await;
    let secs = phase.end.duration_since(phase.measure_from).as_secs_f64();
    let mut figures = AbuseFigures {
        probe_limit_per_sec: f64::from(AdmissionConfig::default().probes_per_source_per_sec),
        init_limit_per_sec: f64::from(AdmissionConfig::default().inits_per_source_per_sec),
        ..AbuseFigures::default()
    };
    let mut answered = 0;
    for p in probers {
        let (sent, got) = p.await??;
        figures.others_probes += sent;
        answered += got;
    }
    figures.others_answered = answered as f64 / figures.others_probes.max(1) as f64;
    let mut flood_sent = 0;
    for (i, f) in floods.into_iter().enumerate() {
        let (sent, measured_sent, replies) = f.await??;
        flood_sent += sent;
        if i == 0 {
            figures.flooder_offers_per_sec = replies as f64 / secs;
            figures.flooder_sent_per_sec = measured_sent as f64 / secs;
        } else {
            figures.replayer_sent_per_sec = measured_sent as f64 / secs;
        }
    }
    Ok(AbuseRun {
        connects,
        figures,
        flood_sent,
    })
}

/// A 256-byte PROBE for `echo` whose tag starts with `stamp` (then `salt`).
fn probe(stamp: u64, salt: u64) -> Vec<u8> {
    let mut tag = [0u8; 16];
    tag[..8].copy_from_slice(&stamp.to_be_bytes());
    tag[8..].copy_from_slice(&salt.to_be_bytes());
    let mut buf = vec![0u8; volley_proto::PROBE_MIN_LEN];
    let n = Probe {
        tag: Tag(tag),
        service: b"echo",
    }
    .encode(&mut buf, volley_proto::PROBE_MIN_LEN)
    .unwrap_or(0);
    buf.truncate(n);
    buf
}

/// PROBEs at `per_sec`, in ticks of 10 ms, each stamped with its send time; the answers are
/// matched by stamp. Returns the PROBEs sent in the measured period (up to 200 ms before its
/// end, so that their answers can come) and how many of those were answered.
async fn paced_probes(
    socket: UdpSocket,
    server: SocketAddr,
    per_sec: u64,
    phase: Phase,
) -> anyhow::Result<(u64, u64)> {
    let tick = Duration::from_millis(10);
    let per_tick = (per_sec / 100).max(1);
    let stop_sending = phase.end - Duration::from_millis(200);
    let stamp = |t: Instant| t.saturating_duration_since(phase.start).as_micros() as u64;
    let (from, until) = (stamp(phase.measure_from), stamp(stop_sending));
    let mut rx = RecvBatch::new(false);
    let mut tx = SendBatch::default();
    let mut next = Instant::now();
    let (mut sent, mut answered, mut salt) = (0u64, 0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= phase.end {
            break;
        }
        if now >= next && now < stop_sending {
            for _ in 0..per_tick {
                salt += 1;
                let p = probe(stamp(now), salt);
                tx.slot()[..p.len()].copy_from_slice(&p);
                tx.commit(p.len(), server, None);
            }
            tx.flush(&socket).await;
            if now >= phase.measure_from {
                sent += per_tick;
            }
            next += tick;
        }
        let wait = next.max(now).min(phase.end) - now;
        tokio::select! {
            r = socket.readable() => if r.is_err() { break },
            _ = tokio::time::sleep(wait) => continue,
        }
        while let Ok(n) = rx.recv(&socket) {
            if n == 0 {
                break;
            }
            for (_, reply) in rx.iter() {
                if let Ok(Packet::Offer(o)) = Packet::decode(reply) {
                    let s = u64::from_be_bytes(o.tag.0[..8].try_into().unwrap_or_default());
                    if (from..until).contains(&s) {
                        answered += 1;
                    }
                }
            }
        }
    }
    Ok((sent, answered))
}

/// `datagram` as fast as the socket takes it, until the end; with `fresh_tags` each copy a
/// PROBE with a tag of its own. Returns the datagrams sent in all and in the measured period,
/// and the answers received in the measured period.
async fn counting_flood(
    socket: UdpSocket,
    server: SocketAddr,
    datagram: Vec<u8>,
    fresh_tags: bool,
    phase: Phase,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut rx = RecvBatch::new(false);
    let mut tx = SendBatch::default();
    let (mut sent, mut measured, mut replies, mut salt) = (0u64, 0u64, 0u64, 0u64);
    while Instant::now() < phase.end {
        let now = Instant::now();
        let mut batch = 0;
        while !tx.is_full() {
            let slot = tx.slot();
            slot[..datagram.len()].copy_from_slice(&datagram);
            if fresh_tags {
                salt += 1;
                slot[2 + 8..2 + 16].copy_from_slice(&salt.to_be_bytes());
            }
            tx.commit(datagram.len(), server, None);
            batch += 1;
        }
        tx.flush(&socket).await;
        sent += batch;
        if now >= phase.measure_from {
            measured += batch;
        }
        while let Ok(n) = rx.recv(&socket) {
            if n == 0 {
                break;
            }
            if Instant::now() >= phase.measure_from {
                replies += rx.iter().count() as u64;
            }
        }
        tokio::task::yield_now().await;
    }
    Ok((sent, measured, replies))
}

/// A genuine INIT to `server` from `socket`, never sent: a race of one with a real client
/// connection, its OFFER received, its INIT written.
async fn genuine_init(
    socket: &UdpSocket,
    server: SocketAddr,
    key: PublicKey,
) -> anyhow::Result<Vec<u8>> {
    let mut pool = PoolState::default();
    let rng = Box::new(<rand::rngs::StdRng as rand::SeedableRng>::from_entropy());
    let mut conn = Connection::new(
        Instant::now(),
        ClientConfig::new(vec![key]),
        vec![server],
        rng,
        &mut pool,
    );
    let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
    let t = conn
        .poll_transmit(Instant::now(), &mut buf)
        .context("no PROBE")?;
    for _ in 0..20 {
        socket.send_to(&buf[..t.size], server).await?;
        let mut reply = [0u8; MAX_DATAGRAM_LEN];
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut reply)).await
        {
            conn.handle(Instant::now(), from, &reply[..n], &mut pool);
            let mut init = vec![0u8; MAX_DATAGRAM_LEN];
            while let Some(t) = conn.poll_transmit(Instant::now(), &mut init) {
                if init.get(1) == Some(&volley_proto::packet::kind::INIT) {
                    init.truncate(t.size);
                    return Ok(init);
                }
            }
        }
    }
    anyhow::bail!("no OFFER from {server}")
}
