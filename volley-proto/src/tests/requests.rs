//! Requests and replies on a session (P1) and the load report in every reply (P2), end to end on
//! the simulated network (PROTOCOL.md §5.8): ids, many in flight, reordering, duplication and
//! loss, refusals, sessions that end under requests, the server's load from arrival to reply,
//! and the report following the server's expected completion.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::util::*;
use crate::client::{ClientConfig, ClientEvent};
use crate::server::{ServerEvent, ServiceModel};
use crate::session::{
    CloseCode, CloseReason, LoadReport, MAX_REQUESTS, Reply, ReplyStatus, SendError,
};

/// One server (its requests left to the test unless `echo`) and one established client.
fn one(seed: u64, echo: bool, tweak: impl Fn(usize, &mut crate::ServerConfig)) -> (Sim, usize) {
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(1, tweak);
    sim.servers[0].echo = echo;
    let pool = sim.pool();
    let c = sim.add_client(ClientConfig::new(vec![key]), pool);
    sim.establish(c, Duration::from_secs(1));
    (sim, c)
}

/// The replies client `c` received, in order.
fn replies(sim: &Sim, c: usize) -> Vec<Reply> {
    sim.clients[c]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::Reply(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// The requests server `s` received and not yet taken by the test: (session, id, body).
fn take_requests(sim: &mut Sim, s: usize) -> Vec<(u32, u32, Bytes)> {
    let events = std::mem::take(&mut sim.servers[s].events);
    let mut got = Vec::new();
    for e in events {
        match e {
            ServerEvent::Request { id, request, body } => got.push((id, request, body)),
            other => sim.servers[s].events.push(other),
        }
    }
    got
}

fn ok() -> ReplyStatus {
    ReplyStatus::OK
}

/// PROTOCOL.md §9.1: every request taken is answered once, abandoned, or still in flight.
fn assert_request_identity(sim: &Sim, s: usize) {
    let st = sim.servers[s].endpoint.stats();
    let wire = sim.servers[s].endpoint.load(sim.now).wire;
    assert_eq!(
        st.requests_received,
        st.replies_sent - st.requests_over_limit + st.requests_abandoned + u64::from(wire),
        "{st:?}"
    );
}

#[test]
fn p1_a_thousand_requests_in_flight_on_one_session_each_reply_reaches_its_caller() {
    for seed in seeds(4) {
        let _g = SeedGuard(seed);
        let (mut sim, c) = one(seed, false, |_, _| {});
        // Reordering (jitter ≫ the gap between packets), duplication and loss, both ways.
        sim.link = Link {
            latency: Duration::from_millis(2),
            jitter: Duration::from_millis(3),
            loss: 0.02,
            duplicate: 0.05,
        };
        let now = sim.now;
        let mut asked: HashMap<u32, Bytes> = HashMap::new();
        for i in 0..1_000u32 {
            let body = Bytes::from(format!("request {i} of seed {seed}"));
            let id = sim.clients[c]
                .conn
                .send_request(now, body.clone())
                .expect("room for 1,000");
            assert!(asked.insert(id, body).is_none(), "an id twice");
        }
        assert_eq!(sim.clients[c].conn.requests_in_flight(), 1_000);
        sim.run_for(Duration::from_millis(50));
        // The server answers what reached it in a shuffled order, each with its own bytes
        // turned round (so that a reply given to the wrong caller shows).
        let mut got = take_requests(&mut sim, 0);
        let arrived = got.len();
        assert!(
            arrived > 900,
            "seed {seed}: only {arrived} of 1,000 arrived"
        );
        assert_eq!(
            sim.servers[0].endpoint.stats().requests_received,
            arrived as u64
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in (1..got.len()).rev() {
            got.swap(i, (rng.next_u32() as usize) % (i + 1));
        }
        let now = sim.now;
        for (session, request, body) in got {
            let mut answer = body.to_vec();
            answer.reverse();
            sim.servers[0]
                .endpoint
                .reply(now, session, request, ok(), answer.into())
                .expect("in flight");
        }
        sim.run_for(Duration::from_millis(50));
        let back = replies(&sim, c);
        assert!(
            back.len() > arrived * 9 / 10,
            "seed {seed}: {} replies",
            back.len()
        );
        let mut seen = std::collections::HashSet::new();
        for r in &back {
            assert!(
                seen.insert(r.id),
                "seed {seed}: request {} answered twice",
                r.id
            );
            let mut want = asked[&r.id].to_vec();
            want.reverse();
            assert_eq!(
                &r.body[..],
                &want[..],
                "seed {seed}: reply {} to the wrong caller",
                r.id
            );
        }
        // The replies came in another order than the requests went.
        assert!(back.windows(2).any(|w| w[0].id > w[1].id));
        let stats = sim.clients[c].conn.stats();
        assert_eq!(stats.replies_received, back.len() as u64);
        assert_eq!(
            stats.replies_unknown, 0,
            "duplicates die in the replay window"
        );
        // What was lost either way is still in flight: the caller's to time out.
        assert_eq!(
            sim.clients[c].conn.requests_in_flight(),
            1_000 - back.len(),
            "seed {seed}"
        );
        assert_request_identity(&sim, 0);
    }
}

#[test]
fn p1_a_request_the_application_drops_or_refuses_tells_its_caller_at_once() {
    let (mut sim, c) = one(1, false, |_, _| {});
    let now = sim.now;
    let a = sim.clients[c].conn.send_request(now, "a".into()).unwrap();
    let b = sim.clients[c].conn.send_request(now, "b".into()).unwrap();
    sim.run_for(Duration::from_millis(5));
    let now = sim.now;
    for (session, request, _) in take_requests(&mut sim, 0) {
        let status = if request == a {
            ReplyStatus::DROPPED
        } else {
            ReplyStatus::REFUSED
        };
        sim.servers[0]
            .endpoint
            .reply(now, session, request, status, Bytes::new())
            .unwrap();
    }
    // One link's delay later, not a timeout later.
    sim.run_for(Duration::from_millis(1));
    let back = replies(&sim, c);
    let status = |id| back.iter().find(|r| r.id == id).map(|r| r.status);
    assert_eq!(status(a), Some(ReplyStatus::DROPPED));
    assert_eq!(status(b), Some(ReplyStatus::REFUSED));
    let s = sim.servers[0].endpoint.stats();
    assert_eq!(
        (s.replies_sent, s.replies_dropped, s.replies_refused),
        (2, 1, 1)
    );
    assert_eq!(sim.servers[0].endpoint.load(sim.now).wire, 0);
}

#[test]
fn p1_requests_beyond_the_limit_are_refused_at_once_and_never_load() {
    let (mut sim, c) = one(2, false, |_, _| {});
    let now = sim.now;
    let conn = &mut sim.clients[c].conn;
    for _ in 0..MAX_REQUESTS {
        conn.send_request(now, Bytes::new()).unwrap();
    }
    assert_eq!(
        conn.send_request(now, Bytes::new()).unwrap_err().0,
        SendError::TooManyRequests
    );
    sim.run_for(Duration::from_millis(5));
    // The client gives up on ten; the server still holds them. Ten more go.
    let now = sim.now;
    let conn = &mut sim.clients[c].conn;
    for id in 0..10 {
        assert!(conn.forget_request(id));
    }
    let late: Vec<u32> = (0..10)
        .map(|_| conn.send_request(now, Bytes::new()).unwrap())
        .collect();
    sim.run_for(Duration::from_millis(5));
    let s = sim.servers[0].endpoint.stats();
    assert_eq!((s.requests_received, s.requests_over_limit), (1_024, 10));
    assert_eq!(sim.servers[0].endpoint.load(sim.now).wire, 1_024);
    let back = replies(&sim, c);
    assert_eq!(back.len(), 10);
    for r in back {
        assert!(late.contains(&r.id));
        assert_eq!(r.status, ReplyStatus::REFUSED);
    }
    assert_request_identity(&sim, 0);
}

#[test]
fn p1_a_session_that_ends_fails_every_request_in_flight_at_once() {
    // Closed by the server (GOING_AWAY): the client hears of every request at the CLOSE, and
    // fails over.
    let (mut sim, c) = one(3, false, |_, _| {});
    let now = sim.now;
    let ids: Vec<u32> = (0..10)
        .map(|i| {
            sim.clients[c]
                .conn
                .send_request(now, Bytes::from(vec![i]))
                .unwrap()
        })
        .collect();
    sim.run_for(Duration::from_millis(5));
    assert_eq!(sim.servers[0].endpoint.load(sim.now).wire, 10);
    let session = take_requests(&mut sim, 0)[0].0;
    sim.servers[0]
        .endpoint
        .close(session, CloseCode::GOING_AWAY);
    let closed = sim.now;
    sim.run_for(Duration::from_millis(5));
    let lost = sim.clients[c]
        .events
        .iter()
        .find_map(|(t, e)| match e {
            ClientEvent::RequestsLost { ids, reason } => Some((*t, ids.clone(), *reason)),
            _ => None,
        })
        .expect("the callers were told");
    let (at, mut lost_ids, reason) = lost;
    lost_ids.sort_unstable();
    assert_eq!(lost_ids, ids);
    assert_eq!(reason, CloseReason::Remote(CloseCode::GOING_AWAY));
    assert!(
        at - closed <= Duration::from_millis(1),
        "at the CLOSE's arrival"
    );
    assert_eq!(sim.clients[c].conn.stats().requests_lost, 10);
    let s = sim.servers[0].endpoint.stats();
    assert_eq!(s.requests_abandoned, 10);
    assert_request_identity(&sim, 0);
    assert_eq!(
        sim.servers[0].endpoint.load(sim.now).wire,
        0,
        "no load left behind"
    );
    // The client closing its session: the same for its own requests.
    let (mut sim, c) = one(4, false, |_, _| {});
    let now = sim.now;
    let id = sim.clients[c].conn.send_request(now, Bytes::new()).unwrap();
    sim.clients[c].conn.close(CloseCode::NORMAL);
    sim.run_for(Duration::from_millis(5));
    assert!(sim.client_events(c).contains(&ClientEvent::RequestsLost {
        ids: vec![id],
        reason: CloseReason::Local(CloseCode::NORMAL)
    }));
    // A server that dies: the requests go with the session the liveness probes end, before
    // the failover's new session takes new ones.
    let mut sim = Sim::new(5);
    let key = sim.add_servers(2, |_, _| {});
    sim.servers[0].echo = false;
    sim.servers[1].echo = false;
    let pool = sim.pool();
    let c = sim.add_client(ClientConfig::new(vec![key]), pool);
    sim.establish(c, Duration::from_secs(1));
    let first = sim.server_index(sim.clients[c].conn.server().unwrap());
    let now = sim.now;
    let id = sim.clients[c].conn.send_request(now, Bytes::new()).unwrap();
    sim.servers[first].alive = false;
    assert!(sim.run_until(Duration::from_secs(10), |s| {
        s.clients[c].conn.stats().sessions_established == 2
    }));
    let events = sim.client_events(c);
    let lost = events
        .iter()
        .position(|e| matches!(e, ClientEvent::RequestsLost { ids, reason: CloseReason::Unresponsive } if ids == &vec![id]))
        .expect("lost with its server");
    let server_lost = events
        .iter()
        .position(|e| matches!(e, ClientEvent::ServerLost { .. }))
        .unwrap();
    assert!(lost < server_lost);
    assert_eq!(sim.clients[c].conn.requests_in_flight(), 0);
}

#[test]
fn p1_a_reply_for_an_unknown_id_is_counted_and_dropped() {
    let (mut sim, c) = one(6, false, |_, _| {});
    let now = sim.now;
    let id = sim.clients[c]
        .conn
        .send_request(now, "slow".into())
        .unwrap();
    sim.run_for(Duration::from_millis(5));
    // The caller's timeout: it forgets the request; the reply comes later all the same.
    assert!(sim.clients[c].conn.forget_request(id));
    let now = sim.now;
    for (session, request, body) in take_requests(&mut sim, 0) {
        sim.servers[0]
            .endpoint
            .reply(now, session, request, ok(), body)
            .unwrap();
    }
    sim.run_for(Duration::from_millis(5));
    assert!(replies(&sim, c).is_empty(), "no caller for it");
    let stats = sim.clients[c].conn.stats();
    assert_eq!((stats.replies_unknown, stats.replies_received), (1, 0));
    // Its report was still read (authentic and fresh).
    assert!(sim.clients[c].conn.load_report().is_some());
    // The server cannot answer twice.
    let session = sim.servers[0]
        .events
        .iter()
        .find_map(|e| match e {
            ServerEvent::Opened { id, .. } => Some(*id),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        sim.servers[0]
            .endpoint
            .reply(sim.now, session, id, ok(), Bytes::new())
            .unwrap_err()
            .0,
        SendError::UnknownRequest
    );
}

#[test]
fn p1_a_request_of_9000_bytes_and_its_reply_cross_in_pieces() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let (mut sim, c) = one(seed, true, |_, _| {});
        sim.link = Link {
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            ..Link::default()
        };
        for len in [9_000usize, crate::MAX_DATAGRAM] {
            let body: Bytes = (0..len).map(|i| (i % 253) as u8).collect::<Vec<_>>().into();
            let now = sim.now;
            let id = sim.clients[c].conn.send_request(now, body.clone()).unwrap();
            assert!(sim.run_until(Duration::from_secs(1), |s| {
                replies(s, c).iter().any(|r| r.id == id)
            }));
            let r = replies(&sim, c).into_iter().find(|r| r.id == id).unwrap();
            assert_eq!((r.status, r.body.len()), (ok(), len));
            assert_eq!(r.body, body, "seed {seed}: the echo of {len} B");
        }
        // 9,000 B: 7 pieces each way; 65,535 B: 47 each way.
        let s = sim.servers[0].endpoint.stats();
        assert_eq!(s.data_fragments, 7 + 47, "seed {seed}");
        assert_eq!(s.data_reassembled, 2);
    }
}

#[test]
fn p1_the_server_counts_a_request_as_load_from_its_arrival_to_its_reply() {
    let (mut sim, c) = one(7, false, |_, cfg| cfg.capacity = Some(4));
    let now = sim.now;
    for _ in 0..3 {
        sim.clients[c].conn.send_request(now, Bytes::new()).unwrap();
    }
    let before = sim.servers[0].endpoint.load(sim.now);
    assert_eq!((before.requests, before.wire), (0, 0));
    // One link's delay (0.2 ms) on, they are load: no application bookkeeping.
    sim.run_for(Duration::from_millis(1));
    let load = sim.servers[0].endpoint.load(sim.now);
    assert_eq!((load.requests, load.wire, load.app), (3, 3, 0));
    let arrived = sim.now;
    let got = take_requests(&mut sim, 0);
    // 40 ms in service, then answered one by one.
    sim.run_for(Duration::from_millis(40));
    for (k, (session, request, _)) in got.into_iter().enumerate() {
        let now = sim.now;
        sim.servers[0]
            .endpoint
            .reply(now, session, request, ok(), Bytes::new())
            .unwrap();
        assert_eq!(sim.servers[0].endpoint.load(now).wire, 2 - k as u32);
    }
    // S = (B + S₀) / (K + 1) with B ≈ 3 × 40 ms, S₀ = 10 ms, K = 3: about 32 ms (a little
    // less: the busy time decays over its 1 s window).
    let s = sim.servers[0].endpoint.load(sim.now).service_time;
    let held = sim.now - arrived;
    assert_eq!(held, Duration::from_millis(40));
    assert!(
        s > Duration::from_millis(29) && s < Duration::from_millis(33),
        "service time {s:?}"
    );
}

#[test]
fn p2_the_report_in_every_reply_tracks_the_servers_expected_completion() {
    let fixed = Duration::from_millis(10);
    let (mut sim, c) = one(8, true, |_, cfg| {
        cfg.capacity = Some(2);
        cfg.service = ServiceModel::Fixed(Duration::from_millis(10));
    });
    let ask = |sim: &mut Sim| -> (LoadReport, std::time::Instant) {
        let now = sim.now;
        let id = sim.clients[c].conn.send_request(now, "x".into()).unwrap();
        assert!(sim.run_until(Duration::from_secs(1), |s| {
            replies(s, c).iter().any(|r| r.id == id)
        }));
        let r = replies(sim, c).into_iter().find(|r| r.id == id).unwrap();
        let seen = sim.clients[c].conn.load_report().unwrap();
        assert_eq!(seen.0, r.report, "the latest report is the last reply's");
        seen
    };
    // Idle: one more request takes S.
    let (idle, at) = ask(&mut sim);
    assert_eq!(at, sim.now, "kept with its arrival time");
    assert_eq!(idle.expected(), Some(fixed));
    assert_eq!((idle.in_flight, idle.capacity), (0, 2));
    // The application takes on 9 requests of its own: 9 ahead on 2 slots, S × (9 + 1) / 2.
    sim.set_app(0, 9);
    let (busy, _) = ask(&mut sim);
    assert_eq!(busy.expected(), Some(fixed * 5));
    assert_eq!(busy.in_flight, 9);
    // And down again.
    sim.set_app(0, 1);
    let (calmer, _) = ask(&mut sim);
    assert_eq!(calmer.expected(), Some(fixed));
    assert_eq!(calmer.in_flight, 1);
    // The smoothed reply time is about the round trip (2 × 0.2 ms: the echo is immediate).
    let rt = sim.clients[c].conn.reply_time().unwrap();
    assert_eq!(rt, Duration::from_micros(400));
}

#[test]
fn p2_a_reply_reports_the_load_without_the_request_it_completes() {
    // A request in flight is load until its reply; the reply's report no longer counts it.
    let (mut sim, c) = one(9, false, |_, cfg| {
        cfg.capacity = Some(1);
        cfg.service = ServiceModel::Fixed(Duration::from_millis(4));
    });
    let now = sim.now;
    for _ in 0..3 {
        sim.clients[c].conn.send_request(now, Bytes::new()).unwrap();
    }
    sim.run_for(Duration::from_millis(1));
    let got = take_requests(&mut sim, 0);
    let now = sim.now;
    for (session, request, _) in got {
        sim.servers[0]
            .endpoint
            .reply(now, session, request, ok(), Bytes::new())
            .unwrap();
    }
    sim.run_for(Duration::from_millis(1));
    let mut reports: Vec<LoadReport> = replies(&sim, c).into_iter().map(|r| r.report).collect();
    reports.sort_by_key(|r| std::cmp::Reverse(r.in_flight));
    // Written one after another: 2, then 1, then 0 left in flight; on one slot the expected
    // completion is S × (n + 1).
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.in_flight, r.expected_us))
            .collect::<Vec<_>>(),
        vec![(2, 12_000), (1, 8_000), (0, 4_000)]
    );
}

#[test]
fn p1_large_requests_many_at_a_time_survive_a_reordering_path() {
    // 50 requests of 9,000 bytes (7 pieces each) 100 µs apart, on a path that reorders by up to
    // 1 ms: about ten requests' pieces arrive interleaved, and every request and reply is put
    // together (with 4 incomplete frames kept, as before P1, none was: each evicted by the next).
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let (mut sim, c) = one(seed, true, |_, _| {});
        sim.link = Link {
            latency: Duration::from_millis(2),
            jitter: Duration::from_millis(1),
            ..Link::default()
        };
        for _ in 0..50 {
            let now = sim.now;
            sim.clients[c]
                .conn
                .send_request(now, vec![7u8; 9_000].into())
                .unwrap();
            sim.run_for(Duration::from_micros(100));
        }
        sim.run_for(Duration::from_millis(50));
        let s = sim.servers[0].endpoint.stats();
        assert_eq!(replies(&sim, c).len(), 50, "seed {seed}: {s:?}");
        assert_eq!((s.data_reassembled, s.data_reassembly_dropped), (50, 0));
    }
}
