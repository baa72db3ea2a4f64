//! Endpoints and sockets on real loopback sockets: one client socket for every connection,
//! wildcard and caller-made server sockets, per-session send queues, configurations refused,
//! and timers on a paused runtime.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{BOUND, bind, client_for, connect, echoes, fast_session, serve, until};
use tokio::sync::oneshot;
use tokio::time::timeout;
use volley::{
    Client, ClientConfig, Error, SelectionPolicy, Server, ServerConfig, SessionConfig,
    StaticKeypair,
};

#[tokio::test]
async fn r5_send_queue_is_per_session_and_reports_full_and_closed() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut server = bind(&key, |_| {}).await;
    let pool = vec![server.local_addr()];
    let client = client_for(&key, SelectionPolicy::Earliest);
    let a = timeout(BOUND, client.connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let sa = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    let b = timeout(BOUND, client.connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let sb = timeout(BOUND, server.accept()).await.unwrap().unwrap();

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
    let s = connect(&key, &[probed]).await;
    assert_eq!(s.remote(), probed);
    echoes(&s, b"from the address probed").await;
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
    let s = Client::new(ccfg).connect(&pool).await.unwrap();
    echoes(&s, b"before").await;
    task.abort();
    let virtual_start = tokio::time::Instant::now();
    // In virtual time: a driver on the real clock would not time out within it.
    let reason = timeout(Duration::from_secs(120), s.closed())
        .await
        .expect("the idle timeout fired in virtual time");
    assert_eq!(reason, volley::CloseReason::IdleTimeout);
    let waited = virtual_start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(40),
        "{waited:?} of virtual time"
    );
}

#[tokio::test]
async fn c1_one_client_endpoint_serves_every_connection_from_one_socket() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut server = bind(&key, |_| {}).await;
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
    let s = connect(&key, &[addr]).await;
    echoes(&s, b"on the caller's socket").await;
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

#[tokio::test]
async fn a5_datagrams_naming_no_connection_are_dropped_and_counted_by_the_client() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, _h) = serve(&key, |_| {}).await;
    let client = client_for(&key, SelectionPolicy::Earliest);
    let session = timeout(BOUND, client.connect(&[addr]))
        .await
        .unwrap()
        .unwrap();
    echoes(&session, b"before").await;
    assert_eq!(client.stray_datagrams(), 0);
    // From another socket, to the client's: DATA naming no connection's id, OFFERs with tags no
    // race drew, a PROBE (a kind a client never takes) and garbage — 100 of each.
    let local = client.local_addr(addr).unwrap();
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut probe = [0u8; 256];
    let n = volley_proto::packet::Probe {
        tag: volley_proto::Tag([5; 16]),
        service: b"echo",
    }
    .encode(&mut probe, 256)
    .unwrap();
    let mut offer = [0u8; 128];
    for i in 0..100u32 {
        let mut data = vec![1u8, 0x10];
        data.extend_from_slice(&(0xdead_0000 ^ i).to_be_bytes());
        data.extend_from_slice(&[0u8; 8 + 32]);
        let m = volley_proto::packet::Offer {
            tag: volley_proto::Tag([i as u8; 16]),
            server_key_id: volley_proto::KeyId([0; 8]),
            load: volley::LoadHint::default(),
            held_us: 0,
            cookie: &[1; 39],
        }
        .encode(&mut offer)
        .unwrap();
        for d in [&data[..], &offer[..m], &probe[..n], &[0xffu8; 40][..]] {
            attacker.send_to(d, local).await.unwrap();
        }
        if i % 25 == 24 {
            // Keep within the socket buffer.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    until("400 strays counted", || client.stray_datagrams() == 400).await;
    echoes(&session, b"after").await;
}
