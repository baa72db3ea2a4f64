//! Batched UDP on real loopback sockets: `sendmmsg`/`recvmmsg`, and GSO/GRO where the kernel has
//! them — every datagram arrives whole, once, in order, whatever the kernel coalesced.

use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::timeout;
use volley::udp::{self, RecvBatch, SendBatch};

/// Sends `sizes` from a batch to a receiver and returns what arrived and in how many buffers.
async fn burst(sizes: &[usize], gso: bool, gro: bool) -> (Vec<Vec<u8>>, usize, bool, bool) {
    let rx_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tx_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let gro = gro && udp::enable_gro(&rx_sock);
    let gso = gso && udp::gso_supported(&tx_sock);
    let to = rx_sock.local_addr().unwrap();
    let mut tx = SendBatch::with_gso(gso);
    for (i, &n) in sizes.iter().enumerate() {
        let slot = tx.slot();
        for (j, b) in slot[..n].iter_mut().enumerate() {
            *b = (i * 7 + j) as u8;
        }
        tx.commit(n, to, None);
    }
    tx.flush(&tx_sock).await;
    let mut rx = RecvBatch::with_gro(false, gro);
    let mut got = Vec::new();
    let mut buffers = 0;
    while got.len() < sizes.len() {
        timeout(Duration::from_secs(5), rx_sock.readable())
            .await
            .expect("the burst arrives")
            .unwrap();
        match rx.recv(&rx_sock) {
            Ok(n) => {
                buffers += n;
                got.extend(rx.iter().map(|(m, d)| {
                    assert_eq!(m.len, d.len());
                    d.to_vec()
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    (got, buffers, gso, gro)
}

fn expected(sizes: &[usize]) -> Vec<Vec<u8>> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (i * 7 + j) as u8).collect())
        .collect()
}

#[tokio::test]
async fn gso_and_gro_carry_a_burst_whole_once_and_in_order() {
    // Runs of equal sizes (one GSO send each), a shorter one closing a run, sizes that change.
    let sizes: Vec<usize> = std::iter::repeat_n(1200, 12)
        .chain([700])
        .chain(std::iter::repeat_n(64, 10))
        .chain([1452, 1, 1452, 1452])
        .collect();
    for (gso, gro) in [(false, false), (true, false), (false, true), (true, true)] {
        let (got, buffers, gso_on, gro_on) = burst(&sizes, gso, gro).await;
        assert_eq!(got, expected(&sizes), "gso {gso_on}, gro {gro_on}");
        if gso_on && gro_on {
            // On loopback a GSO send reaches a GRO socket as one buffer.
            assert!(
                buffers < sizes.len(),
                "{buffers} buffers for {} datagrams",
                sizes.len()
            );
        } else if !gro_on {
            assert_eq!(buffers, sizes.len());
        }
    }
}
