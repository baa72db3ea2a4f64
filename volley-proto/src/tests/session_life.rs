//! Session life (R5): idle-timeout detection of a dead server and failover, GOING_AWAY, keepalive,
//! orderly close and the replay window, end to end.

use std::time::Duration;

use super::util::*;
use crate::client::{ClientConfig, ClientEvent};
use crate::packet::kind;
use crate::server::ServerEvent;
use crate::session::{CloseCode, CloseReason};

/// A fleet of three servers at 1, 3 and 5 ms and one established client; returns the sim, the
/// client and the index of its server (0).
fn fleet(seed: u64) -> (Sim, usize, usize) {
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(3, |_, _| {});
    for i in 0..3 {
        sim.set_latency(server_addr(i), 1 + 2 * i as u64);
    }
    let pool = sim.pool();
    let c = sim.add_client(ClientConfig::new(vec![key]), pool);
    sim.establish(c, Duration::from_secs(1));
    let s = sim.server_index(sim.clients[c].conn.server().unwrap());
    assert_eq!(s, 0);
    (sim, c, s)
}

fn events_since(sim: &Sim, c: usize, since: std::time::Instant) -> Vec<(Duration, ClientEvent)> {
    sim.clients[c]
        .events
        .iter()
        .filter(|(t, _)| *t >= since)
        .map(|(t, e)| (*t - since, e.clone()))
        .collect()
}

#[test]
fn r5_a_dead_server_is_detected_by_idle_timeout_and_the_client_fails_over() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let (mut sim, c, s) = fleet(seed);
        let dead = sim.servers[s].addr;
        assert!(sim.echo(c, b"before", Duration::from_secs(1)));
        // The echo just arrived: the client last heard from its server now.
        let killed = sim.now;
        sim.servers[s].alive = false;
        assert!(sim.run_until(Duration::from_secs(10), |s| {
            s.clients[c].conn.stats().sessions_established == 2
        }));
        let after: Vec<_> = events_since(&sim, c, killed);
        let lost = after
            .iter()
            .find(|(_, e)| matches!(e, ClientEvent::ServerLost { .. }))
            .expect("no ServerLost");
        assert_eq!(
            lost.1,
            ClientEvent::ServerLost {
                server: dead,
                reason: CloseReason::IdleTimeout
            }
        );
        assert_eq!(
            lost.0,
            Duration::from_secs(5),
            "detected after the 5 s idle timeout"
        );
        let kinds: Vec<_> = after.iter().map(|(_, e)| e.clone()).collect();
        assert!(kinds.contains(&ClientEvent::RaceStarted {
            attempt: 1,
            servers: 2
        }));
        let new = sim.clients[c].conn.server().unwrap();
        assert_ne!(new, dead);
        assert!(kinds.iter().any(|e| matches!(e,
            ClientEvent::Established { server, failover_from: Some(from), .. } if *server == new && *from == dead)));
        assert_eq!(sim.clients[c].conn.stats().failovers, 1);
        // The new race did not probe the dead server, and datagrams flow again.
        let client = sim.clients[c].addr;
        assert!(
            !sim.sent.iter().any(|d| d.at >= killed
                && d.src == client
                && d.dst == dead
                && d.kind == kind::PROBE)
        );
        assert!(sim.echo(c, b"after", Duration::from_secs(1)));
    }
}

#[test]
fn r5_going_away_makes_every_client_fail_over() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let (mut sim, c0, s) = fleet(seed);
        let pool = sim.pool();
        let key = sim.servers[0].endpoint.public_key();
        let c1 = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c1, Duration::from_secs(1));
        assert_eq!(sim.servers[s].endpoint.session_count(), 2);
        let closed_at = sim.now;
        sim.servers[s].endpoint.close_all(CloseCode::GOING_AWAY);
        assert!(sim.run_until(Duration::from_secs(1), |sim| {
            (0..2).all(|c| sim.clients[c].conn.stats().sessions_established == 2)
        }));
        let gone = sim.servers[s].addr;
        for c in [c0, c1] {
            let after: Vec<_> = events_since(&sim, c, closed_at)
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            assert!(after.contains(&ClientEvent::ServerLost {
                server: gone,
                reason: CloseReason::Remote(CloseCode::GOING_AWAY)
            }));
            assert!(after.iter().any(|e| matches!(e,
                ClientEvent::Established { failover_from: Some(from), .. } if *from == gone)));
            assert_ne!(sim.clients[c].conn.server(), Some(gone));
            assert!(sim.echo(c, b"elsewhere", Duration::from_secs(1)));
        }
        assert_eq!(sim.servers[s].endpoint.session_count(), 0);
        let closed = sim.servers[s]
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    ServerEvent::Closed {
                        reason: CloseReason::Local(CloseCode::GOING_AWAY),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(closed, 2);
    }
}

