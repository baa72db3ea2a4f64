//! Early data on the simulated network (Z5, PROTOCOL.md §4.8): the session's first datagram
//! rides in the INIT and is delivered once, only past every check; replays and duplicates
//! never deliver it again; the reply that overtakes the ACCEPT is kept; and a one-request
//! session costs the race plus one round trip.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::util::*;
use crate::allow::AllowList;
use crate::client::{ClientConfig, ClientEvent, ConnectError};
use crate::packet::kind;
use crate::server::{ServerEvent, ServerStats};
use crate::session::CloseCode;

/// Every (server index, session id) that got `data` as a datagram, in order.
fn deliveries(sim: &Sim, data: &[u8]) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for (i, s) in sim.servers.iter().enumerate() {
        for e in &s.events {
            if let ServerEvent::Datagram { id, data: d } = e
                && d == data
            {
                out.push((i, *id));
            }
        }
    }
    out
}

/// The servers' counters, summed where a test needs them.
fn total(sim: &Sim, f: impl Fn(&ServerStats) -> u64) -> u64 {
    sim.servers.iter().map(|s| f(s.endpoint.stats())).sum()
}

fn with_key(key: crate::PublicKey, client: &crate::StaticKeypair) -> ClientConfig {
    let mut cfg = ClientConfig::new(vec![key]);
    cfg.key = Some(client.clone());
    cfg
}

#[test]
fn z5_early_data_arrives_once_as_the_sessions_first_datagram_despite_duplicated_inits() {
    let mut duplicates = 0;
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, _| {});
        // Half the datagrams arrive twice: INITs (and their retransmissions) among them.
        sim.link.duplicate = 0.5;
        let pool = sim.pool();
        let c = sim.add_client_early(ClientConfig::new(vec![key]), pool, b"first request");
        assert!(
            sim.run_until(Duration::from_secs(5), |s| s
                .count_datagrams(c, b"first request")
                > 0),
            "seed {seed}: {:?}",
            sim.client_events(c)
        );
        sim.run_for(Duration::from_secs(2));
        let got = deliveries(&sim, b"first request");
        assert_eq!(got.len(), 1, "seed {seed}: delivered {got:?}");
        let (si, id) = got[0];
        // The session's first datagram, right after it opened.
        let mine: Vec<&ServerEvent> = sim.servers[si]
            .events
            .iter()
            .filter(|e| match e {
                ServerEvent::Opened { id: i, .. }
                | ServerEvent::Datagram { id: i, .. }
                | ServerEvent::Closed { id: i, .. } => *i == id,
                _ => false,
            })
            .collect();
        assert!(
            matches!(mine.first(), Some(ServerEvent::Opened { .. })),
            "seed {seed}: {mine:?}"
        );
        assert!(
            matches!(mine.get(1), Some(ServerEvent::Datagram { .. })),
            "seed {seed}: {mine:?}"
        );
        assert_eq!(total(&sim, |s| s.early_data_received), 1, "seed {seed}");
        assert_eq!(total(&sim, |s| s.early_data_bytes), 13, "seed {seed}");
        assert_eq!(total(&sim, |s| s.sessions_opened), 1, "seed {seed}");
        let stats = sim.servers[si].endpoint.session_stats(id).unwrap();
        assert_eq!(stats.datagrams_received, 1, "seed {seed}");
        // The echo came back once (a duplicated DATA fails the replay window).
        assert_eq!(sim.count_datagrams(c, b"first request"), 1, "seed {seed}");
        assert_eq!(sim.clients[c].conn.stats().early_data_sent, 1);
        duplicates += total(&sim, |s| s.init_duplicate);
    }
    assert!(
        duplicates > 0,
        "no INIT was duplicated: the test proved nothing"
    );
}

