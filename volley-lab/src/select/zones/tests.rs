//! Tests of the zone matrix (issue 23, Z3): the relay's per-pair delays, the workloads' zone
//! rates and the outage schedule, load-aware locality's weights, the path-aware oracle's choice,
//! the goals. None asserts on tight timing: the relay test asserts lower bounds and order.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use super::model::{
    IN_ZONE, LocalityRule, OracleView, ZoneSpec, ZoneWorkload, Zones, oracle_choice, oracle_score,
};
use super::relay::{Relay, Route};
use super::report::{Goal, Judge, ZRun, goals, ratio, recovery_s};
use crate::select::workload::{Behaviour, FleetShape, Requests};

fn shape() -> FleetShape {
    FleetShape {
        servers: 16,
        slots: 4,
        mean_work: Duration::from_millis(40),
    }
}

fn spec(workload: ZoneWorkload, seed: u64) -> ZoneSpec {
    ZoneSpec {
        shape: shape(),
        workload,
        requests: Requests::One,
        clients: 16,
        seed,
        warmup: Duration::from_millis(500),
        measure: Duration::from_secs(6),
    }
}

#[test]
fn z3_zones_split_servers_and_clients_6_5_5_with_the_issue_delays() {
    let z = Zones::new(16, 16);
    assert_eq!([0, 1, 2].map(|k| z.servers(k).len()), [6, 5, 5]);
    assert_eq!([0, 1, 2].map(|k| z.clients(k).len()), [6, 5, 5]);
    assert_eq!(z.delay[0][0], Duration::from_micros(250));
    assert_eq!(z.delay[0][1], Duration::from_millis(10));
    assert_eq!(z.delay[2][0], Duration::from_millis(20));
    assert_eq!(z.delay[1][2], Duration::from_millis(30));
    // Server 15 is in zone 2: from zone 1 it is 30 ms away.
    assert_eq!(z.path(1, 15), Duration::from_millis(30));
    assert_eq!(z.path(2, 15), IN_ZONE);
}

#[test]
fn z3_relay_applies_each_pairs_delay_in_both_directions() {
    // Two echo targets behind routes of 3 ms and 25 ms: a round trip through the relay takes
    // at least twice the route's delay, and the short route's echo comes back first although
    // it was sent second.
    let echo = |_: ()| -> (UdpSocket, std::net::SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let a = s.local_addr().expect("addr");
        (s, a)
    };
    let (e1, a1) = echo(());
    let (e2, a2) = echo(());
    let mut threads = Vec::new();
    for e in [e1, e2] {
        e.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            // One datagram each, echoed; a reply's own arrival time is measured by the client.
            if let Ok((n, from)) = e.recv_from(&mut buf) {
                let _ = e.send_to(&buf[..n], from);
            }
        }));
    }
    let relay = Relay::start(
        &[
            Route {
                target: a1,
                delay: Duration::from_millis(25),
            },
            Route {
                target: a2,
                delay: Duration::from_millis(3),
            },
        ],
        None,
    )
    .expect("relay");
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let t0 = Instant::now();
    client.send_to(b"long", relay.addrs[0]).expect("send");
    client.send_to(b"short", relay.addrs[1]).expect("send");
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    for _ in 0..2 {
        let (n, from) = client
            .recv_from(&mut buf)
            .expect("an echo through the relay");
        got.push((buf[..n].to_vec(), from, t0.elapsed()));
    }
    for t in threads {
        t.join().expect("echo thread");
    }
    let addrs = relay.addrs.clone();
    let stats = relay.stop().expect("stop");
    assert_eq!(got[0].0, b"short", "the 3 ms route's echo first");
    assert_eq!(got[0].1, addrs[1], "replies leave from the route's address");
    assert_eq!(got[1].1, addrs[0]);
    assert!(got[0].2 >= Duration::from_millis(6), "{:?}", got[0].2);
    assert_eq!(got[1].0, b"long");
    assert!(got[1].2 >= Duration::from_millis(50), "{:?}", got[1].2);
    assert_eq!(stats.forwarded, 4, "two datagrams each way");
    assert_eq!(stats.lateness_ns.len(), 4);
}

