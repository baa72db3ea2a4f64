//! Selection on real loopback sockets: window and n-best races, redirects to peers, and servers
//! ejected for the failures sessions report.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{BOUND, client_for, echoes, fleet, serve, until};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::timeout;
use volley::{
    AnswerPolicy, AppLoad, Error, OfferFate, SelectionPolicy, ServerConfig, ServiceModel,
    StaticKeypair,
};
use volley_proto::packet::Packet;

#[tokio::test]
async fn l3_window_policy_picks_the_cold_server() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let immediate = |c: &mut ServerConfig| {
        c.capacity = Some(4);
        c.service = ServiceModel::Fixed(Duration::from_millis(40));
        c.answer = AnswerPolicy::Immediate;
    };
    let mut pool = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let (addr, h) = serve(&key, immediate).await;
        pool.push(addr);
        handles.push(h);
    }
    // Immediate servers all answer at once: only the hints tell them apart.
    let busy = AppLoad {
        in_flight: 12,
        completed: 0,
    };
    handles[0].set_app_load(busy);
    handles[2].set_app_load(busy);
    until("loads applied", || {
        handles[0].load().app == 12 && handles[2].load().app == 12
    })
    .await;
    let client = client_for(&key, SelectionPolicy::window());
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let s = timeout(BOUND, client.connect(&pool))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.remote(), pool[1], "the cold server wins every time");
        let r = s.report().unwrap();
        assert_eq!(r.load.map(|l| l.capacity), Some(4));
        assert_eq!(r.stats.offers_not_chosen, 2);
        // Every offer is in the report with its hint, the one that closed the window too.
        assert_eq!(r.offers.len(), 3, "{:?}", r.offers);
        assert!(r.offers.iter().all(|o| o.load.is_some()));
        let chosen: Vec<_> = r
            .offers
            .iter()
            .filter(|o| o.fate == OfferFate::Selected)
            .collect();
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].server, pool[1]);
        echoes(&s, b"window").await;
        sessions.push(s);
    }
    until("sessions open", || handles[1].load().sessions == 3).await;
}

