//! The probe race (C1–C5, R4): one tag per race sent to every server at once, offers recognised by
//! tag and source, answer times measured, the earliest valid offer wins, later ones are void.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::util::*;
use crate::MAX_DATAGRAM_LEN;
use crate::client::{ClientConfig, ClientEvent};
use crate::packet::{LoadHint, Offer, Packet, Tag, kind};

fn tag_of(data: &[u8]) -> Tag {
    match Packet::decode(data) {
        Ok(Packet::Probe(p)) => p.tag,
        Ok(Packet::Offer(o)) => o.tag,
        Ok(Packet::Init(i)) => i.tag,
        other => panic!("no tag in {other:?}"),
    }
}

/// The PROBEs client `c` sent, grouped by the instant they were sent.
fn probe_rounds(sim: &Sim, c: usize) -> BTreeMap<std::time::Instant, Vec<(SocketAddr, Tag)>> {
    let mut rounds: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for s in sim.sent_of(kind::PROBE) {
        if s.src == sim.clients[c].addr {
            rounds
                .entry(s.at)
                .or_default()
                .push((s.dst, tag_of(&s.data)));
        }
    }
    rounds
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v
}

#[test]
fn c1_one_probe_per_server_at_the_same_instant_with_one_tag_per_race() {
    let mut tags_seen = HashSet::new();
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(4, |_, _| {});
        let pool = sim.pool();
        for _ in 0..3 {
            sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        }
        // Lose every OFFER during the first second, so that probes are retransmitted.
        let t0 = sim.now;
        sim.filter = Some(Box::new(move |now, d| {
            if d.data[1] == kind::OFFER && now < t0 + Duration::from_secs(1) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        for c in 0..3 {
            sim.establish(c, Duration::from_secs(5));
        }
        for c in 0..3 {
            let rounds = probe_rounds(&sim, c);
            assert!(
                rounds.len() >= 3,
                "client {c}: probes were not retransmitted: {rounds:?}"
            );
            assert_eq!(
                *rounds.keys().next().unwrap(),
                t0,
                "first probes not sent at once at start"
            );
            let race_tag = rounds.values().next().unwrap()[0].1;
            for (at, round) in &rounds {
                let dsts = round.iter().map(|(d, _)| *d).collect();
                assert_eq!(
                    sorted(dsts),
                    sorted(pool.clone()),
                    "round at {at:?}: not one probe per server"
                );
                for (_, t) in round {
                    assert_eq!(*t, race_tag, "a retransmitted probe changed the tag");
                }
            }
            assert_ne!(race_tag.0, [0; 16]);
            // Tags differ between clients and between seeds.
            assert!(tags_seen.insert(race_tag.0), "tag {race_tag:?} reused");
            assert_eq!(
                sim.clients[c].conn.stats().probes_sent as usize,
                rounds.len() * pool.len()
            );
        }
    }
}

#[test]
fn c1_a_new_race_after_failover_uses_a_fresh_tag() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, _| {});
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c, Duration::from_secs(5));
        let first = sim.clients[c].conn.server().unwrap();
        let w = sim.server_index(first);
        let killed_at = sim.now;
        sim.servers[w].alive = false;
        assert!(sim.run_until(Duration::from_secs(20), |s| {
            s.clients[c].conn.stats().sessions_established == 2
        }));
        let rounds = probe_rounds(&sim, c);
        let (before, after): (Vec<_>, Vec<_>) =
            rounds.into_iter().partition(|(at, _)| *at < killed_at);
        let old: HashSet<_> = before
            .iter()
            .flat_map(|(_, r)| r.iter().map(|(_, t)| t.0))
            .collect();
        let new: HashSet<_> = after
            .iter()
            .flat_map(|(_, r)| r.iter().map(|(_, t)| t.0))
            .collect();
        assert_eq!(old.len(), 1);
        assert_eq!(new.len(), 1);
        assert!(old.is_disjoint(&new), "failover race reused the old tag");
        // The new race probes every server but the lost one, at once.
        let (_, round) = &after[0];
        let others: Vec<_> = pool.iter().copied().filter(|a| *a != first).collect();
        assert_eq!(
            sorted(round.iter().map(|(d, _)| *d).collect()),
            sorted(others)
        );
    }
}

