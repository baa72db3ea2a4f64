//! P5 tests: the pools' races against their budget, membership, determinism, the peers'
//! per-reply rules at work, the warm-up and instability rules, and the goal lines.

use std::time::Duration;

use super::report::{GOAL_P99_RATIO, GROWING, PoolRecord, PoolReport, REFERENCE, goals};
use super::{PoolWarmup, SCALED_NAME, all, known_unstable, peers, pool_policy, run_one, scaled_k};
use crate::sim::engine::{PoolCounts, Selector};
use crate::sim::policies::{Policy, Workload};

const N: usize = 100;

fn warmup(ms: u64) -> PoolWarmup {
    PoolWarmup {
        time: Duration::from_millis(ms),
        requests: 0,
        races_per_member: 0.0,
    }
}

/// A pool of `k` members that does not grow (`max_members` = k).
fn fixed(k: usize) -> Policy {
    let mut p = pool_policy(k);
    if let Selector::Pool(ref mut s) = p.selector {
        s.balance.max_members = k;
    }
    p
}

/// A fixed pool of `k` with a race budget of `races_per_1000`.
fn with_budget(k: usize, races_per_1000: u32) -> Policy {
    let mut p = fixed(k);
    if let Selector::Pool(ref mut s) = p.selector {
        s.balance.races_per_1000 = races_per_1000;
    }
    p
}

fn run(policy: &Policy, clients: usize, measured: u64, ms: u64, seed: u64) -> PoolRecord {
    run_one(
        N,
        Workload::HalfSlow,
        0.85,
        policy,
        measured,
        warmup(ms),
        seed,
        clients,
        None,
    )
    .expect("the run ends")
}

#[test]
fn p5_a_pool_grows_to_carry_a_client_with_a_large_share_of_the_fleet() {
    // 100 servers at load 0.85 and M = 2: each client's requests keep 170 of the fleet's 400
    // slots busy. A fixed pool of 3 (12 slots) cannot carry them; a pool of 3 that grows (to
    // ⌈170 / 2⌉ = 85 members, the fleet's 100 at most) can.
    let grown = run(&pool_policy(3), 2, 10_000, 3_000, 7);
    let fixed3 = run(&fixed(3), 2, 10_000, 3_000, 7);
    eprintln!(
        "grown: {} members, p99 {:.1} ms; fixed: {} members, p99 {:.1} ms",
        grown.pool.members_end,
        grown.summary.p99_ms,
        fixed3.pool.members_end,
        fixed3.summary.p99_ms
    );
    assert_eq!(fixed3.pool.members_end, 6);
    assert!(
        grown.pool.members_end >= 2 * 60,
        "{} members",
        grown.pool.members_end
    );
    assert!(grown.summary.p99_ms * 3.0 < fixed3.summary.p99_ms);
}

#[test]
fn p5_pools_keep_k_members_and_race_within_the_balancers_budget() {
    // 4 clients of 40 members each: a client sends ~1,600 requests per second, so its budget
    // (not the least gap of 100 ms) bounds its races.
    let (clients, k) = (4, 40);
    let mut races = Vec::new();
    for budget in [4, 1] {
        let r = run(&with_budget(k, budget), clients, 10_000, 2_000, 5);
        let p = r.pool;
        assert_eq!(p.pools_end, clients as u64, "every client opened its pool");
        assert_eq!(p.members_end, (clients * k) as u64, "k live members each");
        assert_eq!(p.opening, 0, "the pools opened during the warm-up");
        assert_eq!(r.summary.completed, 10_000);
        // A token bucket of `budget` per 1,000 requests, at most 2 tokens in hand at the
        // span's start.
        let bound = f64::from(budget) * p.span_requests as f64 / 1000.0 + 2.0 * clients as f64;
        assert!(
            (p.span_races as f64) <= bound,
            "budget {budget}: {} races for {} requests (bound {bound:.1})",
            p.span_races,
            p.span_requests
        );
        // Members fall behind all the time at this load: the budget is spent.
        let spent = f64::from(budget) * p.span_requests as f64 / 1000.0;
        assert!(
            p.span_races as f64 >= 0.5 * spent,
            "budget {budget}: only {} races for {} requests",
            p.span_races,
            p.span_requests
        );
        assert!(
            (r.races_per_1000 - p.span_races as f64 * 1000.0 / p.span_requests as f64).abs() < 1e-9
        );
        eprintln!(
            "budget {budget}: {} races for {} requests, p99 {:.1} ms",
            p.span_races, p.span_requests, r.summary.p99_ms
        );
        races.push(p.span_races);
    }
    assert!(
        races[0] > 2 * races[1],
        "races follow the budget: {races:?}"
    );
}