#[tokio::test]
async fn l3_connect_n_opens_sessions_on_three_distinct_servers() {
    let f = fleet(4).await;
    let mut sessions = timeout(BOUND, f.client().connect_n(&f.addrs, 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sessions.len(), 3);
    let mut remotes: Vec<_> = sessions.iter().map(|s| s.remote()).collect();
    remotes.sort();
    remotes.dedup();
    assert_eq!(remotes.len(), 3, "three distinct servers");
    assert!(remotes.iter().all(|r| f.addrs.contains(r)));
    for (i, s) in sessions.iter_mut().enumerate() {
        let r = s.report().unwrap();
        assert_eq!(r.server, Some(s.remote()));
        assert!(r.handshake_time.is_some());
        for j in 0..5 {
            echoes(s, format!("session {i} datagram {j}").as_bytes()).await;
        }
    }
    // One race for the whole group: every probe went out once, from one socket.
    let main = sessions[0].report().unwrap();
    assert_eq!(main.stats.races, 1);
    assert_eq!(main.stats.probes_sent, 4);
}

#[tokio::test]
async fn l3_connect_n_returns_what_came_up_when_fewer_servers_answer() {
    let f = fleet(2).await;
    let mut sessions = timeout(BOUND, f.client().connect_n(&f.addrs, 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sessions.len(), 2);
    assert_ne!(sessions[0].remote(), sessions[1].remote());
    for s in &mut sessions {
        echoes(s, b"two of three").await;
    }
    assert!(matches!(
        f.client().connect_n(&f.addrs, 0).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A relay in front of one server that the test steers: it forwards datagrams between one
/// client and `server` (from one socket, so the server sees one client address), and holds the
/// first INIT until the test opens the gate. Returns the relay's address, a signal that the
/// INIT arrived, and the gate.
async fn init_gate(server: SocketAddr) -> (SocketAddr, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let (seen_tx, seen_rx) = oneshot::channel();
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut seen_tx, mut gate_rx) = (Some(seen_tx), Some(gate_rx));
        let mut client = None;
        let (mut up, mut down) = ([0u8; 2048], [0u8; 2048]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut up) => {
                    let Ok((n, from)) = r else { break };
                    client = Some(from);
                    if matches!(Packet::decode(&up[..n]), Ok(Packet::Init(_))) {
                        if let Some(tx) = seen_tx.take() {
                            let _ = tx.send(());
                        }
                        if let Some(rx) = gate_rx.take() {
                            let _ = rx.await;
                        }
                    }
                    let _ = back.send_to(&up[..n], server).await;
                }
                r = back.recv_from(&mut down) => {
                    let Ok((n, _)) = r else { break };
                    if let Some(c) = client {
                        let _ = front.send_to(&down[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, seen_rx, gate_tx)
}

#[tokio::test]
async fn r3_refusing_server_redirects_the_client_to_a_peer_outside_its_pool() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (peer, peer_h) = serve(&key, |_| {}).await;
    let (full, full_h) = serve(&key, |c| {
        c.answer = AnswerPolicy::Immediate;
        // Its offers promise nothing (no reservation), so a refused INIT is not honoured.
        c.reservation = Duration::ZERO;
        c.peers = vec![peer];
    })
    .await;
    // The client knows only the relay in front of `full`; `peer` is in no pool it was given.
    let (relay, init_seen, gate) = init_gate(full).await;
    let client = client_for(&key, SelectionPolicy::Earliest);
    let connecting = tokio::spawn(async move { client.connect(&[relay]).await });
    // `full` has offered; before the INIT reaches it, it reaches its session limit.
    timeout(BOUND, init_seen).await.unwrap().unwrap();
    full_h.set_max_sessions(Some(0));
    // The limit is in force once `full` withholds a probe for it: only then does the INIT go.
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut probe = [0u8; 256];
    let n = volley_proto::packet::Probe {
        tag: volley_proto::Tag([9; 16]),
        service: b"echo",
    }
    .encode(&mut probe, 256)
    .unwrap();
    // (A probe the driver reads before the control message is answered: send until one is not.)
    timeout(BOUND, async {
        while full_h.stats().probes_withheld_full == 0 {
            raw.send_to(&probe[..n], full).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the session limit in force");
    gate.send(()).unwrap();
    let s = timeout(BOUND, connecting).await.unwrap().unwrap().unwrap();
    assert_eq!(s.remote(), peer, "followed the REDIRECT");
    let r = s.report().unwrap();
    assert_eq!(r.redirected_to, vec![peer]);
    assert_eq!(r.stats.redirects, 1);
    assert_eq!(r.stats.redirect_servers_added, 1);
    echoes(&s, b"redirected").await;
    until("refusal counted", || full_h.stats().redirects_sent >= 1).await;
    assert!(full_h.stats().init_refused_full >= 1);
    assert_eq!(full_h.stats().sessions_opened, 0);
    assert_eq!(peer_h.stats().sessions_opened, 1);
}

#[tokio::test]
async fn l7_sessions_reporting_failures_eject_their_server_from_the_clients_races() {
    let f = fleet(2).await;
    let client = client_for(&f.key, SelectionPolicy::Earliest);
    let s = timeout(BOUND, client.connect(&f.addrs))
        .await
        .unwrap()
        .unwrap();
    let bad = s.remote();
    let good = *f.addrs.iter().find(|a| **a != bad).unwrap();
    // The application saw two requests fail there.
    s.report_failure();
    assert!(!client.is_ejected(bad), "one failure is not enough");
    s.report_failure();
    assert!(client.is_ejected(bad));
    // The next connects race only the other server, for the ejection's second.
    for _ in 0..3 {
        let s2 = timeout(BOUND, client.connect(&f.addrs))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s2.remote(), good);
        let r = s2.report().unwrap();
        assert_eq!(r.stats.ejected_skipped, 1);
        assert_eq!(r.offers.len(), 1, "the ejected server was not probed");
    }
    // Another client instance shares nothing: it still races both.
    let other = client_for(&f.key, SelectionPolicy::Earliest);
    assert!(!other.is_ejected(bad));
}
