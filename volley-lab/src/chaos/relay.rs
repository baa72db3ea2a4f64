//! A seeded UDP fault relay: netem's model per direction — delay, jitter (so reordering), loss,
//! duplication — plus a blackhole switch, between clients and one server.
//!
//! The relay listens on its own address; clients send there as if it were the server. Each client
//! source address gets an upstream socket of its own towards the server (so the server tells
//! clients apart by the relay's ports), and whatever the server sends to that socket goes back to
//! the client from the relay's address. Every datagram in either direction is dropped with the
//! loss probability, delivered twice with the duplication probability, and delivered after the
//! delay plus a uniform jitter (two datagrams whose jitters differ by more than their spacing
//! arrive swapped: netem's reordering by jitter).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;

/// One direction's impairments.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Netem {
    /// One-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter`.
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
}

/// What a relay does now; change it while it runs.
#[derive(Debug, Default)]
pub struct RelayControl {
    /// Client → server.
    pub up: Mutex<Netem>,
    /// Server → client.
    pub down: Mutex<Netem>,
    /// Drop everything both ways (a partition, or a server that vanished without a word).
    pub blackhole: AtomicBool,
    /// Datagrams relayed (after loss), both ways.
    pub delivered: AtomicU64,
    /// Datagrams dropped (loss or blackhole), both ways.
    pub dropped: AtomicU64,
}

impl RelayControl {
    /// Both directions set to `netem`.
    pub fn set(&self, netem: Netem) {
        *self.up.lock().unwrap_or_else(|e| e.into_inner()) = netem;
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = netem;
    }
}

/// A running relay: where clients send, and its control.
#[derive(Debug, Clone)]
pub struct Relay {
    pub addr: SocketAddr,
    pub control: Arc<RelayControl>,
}

/// Starts a relay on 127.0.0.1 towards `server`, with its own seed.
pub async fn start(server: SocketAddr, seed: u64) -> std::io::Result<Relay> {
    let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let addr = listen.local_addr()?;
    let control = Arc::new(RelayControl::default());
    let rng = Arc::new(Mutex::new(ChaCha20Rng::seed_from_u64(seed)));
    tokio::spawn(run(listen, server, Arc::clone(&control), rng));
    Ok(Relay { addr, control })
}

/// The copies to deliver of one datagram, with their delays; none if lost.
fn fate(netem: Netem, blackhole: bool, rng: &Mutex<ChaCha20Rng>) -> Vec<Duration> {
    if blackhole {
        return Vec::new();
    }
    let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
    if rng.gen_bool(netem.loss.clamp(0.0, 1.0)) {
        return Vec::new();
    }
    let copies = if rng.gen_bool(netem.duplicate.clamp(0.0, 1.0)) {
        2
    } else {
        1
    };
    (0..copies)
        .map(|_| {
            let extra = if netem.jitter.is_zero() {
                Duration::ZERO
            } else {
                netem.jitter.mul_f64(rng.gen_range(0.0..1.0))
            };
            netem.delay + extra
        })
        .collect()
}

fn deliver(
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
    netem: Netem,
    control: &RelayControl,
    rng: &Mutex<ChaCha20Rng>,
) {
    let delays = fate(netem, control.blackhole.load(Ordering::Relaxed), rng);
    if delays.is_empty() {
        control.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    for delay in delays {
        control.delivered.fetch_add(1, Ordering::Relaxed);
        let socket = Arc::clone(&socket);
        let data = data.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let _ = socket.send_to(&data, to).await;
        });
    }
}

async fn run(
    listen: Arc<UdpSocket>,
    server: SocketAddr,
    control: Arc<RelayControl>,
    rng: Arc<Mutex<ChaCha20Rng>>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, client) = match listen.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => continue, // ICMP errors from earlier sends
        };
        let upstream = match upstreams.get(&client) {
            Some(u) => Arc::clone(u),
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let u = Arc::new(u);
                upstreams.insert(client, Arc::clone(&u));
                // The server's answers to this client, back through the relay.
                let (listen, control, rng, up) = (
                    Arc::clone(&listen),
                    Arc::clone(&control),
                    Arc::clone(&rng),
                    Arc::clone(&u),
                );
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    loop {
                        let n = match up.recv_from(&mut buf).await {
                            Ok((n, _)) => n,
                            Err(_) => continue,
                        };
                        let netem = *control.down.lock().unwrap_or_else(|e| e.into_inner());
                        deliver(
                            Arc::clone(&listen),
                            client,
                            buf[..n].to_vec(),
                            netem,
                            &control,
                            &rng,
                        );
                    }
                });
                u
            }
        };
        let netem = *control.up.lock().unwrap_or_else(|e| e.into_inner());
        deliver(upstream, server, buf[..n].to_vec(), netem, &control, &rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_relay_delivers_loses_and_duplicates_as_told() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = start(server.local_addr().unwrap(), 1).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 64];
        // Clean: one in, one out, and the answer comes back from the relay.
        client.send_to(b"a", relay.addr).await.unwrap();
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"a");
        server.send_to(b"b", from).await.unwrap();
        let (n, back) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], back), (&b"b"[..], relay.addr));
        // All lost, then all duplicated.
        relay.control.set(Netem {
            loss: 1.0,
            ..Netem::default()
        });
        for _ in 0..10 {
            client.send_to(b"x", relay.addr).await.unwrap();
        }
        // The relay reads its socket on its own time: let it see all ten under this setting.
        tokio::time::timeout(Duration::from_secs(5), async {
            while relay.control.dropped.load(Ordering::Relaxed) < 10 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
        relay.control.set(Netem {
            duplicate: 1.0,
            ..Netem::default()
        });
        client.send_to(b"y", relay.addr).await.unwrap();
        for _ in 0..2 {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), server.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], b"y", "the lost ones never arrive");
        }
        assert_eq!(relay.control.dropped.load(Ordering::Relaxed), 10);
        // Blackholed: nothing passes.
        relay.control.blackhole.store(true, Ordering::Relaxed);
        relay.control.set(Netem::default());
        client.send_to(b"z", relay.addr).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), server.recv_from(&mut buf))
                .await
                .is_err()
        );
    }
}
