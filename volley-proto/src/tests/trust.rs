//! Who may connect, on the simulated network (PROTOCOL.md §4.5–4.7, §5.5, §5.6, §3.9): client
//! keys and allow-lists, revocation, key updates under traffic, a NAT rebinding under a live
//! session, and a client meeting a server of another version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::util::*;
use crate::allow::AllowList;
use crate::client::{ClientConfig, ClientEvent, ConnectError};
use crate::packet::kind;
use crate::server::ServerEvent;
use crate::session::{CloseCode, CloseReason};

fn with_key(key: crate::PublicKey, client: &crate::StaticKeypair) -> ClientConfig {
    let mut cfg = ClientConfig::new(vec![key]);
    cfg.key = Some(client.clone());
    cfg
}

#[test]
fn a1_only_listed_client_keys_get_sessions_and_strangers_get_nothing() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let listed = sim.keypair();
        let stranger = sim.keypair();
        let mut list = AllowList::new();
        list.insert(listed.public(), Some("agent 7"));
        let list = Arc::new(list);
        let key = sim.add_servers(2, |_, cfg| cfg.allow = Some(list.clone()));
        let pool = sim.pool();
        let a = sim.add_client(with_key(key, &listed), pool.clone());
        let b = sim.add_client(with_key(key, &stranger), pool.clone());
        let anon = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(a, Duration::from_secs(1));
        assert!(sim.echo(a, b"listed", Duration::from_secs(1)));
        sim.run_for(Duration::from_secs(20));
        // The listed client: one session, whose server knows its key and name.
        let s = sim.server_index(sim.clients[a].conn.server().unwrap());
        let opened: Vec<_> = sim.servers[s]
            .events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Opened { client, .. } => Some(client.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(opened.len(), 1, "seed {seed}");
        assert_eq!(opened[0].key, listed.public());
        assert_eq!(opened[0].name.as_deref(), Some("agent 7"));
        // The others: offers, then silence; two unanswered handshakes and they give up, told
        // that the servers answered but accepted no session for their key.
        for c in [b, anon] {
            let events = sim.client_events(c);
            assert!(
                events.iter().any(|e| matches!(
                    e,
                    ClientEvent::Failed(ConnectError::HandshakeTimeout(_, 2))
                )),
                "seed {seed}: {events:?}"
            );
            assert!(
                ConnectError::HandshakeTimeout(server_addr(0), 2)
                    .to_string()
                    .contains("accepted no session for this client key")
            );
            let to_it: Vec<u8> = sim
                .sent
                .iter()
                .filter(|d| d.dst == sim.clients[c].addr)
                .map(|d| d.kind)
                .collect();
            assert!(
                !to_it.is_empty() && to_it.iter().all(|k| *k == kind::OFFER),
                "seed {seed}: a stranger got {to_it:?}"
            );
        }
        let (mut opened, mut unauthorized) = (0, 0);
        for srv in &sim.servers {
            opened += srv.endpoint.stats().sessions_opened;
            unauthorized += srv.endpoint.stats().inits_unauthorized;
        }
        assert_eq!(opened, 1);
        // Two handshakes each, every INIT retransmission counted.
        assert!(unauthorized >= 4, "seed {seed}: {unauthorized}");
        // Nothing kept for them: the server that never saw the listed client holds no state.
        let other = 1 - s;
        assert_eq!(sim.servers[other].endpoint.session_count(), 0);
        sim.clients[a].conn.close(CloseCode::NORMAL);
        // (The ended-session filter is swept at the next cookie rotation, every 30 s.)
        sim.run_for(Duration::from_secs(70));
        for srv in &mut sim.servers {
            while srv.endpoint.poll_event().is_some() {}
            assert_eq!(srv.endpoint.retained_state(), 0, "seed {seed}");
        }
    }
}

#[test]
fn a1_without_an_allow_list_anonymous_clients_connect_and_are_told_apart() {
    let mut sim = Sim::new(1);
    let key = sim.add_servers(1, |_, _| {});
    let pool = sim.pool();
    let a = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
    let b = sim.add_client(ClientConfig::new(vec![key]), pool);
    for c in [a, b] {
        sim.establish(c, Duration::from_secs(1));
    }
    let keys: Vec<_> = sim.servers[0]
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Opened { client, .. } => Some((client.key, client.name.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0].0, keys[1].0, "one random key per client instance");
    assert!(keys.iter().all(|(_, name)| name.is_none()));
}