#[test]
fn z3_workload_zone_rates_hot_zone_is_1_3_and_the_others_0_4() {
    let zones = Zones::new(16, 16);
    for seed in 1..=3 {
        let s = spec(ZoneWorkload::HotZone, seed);
        let hot = ZoneWorkload::HotZone
            .special_zone(seed)
            .expect("a hot zone");
        let f = s.zone_factors(&zones);
        for (z, &fz) in f.iter().enumerate() {
            assert_eq!(fz, if z == hot { 1.3 } else { 0.4 }, "seed {seed} zone {z}");
        }
        let t = s.draw(&zones);
        // 100 requests/s per server at speed 1 (4 slots / 40 ms).
        for (z, &fz) in f.iter().enumerate() {
            let want = fz * zones.servers(z).len() as f64 * 100.0;
            assert!((t.zone_rates[z] - want).abs() < 1e-9, "{:?}", t.zone_rates);
            // Drawn arrivals of the zone's clients match the rate within 10 %.
            let n = t
                .jobs
                .iter()
                .filter(|j| zones.of_client[j.client(16)] == z)
                .count() as f64;
            let expect = want * t.end.as_secs_f64();
            assert!(
                (n - expect).abs() < 0.1 * expect,
                "zone {z}: {n} vs {expect}"
            );
        }
    }
    let b = spec(ZoneWorkload::Balanced, 1).zone_factors(&zones);
    assert_eq!(b, [0.7; 3]);
    // Slow zone: 0.7 of the fleet's real capacity, spread by server counts.
    let s = spec(ZoneWorkload::SlowZone, 1);
    let slow = ZoneWorkload::SlowZone.special_zone(1).expect("a slow zone");
    let f = s.zone_factors(&zones);
    let real = 16.0 - zones.servers(slow).len() as f64 * 0.5;
    assert!((f[0] * 16.0 - 0.7 * real).abs() < 1e-9);
    let t = s.draw(&zones);
    for srv in zones.servers(slow) {
        assert_eq!(
            t.schedule.behaviour(srv, Duration::ZERO),
            Behaviour::Work(0.5)
        );
    }
}

#[test]
fn z3_outage_silences_the_whole_zone_a_third_of_the_way_in() {
    let zones = Zones::new(16, 16);
    let s = spec(ZoneWorkload::ZoneOutage, 2);
    let t = s.draw(&zones);
    let z = t.special.expect("an outage zone");
    let at = t.schedule.event_at.expect("a silence");
    assert_eq!(at, s.warmup + s.measure / 3);
    for srv in 0..16 {
        let before = t.schedule.behaviour(srv, at - Duration::from_millis(1));
        let after = t.schedule.behaviour(srv, at);
        assert_eq!(before, Behaviour::Work(1.0));
        if zones.of_server[srv] == z {
            assert_eq!(after, Behaviour::Silent, "server {srv}");
            assert_eq!(t.schedule.silent_at(srv), Some(at));
        } else {
            assert_eq!(after, Behaviour::Work(1.0), "server {srv}");
            assert_eq!(t.schedule.silent_at(srv), None);
        }
    }
}

#[test]
fn z3_locality_weights_stay_local_then_spill_by_headroom() {
    let rule = LocalityRule::default();
    let counts = [6, 5, 5];
    // Similar loads: all local.
    assert_eq!(
        rule.weights(1, [Some(0.6), Some(0.65), Some(0.6)], counts),
        [0.0, 1.0, 0.0]
    );
    // The local zone hot: every zone by headroom, servers × (1 − utilisation).
    let w = rule.weights(0, [Some(1.0), Some(0.4), Some(0.6)], counts);
    let (h1, h2) = (5.0 * 0.6, 5.0 * 0.4);
    assert_eq!(w[0], 0.0);
    assert!((w[1] - h1 / (h1 + h2)).abs() < 1e-12, "{w:?}");
    assert!((w[2] - h2 / (h1 + h2)).abs() < 1e-12, "{w:?}");
    // A zone with no fresh report (silent) gets nothing, the local one included.
    let w = rule.weights(2, [Some(0.5), Some(0.5), None], counts);
    assert_eq!(w[2], 0.0);
    assert!((w[0] + w[1] - 1.0).abs() < 1e-12);
    assert!((w[0] - 3.0 / 5.5).abs() < 1e-12, "{w:?}");
    // No headroom anywhere: by size among the zones that report.
    // Within the variance threshold of the fleet's mean (0.906 + 0.1): still local.
    let w = rule.weights(0, [Some(1.0), Some(1.0), Some(0.7)], counts);
    assert_eq!(w, [1.0, 0.0, 0.0]);
    let w = rule.weights(0, [Some(1.0), Some(1.0), Some(0.3)], counts);
    assert_eq!(w, [0.0, 0.0, 1.0], "the only headroom is zone 2");
    let w = rule.weights(0, [Some(1.0), Some(1.0), Some(1.0)], counts);
    assert_eq!(w, [1.0, 0.0, 0.0], "all equally full: local");
}

