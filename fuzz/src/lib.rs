//! Shared pieces of the volley fuzz targets: a cursor over the fuzzer's input, the fixed addresses
//! and seeded keys every target uses, and genuine datagrams recorded once from a real exchange so
//! that targets can mutate them (a fuzzer cannot forge a cookie MAC or a Noise message by itself).
//!
//! Everything is seeded: a fresh [`ServerEndpoint`] or [`Client`] connection built here draws exactly the
//! same keys, tags, session ids and ephemerals as the ones the recording was made with, so the
//! recorded OFFER, INIT, ACCEPT and DATA stay genuine for every fresh instance. The tests at the
//! bottom prove that (run them with `cargo test --manifest-path fuzz/Cargo.toml`).

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use volley_proto::client::PoolState;
use volley_proto::{
    ClientConfig, ClientEvent, CloseCode, Connection, MAX_DATAGRAM_LEN, ServerConfig,
    ServerEndpoint, ServerEvent, StaticKeypair,
};

/// Seed of the server's static key.
pub const SERVER_KEY_SEED: u64 = 1;
/// Seed of the server endpoint's RNG (cookie keys, session ids, ephemerals).
pub const SERVER_RNG_SEED: u64 = 2;
/// Seed of the client connection's RNG (tags, session ids, ephemerals).
pub const CLIENT_RNG_SEED: u64 = 3;
/// Seed of the client's static key (the key its handshakes prove).
pub const CLIENT_KEY_SEED: u64 = 4;

/// The client's address as the server sees it.
pub fn client_addr() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}

/// The client after a NAT rebinding: same IP, another port.
pub fn client_addr_moved() -> SocketAddr {
    "198.51.100.7:40001".parse().unwrap()
}

/// The server that answers (the one the recordings come from).
pub fn server_addr() -> SocketAddr {
    "203.0.113.1:4433".parse().unwrap()
}

/// The second member of the client's pool; it never answers in the recordings.
pub fn backup_server_addr() -> SocketAddr {
    "203.0.113.2:4433".parse().unwrap()
}

/// The endpoints' own address normalisation (IPv4-mapped IPv6 → IPv4, scope ids kept).
pub use volley_proto::canonical_addr as canonical;

/// The server's static key pair (generated once).
pub fn server_keypair() -> &'static StaticKeypair {
    static KP: OnceLock<StaticKeypair> = OnceLock::new();
    KP.get_or_init(|| StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(SERVER_KEY_SEED)))
}

/// The client's static key pair (generated once).
pub fn client_keypair() -> &'static StaticKeypair {
    static KP: OnceLock<StaticKeypair> = OnceLock::new();
    KP.get_or_init(|| StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(CLIENT_KEY_SEED)))
}

/// A key no allow-list of the targets lists with the client's.
pub fn stranger_keypair() -> &'static StaticKeypair {
    static KP: OnceLock<StaticKeypair> = OnceLock::new();
    KP.get_or_init(|| StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(5)))
}

/// A fresh server endpoint with default configuration, started at `now`.
pub fn new_server(now: Instant) -> ServerEndpoint {
    new_server_with(now, |_| {})
}

/// Peers a fuzzed server names in REDIRECTs: one stranger, and the fuzzer's own client address,
/// which a REDIRECT to that client must never name.
pub fn redirect_peers() -> Vec<SocketAddr> {
    vec!["198.51.100.200:4433".parse().unwrap(), client_addr()]
}

/// [`new_server`] with its configuration adjusted by `tweak`.
pub fn new_server_with(now: Instant, tweak: impl FnOnce(&mut ServerConfig)) -> ServerEndpoint {
    let mut config = ServerConfig::new(server_keypair().clone());
    tweak(&mut config);
    ServerEndpoint::new(
        now,
        config,
        Box::new(ChaCha20Rng::seed_from_u64(SERVER_RNG_SEED)),
    )
}

/// A client connection with the pool knowledge of its own client instance: the calls that take a
/// [`PoolState`] get this one; everything else is the connection's (through `Deref`).
#[derive(Debug)]
pub struct Client {
    /// The connection.
    pub conn: Connection,
    /// Its client instance's pool knowledge.
    pub pool: PoolState,
}