#[test]
fn z5_replayed_inits_never_deliver_the_early_data_again() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, _| {});
        let pool = sim.pool();
        let c = sim.add_client_early(ClientConfig::new(vec![key]), pool, b"once");
        assert!(
            sim.run_until(Duration::from_secs(1), |s| s.count_datagrams(c, b"once")
                > 0)
        );
        let inits = sim.sent_of(kind::INIT);
        assert_eq!(inits.len(), 1, "seed {seed}");
        let (src, dst, init) = (inits[0].src, inits[0].dst, inits[0].data.clone());
        let stats = |sim: &Sim| *sim.servers[0].endpoint.stats();
        // While the session is open: its stored ACCEPT again (§7.3 step 7), nothing delivered.
        sim.send(src, dst, init.clone());
        sim.run_for(Duration::from_millis(50));
        assert_eq!(stats(&sim).init_duplicate, 1, "seed {seed}");
        // From another address: a COOKIE_CHANGE (the cookie is bound to the client's), which
        // only the client's static key could follow.
        let elsewhere = SocketAddr::from(([203, 0, 113, 9], 40000));
        sim.send(elsewhere, dst, init.clone());
        sim.run_for(Duration::from_millis(50));
        assert_eq!(stats(&sim).cookie_changes_sent, 1, "seed {seed}");
        // After the session ended: dropped (step 7a).
        sim.clients[c].conn.close(CloseCode::NORMAL);
        sim.run_for(Duration::from_millis(100));
        assert_eq!(sim.servers[0].endpoint.session_count(), 0, "seed {seed}");
        sim.send(src, dst, init.clone());
        sim.run_for(Duration::from_millis(50));
        assert_eq!(stats(&sim).init_after_close, 1, "seed {seed}");
        // Once the cookie's lifetime is over: it fails the cookie (step 4).
        sim.run_for(Duration::from_secs(11));
        sim.send(src, dst, init.clone());
        sim.run_for(Duration::from_millis(50));
        assert_eq!(stats(&sim).init_cookie_expired, 1, "seed {seed}");
        assert_eq!(deliveries(&sim, b"once").len(), 1, "seed {seed}");
        assert_eq!(stats(&sim).sessions_opened, 1, "seed {seed}");
        assert_eq!(stats(&sim).early_data_received, 1, "seed {seed}");
    }
}

#[test]
fn z5_a_client_that_moves_mid_handshake_has_its_early_data_delivered_once() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, _| {});
        // The first session's ACCEPTs are lost; meanwhile the client's NAT rebinds.
        let drop_accepts = Rc::new(Cell::new(true));
        let d = drop_accepts.clone();
        sim.filter = Some(Box::new(move |_, dg| {
            if d.get() && dg.data.get(1) == Some(&kind::ACCEPT) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        let pool = sim.pool();
        let c = sim.add_client_early(ClientConfig::new(vec![key]), pool, b"move");
        assert!(sim.run_until(
            Duration::from_secs(1),
            |s| s.servers[0].endpoint.session_count() == 1
        ));
        sim.clients[c].addr = SocketAddr::from(([192, 168, 77, 1], 41000));
        drop_accepts.set(false);
        // The retransmitted INIT from the new address gets a COOKIE_CHANGE, the INIT that
        // follows it opens a second session: its early data is the same race's, not again.
        sim.establish(c, Duration::from_secs(5));
        let s = *sim.servers[0].endpoint.stats();
        assert_eq!(s.cookie_changes_sent, 1, "seed {seed}: {s:?}");
        assert_eq!(s.sessions_opened, 2, "seed {seed}: {s:?}");
        assert_eq!(s.early_data_received, 1, "seed {seed}: {s:?}");
        assert_eq!(s.early_data_duplicate, 1, "seed {seed}: {s:?}");
        assert_eq!(deliveries(&sim, b"move").len(), 1, "seed {seed}");
    }
}

#[test]
fn z5_an_unlisted_keys_early_data_never_reaches_the_application() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let listed = sim.keypair();
        let stranger = sim.keypair();
        let mut list = AllowList::new();
        list.insert(listed.public(), None);
        let list = Arc::new(list);
        let key = sim.add_servers(2, |_, cfg| cfg.allow = Some(list.clone()));
        let pool = sim.pool();
        let s = sim.add_client_early(with_key(key, &stranger), pool.clone(), b"let me in");
        let l = sim.add_client_early(with_key(key, &listed), pool, b"listed");
        sim.run_for(Duration::from_secs(10));
        assert!(
            sim.client_events(s)
                .iter()
                .any(|e| matches!(e, ClientEvent::Failed(ConnectError::HandshakeTimeout(..)))),
            "seed {seed}: {:?}",
            sim.client_events(s)
        );
        assert!(deliveries(&sim, b"let me in").is_empty(), "seed {seed}");
        assert!(total(&sim, |s| s.inits_unauthorized) >= 2, "seed {seed}");
        // The listed client's early data did get through: the list, not early data, decided.
        assert_eq!(deliveries(&sim, b"listed").len(), 1, "seed {seed}");
        assert_eq!(sim.count_datagrams(l, b"listed"), 1, "seed {seed}");
        assert_eq!(total(&sim, |s| s.early_data_received), 1, "seed {seed}");
        assert_eq!(total(&sim, |s| s.sessions_opened), 1, "seed {seed}");
    }
}