#[test]
fn z3_oracle_chooses_by_path_service_and_wait() {
    let work = Duration::from_millis(40);
    let view = |path_ms: f64, speed: f64, active: usize| OracleView {
        path: Duration::from_secs_f64(path_ms / 1e3),
        speed,
        active,
        slots: 4,
    };
    // 10 requests: 11 round trips. A near idle server beats a far idle one.
    let near = view(0.25, 1.0, 0);
    let far = view(10.0, 1.0, 0);
    assert_eq!(oracle_choice(&[far, near], 10.0, work), Some(1));
    assert!((oracle_score(&far, 10.0, work) - (11.0 * 0.020 + 0.4)).abs() < 1e-9);
    // A near server with 8 sessions (4 waiting plus this one beyond 4 slots) waits
    // 5 × 0.4 / 4 = 0.5 s: the far one (0.22 s of path) wins.
    let busy_near = view(0.25, 1.0, 8);
    assert_eq!(oracle_choice(&[busy_near, far], 10.0, work), Some(1));
    // A half-speed near server against a full-speed one 10 ms away, one request: 2 round
    // trips of 20 ms (0.04) + 0.04 = 0.080 against 0.001 + 0.08 = 0.081: far and fast wins
    // narrowly; at a 5 ms path it would not.
    let slow_near = view(0.25, 0.5, 0);
    assert_eq!(oracle_choice(&[far, slow_near], 1.0, work), Some(0));
    assert_eq!(
        oracle_choice(&[view(5.0, 1.0, 0), slow_near], 1.0, work),
        Some(0)
    );
    assert_eq!(
        oracle_choice(&[view(20.0, 1.0, 0), slow_near], 1.0, work),
        Some(1)
    );
    // Silent servers are never chosen; all silent: none.
    assert_eq!(
        oracle_choice(&[view(0.25, 0.0, 0), far], 1.0, work),
        Some(1)
    );
    assert_eq!(oracle_choice(&[view(0.25, 0.0, 0)], 1.0, work), None);
}

fn run(w: ZoneWorkload, r: &str, p: &str, seed: u64, p99: f64) -> ZRun {
    ZRun {
        workload: w,
        requests: r.into(),
        policy: p.into(),
        seed,
        sessions: 100,
        p50_ms: p99 / 2.0,
        p99_ms: p99,
        timeouts: 0,
        failed: 0,
        outside: 0.0,
        zone_utilisation: [0.5; 3],
        probes_per_session: 0.0,
        recovery_s: f64::NAN,
        client_cpu: 0.1,
        fleet_cpu: 0.1,
        relay_cpu: 0.05,
        relay_lateness: Default::default(),
        relay_dropped: 0,
        invalid: false,
    }
}

