//! Backend health (O3) in the library: a server whose TCP backend is down wins no race and
//! comes back when the backend does; a passive check ejects on a refusal.

use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::time::{Instant, timeout};
use volley::proxy::{BackendHealth, HealthCheck};
use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};

const BOUND: Duration = Duration::from_secs(20);

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let give_up = Instant::now() + BOUND;
    while !ok() {
        assert!(Instant::now() < give_up, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn o3_a_server_whose_tcp_backend_is_down_offers_nothing_and_offers_again_when_it_is_back() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    // Two servers echoing; only the first has a backend, checked every 50 ms. Its backend's
    // port is free at first: nothing listens there.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    drop(backend);
    let checked = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let other = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let (a, b) = (checked.local_addr(), other.local_addr());
    let (ha, hb) = (checked.handle(), other.handle());
    let health = BackendHealth::start(
        ha.clone(),
        backend_addr,
        HealthCheck::tcp()
            .interval(Duration::from_millis(50))
            .fall(2)
            .rise(2),
    );
    tokio::spawn(volley::echo::serve(checked, std::future::pending()));
    tokio::spawn(volley::echo::serve(other, std::future::pending()));
    eventually("the first check says down", || {
        health.stats().checks >= 1 && !health.is_up()
    })
    .await;
    assert!(health.reason().unwrap().contains("refused"));

    let client = Client::new(ClientConfig::new(vec![key.public()]));
    for _ in 0..10 {
        let session = timeout(BOUND, client.connect(&[a, b]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            session.remote(),
            b,
            "a session with the server whose backend is down"
        );
    }
    assert_eq!(ha.stats().offers_sent, 0);
    assert_eq!(ha.stats().sessions_opened, 0);

    // The backend comes up: two passed checks in a row, and the server offers again.
    let listener = TcpListener::bind(backend_addr).await.unwrap();
    let accepting = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    eventually("up again", || health.is_up()).await;
    assert_eq!(health.stats().changes, 2);
    let won = {
        let mut won = false;
        for _ in 0..50 {
            let s = timeout(BOUND, client.connect(&[a])).await.unwrap();
            if s.is_ok_and(|s| s.remote() == a) {
                won = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        won
    };
    assert!(won, "the server never won a race with its backend back");
    assert!(hb.stats().sessions_opened >= 10);

    // Down again: two failed checks in a row.
    accepting.abort();
    let _ = accepting.await;
    eventually("down again", || !health.is_up()).await;
    assert_eq!(health.stats().changes, 3);
}

#[tokio::test]
async fn o3_a_passive_check_ejects_the_backend_on_a_refusal_and_takes_it_back_after_the_ejection() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let health = BackendHealth::start(
        handle.clone(),
        dead_addr,
        HealthCheck::passive().eject(Duration::from_millis(500)),
    );
    assert!(health.is_up(), "a passive check starts up");
    tokio::spawn(
        volley::proxy::UdpForward::new(server, dead_addr)
            .health(health.clone())
            .serve(std::future::pending()),
    );
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let session = timeout(BOUND, client.connect(&[addr]))
        .await
        .unwrap()
        .unwrap();
    // The backend refuses what the session forwards (ICMP port unreachable): ejected.
    let give_up = Instant::now() + BOUND;
    while health.is_up() {
        assert!(Instant::now() < give_up, "no refusal seen");
        session.send(b"anyone?").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(health.stats().refusals >= 1);
    assert!(
        timeout(Duration::from_millis(300), client.connect(&[addr]))
            .await
            .map_or(true, |r| r.is_err()),
        "a session opened with the backend ejected"
    );
    // After the ejection it is up again (and the next refusal would eject it again).
    eventually("back after the ejection", || health.is_up()).await;
    assert_eq!(health.stats().changes, 2);
}
