//! Shared pieces of the volley fuzz targets: a cursor over the fuzzer's input, the fixed addresses
//! and seeded keys every target uses, and genuine datagrams recorded once from a real exchange so
//! that targets can mutate them (a fuzzer cannot forge a cookie MAC or a Noise message by itself).
//!
//! Everything is seeded: a fresh [`ServerEndpoint`] or [`Client`] connection built here draws exactly the
//! same keys, tags, session ids and ephemerals as the ones the recording was made with, so the
//! recorded OFFER, INIT, ACCEPT and DATA stay genuine for every fresh instance. The recording
//! also recovers the session's DATA keys, with which [`sealed`] seals any plaintext frame as
//! either side of that session. The stateful targets' harnesses live in [`server_datagram`] and
//! [`client_datagram`] (their input formats are documented at the top of the target files in
//! `fuzz_targets/`), so that the tests can run the committed seeds through them. The tests at
//! the bottom prove all of that (run them with `cargo test --manifest-path fuzz/Cargo.toml`).

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, CryptoRngCore, RngCore, SeedableRng};
use volley_proto::client::PoolState;
use volley_proto::crypto::{DirectionKey, InitiatorHandshake, Suite};
use volley_proto::packet::Packet;
use volley_proto::session::SessionConfig;
use volley_proto::{
    ClientConfig, ClientEvent, CloseCode, Connection, MAX_DATAGRAM_LEN, MAX_INIT_NOISE_LEN,
    ServerConfig, ServerEndpoint, ServerEvent, StaticKeypair,
};

pub mod client_datagram;
pub mod sealed;
pub mod server_datagram;

use sealed::SessionSecrets;

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
    client_with_rng(
        now,
        tweak,
        Box::new(ChaCha20Rng::seed_from_u64(CLIENT_RNG_SEED)),
    )
}

fn client_with_rng(
    now: Instant,
    tweak: impl FnOnce(&mut ClientConfig),
    rng: Box<dyn CryptoRngCore + Send>,
) -> Client {
    let mut config = ClientConfig::new(vec![server_keypair().public()]);
    config.key = Some(client_keypair().clone());
    tweak(&mut config);
    let mut pool = PoolState::new(config.ejection);
    let conn = Connection::new(
        now,
        config,
        vec![server_addr(), backup_server_addr()],
        rng,
        &mut pool,
    );
    Client { conn, pool }
}

/// The client's seeded RNG, passing every value through unchanged and noting each 32-byte draw:
/// one of them seeds the Noise ephemeral of its INIT ([`InitiatorHandshake::start`] draws a
/// 32-byte seed from the RNG it is given), which is how the recording recovers its session keys.
struct TapRng {
    inner: ChaCha20Rng,
    draws: Arc<Mutex<Vec<[u8; 32]>>>,
}

