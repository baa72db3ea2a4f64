//! The speed-aware signal (L5): a server's expected completion time for one more request, from
//! its requests in flight, its slots and the service time it measured, carried by its pace and its
//! load hint; `earliest` over paced servers then picks the shortest expected delay, and `window`
//! ranks by it.

use std::net::SocketAddr;
use std::time::Duration;

use rand_core::SeedableRng;

use super::util::*;
use crate::client::race::{Winner, expected_delay_pick, hot_cold_pick, spare_pick};
use crate::client::{ClientConfig, ClientEvent, SelectionPolicy};
use crate::crypto::StaticKeypair;
use crate::packet::LoadHint;
use crate::server::answer::{DEFAULT_PACE_DIVISOR, DEFAULT_PACE_MAX_DELAY};
use crate::server::estimate::expected_completion;
use crate::server::{AnswerPolicy, AppLoad, ServiceModel};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The server client `c` selected, and the hint it selected on.
fn selected(sim: &Sim, c: usize) -> (SocketAddr, Duration, LoadHint) {
    sim.client_events(c)
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Selected {
                server,
                answer_time,
                load,
            } => Some((server, answer_time, load)),
            _ => None,
        })
        .expect("a selection")
}

/// Three paced servers of 4 slots: A fast (40 ms) with 5 requests (expected 60 ms), B slow
/// (80 ms) and idle (80 ms), C fast with 9 requests (100 ms). A is the farthest on the network
/// and B the nearest, so the network alone would pick B, and queue length alone would pick B
/// too: only the expected completion picks A.
fn speed_fleet(seed: u64, answer: AnswerPolicy, apps: [u32; 3]) -> (Sim, crate::PublicKey) {
    let mut sim = Sim::new(seed);
    let services = [ms(40), ms(80), ms(40)];
    let key = sim.add_servers(3, |i, cfg| {
        cfg.capacity = Some(4);
        cfg.service = ServiceModel::Fixed(services[i]);
        cfg.answer = answer;
    });
    for (i, app) in apps.iter().enumerate() {
        sim.set_app(i, *app);
    }
    sim.set_jitter(server_addr(0), Duration::from_micros(600), Duration::ZERO);
    sim.set_jitter(server_addr(1), Duration::from_micros(200), Duration::ZERO);
    sim.set_jitter(server_addr(2), Duration::from_micros(400), Duration::ZERO);
    (sim, key)
}

#[test]
fn l5_earliest_over_paced_servers_picks_the_shortest_expected_delay() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let (mut sim, key) = speed_fleet(seed, AnswerPolicy::paced(), [5, 0, 9]);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c, Duration::from_secs(1));
        let (server, answer_time, load) = selected(&sim, c);
        assert_eq!(server, server_addr(0), "the fast server with a short queue");
        assert_eq!(load.expected(), Some(ms(60)));
        // Round trip 0.8 ms (600 µs to A, 200 µs back) plus 60/32 ms of pace.
        assert_eq!(
            answer_time,
            Duration::from_micros(800) + ms(60) / DEFAULT_PACE_DIVISOR
        );
        // The other two offers arrive late, with their own expected completions.
        sim.run_for(ms(20));
        let late: Vec<(SocketAddr, Option<Duration>)> = sim
            .client_events(c)
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::LateOffer { server, load, .. } => Some((server, load.expected())),
                _ => None,
            })
            .collect();
        assert_eq!(
            late,
            vec![
                (server_addr(1), Some(ms(80))),
                (server_addr(2), Some(ms(100)))
            ]
        );

        // Five more requests queue at A (expected 110 ms): now the slow idle B (80 ms) is the
        // shorter expected delay.
        let (mut sim, key) = speed_fleet(seed, AnswerPolicy::paced(), [10, 0, 9]);
        let c = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c, Duration::from_secs(1));
        assert_eq!(selected(&sim, c).0, server_addr(1));

        // Immediate servers answer by the network alone: B, the nearest, whatever its speed.
        let (mut sim, key) = speed_fleet(seed, AnswerPolicy::Immediate, [5, 0, 9]);
        let c = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c, Duration::from_secs(1));
        assert_eq!(selected(&sim, c).0, server_addr(1));

        // ... and the window policy over them ranks by the hints: A again.
        let (mut sim, key) = speed_fleet(seed, AnswerPolicy::Immediate, [5, 0, 9]);
        let mut cfg = ClientConfig::new(vec![key]);
        cfg.policy = SelectionPolicy::window();
        let c = sim.add_client(cfg, pool);
        sim.establish(c, Duration::from_secs(1));
        assert_eq!(selected(&sim, c).0, server_addr(0));
        // Decided when the last of the three offers came (A's, 0.8 ms), not at the window's end.
        let decided = sim.clients[c]
            .events
            .iter()
            .find(|(_, e)| matches!(e, ClientEvent::Selected { .. }))
            .map(|(t, _)| *t - sim.start);
        assert_eq!(decided, Some(Duration::from_micros(800)));
    }
}

