//! Z4 tests: the zone matrix, the delays of every message kind, the workloads, the outage, the
//! oracle, the locality weights, the goal lines, and a small seeded run.

use super::model::{
    BALANCED_LOAD, COLD_LOAD, FANOUT, HOT_LOAD, HOT_ZONE, REPORT_EVERY, Requests, ZonePolicy,
    ZoneSetup, ZoneWorkload,
};
use super::race::CANDIDATES;
use super::report::{GOAL_RATIO, ZoneRecord, goals};
use super::rtt::{MAX_RTT, MIN_RTT, RttMatrix};
use super::world::{Ev, World};
use super::{JITTER, MEAN_SERVICE, SLOTS};
use crate::sim::engine::addr::server_index;
use crate::sim::queue::Nanos;

const MS: Nanos = 1_000_000;

fn tiny(policy: ZonePolicy, workload: ZoneWorkload, zones: usize, per_zone: usize) -> ZoneSetup {
    ZoneSetup {
        rtt: RttMatrix::default_for(zones, 7),
        per_zone,
        slots: SLOTS,
        mean_service: MEAN_SERVICE,
        jitter: 0,
        workload,
        requests: Requests::One,
        clients: 2 * zones,
        policy,
        seed: 7,
        warmup: 1_000 * MS,
        window: 1_500 * MS,
    }
}

#[test]
fn z4_rtt_matrix_is_symmetric_in_range_consistent_and_1_ms_inside_a_zone() {
    for seed in 1..=20 {
        let m = RttMatrix::default_for(10, seed);
        let mut max = 0;
        for a in 0..10 {
            assert_eq!(m.rtt(a, a), MIN_RTT, "inside zone {a}");
            for b in 0..10 {
                let r = m.rtt(a, b);
                assert_eq!(r, m.rtt(b, a), "symmetric");
                assert!((MIN_RTT..=MAX_RTT).contains(&r), "{r} out of range");
                assert_eq!(m.one_way(a, b), r / 2);
                max = max.max(r);
                for c in 0..10 {
                    assert!(r <= m.rtt(a, c) + m.rtt(c, b), "triangle {a} {c} {b}");
                }
            }
        }
        assert_eq!(max, MAX_RTT, "the outermost zones span the range");
    }
    // Seeded: the same seed, the same matrix; another seed, another.
    assert_eq!(
        RttMatrix::default_for(10, 3).rows_ms(),
        RttMatrix::default_for(10, 3).rows_ms()
    );
    assert_ne!(
        RttMatrix::default_for(10, 3).rows_ms(),
        RttMatrix::default_for(10, 4).rows_ms()
    );
}

/// Pops events until `want` matches one, dispatching the others; its time and the event.
fn until(w: &mut World<'_>, mut want: impl FnMut(&Ev) -> bool) -> (Nanos, Ev) {
    for _ in 0..10_000 {
        let (t, ev) = w.q.pop().expect("an event");
        if want(&ev) {
            return (t, ev);
        }
        w.dispatch(t, ev);
    }
    panic!("no such event");
}

