//! The UDP proxy end to end on loopback (D1): applications → client-side proxy → volley
//! sessions → server-side forwarders → a UDP service, and back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use volley::proxy::{ProxyMetrics, ProxyStats, UdpForward, UdpProxy};
use volley::{
    Client, ClientConfig, Server, ServerConfig, ServerHandle, ServerStats, StaticKeypair,
};

const BOUND: Duration = Duration::from_secs(20);

/// A UDP service that answers each datagram upper-cased, and counts what it saw per source.
async fn backend() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n].to_ascii_uppercase(), from).await;
        }
    });
    addr
}

type Forwarder = (
    SocketAddr,
    ServerHandle,
    oneshot::Sender<()>,
    JoinHandle<ServerStats>,
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
    let task = tokio::spawn(UdpForward::new(server, backend).serve(async {
        let _ = stopped.await;
    }));
    (addr, handle, stop, task)
}

async fn ask(app: &UdpSocket, proxy: SocketAddr, text: &str) -> String {
    app.send_to(text.as_bytes(), proxy).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = timeout(BOUND, app.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[tokio::test]
async fn d1_udp_proxy_carries_each_flow_on_its_own_session_and_new_flows_fail_over() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let service = backend().await;
    let (a, ha, stop_a, task_a) = forwarder(&key, service).await;
    let (b, hb, _stop_b, _) = forwarder(&key, service).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let metrics = Arc::new(ProxyMetrics::default());
    let running = tokio::spawn(
        UdpProxy::new(client, vec![a, b])
            .idle_timeout(Duration::from_millis(300))
            .metrics(Arc::clone(&metrics))
            .serve(socket, async {
                let _ = stopped.await;
            }),
    );
    // Three applications, three flows, each answered on its own.
    let apps = [
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    ];
    for round in 0..3 {
        for (i, app) in apps.iter().enumerate() {
            let text = format!("flow {i} round {round}");
            assert_eq!(ask(app, proxy, &text).await, text.to_uppercase());
        }
    }
    let opened = ha.stats().sessions_opened + hb.stats().sessions_opened;
    assert_eq!(opened, 3, "one session per flow, kept across its datagrams");
    // A server goes away (its shutdown run to its end): new flows race what is left.
    drop(stop_a);
    timeout(BOUND, task_a).await.unwrap().unwrap();
    let late = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&late, proxy, "after").await, "AFTER");
    // Flows idle out; the next datagram of an application starts a new one.
    timeout(BOUND, async {
        while metrics.open_flows() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every flow idles out");
    assert_eq!(ask(&apps[0], proxy, "again").await, "AGAIN");
    let _ = stop.send(());
    let stats: ProxyStats = timeout(BOUND, running).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.flows, 5, "{stats:?}");
    assert_eq!(stats.connect_failures, 0, "{stats:?}");
}

