//! Helpers shared by the loopback test files: fleets of echo servers on 127.0.0.1:0 and bounded
//! waits.

// Each test file uses its own part of these helpers; the rest is unused there.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::timeout;
use volley::{
    Client, ClientConfig, SelectionPolicy, Server, ServerConfig, ServerHandle, ServerStats,
    SessionConfig, StaticKeypair,
};

/// The bound on every wait: far above what any of them takes, so that only a failure hits it.
pub const BOUND: Duration = Duration::from_secs(20);

pub fn fast_session() -> SessionConfig {
    SessionConfig {
        keepalive_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(600),
        ..SessionConfig::default()
    }
}

pub struct Fleet {
    pub key: StaticKeypair,
    pub addrs: Vec<SocketAddr>,
    tasks: Vec<Option<JoinHandle<ServerStats>>>,
    stops: Vec<Option<tokio::sync::oneshot::Sender<()>>>,
}

pub async fn fleet(n: usize) -> Fleet {
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
    pub fn client(&self) -> Client {
        let mut cfg = ClientConfig::new(vec![self.key.public()]);
        cfg.session = fast_session();
        // Shorter than the fast idle timeout (R10: an INIT is not retried past it).
        cfg.handshake_timeout = Duration::from_millis(500);
        Client::new(cfg)
    }

    pub fn index(&self, addr: SocketAddr) -> usize {
        self.addrs.iter().position(|a| *a == addr).unwrap()
    }

    /// Kills a server abruptly: its task and socket vanish, nothing is sent.
    pub fn kill(&mut self, i: usize) {
        self.tasks[i].take().unwrap().abort();
    }

    /// Stops a server gracefully: sessions are closed with GOING_AWAY.
    pub async fn stop(&mut self, i: usize) {
        let _ = self.stops[i].take().unwrap().send(());
        let _ = self.tasks[i].take().unwrap().await;
    }
}

/// A server with `key` on an ephemeral loopback port, fast session timers, configured by
/// `tweak`; the test accepts its sessions.
pub async fn bind(key: &StaticKeypair, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut cfg = ServerConfig::new(key.clone());
    cfg.session = fast_session();
    tweak(&mut cfg);
    Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

/// Starts one echo server with `key`, configured by `tweak`, serving until the test ends.
pub async fn serve(
    key: &StaticKeypair,
    tweak: impl FnOnce(&mut ServerConfig),
) -> (SocketAddr, ServerHandle) {
    let server = bind(key, tweak).await;
    let (addr, handle) = (server.local_addr(), server.handle());
    tokio::spawn(volley::echo::serve(server, std::future::pending()));
    (addr, handle)
}

pub fn client_for(key: &StaticKeypair, policy: SelectionPolicy) -> Client {
    let mut cfg = ClientConfig::new(vec![key.public()]);
    cfg.session = fast_session();
    // Shorter than the fast idle timeout (R10: an INIT is not retried past it).
    cfg.handshake_timeout = Duration::from_millis(500);
    cfg.policy = policy;
    Client::new(cfg)
}

/// A session from a fresh client pinning `key`, racing `pool` by the earliest offer (bounded).
pub async fn connect(key: &StaticKeypair, pool: &[SocketAddr]) -> volley::Session {
    tokio::time::timeout(
        BOUND,
        client_for(key, SelectionPolicy::Earliest).connect(pool),
    )
    .await
    .expect("connect within the bound")
    .expect("a session")
}

/// Waits (bounded) until `cond` holds; the server publishes its load after every wake-up.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(BOUND, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

pub async fn echoes(s: &volley::Session, msg: &[u8]) {
    s.send(msg).await.unwrap();
    assert_eq!(timeout(BOUND, s.recv()).await.unwrap().unwrap(), msg);
}
