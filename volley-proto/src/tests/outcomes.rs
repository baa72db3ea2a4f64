//! Outcome-aware selection (L7): failed handshakes, sessions whose server went silent and
//! failures the application reports eject a server from the client's races for a back-off, then
//! readmit it on probation. A sinkhole that answers fast and fails everything stops winning.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::util::*;
use crate::client::pool::Ejection;
use crate::client::{ClientConfig, ClientEvent, EjectionConfig, PoolState, ServerOutcome};
use crate::packet::kind;
use crate::server::AnswerPolicy;
use crate::session::CloseCode;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn l7_failures_eject_a_server_and_probation_readmits_it() {
    let t0 = Instant::now();
    let a: SocketAddr = "10.0.0.1:4433".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:4433".parse().unwrap();
    let mut p = PoolState::new(EjectionConfig::default());
    use ServerOutcome::*;
    // One failure is not enough; a success in between resets the count.
    assert_eq!(p.report(t0, a, Failure), Ejection::Kept);
    assert_eq!(p.report(t0 + ms(10), a, Success), Ejection::Kept);
    assert_eq!(p.report(t0 + ms(20), a, Failure), Ejection::Kept);
    // Two in a row eject for 1 s.
    assert_eq!(
        p.report(t0 + ms(30), a, Failure),
        Ejection::Ejected {
            until: t0 + ms(30) + secs(1)
        }
    );
    assert!(p.is_ejected(t0 + ms(500), &a));
    assert!(!p.is_ejected(t0 + ms(500), &b));
    let (kept, out) = p.eligible(t0 + ms(500), vec![a, b]);
    assert_eq!((kept, out), (vec![b], 1));
    // Readmitted after 1 s, on probation: one failure ejects it again, for twice as long.
    let back = t0 + ms(1030);
    assert!(!p.is_ejected(back, &a));
    assert!(p.on_probation(back, &a));
    assert_eq!(
        p.report(back + ms(5), a, Failure),
        Ejection::Ejected {
            until: back + ms(5) + secs(2)
        }
    );
    // Readmitted again; a success ends the probation, and one failure is once more not enough.
    let back = back + ms(5) + secs(2);
    assert!(p.on_probation(back, &a));
    assert_eq!(p.report(back, a, Success), Ejection::Kept);
    assert!(!p.on_probation(back, &a));
    assert_eq!(p.report(back + ms(1), a, Failure), Ejection::Kept);
    // Failures further apart than the failure window do not add up.
    assert_eq!(p.report(back + secs(12), a, Failure), Ejection::Kept);
    // A probation with no failure for a whole window ends by itself.
    let mut q = PoolState::new(EjectionConfig::default());
    q.report(t0, a, Failure);
    q.report(t0, a, Failure);
    assert!(q.on_probation(t0 + secs(2), &a));
    assert!(!q.on_probation(t0 + secs(13), &a));
    // Every candidate ejected: race them all rather than none.
    q.report(t0 + secs(20), a, Failure);
    q.report(t0 + secs(20), a, Failure);
    let (kept, out) = q.eligible(t0 + secs(20), vec![a]);
    assert_eq!((kept, out), (vec![a], 0));
    // Turned off.
    let mut off = PoolState::new(EjectionConfig {
        eject_after: 0,
        ..EjectionConfig::default()
    });
    for k in 0..10 {
        assert_eq!(off.report(t0 + ms(k), a, Failure), Ejection::Kept);
    }
}

