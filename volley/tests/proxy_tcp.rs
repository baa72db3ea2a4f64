//! The TCP proxy end to end on loopback (D2): applications → client-side proxy → a volley
//! session and an encrypted stream per connection → server-side forwarders → a TCP service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use volley::proxy::{ProxyStats, TcpForward, TcpForwardStats, TcpProxy};
use volley::{Client, ClientConfig, Server, ServerConfig, ServerHandle, StaticKeypair};

const BOUND: Duration = Duration::from_secs(20);

/// A TCP echo service: each connection gets back what it sent, and is closed (write side) after
/// the client's end. Counts the connections it accepted.
async fn backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

type Forwarder = (
    SocketAddr,
    ServerHandle,
    oneshot::Sender<()>,
    JoinHandle<TcpForwardStats>,
);

async fn forwarder(key: &StaticKeypair, backend: SocketAddr) -> Forwarder {
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let (stop, stopped) = oneshot::channel::<()>();
    let forward = TcpForward::bind(server, backend).await.unwrap();
    let task = tokio::spawn(forward.serve(async {
        let _ = stopped.await;
    }));
    (addr, handle, stop, task)
}

/// A client-side proxy to `pool`, with the options `options` sets.
async fn proxy(
    key: &StaticKeypair,
    pool: Vec<SocketAddr>,
    options: impl FnOnce(TcpProxy) -> TcpProxy,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<Result<ProxyStats, volley::Error>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let task = tokio::spawn(options(TcpProxy::new(client, pool)).serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// Sends `data` through a new connection to `proxy`, ends the write side, and reads everything
/// back until the end.
async fn round_trip(proxy: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    let (mut r, mut w) = conn.split();
    let send = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let (_, got) = timeout(BOUND, async { tokio::join!(send, recv) })
        .await
        .unwrap();
    got.unwrap();
    back
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 4 s: {what}");
}

#[tokio::test]
async fn d2_tcp_proxy_relays_each_connection_on_its_own_session_and_counts_it_as_load() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let (service, accepted) = backend().await;
    let (a, ha, _stop_a, _) = forwarder(&key, service).await;
    let (b, hb, _stop_b, _) = forwarder(&key, service).await;
    let (proxy, stop, running) = proxy(&key, vec![a, b], |p| p).await;

    // Bulk both ways, byte for byte, with the half-close carried through (the backend answers
    // the end of our bytes with the end of its own).
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    assert_eq!(round_trip(proxy, &data).await, data);
    assert_eq!(round_trip(proxy, b"").await, b"");

    // An open connection is a request in flight on its server, until it ends.
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(BOUND, conn.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    eventually("the open connection counts as load", || {
        ha.load().app + hb.load().app == 1
    })
    .await;
    drop(conn);
    eventually("the closed connection no longer counts", || {
        ha.load().app + hb.load().app == 0
    })
    .await;
    let opened = ha.stats().sessions_opened + hb.stats().sessions_opened;
    assert_eq!(opened, 3, "one session per connection");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    let _ = stop.send(());
    let stats = timeout(BOUND, running).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.flows, 3, "{stats:?}");
    assert_eq!(stats.connect_failures, 0, "{stats:?}");
}

#[tokio::test]
async fn d2_new_tcp_connections_fail_over_when_a_server_or_its_backend_goes_away() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let (service, _) = backend().await;
    // A's backend is a port nobody listens on: its streams fail before A's HELLO, and the
    // connection races again without A.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let (a, _ha, _stop_a, task_a) = forwarder(&key, dead_addr).await;
    let (b, hb, stop_b, task_b) = forwarder(&key, service).await;
    let (c, hc, _stop_c, _) = forwarder(&key, service).await;
    let (proxy, stop, running) = proxy(&key, vec![a, b, c], |p| p.attempts(3)).await;
    for i in 0..6 {
        let text = format!("connection {i}");
        assert_eq!(round_trip(proxy, text.as_bytes()).await, text.as_bytes());
    }
    // B and C answer alike, so which wins each race is a coin toss: a few more connections
    // until B has served one (each has an even chance).
    let mut more = 0;
    while hb.stats().sessions_opened == 0 && more < 64 {
        let text = format!("more {more}");
        assert_eq!(round_trip(proxy, text.as_bytes()).await, text.as_bytes());
        more += 1;
    }
    // B goes away: every new connection is served by C.
    let _ = stop_b.send(());
    assert!(
        hb.stats().sessions_opened > 0,
        "B served before it went away"
    );
    // B's shutdown has run to its end: its socket is closed.
    timeout(BOUND, task_b).await.unwrap().unwrap();
    let before = hc.stats().sessions_opened;
    for i in 0..4 {
        let text = format!("after {i}");
        assert_eq!(round_trip(proxy, text.as_bytes()).await, text.as_bytes());
    }
    assert!(hc.stats().sessions_opened >= before + 4);
    let _ = stop.send(());
    let stats = timeout(BOUND, running).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.flows, 10 + more, "{stats:?}");
    assert_eq!(stats.connect_failures, 0, "{stats:?}");
    drop(_stop_a);
    let a_stats = timeout(BOUND, task_a).await.unwrap().unwrap();
    assert_eq!(a_stats.streams, a_stats.backend_failures, "{a_stats:?}");
}