#[test]
fn p5_the_same_seed_gives_the_same_numbers() {
    let key = |r: &PoolRecord| {
        let mut v = serde_json::to_value(&r.summary).expect("serialisable");
        if let Some(m) = v.as_object_mut() {
            m.remove("wall_s");
            m.remove("sessions_per_s");
        }
        (v, serde_json::to_value(r.pool).expect("serialisable"))
    };
    let list = all(&[3], false, N, 50);
    for name in ["volley pool k=3", "wrr (orca)", "c3"] {
        let p = list.iter().find(|p| p.name == name).expect("the policy");
        let a = run(p, 50, 3_000, 500, 11);
        let b = run(p, 50, 3_000, 500, 11);
        assert_eq!(key(&a), key(&b), "{name}: same seed, same numbers");
        let c = run(p, 50, 3_000, 500, 12);
        assert_ne!(key(&a).0, key(&c).0, "{name}: another seed, other numbers");
    }
}

#[test]
fn p5_weighted_round_robin_spreads_by_capacity_and_round_robin_does_not() {
    // Half-slow at load 0.85: per-reply weights (qps ÷ utilisation) give the slow half half
    // the requests, so both halves run equally busy; plain round-robin overloads the slow half.
    let list = peers();
    let wrr = list.iter().find(|p| p.name == "wrr (orca)").expect("wrr");
    let rr = list.iter().find(|p| p.name == "round-robin").expect("rr");
    let w = run(wrr, 10, 10_000, 1_000, 3);
    let r = run(rr, 10, 10_000, 1_000, 3);
    let (wf, ws) = (w.summary.util_by_group[0], w.summary.util_by_group[1]);
    let (rf, rs) = (r.summary.util_by_group[0], r.summary.util_by_group[1]);
    assert!((wf - ws).abs() < 0.1, "wrr: fast {wf:.2} slow {ws:.2}");
    assert!(rs - rf > 0.3, "round-robin: fast {rf:.2} slow {rs:.2}");
    // Round-robin's slow half is past its capacity: the backlog grows through the window.
    assert!(
        r.backlog_growth > GROWING && w.backlog_growth.abs() < GROWING,
        "backlog growth: round-robin {:.3}, wrr {:.3}",
        r.backlog_growth,
        w.backlog_growth
    );
}

#[test]
fn p5_c3_beats_random_choice_among_its_replicas_with_few_clients() {
    // With few clients each hears from most servers: C3's per-reply queues and service times
    // steer it, and its p99 is well below round-robin's on the half-slow fleet.
    let list = peers();
    let c3 = list.iter().find(|p| p.name == "c3").expect("c3");
    let rr = list.iter().find(|p| p.name == "round-robin").expect("rr");
    let c = run(c3, 2, 10_000, 1_000, 4);
    let r = run(rr, 2, 10_000, 1_000, 4);
    assert!(
        c.summary.p99_ms < 0.7 * r.summary.p99_ms,
        "c3 {:.1} ms, round-robin {:.1} ms",
        c.summary.p99_ms,
        r.summary.p99_ms
    );
}

#[test]
fn p5_a_pool_too_small_for_its_clients_rate_is_flagged_unstable() {
    // 10,000 servers at load 0.85 serve 637,500 requests per second; at M = 1,000 a client
    // sends 637.5, and 3 fast servers carry 300: a fixed pool of 3 cannot, a pool of 3 that
    // may grow to 256 members can.
    let big = 10_000;
    assert!(known_unstable(
        &fixed(3),
        Workload::HalfSlow,
        0.85,
        big,
        1_000
    ));
    assert!(!known_unstable(
        &pool_policy(3),
        Workload::HalfSlow,
        0.85,
        big,
        1_000
    ));
    assert!(!known_unstable(
        &fixed(3),
        Workload::HalfSlow,
        0.85,
        big,
        10_000
    ));
    // The scaled pool holds enough members at every M.
    for m in [100, 1_000, 10_000] {
        let k = scaled_k(big, m);
        assert_eq!(k, (3 * big).div_ceil(m));
        assert!(!known_unstable(&fixed(k), Workload::HalfSlow, 0.85, big, m));
    }
    let rr = peers()
        .into_iter()
        .find(|p| p.name == "round-robin")
        .expect("rr");
    assert!(known_unstable(&rr, Workload::HalfSlow, 0.85, big, 100));
    assert!(!known_unstable(&rr, Workload::Homogeneous, 0.85, big, 100));
    let names: Vec<String> = all(&[2], true, big, 100)
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(names.contains(&SCALED_NAME.to_string()));
}