#[test]
fn z4_every_message_kind_takes_the_one_way_delay_between_its_zones() {
    // Peers: connection (a round trip), request, reply.
    let s = tiny(ZonePolicy::GlobalP2c, ZoneWorkload::Balanced, 3, 4);
    let m = &s.rtt;
    let mut w = World::new(&s).unwrap();
    let slot = w.alloc(0, 0, false); // client 0 is in zone 0
    w.sessions[slot as usize].works.push(3.0 * MS as f64);
    let server = 2 * 4; // zone 2
    w.connect(0, slot, server);
    let (t, ev) = w.q.pop().unwrap();
    assert!(matches!(ev, Ev::Connected { .. }));
    assert_eq!(t, m.rtt(0, 2), "connection: one round trip");
    w.dispatch(t, ev);
    let (t2, ev) = w.q.pop().unwrap();
    assert!(matches!(ev, Ev::Request { .. }));
    assert_eq!(t2, t + m.one_way(0, 2), "request");
    w.dispatch(t2, ev);
    let (t3, ev) = w.q.pop().unwrap();
    assert!(matches!(ev, Ev::Depart { .. }));
    assert_eq!(t3, t2 + 3 * MS, "served for its work");
    w.dispatch(t3, ev);
    let (t4, ev) = w.q.pop().unwrap();
    assert!(matches!(ev, Ev::Reply { .. }));
    assert_eq!(t4, t3 + m.one_way(2, 0), "reply");

    // Prequal: load probes and their answers.
    let s = tiny(ZonePolicy::Prequal, ZoneWorkload::Balanced, 3, 4);
    let m = &s.rtt;
    let mut w = World::new(&s).unwrap();
    let client = 2 * 2; // zone 2
    assert_eq!(w.send_load_probes(10, client), 3);
    let mut probes = Vec::new();
    while let Some((t, ev)) = w.q.pop() {
        match ev {
            Ev::LoadProbe { server, .. } => {
                let z = w.zone_of(server) as usize;
                assert_eq!(t, 10 + m.one_way(2, z), "load probe");
                probes.push((t, z));
                w.dispatch(t, ev);
            }
            Ev::LoadReply { server, .. } => {
                let z = w.zone_of(server) as usize;
                let sent = probes.iter().find(|p| p.1 == z).unwrap().0;
                assert_eq!(t, sent + m.one_way(z, 2), "load reply");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(probes.len(), 3);

    // Locality: every zone's report to every zone.
    let s = tiny(ZonePolicy::Locality, ZoneWorkload::Balanced, 3, 4);
    let m = &s.rtt;
    let mut w = World::new(&s).unwrap();
    w.on_report(REPORT_EVERY);
    let mut reports = 0;
    while let Some((t, ev)) = w.q.pop() {
        if let Ev::ReportAt { from, to, .. } = ev {
            assert_eq!(
                t,
                REPORT_EVERY + m.one_way(from.into(), to.into()),
                "report"
            );
            reports += 1;
        }
    }
    assert_eq!(reports, 9);

    // volley: PROBEs, OFFERs, then the handshake (a round trip) — or, with early data, the
    // INIT carrying the first request (one way).
    for policy in [ZonePolicy::Volley, ZonePolicy::VolleyEarly] {
        let s = tiny(policy, ZoneWorkload::Balanced, 3, 4);
        let m = s.rtt.clone();
        let mut w = World::new(&s).unwrap();
        let slot = w.alloc(0, 2, false); // client 2 is in zone 1
        w.sessions[slot as usize].works.push(MS as f64);
        w.start_race(0, slot);
        let mut probes = 0;
        let (t, ev) = until(&mut w, |ev| match ev {
            Ev::Probe { .. } => {
                probes += 1;
                false
            }
            Ev::Connected { .. } | Ev::Request { .. } => true,
            _ => false,
        });
        // A path race may decide on a near offer before its far probes even land.
        assert!(probes >= 1);
        let race = w.sessions[slot as usize].race.as_ref().unwrap();
        assert_eq!(race.probes_sent(), FANOUT as u64);
        let server = w.sessions[slot as usize].server;
        let z = w.zone_of(server) as usize;
        let decided = w.sessions[slot as usize].sent;
        match (policy, ev) {
            (ZonePolicy::Volley, Ev::Connected { .. }) => {
                assert_eq!(t, decided + m.rtt(1, z), "handshake: a round trip")
            }
            (ZonePolicy::VolleyEarly, Ev::Request { .. }) => {
                assert_eq!(
                    t,
                    decided + m.one_way(1, z),
                    "INIT with the request: one way"
                )
            }
            (p, ev) => panic!("{p:?}: unexpected {ev:?}"),
        }
    }
}

#[test]
fn z4_probes_and_offers_cross_the_zones() {
    let s = tiny(ZonePolicy::Volley, ZoneWorkload::Balanced, 3, 4);
    let m = s.rtt.clone();
    let mut w = World::new(&s).unwrap();
    let slot = w.alloc(0, 4, false); // client 4 is in zone 2
    // Work long enough that every far probe lands before the session ends.
    w.sessions[slot as usize].works.push(200.0 * MS as f64);
    w.start_race(0, slot);
    let (mut probes, mut offers) = (0, 0);
    // Until the session is served (the endpoints' own timers run on for ever).
    while w.sessions[slot as usize].phase != super::world::Phase::Free {
        let (t, ev) = w.q.pop().expect("an event");
        assert!(t < 10_000 * MS, "no end");
        match &ev {
            Ev::Probe { server, .. } => {
                assert_eq!(t, m.one_way(2, w.zone_of(*server).into()), "probe");
                probes += 1;
            }
            Ev::Offer { server, sent, .. } => {
                assert_eq!(t, sent + m.one_way(w.zone_of(*server).into(), 2), "offer");
                offers += 1;
            }
            _ => {}
        }
        w.dispatch(t, ev);
    }
    assert_eq!(probes, FANOUT);
    assert!(offers >= 1, "the winner's offer came");
}

#[test]
fn z4_race_targets_come_from_the_pool_state_half_from_the_own_zone() {
    let s = tiny(ZonePolicy::Volley, ZoneWorkload::Balanced, 4, 10);
    let mut w = World::new(&s).unwrap();
    let mut elsewhere = 0;
    for client in 0..8u32 {
        let zone = w.client_zone[client as usize];
        for _ in 0..50 {
            let slot = w.alloc(0, client, false);
            w.start_race(0, slot);
            let race = w.sessions[slot as usize].race.as_ref().unwrap();
            let t: Vec<u32> = race
                .targets()
                .iter()
                .map(|a| server_index(*a, 40).unwrap())
                .collect();
            assert_eq!(t.len(), FANOUT);
            let own = t.iter().filter(|i| w.zone_of(**i) == zone).count();
            assert!(own >= FANOUT / 2, "{t:?}");
            elsewhere += FANOUT - own;
            let mut d = t.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), FANOUT, "distinct");
        }
    }
    assert!(
        elsewhere > 300,
        "the other half samples the other zones: {elsewhere}"
    );
    // A large fleet: the candidates are a uniform sample, distinct.
    let s = tiny(ZonePolicy::Volley, ZoneWorkload::Balanced, 10, 100);
    let mut w = World::new(&s).unwrap();
    let c = w.candidates();
    assert_eq!(c.len(), CANDIDATES);
    let mut d = c.clone();
    d.sort_unstable();
    d.dedup();
    assert_eq!(d.len(), CANDIDATES);
}

#[test]
fn z4_hot_zone_offers_1_3_its_capacity_and_the_others_0_4() {
    let s = tiny(ZonePolicy::ZoneP2c, ZoneWorkload::HotZone, 3, 10);
    let capacity = 10.0 * f64::from(SLOTS) / MEAN_SERVICE;
    let rel = |a: f64, b: f64| ((a - b) / b).abs() < 1e-12;
    assert!(rel(s.session_rate(HOT_ZONE), HOT_LOAD * capacity));
    assert!(rel(s.session_rate(1), COLD_LOAD * capacity));
    assert!(rel(s.session_rate(2), COLD_LOAD * capacity));
    let b = ZoneSetup {
        workload: ZoneWorkload::Balanced,
        requests: Requests::Ten,
        ..s.clone()
    };
    assert!(rel(b.session_rate(1), BALANCED_LOAD * capacity / 10.0));
    // Measured: zone-local p2c cannot spill, so the hot zone saturates and the others run at
    // about 0.4.
    let r = ZoneRecord::new(&s, super::run(&s).unwrap(), 0.0);
    assert!(r.zone_util[HOT_ZONE] > 0.95, "{:?}", r.zone_util);
    for z in 1..3 {
        assert!(
            (r.zone_util[z] - COLD_LOAD).abs() < 0.08,
            "zone {z}: {:?}",
            r.zone_util
        );
    }
    assert_eq!(r.outside_share, 0.0, "zone-local never leaves its zone");
}

#[test]
fn z4_outage_silences_the_zone_a_third_into_the_window() {
    let s = tiny(ZonePolicy::ZoneP2c, ZoneWorkload::Outage, 3, 10);
    let at = s.outage_at().unwrap();
    assert_eq!(at, s.warmup + s.window / 3);
    assert_eq!(
        tiny(ZonePolicy::ZoneP2c, ZoneWorkload::Balanced, 3, 10).outage_at(),
        None
    );
    let w = World::new(&s).unwrap();
    assert!(!w.silent(0, at - 1));
    assert!(w.silent(0, at) && w.silent(9, at + 5 * MS));
    assert!(!w.silent(10, at + 5 * MS), "other zones answer");
    // Zone-local p2c: the silent zone's clients have nowhere to go.
    let local = ZoneRecord::new(&s, super::run(&s).unwrap(), 0.0);
    assert!(local.timeouts > 0 && local.failed > 0, "{local:?}");
    // The silent zone serves nothing after the outage: a third of the window (and what it
    // still held) at most.
    assert!(local.zone_util[HOT_ZONE] < 0.4, "{:?}", local.zone_util);
    // The oracle sends nothing there after the outage: only sessions caught in flight time out,
    // and they are served elsewhere.
    let s = tiny(ZonePolicy::Oracle, ZoneWorkload::Outage, 3, 10);
    let oracle = ZoneRecord::new(&s, super::run(&s).unwrap(), 0.0);
    assert_eq!(oracle.failed, 0, "{oracle:?}");
    assert!(oracle.timeouts < local.timeouts);
}

#[test]
fn z4_oracle_chooses_by_path_and_load() {
    let s = tiny(ZonePolicy::Oracle, ZoneWorkload::Balanced, 3, 2);
    let m = s.rtt.clone();
    let mut w = World::new(&s).unwrap();
    // Empty fleet: the client's own zone.
    for z in 0..3u16 {
        let pick = w.pick_oracle(0, z);
        assert_eq!(w.zone_of(pick), z);
    }
    // Fill zone 0 well past its slots: its clients go to the nearest other zone.
    for _ in 0..400 {
        let server = w.pick_oracle(0, 0);
        if w.zone_of(server) != 0 {
            break;
        }
        let slot = w.alloc(0, 0, false);
        w.pin(slot, server);
    }
    let nearest = if m.rtt(0, 1) <= m.rtt(0, 2) { 1 } else { 2 };
    let pick = w.pick_oracle(0, 0);
    assert_eq!(w.zone_of(pick), nearest, "spills to the nearest zone");
    // It spilled exactly when the queueing cost passed the path's.
    let own_pinned = w.servers[0].pinned.min(w.servers[1].pinned);
    assert!(w.oracle_cost(0, 0, own_pinned) >= w.oracle_cost(0, nearest, 0));
    assert!(w.oracle_cost(0, 0, own_pinned - 1) <= w.oracle_cost(0, nearest, 0));
    // Within a zone, the least loaded server.
    let a = w.pick_oracle(0, 1);
    let slot = w.alloc(0, 0, false);
    w.pin(slot, a);
    let b = w.pick_oracle(0, 1);
    assert_ne!(a, b);
    assert_eq!(w.zone_of(b), 1);
}

#[test]
fn z4_locality_weights_follow_headroom_and_spill_by_residual() {
    let s = tiny(ZonePolicy::Locality, ZoneWorkload::HotZone, 3, 10);
    let mut w = World::new(&s).unwrap();
    let now = 2 * REPORT_EVERY;
    // Balanced reports: every zone keeps its own sessions.
    w.reports = vec![vec![(0.5, now); 3]; 3];
    let wts = w.locality_weights(now, 0);
    assert!(wts.iter().all(|x| (x - 1.0 / 3.0).abs() < 1e-12), "{wts:?}");
    for _ in 0..200 {
        assert_eq!(w.pick_locality_zone(now, 0), 0);
    }
    // Zone 0 at 0.9, the others at 0.4: weights 0.1 : 0.6 : 0.6 of 1.3.
    w.reports = vec![vec![(0.9, now), (0.4, now), (0.4, now)]; 3];
    let wts = w.locality_weights(now, 0);
    assert!((wts[0] - 0.1 / 1.3).abs() < 1e-12 && (wts[1] - 0.6 / 1.3).abs() < 1e-12);
    let (mut own, mut spilled) = (0, [0; 3]);
    for _ in 0..20_000 {
        let z = w.pick_locality_zone(now, 0);
        spilled[usize::from(z)] += 1;
        own += usize::from(z == 0);
    }
    let want_own = (0.1 / 1.3) / (1.0 / 3.0);
    assert!(
        (own as f64 / 20_000.0 - want_own).abs() < 0.02,
        "own share {own}"
    );
    // The residuals of zones 1 and 2 are equal: they share the spill.
    let ratio = spilled[1] as f64 / spilled[2] as f64;
    assert!((ratio - 1.0).abs() < 0.1, "{spilled:?}");
    // Zone 1 as seen from zone 1 has headroom above its share: it stays home.
    for _ in 0..200 {
        assert_eq!(w.pick_locality_zone(now, 1), 1);
    }
    // A zone not heard from for three periods is unhealthy: no weight, no spill to it.
    w.reports = vec![vec![(0.9, now), (0.4, 0), (0.4, now)]; 3];
    let later = 4 * REPORT_EVERY;
    let wts = w.locality_weights(later, 0);
    assert_eq!(wts[1], 0.0, "{wts:?}");
    for _ in 0..500 {
        assert_ne!(w.pick_locality_zone(later, 0), 1);
    }
}

fn record(
    workload: ZoneWorkload,
    clients: usize,
    policy: ZonePolicy,
    seed: u64,
    p99: f64,
) -> ZoneRecord {
    ZoneRecord {
        workload,
        requests: Requests::Ten,
        clients,
        policy,
        seed,
        sessions: 1,
        completed: 1,
        failed: 0,
        timeouts: 0,
        p50_ms: p99 / 2.0,
        p99_ms: p99,
        request_p99_ms: p99,
        outside_share: 0.0,
        zone_util: vec![],
        probes_per_session: 0.0,
        events: 0,
        wall_s: 0.0,
    }
}

#[test]
fn z4_goal_lines_are_per_seed_ratios_met_only_when_every_seed_is() {
    let b = ZoneWorkload::Balanced;
    let runs = vec![
        record(b, 16, ZonePolicy::Volley, 1, 100.0),
        record(b, 16, ZonePolicy::Volley, 2, 100.0),
        record(b, 10_000, ZonePolicy::Volley, 1, 110.0),
        record(b, 10_000, ZonePolicy::Volley, 2, 120.0),
        record(b, 16, ZonePolicy::Oracle, 1, 100.0),
        record(b, 16, ZonePolicy::Oracle, 2, 80.0),
        record(b, 10_000, ZonePolicy::Oracle, 1, 100.0),
        record(b, 10_000, ZonePolicy::Oracle, 2, 110.0),
    ];
    let g = goals(&runs);
    assert_eq!(g.len(), 3, "{g:?}");
    let flat = &g[0];
    assert!(flat.what.contains("flat"));
    assert_eq!(flat.ratios, vec![(1, 1.1), (2, 1.2)]);
    assert!(!flat.met, "seed 2 is at 1.2 > {GOAL_RATIO}");
    let at16 = &g[1];
    assert_eq!(at16.ratios, vec![(1, 1.0), (2, 1.25)]);
    assert!(!at16.met);
    let at10k = &g[2];
    assert!(at10k.met, "{at10k:?}");
    assert_eq!(at10k.ratios, vec![(1, 1.1), (2, 120.0 / 110.0)]);
    assert_eq!(at10k.spread.min, 120.0 / 110.0);
    assert_eq!(at10k.spread.max, 1.1);
}

#[test]
fn z4_small_seeded_run_is_deterministic_and_volley_stays_in_zone_when_balanced() {
    let mut s = tiny(ZonePolicy::Volley, ZoneWorkload::Balanced, 3, 20);
    s.jitter = JITTER;
    s.clients = 30;
    s.window = 800 * MS;
    let a = ZoneRecord::new(&s, super::run(&s).unwrap(), 0.0);
    let b = ZoneRecord::new(&s, super::run(&s).unwrap(), 0.0);
    assert_eq!(
        (a.sessions, a.completed, a.events, a.timeouts),
        (b.sessions, b.completed, b.events, b.timeouts)
    );
    assert_eq!(a.p99_ms, b.p99_ms);
    assert_eq!(a.outside_share, b.outside_share);
    assert!(a.sessions > 1_000, "{a:?}");
    assert_eq!(a.completed, a.sessions);
    assert_eq!(a.timeouts, 0);
    assert!(a.outside_share < 0.2, "served outside: {}", a.outside_share);
    assert!(a.probes_per_session >= FANOUT as f64);
    // Another seed, another run.
    s.seed = 8;
    let c = ZoneRecord::new(&s, super::run(&s).unwrap(), 0.0);
    assert_ne!(a.events, c.events);
}
