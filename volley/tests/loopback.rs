//! Loopback integration: real tokio sockets on 127.0.0.1:0, fleets of echo servers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use volley::{
    AnswerPolicy, AppLoad, Client, ClientConfig, Error, LoadHint, OfferFate, SelectionPolicy,
    Server, ServerConfig, ServerHandle, ServiceModel, SessionConfig, StaticKeypair,
};
use volley_proto::packet::Packet;

const BOUND: Duration = Duration::from_secs(20);

fn fast_session() -> SessionConfig {
    SessionConfig {
        keepalive_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(600),
        ..SessionConfig::default()
    }
}

struct Fleet {
    key: StaticKeypair,
    addrs: Vec<SocketAddr>,
    tasks: Vec<Option<JoinHandle<()>>>,
    stops: Vec<Option<tokio::sync::oneshot::Sender<()>>>,
}

async fn fleet(n: usize) -> Fleet {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut f = Fleet {
        key: key.clone(),
        addrs: vec![],
        tasks: vec![],
        stops: vec![],
    };
    for _ in 0..n {
        let mut cfg = ServerConfig::new(key.clone());
        cfg.session = fast_session();
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
            .await
            .unwrap();
        f.addrs.push(server.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        f.tasks
            .push(Some(tokio::spawn(volley::echo::serve(server, async {
                let _ = rx.await;
            }))));
        f.stops.push(Some(tx));
    }
    f
}

impl Fleet {
    fn client(&self) -> Client {
        let mut cfg = ClientConfig::new(vec![self.key.public()]);
        cfg.session = fast_session();
        // Shorter than the fast idle timeout (R10: an INIT is not retried past it).
        cfg.handshake_timeout = Duration::from_millis(500);
        Client::new(cfg)
    }

    fn index(&self, addr: SocketAddr) -> usize {
        self.addrs.iter().position(|a| *a == addr).unwrap()
    }

    /// Kills a server abruptly: its task and socket vanish, nothing is sent.
    fn kill(&mut self, i: usize) {
        self.tasks[i].take().unwrap().abort();
    }

    /// Stops a server gracefully: sessions are closed with GOING_AWAY.
    async fn stop(&mut self, i: usize) {
        let _ = self.stops[i].take().unwrap().send(());
        let _ = self.tasks[i].take().unwrap().await;
    }
}

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
    let mut s = timeout(BOUND, f.client().connect(&f.addrs))
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
    let mut s = timeout(BOUND, f.client().connect(&f.addrs))
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
    let mut s = timeout(BOUND, f.client().connect(&f.addrs))
        .await
        .unwrap()
        .unwrap();
    let first = s.remote();
    f.stop(f.index(first)).await;
    wait_for_failover(&s, first).await;
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

/// Starts one echo server with `key`, configured by `tweak`, serving until the test ends.
async fn serve(
    key: &StaticKeypair,
    tweak: impl FnOnce(&mut ServerConfig),
) -> (SocketAddr, ServerHandle) {
    let mut cfg = ServerConfig::new(key.clone());
    cfg.session = fast_session();
    tweak(&mut cfg);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    tokio::spawn(volley::echo::serve(server, std::future::pending()));
    (addr, handle)
}

fn client_for(key: &StaticKeypair, policy: SelectionPolicy) -> Client {
    let mut cfg = ClientConfig::new(vec![key.public()]);
    cfg.session = fast_session();
    // Shorter than the fast idle timeout (R10: an INIT is not retried past it).
    cfg.handshake_timeout = Duration::from_millis(500);
    cfg.policy = policy;
    Client::new(cfg)
}

/// Waits (bounded) until `cond` holds; the server publishes its load after every wake-up.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(BOUND, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

async fn echoes(s: &mut volley::Session, msg: &[u8]) {
    s.send(msg).await.unwrap();
    assert_eq!(timeout(BOUND, s.recv()).await.unwrap().unwrap(), msg);
}

#[tokio::test]
async fn l1_gated_server_holds_the_probe_until_a_load_guard_drops() {
    const HOLD: Duration = Duration::from_millis(80);
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, server) = serve(&key, |c| {
        c.capacity = Some(1);
        c.service = ServiceModel::Fixed(Duration::from_millis(40));
        c.answer = AnswerPolicy::gated();
    })
    .await;
    // One request in flight fills the only slot.
    let guard = server.load_guard();
    until("guard counted", || server.load().app == 1).await;
    let client = client_for(&key, SelectionPolicy::Earliest);
    let connecting = tokio::spawn(async move { client.connect(&[addr]).await });
    until("probe held", || server.load().held == 1).await;
    tokio::time::sleep(HOLD).await;
    let released = Instant::now();
    drop(guard);
    let mut s = timeout(BOUND, connecting).await.unwrap().unwrap().unwrap();
    assert!(
        released.elapsed() < Duration::from_millis(150),
        "the freed slot released the held probe at once"
    );
    let r = s.report().unwrap();
    assert!(r.answer_time.unwrap() >= HOLD, "{:?}", r.answer_time);
    assert_eq!(
        r.load,
        Some(LoadHint {
            in_flight: 0,
            capacity: 1,
            expected_us: 40_000,
        })
    );
    assert_eq!(r.stats.probes_sent, 1, "answered before any retransmission");
    echoes(&mut s, b"released").await;
    let stats = server.stats();
    assert_eq!(stats.probes_held, 1);
    assert_eq!(stats.probes_dropped_hold_expired, 0);
    // The echo was a request while it was served; the idle session is not load (L6).
    until("echo completed", || server.load().requests == 0).await;
    assert_eq!(server.load().sessions, 1);
}