#[test]
fn r5_keepalives_hold_an_idle_session_for_a_minute() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let (mut sim, c, s) = fleet(seed);
        let data_before = sim.sent_of(kind::DATA).len();
        sim.run_for(Duration::from_secs(60));
        assert!(sim.established(c));
        assert_eq!(sim.clients[c].conn.server(), Some(sim.servers[s].addr));
        assert_eq!(sim.clients[c].conn.stats().sessions_established, 1);
        assert!(
            !sim.client_events(c)
                .iter()
                .any(|e| matches!(e, ClientEvent::ServerLost { .. }))
        );
        assert_eq!(sim.servers[s].endpoint.session_count(), 1);
        assert_eq!(sim.servers[s].endpoint.stats().sessions_closed, 0);
        // About one PING and one PONG a second, no storm.
        let keepalives = sim.sent_of(kind::DATA).len() - data_before;
        assert!(
            (60..=240).contains(&keepalives),
            "{keepalives} keepalive packets in 60 s"
        );
        assert!(sim.echo(c, b"still here", Duration::from_secs(1)));
    }
}

#[test]
fn r5_client_close_normal_ends_the_servers_session() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let (mut sim, c, s) = fleet(seed);
        let Some(ServerEvent::Opened { id, .. }) = sim.servers[s].events.first() else {
            panic!("no Opened")
        };
        let id = *id;
        sim.clients[c].conn.close(CloseCode::NORMAL);
        sim.run_for(Duration::from_millis(100));
        assert!(sim.servers[s].events.contains(&ServerEvent::Closed {
            id,
            reason: CloseReason::Remote(CloseCode::NORMAL)
        }));
        assert_eq!(sim.servers[s].endpoint.session_count(), 0);
        assert!(
            sim.client_events(c)
                .contains(&ClientEvent::Closed(CloseReason::Local(CloseCode::NORMAL)))
        );
        assert!(sim.clients[c].conn.is_done());
        // Closed for good: no new race, nothing more on the wire.
        let quiet_from = sim.now;
        sim.run_for(Duration::from_secs(10));
        assert_eq!(sim.clients[c].conn.stats().races, 1);
        assert!(sim.sent.iter().all(|d| d.at < quiet_from));
    }
}

#[test]
fn r5_server_close_normal_ends_the_client_without_failover() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let (mut sim, c, s) = fleet(seed);
        let Some(ServerEvent::Opened { id, .. }) = sim.servers[s].events.first() else {
            panic!("no Opened")
        };
        let id = *id;
        sim.servers[s].endpoint.close(id, CloseCode::NORMAL);
        sim.run_for(Duration::from_secs(2));
        assert!(
            sim.client_events(c)
                .contains(&ClientEvent::Closed(CloseReason::Remote(CloseCode::NORMAL)))
        );
        assert_eq!(sim.clients[c].conn.stats().races, 1);
        assert!(sim.clients[c].conn.is_done());
    }
}

#[test]
fn r5_a_server_times_out_a_silent_client() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let (mut sim, c, s) = fleet(seed);
        let client = sim.clients[c].addr;
        let cut = sim.now;
        sim.filter = Some(Box::new(move |_, d| {
            if d.src == client {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        sim.run_for(Duration::from_secs(6));
        assert_eq!(sim.servers[s].endpoint.session_count(), 0);
        assert_eq!(sim.servers[s].endpoint.stats().sessions_idle_timeout, 1);
        assert!(sim.servers[s].events.iter().any(|e| matches!(
            e,
            ServerEvent::Closed {
                reason: CloseReason::IdleTimeout,
                ..
            }
        )));
        // It gave up no earlier than the idle timeout.
        assert!(sim.now - cut >= Duration::from_secs(5));
    }
}

#[test]
fn r5_replayed_data_is_delivered_once() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let (mut sim, c, s) = fleet(seed);
        // From now on every datagram arrives twice, in both directions.
        sim.link.duplicate = 1.0;
        for l in sim.links.values_mut() {
            l.duplicate = 1.0;
        }
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'm', i]).collect();
        for m in &msgs {
            sim.clients[c].conn.send_datagram(m).unwrap();
        }
        sim.run_for(Duration::from_millis(100));
        let got: Vec<_> = sim.servers[s]
            .events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Datagram { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(got, msgs, "each datagram delivered once, in order");
        assert_eq!(sim.servers[s].endpoint.stats().data_replayed, 5);
        for m in &msgs {
            assert_eq!(sim.count_datagrams(c, m), 1);
        }
        assert_eq!(sim.clients[c].conn.stats().data_dropped, 5);
    }
}