/// Feeds a server `n` completions, `every` apart, with `busy` requests in service throughout.
fn work(sim: &mut Sim, i: usize, busy: u32, every: Duration, n: u64) {
    let before = sim.servers[i].endpoint.app_completed();
    let t0 = sim.now;
    for k in 1..=n {
        let completed = before + k;
        let at = t0 + every * k as u32;
        sim.servers[i].endpoint.set_app_load(
            at,
            AppLoad {
                in_flight: busy,
                completed,
            },
        );
    }
}

#[test]
fn l5_measured_service_time_tells_a_fast_server_from_a_slow_one() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        // Measured (the default model): nothing stated.
        let key = sim.add_servers(2, |_, cfg| cfg.capacity = Some(4));
        // Both nearly idle now, but over the last 2 s server 0 completed a request every 10 ms
        // with its 4 slots busy (40 ms each), server 1 one every 20 ms (80 ms each).
        work(&mut sim, 0, 4, ms(10), 200);
        work(&mut sim, 1, 4, ms(20), 100);
        sim.now += Duration::from_secs(2);
        for i in 0..2 {
            let completed = sim.servers[i].endpoint.app_completed();
            let now = sim.now;
            sim.servers[i].endpoint.set_app_load(
                now,
                AppLoad {
                    in_flight: 1,
                    completed,
                },
            );
        }
        let now = sim.now;
        let fast = sim.servers[0].endpoint.load(now);
        let slow = sim.servers[1].endpoint.load(now);
        let near = |d: Duration, want: u64| {
            let got = d.as_secs_f64() * 1e3;
            (got - want as f64).abs() < want as f64 * 0.05
        };
        assert!(near(fast.service_time, 40), "{:?}", fast.service_time);
        assert!(near(slow.service_time, 80), "{:?}", slow.service_time);
        assert_eq!(fast.expected, fast.service_time, "a slot is free");
        // The slow server is the nearer; the fast one still wins the paced race.
        sim.set_latency(server_addr(1), 0);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        let (server, _, load) = selected(&sim, c);
        assert_eq!(server, server_addr(0));
        assert!(near(load.expected().unwrap(), 40));
    }
}

#[test]
fn l5_the_client_waits_a_small_share_of_the_expected_completion() {
    // One-way 1 ms; the pace is 1/32 of the expected completion, capped at 10 ms.
    for (service, app) in [(ms(40), 0u32), (ms(80), 2), (ms(40), 11), (ms(200), 20)] {
        let mut sim = Sim::new(1);
        sim.link = Link::ms(1);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.capacity = Some(4);
            cfg.service = ServiceModel::Fixed(service);
        });
        sim.set_app(0, app);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        let (_, answer_time, load) = selected(&sim, c);
        let expected = expected_completion(service, app, Some(4));
        assert_eq!(load.expected(), Some(expected));
        let waited = answer_time - ms(2);
        assert_eq!(
            waited,
            (expected / DEFAULT_PACE_DIVISOR).min(DEFAULT_PACE_MAX_DELAY)
        );
        assert!(
            waited.as_secs_f64() <= expected.as_secs_f64() / 31.0,
            "waited {waited:?} for an expected {expected:?}"
        );
    }
}

