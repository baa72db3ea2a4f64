//! The stateless responder (S1, S2, R6) and capacity (L1): every probe gets an offer with its tag
//! and a cookie minted for it, nothing is kept afterwards, no answer outgrows its trigger, and a
//! full server stays silent.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::RngCore;

use super::util::*;
use crate::client::{ClientConfig, ClientEvent, ConnectError};
use crate::packet::{Init, LoadHint, Packet, Probe, Tag, kind};
use crate::server::{AnswerPolicy, ServerEvent};
use crate::session::CloseCode;
use crate::{INIT_AMPLIFICATION, MAX_DATAGRAM_LEN, PROBE_MIN_LEN};

fn probe(tag: Tag, service: &[u8], size: usize) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = Probe { tag, service }.encode(&mut buf, size).unwrap();
    buf[..n].to_vec()
}

/// An INIT carrying `cookie` and a Noise message that cannot be valid: it tells a cookie that
/// passed (the handshake then fails) from one that did not.
fn junk_init(tag: Tag, service: &[u8], cookie: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = Init {
        tag,
        service,
        cookie,
        noise: &[0x55; 48],
    }
    .encode(&mut buf)
    .unwrap();
    buf[..n].to_vec()
}

fn random_tag(b: &mut Bench) -> Tag {
    let mut t = [0u8; 16];
    b.rng.fill_bytes(&mut t);
    Tag(t)
}

fn offer_cookie(offer: &[u8]) -> (Tag, Vec<u8>, LoadHint, crate::KeyId) {
    match Packet::decode(offer) {
        Ok(Packet::Offer(o)) => (o.tag, o.cookie.to_vec(), o.load, o.server_key_id),
        other => panic!("not an offer: {other:?}"),
    }
}

#[test]
fn s1_each_probe_gets_an_offer_with_its_tag_and_a_cookie_minted_for_it() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut b = Bench::new(seed, |c| c.services.push(b"other".to_vec()));
        let a: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        let z: SocketAddr = "198.51.100.2:40000".parse().unwrap();
        let (t1, t2) = (random_tag(&mut b), random_tag(&mut b));
        let mut cookies = HashSet::new();
        let mut ask = |b: &mut Bench, from, tag| {
            let offer = b
                .handle(from, &probe(tag, b"echo", PROBE_MIN_LEN))
                .expect("no offer");
            let (otag, cookie, load, key_id) = offer_cookie(&offer);
            assert_eq!(otag, tag, "offer does not carry the probe's tag");
            assert_eq!(key_id, b.key.key_id());
            assert_eq!(
                load,
                LoadHint {
                    in_flight: 0,
                    capacity: 0,
                    expected_us: 10_000,
                }
            );
            assert!(
                cookies.insert(cookie.clone()),
                "cookie reused for another tag or client"
            );
            cookie
        };
        let a1 = ask(&mut b, a, t1);
        ask(&mut b, a, t2);
        ask(&mut b, z, t1);
        assert_eq!(b.server.stats().offers_sent, 3);
        // The cookie is bound to its tag, service and client: only the exact binding passes the
        // cookie check (and then fails the junk handshake).
        assert!(b.handle(a, &junk_init(t2, b"echo", &a1)).is_none());
        assert_eq!(
            b.server.stats().init_cookie_bad_mac,
            1,
            "cookie accepted for another tag"
        );
        assert!(b.handle(a, &junk_init(t1, b"other", &a1)).is_none());
        assert_eq!(
            b.server.stats().init_cookie_bad_mac,
            2,
            "cookie accepted for another service"
        );
        assert!(b.handle(a, &junk_init(t1, b"echo", &a1)).is_none());
        assert_eq!(b.server.stats().init_cookie_bad_mac, 2);
        assert_eq!(
            b.server.stats().init_handshake_failed,
            1,
            "genuine cookie refused"
        );
        let reply = b
            .handle(z, &junk_init(t1, b"echo", &a1))
            .expect("cookie change");
        assert_eq!(
            reply[1],
            kind::COOKIE_CHANGE,
            "a cookie for another client was not treated as moved"
        );
        assert_eq!(b.server.session_count(), 0);
    }
}

#[test]
fn s2_server_keeps_nothing_after_answering_ten_thousand_probes() {
    for seed in seeds(2) {
        let _g = SeedGuard(seed);
        let mut b = Bench::new(seed, |_| {});
        for i in 0..10_000usize {
            let from = SocketAddr::from((
                [198, 18, (i / 250) as u8, (i % 250 + 1) as u8],
                1024 + (b.rng.next_u32() % 60_000) as u16,
            ));
            let tag = random_tag(&mut b);
            let offer = b
                .handle(from, &probe(tag, b"echo", PROBE_MIN_LEN))
                .expect("no offer");
            assert_eq!(offer_cookie(&offer).0, tag);
            b.now += Duration::from_micros(100);
            assert_eq!(b.server.retained_state(), 0, "state kept after probe {i}");
        }
        let stats = *b.server.stats();
        assert_eq!((stats.probes_received, stats.offers_sent), (10_000, 10_000));
        assert_eq!(b.server.session_count(), 0);
        assert!(b.server_transmits().is_empty());
        assert!(b.server.poll_event().is_none());
    }
}