#[test]
fn c2_offers_from_unprobed_sources_or_with_unknown_tags_are_dropped_and_counted() {
    let stranger: SocketAddr = "10.9.9.9:4433".parse().unwrap();
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        sim.set_latency(server_addr(0), 5);
        sim.set_latency(server_addr(1), 5);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        let client = sim.clients[c].addr;
        // An attacker who sees the first PROBE answers at once, well before the real servers:
        // once with the right tag from an address that was not probed, once from a probed server's
        // address with a tag of its own.
        let mut forged = false;
        sim.filter = Some(Box::new(move |_, d| {
            if forged || d.data[1] != kind::PROBE {
                return Verdict::Pass;
            }
            forged = true;
            let tag = tag_of(&d.data);
            let mut wrong = tag;
            wrong.0[0] ^= 0xff;
            let offer = |tag| {
                let mut buf = [0u8; MAX_DATAGRAM_LEN];
                let o = Offer {
                    tag,
                    server_key_id: key.key_id(),
                    load: LoadHint::default(),
                    held_us: 0,
                    cookie: &[7; 39],
                };
                let n = o.encode(&mut buf).unwrap();
                buf[..n].to_vec()
            };
            Verdict::PassAnd(vec![
                Datagram {
                    src: stranger,
                    dst: client,
                    data: offer(tag),
                },
                Datagram {
                    src: server_addr(0),
                    dst: client,
                    data: offer(wrong),
                },
            ])
        }));
        sim.establish(c, Duration::from_secs(2));
        let stats = sim.clients[c].conn.stats();
        assert_eq!(stats.offers_unprobed_source, 1);
        assert_eq!(stats.offers_unknown_tag, 1);
        assert_eq!(stats.offers_won, 1);
        // The race went on to a genuine offer, which took a real round trip.
        let selected: Vec<_> = sim
            .client_events(c)
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Selected {
                    server,
                    answer_time,
                    ..
                } => Some((server, answer_time)),
                _ => None,
            })
            .collect();
        assert_eq!(selected.len(), 1);
        assert_ne!(selected[0].0, stranger);
        assert_eq!(selected[0].1, Duration::from_micros(5_200));
        // Nothing was ever sent to the stranger, and no INIT carried the forged cookie.
        assert!(sim.sent.iter().all(|s| s.dst != stranger));
        for s in sim.sent_of(kind::INIT) {
            let Ok(Packet::Init(init)) = Packet::decode(&s.data) else {
                panic!("bad INIT")
            };
            assert_ne!(init.cookie, &[7; 39]);
        }
    }
}

#[test]
fn c3_answer_times_reflect_each_servers_round_trip() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, _| {});
        // One-way 1 ms towards the client; towards the servers 1, 9 and 4 ms: RTT 2, 10, 5 ms.
        sim.link = Link::ms(1);
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 9);
        sim.set_latency(server_addr(2), 4);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        sim.run_for(Duration::from_millis(50));
        let events = sim.client_events(c);
        let ms = Duration::from_millis;
        assert!(events.contains(&ClientEvent::Selected {
            server: server_addr(0),
            answer_time: ms(2),
            load: LoadHint {
                in_flight: 0,
                capacity: 0,
                expected_us: 10_000,
            },
        }));
        let mut late: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::LateOffer {
                    server,
                    answer_time,
                    ..
                } => Some((*server, *answer_time)),
                _ => None,
            })
            .collect();
        late.sort();
        assert_eq!(
            late,
            vec![(server_addr(1), ms(10)), (server_addr(2), ms(5))]
        );
    }
}