fn winner(server: u8, answer_us: u64, in_flight: u32, expected_us: u32) -> Winner {
    let key = StaticKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1)).public();
    Winner {
        server: SocketAddr::from(([10, 0, 0, server], 4433)),
        key,
        cookie: Vec::new(),
        answer_time: Duration::from_micros(answer_us),
        path: Duration::from_micros(answer_us),
        load: LoadHint {
            in_flight,
            capacity: 4,
            expected_us,
        },
    }
}

#[test]
fn l5_window_ranks_offers_by_expected_delay_and_falls_back_to_hot_cold_without_it() {
    // Expected completion plus the answer time: 60.3, 80.1, 41.9 ms → the third.
    let offers = [
        winner(1, 300, 5, 60_000),
        winner(2, 100, 0, 80_000),
        winner(3, 1_900, 3, 40_000),
    ];
    assert_eq!(expected_delay_pick(&offers), Some(2));
    // Equal scores: the one collected first.
    let tie = [winner(1, 1_000, 1, 40_000), winner(2, 0, 1, 41_000)];
    assert_eq!(expected_delay_pick(&tie), Some(0));
    // One offer without an estimate (another implementation may send 0): no ranking by it,
    // and the hot/cold rule decides on utilisation and answer time.
    let mixed = [
        winner(1, 300, 4, 60_000),
        winner(2, 100, 4, 0),
        winner(3, 200, 0, 40_000),
        winner(4, 900, 1, 40_000),
    ];
    assert_eq!(expected_delay_pick(&mixed), None);
    assert_eq!(hot_cold_pick(&mixed, 0.75), 2);
}

#[test]
fn p3_spare_ranks_offers_by_free_slots_over_service_time() {
    // PROTOCOL.md §6.2.5's example: A (n = 6, E = 70 ms: S = 40 ms, no free slot), B (idle at
    // 80 ms: 50/s spare), C (n = 2, E = 40 ms: 50/s spare). B and C tie; C's expected delay is
    // shorter. A, the shortest expected delay after C, has no room.
    let offers = [
        winner(1, 100, 6, 70_000),
        winner(2, 100, 0, 80_000),
        winner(3, 100, 2, 40_000),
    ];
    assert_eq!(spare_pick(&offers), Some(2));
    // The idle slow server against a queued fast one: window takes the fast, spare the idle.
    let two = [winner(1, 100, 6, 70_000), winner(2, 100, 0, 80_000)];
    assert_eq!(expected_delay_pick(&two), Some(0));
    assert_eq!(spare_pick(&two), Some(1));
    // No free slot anywhere, or an offer without an estimate: the caller falls back to window.
    let full = [winner(1, 100, 4, 50_000), winner(2, 100, 9, 100_000)];
    assert_eq!(spare_pick(&full), None);
    let unknown = [winner(1, 100, 0, 80_000), winner(2, 100, 0, 0)];
    assert_eq!(spare_pick(&unknown), None);
}

#[test]
fn l5_without_a_capacity_every_request_in_flight_is_in_service() {
    // PROTOCOL.md §4.3: min(requests, C) with no capacity is `requests` (C unbounded). Eight
    // requests for 100 ms, then all complete: without a capacity the busy time is 8 × 100 ms
    // (S ≈ 86 ms, forgetting included); with two slots only 2 × 100 ms (S ≈ 22 ms).
    let measure = |capacity: Option<u32>| {
        let mut b = Bench::new(3, |c| c.capacity = capacity);
        b.server.set_app_load(
            b.now,
            AppLoad {
                in_flight: 8,
                completed: 0,
            },
        );
        b.now += ms(100);
        b.server.set_app_load(
            b.now,
            AppLoad {
                in_flight: 0,
                completed: 8,
            },
        );
        b.server.load(b.now).service_time
    };
    let unbounded = measure(None);
    let two_slots = measure(Some(2));
    let around = |d: Duration, ms_: f64| (d.as_secs_f64() * 1e3 - ms_).abs() < 1.0;
    // B = 8 τ (1 − e^{−0.1}) = 761 ms; S = (B + 10 ms) / (8 + 1).
    assert!(around(unbounded, 85.7), "{unbounded:?}");
    // B = 2 τ (1 − e^{−0.1}) = 190 ms.
    assert!(around(two_slots, 22.3), "{two_slots:?}");
}