#[test]
fn a2_reloading_the_allow_list_revokes_live_sessions_at_once() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let (one, two) = (sim.keypair(), sim.keypair());
        let list = Arc::new(AllowList::from_keys([one.public(), two.public()]));
        let key = sim.add_servers(1, |_, cfg| cfg.allow = Some(list.clone()));
        let pool = sim.pool();
        let a = sim.add_client(with_key(key, &one), pool.clone());
        let b = sim.add_client(with_key(key, &two), pool);
        for c in [a, b] {
            sim.establish(c, Duration::from_secs(1));
        }
        let revoked_at = sim.now;
        let revoked = sim.servers[0]
            .endpoint
            .set_allow_list(Some(Arc::new(AllowList::from_keys([two.public()]))));
        assert_eq!(revoked, 1);
        sim.run_until(Duration::from_secs(1), |s| {
            s.client_events(a)
                .iter()
                .any(|e| matches!(e, ClientEvent::Failed(_)))
        });
        let (at, _) = sim.clients[a]
            .events
            .iter()
            .find(|(_, e)| matches!(e, ClientEvent::Failed(ConnectError::Revoked(_))))
            .unwrap_or_else(|| panic!("seed {seed}: {:?}", sim.client_events(a)));
        // One trip across the link (200 µs here), not a timeout.
        assert!(
            *at - revoked_at <= Duration::from_millis(1),
            "{:?}",
            *at - revoked_at
        );
        assert!(sim.client_events(a).iter().any(|e| matches!(
            e,
            ClientEvent::ServerLost {
                reason: CloseReason::Remote(CloseCode::REVOKED),
                ..
            }
        )));
        assert_eq!(sim.servers[0].endpoint.stats().sessions_revoked, 1);
        assert!(sim.echo(b, b"still welcome", Duration::from_secs(1)));
        // The revoked key cannot come back: no race is started after the revocation.
        let races = sim.clients[a].conn.stats().races;
        sim.run_for(Duration::from_secs(10));
        assert_eq!(sim.clients[a].conn.stats().races, races);
        // An empty list revokes the rest; `None` would admit anyone again.
        assert_eq!(
            sim.servers[0]
                .endpoint
                .set_allow_list(Some(Arc::new(AllowList::new()))),
            1
        );
    }
}

#[test]
fn a3_sessions_update_their_keys_under_traffic_and_lose_nothing() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.session.rekey_after_packets = 200;
            cfg.session.idle_timeout = Duration::from_secs(30);
        });
        // Reordering: up to 3 ms of jitter on every packet.
        sim.link.jitter = Duration::from_millis(3);
        let mut cfg = ClientConfig::new(vec![key]);
        cfg.session.rekey_after_packets = 200;
        cfg.session.idle_timeout = Duration::from_secs(30);
        let c = sim.add_client(cfg, sim.pool());
        sim.establish(c, Duration::from_secs(1));
        // 12 s at 1,000 datagrams/s: an update about every second each way.
        let mut sent = 0;
        for i in 0..12_000u32 {
            if sim.clients[c].conn.send_datagram(&i.to_be_bytes()).is_ok() {
                sent += 1;
            }
            sim.run_for(Duration::from_millis(1));
        }
        sim.run_for(Duration::from_millis(100));
        let echoed = sim.clients[c]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, ClientEvent::Datagram(_)))
            .count();
        assert_eq!(echoed, sent, "seed {seed}: every datagram echoed");
        let server = sim.servers[0].endpoint.stats();
        assert_eq!(server.data_auth_failed + server.data_replayed, 0);
        assert_eq!(sim.clients[c].conn.stats().data_dropped, 0);
        let id = match sim.servers[0].events[0] {
            ServerEvent::Opened { id, .. } => id,
            _ => unreachable!(),
        };
        let ss = sim.servers[0].endpoint.session_stats(id).unwrap();
        assert!(ss.key_updates_sent >= 10, "{ss:?}");
        assert!(ss.key_updates_received >= 10, "{ss:?}");
    }
}

