//! Bad input (R8, S3): a corpus of broken, hostile and misplaced datagrams built from a real
//! exchange, fed straight into a server endpoint and into client connections. Nothing may panic,
//! nothing may be sent in response, and every datagram lands in exactly the counter named for its
//! class.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::util::*;
use crate::client::{ClientConfig, ClientStats, Connection, PoolState};
use crate::packet::{Init, Packet, kind};
use crate::server::ServerStats;
use crate::{MAX_COOKIE_LEN, MAX_DATAGRAM_LEN, VERSION};

/// One datagram of each kind, from a real exchange: client 0 races servers 0 (1 ms) and 1 (5 ms)
/// behind a NAT that rebinds it between PROBE and INIT, then echoes a datagram.
struct Captured {
    sim: Sim,
    probe: Vec<u8>,
    offer: Vec<u8>,
    /// Server 1's (late) offer: a cookie from another server.
    offer_b: Vec<u8>,
    init: Vec<u8>,
    accept: Vec<u8>,
    cookie_change: Vec<u8>,
    /// Client → server 0.
    data_up: Vec<u8>,
    /// Server 0 → client.
    data_down: Vec<u8>,
}

/// The client's address after the NAT rebound it.
fn rebound() -> SocketAddr {
    SocketAddr::from(([192, 168, 0, 1], 61_000))
}

fn capture(seed: u64) -> Captured {
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(2, |_, _| {});
    sim.set_latency(server_addr(0), 1);
    sim.set_latency(server_addr(1), 5);
    let client = client_addr(0);
    sim.filter = Some(Box::new(move |_, d| {
        if d.src == client && d.data[1] != kind::PROBE {
            d.src = rebound();
        } else if d.dst == rebound() {
            d.dst = client;
        }
        Verdict::Pass
    }));
    let pool = sim.pool();
    let c = sim.add_client(ClientConfig::new(vec![key]), pool);
    sim.establish(c, Duration::from_secs(1));
    assert!(sim.echo(c, b"corpus", Duration::from_secs(1)));
    sim.run_for(Duration::from_millis(20));
    let (s0, s1) = (server_addr(0), server_addr(1));
    let first = |src: SocketAddr, dst: SocketAddr, k: u8| {
        sim.sent
            .iter()
            .find(|d| d.src == src && d.dst == dst && d.kind == k)
            .expect("captured")
            .data
            .clone()
    };
    Captured {
        probe: first(client, s0, kind::PROBE),
        offer: first(s0, client, kind::OFFER),
        offer_b: first(s1, client, kind::OFFER),
        init: first(client, s0, kind::INIT),
        accept: first(s0, rebound(), kind::ACCEPT),
        cookie_change: first(s0, rebound(), kind::COOKIE_CHANGE),
        data_up: first(client, s0, kind::DATA),
        data_down: first(s0, rebound(), kind::DATA),
        sim,
    }
}

type ServerCounter = fn(&ServerStats) -> u64;
type ClientCounter = fn(&ClientStats) -> u64;

/// A class of bad input and where each receiver must count it (`None`: only the total is checked).
struct Class {
    name: String,
    datagrams: Vec<Vec<u8>>,
    /// Fed to server 0 from this address (the attacker's unless stated).
    from: SocketAddr,
    /// Fed this long after the capture.
    later: Duration,
    server: Option<ServerCounter>,
    /// A client still racing (with its own tag).
    racing: Option<ClientCounter>,
    /// The established client of the capture.
    established: Option<ClientCounter>,
}

fn attacker() -> SocketAddr {
    "203.0.113.66:40000".parse().unwrap()
}

fn class(
    name: &str,
    datagrams: Vec<Vec<u8>>,
    server: ServerCounter,
    racing: ClientCounter,
    established: ClientCounter,
) -> Class {
    Class {
        name: name.to_string(),
        datagrams,
        from: attacker(),
        later: Duration::ZERO,
        server: Some(server),
        racing: Some(racing),
        established: Some(established),
    }
}

fn cuts(msg: &[u8], range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|n| msg[..n].to_vec()).collect()
}