#[test]
fn z5_the_reply_that_overtakes_the_accept_is_not_lost() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, _| {});
        // The first ACCEPT is lost: the echo of the early data, sent right after it, reaches
        // the client first; the retransmitted INIT brings the stored ACCEPT.
        let dropped = Rc::new(Cell::new(false));
        let d = dropped.clone();
        sim.filter = Some(Box::new(move |_, dg| {
            if !d.get() && dg.data.get(1) == Some(&kind::ACCEPT) {
                d.set(true);
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        let pool = sim.pool();
        let c = sim.add_client_early(ClientConfig::new(vec![key]), pool, b"overtaken");
        assert!(
            sim.run_until(Duration::from_secs(3), |s| s
                .count_datagrams(c, b"overtaken")
                > 0),
            "seed {seed}: {:?}",
            sim.client_events(c)
        );
        assert!(dropped.get());
        let stats = sim.clients[c].conn.stats();
        assert_eq!(stats.data_held, 1, "seed {seed}: {stats:?}");
        assert_eq!(stats.inits_sent, 2, "seed {seed}: {stats:?}");
        // The server sent its echo once; the client read it after the session came up.
        assert_eq!(sim.sent_of(kind::DATA).len(), 1, "seed {seed}");
        let events = sim.client_events(c);
        let up = events
            .iter()
            .position(|e| matches!(e, ClientEvent::Established { .. }));
        let reply = events
            .iter()
            .position(|e| matches!(e, ClientEvent::Datagram(d) if d == &b"overtaken"[..]));
        assert!(up.is_some() && reply > up, "seed {seed}: {events:?}");
        assert_eq!(deliveries(&sim, b"overtaken").len(), 1, "seed {seed}");
    }
}

/// The virtual time from a client's start to its first request's reply, on links of `one_way`
/// delay each way, with the request riding in the INIT (`early`) or sent once established.
fn one_request(seed: u64, one_way: Duration, early: bool) -> Duration {
    let mut sim = Sim::new(seed);
    sim.link.latency = one_way;
    let key = sim.add_servers(3, |_, _| {});
    let pool = sim.pool();
    let start = sim.now;
    let c = if early {
        sim.add_client_early(ClientConfig::new(vec![key]), pool, b"request")
    } else {
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        sim.clients[c].conn.send_datagram(b"request").unwrap();
        c
    };
    assert!(
        sim.run_until(Duration::from_secs(1), |s| s.count_datagrams(c, b"request")
            > 0)
    );
    sim.clients[c]
        .events
        .iter()
        .find(|(_, e)| matches!(e, ClientEvent::Datagram(_)))
        .map(|(at, _)| *at - start)
        .expect("the reply arrived")
}

#[test]
fn z5_a_one_request_session_costs_the_race_plus_one_round_trip() {
    let one_way = Duration::from_millis(10);
    let rtt = 2 * one_way;
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        // The echo service answers at once: the service time is zero here.
        let early = one_request(seed, one_way, true);
        let plain = one_request(seed, one_way, false);
        // PROBE → OFFER, then INIT (with the request) → ACCEPT and the reply.
        assert_eq!(early, 2 * rtt, "seed {seed}");
        // PROBE → OFFER, INIT → ACCEPT, DATA → DATA.
        assert_eq!(plain, 3 * rtt, "seed {seed}");
    }
}

#[test]
fn z5_the_largest_early_data_rides_with_the_longest_service_and_more_is_refused() {
    use crate::client::{EarlyData, EarlyDataError};
    use bytes::Bytes;
    assert_eq!(crate::MAX_EARLY_DATA, 1201);
    assert_eq!(
        EarlyData::new(Bytes::new()),
        Err(EarlyDataError::Empty),
        "an empty datagram cannot be told from none"
    );
    assert_eq!(
        EarlyData::new(Bytes::from(vec![7u8; 1202])),
        Err(EarlyDataError::TooLarge(1202))
    );
    let service = vec![b's'; crate::MAX_SERVICE_LEN];
    let first = vec![0x5a; crate::MAX_EARLY_DATA];
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let svc = service.clone();
        let key = sim.add_servers(2, move |_, cfg| cfg.services = vec![svc.clone()]);
        let mut cfg = ClientConfig::new(vec![key]);
        cfg.service = service.clone();
        let pool = sim.pool();
        let c = sim.add_client_early(cfg, pool, &first);
        assert!(
            sim.run_until(Duration::from_secs(2), |s| s.count_datagrams(c, &first) > 0),
            "seed {seed}: {:?}",
            sim.client_events(c)
        );
        let init = sim.sent_of(kind::INIT)[0].len;
        // 22 + 64 + this server's 39-byte cookie + 101 + 1201; a 64-byte cookie makes 1452.
        assert_eq!(init, 22 + 64 + 39 + 101 + 1201, "seed {seed}");
        assert_eq!(deliveries(&sim, &first).len(), 1, "seed {seed}");
    }
}