#[tokio::test]
async fn a5_an_idle_tcp_relay_is_reset_on_both_sides_with_a_reason() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    // A backend that echoes, and reports how its connection ended.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    let (ended_tx, ended) = oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let end = loop {
            match conn.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => conn.write_all(&buf[..n]).await.unwrap(),
                Err(e) => break Err(e.kind()),
            }
        };
        let _ = ended_tx.send(end);
    });
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let (a, ha) = (server.local_addr(), server.handle());
    let forward_metrics = Arc::new(volley::proxy::ForwardMetrics::default());
    let forward = TcpForward::bind(server, service)
        .await
        .unwrap()
        .metrics(Arc::clone(&forward_metrics));
    tokio::spawn(forward.serve(std::future::pending()));
    let proxy_metrics = Arc::new(volley::proxy::ProxyMetrics::default());
    let metrics = Arc::clone(&proxy_metrics);
    let (proxy, _stop, _running) = proxy(&key, vec![a], move |p| {
        p.idle_timeout(Duration::from_millis(300)).metrics(metrics)
    })
    .await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        timeout(BOUND, conn.read(&mut buf)).await.unwrap().unwrap(),
        1
    );
    // Quiet for longer than the idle timeout: the application's connection is reset, not
    // ended — it must not take a cut relay for a complete one ...
    let end = timeout(BOUND, conn.read(&mut buf)).await.unwrap();
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    // ... and so is the backend's, by the server side, told why by the session's CLOSE.
    assert_eq!(
        timeout(BOUND, ended).await.unwrap().unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    eventually("the reason counted on both sides", || {
        proxy_metrics.stats().idle_resets == 1 && forward_metrics.stats().idle == 1
    })
    .await;
    assert_eq!(forward_metrics.stats().broken, 0);
    eventually("the server's session and load are released", || {
        ha.load().app == 0 && ha.load().sessions == 0
    })
    .await;
}

#[tokio::test]
async fn d2_silent_connections_from_one_address_cannot_shut_out_other_clients() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let (service, _) = backend().await;
    let (a, _ha, _stop_a, _) = forwarder(&key, service).await;
    // 127.0.0.2 opens as many connections as one address may keep pending, and sends nothing.
    let from = |_: usize| async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(a).await.unwrap()
    };
    let mut silent = Vec::new();
    for i in 0..volley::proxy::MAX_PENDING_STREAMS_PER_SOURCE {
        silent.push(from(i).await);
    }
    // One more from that address is closed at once. (The acceptor takes connections in the
    // order they came, so it counts the silent ones first, whenever it gets to them.)
    let mut extra = from(0).await;
    let mut buf = [0u8; 8];
    let n = timeout(BOUND, extra.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    // At once, not by the HELLO timeout: that would have closed the oldest silent connection
    // first, and it is still open (no byte, no end).
    let oldest = silent.remove(0).into_std().unwrap();
    assert_eq!(
        std::io::Read::read(&mut &oldest, &mut buf).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the extra connection was refused at once, while the silent ones are held"
    );
    // Everyone else still gets through.
    let (proxy, _stop, _running) = proxy(&key, vec![a], |p| p).await;
    assert_eq!(round_trip(proxy, b"still served").await, b"still served");
    drop(silent);
}

