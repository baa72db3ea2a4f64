//! Pool tests: a pool driven by hand on a tiny fleet, and the pool clients' addresses.

use std::net::SocketAddr;

use super::super::addr::server_addr;
use super::super::{Group, Phase, Setup};
use super::*;

/// One client with a pool of `k` over `servers` servers at speed 1, driven by hand.
fn setup(k: usize, servers: usize) -> Setup {
    let Selector::Pool(mut p) = crate::sim::pools::pool_policy(k).selector else {
        panic!("a pool")
    };
    p.open_fanout = servers;
    Setup {
        groups: vec![Group {
            servers,
            speed: 1.0,
            initial_tail: Vec::new(),
        }],
        slots: 4,
        mean_service: 40e6,
        arrival_rate: 1e-6,
        warmup: 0,
        measured: 1,
        net_base: 50_000,
        net_jitter: 0,
        selector: Selector::Pool(p),
        clients: 1,
        seed: 3,
        herd_window: 1_000_000,
        keep_latencies: false,
        sample_every: 0,
    }
}

/// Handles events until `done` holds; the time then.
fn until(w: &mut World<'_>, mut done: impl FnMut(&World<'_>, Nanos) -> bool) -> Nanos {
    for _ in 0..100_000 {
        let (t, kind) = w.q.pop().expect("an event");
        w.dispatch(t, kind);
        if done(w, t) {
            return t;
        }
    }
    panic!("never")
}

#[test]
fn p5_a_pool_opens_k_members_and_sends_to_the_member_whose_server_reports_less_load() {
    let s = setup(2, 8);
    let mut w = World::new(&s).expect("a world");
    for server in 0..8 {
        w.sync_load(server, 0);
    }
    // The first request opens the pool and waits for it.
    let r0 = w.alloc(0, 1e6, None, 0);
    w.pool_request(0, r0, 0);
    assert_eq!(w.pools[0].live(), 0, "nothing joined before the race");
    let now = until(&mut w, |w, _| {
        w.sessions[r0 as usize].phase == Phase::Served
    });
    assert_eq!(w.pools[0].live(), 2, "the NBest race's two best joined");
    let x = w.sessions[r0 as usize].member.expect("sent on a member");
    let sx = w.pools[0].server_of(x).expect("a member's server");
    let y = w.pools[0]
        .members
        .iter()
        .map(|m| m.key)
        .find(|k| *k != x)
        .expect("the other member");
    let sy = w.pools[0].server_of(y).expect("a member's server");
    assert_ne!(sx, sy);
    // While r0 is in service at x's server, 40 long jobs of others queue there: its reply
    // carries that server's expected completion, which the client's balancer receives.
    for _ in 0..40 {
        let j = w.alloc(now, 40e6, None, 0);
        w.job_lands(now, sx, j);
    }
    let now = until(&mut w, |w, t| {
        let at = w.at(t);
        w.pools[0]
            .balancer()
            .members(at)
            .iter()
            .any(|m| m.key == x && m.in_flight == 0)
    });
    let view = w.pools[0].balancer().members(w.at(now));
    let report = view.iter().find(|m| m.key == x).and_then(|m| m.report);
    assert!(
        report.is_some_and(|(e, age)| age.is_zero() && e > Duration::from_millis(40)),
        "r0's reply reports x's queue: {report:?}"
    );
    // So the next requests go to the other member.
    for _ in 0..5 {
        let r = w.alloc(now, 1e6, None, 0);
        w.pool_request(now, r, 0);
        assert_eq!(w.sessions[r as usize].member, Some(y));
        assert_eq!(w.sessions[r as usize].server, sy);
    }
    assert_eq!(w.pools[0].live(), 2, "k members throughout");
}

#[test]
fn p5_pool_addresses_round_trip_and_do_not_collide_with_sessions() {
    for c in [0u32, 1, 9_999, (MAX_POOL_CLIENTS - 1) as u32] {
        let a = pool_addr(c, 40_007);
        assert_eq!(pool_client(a), Some((c, 7)));
    }
    // A session's address is not a pool client's, and a server's neither.
    let s = super::super::addr::client_addr(1_000_000, 3);
    assert_eq!(pool_client(s), None);
    let SocketAddr::V4(v) = server_addr(5) else {
        panic!("v4")
    };
    assert_eq!(pool_client(v), None);
}
