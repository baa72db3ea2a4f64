//! A4 over real sockets: a client behind a NAT that rebinds (a relay that starts forwarding the
//! client's packets from a new port) keeps its session; the server moves it only after the new
//! address answered a PATH_CHALLENGE, and nothing is lost but the one round trip in flight.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{BOUND, connect, serve};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use volley::StaticKeypair;

/// A NAT in front of one client: the client talks to `outside`; the relay forwards its datagrams
/// to `server` from `old` until `rebind` is set, then from `new`, and forwards whatever the server
/// sends to either port back to the client.
async fn nat(server: SocketAddr, rebind: Arc<AtomicBool>) -> SocketAddr {
    let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let old = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let new = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = outside.local_addr().unwrap();
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    {
        let (outside, old, new, client) =
            (outside.clone(), old.clone(), new.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, from)) = outside.recv_from(&mut buf).await else {
                    return;
                };
                *client.lock().unwrap() = Some(from);
                let via = if rebind.load(Ordering::Relaxed) {
                    &new
                } else {
                    &old
                };
                let _ = via.send_to(&buf[..n], server).await;
            }
        });
    }
    for inside in [old, new] {
        let (outside, client) = (outside.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, _)) = inside.recv_from(&mut buf).await else {
                    return;
                };
                let to = *client.lock().unwrap();
                if let Some(to) = to {
                    let _ = outside.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    addr
}

#[tokio::test]
async fn a4_a_rebinding_client_keeps_its_session_over_real_sockets() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let (server, handle) = serve(&key, |_| {}).await;
    let rebind = Arc::new(AtomicBool::new(false));
    let outside = nat(server, rebind.clone()).await;
    let session = connect(&key, &[outside]).await;
    session.send(b"before").await.unwrap();
    assert_eq!(
        &timeout(BOUND, session.recv()).await.unwrap().unwrap()[..],
        b"before"
    );
    rebind.store(true, Ordering::Relaxed);
    // The first datagram from the new port starts the validation; its echo may still go to the
    // old port (which the relay still forwards here, so it may arrive too).
    session.send(b"trigger").await.unwrap();
    common::until("the session moved", || {
        handle.stats().sessions_migrated == 1
    })
    .await;
    for i in 0..20u8 {
        let msg = [i; 32];
        session.send(&msg).await.unwrap();
        loop {
            let got = timeout(BOUND, session.recv()).await.unwrap().unwrap();
            if got[..] == msg[..] {
                break;
            }
            assert_eq!(
                &got[..],
                b"trigger",
                "only the trigger's echo may come late"
            );
        }
    }
    let stats = handle.stats();
    assert_eq!(stats.sessions_migrated, 1);
    assert!(stats.data_new_address >= 1);
    assert_eq!(stats.sessions_opened, 1, "the same session, no failover");
    assert_eq!(session.report().map(|r| r.losses.len()), Some(0));
    tokio::time::sleep(Duration::from_millis(10)).await;
}
