//! Loopback integration: real tokio sockets on 127.0.0.1:0, fleets of echo servers — connect,
//! exchange, fail over, and what a server keeps for clients that only probe.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{BOUND, fleet};
use tokio::time::timeout;
use volley::{
    Client, ClientConfig, CloseCode, CloseReason, Error, OfferFate, Server, ServerConfig,
    StaticKeypair,
};

/// Connecting to `pool` pinning `key` must fail cleanly after a short deadline, with the error
/// of the race that found no usable offer.
async fn connect_fails(key: volley::PublicKey, pool: &[SocketAddr]) -> volley::ConnectError {
    let mut cfg = ClientConfig::new(vec![key]);
    cfg.race.deadline = Duration::from_millis(500);
    let err = timeout(BOUND, Client::new(cfg).connect(pool))
        .await
        .unwrap()
        .unwrap_err();
    match err {
        Error::Connect(e) => e,
        other => panic!("{other:?}"),
    }
}

/// Waits (bounded) until the client's session has moved off `from`.
async fn wait_for_failover(s: &volley::Session, from: SocketAddr) {
    timeout(BOUND, async {
        while s.remote() == from {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("client never failed over");
}

#[tokio::test]
async fn c6_connect_and_exchange_encrypted_datagrams() {
    let f = fleet(3).await;
    let s = timeout(BOUND, f.client().connect(&f.addrs))
        .await
        .unwrap()
        .unwrap();
    assert!(f.addrs.contains(&s.remote()));
    for i in 0..20u32 {
        let msg = format!("datagram {i}");
        s.send(msg.as_bytes()).await.unwrap();
        assert_eq!(
            &timeout(BOUND, s.recv()).await.unwrap().unwrap()[..],
            msg.as_bytes()
        );
    }
    let report = s.report().unwrap();
    assert_eq!(report.server, Some(s.remote()));
    assert!(report.handshake_time.is_some());
    assert_eq!(report.offers.first().map(|o| o.server), Some(s.remote()));
    assert_eq!(
        report.offers.first().map(|o| o.fate),
        Some(OfferFate::Selected)
    );
    assert_eq!(report.stats.sessions_established, 1);
}

#[tokio::test]
async fn c5_other_servers_offers_are_voided() {
    let f = fleet(3).await;
    let s = timeout(BOUND, f.client().connect(&f.addrs))
        .await
        .unwrap()
        .unwrap();
    // Every server answers; the two losers' offers arrive after the decision.
    timeout(BOUND, async {
        while s.report().unwrap().offers.len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let r = s.report().unwrap();
    assert_eq!(r.late_offers, 2);
    assert_eq!(r.stats.offers_late, 2);
    assert_eq!(r.stats.inits_sent, 1, "INIT only to the winner");
}

#[tokio::test]
async fn r5_killed_server_is_detected_and_client_fails_over() {
    let mut f = fleet(3).await;
    let s = timeout(BOUND, f.client().connect(&f.addrs))
        .await
        .unwrap()
        .unwrap();
    let first = s.remote();
    s.send(b"before").await.unwrap();
    assert_eq!(
        &timeout(BOUND, s.recv()).await.unwrap().unwrap()[..],
        b"before"
    );
    f.kill(f.index(first));
    // The client notices by idle timeout and races the two survivors.
    wait_for_failover(&s, first).await;
    let second = s.remote();
    assert_ne!(second, first);
    assert!(f.addrs.contains(&second));
    s.send(b"after").await.unwrap();
    assert_eq!(
        &timeout(BOUND, s.recv()).await.unwrap().unwrap()[..],
        b"after"
    );
    let r = s.report().unwrap();
    assert_eq!(r.failovers, 1);
    assert_eq!(r.server, Some(second));
}

#[tokio::test]
async fn r5_graceful_shutdown_sends_clients_elsewhere() {
    let mut f = fleet(3).await;
    let s = timeout(BOUND, f.client().connect(&f.addrs))
        .await
        .unwrap()
        .unwrap();
    let first = s.remote();
    f.stop(f.index(first)).await;
    wait_for_failover(&s, first).await;
    // The server said why it went — GOING_AWAY — so the client moved on at once rather than
    // after hearing nothing for a while.
    assert_eq!(
        s.report().unwrap().losses,
        vec![(first, CloseReason::Remote(CloseCode::GOING_AWAY))]
    );
    s.send(b"still here").await.unwrap();
    assert_eq!(
        &timeout(BOUND, s.recv()).await.unwrap().unwrap()[..],
        b"still here"
    );
}

#[tokio::test]
async fn r4_unpinned_key_gets_no_session() {
    let f = fleet(2).await;
    let stranger = StaticKeypair::generate(&mut rand::rngs::OsRng);
    // The servers answered, with keys the client does not pin: that is what it says.
    let err = connect_fails(stranger.public(), &f.addrs).await;
    assert!(
        matches!(err, volley::ConnectError::UnpinnedKey(n) if n >= 2),
        "{err:?}"
    );
}

#[tokio::test]
async fn c1_nothing_listening_fails_cleanly() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    drop(sock);
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let err = connect_fails(key.public(), &[addr]).await;
    assert!(matches!(err, volley::ConnectError::NoOffer(_)), "{err:?}");
    // A pool of both families is refused at once rather than raced on one of them.
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let mixed = [addr, "[::1]:9".parse().unwrap()];
    assert!(matches!(
        client.connect(&mixed).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn s2_server_counts_and_stays_stateless_for_probe_only_clients() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    // A raw socket sends 100 valid probes and never follows up.
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut probe = [0u8; 256];
    let n = volley_proto::packet::Probe {
        tag: volley_proto::Tag([7; 16]),
        service: b"echo",
    }
    .encode(&mut probe, 256)
    .unwrap();
    for _ in 0..100 {
        raw.send_to(&probe[..n], addr).await.unwrap();
    }
    let mut buf = [0u8; 2048];
    for _ in 0..100 {
        let (len, from) = timeout(BOUND, raw.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, addr);
        assert!(len <= n, "offer larger than probe");
    }
    let stats = server.stats();
    assert_eq!(stats.offers_sent, 100);
    assert_eq!(server.session_count(), 0);
    assert!(
        timeout(Duration::from_millis(50), server.accept())
            .await
            .is_err()
    );
}