#[test]
fn z5_the_path_policy_counts_one_round_trip_fewer_when_the_request_rides_in_the_init() {
    use crate::client::{PathPolicy, SelectionPolicy};
    use crate::server::{AnswerPolicy, ServiceModel};
    // Server 0 is in the client's zone (round trip 0.5 ms) with 6 requests on 4 slots of 40 ms
    // (expected 70 ms); server 1 is 20 ms away one way (round trip 20.25 ms) and idle (40 ms).
    // Handshake then request: 2 × 0.5 + 70 = 71 ms beats 2 × 20.25 + 40 = 80.5 ms. The request
    // in the INIT: 0.5 + 70 = 70.5 ms loses to 20.25 + 40 = 60.25 ms.
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let chosen = |early: bool| {
            let mut sim = Sim::new(seed);
            let key = sim.add_servers(2, |_, cfg| {
                cfg.capacity = Some(4);
                cfg.service = ServiceModel::Fixed(Duration::from_millis(40));
                cfg.answer = AnswerPolicy::Immediate;
            });
            sim.set_jitter(server_addr(0), Duration::from_micros(250), Duration::ZERO);
            sim.set_jitter(server_addr(1), Duration::from_millis(20), Duration::ZERO);
            sim.link.latency = Duration::from_micros(250);
            sim.set_app(0, 6);
            let mut cfg = ClientConfig::new(vec![key]);
            cfg.policy = SelectionPolicy::Path(PathPolicy::fixed(1.0));
            let pool = sim.pool();
            let c = if early {
                sim.add_client_early(cfg, pool, b"request")
            } else {
                sim.add_client(cfg, pool)
            };
            sim.establish(c, Duration::from_millis(500));
            sim.clients[c].conn.server()
        };
        assert_eq!(chosen(false), Some(server_addr(0)), "seed {seed}");
        assert_eq!(chosen(true), Some(server_addr(1)), "seed {seed}");
    }
}