#[test]
fn r5_client_counters_never_go_down_across_a_failover() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let (mut sim, c, s) = fleet(seed);
        let (saved_link, saved_links) = (sim.link, sim.links.clone());
        sim.link.duplicate = 1.0;
        for l in sim.links.values_mut() {
            l.duplicate = 1.0;
        }
        assert!(sim.echo(c, b"twice", Duration::from_secs(1)));
        sim.run_for(Duration::from_millis(100));
        let before = sim.clients[c].conn.stats();
        assert!(before.data_dropped >= 1);
        (sim.link, sim.links) = (saved_link, saved_links);
        sim.servers[s].alive = false;
        let mut lowest = before;
        assert!(sim.run_until(Duration::from_secs(10), |sim| {
            let now = sim.clients[c].conn.stats();
            lowest.data_dropped = lowest.data_dropped.min(now.data_dropped);
            now.sessions_established == 2
        }));
        assert_eq!(
            lowest.data_dropped, before.data_dropped,
            "data_dropped went down"
        );
        let after = sim.clients[c].conn.stats();
        // Every counter is monotonic.
        let _ = client_delta(&after, &before);
    }
}

#[test]
fn r5_server_session_timers_fire_in_deadline_order_without_a_scan() {
    // 50 sessions opened 1 ms apart; keepalives come due 1 s after each one's last authentic
    // packet and idle timeouts 5 s after it. The server files one timer entry per session and
    // fires exactly the sessions that are due, including one whose deadlines a DATA postponed.
    let mut b = Bench::new(7, |_| {});
    let mut clients = Vec::new();
    for i in 0..50 {
        b.at(Duration::from_millis(i as u64));
        let from = client_addr(i);
        let (mut conn, init) = b.init_from(from);
        let accept = b.handle(from, &init).expect("an ACCEPT");
        conn.handle(b.now, b.addr, &accept, &mut b.pool);
        assert!(conn.server().is_some(), "session {i} established");
        clients.push((from, conn));
    }
    assert_eq!(b.server.session_count(), 50);
    assert_eq!(b.server.timer_entries(), 50, "one timer entry per session");
    assert_eq!(
        b.server.poll_timeout(),
        Some(b.start + Duration::from_secs(1)),
        "the earliest keepalive: session 0's"
    );

    // Session 20 speaks at 500 ms: its keepalive moves to 1.5 s, its idle timeout to 5.5 s.
    b.at(Duration::from_millis(500));
    let (from, conn) = &mut clients[20];
    conn.send_datagram(b"hi").unwrap();
    let data = transmits(conn, b.now);
    assert_eq!(data.len(), 1);
    assert!(b.handle(*from, &data[0].1).is_none());

    let pinged = |b: &mut Bench| -> Vec<usize> {
        let mut to: Vec<usize> = b
            .server_transmits()
            .iter()
            .map(|(dst, _)| clients_index(*dst))
            .collect();
        to.sort_unstable();
        to
    };
    fn clients_index(addr: std::net::SocketAddr) -> usize {
        (0..50).find(|i| client_addr(*i) == addr).expect("a client")
    }

    b.at(Duration::from_millis(1010));
    b.server.handle_timeout(b.now);
    assert_eq!(pinged(&mut b), (0..=10).collect::<Vec<_>>());
    b.at(Duration::from_millis(1030));
    b.server.handle_timeout(b.now);
    let expected: Vec<usize> = (11..=30).filter(|i| *i != 20).collect();
    assert_eq!(pinged(&mut b), expected, "session 20 was postponed");
    assert_eq!(b.server.timer_entries(), 50);

    // Nobody answers the pings: at 5.02 s sessions 0..=20 have idled out, except 20.
    b.at(Duration::from_millis(5020));
    b.server.handle_timeout(b.now);
    b.server_transmits();
    assert_eq!(b.server.session_count(), 30);
    assert_eq!(
        b.server.timer_entries(),
        30,
        "ended sessions leave the heap"
    );
    assert_eq!(b.server.stats().sessions_idle_timeout, 20);
}