#[tokio::test]
async fn l1_paced_answer_time_grows_with_load_guards() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    // Paced at half the expected completion, so that the gaps dwarf loopback noise.
    let paced = |c: &mut ServerConfig| {
        c.capacity = Some(4);
        c.service = ServiceModel::Fixed(Duration::from_millis(40));
        c.answer = AnswerPolicy::Paced {
            max_delay: Duration::from_millis(100),
            divisor: 2,
        };
    };
    let (busy, busy_h) = serve(&key, paced).await;
    let (idle, _) = serve(&key, paced).await;
    // Eight requests on four slots: the busy server expects 90 ms and answers 45 ms late; the
    // idle one expects 40 ms and answers 20 ms late.
    let guards: Vec<_> = (0..8).map(|_| busy_h.load_guard()).collect();
    until("guards counted", || busy_h.load().app == 8).await;
    let s = timeout(
        BOUND,
        client_for(&key, SelectionPolicy::Earliest).connect(&[busy, idle]),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(s.remote(), idle, "the idle server answers first");
    until("the busy server's late offer", || {
        s.report().unwrap().offers.len() == 2
    })
    .await;
    let late = s.report().unwrap().offers[1];
    assert_eq!((late.server, late.fate), (busy, OfferFate::Late));
    assert!(late.answer_time >= Duration::from_millis(45), "{late:?}");
    assert_eq!(
        late.load,
        Some(LoadHint {
            in_flight: 8,
            capacity: 4,
            expected_us: 90_000,
        }),
        "L2, L5: the hint carries the guards and the expected completion"
    );
    drop(guards);
    until("guards released", || busy_h.load().app == 0).await;
}

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
        let mut s = timeout(BOUND, client.connect(&pool))
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
        echoes(&mut s, b"window").await;
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
    // (The control message is processed before the gated INIT: same driver, sent first.)
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.send(()).unwrap();
    let mut s = timeout(BOUND, connecting).await.unwrap().unwrap().unwrap();
    assert_eq!(s.remote(), peer, "followed the REDIRECT");
    let r = s.report().unwrap();
    assert_eq!(r.redirected_to, vec![peer]);
    assert_eq!(r.stats.redirects, 1);
    assert_eq!(r.stats.redirect_servers_added, 1);
    echoes(&mut s, b"redirected").await;
    until("refusal counted", || full_h.stats().redirects_sent >= 1).await;
    assert!(full_h.stats().init_refused_full >= 1);
    assert_eq!(full_h.stats().sessions_opened, 0);
    assert_eq!(peer_h.stats().sessions_opened, 1);
}