impl RngCore for TapRng {
    fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
        if let Ok(draw) = <[u8; 32]>::try_from(&*dest) {
            self.draws.lock().unwrap().push(draw);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for TapRng {}

/// Gives back one noted 32-byte draw (the seed it replays) and nothing else of note.
struct ReplayRng([u8; 32]);

impl RngCore for ReplayRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from(self.next_u32())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for (d, s) in dest.iter_mut().zip(self.0.iter().cycle()) {
            *d = *s;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ReplayRng {}

/// The recorded session's DATA keys: the client's handshake redone from each 32-byte draw of its
/// RNG until one gives the recorded INIT's Noise message byte for byte (the same ephemeral, so
/// the same transcript), then finished with the recorded ACCEPT.
fn recover_secrets(init: &[u8], accept: &[u8], draws: &[[u8; 32]]) -> SessionSecrets {
    let Ok(Packet::Init(init)) = Packet::decode(init) else {
        panic!("the recorded INIT decodes");
    };
    let Ok(Packet::Accept(accept)) = Packet::decode(accept) else {
        panic!("the recorded ACCEPT decodes");
    };
    let prologue = volley_proto::crypto::prologue(init.service, &init.tag, init.cookie);
    // INIT's payload: the client's session id (ACCEPT routes by it) and the suites it offers.
    let mut payload = accept.receiver_id.to_be_bytes().to_vec();
    payload.push(SessionConfig::default().cipher.offer());
    for draw in draws {
        let mut msg1 = [0u8; MAX_INIT_NOISE_LEN];
        let Ok((hs, n)) = InitiatorHandshake::start(
            client_keypair(),
            &server_keypair().public(),
            &prologue,
            &payload,
            &mut msg1,
            &mut ReplayRng(*draw),
        ) else {
            continue;
        };
        if msg1[..n] != *init.noise {
            continue;
        }
        let mut p2 = [0u8; 64];
        let (len, split) = hs
            .finish(accept.noise, &mut p2)
            .expect("the recorded ACCEPT finishes the redone handshake");
        assert_eq!(len, volley_proto::crypto::ACCEPT_PAYLOAD_LEN);
        return SessionSecrets {
            suite: Suite::from_id(p2[4]).expect("ACCEPT names a suite"),
            client_to_server: split.k1,
            server_to_client: split.k2,
        };
    }
    panic!("no draw of the client's RNG reproduces the recorded INIT's Noise message");
}

/// Opens a recorded DATA packet with `key`: its plaintext (frame type byte and body).
pub fn open_data(key: &DirectionKey, datagram: &[u8]) -> Option<Vec<u8>> {
    let Ok(Packet::Data(header, ct)) = Packet::decode(datagram) else {
        return None;
    };
    let aad = &datagram[..volley_proto::DATA_HEADER_LEN];
    let mut buf = ct.to_vec();
    key.open(header.counter, aad, &mut buf)
        .ok()
        .map(|p| p.to_vec())
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
    /// The session's DATA keys, recovered from the client's RNG draws (checked: they open the
    /// recorded DATA of both directions).
    pub secrets: SessionSecrets,
    /// The server's session id: the receiver id of client → server DATA.
    pub server_session_id: u32,
    /// The client's session id: the receiver id of server → client DATA (and of the ACCEPT).
    pub client_session_id: u32,
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
    let draws = Arc::new(Mutex::new(Vec::new()));
    let tap = TapRng {
        inner: ChaCha20Rng::seed_from_u64(CLIENT_RNG_SEED),
        draws: draws.clone(),
    };
    let mut client = client_with_rng(t0, |c| c.session.rekey_after_packets = 1, Box::new(tap));
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

    let secrets = recover_secrets(&init, &accept, &draws.lock().unwrap());
    let receiver = |d: &[u8]| match Packet::decode(d) {
        Ok(Packet::Data(h, _)) => h.receiver_id,
        other => panic!("recorded DATA decodes as DATA: {other:?}"),
    };
    let server_session_id = receiver(&client_data[0]);
    let client_session_id = receiver(&server_data[0]);
    // The keys are the session's: they open its first DATA each way (epoch 0 and epoch 1).
    let c2s = DirectionKey::new(secrets.suite, &secrets.client_to_server);
    let s2c = DirectionKey::new(secrets.suite, &secrets.server_to_client);
    assert_eq!(
        open_data(&c2s, &client_data[0]).as_deref(),
        Some(&b"\0hello"[..]),
        "recovered keys open the client's DATAGRAM"
    );
    assert_eq!(
        open_data(&s2c.next(), &server_data[0]).as_deref(),
        Some(&b"\0hi"[..]),
        "recovered keys open the server's DATAGRAM"
    );

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
        secrets,
        server_session_id,
        client_session_id,
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
    fn the_recovered_keys_seal_what_the_real_session_seals() {
        let r = recorded();
        let t0 = Instant::now();
        // The recorded client's session, rebuilt from the recovered keys, cuts a 3,000-byte
        // datagram into three FRAGMENTs (PROTOCOL.md §5.7) ...
        let keys = volley_proto::crypto::SessionKeys::new(
            r.secrets.suite,
            &r.secrets.client_to_server,
            &r.secrets.server_to_client,
        );
        let mut session = volley_proto::session::Session::new(
            t0,
            r.client_session_id,
            r.server_session_id,
            server_addr(),
            keys,
            SessionConfig::default(),
        );
        let datagram: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        session.send_datagram(&datagram).unwrap();
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let mut real = Vec::new();
        while let Some(t) = session.poll_transmit(t0, &mut buf) {
            real.push(buf[..t.size].to_vec());
        }
        assert_eq!(real.len(), 3);
        // ... which the harness's sealer makes byte for byte from the frames it reads.
        let sealer = sealed::Sealer::client_to_server();
        for (i, packet) in real.iter().enumerate() {
            let c2s = DirectionKey::new(r.secrets.suite, &r.secrets.client_to_server);
            let plaintext = open_data(&c2s, packet).expect("opens");
            assert_eq!(
                sealed::Frame::read(&plaintext),
                sealed::Frame::Fragment {
                    id: 0,
                    index: i as u8,
                    count: 3,
                    piece: datagram[i * 1000..(i + 1) * 1000].to_vec(),
                }
            );
            assert_eq!(sealer.seal(i as u64, 0, &plaintext), *packet);
        }
        // And a fresh server with the recorded INIT delivered puts them together.
        let mut server = new_server(t0);
        let mut resp = [0u8; MAX_DATAGRAM_LEN];
        let _ = server.handle(t0, client_addr(), server_addr(), &r.init, &mut resp);
        for packet in real.iter().rev() {
            let _ = server.handle(t0, client_addr(), server_addr(), packet, &mut resp);
        }
        let stats = server.stats();
        assert_eq!((stats.data_fragments, stats.data_reassembled), (3, 1));
        assert!(
            std::iter::from_fn(|| server.poll_event()).any(
                |e| matches!(e, ServerEvent::Datagram { data, .. } if data[..] == datagram[..])
            )
        );
    }

    #[test]
    fn sealed_frames_authenticate_both_ways_at_every_epoch() {
        let r = recorded();
        let t0 = Instant::now();
        let mut server = new_server(t0);
        let mut resp = [0u8; MAX_DATAGRAM_LEN];
        let _ = server.handle(t0, client_addr(), server_addr(), &r.init, &mut resp);
        let to_server = sealed::Sealer::client_to_server();
        // Epochs 0 ..= 7, one after the other (a receiver follows up to seven ahead).
        for epoch in 0..sealed::EPOCHS {
            let d = to_server.seal(100 + u64::from(epoch), epoch, b"\0up");
            let _ = server.handle(t0, client_addr(), server_addr(), &d, &mut resp);
        }
        let delivered = std::iter::from_fn(|| server.poll_event())
            .filter(|e| matches!(e, ServerEvent::Datagram { .. }))
            .count();
        assert_eq!(delivered, sealed::EPOCHS as usize);
        assert_eq!(server.stats().data_auth_failed, 0);

        let mut client = new_client(t0);
        let _ = drain_client(&mut client, t0);
        client.handle(t0, server_addr(), &r.offer);
        let _ = drain_client(&mut client, t0);
        client.handle(t0, server_addr(), &r.accept);
        let to_client = sealed::Sealer::server_to_client();
        client.handle(t0, server_addr(), &to_client.seal(50, 3, b"\0down"));
        assert!(
            std::iter::from_fn(|| client.poll_event())
                .any(|e| matches!(e, ClientEvent::Datagram(d) if d[..] == b"down"[..]))
        );
    }

    #[test]
    fn the_ledger_explains_only_complete_fresh_sets_of_pieces() {
        let t0 = Instant::now();
        let piece = |index: u8, count: u8, bytes: &[u8]| {
            let mut p = vec![0x06, 0, 0, 0, 9, index, count];
            p.extend_from_slice(bytes);
            p
        };
        let mut ledger = sealed::Ledger::new(&[b"hi"]);
        assert_eq!(ledger.explain(t0, b"hi"), Some(sealed::Delivery::Whole));
        ledger.sent(&piece(0, 3, b"ab"), Some(t0));
        ledger.sent(&piece(2, 3, b"ef"), Some(t0));
        assert_eq!(ledger.explain(t0, b"abef"), None, "index 1 missing");
        // A piece of another count is no piece of this datagram.
        ledger.sent(&piece(1, 2, b"cd"), Some(t0));
        assert_eq!(ledger.explain(t0, b"abcdef"), None);
        ledger.sent(&piece(1, 3, b"cd"), Some(t0));
        assert_eq!(
            ledger.explain(t0, b"abcdef"),
            Some(sealed::Delivery::Reassembled)
        );
        assert_eq!(ledger.explain(t0, b"abcdefg"), None);
        // Pieces sent REASSEMBLY_TIMEOUT ago or earlier are stale ...
        let late = t0 + volley_proto::session::REASSEMBLY_TIMEOUT;
        assert_eq!(ledger.explain(late, b"abcdef"), None);
        // ... unless sent again since, or taken at an unknown time.
        ledger.sent(&piece(0, 3, b"ab"), Some(late));
        ledger.sent(&piece(2, 3, b"ef"), None);
        ledger.sent(&piece(1, 3, b"cd"), Some(late));
        assert!(ledger.explain(late, b"abcdef").is_some());
        // Malformed FRAGMENTs are no pieces (count 1, index ≥ count, no piece).
        let mut ledger = sealed::Ledger::new(&[]);
        ledger.sent(&piece(0, 1, b"x"), Some(t0));
        ledger.sent(&piece(2, 2, b"y"), Some(t0));
        ledger.sent(&piece(1, 2, b""), Some(t0));
        ledger.sent(&piece(0, 2, b"x"), Some(t0));
        assert_eq!(ledger.explain(t0, b"x"), None);
        assert_eq!(ledger.explain(t0, b"xy"), None);
    }

    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        out.sort();
        out
    }

    fn seed(target: &str, name: &str) -> Vec<u8> {
        seeds(target)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("seeds/{target}/{name}"))
            .1
    }

    #[test]
    fn every_committed_seed_passes_its_harness() {
        for (name, data) in seeds("server_datagram") {
            eprintln!("server_datagram/{name}");
            server_datagram::run(&data);
        }
        for (name, data) in seeds("client_datagram") {
            eprintln!("client_datagram/{name}");
            client_datagram::run(&data);
        }
    }

    #[test]
    fn the_client_seeds_read_as_their_names_say() {
        // They start with the mode byte (0: earliest offer wins, fan-out to all) that the input
        // format gained after they were written.
        let run = |name| client_datagram::run(&seed("client_datagram", name));
        let r = run("established");
        assert_eq!(r.established, 1);
        assert_eq!(
            r.deliveries,
            [(2, sealed::Delivery::Whole)],
            "the recorded \"hi\""
        );
        assert_eq!(run("cookie_change").stats.cookie_changes, 1);
        let r = run("late_and_unprobed").stats;
        assert_eq!((r.offers_late, r.offers_unprobed_source), (2, 1));
        let r = run("race_deadline").stats;
        assert_eq!((r.offers_won, r.offers_late), (0, 1));
        let r = run("redirect_then_failover").stats;
        assert_eq!((r.redirects, r.failovers), (1, 1));
        let r = run("send_then_idle");
        assert_eq!((r.established, r.stats.failovers), (1, 1));
    }

    #[test]
    fn the_server_fragment_seeds_reach_reassembly() {
        use sealed::Delivery::Reassembled;
        let run = |name| server_datagram::run(&seed("server_datagram", name));

        let r = run("fragments_complete");
        assert_eq!((r.stats.data_fragments, r.stats.data_reassembled), (3, 1));
        assert_eq!(r.deliveries, [(2, Reassembled)], "whole at the third piece");

        let r = run("fragments_duplicate");
        assert_eq!((r.stats.data_fragments, r.stats.data_bad_frame), (3, 1));
        assert_eq!(r.stats.data_reassembled, 0);
        assert!(r.deliveries.is_empty(), "a dropped set delivers nothing");

        let r = run("fragments_wrong_count");
        assert_eq!((r.stats.data_fragments, r.stats.data_bad_frame), (3, 1));
        assert!(r.deliveries.is_empty());

        let r = run("fragments_timeout");
        assert_eq!(
            r.stats.data_reassembly_dropped, 1,
            "the first set timed out"
        );
        assert_eq!(r.stats.data_reassembled, 1);
        assert_eq!(
            r.deliveries,
            [(4, Reassembled)],
            "piece 2 after the timeout completes nothing; the pieces sent again do"
        );

        let r = run("fragments_max_datagram");
        assert_eq!((r.stats.data_fragments, r.stats.data_reassembled), (47, 1));
        assert_eq!(r.deliveries, [(46, Reassembled)]);

        let r = run("fragments_over_budget");
        assert_eq!((r.stats.data_fragments, r.stats.data_bad_frame), (47, 1));
        assert!(r.deliveries.is_empty());

        let r = run("fragments_seventeen_partials");
        assert_eq!(r.stats.data_fragments, 17);
        assert_eq!(r.stats.data_reassembly_dropped, 1, "MAX_PARTIALS = 16");

        let r = run("fragments_byte_bound");
        assert_eq!(r.stats.data_fragments, 93);
        assert_eq!(
            r.stats.data_reassembly_dropped, 1,
            "the oldest set made room (MAX_REASSEMBLY_BYTES)"
        );
    }

    #[test]
    fn the_client_fragment_seeds_reach_reassembly() {
        use sealed::Delivery::Reassembled;
        let run = |name| client_datagram::run(&seed("client_datagram", name));
        // Every seed establishes with the recorded OFFER and ACCEPT; its DATA then authenticates.
        let session = |r: &client_datagram::ClientRun| r.session.expect("established");

        let r = run("fragments_complete");
        assert_eq!(r.established, 1);
        assert_eq!(r.deliveries, [(4, Reassembled)], "whole at the third piece");
        assert_eq!(session(&r).datagrams_received, 1);

        let r = run("fragments_duplicate");
        assert_eq!(session(&r).packets_received, 3);
        assert_eq!(session(&r).dropped_bad_frame, 1);
        assert!(r.deliveries.is_empty());

        let r = run("fragments_wrong_count");
        assert_eq!(session(&r).dropped_bad_frame, 1);
        assert!(r.deliveries.is_empty());

        let r = run("fragments_timeout");
        assert_eq!(
            r.deliveries,
            [(6, Reassembled)],
            "piece 2 after the timeout completes nothing; the pieces sent again do"
        );

        let r = run("fragments_max_datagram");
        assert_eq!(r.deliveries, [(48, Reassembled)]);

        let r = run("fragments_over_budget");
        assert_eq!(session(&r).packets_received, 47);
        assert_eq!(session(&r).dropped_bad_frame, 1);
        assert!(r.deliveries.is_empty());

        let r = run("fragments_before_accept");
        assert_eq!(r.stats.data_held, 1, "the first piece overtook the ACCEPT");
        assert_eq!(r.deliveries, [(3, Reassembled)]);
    }

    #[test]
    fn zero_patch_is_identity() {
        assert_eq!(patched(b"abc", &[0, 0, 0]), b"abc");
        assert_eq!(patched(b"abc", &[2, 1]), b"`b");
        assert_eq!(patched(b"ab", &[0, 0, 0, 7]), [b'a', b'b', 7]);
    }
}