/// Sends a datagram every 50 ms until `done` or `limit`; returns when it stopped.
fn send_every_50ms(
    sim: &mut Sim,
    c: usize,
    limit: Duration,
    mut done: impl FnMut(&Sim) -> bool,
) -> bool {
    let start = sim.now;
    let mut n = 0u32;
    while sim.now - start < limit {
        let _ = sim.clients[c]
            .conn
            .send_datagram(format!("tick {n}").as_bytes());
        n += 1;
        if sim.run_until(Duration::from_millis(50), &mut done) {
            return true;
        }
    }
    false
}

#[test]
fn r9_a_server_killed_under_a_sending_session_is_left_in_under_a_second() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        // Servers at 5 ms one way (a 10 ms path), the client's at 0.2 ms.
        let (mut sim, c, s) = fleet(seed);
        for i in 0..3 {
            sim.set_latency(server_addr(i), 5);
        }
        let dead = sim.servers[s].addr;
        assert!(sim.echo(c, b"warm", Duration::from_secs(1)));
        // A session sending every 50 ms, answered; then its server dies (kill -9: no CLOSE).
        assert!(!send_every_50ms(
            &mut sim,
            c,
            Duration::from_millis(500),
            |_| false
        ));
        let killed = sim.now;
        let echoes = |sim: &Sim| {
            sim.clients[c]
                .events
                .iter()
                .filter(|(t, e)| *t > killed && matches!(e, ClientEvent::Datagram(_)))
                .count()
        };
        sim.servers[s].alive = false;
        assert!(
            send_every_50ms(&mut sim, c, Duration::from_secs(3), |sim| echoes(sim) > 0),
            "replies never resumed"
        );
        let resumed = sim.now - killed;
        assert!(
            resumed < Duration::from_secs(1),
            "replies resumed after {resumed:?}"
        );
        let lost = events_since(&sim, c, killed)
            .into_iter()
            .find(|(_, e)| matches!(e, ClientEvent::ServerLost { .. }))
            .expect("no ServerLost");
        assert_eq!(
            lost.1,
            ClientEvent::ServerLost {
                server: dead,
                reason: CloseReason::Unresponsive
            }
        );
        assert_ne!(sim.clients[c].conn.server(), Some(dead));
    }
}

#[test]
fn r9_liveness_scales_with_the_measured_rtt() {
    // The same death on a 200 ms path is detected later than on a 10 ms path, and a 10 ms path
    // does not wait for the 5 s idle timeout.
    let detect = |one_way_ms: u64| {
        let mut sim = Sim::new(7);
        let key = sim.add_servers(2, |_, _| {});
        for i in 0..2 {
            sim.set_latency(server_addr(i), one_way_ms);
        }
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(5));
        assert!(sim.echo(c, b"warm", Duration::from_secs(5)));
        let s = sim.server_index(sim.clients[c].conn.server().unwrap());
        sim.servers[s].alive = false;
        let killed = sim.now;
        assert!(send_every_50ms(
            &mut sim,
            c,
            Duration::from_secs(10),
            |sim| {
                sim.clients[c]
                    .events
                    .iter()
                    .any(|(t, e)| *t > killed && matches!(e, ClientEvent::ServerLost { .. }))
            }
        ));
        sim.now - killed
    };
    let fast = detect(5);
    let slow = detect(100);
    assert!(fast < Duration::from_millis(800), "{fast:?}");
    assert!(slow > fast * 2, "{slow:?} against {fast:?}");
    assert!(
        slow < Duration::from_secs(5),
        "{slow:?}: not the idle timeout"
    );
}

#[test]
fn r9_a_live_server_on_a_lossy_path_is_not_declared_dead() {
    // 30 % loss each way for a minute of traffic every 50 ms: answers get lost, probes go out,
    // and the session stays with its server.
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let (mut sim, c, s) = fleet(seed);
        let server = sim.servers[s].addr;
        let client = sim.clients[c].addr;
        for addr in [server, client] {
            let mut link = sim.links.get(&addr).copied().unwrap_or(sim.link);
            link.loss = 0.3;
            sim.links.insert(addr, link);
        }
        assert!(!send_every_50ms(
            &mut sim,
            c,
            Duration::from_secs(60),
            |_| false
        ));
        let stats = sim.clients[c].conn.stats();
        assert_eq!(stats.failovers, 0, "seed {seed}: {stats:?}");
        assert_eq!(sim.clients[c].conn.server(), Some(server));
        let probes = sim.clients[c].conn.session_stats().unwrap().liveness_probes;
        assert!(probes > 0, "lost answers must have triggered probes");
    }
}

