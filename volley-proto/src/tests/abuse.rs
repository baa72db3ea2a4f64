//! Abuse (R8): per-source INIT rate limit, reflector source ports, under-load mode. Every refusal
//! is silent and counted.

use std::net::SocketAddr;
use std::time::Duration;

use super::util::*;
use crate::client::{ClientConfig, ClientEvent, ConnectError};
use crate::packet::kind;
use crate::server::{AdmissionConfig, ServerStats};

fn src(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

#[test]
fn r8_an_init_flood_from_one_source_is_rate_limited_while_others_get_in() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        // A handshake budget of 200/s: the server is pressed once fewer than 100 are left. A
        // per-source limit of 20/s, burst 40 (the defaults are 1,000 and 2,000: scaled down
        // with the budget).
        let mut b = Bench::new(seed, |c| {
            c.admission = AdmissionConfig {
                handshakes_per_sec: 200,
                inits_per_source_per_sec: 20,
                inits_per_source_burst: 40,
                ..AdmissionConfig::default()
            }
        });
        let genuine = |b: &mut Bench, ip: [u8; 4], n: u16| -> Vec<(SocketAddr, Vec<u8>)> {
            (0..n)
                .map(|i| (src(ip, 40_000 + i), b.init_from(src(ip, 40_000 + i)).1))
                .collect()
        };
        // An idle server never throttles one busy honest source: 60 INITs at once all get in.
        let busy = genuine(&mut b, [192, 0, 2, 50], 60);
        assert!(
            busy.iter()
                .all(|(from, init)| b.handle(*from, init).is_some_and(|r| r[1] == kind::ACCEPT))
        );
        // 50 more from 50 sources leave 90 of 200 tokens: pressed.
        for i in 0..50u8 {
            let (from, init) = genuine(&mut b, [192, 0, 2, 100 + i], 1).remove(0);
            assert_eq!(b.handle(from, &init).expect("admitted")[1], kind::ACCEPT);
        }
        assert_eq!(b.server.stats().init_rate_limited, 0);
        // Now 60 genuine INITs (distinct races, valid cookies) from one IP, all at once.
        let flooder = [198, 51, 100, 7];
        let inits = genuine(&mut b, flooder, 60);
        let answered = inits
            .iter()
            .filter(|(from, init)| {
                b.handle(*from, init)
                    .inspect(|r| assert_eq!(r[1], kind::ACCEPT))
                    .is_some()
            })
            .count();
        // The burst is 40.
        assert_eq!(answered, 40);
        let s = *b.server.stats();
        assert_eq!((s.init_rate_limited, s.sessions_opened), (20, 150));
        assert!(
            b.server_transmits()
                .iter()
                .all(|(to, _)| to.ip() != std::net::IpAddr::from(flooder))
        );
        // Another source is not affected.
        let other = src([203, 0, 113, 9], 40_000);
        let (_c, init) = b.init_from(other);
        assert_eq!(
            b.handle(other, &init).expect("other source refused")[1],
            kind::ACCEPT
        );
        // The limit engages only while the server is pressed: a second later the budget is
        // full again and the 20 refused get in.
        b.now += Duration::from_secs(1);
        let later = inits[40..]
            .iter()
            .filter(|(from, init)| b.handle(*from, init).is_some())
            .count();
        assert_eq!(later, 20);
        assert_eq!(b.server.stats().init_rate_limited, 20);
    }
}

#[test]
fn r8_reflector_source_ports_are_dropped_unread() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut b = Bench::new(seed, |_| {});
        let ip = [198, 51, 100, 53];
        // A genuine PROBE and INIT, then the same from reflector ports, plus garbage.
        let (mut conn, probe, _) = b.offer_to(src(ip, 40_000));
        let init = transmits(&mut conn, b.now).remove(0).1;
        let before = *b.server.stats();
        let ports = [53u16, 123, 1900, 11211, 0, 19, 389, 5353];
        for port in ports {
            for datagram in [&probe[..], &init[..], b"\x00garbage", &[]] {
                assert!(
                    b.handle(src(ip, port), datagram).is_none(),
                    "answered port {port}"
                );
            }
        }
        let d = server_delta(b.server.stats(), &before);
        let fed = 4 * ports.len() as u64;
        assert_eq!(
            d,
            ServerStats {
                datagrams_received: fed,
                dropped_reflector_port: fed,
                ..Default::default()
            },
            "read something from a reflector port"
        );
        assert_eq!(server_drops(&d), fed);
        assert!(b.server_transmits().is_empty());

        // Over the network: a client behind source port 53 gets nothing at all.
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, _| {});
        let pool = sim.pool();
        let c = sim.add_client_at(
            ClientConfig::new(vec![key]),
            pool.clone(),
            src([192, 0, 2, 1], 53),
        );
        sim.run_for(Duration::from_secs(5));
        assert!(
            sim.sent.iter().all(|d| !pool.contains(&d.src)),
            "a server answered port 53"
        );
        for s in &sim.servers {
            assert_eq!(s.endpoint.stats().dropped_reflector_port, 5);
        }
        assert!(
            sim.client_events(c)
                .contains(&ClientEvent::Failed(ConnectError::NoOffer(
                    Duration::from_secs(3)
                )))
        );
    }
}