impl Client {
    /// [`Connection::handle`] with this client's pool knowledge.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.conn.handle(now, from, datagram, &mut self.pool);
    }

    /// [`Connection::handle_timeout`] with this client's pool knowledge.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now, &mut self.pool);
    }
}

impl Deref for Client {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// A fresh client connection racing `[server_addr(), backup_server_addr()]`, started at `now`.
pub fn new_client(now: Instant) -> Client {
    new_client_with(now, |_| {})
}

/// [`new_client`] with its configuration adjusted by `tweak`.
pub fn new_client_with(now: Instant, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut config = ClientConfig::new(vec![server_keypair().public()]);
    config.key = Some(client_keypair().clone());
    tweak(&mut config);
    let mut pool = PoolState::new(config.ejection);
    let conn = Connection::new(
        now,
        config,
        vec![server_addr(), backup_server_addr()],
        Box::new(ChaCha20Rng::seed_from_u64(CLIENT_RNG_SEED)),
        &mut pool,
    );
    Client { conn, pool }
}

/// A cursor over the fuzzer's bytes. Running out is not an error: reads return `None` or fewer
/// bytes, and the target stops.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    /// A big-endian u16 (needs two bytes).
    pub fn u16(&mut self) -> Option<u16> {
        if self.data.len() < 2 {
            return None;
        }
        let v = u16::from_be_bytes([self.data[0], self.data[1]]);
        self.data = &self.data[2..];
        Some(v)
    }

    /// Up to `n` bytes (fewer if the input ends).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// How far one record moves the virtual clock: `b` × 4 ms below 0x80 (up to 508 ms), else
/// `(b & 0x7f)` × 500 ms (up to 63.5 s, enough to cross cookie lifetime, idle timeout and key
/// rotation in one step).
pub fn advance(b: u8) -> Duration {
    if b & 0x80 == 0 {
        Duration::from_millis(u64::from(b) * 4)
    } else {
        Duration::from_millis(u64::from(b & 0x7f) * 500)
    }
}

/// Builds a datagram from a recorded `template` and fuzzer bytes: `patch[0]` is a cut length (0 =
/// none), the rest is XORed over the template and extends it where longer. An all-zero patch
/// reproduces the template exactly.
pub fn patched(template: &[u8], patch: &[u8]) -> Vec<u8> {
    let (cut, mask) = match patch.split_first() {
        Some((&cut, mask)) => (usize::from(cut), mask),
        None => (0, &[][..]),
    };
    let mut out = template.to_vec();
    for (i, &m) in mask.iter().enumerate() {
        match out.get_mut(i) {
            Some(b) => *b ^= m,
            None => out.push(m),
        }
    }
    if cut != 0 && cut < out.len() {
        out.truncate(cut);
    }
    out
}

/// Genuine datagrams of one complete exchange between [`new_client`] and [`new_server`], both
/// started at the same instant, with the client at [`client_addr`] and the server at
/// [`server_addr`].
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The client's PROBE to the server (256 bytes).
    pub probe: Vec<u8>,
    /// The server's OFFER.
    pub offer: Vec<u8>,
    /// The client's INIT carrying the OFFER's cookie.
    pub init: Vec<u8>,
    /// The server's COOKIE_CHANGE for that INIT arriving from [`client_addr_moved`].
    pub cookie_change: Vec<u8>,
    /// The server's REDIRECT refusing that INIT while it was at its session limit (19 bytes, no
    /// addresses).
    pub redirect: Vec<u8>,
    /// The server's ACCEPT.
    pub accept: Vec<u8>,
    /// Client → server DATA: DATAGRAM "hello" (counter 0, key epoch 0), PING at +1 s (1, epoch
    /// 1: the recording updates keys after every packet), CLOSE NORMAL (3, epoch 1).
    pub client_data: Vec<Vec<u8>>,
    /// The server's PATH_CHALLENGE to [`client_addr_moved`], after the client's PING came from
    /// there.
    pub path_challenge: Vec<u8>,
    /// The client's PATH_RESPONSE to it (counter 2).
    pub path_response: Vec<u8>,
    /// Server → client DATA: DATAGRAM "hi", PING at +1 s, CLOSE GOING_AWAY (counters 2–4, key
    /// epoch 1: the server's PONG and PATH_CHALLENGE came first).
    pub server_data: Vec<Vec<u8>>,
}