/// A client instance (one shared pool state) connecting again and again to four servers, the
/// nearest of which is a sinkhole: every session there fails, as its application reports.
/// Returns the sessions that landed on the sinkhole.
fn against_a_sinkhole(seed: u64, report: bool) -> (usize, usize, Sim) {
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(4, |_, cfg| cfg.answer = AnswerPolicy::Immediate);
    sim.set_latency(server_addr(0), 0);
    for i in 1..4 {
        sim.set_latency(server_addr(i), 2);
    }
    let pool = sim.pool();
    let cfg = ClientConfig::new(vec![key]);
    let state = sim.add_instance(cfg.ejection);
    let (mut on_sinkhole, mut sessions) = (0, 0);
    // One connect every 50 ms for 5 s.
    for _ in 0..100 {
        let c = sim.add_client_shared(cfg.clone(), pool.clone(), state);
        sim.establish(c, secs(1));
        sessions += 1;
        if sim.clients[c].conn.server() == Some(server_addr(0)) {
            on_sinkhole += 1;
            if report {
                let now = sim.now;
                sim.pools[state].report(now, server_addr(0), ServerOutcome::Failure);
            }
        } else if report {
            let now = sim.now;
            let server = sim.clients[c].conn.server().unwrap();
            sim.pools[state].report(now, server, ServerOutcome::Success);
        }
        sim.clients[c].conn.close(CloseCode::NORMAL);
        sim.run_for(ms(50));
    }
    (on_sinkhole, sessions, sim)
}

#[test]
fn l7_a_sinkhole_that_answers_fast_and_fails_everything_stops_winning() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        // Nothing reported: the sinkhole, nearest, wins every race.
        let (on, n, _) = against_a_sinkhole(seed, false);
        assert_eq!(on, n);
        // Reported: two failures eject it for 1 s; readmitted on probation it fails once more
        // and is out for 2 s, then 4 s. Over 5 s that is 4 sessions, not 100.
        let (on, _, sim) = against_a_sinkhole(seed, true);
        assert_eq!(on, 4, "sessions on the sinkhole");
        // While it was ejected, races did not even probe it.
        let probes_to_sinkhole = sim
            .sent_of(kind::PROBE)
            .iter()
            .filter(|p| p.dst == server_addr(0))
            .count();
        assert_eq!(probes_to_sinkhole, 4);
        let skipped: u64 = sim
            .clients
            .iter()
            .map(|c| c.conn.stats().ejected_skipped)
            .sum();
        assert_eq!(skipped, 96);
    }
}

#[test]
fn l7_a_handshake_that_times_out_is_a_failure() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, cfg| cfg.answer = AnswerPolicy::Immediate);
        sim.set_latency(server_addr(0), 0);
        // Server 0 answers probes but its INITs are lost: every handshake with it times out.
        sim.filter = Some(Box::new(|_, d| {
            if d.dst == server_addr(0) && d.data[1] == kind::INIT {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        let pool = sim.pool();
        let cfg = ClientConfig::new(vec![key]);
        let state = sim.add_instance(cfg.ejection);
        let mut ejected = Vec::new();
        for _ in 0..3 {
            let c = sim.add_client_shared(cfg.clone(), pool.clone(), state);
            sim.establish(c, secs(10));
            assert_ne!(sim.clients[c].conn.server(), Some(server_addr(0)));
            ejected.extend(sim.client_events(c).into_iter().filter_map(|e| match e {
                ClientEvent::Ejected { server, length } => Some((server, length)),
                _ => None,
            }));
            sim.clients[c].conn.close(CloseCode::NORMAL);
        }
        // The first two connects lost 3 s each to server 0; the second ejected it, and the
        // third did not probe it at all.
        assert_eq!(ejected, vec![(server_addr(0), secs(1))]);
        let third = sim.clients.len() - 1;
        assert_eq!(sim.clients[third].conn.stats().ejected_skipped, 1);
        assert!(
            sim.sent_between(sim.clients[third].addr, server_addr(0))
                .is_empty()
        );
    }
}

#[test]
fn l7_a_session_whose_server_goes_silent_is_a_failure() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        sim.set_latency(server_addr(0), 0);
        let pool = sim.pool();
        let cfg = ClientConfig::new(vec![key]);
        let state = sim.add_instance(cfg.ejection);
        let c = sim.add_client_shared(cfg.clone(), pool.clone(), state);
        sim.establish(c, secs(1));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(0)));
        // Server 0 dies; the session idles out and fails over: one failure recorded.
        sim.servers[0].alive = false;
        sim.run_for(secs(7));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(1)));
        let now = sim.now;
        let st = &mut sim.pools[state];
        // One more failure (the next handshake with it, say) ejects it.
        assert!(matches!(
            st.report(now, server_addr(0), ServerOutcome::Failure),
            Ejection::Ejected { .. }
        ));
    }
}