#[tokio::test]
async fn l5_recv_request_counts_each_request_from_arrival_to_reply() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut cfg = ServerConfig::new(key.clone());
    cfg.session = fast_session();
    cfg.capacity = Some(4);
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    // The application holds each request until told to answer it.
    let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        let mut s = server.accept().await.expect("a session");
        while let Ok(req) = s.recv_request().await {
            if go_rx.recv().await.is_none() {
                break;
            }
            let data = req.data().to_vec();
            req.reply(&s, &data).await.unwrap();
        }
    });
    let mut s = timeout(
        BOUND,
        client_for(&key, SelectionPolicy::Earliest).connect(&[addr]),
    )
    .await
    .unwrap()
    .unwrap();
    // An open session with no request is no load (L6).
    until("session open", || handle.load().sessions == 1).await;
    assert_eq!(handle.load().requests, 0);
    s.send(b"one").await.unwrap();
    s.send(b"two").await.unwrap();
    // Both count from their arrival, the queued one included — no guard in the application.
    until("two requests in flight", || handle.load().requests == 2).await;
    go_tx.send(()).await.unwrap();
    assert_eq!(
        &timeout(BOUND, s.recv()).await.unwrap().unwrap()[..],
        b"one"
    );
    until("one completed", || handle.load().requests == 1).await;
    go_tx.send(()).await.unwrap();
    assert_eq!(
        &timeout(BOUND, s.recv()).await.unwrap().unwrap()[..],
        b"two"
    );
    until("both completed", || handle.load().requests == 0).await;
    // The completions are what the service-time estimate learns from: it moved off the prior.
    assert_ne!(
        handle.load().service_time,
        volley_proto::server::estimate::DEFAULT_SERVICE_PRIOR
    );
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

