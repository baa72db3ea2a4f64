//! End-to-end race, handshake and session over the simulated network (C6, S4, R4).

use std::cell::Cell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::util::*;
use crate::DATA_HEADER_LEN;
use crate::client::{ClientConfig, ClientEvent};
use crate::packet::{Packet, kind};
use crate::server::ServerEvent;

#[test]
fn c6_session_with_earliest_server_carries_encrypted_datagrams() {
    for seed in seeds(20) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, _| {});
        // Server 1 is nearest.
        sim.links.insert(
            server_addr(0),
            Link {
                latency: Duration::from_millis(5),
                ..Link::default()
            },
        );
        sim.links.insert(
            server_addr(1),
            Link {
                latency: Duration::from_millis(1),
                ..Link::default()
            },
        );
        sim.links.insert(
            server_addr(2),
            Link {
                latency: Duration::from_millis(9),
                ..Link::default()
            },
        );
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        assert!(sim.run_until(Duration::from_secs(5), |s| s.established(c)));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(1)));
        sim.clients[c]
            .conn
            .send_datagram(b"ping over volley")
            .unwrap();
        assert!(sim.run_until(Duration::from_secs(1), |s| {
            s.client_events(c)
                .contains(&ClientEvent::Datagram(bytes::Bytes::from_static(
                    b"ping over volley",
                )))
        }));
        assert_eq!(sim.servers[1].endpoint.session_count(), 1);
        assert_eq!(sim.servers[0].endpoint.session_count(), 0);
        assert!(matches!(
            sim.servers[1].events[0],
            ServerEvent::Opened { .. }
        ));
    }
}

#[test]
fn c6_init_carries_the_winners_cookie_verbatim_and_goes_only_to_the_winner() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, _| {});
        let winner = (seed % 3) as usize;
        for i in 0..3 {
            sim.set_latency(
                server_addr(i),
                if i == winner { 1 } else { 3 + 2 * i as u64 },
            );
        }
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        sim.run_for(Duration::from_secs(1));
        let client = sim.clients[c].addr;
        let w = server_addr(winner);
        assert_eq!(sim.clients[c].conn.server(), Some(w));
        // The probed address is the one the INIT goes to.
        assert!(
            sim.sent_between(client, w)
                .iter()
                .any(|s| s.kind == kind::PROBE)
        );
        let offers = sim.sent_between(w, client);
        let Ok(Packet::Offer(offer)) = Packet::decode(&offers[0].data) else {
            panic!("no offer")
        };
        let inits: Vec<_> = sim.sent.iter().filter(|s| s.kind == kind::INIT).collect();
        assert_eq!(inits.len(), 1);
        for s in inits {
            assert_eq!(
                (s.src, s.dst),
                (client, w),
                "INIT not sent to the selected server only"
            );
            let Ok(Packet::Init(init)) = Packet::decode(&s.data) else {
                panic!("bad INIT")
            };
            assert_eq!(
                init.cookie, offer.cookie,
                "INIT cookie differs from the winner's OFFER"
            );
            assert_eq!(init.tag, offer.tag);
            assert_eq!(init.service, b"echo");
        }
    }
}

#[test]
fn s4_accept_carries_a_fresh_key_share_and_session_payload_is_never_cleartext() {
    let payload = b"volley secret payload: 0123456789abcdef, never on the wire in the clear";
    let mut shares = HashSet::new();
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        let s = sim.server_index(sim.clients[c].conn.server().unwrap());
        assert!(sim.echo(c, payload, Duration::from_secs(1)), "no echo");
        // Both sides derived the same keys: the server decrypted it, the client the echo.
        assert!(
            sim.servers[s].events.iter().any(
                |e| matches!(e, ServerEvent::Datagram { data, .. } if data[..] == payload[..])
            )
        );
        let accepts = sim.sent_of(kind::ACCEPT);
        assert_eq!(accepts.len(), 1);
        let Ok(Packet::Accept(accept)) = Packet::decode(&accepts[0].data) else {
            panic!("bad ACCEPT")
        };
        // Noise IK message 2: the responder's ephemeral (32) and an AEAD-sealed payload (16+).
        assert!(
            accept.noise.len() >= 48,
            "ACCEPT carries no key share: {} bytes",
            accept.noise.len()
        );
        let Ok(Packet::Init(init)) = Packet::decode(&sim.sent_of(kind::INIT)[0].data) else {
            panic!()
        };
        assert_ne!(&accept.noise[..32], &init.noise[..32]);
        assert!(
            shares.insert(accept.noise[..32].to_vec()),
            "key share reused"
        );
        assert!(
            shares.insert(init.noise[..32].to_vec()),
            "client key share reused"
        );
        for d in &sim.sent {
            assert!(
                !d.data
                    .windows(16)
                    .any(|w| payload.windows(16).any(|p| p == w)),
                "payload bytes in cleartext in a {:#x} datagram",
                d.kind
            );
        }
        assert!(sim.sent_of(kind::DATA).len() >= 2);
    }
}