#[test]
fn z5_a_refused_inits_early_data_goes_with_the_next_winners_init_and_nowhere_else() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 5);
        let pool = sim.pool();
        let c = sim.add_client_early(ClientConfig::new(vec![key]), pool, b"redirected");
        // Server 0 offers, then fills up before the INIT arrives: it refuses with a REDIRECT.
        assert!(sim.run_until(Duration::from_secs(1), |s| {
            s.sent_of(kind::OFFER)
                .iter()
                .any(|o| o.src == server_addr(0))
        }));
        sim.servers[0].endpoint.set_max_sessions(Some(0));
        assert!(
            sim.run_until(Duration::from_secs(5), |s| s
                .count_datagrams(c, b"redirected")
                > 0),
            "seed {seed}: {:?}",
            sim.client_events(c)
        );
        assert_eq!(
            sim.servers[0].endpoint.stats().redirects_sent,
            1,
            "seed {seed}"
        );
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(1)));
        let got = deliveries(&sim, b"redirected");
        assert_eq!(got.len(), 1, "seed {seed}: {got:?}");
        assert_eq!(got[0].0, 1, "seed {seed}: delivered by server 1 only");
        assert_eq!(
            sim.clients[c].conn.stats().early_data_sent,
            2,
            "seed {seed}"
        );
        // Every INIT carried it: 22 + "echo" + a 39-byte cookie + 101 + 10 bytes of early data.
        let inits = sim.sent_of(kind::INIT);
        assert!(
            inits.iter().all(|i| i.len == 22 + 4 + 39 + 101 + 10),
            "seed {seed}"
        );
        // One server at a time: the INIT to server 1 left after the last one to server 0.
        let last_0 = inits
            .iter()
            .filter(|i| i.dst == server_addr(0))
            .map(|i| i.at)
            .max();
        let first_1 = inits
            .iter()
            .filter(|i| i.dst == server_addr(1))
            .map(|i| i.at)
            .min();
        assert!(last_0.unwrap() < first_1.unwrap(), "seed {seed}");
    }
}

#[test]
fn z5_after_an_unanswered_handshake_the_next_server_gets_the_early_data_too_one_at_a_time() {
    // What the spec warns of (§4.8): server 0 takes the INIT but its ACCEPTs are all lost; the
    // client cannot know, and the next winner gets the early data as well.
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 5);
        sim.filter = Some(Box::new(|_, dg| {
            if dg.src == server_addr(0) && dg.data.get(1) == Some(&kind::ACCEPT) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        let pool = sim.pool();
        let c = sim.add_client_early(ClientConfig::new(vec![key]), pool, b"twice");
        assert!(
            sim.run_until(Duration::from_secs(10), |s| s.count_datagrams(c, b"twice")
                > 0),
            "seed {seed}: {:?}",
            sim.client_events(c)
        );
        let got = deliveries(&sim, b"twice");
        assert_eq!(got.len(), 2, "seed {seed}: {got:?}");
        assert_eq!((got[0].0, got[1].0), (0, 1), "seed {seed}");
        let inits = sim.sent_of(kind::INIT);
        let last_0 = inits
            .iter()
            .filter(|i| i.dst == server_addr(0))
            .map(|i| i.at)
            .max();
        let first_1 = inits
            .iter()
            .filter(|i| i.dst == server_addr(1))
            .map(|i| i.at)
            .min();
        assert!(last_0.unwrap() < first_1.unwrap(), "seed {seed}");
        // Server 0's retransmitted INITs delivered nothing more (duplicates).
        assert!(
            sim.servers[0].endpoint.stats().init_duplicate >= 1,
            "seed {seed}"
        );
        assert_eq!(sim.servers[0].endpoint.stats().early_data_received, 1);
    }
}