fn drain_client(client: &mut Client, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    while let Some(t) = client.poll_transmit(now, &mut buf) {
        out.push((t.destination, buf[..t.size].to_vec()));
    }
    out
}

fn drain_server(server: &mut ServerEndpoint, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    while let Some(t) = server.poll_transmit(now, &mut buf) {
        out.push((t.destination, buf[..t.size].to_vec()));
    }
    out
}

fn record() -> Recorded {
    let t0 = Instant::now();
    let second = t0 + Duration::from_secs(1);
    // Keys updated after every packet (at most once a second), so the DATA after the first
    // second is under epoch 1.
    let mut server = new_server_with(t0, |c| c.session.rekey_after_packets = 1);
    let mut client = new_client_with(t0, |c| c.session.rekey_after_packets = 1);
    let mut resp = [0u8; MAX_DATAGRAM_LEN];

    let probe = drain_client(&mut client, t0)
        .into_iter()
        .find(|(to, _)| *to == server_addr())
        .expect("client probes the server")
        .1;
    let t = server
        .handle(t0, client_addr(), server_addr(), &probe, &mut resp)
        .expect("offer");
    let offer = resp[..t.size].to_vec();

    client.handle(t0, server_addr(), &offer);
    let sent = drain_client(&mut client, t0);
    assert_eq!(sent.len(), 1, "one INIT after the offer won");
    let init = sent[0].1.clone();

    let t = server
        .handle(t0, client_addr_moved(), server_addr(), &init, &mut resp)
        .expect("cookie change");
    let cookie_change = resp[..t.size].to_vec();
    assert_eq!(
        server.session_count(),
        0,
        "a cookie change creates no state"
    );

    // At its session limit, and later than the offer's reservation (which would honour it).
    server.set_max_sessions(Some(0));
    let late = t0 + Duration::from_millis(6);
    let t = server
        .handle(late, client_addr(), server_addr(), &init, &mut resp)
        .expect("redirect");
    let redirect = resp[..t.size].to_vec();
    server.set_max_sessions(None);
    assert_eq!(server.session_count(), 0, "a refusal creates no state");

    let t = server
        .handle(t0, client_addr(), server_addr(), &init, &mut resp)
        .expect("accept");
    let accept = resp[..t.size].to_vec();
    let id = loop {
        match server.poll_event().expect("server opened a session") {
            ServerEvent::Opened { id, .. } => break id,
            _ => continue,
        }
    };

    client.handle(t0, server_addr(), &accept);
    assert!(
        std::iter::from_fn(|| client.poll_event())
            .any(|e| matches!(e, ClientEvent::Established { .. })),
        "client established"
    );

    let mut client_data = Vec::new();
    client.send_datagram(b"hello").expect("send");
    client_data.extend(drain_client(&mut client, t0).into_iter().map(|(_, d)| d));
    client.handle_timeout(second);
    client_data.extend(
        drain_client(&mut client, second)
            .into_iter()
            .map(|(_, d)| d),
    );
    // The PING arrives from the client's new address: the server validates it.
    let _ = server.handle(
        second,
        client_addr_moved(),
        server_addr(),
        &client_data[1],
        &mut resp,
    );
    let path_challenge = drain_server(&mut server, second)
        .into_iter()
        .find(|(to, _)| *to == client_addr_moved())
        .expect("a PATH_CHALLENGE to the new address")
        .1;
    client.handle(second, server_addr(), &path_challenge);
    let path_response = drain_client(&mut client, second)
        .pop()
        .expect("a PATH_RESPONSE")
        .1;
    client.close(CloseCode::NORMAL);
    client_data.extend(
        drain_client(&mut client, second)
            .into_iter()
            .map(|(_, d)| d),
    );
    assert_eq!(client_data.len(), 3, "client DATA: datagram, ping, close");

    let mut server_data = Vec::new();
    server.send(id, b"hi").expect("send");
    server_data.extend(drain_server(&mut server, t0).into_iter().map(|(_, d)| d));
    server.handle_timeout(second);
    server_data.extend(
        drain_server(&mut server, second)
            .into_iter()
            .map(|(_, d)| d),
    );
    server.close(id, CloseCode::GOING_AWAY);
    server_data.extend(
        drain_server(&mut server, second)
            .into_iter()
            .map(|(_, d)| d),
    );
    assert_eq!(server_data.len(), 3, "server DATA: datagram, ping, close");

    Recorded {
        probe,
        offer,
        init,
        cookie_change,
        redirect,
        accept,
        client_data,
        path_challenge,
        path_response,
        server_data,
    }
}