fn replace_cookie(init: &[u8], cookie: &[u8]) -> Vec<u8> {
    let Ok(Packet::Init(i)) = Packet::decode(init) else {
        panic!("not an INIT")
    };
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = Init { cookie, ..i }.encode(&mut buf).unwrap();
    buf[..n].to_vec()
}

fn cookie_of(msg: &[u8]) -> Vec<u8> {
    match Packet::decode(msg) {
        Ok(Packet::Init(i)) => i.cookie.to_vec(),
        Ok(Packet::Offer(o)) => o.cookie.to_vec(),
        other => panic!("no cookie in {other:?}"),
    }
}

fn corpus(cap: &Captured, rng: &mut ChaCha20Rng) -> Vec<Class> {
    let malformed: ClientCounter = |s| s.malformed;
    let unexpected: ClientCounter = |s| s.unexpected;
    let mut out = vec![class(
        "empty",
        vec![vec![]],
        |s| s.malformed_truncated,
        malformed,
        malformed,
    )];

    // Every real kind truncated at every offset.
    let p = &cap.probe;
    out.push(class(
        "PROBE cut before its type",
        cuts(p, 0..2),
        |s| s.malformed_truncated,
        malformed,
        malformed,
    ));
    out.push(class(
        "PROBE cut short",
        cuts(p, 2..p.len()),
        |s| s.probe_too_short,
        malformed,
        malformed,
    ));
    for (name, msg) in [
        ("OFFER", &cap.offer),
        ("OFFER of server 1", &cap.offer_b),
        ("INIT", &cap.init),
        ("ACCEPT", &cap.accept),
        ("COOKIE_CHANGE", &cap.cookie_change),
    ] {
        out.push(class(
            &format!("{name} cut"),
            cuts(msg, 0..msg.len()),
            |s| s.malformed_truncated,
            malformed,
            malformed,
        ));
    }
    // DATA needs its 14-byte header, a frame byte and the 16-byte tag; shorter ciphertext decodes
    // and fails authentication (or routing) instead.
    let min_data = crate::DATA_HEADER_LEN + 1 + crate::AEAD_TAG_LEN;
    for (name, msg) in [("DATA up", &cap.data_up), ("DATA down", &cap.data_down)] {
        out.push(class(
            &format!("{name} cut below minimum"),
            cuts(msg, 0..min_data),
            |s| s.malformed_truncated,
            malformed,
            malformed,
        ));
    }
    out.push(class(
        "DATA up cut, from a stranger",
        cuts(&cap.data_up, min_data..cap.data_up.len()),
        // A server's session follows its client, so a stranger's packet is judged like the
        // client's: this counter was seen.
        |s| s.data_replayed,
        unexpected,
        unexpected,
    ));
    // From the session's own client, with a counter not seen yet (else the replay window
    // catches it first).
    let mut fresh = cap.data_up.clone();
    fresh[6..14].copy_from_slice(&1_000_000u64.to_be_bytes());
    out.push(Class {
        from: rebound(),
        ..class(
            "DATA up cut, from the session's client",
            cuts(&fresh, min_data..fresh.len()),
            |s| s.data_auth_failed,
            unexpected,
            unexpected,
        )
    });
    out.push(class(
        "DATA down cut",
        cuts(&cap.data_down, min_data..cap.data_down.len()),
        |s| s.data_unknown_session,
        unexpected,
        |s| s.data_dropped,
    ));

    // Oversized.
    let big = [MAX_DATAGRAM_LEN + 1, 1500, 4096, 65_507]
        .into_iter()
        .map(|n| {
            let mut d = p.clone();
            d.resize(n, 0);
            d
        })
        .collect();
    out.push(class(
        "oversized",
        big,
        |s| s.malformed_too_long,
        malformed,
        malformed,
    ));

    // Wrong version byte on every real kind. (A probe-sized datagram of another version is
    // answered with VERSIONS: its own test below.)
    let all = [
        &cap.offer,
        &cap.init,
        &cap.accept,
        &cap.cookie_change,
        &cap.data_up,
        &cap.data_down,
    ];
    let mut versions = Vec::new();
    for msg in all {
        for v in (0..=255u8).filter(|v| *v != VERSION) {
            let mut d = msg.to_vec();
            d[0] = v;
            versions.push(d);
        }
    }
    out.push(class(
        "wrong version",
        versions,
        |s| s.malformed_version,
        malformed,
        malformed,
    ));

    // Every type byte the decoder does not know.
    let known = [
        kind::PROBE,
        kind::OFFER,
        kind::INIT,
        kind::ACCEPT,
        kind::COOKIE_CHANGE,
        kind::REDIRECT,
        kind::DATA,
    ];
    // DATA is every type 0x10..=0x1F (the low nibble is the key phase, §3.8).
    let types = (0..=255u8)
        .filter(|t| !known.contains(t) && t & !kind::KEY_PHASE_MASK != kind::DATA)
        .map(|t| {
            let mut d = p.clone();
            d[1] = t;
            d
        })
        .collect::<Vec<_>>();
    assert_eq!(types.len(), 234);
    out.push(class(
        "unknown type",
        types,
        |s| s.malformed_type,
        malformed,
        malformed,
    ));

    // Bad length fields and trailing bytes.
    let mut lengths = Vec::new();
    for msg in [&cap.offer, &cap.init, &cap.accept, &cap.cookie_change] {
        let mut d = msg.to_vec();
        d.push(0);
        lengths.push(d);
    }
    for bad in [0u8, crate::MAX_SERVICE_LEN as u8 + 1, 255] {
        let mut d = cap.init.clone();
        d[18] = bad; // the service length of INIT
        lengths.push(d);
    }
    out.push(class(
        "bad lengths",
        lengths,
        |s| s.malformed_length,
        malformed,
        malformed,
    ));

    // Well-formed, but for the other side.
    out.push(class(
        "OFFER",
        vec![cap.offer.clone(), cap.offer_b.clone()],
        |s| s.unexpected_message,
        |s| s.offers_unknown_tag,
        |s| s.offers_late,
    ));
    out.push(class(
        "ACCEPT",
        vec![cap.accept.clone()],
        |s| s.unexpected_message,
        unexpected,
        unexpected,
    ));
    out.push(class(
        "COOKIE_CHANGE",
        vec![cap.cookie_change.clone()],
        |s| s.unexpected_message,
        |s| s.cookie_changes_ignored,
        |s| s.cookie_changes_ignored,
    ));
    out.push(class(
        "DATA down",
        vec![cap.data_down.clone()],
        |s| s.data_unknown_session,
        unexpected,
        |s| s.data_dropped,
    ));

    // Services this server does not run.
    let mut probe = cap.probe.clone();
    probe[19..23].copy_from_slice(b"nope");
    out.push(class(
        "PROBE for another service",
        vec![probe],
        |s| s.probes_unknown_service,
        unexpected,
        unexpected,
    ));
    let mut init = cap.init.clone();
    init[19..23].copy_from_slice(b"nope");
    out.push(class(
        "INIT for another service",
        vec![init],
        |s| s.init_unknown_service,
        unexpected,
        unexpected,
    ));

    // Cookies: forged, of the wrong length, tampered, from another server, expired.
    let genuine = cookie_of(&cap.init);
    let forged = (0..20)
        .map(|_| {
            let mut c = genuine.clone();
            rng.fill_bytes(&mut c[5..]);
            replace_cookie(&cap.init, &c)
        })
        .collect();
    out.push(class(
        "forged cookie",
        forged,
        |s| s.init_cookie_bad_mac,
        unexpected,
        unexpected,
    ));
    let wrong_len = [1usize, genuine.len() - 1, genuine.len() + 1, MAX_COOKIE_LEN]
        .into_iter()
        .map(|n| replace_cookie(&cap.init, &vec![0x5A; n]))
        .collect();
    out.push(class(
        "cookie of the wrong length",
        wrong_len,
        |s| s.init_cookie_malformed,
        unexpected,
        unexpected,
    ));
    let mut tampered = Vec::new();
    let mut tampered_id = Vec::new();
    for i in 0..genuine.len() {
        for bit in 0..8 {
            let mut c = genuine.clone();
            c[i] ^= 1 << bit;
            match i {
                0 => tampered_id.push(replace_cookie(&cap.init, &c)),
                // The stamp: covered (with exact outcomes) by the cookies tests.
                1..=4 => {}
                _ => tampered.push(replace_cookie(&cap.init, &c)),
            }
        }
    }
    out.push(class(
        "tampered cookie",
        tampered,
        |s| s.init_cookie_bad_mac,
        unexpected,
        unexpected,
    ));
    out.push(class(
        "tampered cookie key id",
        tampered_id,
        |s| s.init_cookie_unknown_key,
        unexpected,
        unexpected,
    ));
    let other = cookie_of(&cap.offer_b);
    let from_b = vec![replace_cookie(&cap.init, &other)];
    if other[0] == genuine[0] {
        out.push(class(
            "cookie of server 1",
            from_b,
            |s| s.init_cookie_bad_mac,
            unexpected,
            unexpected,
        ));
    } else {
        out.push(class(
            "cookie of server 1",
            from_b,
            |s| s.init_cookie_unknown_key,
            unexpected,
            unexpected,
        ));
    }
    out.push(Class {
        later: Duration::from_millis(10_500),
        ..class(
            "expired cookie",
            vec![cap.init.clone()],
            |s| s.init_cookie_expired,
            unexpected,
            unexpected,
        )
    });

    // Noise: random datagrams, some with a valid version byte, some with a known type too.
    let random = (0..1000)
        .map(|i| {
            let mut d = vec![0u8; (rng.next_u32() % 1600) as usize];
            rng.fill_bytes(&mut d);
            if i % 3 >= 1 && !d.is_empty() {
                d[0] = VERSION;
            }
            if i % 3 == 2 && d.len() >= 2 {
                d[1] = known[(rng.next_u32() % 6) as usize];
            }
            if d.first().is_some_and(|v| *v != VERSION && *v != 0) {
                // Probe-sized datagrams of another version get VERSIONS (their own test).
                d.truncate(crate::PROBE_MIN_LEN - 1);
            }
            d
        })
        .collect();
    out.push(Class {
        server: None,
        racing: None,
        established: None,
        ..class("random", random, |_| 0, malformed, malformed)
    });
    out
}