#[test]
fn z3_goals_compute_per_seed_ratios_and_judge_the_median() {
    let hot = ZoneWorkload::HotZone;
    let r10 = Requests::About10.name();
    let mut runs = Vec::new();
    for seed in 1..=3 {
        // volley 80 ms, locality 100, global 120, oracle 75: 0.8 of the best peer, 1.067 of
        // the oracle.
        runs.push(run(hot, r10, "v", seed, 80.0));
        runs.push(run(hot, r10, "locality", seed, 100.0));
        runs.push(run(hot, r10, "p2c-peakewma", seed, 120.0));
        runs.push(run(hot, r10, "oracle-path", seed, 75.0));
    }
    // Seed 3's volley run timed out once where the oracle did not.
    runs[8].timeouts = 1;
    let g = goals(&runs, &[1, 2, 3], "v");
    let find = |s: &str| g.iter().find(|x| x.goal.contains(s)).expect(s);
    let best = find("hot zone, ~10: p99 / best of");
    assert_eq!(best.per_seed, vec![0.8, 0.8, 0.8]);
    assert!(best.met);
    let oracle = find("hot zone, ~10: p99 / oracle");
    assert!((oracle.spread.median - 80.0 / 75.0).abs() < 1e-12 && oracle.met);
    let timeouts = find("no timed-out session");
    assert_eq!(timeouts.per_seed, vec![1.0, 1.0, 0.0]);
    assert!(!timeouts.met, "one seed timed out where the oracle did not");
    // A goal with no runs has no seed and is not met.
    assert!(!find("slow zone, ~10").met);
    // A ratio of timeouts: undefined when both are infinite.
    assert!(ratio(f64::INFINITY, f64::INFINITY).is_nan());
    assert!(ratio(f64::INFINITY, 5.0).is_infinite());
    let share = Goal::new("s", vec![0.97, 0.9, 0.99], Judge::MedianAtLeast(0.95));
    assert!(share.met && share.spread.min == 0.9);
}

#[test]
fn z3_recovery_is_from_silence_to_the_first_of_the_sessions_completing_elsewhere() {
    let silence = 1_000_000;
    // Three sessions lost to the silent zone, then all complete elsewhere; the first good one
    // completes at 1.4 s.
    let mut s = vec![
        (1_000_100, None, false),
        (1_100_000, None, false),
        (1_200_000, None, false),
        (1_300_000, Some(1_400_000), true),
    ];
    for k in 0..200u64 {
        s.push((1_400_000 + k * 1000, Some(1_500_000 + k * 1000), true));
    }
    assert!((recovery_s(silence, &s) - 0.4).abs() < 1e-9);
    // A good session early, followed by many failures, does not count.
    let mut t = vec![(1_000_100, Some(1_050_000), true)];
    t.extend((0..50u64).map(|k| (1_100_000 + k * 1000, None, false)));
    t.push((1_200_000, Some(1_900_000), true));
    assert!((recovery_s(silence, &t) - 0.9).abs() < 1e-9);
    assert!(recovery_s(silence, &[(1_000_100, None, false)]).is_infinite());
    assert!(recovery_s(silence, &[]).is_nan());
}

#[test]
fn z3_zone_run_writes_the_goals_table_the_json_and_the_plots() {
    // A tiny zone matrix (one workload, one-request sessions, two policies, short periods):
    // the machinery end to end, not its figures.
    let dir = std::env::temp_dir().join(format!("volley-lab-zones-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut args = crate::select::tests::tiny_args(&dir);
    args.zones = true;
    args.servers = 6;
    args.zone_workloads = vec![ZoneWorkload::Balanced];
    args.zone_requests = vec![1];
    args.policies = vec!["zone-p2c".into(), "volley-window-immediate-d3".into()];
    args.clients = vec![3];
    args.measure_ms = Some(300);
    args.warmup_ms = Some(100);
    super::run(&args).expect("a zone run");
    let md = std::fs::read_to_string(dir.join("results.md")).expect("results.md");
    assert!(md.contains("## Goals (issue 23, Z3)"), "{md}");
    assert!(md.contains("balanced, 1: p99 / zone-local p2c"), "{md}");
    assert!(md.contains("## The relay's error"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).expect("json"))
            .expect("valid json");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert!(r["sessions"].as_u64().unwrap_or(0) > 0, "{r}");
    }
    // zone-p2c never leaves the client's zone.
    let zp = runs
        .iter()
        .find(|r| r["policy"] == "zone-p2c")
        .expect("zone-p2c ran");
    assert_eq!(zp["outside"].as_f64(), Some(0.0), "{zp}");
    assert!(dir.join("zones-balanced-r1-cdf.svg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