#[test]
fn r9_a_session_that_does_not_send_costs_only_its_keepalives() {
    let (mut sim, c, s) = fleet(1);
    sim.run_for(Duration::from_secs(10));
    let ss = sim.clients[c].conn.session_stats().unwrap();
    assert_eq!(ss.liveness_probes, 0);
    assert!(ss.pings_sent <= 11, "{ss:?}");
    assert!(sim.established(c));
    assert_eq!(sim.server_index(sim.clients[c].conn.server().unwrap()), s);
}

/// One server whose sessions keep alive every 3 s (`--keepalive-ms 3000`) and idle out after
/// 10 s, and one client established with it, configured alike.
fn slow_keepalive(seed: u64) -> (Sim, usize) {
    let mut sim = Sim::new(seed);
    let session = |s: &mut crate::session::SessionConfig| {
        s.keepalive_interval = Duration::from_secs(3);
        s.idle_timeout = Duration::from_secs(10);
    };
    let key = sim.add_servers(1, |_, c| session(&mut c.session));
    sim.set_latency(server_addr(0), 5);
    let mut config = ClientConfig::new(vec![key]);
    session(&mut config.session);
    let pool = sim.pool();
    let c = sim.add_client(config, pool);
    sim.establish(c, Duration::from_secs(1));
    (sim, c)
}

#[test]
fn r9_a_servers_first_liveness_probe_comes_one_pto_after_its_unanswered_datagram() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let (mut sim, c) = slow_keepalive(seed);
        let id = sim.servers[0]
            .events
            .iter()
            .find_map(|e| match e {
                ServerEvent::Opened { id, .. } => Some(*id),
                _ => None,
            })
            .expect("opened");
        // The client goes silent: nothing it sends reaches the server any more.
        let client = sim.clients[c].addr;
        sim.filter = Some(Box::new(move |_, d| {
            if d.src == client {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        let probes = |sim: &Sim| {
            sim.servers[0]
                .endpoint
                .session_stats(id)
                .map_or(u64::MAX, |s| s.liveness_probes)
        };
        // The server sends a datagram nobody will answer. No RTT sample yet: PTO = 200 ms.
        sim.servers[0].endpoint.send(id, b"unanswered").unwrap();
        let sent = sim.now;
        sim.run_for(Duration::from_millis(199));
        assert_eq!(probes(&sim), 0, "a probe before one PTO");
        sim.run_for(Duration::from_millis(2));
        assert_eq!(
            probes(&sim),
            1,
            "no liveness probe one PTO after the datagram (waiting for the 3 s keepalive?)"
        );
        // 12 unanswered probes and one more PTO: 13 × 200 ms, not the keepalive plus 12 PTO.
        assert!(sim.run_until(Duration::from_secs(5), |s| {
            s.servers[0].endpoint.stats().sessions_unresponsive == 1
        }));
        let detected = sim.now - sent;
        assert!(
            (Duration::from_millis(2_599)..=Duration::from_millis(2_601)).contains(&detected),
            "server detection took {detected:?}"
        );
    }
}

#[test]
fn r9_a_clients_first_liveness_probe_comes_one_pto_after_its_unanswered_datagram() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let (mut sim, c) = slow_keepalive(seed);
        sim.servers[0].alive = false;
        let probes = |sim: &Sim| {
            sim.clients[c]
                .conn
                .session_stats()
                .map_or(u64::MAX, |s| s.liveness_probes)
        };
        sim.clients[c].conn.send_datagram(b"unanswered").unwrap();
        let sent = sim.now;
        assert!(sim.run_until(Duration::from_secs(2), |s| probes(s) == 1));
        // The PTO from the handshake's round trip (10 ms): within 50 ms – 1 s, far from 3 s.
        let first = sim.now - sent;
        assert!(
            (Duration::from_millis(50)..=Duration::from_secs(1)).contains(&first),
            "first probe after {first:?}"
        );
        assert!(sim.run_until(Duration::from_secs(20), |s| {
            s.clients[c]
                .events
                .iter()
                .any(|(_, e)| matches!(e, ClientEvent::ServerLost { .. }))
        }));
        assert_eq!(sim.now - sent, first * 13, "detection is 13 PTO");
    }
}