#[test]
fn r8_malformed_corpus_is_counted_and_unanswered_by_the_server() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut cap = capture(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let classes = corpus(&cap, &mut rng);
        let t0 = cap.sim.now;
        let local = server_addr(0);
        let server = &mut cap.sim.servers[0].endpoint;
        let start = *server.stats();
        let mut fed = 0u64;
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        for c in &classes {
            let before = *server.stats();
            let now = t0 + c.later;
            for d in &c.datagrams {
                let reply = server.handle(now, c.from, local, d, &mut out);
                assert!(reply.is_none(), "{}: answered {d:02x?}", c.name);
                assert!(
                    server.poll_transmit(now, &mut out).is_none(),
                    "{}: queued output",
                    c.name
                );
            }
            let n = c.datagrams.len() as u64;
            fed += n;
            let delta = server_delta(server.stats(), &before);
            assert_eq!(delta.datagrams_received, n);
            assert_eq!(
                server_drops(&delta),
                n,
                "{}: not every datagram counted as a drop once: {delta:?}",
                c.name
            );
            if let Some(counter) = c.server {
                assert_eq!(counter(&delta), n, "{}: wrong counter: {delta:?}", c.name);
            }
        }
        let total = server_delta(server.stats(), &start);
        assert_eq!(server_drops(&total), fed);
        assert_eq!(total.datagrams_received, fed);
        assert_eq!(
            (
                total.offers_sent,
                total.cookie_changes_sent,
                total.sessions_opened,
                total.init_duplicate
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(server.session_count(), 1, "the real session survived");
        assert!(fed > 2_500, "corpus of only {fed}");
    }
}

fn feed_client(
    conn: &mut Connection,
    pool: &mut PoolState,
    now: Instant,
    classes: &[Class],
    pick: impl Fn(&Class) -> Option<ClientCounter>,
) -> u64 {
    let start = conn.stats();
    let mut fed = 0;
    for c in classes {
        let before = conn.stats();
        for d in &c.datagrams {
            conn.handle(now, server_addr(0), d, pool);
            assert!(
                transmits(conn, now).is_empty(),
                "{}: client answered {d:02x?}",
                c.name
            );
        }
        let n = c.datagrams.len() as u64;
        fed += n;
        let delta = client_delta(&conn.stats(), &before);
        assert_eq!(client_drops(&delta), n, "{}: {delta:?}", c.name);
        if let Some(counter) = pick(c) {
            assert_eq!(counter(&delta), n, "{}: wrong counter: {delta:?}", c.name);
        }
    }
    let total = client_delta(&conn.stats(), &start);
    assert_eq!(client_drops(&total), fed);
    assert_eq!(
        (
            total.offers_won,
            total.inits_sent,
            total.cookie_changes,
            total.sessions_established
        ),
        (0, 0, 0, 0)
    );
    fed
}

#[test]
fn r8_malformed_corpus_is_counted_and_unanswered_by_clients() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut cap = capture(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let classes = corpus(&cap, &mut rng);
        let now = cap.sim.now;

        // A client in the middle of its own race over the same pool.
        let key = cap.sim.servers[0].endpoint.public_key();
        let mut pool = PoolState::default();
        let mut racing = Connection::new(
            now,
            ClientConfig::new(vec![key]),
            cap.sim.pool(),
            Box::new(ChaCha20Rng::seed_from_u64(rng.next_u64())),
            &mut pool,
        );
        let probes = transmits(&mut racing, now);
        assert_eq!(probes.len(), 2, "its own probes");
        let _ = events(&mut racing);
        feed_client(&mut racing, &mut pool, now, &classes, |c| c.racing);
        assert!(events(&mut racing).is_empty(), "the corpus moved the race");
        // The race is intact: a genuine offer still wins it.
        let (to, probe) = probes.iter().find(|(to, _)| *to == server_addr(1)).unwrap();
        let me: SocketAddr = "192.0.2.200:50000".parse().unwrap();
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        let t = cap.sim.servers[1]
            .endpoint
            .handle(now, me, *to, probe, &mut out)
            .expect("offer");
        racing.handle(now, *to, &out[..t.size], &mut pool);
        let inits = transmits(&mut racing, now);
        assert_eq!(inits.len(), 1, "the race did not survive the corpus");
        assert_eq!((inits[0].0, inits[0].1[1]), (server_addr(1), kind::INIT));

        // The client whose exchange the corpus came from, in its session.
        let client = &mut cap.sim.clients[0];
        let conn = &mut client.conn;
        let pool = &mut cap.sim.pools[client.instance];
        let _ = events(conn);
        feed_client(conn, pool, now, &classes, |c| c.established);
        assert!(
            events(conn)
                .iter()
                .all(|e| matches!(e, crate::client::ClientEvent::LateOffer { .. })),
            "the corpus moved the session"
        );
        assert_eq!(conn.server(), Some(server_addr(0)));
    }
}

#[test]
fn r6_a_probe_sized_datagram_of_another_version_gets_a_smaller_versions_answer() {
    let cap = capture(3);
    let mut b = Bench::new(3, |_| {});
    let from = attacker();
    let mut answered = 0;
    for v in (0..=255u8).filter(|v| *v != VERSION) {
        let mut d = cap.probe.clone();
        d[0] = v;
        match b.handle(from, &d) {
            Some(reply) => {
                // 00, one version (1), then the datagram's first 32 bytes; well below its size.
                assert_ne!(v, 0, "version 0 (a VERSIONS itself) is never answered");
                assert_eq!(&reply[..3], &[0, 1, VERSION]);
                assert_eq!(&reply[3..], &d[..32]);
                assert!(reply.len() * 7 < d.len());
                answered += 1;
            }
            None => assert_eq!(v, 0),
        }
        // Shorter than a PROBE: never answered.
        assert!(b.handle(from, &d[..255]).is_none());
    }
    assert_eq!(answered, 254);
    let s = *b.server.stats();
    assert_eq!(s.versions_sent, 254);
    assert_eq!(s.malformed_version, 2 * 255);
    assert_eq!(b.server.retained_state(), 0);
}