#[test]
fn p5_a_pools_warm_up_lasts_its_races_per_member() {
    let w = PoolWarmup {
        time: Duration::from_secs(3),
        requests: 1_500,
        races_per_member: 2.0,
    };
    let rate = 637_500.0 / 1e9; // requests per ns in all
    // A peer at M = 1,000: 1,500 requests at 637.5 per second is 2.35 s; 3 s wins.
    let peer = &peers()[0];
    assert_eq!(w.nanos(peer, 1_000, rate), 3_000_000_000);
    // At M = 10,000 a client sends 63.75 per second: 1,500 requests take 23.5 s.
    let t = w.nanos(peer, 10_000, rate) as f64 / 1e9;
    assert!((t - 23.53).abs() < 0.01, "{t}");
    // A pool of 30 at M = 1,000: its budget (4 per 1,000 of 637.5 per second: 2.55 per
    // second) races 60 times in 23.5 s.
    let t = w.nanos(&pool_policy(30), 1_000, rate) as f64 / 1e9;
    assert!((t - 23.53).abs() < 0.01, "{t}");
    // A pool of 300 at M = 100: the least gap (10 races per second) binds: 60 s.
    let t = w.nanos(&pool_policy(300), 100, rate) as f64 / 1e9;
    assert!((t - 60.0).abs() < 0.01, "{t}");
    // A pool of 3 at M = 1,000 grows: 637.5 requests per second of 40 ms keep 25.5 slots
    // busy, half the slots of ⌈25.5 / 2⌉ = 13 members; 26 races at 2.55 per second: 10.2 s.
    let t = w.nanos(&pool_policy(3), 1_000, rate) as f64 / 1e9;
    assert!((t - 10.196).abs() < 0.01, "{t}");
    let t = w.nanos(&fixed(3), 1_000, rate) as f64 / 1e9;
    assert!((t - 3.0).abs() < 0.01, "a fixed pool of 3: {t}");
}

fn record(policy: &str, k: Option<usize>, clients: usize, seed: u64, p99: f64) -> PoolRecord {
    let mut r = run(&peers()[0], 1, 100, 0, 1);
    r.policy = policy.into();
    r.pool_k = k;
    r.clients = clients;
    r.seed = seed;
    r.summary.p99_ms = p99;
    r.races_per_1000 = if k.is_some() { 4.0 } else { f64::NAN };
    r.pool = PoolCounts::default();
    r
}

#[test]
fn p5_goal_lines_hold_a_pool_to_sed3_exact_per_seed() {
    let runs = vec![
        record("volley pool k=3", Some(3), 100, 1, 110.0),
        record(REFERENCE, None, 100, 1, 100.0),
        record("volley pool k=3", Some(3), 100, 2, 120.0),
        record(REFERENCE, None, 100, 2, 100.0),
        record("p2c-pending", None, 100, 1, 300.0),
    ];
    let g = goals(&runs);
    assert_eq!(g.len(), 2, "one ratio line and one races line: {g:?}");
    let ratio = &g[0];
    assert_eq!(ratio.values, vec![(1, 1.1), (2, 1.2)]);
    assert!(!ratio.met, "seed 2 is above {GOAL_P99_RATIO}");
    assert!(g[1].met, "4 races per 1,000 requests");
    let report = PoolReport::new(N, &[1, 2], 100, warmup(0), runs, 0.0);
    let md = report.markdown();
    assert!(md.contains("| p99 ÷ sed3-exact (ref) | half-slow | 0.85 | 100 | volley pool k=3 |"));
    assert!(md.contains("**not met**"));
    let cell = report
        .cells
        .iter()
        .find(|c| c.policy == "volley pool k=3")
        .expect("a cell");
    assert_eq!(cell.p99_vs_reference.min, 1.1);
    assert_eq!(cell.p99_vs_reference.max, 1.2);
}