#[test]
fn r8_under_load_mode_withholds_offers_and_refuses_inits() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut b = Bench::new(seed, |c| {
            c.admission = AdmissionConfig {
                handshakes_per_sec: 2,
                ..AdmissionConfig::default()
            }
        });
        // Three clients get offers while the budget is untouched.
        let pending: Vec<_> = (1..=3u8)
            .map(|i| {
                (
                    src([203, 0, 113, i], 40_000),
                    b.init_from(src([203, 0, 113, i], 40_000)).1,
                )
            })
            .collect();
        assert!(b.handle(pending[0].0, &pending[0].1).is_some());
        assert!(b.handle(pending[1].0, &pending[1].1).is_some());
        // The budget (2 per second) is spent: the third INIT is refused with a bare REDIRECT (its
        // address is proven by the cookie, so the client may re-race at once), new probes get
        // nothing.
        let refusal = b.handle(pending[2].0, &pending[2].1).expect("a refusal");
        match crate::packet::Packet::decode(&refusal) {
            Ok(crate::packet::Packet::Redirect(rd)) => {
                assert_eq!(&rd.tag.0[..], &pending[2].1[2..18]);
                assert_eq!(rd.server_count(), 0);
            }
            other => panic!("expected a REDIRECT, got {other:?}"),
        }
        let late = src([203, 0, 113, 4], 40_000);
        let mut conn = b.client();
        let probe = transmits(&mut conn, b.now).remove(0).1;
        assert!(b.handle(late, &probe).is_none());
        let s = *b.server.stats();
        assert_eq!(
            (
                s.init_under_load,
                s.probes_withheld_under_load,
                s.sessions_opened
            ),
            (1, 1, 2)
        );
        assert_eq!(
            s.init_rate_limited, 0,
            "under load is not a per-source limit"
        );
        // A second later the budget has refilled: both are served.
        b.now += Duration::from_secs(1);
        assert!(b.handle(late, &probe).is_some());
        assert_eq!(
            b.handle(pending[2].0, &pending[2].1)
                .expect("still refused")[1],
            kind::ACCEPT
        );
    }
}

#[test]
fn r8_a_probe_flood_is_bounded_by_the_probe_budget_and_per_source_while_pressed() {
    let mut b = Bench::new(1, |c| {
        c.admission = AdmissionConfig {
            probes_per_sec: 1_000,
            probes_per_source_per_sec: 100,
            probes_per_source_burst: 200,
            ..AdmissionConfig::default()
        }
    });
    let mut conn = b.client();
    let probe = transmits(&mut conn, b.now).remove(0).1;
    // One source, idle server: the first 501 are answered (the server is pressed once fewer
    // than 500 tokens are left), then its bucket (burst 200) applies.
    let one = src([198, 51, 100, 7], 40_000);
    let answered = (0..1_000)
        .filter(|_| b.handle(one, &probe).is_some())
        .count();
    assert_eq!(answered, 501 + 200);
    let s = *b.server.stats();
    assert_eq!((s.offers_sent, s.probes_rate_limited), (701, 299));
    // Spoofed sources take the rest of the budget and no more.
    let spread = (0..1_000u32)
        .filter(|i| {
            let ip = [10, (i >> 16) as u8, (i >> 8) as u8, *i as u8];
            b.handle(src(ip, 40_000), &probe).is_some()
        })
        .count();
    assert!(spread <= 299, "{spread}");
    let s = *b.server.stats();
    // Every probe is accounted for: answered, over the budget, or (a spoofed source that shares
    // the flooder's bucket) rate-limited.
    assert_eq!(
        spread as u64 + s.probes_over_budget + (s.probes_rate_limited - 299),
        1_000
    );
    assert!(s.probes_over_budget >= 650, "{}", s.probes_over_budget);
    assert_eq!(b.server.retained_state(), 0, "no per-probe state (S2)");
}

