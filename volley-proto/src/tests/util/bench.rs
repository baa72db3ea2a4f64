//! One server endpoint driven by hand ([`Bench`]), for tests that feed it exact datagrams and read
//! its exact answers, and the helpers that drain a hand-driven client connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::sim::server_addr;
use crate::MAX_DATAGRAM_LEN;
use crate::client::{ClientConfig, ClientEvent, Connection, PoolState};
use crate::crypto::{PublicKey, StaticKeypair};
use crate::packet::kind;
use crate::server::{ServerConfig, ServerEndpoint};

/// One server endpoint driven by hand, without a network, for tests that feed it exact datagrams
/// and read its exact answers.
pub struct Bench {
    /// Virtual time now (tests move it by hand).
    pub now: Instant,
    /// Virtual time zero (the server was created then).
    pub start: Instant,
    /// The source of every endpoint's randomness.
    pub rng: ChaCha20Rng,
    /// The server.
    pub server: ServerEndpoint,
    /// The server's local address.
    pub addr: SocketAddr,
    /// The server's static public key.
    pub key: PublicKey,
    /// The pool knowledge of the hand-driven clients.
    pub pool: PoolState,
}

impl Bench {
    /// A server at [`server_addr`]`(0)` with seed `seed`, configured by `tweak`.
    pub fn new(seed: u64, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let start = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let kp = StaticKeypair::generate(&mut rng);
        let mut cfg = ServerConfig::new(kp);
        tweak(&mut cfg);
        let key = cfg.keypair.public();
        let server = ServerEndpoint::new(
            start,
            cfg,
            Box::new(ChaCha20Rng::seed_from_u64(rng.next_u64())),
        );
        Self {
            now: start,
            start,
            rng,
            server,
            addr: server_addr(0),
            key,
            pool: PoolState::default(),
        }
    }

    /// Sets the application load to `in_flight` requests now (completions unchanged).
    pub fn set_app(&mut self, in_flight: u32) {
        let completed = self.server.app_completed();
        self.server.set_app_load(
            self.now,
            crate::server::AppLoad {
                in_flight,
                completed,
            },
        );
    }

    /// Moves virtual time to `start + at`.
    pub fn at(&mut self, at: Duration) {
        self.now = self.start + at;
    }

    /// A client connection racing only this server, pinning its key.
    pub fn client(&mut self) -> Connection {
        let rng = Box::new(ChaCha20Rng::seed_from_u64(self.rng.next_u64()));
        Connection::new(
            self.now,
            ClientConfig::new(vec![self.key]),
            vec![self.addr],
            rng,
            &mut self.pool,
        )
    }

    /// Hands `data` from `from` to the server; returns its immediate reply, which must go back to
    /// `from` and be no larger than `data` (R6).
    pub fn handle(&mut self, from: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        let t = self
            .server
            .handle(self.now, from, self.addr, data, &mut out)?;
        assert_eq!(
            t.destination, from,
            "reply to another address than the sender"
        );
        assert!(
            t.size <= data.len(),
            "amplification: {} byte reply to {} bytes",
            t.size,
            data.len()
        );
        Some(out[..t.size].to_vec())
    }

    /// Session output the server queued (keepalives, echoes, closes).
    pub fn server_transmits(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            out.push((t.destination, buf[..t.size].to_vec()));
        }
        out
    }

    /// Runs PROBE → OFFER for a new client at `from`; returns the client (holding its INIT, not
    /// yet sent), the PROBE and the OFFER.
    pub fn offer_to(&mut self, from: SocketAddr) -> (Connection, Vec<u8>, Vec<u8>) {
        let mut conn = self.client();
        let probes = transmits(&mut conn, self.now);
        assert_eq!(probes.len(), 1, "one probe per server");
        let probe = probes[0].1.clone();
        let offer = self.handle(from, &probe).expect("an offer");
        assert_eq!(offer[1], kind::OFFER);
        conn.handle(self.now, self.addr, &offer, &mut self.pool);
        (conn, probe, offer)
    }

    /// Runs PROBE → OFFER → INIT for a new client at `from`; returns the client and the INIT it
    /// sent (not yet delivered).
    pub fn init_from(&mut self, from: SocketAddr) -> (Connection, Vec<u8>) {
        let (mut conn, _, _) = self.offer_to(from);
        let inits = transmits(&mut conn, self.now);
        assert_eq!(inits.len(), 1, "one INIT");
        assert_eq!(inits[0].0, self.addr);
        assert_eq!(inits[0].1[1], kind::INIT);
        (conn, inits[0].1.clone())
    }
}

/// Everything `conn` wants to send at `now`.
pub fn transmits(conn: &mut Connection, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    while let Some(t) = conn.poll_transmit(now, &mut buf) {
        out.push((t.destination, buf[..t.size].to_vec()));
    }
    out
}

/// Every event `conn` has queued.
pub fn events(conn: &mut Connection) -> Vec<ClientEvent> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}