#[test]
fn s4_data_tampered_in_flight_is_dropped_and_never_delivered() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, _| {});
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        // Flip one ciphertext bit of every DATA towards `target` while the switch is set.
        let target = Rc::new(Cell::new(None::<SocketAddr>));
        let t = target.clone();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        sim.filter = Some(Box::new(move |_, d| {
            if d.data[1] == kind::DATA && t.get() == Some(d.dst) {
                let i =
                    DATA_HEADER_LEN + (rng.next_u64() as usize) % (d.data.len() - DATA_HEADER_LEN);
                d.data[i] ^= 1 << (rng.next_u64() % 8);
            }
            Verdict::Pass
        }));
        target.set(Some(server_addr(0)));
        let from = sim.now;
        for m in [&b"m0"[..], b"m1", b"m2"] {
            sim.clients[c].conn.send_datagram(m).unwrap();
        }
        sim.run_for(Duration::from_millis(100));
        let stats = *sim.servers[0].endpoint.stats();
        // The three datagrams, and the liveness probes (R9) the unanswered client sent after
        // them: every DATA packet of the window that arrived failed authentication (the last
        // probe may still be on its way).
        let sent = sim
            .sent_between(sim.clients[c].addr, server_addr(0))
            .iter()
            .filter(|d| d.at >= from && d.data[1] == kind::DATA)
            .count() as u64;
        assert!(
            (3..=sent).contains(&stats.data_auth_failed),
            "{} of {sent}",
            stats.data_auth_failed
        );
        assert!(
            !sim.servers[0]
                .events
                .iter()
                .any(|e| matches!(e, ServerEvent::Datagram { .. }))
        );
        // Untampered traffic still flows; then tamper the echo on its way back.
        target.set(None);
        assert!(sim.echo(c, b"m3", Duration::from_secs(1)));
        target.set(Some(sim.clients[c].addr));
        let from = sim.now;
        assert!(
            !sim.echo(c, b"m4", Duration::from_millis(100)),
            "tampered echo delivered"
        );
        // The echo, and the PONGs to the client's liveness probes: all dropped.
        let sent = sim
            .sent_between(server_addr(0), sim.clients[c].addr)
            .iter()
            .filter(|d| d.at >= from && d.data[1] == kind::DATA)
            .count() as u64;
        let dropped = sim.clients[c].conn.stats().data_dropped;
        assert!((1..=sent).contains(&dropped), "{dropped} of {sent}");
        assert!(
            sim.established(c),
            "tampered packets must not kill the session"
        );
        let delivered: Vec<_> = sim
            .client_events(c)
            .into_iter()
            .filter(|e| matches!(e, ClientEvent::Datagram(_)))
            .collect();
        assert_eq!(
            delivered,
            vec![ClientEvent::Datagram(bytes::Bytes::from_static(b"m3"))]
        );
    }
}

#[test]
fn r4_a_server_that_claims_the_pinned_key_without_holding_it_never_gets_a_session() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        // Server 0 (nearest) holds its own key but advertises the pinned pool key's id.
        let _impostor = sim.add_servers(1, |_, _| {});
        let pinned = sim.add_servers(1, |_, _| {});
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 5);
        sim.filter = Some(Box::new(move |_, d| {
            if d.src == server_addr(0) && d.data[1] == kind::OFFER {
                d.data[18..26].copy_from_slice(&pinned.key_id().0);
            }
            Verdict::Pass
        }));
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![pinned]), pool);
        sim.establish(c, Duration::from_secs(10));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(1)));
        let impostor = sim.servers[0].endpoint.stats();
        assert_eq!(impostor.sessions_opened, 0);
        assert!(impostor.inits_received >= 1);
        assert_eq!(
            impostor.init_handshake_failed, impostor.inits_received,
            "IK let a wrong key through"
        );
        assert!(
            sim.sent_between(server_addr(0), sim.clients[c].addr)
                .iter()
                .all(|s| s.kind == kind::OFFER)
        );
        let events = sim.client_events(c);
        assert!(events.contains(&ClientEvent::Selected {
            server: server_addr(0),
            answer_time: Duration::from_micros(1_200),
            load: crate::LoadHint {
                expected_us: 10_000,
                ..Default::default()
            },
        }));
        assert!(events.iter().any(|e| matches!(e,
            ClientEvent::Established { server, failover_from: Some(from), .. }
                if *server == server_addr(1) && *from == server_addr(0))));
    }
}

#[test]
fn r4_an_accept_that_fails_noise_never_establishes_a_session() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 5);
        // Corrupt the key share in server 0's ACCEPTs.
        sim.filter = Some(Box::new(|_, d| {
            if d.src == server_addr(0) && d.data[1] == kind::ACCEPT {
                d.data[10] ^= 0x40;
            }
            Verdict::Pass
        }));
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(10));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(1)));
        assert_eq!(sim.clients[c].conn.stats().accepts_invalid, 1);
        let established: Vec<_> = sim
            .client_events(c)
            .into_iter()
            .filter(|e| matches!(e, ClientEvent::Established { .. }))
            .collect();
        assert_eq!(established.len(), 1);
    }
}