#[test]
fn a4_a_nat_rebinding_under_a_live_session_keeps_it() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        assert!(sim.echo(c, b"before", Duration::from_secs(1)));
        // From now on the client's NAT maps it to a new public port.
        let client = client_addr(c);
        let public = SocketAddr::from(([203, 0, 113, 77], 40_000));
        sim.filter = Some(Box::new(move |_, d| {
            if d.src == client {
                d.src = public;
            } else if d.dst == public {
                d.dst = client;
            } else if d.dst == client {
                // The old mapping is gone.
                return Verdict::Drop;
            }
            Verdict::Pass
        }));
        // The first packet from the new address starts the validation; the server's answers of
        // that round trip still go to the old mapping and are lost (§5.6).
        let _ = sim.clients[c].conn.send_datagram(b"trigger");
        sim.run_for(Duration::from_millis(100));
        for i in 0..20u8 {
            assert!(
                sim.echo(c, &[i; 40], Duration::from_secs(1)),
                "seed {seed}: echo {i} after the rebinding"
            );
        }
        let s = sim.server_index(sim.clients[c].conn.server().unwrap());
        let stats = sim.servers[s].endpoint.stats();
        assert_eq!(stats.sessions_migrated, 1, "seed {seed}");
        assert_eq!(
            sim.servers[s]
                .endpoint
                .remote(match sim.servers[s].events[0] {
                    ServerEvent::Opened { id, .. } => id,
                    _ => unreachable!(),
                }),
            Some(public)
        );
        assert!(
            !sim.client_events(c)
                .iter()
                .any(|e| matches!(e, ClientEvent::ServerLost { .. })),
            "seed {seed}: no failover"
        );
    }
}

#[test]
fn a4_version_mismatch_is_a_clear_error_and_a_forged_versions_is_ignored() {
    for forged in [false, true] {
        let mut sim = Sim::new(3);
        let key = sim.add_servers(1, |_, _| {});
        let server = server_addr(0);
        // The server is a version-1 server: it answers every PROBE with VERSIONS naming 1.
        sim.filter = Some(Box::new(move |_, d| {
            if d.dst == server && d.data.first() == Some(&crate::VERSION) {
                let mut v = vec![0, 1, 1];
                v.extend_from_slice(&d.data[..32]);
                if forged {
                    v[3 + 5] ^= 1; // not our tag
                }
                return Verdict::PassAnd(vec![Datagram {
                    src: server,
                    dst: d.src,
                    data: v,
                }]);
            }
            if d.src == server {
                return Verdict::Drop; // only the VERSIONS gets out
            }
            Verdict::Pass
        }));
        let c = sim.add_client(ClientConfig::new(vec![key]), sim.pool());
        sim.run_for(Duration::from_secs(5));
        let failed = sim.client_events(c).into_iter().find_map(|e| match e {
            ClientEvent::Failed(err) => Some(err),
            _ => None,
        });
        if forged {
            assert!(
                matches!(failed, Some(ConnectError::NoOffer(_))),
                "{failed:?}"
            );
            assert_eq!(sim.clients[c].conn.stats().versions_received, 0);
        } else {
            assert_eq!(failed, Some(ConnectError::VersionMismatch(server, 1)));
            assert!(sim.clients[c].conn.stats().versions_received >= 1);
            assert!(failed.unwrap().to_string().contains("version 1"));
        }
    }
}

#[test]
fn a4_a_path_validation_retries_one_pto_apart_then_gives_up() {
    let mut sim = Sim::new(11);
    let key = sim.add_servers(1, |_, _| {});
    let c = sim.add_client(ClientConfig::new(vec![key]), sim.pool());
    sim.establish(c, Duration::from_secs(1));
    let victim = SocketAddr::from(([198, 51, 100, 1], 40_053));
    // An on-path attacker takes the client's next packet and sends it from the victim's
    // address first; the genuine copy never arrives.
    let client = client_addr(c);
    let stolen: std::rc::Rc<std::cell::RefCell<Option<Vec<u8>>>> = Default::default();
    {
        let stolen = stolen.clone();
        sim.filter = Some(Box::new(move |_, d| {
            if d.src == client && stolen.borrow().is_none() {
                *stolen.borrow_mut() = Some(d.data.clone());
                return Verdict::Drop;
            }
            Verdict::Pass
        }));
    }
    let _ = sim.clients[c].conn.send_datagram(&[7; 20]);
    sim.run_for(Duration::from_millis(1));
    let data = stolen.borrow_mut().take().expect("the stolen packet");
    sim.filter = None;
    let t0 = sim.now;
    sim.send(victim, server_addr(0), data.clone());
    sim.run_for(Duration::from_millis(900));
    let to_victim: Vec<_> = sim
        .sent
        .iter()
        .filter(|d| d.dst == victim)
        .map(|d| (d.at - t0, d.len))
        .collect();
    // The challenge at once, then one PTO (200 ms before any RTT sample) apart: three in
    // all, well before the 1 s keepalive, and no more than 3x the packet's bytes.
    assert_eq!(to_victim.len(), 3, "{to_victim:?}");
    assert!(to_victim[2].0 < Duration::from_millis(700), "{to_victim:?}");
    assert!(to_victim.iter().map(|(_, n)| n).sum::<usize>() <= 3 * data.len());
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.sent.iter().filter(|d| d.dst == victim).count(), 3);
    assert_eq!(sim.servers[0].endpoint.stats().sessions_migrated, 0);
}
