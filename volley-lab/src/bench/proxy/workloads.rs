//! What the client host sends in each case, directly or through the proxies: UDP requests in a
//! closed loop, TCP requests on open connections, a new connection per request, and bulk
//! writes; each counts what completed in the measured period.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// What a workload counted in the measured period.
#[derive(Debug, Default)]
pub(super) struct Counted {
    pub(super) ops: u64,
    pub(super) lost: u64,
    /// Latencies in µs, measured cases only.
    pub(super) latencies: Vec<f64>,
}

impl Counted {
    /// What every task counted, added up.
    async fn joined(tasks: Vec<JoinHandle<Counted>>) -> anyhow::Result<Counted> {
        let mut total = Counted::default();
        for t in tasks {
            let c = t.await?;
            total.ops += c.ops;
            total.lost += c.lost;
            total.latencies.extend(c.latencies);
        }
        Ok(total)
    }
}

/// The measured period of a case: what happens from `from` to `end` counts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Period {
    pub(super) from: Instant,
    pub(super) end: Instant,
}

impl Period {
    fn counts(&self, t: Instant) -> bool {
        t >= self.from && t < self.end
    }
}

/// Closed loop over `flows` UDP sockets with `window` requests in flight each; a window that
/// hears nothing for 200 ms is refilled (the loss counted).
pub(super) async fn udp_rate(
    target: SocketAddr,
    flows: usize,
    window: usize,
    payload: usize,
    period: Period,
) -> anyhow::Result<Counted> {
    let mut tasks = Vec::new();
    for _ in 0..flows {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(target).await?;
        tasks.push(tokio::spawn(async move {
            let mut c = Counted::default();
            // Room for an answer of any size the case sends (9,000-byte datagrams and up).
            let mut buf = vec![0u8; payload.max(2048) + 1];
            let mut req = vec![0u8; payload];
            // Each request carries when it was sent (ns since the period's start).
            let stamp = |req: &mut Vec<u8>| {
                let ns = period.from.elapsed().as_nanos() as u64;
                let ns = if Instant::now() < period.from { 0 } else { ns };
                if req.len() >= 8 {
                    req[..8].copy_from_slice(&ns.to_le_bytes());
                }
            };
            for _ in 0..window {
                stamp(&mut req);
                let _ = socket.send(&req).await;
            }
            while Instant::now() < period.end {
                match tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
                {
                    Ok(Ok(n)) => {
                        let now = Instant::now();
                        if period.counts(now) {
                            c.ops += 1;
                            if window == 1 && n >= 8 && payload >= 8 {
                                let sent = u64::from_le_bytes(buf[..8].try_into().unwrap());
                                let at = period.from.elapsed().as_nanos() as u64;
                                if sent > 0 && at >= sent {
                                    c.latencies.push((at - sent) as f64 / 1e3);
                                }
                            }
                        }
                        stamp(&mut req);
                        let _ = socket.send(&req).await;
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        c.lost += 1;
                        for _ in 0..window {
                            stamp(&mut req);
                            let _ = socket.send(&req).await;
                        }
                    }
                }
            }
            c
        }));
    }
    Counted::joined(tasks).await
}

/// `conns` connections, each with one request of `payload` bytes in flight; latency recorded.
pub(super) async fn tcp_rate(
    target: SocketAddr,
    conns: usize,
    payload: usize,
    period: Period,
) -> anyhow::Result<Counted> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = TcpStream::connect(target).await?;
        conn.set_nodelay(true)?;
        tasks.push(tokio::spawn(async move {
            let mut c = Counted::default();
            let req = vec![7u8; payload];
            let mut back = vec![0u8; payload];
            while Instant::now() < period.end {
                let t = Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(5), async {
                    conn.write_all(&req).await?;
                    conn.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(ok, Ok(Ok(()))) {
                    c.lost += 1;
                    break;
                }
                let now = Instant::now();
                if period.counts(now) {
                    c.ops += 1;
                    c.latencies.push((now - t).as_secs_f64() * 1e6);
                }
            }
            c
        }));
    }
    let mut total = Counted::joined(tasks).await?;
    if conns > 1 {
        total.latencies.clear(); // under load: not the added latency of one request
    }
    Ok(total)
}

/// A new connection per request, one at a time (at most 3,000 in the measured period, so that
/// closed connections waiting out TIME_WAIT stay few).
pub(super) async fn tcp_connects(
    target: SocketAddr,
    payload: usize,
    period: Period,
) -> anyhow::Result<Counted> {
    let mut c = Counted::default();
    let req = vec![7u8; payload];
    let mut back = vec![0u8; payload];
    while Instant::now() < period.end && c.ops < 3_000 {
        let t = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = TcpStream::connect(target).await?;
            conn.set_nodelay(true)?;
            conn.write_all(&req).await?;
            conn.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(())
        })
        .await;
        let now = Instant::now();
        if !matches!(ok, Ok(Ok(()))) {
            c.lost += 1;
            continue;
        }
        if period.counts(now) {
            c.ops += 1;
            c.latencies.push((now - t).as_secs_f64() * 1e6);
        }
    }
    Ok(c)
}

/// `conns` connections writing 64 KiB at a time until the period ends.
pub(super) async fn bulk(
    target: SocketAddr,
    conns: usize,
    period: Period,
) -> anyhow::Result<Counted> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = TcpStream::connect(target).await?;
        tasks.push(tokio::spawn(async move {
            let chunk = vec![0x5au8; 64 * 1024];
            while Instant::now() < period.end {
                if conn.write_all(&chunk).await.is_err() {
                    return 1u64;
                }
            }
            0
        }));
    }
    let mut c = Counted::default();
    for t in tasks {
        c.lost += t.await?;
    }
    Ok(c)
}