#[test]
fn c4_earliest_offer_wins_the_nearest_server_on_every_seed() {
    for seed in seeds(20) {
        let _g = SeedGuard(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(5, |_, _| {});
        // Latencies 1, 3, 5, 7, 9 ms in a random order, ±0.5 ms of jitter: the order of round
        // trips is fixed, the exact times are not.
        let mut lat = [1u64, 3, 5, 7, 9];
        for i in (1..lat.len()).rev() {
            lat.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for (i, ms) in lat.iter().enumerate() {
            sim.links.insert(
                server_addr(i),
                Link {
                    jitter: Duration::from_micros(500),
                    ..Link::ms(*ms)
                },
            );
        }
        let nearest = server_addr(lat.iter().position(|&l| l == 1).unwrap());
        // The pool order given to the client is shuffled too.
        let mut pool = sim.pool();
        for i in (1..pool.len()).rev() {
            pool.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        assert_eq!(
            sim.clients[c].conn.server(),
            Some(nearest),
            "latencies {lat:?}"
        );
        let won: Vec<_> = sim
            .client_events(c)
            .into_iter()
            .filter(|e| matches!(e, ClientEvent::Selected { .. }))
            .collect();
        assert!(matches!(won[..], [ClientEvent::Selected { server, .. }] if server == nearest));
        assert_eq!(
            sim.servers[sim.server_index(nearest)]
                .endpoint
                .session_count(),
            1
        );
    }
}

#[test]
fn c5_late_offers_are_void_counted_reported_and_never_answered() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, _| {});
        // Server 0 wins at ~1.2 ms; server 1's offer lands during the handshake (~2.2 ms, the
        // ACCEPT comes at ~2.4 ms); server 2's lands after the session is up.
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 2);
        sim.set_latency(server_addr(2), 8);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(0)));
        // Long enough for keepalives, retransmission timers and anything else to fire.
        sim.run_for(Duration::from_secs(10));
        assert!(sim.established(c));
        let stats = sim.clients[c].conn.stats();
        assert_eq!(stats.offers_late, 2);
        assert_eq!(stats.offers_won, 1);
        let mut late: Vec<_> = sim
            .client_events(c)
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::LateOffer { server, .. } => Some(server),
                _ => None,
            })
            .collect();
        late.sort();
        assert_eq!(late, vec![server_addr(1), server_addr(2)]);
        let client = sim.clients[c].addr;
        for s in [1, 2] {
            let to_late = sim.sent_between(client, server_addr(s));
            assert_eq!(
                to_late.len(),
                1,
                "only the one PROBE may go to a late server"
            );
            assert_eq!(to_late[0].kind, kind::PROBE);
            assert_eq!(sim.servers[s].endpoint.stats().inits_received, 0);
            assert_eq!(sim.servers[s].endpoint.session_count(), 0);
        }
    }
}

#[test]
fn r4_offer_naming_an_unpinned_key_is_ignored_and_the_race_continues() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        // Server 0 (nearest) runs with a key the client does not pin; server 1 with the pinned one.
        let _unpinned = sim.add_servers(1, |_, _| {});
        let pinned = sim.add_servers(1, |_, _| {});
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 5);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![pinned]), pool);
        sim.establish(c, Duration::from_secs(1));
        sim.run_for(Duration::from_secs(2));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(1)));
        let stats = sim.clients[c].conn.stats();
        assert_eq!(stats.offers_unknown_key, 1);
        assert_eq!(stats.offers_late, 0, "an unpinned offer is not a late one");
        let client = sim.clients[c].addr;
        assert!(
            sim.sent_between(client, server_addr(0))
                .iter()
                .all(|s| s.kind == kind::PROBE)
        );
        assert_eq!(sim.servers[0].endpoint.stats().inits_received, 0);
        assert_eq!(sim.servers[0].endpoint.session_count(), 0);
    }
}