#[tokio::test]
async fn d1_a_forwarded_datagram_is_load_until_the_backend_answers() {
    // A backend that answers only when told: the request counts meanwhile.
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let service = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = service.local_addr().unwrap();
    let (addr, handle, _stop, _) = forwarder(&key, backend_addr).await;
    let session = Client::new(ClientConfig::new(vec![key.public()]))
        .connect(&[addr])
        .await
        .unwrap();
    session.send(b"question").await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = timeout(BOUND, service.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"question");
    timeout(BOUND, async {
        while handle.load().requests != 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the forwarded request counts as load");
    service.send_to(b"answer", from).await.unwrap();
    let reply = timeout(BOUND, session.recv()).await.unwrap().unwrap();
    assert_eq!(&reply[..], b"answer");
    timeout(BOUND, async {
        while handle.load().requests != 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("answered: no longer load");
}

#[tokio::test]
async fn o4_datagrams_of_9000_and_65507_bytes_cross_both_proxies_both_ways() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let service = backend().await;
    let (a, ha, _stop_a, _) = forwarder(&key, service).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let running = tokio::spawn(UdpProxy::new(client, vec![a]).serve(socket, async {
        let _ = stopped.await;
    }));
    let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 70_000];
    for len in [9_000usize, 1_422, 4_096, 65_507, 9_000] {
        let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        app.send_to(&data, proxy).await.unwrap();
        let (n, _) = timeout(BOUND, app.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        // The backend answers each datagram upper-cased: the whole of it came through, and
        // the whole answer went back.
        assert_eq!(n, len);
        assert_eq!(buf[..n], data.to_ascii_uppercase());
    }
    let _ = stop.send(());
    let stats: ProxyStats = timeout(BOUND, running).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert_eq!(stats.flows, 1, "{stats:?}");
    let s = ha.stats();
    assert_eq!(s.data_reassembled, 5, "{s:?}");
    assert!(s.data_fragments >= 2 * 7 + 2 + 3 + 47, "{s:?}");
}

#[tokio::test]
async fn a2_a_revoked_keys_udp_flow_ends_and_its_next_flow_gets_no_session() {
    let server_key = StaticKeypair::generate(&mut volley::OsRng);
    let alice = StaticKeypair::generate(&mut volley::OsRng);
    let service = backend().await;
    let mut config = ServerConfig::new(server_key.clone());
    config.allow = Some(Arc::new(volley::AllowList::from_keys([alice.public()])));
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    tokio::spawn(UdpForward::new(server, service).serve(std::future::pending()));

    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    let mut config = ClientConfig::new(vec![server_key.public()]);
    config.key = Some(alice.clone());
    config.handshake_timeout = Duration::from_millis(300);
    let metrics = Arc::new(ProxyMetrics::default());
    tokio::spawn(
        UdpProxy::new(Client::new(config), vec![addr])
            .metrics(Arc::clone(&metrics))
            .serve(socket, std::future::pending()),
    );
    let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&app, proxy, "hello").await, "HELLO");
    assert_eq!(metrics.open_flows(), 1);

    // Alice leaves the list: her flow's session ends at once, and the flow with it.
    let revoked = handle
        .set_allow_list(Some(Arc::new(volley::AllowList::new())))
        .await;
    assert_eq!(revoked, 1);
    timeout(BOUND, async {
        while metrics.open_flows() != 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the revoked flow ends");
    // Her next datagram starts a flow that gets no session: no answer, one connect failure.
    app.send_to(b"again", proxy).await.unwrap();
    timeout(BOUND, async {
        while metrics.stats().connect_failures != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the next flow fails to connect");
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(100), app.recv_from(&mut buf))
            .await
            .is_err(),
        "no answer without a session"
    );
    let stats = handle.stats();
    assert_eq!(stats.sessions_revoked, 1, "{stats:?}");
    assert!(stats.inits_unauthorized >= 1, "{stats:?}");
}

#[tokio::test]
async fn o1_a_draining_udp_proxy_keeps_its_flows_starts_none_and_stops_when_they_end() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let service = backend().await;
    let (a, _ha, _stop_a, _) = forwarder(&key, service).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let metrics = Arc::new(ProxyMetrics::default());
    let idle = Duration::from_millis(600);
    let running = tokio::spawn(
        UdpProxy::new(client, vec![a])
            .idle_timeout(idle)
            // Far longer than the flow lives: the proxy must end when the flow does.
            .drain(volley::Drain::new(
                Duration::from_secs(60),
                std::future::pending(),
            ))
            .metrics(Arc::clone(&metrics))
            .serve(socket, async {
                let _ = stopped.await;
            }),
    );
    let old = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&old, proxy, "before").await, "BEFORE");
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The open flow goes on while the proxy drains, for longer than one idle timeout in all.
    for i in 0..4 {
        assert_eq!(
            ask(&old, proxy, &format!("during {i}")).await,
            format!("DURING {i}")
        );
        tokio::time::sleep(idle / 3).await;
    }
    assert!(!running.is_finished(), "the proxy stopped with a flow open");
    // A new application address starts no flow: its datagram is dropped and counted.
    let dropped = metrics.stats().dropped;
    let new = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    new.send_to(b"new", proxy).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(300), new.recv_from(&mut buf))
            .await
            .is_err(),
        "a new flow started while draining"
    );
    assert_eq!(metrics.stats().dropped, dropped + 1);
    // Once the flow ends (idle), the drain is done and the proxy returns, long before 60 s.
    let stats = timeout(BOUND, running).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.flows, 1);
}

#[tokio::test]
async fn o6_proxy_metrics_name_each_server_and_time_each_flows_connect() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let service = backend().await;
    let (a, _ha, _sa, _) = forwarder(&key, service).await;
    let (b, _hb, _sb, _) = forwarder(&key, service).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let metrics = Arc::new(ProxyMetrics::default());
    tokio::spawn(
        UdpProxy::new(client, vec![a, b])
            .metrics(Arc::clone(&metrics))
            .serve(socket, std::future::pending()),
    );
    let mut apps = Vec::new();
    for i in 0..6 {
        let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(ask(&app, proxy, &format!("f{i}")).await, format!("F{i}"));
        apps.push(app);
    }
    let (fa, fb) = (metrics.server_flows(a), metrics.server_flows(b));
    assert_eq!(fa + fb, 6, "every flow counted for the server that won it");
    let text = volley::metrics::Metrics::new()
        .proxy(Arc::clone(&metrics))
        .render();
    for (server, flows) in [(a, fa), (b, fb)] {
        if flows > 0 {
            assert!(
                text.contains(&format!(
                    "volley_proxy_server_flows_total{{server=\"{server}\"}} {flows}"
                )),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "volley_proxy_server_open_flows{{server=\"{server}\"}} {flows}"
                )),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "volley_proxy_server_answer_time_seconds_count{{server=\"{server}\"}} {flows}"
                )),
                "{text}"
            );
        }
    }
    assert!(
        text.contains("volley_proxy_connect_time_seconds_count 6"),
        "{text}"
    );
    assert!(
        text.contains("# HELP volley_proxy_connect_time_seconds From a flow's start"),
        "{text}"
    );
}
