//! Early data end to end on loopback (Z5, PROTOCOL.md §4.8): a connect whose first request
//! rides in the INIT, its delivery to the server's application as the session's first
//! datagram (once, marked as early), the reply, the size limit, the UDP proxy's `early_data`
//! option, and the counters on `/metrics`.

mod common;

use std::time::Duration;

use common::{BOUND, until};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use volley::proxy::{UdpForward, UdpProxy};
use volley::{
    Bytes, Client, ClientConfig, EarlyDataError, Error, MAX_EARLY_DATA, Server, ServerConfig,
    StaticKeypair,
};

fn keypair() -> StaticKeypair {
    StaticKeypair::generate(&mut volley::OsRng)
}

#[tokio::test]
async fn z5_connect_with_early_delivers_the_first_request_once_and_its_reply_comes_back() {
    let key = keypair();
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let pool = [server.local_addr()];
    let handle = server.handle();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let connecting = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .connect_with_early(&pool, Bytes::from_static(b"GET /early"))
                .await
        }
    });
    // The server's application: the session's first datagram is the early request.
    let accepted = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    assert!(
        accepted.early_data(),
        "the first datagram rode in the handshake"
    );
    let first = timeout(BOUND, accepted.recv()).await.unwrap().unwrap();
    assert_eq!(&first[..], b"GET /early");
    accepted.send(b"200 early").await.unwrap();
    let session = timeout(BOUND, connecting).await.unwrap().unwrap().unwrap();
    assert!(
        !session.early_data(),
        "a client's session has no early flag"
    );
    let reply = timeout(BOUND, session.recv()).await.unwrap().unwrap();
    assert_eq!(&reply[..], b"200 early");
    // Later datagrams are ordinary DATA, and nothing arrives twice.
    session.send(b"second").await.unwrap();
    let second = timeout(BOUND, accepted.recv()).await.unwrap().unwrap();
    assert_eq!(&second[..], b"second");
    // (The server publishes its counters after its wake-ups.)
    until("the early data counted", || {
        handle.stats().early_data_received == 1
    })
    .await;
    let stats = handle.stats();
    assert_eq!(stats.early_data_received, 1, "{stats:?}");
    assert_eq!(stats.early_data_bytes, 10, "{stats:?}");
    assert_eq!(stats.sessions_opened, 1, "{stats:?}");
    // A plain connect's session is not marked.
    let _plain = timeout(BOUND, client.connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let accepted = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    assert!(!accepted.early_data());
    until("the second session counted", || {
        handle.stats().sessions_opened == 2
    })
    .await;
    assert_eq!(handle.stats().early_data_received, 1);
}

#[tokio::test]
async fn z5_early_data_that_cannot_ride_is_refused_before_anything_is_sent() {
    let key = keypair();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let pool = [server.local_addr()];
    let handle = server.handle();
    tokio::spawn(volley::echo::serve(server, std::future::pending()));
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let too_long = Bytes::from(vec![1u8; MAX_EARLY_DATA + 1]);
    match client.connect_with_early(&pool, too_long).await {
        Err(Error::EarlyData(EarlyDataError::TooLarge(n))) => assert_eq!(n, 1202),
        other => panic!("{other:?}"),
    }
    match client.connect_with_early(&pool, Bytes::new()).await {
        Err(Error::EarlyData(EarlyDataError::Empty)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(handle.stats().inits_received, 0, "nothing was sent");
    // The largest that fits rides, and the echo server answers it.
    let largest = Bytes::from(vec![0x42u8; MAX_EARLY_DATA]);
    let session = timeout(BOUND, client.connect_with_early(&pool, largest.clone()))
        .await
        .unwrap()
        .unwrap();
    let reply = timeout(BOUND, session.recv()).await.unwrap().unwrap();
    assert_eq!(reply, largest);
    until("the early data counted", || {
        handle.stats().early_data_received == 1
    })
    .await;
    assert_eq!(handle.stats().early_data_bytes, MAX_EARLY_DATA as u64);
    assert_eq!(handle.stats().inits_received, 1);
}

#[tokio::test]
async fn z5_the_udp_proxy_sends_a_flows_first_datagram_as_early_data_when_asked() {
    // The service: a plain UDP echo.
    let service = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let backend = service.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = service.recv_from(&mut buf).await {
            let _ = service.send_to(&buf[..n], from).await;
        }
    });
    let key = keypair();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let pool = vec![server.local_addr()];
    let handle = server.handle();
    tokio::spawn(UdpForward::new(server, backend).serve(std::future::pending()));
    for (early, flows) in [(false, 0), (true, 1)] {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy = socket.local_addr().unwrap();
        let client = Client::new(ClientConfig::new(vec![key.public()]));
        tokio::spawn(
            UdpProxy::new(client, pool.clone())
                .early_data(early)
                .idle_timeout(Duration::from_secs(10))
                .serve(socket, std::future::pending()),
        );
        let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for msg in [&b"first"[..], b"second"] {
            app.send_to(msg, proxy).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, _) = timeout(BOUND, app.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], msg, "early {early}");
        }
        until("the flow's session counted", || {
            handle.stats().sessions_opened == 1 + flows
        })
        .await;
        assert_eq!(handle.stats().early_data_received, flows, "early {early}");
    }
}

#[tokio::test]
async fn z5_metrics_serve_the_early_data_counters() {
    let key = keypair();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let pool = [server.local_addr()];
    let handle = server.handle();
    tokio::spawn(volley::echo::serve(server, std::future::pending()));
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let session = timeout(
        BOUND,
        client.connect_with_early(&pool, Bytes::from_static(b"hi")),
    )
    .await
    .unwrap()
    .unwrap();
    let _ = timeout(BOUND, session.recv()).await.unwrap().unwrap();
    until("the early data counted", || {
        handle.stats().early_data_received == 1
    })
    .await;
    let text = volley::metrics::Metrics::new().server(handle).render();
    for line in [
        "volley_server_early_data_received_total 1\n",
        "volley_server_early_data_bytes_total 2\n",
        "volley_server_early_data_duplicate_total 0\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
}

#[tokio::test]
async fn z5_an_early_request_counts_as_load_from_its_arrival_to_its_reply() {
    // A one-request session's request is its early data: it must show in the load the server
    // announces (its offers' hints) from the moment it arrives, before the application asked
    // for anything — else a fleet of one-request sessions looks idle to every race.
    let key = keypair();
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let pool = [server.local_addr()];
    let handle = server.handle();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let connecting = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .connect_with_early(&pool, Bytes::from_static(b"work"))
                .await
        }
    });
    let accepted = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    until("the early request counted before it is read", || {
        handle.load().requests == 1
    })
    .await;
    let request = timeout(BOUND, accepted.recv_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.data(), b"work");
    assert_eq!(handle.load().requests, 1, "still in flight until its reply");
    request.reply(&accepted, b"done").await.unwrap();
    until("the reply ends it", || handle.load().requests == 0).await;
    let session = timeout(BOUND, connecting).await.unwrap().unwrap().unwrap();
    let reply = timeout(BOUND, session.recv()).await.unwrap().unwrap();
    assert_eq!(&reply[..], b"done");
}