#[test]
fn r8_a_socket_backlog_presses_the_server_only_when_handshakes_or_sessions_compete() {
    let mut b = Bench::new(2, |c| {
        c.admission = AdmissionConfig {
            probes_per_source_per_sec: 10,
            probes_per_source_burst: 20,
            ..AdmissionConfig::default()
        }
    });
    let mut conn = b.client();
    let probe = transmits(&mut conn, b.now).remove(0).1;
    let one = src([198, 51, 100, 7], 40_000);
    // A backlog with nothing else to do: every PROBE is answered.
    b.server.set_backlog(b.now, true);
    assert_eq!(
        (0..100).filter(|_| b.handle(one, &probe).is_some()).count(),
        100
    );
    // An INIT arrives (a handshake competes): the same backlog now presses the server, and the
    // flooding source gets its burst (20) and no more.
    let other = src([203, 0, 113, 9], 40_000);
    let (_c, init) = b.init_from(other);
    assert!(b.handle(other, &init).is_some());
    b.server.set_backlog(b.now, true);
    assert_eq!(
        (0..100).filter(|_| b.handle(one, &probe).is_some()).count(),
        20
    );
    assert_eq!(b.server.stats().probes_rate_limited, 80);
    // The backlog clears (the flood is cheap to drop now): the server stays pressed for its
    // quiet second, and the flooder, over its rate, stays held to it (10 a second) after that.
    b.server.set_backlog(b.now, false);
    assert!(b.handle(one, &probe).is_none());
    let fresh = src([192, 0, 2, 77], 40_000);
    assert!(b.handle(fresh, &probe).is_some(), "within its rate");
    b.now += Duration::from_millis(1_500);
    assert_eq!(
        (0..100).filter(|_| b.handle(one, &probe).is_some()).count(),
        15
    );
    // Quiet for burst / rate (2 s): its whole bucket is back, no limit applies.
    b.now += Duration::from_secs(2);
    assert_eq!(
        (0..100).filter(|_| b.handle(one, &probe).is_some()).count(),
        100
    );
}

#[test]
fn r8_the_probe_counters_add_up_with_budget_rate_limit_hold_and_versions_drops() {
    // PROTOCOL.md §9.1's identity, through every way a PROBE can end: answered at once or
    // later, held, the held queue full, unknown service, full, under load, over the PROBE
    // budget, over its source's rate — with VERSIONS datagrams charged to the same buckets but
    // counted apart (§3.9).
    let mut b = Bench::new(11, |c| {
        c.max_held = 8;
        c.admission = AdmissionConfig {
            handshakes_per_sec: 2,
            probes_per_sec: 400,
            probes_per_source_per_sec: 20,
            probes_per_source_burst: 40,
            ..AdmissionConfig::default()
        };
    });
    let check =
        |b: &Bench| assert_probe_identity(b.server.stats(), b.server.load(b.now).held as usize);
    let a = src([203, 0, 113, 1], 40_000);
    let (_a, init) = b.init_from(a);
    assert_eq!(b.handle(a, &init).expect("session A")[1], kind::ACCEPT);
    let mut conn = b.client();
    let probe = transmits(&mut conn, b.now).remove(0).1;
    let mut unknown = probe.clone();
    unknown[19..23].copy_from_slice(b"ecxo");
    let mut other_version = probe.clone();
    other_version[0] = 1;
    // Four requests in flight on two slots: paced offers are held, at most 8 of them.
    b.server.set_capacity(Some(2));
    b.set_app(4);
    for i in 0..30u8 {
        let from = src([192, 0, 2, 10 + i % 10], 40_000);
        assert!(
            b.handle(from, &probe).is_none(),
            "paced: held, not answered"
        );
        assert!(b.handle(from, &unknown).is_none());
        assert_eq!(b.handle(from, &other_version).expect("VERSIONS")[0], 0);
    }
    let s = *b.server.stats();
    assert_eq!((s.probes_held, s.probes_dropped_queue_full), (8, 22));
    check(&b);
    // One source floods PROBEs and VERSIONS: the budget runs low, the server is pressed, the
    // source's bucket runs dry.
    let flooder = src([198, 51, 100, 7], 40_000);
    for _ in 0..300 {
        b.handle(flooder, &probe);
        b.handle(flooder, &other_version);
    }
    let s = *b.server.stats();
    assert!(s.probes_rate_limited > 0 && s.versions_refused > 0, "{s:?}");
    check(&b);
    // The held offers come due.
    b.now += Duration::from_millis(20);
    let released = b.server_transmits().len() as u64;
    assert!(released >= 8, "{released}");
    check(&b);
    // Full: new PROBEs are withheld, held ones are dropped when due.
    b.set_app(4);
    for i in 0..4u8 {
        assert!(b.handle(src([192, 0, 2, 50 + i], 40_000), &probe).is_none());
    }
    b.server.set_max_sessions(Some(1));
    assert!(b.handle(src([192, 0, 2, 60], 40_000), &probe).is_none());
    b.now += Duration::from_millis(20);
    b.server_transmits();
    let s = *b.server.stats();
    assert!(
        s.probes_withheld_full >= 1 && s.probes_dropped_hold_expired >= 1,
        "{s:?}"
    );
    check(&b);
    // A second session spends the handshake budget: under load, PROBEs are withheld.
    b.server.set_max_sessions(None);
    b.server.set_capacity(None);
    let c = src([203, 0, 113, 2], 40_000);
    let (_c, init) = b.init_from(c);
    assert_eq!(b.handle(c, &init).expect("session C")[1], kind::ACCEPT);
    assert!(b.handle(src([192, 0, 2, 70], 40_000), &probe).is_none());
    assert!(b.server.stats().probes_withheld_under_load >= 1);
    check(&b);
    b.now += Duration::from_secs(2);
    b.server_transmits();
    check(&b);
    assert_eq!(b.server.stats().amplification_suppressed, 0);
}