/// A client-side proxy to `pool` whose sessions prove `client_key` (A1).
async fn proxy_as(
    server_key: &StaticKeypair,
    client_key: &StaticKeypair,
    pool: Vec<SocketAddr>,
) -> (SocketAddr, Arc<volley::proxy::ProxyMetrics>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ClientConfig::new(vec![server_key.public()]);
    config.key = Some(client_key.clone());
    // Two unanswered handshakes of 0.5 s: an unlisted key is told so quickly.
    config.handshake_timeout = Duration::from_millis(500);
    let metrics = Arc::new(volley::proxy::ProxyMetrics::default());
    let proxy = TcpProxy::new(Client::new(config), pool).metrics(Arc::clone(&metrics));
    tokio::spawn(proxy.serve(listener, std::future::pending()));
    (addr, metrics)
}

/// Reads until the connection ends (EOF or reset) and returns what came.
async fn read_to_end_or_reset(conn: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a1_an_unlisted_key_never_reaches_the_backend_and_a2_a_revoked_ones_connection_ends_at_once()
 {
    let server_key = StaticKeypair::generate(&mut volley::OsRng);
    let (alice, mallory) = (
        StaticKeypair::generate(&mut volley::OsRng),
        StaticKeypair::generate(&mut volley::OsRng),
    );
    let (service, accepted) = backend().await;
    let mut config = ServerConfig::new(server_key.clone());
    config.allow = Some(Arc::new(volley::AllowList::from_keys([alice.public()])));
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    tokio::spawn(
        TcpForward::bind(server, service)
            .await
            .unwrap()
            .serve(std::future::pending()),
    );

    // Mallory's proxy gets no session: her application's connection ends with nothing, and
    // the backend never hears of it.
    let (mallorys, m_metrics) = proxy_as(&server_key, &mallory, vec![addr]).await;
    let mut conn = TcpStream::connect(mallorys).await.unwrap();
    conn.write_all(b"let me in").await.unwrap();
    let got = timeout(BOUND, read_to_end_or_reset(&mut conn))
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(m_metrics.stats().connect_failures, 1);
    assert!(handle.stats().inits_unauthorized >= 1);
    assert_eq!(handle.stats().sessions_opened, 0);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection to the backend"
    );

    // Alice's goes through, and a connection of hers in the middle of a transfer ends as soon
    // as her key leaves the list.
    let (alices, _) = proxy_as(&server_key, &alice, vec![addr]).await;
    assert_eq!(round_trip(alices, b"hello").await, b"hello");
    let mut conn = TcpStream::connect(alices).await.unwrap();
    conn.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    timeout(BOUND, conn.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let started = std::time::Instant::now();
    let revoked = handle
        .set_allow_list(Some(Arc::new(volley::AllowList::new())))
        .await;
    assert_eq!(revoked, 1);
    let rest = timeout(BOUND, read_to_end_or_reset(&mut conn))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        took < Duration::from_secs(1),
        "ended {took:?} after the revocation"
    );
    eventually("the revocation is counted", || {
        handle.stats().sessions_revoked == 1
    })
    .await;
}