#[test]
fn s2_servers_that_lose_a_race_keep_nothing() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(4, |_, _| {});
        for i in 0..4 {
            sim.set_latency(server_addr(i), 1 + i as u64);
        }
        let pool = sim.pool();
        for _ in 0..5 {
            sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        }
        for c in 0..5 {
            sim.establish(c, Duration::from_secs(1));
        }
        sim.run_for(Duration::from_millis(100));
        for i in 1..4 {
            let s = &sim.servers[i].endpoint;
            assert_eq!(s.stats().offers_sent, 5);
            assert_eq!(s.retained_state(), 0, "server {i} kept state");
        }
        assert_eq!(sim.servers[0].endpoint.session_count(), 5);
    }
}

#[test]
fn r6_offers_are_never_larger_than_the_probe_and_nothing_reaches_unverified_addresses() {
    for seed in seeds(5) {
        for size in [PROBE_MIN_LEN, 300, 700, 1200, MAX_DATAGRAM_LEN] {
            let _g = SeedGuard(seed);
            let mut sim = Sim::new(seed);
            let key = sim.add_servers(3, |_, _| {});
            sim.link.jitter = Duration::from_millis(2);
            let pool = sim.pool();
            let mut cfg = ClientConfig::new(vec![key]);
            cfg.probe_size = size;
            let c = sim.add_client(cfg, pool);
            sim.establish(c, Duration::from_secs(1));
            assert!(sim.echo(c, b"x", Duration::from_secs(1)));
            let probes = sim.sent_of(kind::PROBE);
            assert!(
                probes.iter().all(|p| p.len == size),
                "probe not padded to {size}"
            );
            let offers = sim.sent_of(kind::OFFER);
            assert_eq!(offers.len(), 3);
            assert!(
                offers.iter().all(|o| o.len <= size),
                "offer larger than its {size}-byte probe"
            );
            let init = sim.sent_of(kind::INIT)[0].len;
            assert!(
                sim.sent_of(kind::ACCEPT)
                    .iter()
                    .all(|a| a.len <= init * INIT_AMPLIFICATION)
            );
            // Beyond those immediate answers, servers send only DATA, and only to session peers.
            let peers: HashSet<_> = sim
                .servers
                .iter()
                .flat_map(|s| &s.events)
                .filter_map(|e| match e {
                    ServerEvent::Opened { remote, .. } => Some(*remote),
                    _ => None,
                })
                .collect();
            for s in sim.sent.iter().filter(|s| sim.pool().contains(&s.src)) {
                match s.kind {
                    kind::OFFER | kind::ACCEPT | kind::COOKIE_CHANGE => {}
                    kind::DATA => assert!(peers.contains(&s.dst), "DATA to unverified {}", s.dst),
                    k => panic!("server sent type {k:#x}"),
                }
            }
        }
    }
}

#[test]
fn r6_probes_below_the_minimum_size_get_nothing() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        // By hand: every length below the minimum.
        let mut b = Bench::new(seed, |_| {});
        let tag = random_tag(&mut b);
        let full = probe(tag, b"echo", PROBE_MIN_LEN);
        let from: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        for len in 0..PROBE_MIN_LEN {
            assert!(
                b.handle(from, &full[..len]).is_none(),
                "answered a {len}-byte probe"
            );
        }
        let stats = *b.server.stats();
        assert_eq!(stats.probe_too_short, PROBE_MIN_LEN as u64 - 2);
        assert_eq!(
            stats.malformed_truncated, 2,
            "lengths 0 and 1 have no type byte"
        );
        assert_eq!(stats.offers_sent, 0);
        assert!(b.handle(from, &full).is_some());

        // Over the network: a middlebox trims every probe.
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        let cut = 2 + (seed as usize * 37) % (PROBE_MIN_LEN - 2);
        sim.filter = Some(Box::new(move |_, d| {
            if d.data[1] == kind::PROBE {
                d.data.truncate(cut);
            }
            Verdict::Pass
        }));
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.run_for(Duration::from_secs(5));
        assert!(sim.sent_of(kind::OFFER).is_empty());
        for s in &sim.servers {
            assert_eq!(
                s.endpoint.stats().probe_too_short,
                5,
                "5 probe rounds in 3 s"
            );
            assert_eq!(s.endpoint.stats().probes_received, 0);
        }
        assert!(
            sim.client_events(c)
                .contains(&ClientEvent::Failed(ConnectError::NoOffer(
                    Duration::from_secs(3)
                )))
        );
    }
}