#[tokio::test]
async fn r5_send_queue_is_per_session_and_reports_full_and_closed() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut cfg = ServerConfig::new(key.clone());
    cfg.session = fast_session();
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let pool = vec![server.local_addr()];
    let client = client_for(&key, SelectionPolicy::Earliest);
    let a = timeout(BOUND, client.connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let mut sa = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    let b = timeout(BOUND, client.connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let mut sb = timeout(BOUND, server.accept()).await.unwrap().unwrap();

    // The test task does not yield, so the (current-thread) drivers drain nothing meanwhile:
    // session a's queue fills to exactly SEND_QUEUE and then says so; b's is untouched.
    for i in 0..volley::SEND_QUEUE {
        a.try_send(&(i as u32).to_be_bytes()).unwrap();
    }
    assert!(matches!(a.try_send(b"one too many"), Err(Error::QueueFull)));
    assert_eq!(a.stats().send_queued, volley::SEND_QUEUE);
    b.try_send(b"b is not held up").unwrap();
    // `send` waits for room instead.
    timeout(BOUND, a.send(b"last")).await.unwrap().unwrap();
    assert_eq!(
        &timeout(BOUND, sb.recv()).await.unwrap().unwrap()[..],
        b"b is not held up"
    );
    // What arrives comes in the order queued, through `recv` and `poll_recv` alike (a burst of
    // 257 datagrams may overflow a kernel socket buffer, so not every one is required).
    let mut got = Vec::new();
    loop {
        let odd = got.len() % 2 == 1;
        let next = timeout(Duration::from_secs(1), async {
            if odd {
                std::future::poll_fn(|cx| sa.poll_recv(cx)).await
            } else {
                sa.recv().await
            }
        })
        .await;
        match next {
            Ok(Ok(d)) => got.push(d),
            _ => break,
        }
    }
    let order: Vec<u32> = got
        .iter()
        .map(|d| match &d[..] {
            b"last" => u32::MAX,
            d => u32::from_be_bytes(d.try_into().unwrap()),
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    assert!(got.len() > volley::SEND_QUEUE / 2, "{} arrived", got.len());
    let st = a.stats();
    assert_eq!(st.datagrams_sent, volley::SEND_QUEUE as u64 + 1);
    assert_eq!(st.send_queued, 0);
    assert!(st.protocol.packets_sent > volley::SEND_QUEUE as u64);
    assert_eq!(sa.stats().datagrams_received, got.len() as u64);
    assert!(sa.stats().protocol.packets_received >= got.len() as u64);

    // The server ends session a: the client's `closed()` resolves with why, and sending says
    // closed rather than pretending to queue.
    sa.close();
    let reason = timeout(BOUND, a.closed()).await.unwrap();
    assert_eq!(
        reason,
        volley::CloseReason::Remote(volley::CloseCode::NORMAL)
    );
    assert!(matches!(a.try_send(b"x"), Err(Error::Closed(_))));
    assert!(matches!(a.send(b"x").await, Err(Error::Closed(_))));
    // b lives on.
    b.send(b"still here").await.unwrap();
    assert_eq!(
        &timeout(BOUND, sb.recv()).await.unwrap().unwrap()[..],
        b"still here"
    );
}

#[tokio::test]
async fn c6_a_server_bound_to_a_wildcard_address_answers_from_the_address_probed() {
    // The server listens on 0.0.0.0; the client probes it at 127.0.0.2 from 127.0.0.1. Without
    // the datagram's destination address (IP_PKTINFO) the kernel would answer from 127.0.0.1,
    // which the client never probed, and drop nothing but reach nothing.
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut cfg = ServerConfig::new(key.clone());
    cfg.session = fast_session();
    let server = Server::bind("0.0.0.0:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let port = server.local_addr().port();
    assert!(server.local_addr().ip().is_unspecified());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(volley::echo::serve(server, async {
        let _ = stopped.await;
    }));
    let probed: SocketAddr = SocketAddr::from(([127, 0, 0, 2], port));
    let mut s = timeout(
        BOUND,
        client_for(&key, SelectionPolicy::Earliest).connect(&[probed]),
    )
    .await
    .unwrap()
    .expect("a session through the wildcard-bound server");
    assert_eq!(s.remote(), probed);
    echoes(&mut s, b"from the address probed").await;
    let _ = stop.send(());
    let _ = task.await;
}

#[tokio::test(start_paused = true)]
async fn r5_on_a_paused_runtime_the_idle_timeout_runs_in_virtual_time() {
    // The drivers read tokio's clock: with time paused, a 30 s idle timeout after the server
    // vanishes passes in virtual time, and the test takes milliseconds of real time.
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let slow = SessionConfig {
        keepalive_interval: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        ..SessionConfig::default()
    };
    let mut cfg = ServerConfig::new(key.clone());
    cfg.session = slow;
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let pool = vec![server.local_addr()];
    let task = tokio::spawn(volley::echo::serve(server, std::future::pending()));
    let mut ccfg = ClientConfig::new(vec![key.public()]);
    ccfg.session = slow;
    ccfg.max_failovers = 0;
    let mut s = Client::new(ccfg).connect(&pool).await.unwrap();
    echoes(&mut s, b"before").await;
    task.abort();
    let real = Instant::now();
    let virtual_start = tokio::time::Instant::now();
    let reason = timeout(Duration::from_secs(120), s.closed())
        .await
        .expect("the idle timeout fired in virtual time");
    assert_eq!(reason, volley::CloseReason::IdleTimeout);
    let waited = virtual_start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(40),
        "{waited:?} of virtual time"
    );
    assert!(
        real.elapsed() < Duration::from_secs(10),
        "{:?}",
        real.elapsed()
    );
}

#[tokio::test]
async fn c1_one_client_endpoint_serves_every_connection_from_one_socket() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut cfg = ServerConfig::new(key.clone());
    cfg.session = fast_session();
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let pool = vec![server.local_addr()];
    let client = client_for(&key, SelectionPolicy::Earliest);
    assert_eq!(
        client.local_addr(pool[0]),
        None,
        "nothing bound before a connect"
    );
    // Ten at once and ten one after another, from one client.
    let mut sessions = Vec::new();
    let together =
        futures_like_join(std::iter::repeat_with(|| client.connect(&pool)).take(10)).await;
    for s in together {
        sessions.push(s.unwrap());
    }
    for _ in 0..10 {
        sessions.push(
            timeout(BOUND, client.connect(&pool))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let local = client
        .local_addr(pool[0])
        .expect("bound by the first connect");
    let mut accepted = Vec::new();
    for _ in 0..20 {
        let s = timeout(BOUND, server.accept()).await.unwrap().unwrap();
        assert_eq!(s.remote(), local, "every session comes from the one socket");
        accepted.push(s);
    }
    // And each is its own session over that socket: every datagram reaches exactly one server
    // session, and every server session gets exactly one.
    for (i, s) in sessions.iter().enumerate() {
        s.send(format!("session {i}").as_bytes()).await.unwrap();
    }
    let mut got = Vec::new();
    for s in &mut accepted {
        got.push(
            String::from_utf8(timeout(BOUND, s.recv()).await.unwrap().unwrap().to_vec()).unwrap(),
        );
    }
    got.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("session {i}")).collect();
    want.sort();
    assert_eq!(got, want);

    // Bring your own socket.
    let own = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let own_addr = own.local_addr().unwrap();
    let mut ccfg = ClientConfig::new(vec![key.public()]);
    ccfg.session = fast_session();
    // Shorter than the fast idle timeout (R10: an INIT is not retried past it).
    ccfg.handshake_timeout = Duration::from_millis(500);
    let byo = Client::with_socket(ccfg, own).unwrap();
    let _s = timeout(BOUND, byo.connect(&pool)).await.unwrap().unwrap();
    let s = loop {
        let s = timeout(BOUND, server.accept()).await.unwrap().unwrap();
        if s.remote() == own_addr {
            break s;
        }
    };
    assert_eq!(s.remote(), own_addr);
}

#[tokio::test]
async fn c1_one_client_endpoint_routes_hundreds_of_concurrent_races_and_sessions() {
    // 300 races at once from one socket (300 live tags), then 300 sessions exchanging at once
    // (300 receiver ids): each datagram must reach its own connection through the endpoint's
    // index, and each session hear only its own echoes.
    const N: usize = 300;
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, handle) = serve(&key, |_| {}).await;
    let pool = vec![addr];
    let client = client_for(&key, SelectionPolicy::Earliest);
    let mut sessions: Vec<volley::Session> = timeout(
        BOUND,
        futures_like_join(std::iter::repeat_with(|| client.connect(&pool)).take(N)),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|s| s.unwrap())
    .collect();
    assert!(sessions.iter().all(|s| s.remote() == addr));
    until("every session open on the server", || {
        handle.stats().sessions_opened == N as u64
    })
    .await;
    // In waves of 50, so that no burst outgrows a default socket buffer on loopback (this
    // test is about routing, not about loss).
    for round in 0..3u8 {
        for (w, wave) in sessions.chunks_mut(50).enumerate() {
            let msg = |i: usize| [&((w * 50 + i) as u32).to_be_bytes()[..], &[round]].concat();
            for (i, s) in wave.iter().enumerate() {
                s.send(&msg(i)).await.unwrap();
            }
            let echoes = timeout(BOUND, futures_like_join(wave.iter_mut().map(|s| s.recv())))
                .await
                .unwrap();
            for (i, echo) in echoes.into_iter().enumerate() {
                assert_eq!(
                    &echo.unwrap()[..],
                    &msg(i)[..],
                    "session {} heard another's datagram in round {round}",
                    w * 50 + i
                );
            }
        }
    }
    assert_eq!(
        handle.stats().sessions_opened,
        N as u64,
        "one session per connect"
    );
}

/// Awaits every future of `futs` concurrently (no extra crate for one test).
async fn futures_like_join<F: std::future::Future>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futs.map(Box::pin).collect();
    let mut out = Vec::new();
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

#[tokio::test]
async fn c6_a_server_serves_on_a_socket_the_caller_made() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = std_socket.local_addr().unwrap();
    let server = Server::from_socket(std_socket, ServerConfig::new(key.clone())).unwrap();
    assert_eq!(server.local_addr(), addr);
    let task = tokio::spawn(volley::echo::serve(server, std::future::pending()));
    let mut s = timeout(
        BOUND,
        client_for(&key, SelectionPolicy::Earliest).connect(&[addr]),
    )
    .await
    .unwrap()
    .unwrap();
    echoes(&mut s, b"on the caller's socket").await;
    task.abort();
}

#[tokio::test]
async fn d6_server_and_client_refuse_a_configuration_that_does_not_validate() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut cfg = ServerConfig::new(key.clone());
    cfg.capacity = Some(0);
    let err = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(volley::ConfigError::Zero("capacity"))),
        "{err:?}"
    );
    let (addr, _h) = serve(&key, |_| {}).await;
    let mut ccfg = ClientConfig::new(vec![key.public()]);
    ccfg.handshake_timeout = Duration::ZERO;
    let err = Client::new(ccfg)
        .connect(&[addr])
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(volley::ConfigError::ZeroDuration(_))),
        "{err:?}"
    );
}