/// The recording, made once per process.
pub fn recorded() -> &'static Recorded {
    static REC: OnceLock<Recorded> = OnceLock::new();
    REC.get_or_init(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_proto::packet::{Packet, kind};

    #[test]
    fn recordings_are_what_they_claim() {
        let r = recorded();
        assert!(matches!(Packet::decode(&r.probe), Ok(Packet::Probe(_))));
        assert!(matches!(Packet::decode(&r.offer), Ok(Packet::Offer(_))));
        assert!(matches!(Packet::decode(&r.init), Ok(Packet::Init(_))));
        assert!(matches!(
            Packet::decode(&r.cookie_change),
            Ok(Packet::CookieChange(_))
        ));
        assert!(matches!(
            Packet::decode(&r.redirect),
            Ok(Packet::Redirect(_))
        ));
        assert!(matches!(Packet::decode(&r.accept), Ok(Packet::Accept(_))));
        for d in r.client_data.iter().chain(&r.server_data) {
            assert_eq!(d[1] & !kind::KEY_PHASE_MASK, kind::DATA);
        }
        // Key epoch 0 first, epoch 1 after the first second.
        assert_eq!(r.client_data[0][1], kind::DATA);
        assert_eq!(r.client_data[1][1], kind::DATA | 1);
        assert_eq!(r.server_data[1][1], kind::DATA | 1);
    }

    #[test]
    fn a_fresh_server_accepts_the_recorded_init_and_data() {
        let r = recorded();
        let t0 = Instant::now();
        let mut server = new_server(t0);
        let mut resp = [0u8; MAX_DATAGRAM_LEN];
        let t = server
            .handle(t0, client_addr(), server_addr(), &r.init, &mut resp)
            .unwrap();
        assert_eq!(&resp[..t.size], &r.accept[..], "deterministic ACCEPT");
        let _ = server.handle(
            t0,
            client_addr(),
            server_addr(),
            &r.client_data[0],
            &mut resp,
        );
        let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        assert!(
            events.iter().any(
                |e| matches!(e, ServerEvent::Datagram { data, .. } if data[..] == b"hello"[..])
            )
        );
    }

    #[test]
    fn a_fresh_client_accepts_the_recorded_offer_accept_and_data() {
        let r = recorded();
        let t0 = Instant::now();
        let mut client = new_client(t0);
        let _ = drain_client(&mut client, t0);
        client.handle(t0, server_addr(), &r.offer);
        let sent = drain_client(&mut client, t0);
        assert_eq!(sent[0].1, r.init, "deterministic INIT");
        client.handle(t0, server_addr(), &r.accept);
        client.handle(t0, server_addr(), &r.server_data[0]);
        let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::Established { .. }))
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::Datagram(d) if d[..] == b"hi"[..]))
        );
    }

    #[test]
    fn zero_patch_is_identity() {
        assert_eq!(patched(b"abc", &[0, 0, 0]), b"abc");
        assert_eq!(patched(b"abc", &[2, 1]), b"`b");
        assert_eq!(patched(b"ab", &[0, 0, 0, 7]), [b'a', b'b', 7]);
    }
}