/// A TCP service behind a PROXY protocol v2 header, parsed by the `ppp` crate (an
/// implementation independent of volley's): it sends back, per connection, the source address,
/// the client key and name the header carried, then echoes the stream.
async fn proxy_protocol_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                if conn.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                let mut header = head.to_vec();
                header.resize(16 + len, 0);
                if conn.read_exact(&mut header[16..]).await.is_err() {
                    return;
                }
                let parsed = ppp::v2::Header::try_from(header.as_slice()).expect("a v2 header");
                assert_eq!(parsed.command, ppp::v2::Command::Proxy);
                assert_eq!(parsed.protocol, ppp::v2::Protocol::Stream);
                let source = match parsed.addresses {
                    ppp::v2::Addresses::IPv4(a) => {
                        SocketAddr::from((a.source_address, a.source_port))
                    }
                    ppp::v2::Addresses::IPv6(a) => {
                        SocketAddr::from((a.source_address, a.source_port))
                    }
                    other => panic!("{other:?}"),
                };
                let (mut key, mut name) = (String::new(), String::new());
                for tlv in parsed.tlvs() {
                    let tlv = tlv.expect("a well-formed TLV");
                    match tlv.kind {
                        0xE0 => key = tlv.value.iter().map(|b| format!("{b:02x}")).collect(),
                        0xE1 => name = String::from_utf8(tlv.value.to_vec()).unwrap(),
                        _ => {}
                    }
                }
                let line = format!("{source} {key} {name}\n");
                if conn.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn o5_a_backend_behind_the_proxy_protocol_learns_the_client_s_address_key_and_name() {
    let server_key = StaticKeypair::generate(&mut volley::OsRng);
    let alice = StaticKeypair::generate(&mut volley::OsRng);
    let service = proxy_protocol_backend().await;
    let mut list = volley::AllowList::new();
    list.insert(alice.public(), Some("alice"));
    let mut config = ServerConfig::new(server_key.clone());
    config.allow = Some(Arc::new(list));
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    tokio::spawn(
        TcpForward::bind(server, service)
            .await
            .unwrap()
            .proxy_protocol(true)
            .serve(std::future::pending()),
    );
    let (alices, _) = proxy_as(&server_key, &alice, vec![addr]).await;
    let mut conn = TcpStream::connect(alices).await.unwrap();
    conn.write_all(b"payload").await.unwrap();
    conn.shutdown().await.unwrap();
    let got = timeout(BOUND, read_to_end_or_reset(&mut conn))
        .await
        .unwrap();
    let got = String::from_utf8(got).unwrap();
    let (line, rest) = got.split_once('\n').expect("the backend's line");
    assert_eq!(rest, "payload", "the stream follows the header unchanged");
    let fields: Vec<&str> = line.split(' ').collect();
    let source: SocketAddr = fields[0].parse().unwrap();
    // The client's address as the server knows it: its session's remote address.
    assert_eq!(
        source.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_ne!(source.port(), 0);
    assert_eq!(fields[1], alice.public().to_hex());
    assert_eq!(fields[2], "alice");
    assert_eq!(handle.stats().sessions_opened, 1);
}

/// A TCP service that sends `len` bytes of a known pattern to every connection, then closes.
async fn download_backend(len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
                let mut sent = 0;
                while sent < len {
                    let n = chunk.len().min(len - sent);
                    if conn.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    sent += n;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o1_a_download_completes_byte_for_byte_while_its_server_drains_and_new_connections_go_elsewhere()
 {
    const LEN: usize = 50 * 1024 * 1024;
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let service = download_backend(LEN).await;
    let mut forwarders = Vec::new();
    for _ in 0..2 {
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig::new(key.clone()),
        )
        .await
        .unwrap();
        let (addr, handle) = (server.local_addr(), server.handle());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            TcpForward::bind(server, service)
                .await
                .unwrap()
                .drain(volley::Drain::new(
                    Duration::from_secs(30),
                    std::future::pending(),
                ))
                .serve(async {
                    let _ = stopped.await;
                }),
        );
        forwarders.push((addr, handle, Some(stop), task));
    }
    let pool: Vec<SocketAddr> = forwarders.iter().map(|f| f.0).collect();
    let (proxy, _stop, _running) = proxy(&key, pool, |p| p).await;

    // The download starts; its server is the one with a session.
    let mut download = TcpStream::connect(proxy).await.unwrap();
    let mut got = vec![0u8; 1024 * 1024];
    timeout(BOUND, download.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let busy = forwarders
        .iter()
        .position(|f| f.1.stats().sessions_opened == 1)
        .expect("one server carries the download");
    let other = 1 - busy;
    let _ = forwarders[busy].2.take().unwrap().send(());
    // (The drain reaches the server's driver as a control message: give it a moment.)
    tokio::time::sleep(Duration::from_millis(50)).await;

    // New connections meanwhile go to the other server, every one.
    for _ in 0..3 {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        let mut first = [0u8; 1024];
        timeout(BOUND, c.read_exact(&mut first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first[250], 250);
    }
    assert_eq!(forwarders[busy].1.stats().sessions_opened, 1);
    assert_eq!(forwarders[other].1.stats().sessions_opened, 3);

    // The download completes, byte for byte.
    let mut rest = Vec::with_capacity(LEN);
    timeout(Duration::from_secs(120), download.read_to_end(&mut rest))
        .await
        .expect("the download finishes")
        .unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), LEN);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, b)| *b == ((i % 65_536) % 251) as u8),
        "the bytes are the backend's"
    );
    drop(download);
    // With its last session ended the drained server stops on its own, long before 30 s.
    let (_, _, _, task) = forwarders.swap_remove(busy);
    let stats = timeout(BOUND, task).await.expect("drained").unwrap();
    assert_eq!(stats.streams, 1);
    assert_eq!(stats.server.sessions_opened, 1);
}