/// A server that cannot open another session (`max_sessions`) withholds its offers: probing it
/// is pointless. (Being busy is not being full: a busy server answers late, L6.)
#[test]
fn l1_a_full_server_withholds_offers_so_the_next_client_lands_elsewhere() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |i, cfg| {
            if i == 0 {
                cfg.max_sessions = Some(1);
            }
        });
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 5);
        let pool = sim.pool();
        let c0 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c0, Duration::from_secs(1));
        assert_eq!(sim.clients[c0].conn.server(), Some(server_addr(0)));
        assert!(sim.client_events(c0).iter().any(|e| matches!(
            e,
            ClientEvent::Selected {
                load: LoadHint {
                    in_flight: 0,
                    capacity: 0,
                    expected_us: 10_000,
                },
                ..
            }
        )));
        sim.run_for(Duration::from_millis(100));
        let c1 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c1, Duration::from_secs(1));
        assert_eq!(sim.clients[c1].conn.server(), Some(server_addr(1)));
        let full = sim.servers[0].endpoint.stats();
        assert_eq!(full.probes_withheld_full, 1);
        assert_eq!(full.offers_sent, 1);
        assert_eq!(
            sim.clients[c1].conn.stats().offers_late,
            0,
            "the full server answered"
        );
        // Once the first client leaves, the server answers again.
        sim.clients[c0].conn.close(CloseCode::NORMAL);
        sim.run_for(Duration::from_millis(100));
        assert_eq!(sim.servers[0].endpoint.session_count(), 0);
        let c2 = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c2, Duration::from_secs(1));
        assert_eq!(sim.clients[c2].conn.server(), Some(server_addr(0)));
    }
}

#[test]
fn l1_an_init_arriving_at_a_full_server_is_refused_and_the_client_fails_over() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |i, cfg| {
            if i == 0 {
                cfg.max_sessions = Some(1);
                // Answer at once, so both clients get its offer and one INIT finds it full; no
                // reservations, so that INIT was not promised a slot (L6 honours those).
                cfg.answer = AnswerPolicy::Immediate;
                cfg.reservation = Duration::ZERO;
            }
        });
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 5);
        let pool = sim.pool();
        // Both race at once: both get server 0's offer while it is empty.
        let c0 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        let c1 = sim.add_client(ClientConfig::new(vec![key]), pool);
        assert!(sim.run_until(Duration::from_secs(10), |s| s.established(c0)
            && s.established(c1)));
        let s0 = sim.servers[0].endpoint.stats();
        assert_eq!(s0.sessions_opened, 1);
        assert!(s0.init_refused_full >= 1);
        let mut servers = [
            sim.clients[c0].conn.server().unwrap(),
            sim.clients[c1].conn.server().unwrap(),
        ];
        servers.sort();
        assert_eq!(servers, [server_addr(0), server_addr(1)]);
        // The loser was told (REDIRECT) and re-raced after a short back-off (L6): no INIT
        // retransmission, no 3 s handshake timeout — it is up within a few round trips.
        assert_eq!(s0.redirects_sent, s0.init_refused_full);
        let refused = if sim.clients[c0].conn.server() == Some(server_addr(1)) {
            c0
        } else {
            c1
        };
        assert_eq!(sim.clients[refused].conn.stats().redirects, 1);
        assert_eq!(
            sim.clients[refused].conn.stats().inits_sent,
            2,
            "one INIT per server"
        );
        let (at, _) = sim.clients[refused]
            .events
            .iter()
            .find(|(_, e)| matches!(e, ClientEvent::Established { .. }))
            .expect("established");
        assert!(
            *at - sim.start < Duration::from_millis(100),
            "re-race took {:?}",
            *at - sim.start
        );
    }
}

#[test]
fn c2_stray_or_forged_redirects_do_not_derail_a_handshake() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 5);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        let client = client_addr(c);
        // When the client sends its INIT, forge REDIRECTs to it: one from the selected server with a
        // wrong tag, one with the right tag from the server it did not select.
        sim.filter = Some(Box::new(move |_, d: &mut Datagram| {
            if d.src != client || d.data.get(1) != Some(&kind::INIT) {
                return Verdict::Pass;
            }
            let mut tag = [0u8; 16];
            tag.copy_from_slice(&d.data[2..18]);
            let mut wrong = tag;
            wrong[0] ^= 1;
            let other = if d.dst == server_addr(0) {
                server_addr(1)
            } else {
                server_addr(0)
            };
            let forge = |src, t| {
                let mut buf = [0u8; 64];
                let n = crate::packet::Redirect {
                    tag: Tag(t),
                    servers: &[],
                }
                .encode(&mut buf)
                .unwrap();
                Datagram {
                    src,
                    dst: client,
                    data: buf[..n].to_vec(),
                }
            };
            Verdict::PassAnd(vec![forge(d.dst, wrong), forge(other, tag)])
        }));
        sim.establish(c, Duration::from_secs(5));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(0)));
        let st = sim.clients[c].conn.stats();
        assert_eq!((st.redirects, st.failovers, st.unexpected), (0, 0, 2));
    }
}
