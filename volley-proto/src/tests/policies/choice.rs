//! L3 and L4: clients choose by time or by hint, over all servers, a fan-out or the n best, and
//! independent clients racing at once spread over the fleet.

use super::*;

// ---------------------------------------------------------------------------------------------
// L3: window, fan-out, n-best.
// ---------------------------------------------------------------------------------------------

/// A client racing immediate servers of 4 slots and 40 ms: server 0 near (round trip 500 µs) with
/// app load `near_load`, server 1 farther (1.2 ms) with `far_load`, and `extra` dead ones that
/// never answer. Returns the sim and the client, once established.
fn hot_and_cold(
    seed: u64,
    policy: SelectionPolicy,
    near_load: u32,
    far_load: u32,
    extra: usize,
) -> (Sim, usize) {
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(2 + extra, |_, cfg| {
        cfg.capacity = Some(CAP);
        cfg.service = ServiceModel::Fixed(SERVICE);
        cfg.answer = AnswerPolicy::Immediate;
    });
    sim.set_jitter(server_addr(0), us(300), Duration::ZERO);
    sim.set_jitter(server_addr(1), us(1000), Duration::ZERO);
    sim.set_app(0, near_load);
    sim.set_app(1, far_load);
    for i in 2..2 + extra {
        sim.servers[i].alive = false;
    }
    let pool = sim.pool();
    let mut cfg = ClientConfig::new(vec![key]);
    cfg.policy = policy;
    let c = sim.add_client(cfg, pool);
    sim.establish(c, Duration::from_secs(1));
    (sim, c)
}

#[test]
fn l3_window_picks_a_cold_server_over_a_hot_one_that_answered_first() {
    let hot = server_addr(0);
    let cold = server_addr(1);
    let is_selected = |e: &ClientEvent| matches!(e, ClientEvent::Selected { .. });
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        // Earliest: the hot server answered first and wins.
        let (sim, c) = hot_and_cold(seed, SelectionPolicy::Earliest, 7, 1, 0);
        assert_eq!(sim.clients[c].conn.server(), Some(hot));
        assert_eq!(selected(&sim, c)[0].1, us(500));

        // Window: the hot offer (expected 80 ms) is collected first, the cold one (40 ms) wins.
        // Both probed servers answered by 1.2 ms, so the decision comes then, not when the
        // 2 ms window closes.
        let (sim, c) = hot_and_cold(seed, SelectionPolicy::window(), 7, 1, 0);
        assert_eq!(sim.clients[c].conn.server(), Some(cold));
        let events = sim.client_events(c);
        let collected: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Collected { server, load, .. } => Some((*server, *load)),
                _ => None,
            })
            .collect();
        // Every collected offer is reported, the one that closes the window included.
        assert_eq!(collected, vec![(hot, hint_of(7)), (cold, hint_of(1))]);
        let (server, answer_time, load) = selected(&sim, c)[0];
        assert_eq!((server, answer_time), (cold, us(1200)));
        assert_eq!(load.in_flight, 1);
        assert_eq!(first_at(&sim, c, is_selected), Some(us(1200)));
        let st = sim.clients[c].conn.stats();
        assert_eq!((st.offers_not_chosen, st.offers_late), (1, 0));
        assert_eq!(sim.servers[0].endpoint.stats().inits_received, 0);

        // A third probed server is dead and never answers: the window runs its full 2 ms after
        // the first offer, then picks the cold server all the same.
        let (sim, c) = hot_and_cold(seed, SelectionPolicy::window(), 7, 1, 1);
        assert_eq!(sim.clients[c].conn.server(), Some(cold));
        assert_eq!(
            first_at(&sim, c, is_selected),
            Some(us(500) + crate::client::DEFAULT_WINDOW)
        );

        // Equally loaded: the same expected completion, and the nearer wins (the client pays
        // the network too).
        let (sim, c) = hot_and_cold(seed, SelectionPolicy::window(), 5, 5, 0);
        assert_eq!(sim.clients[c].conn.server(), Some(hot));
        assert_eq!(selected(&sim, c)[0].1, us(500));
        assert_eq!(first_at(&sim, c, is_selected), Some(us(1200)));
    }
}

#[test]
fn l3_fanout_probes_only_d_of_n_servers() {
    const N: usize = 8;
    const D: usize = 3;
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(N, |_, _| {});
        sim.link.jitter = us(200);
        let pool = sim.pool();
        let mut cfg = ClientConfig::new(vec![key]);
        cfg.fanout = Some(D);
        // Offers are lost for the first 300 ms, so every race retransmits its probes twice (at
        // 250 and 750 ms).
        let t0 = sim.now;
        sim.filter = Some(Box::new(move |now, d| {
            if d.data[1] == kind::OFFER && now < t0 + ms(300) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        let clients: Vec<usize> = (0..20)
            .map(|_| sim.add_client(cfg.clone(), pool.clone()))
            .collect();
        for &c in &clients {
            sim.establish(c, Duration::from_secs(2));
        }
        let mut subsets = BTreeSet::new();
        let mut probed_any = HashSet::new();
        let mut subsets_of = Vec::new();
        for &c in &clients {
            let addr = sim.clients[c].addr;
            let probes: Vec<_> = sim
                .sent_of(kind::PROBE)
                .into_iter()
                .filter(|s| s.src == addr)
                .collect();
            let first: BTreeSet<SocketAddr> = probes
                .iter()
                .filter(|s| s.at == t0)
                .map(|s| s.dst)
                .collect();
            assert_eq!(first.len(), D, "client {c}: first round probed {first:?}");
            assert_eq!(
                probes.iter().filter(|s| s.at == t0).count(),
                D,
                "one probe per chosen server"
            );
            // The retransmissions go to the same d servers, and nothing else ever does.
            assert_eq!(probes.len(), 3 * D);
            assert!(probes.iter().all(|s| first.contains(&s.dst)));
            let server = sim.clients[c].conn.server().unwrap();
            assert!(first.contains(&server), "established outside its subset");
            assert!(
                sim.sent
                    .iter()
                    .filter(|s| s.src == addr)
                    .all(|s| first.contains(&s.dst)),
                "client {c} sent to a server it did not probe"
            );
            assert!(sim.client_events(c).contains(&ClientEvent::RaceStarted {
                attempt: 0,
                servers: D
            }));
            assert_eq!(sim.clients[c].conn.stats().probes_sent, 3 * D as u64);
            probed_any.extend(first.iter().copied());
            subsets_of.push(first.clone());
            subsets.insert(first);
        }
        // Random subsets: they differ between clients and cover the pool.
        assert!(
            subsets.len() >= 10,
            "only {} distinct subsets",
            subsets.len()
        );
        assert_eq!(probed_any.len(), N);
        for s in &sim.servers {
            let chosen_by = subsets_of
                .iter()
                .filter(|set| set.contains(&s.addr))
                .count();
            assert_eq!(s.endpoint.stats().probes_received, 3 * chosen_by as u64);
        }
    }
}

#[test]
fn l3_n_best_opens_k_sessions_on_k_distinct_servers() {
    const K: usize = 3;
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(4, |_, _| {});
        // One-way 1, 2, 3 and 4 ms in a random order.
        let mut lat = [1u64, 2, 3, 4];
        shuffle(&mut rng, &mut lat);
        for (i, l) in lat.iter().enumerate() {
            sim.set_latency(server_addr(i), *l);
        }
        let by_distance = |n: u64| server_addr(lat.iter().position(|&l| l == n).unwrap());
        let pool = sim.pool();
        let mut cfg = ClientConfig::new(vec![key]);
        cfg.policy = SelectionPolicy::n_best(K);
        let main = sim.add_client(cfg.clone(), pool.clone());
        // Decided when the third offer is in, without waiting out the window.
        assert!(sim.run_until(Duration::from_secs(1), |s| {
            s.clients[main].conn.decided_tag().is_some()
        }));
        assert_eq!(sim.elapsed(), ms(3) + us(200));
        let extra = sim.clients[main].conn.take_extra_winners();
        assert!(sim.clients[main].conn.take_extra_winners().is_empty());
        assert_eq!(extra.len(), K - 1);
        assert_eq!(
            extra.iter().map(|w| w.server).collect::<Vec<_>>(),
            vec![by_distance(2), by_distance(3)],
            "runners-up best first"
        );
        let siblings: Vec<usize> = extra
            .into_iter()
            .map(|w| sim.add_sibling(main, cfg.clone(), pool.clone(), w))
            .collect();
        let group: Vec<usize> = std::iter::once(main).chain(siblings).collect();
        for &c in &group {
            assert_eq!(sim.clients[c].addr, sim.clients[main].addr);
            sim.establish(c, Duration::from_secs(1));
        }
        let servers: Vec<SocketAddr> = group
            .iter()
            .map(|&c| sim.clients[c].conn.server().unwrap())
            .collect();
        assert_eq!(
            servers,
            vec![by_distance(1), by_distance(2), by_distance(3)]
        );
        for (n, &c) in group.iter().enumerate() {
            let msg = format!("hello from member {n}");
            assert!(
                sim.echo(c, msg.as_bytes(), Duration::from_secs(1)),
                "member {n} got no echo"
            );
            // Each echo reached its own connection only.
            for &o in &group {
                assert_eq!(sim.count_datagrams(o, msg.as_bytes()), usize::from(o == c));
            }
        }
        for s in &servers {
            let st = sim.servers[sim.server_index(*s)].endpoint.stats();
            assert_eq!((st.sessions_opened, st.inits_received), (1, 1));
        }
        let fourth = by_distance(4);
        assert_eq!(
            sim.servers[sim.server_index(fourth)]
                .endpoint
                .stats()
                .inits_received,
            0
        );
        // The fourth server's offer came after the decision: late, to the main connection.
        sim.run_for(ms(20));
        assert_eq!(sim.clients[main].conn.stats().offers_late, 1);
        for &c in &group {
            let st = sim.clients[c].conn.stats();
            assert_eq!(st.sessions_established, 1);
            assert_eq!(st.unexpected, 0, "member {c} got another's datagram");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// L4: no herding.
// ---------------------------------------------------------------------------------------------

/// Twenty clients race five paced servers (4 slots, 40 ms, app loads 0, 2, 4, 6, 8 in a random
/// order) at the same virtual instant over a jittery LAN; returns the sessions per server (in
/// app-load order) once all are up.
fn simultaneous(seed: u64, reservation: Duration, apps: [u32; 5]) -> Vec<usize> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x1a4);
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(5, |_, cfg| {
        cfg.capacity = Some(CAP);
        cfg.service = ServiceModel::Fixed(SERVICE);
        cfg.reservation = reservation;
    });
    let mut apps = apps;
    shuffle(&mut rng, &mut apps);
    for (i, app) in apps.iter().enumerate() {
        sim.set_app(i, *app);
        sim.set_jitter(server_addr(i), us(200), us(200));
    }
    sim.link = Link {
        latency: us(200),
        jitter: us(200),
        ..Link::default()
    };
    let pool = sim.pool();
    let clients: Vec<usize> = (0..20)
        .map(|_| sim.add_client(ClientConfig::new(vec![key]), pool.clone()))
        .collect();
    assert!(
        sim.run_until(Duration::from_secs(5), |s| clients
            .iter()
            .all(|&c| s.established(c))),
        "not every client got a session"
    );
    let mut per_server = vec![0; 5];
    for &c in &clients {
        let s = sim.server_index(sim.clients[c].conn.server().unwrap());
        per_server[s] += 1;
    }
    let mut by_load: Vec<(u32, usize)> = apps.iter().copied().zip(per_server).collect();
    by_load.sort();
    by_load.into_iter().map(|(_, n)| n).collect()
}

/// Twenty clients racing at once spread over the fleet: every paced offer reserves a slot, so
/// each probe of the burst sees the load the earlier ones will bring and is paced by the
/// expected completion that load gives. With uneven loads the least-loaded servers rightly take
/// the most (filling every server to the same level would put 8 of 20 on the idle one), at
/// least three servers take some, and the final loads (application + sessions) end within 7 of
/// each other. Without reservations every probe sees only the application's load: the two
/// servers with a free slot answer first (equal pace, the jitter picks between them) and take
/// nearly everything (the mechanism matters). With equal loads no server takes more than 8.
#[test]
fn l4_twenty_simultaneous_clients_spread_over_the_fleet() {
    const UNEVEN: [u32; 5] = [0, 2, 4, 6, 8];
    let reservation = crate::server::answer::DEFAULT_RESERVATION;
    let seeds = seeds(8);
    eprintln!(
        "L4 sessions per server, 20 clients at once, 5 paced servers of {CAP} slots, listed by \
         app load:"
    );
    for &seed in &seeds {
        let _g = SeedGuard(seed);
        let with = simultaneous(seed, reservation, UNEVEN);
        let without = simultaneous(seed, Duration::ZERO, UNEVEN);
        let equal = simultaneous(seed, reservation, [4; 5]);
        eprintln!(
            "  seed {seed}: app {UNEVEN:?}: reservations 5 ms {with:?}, off {without:?}; \
             app 4 each: {equal:?}"
        );
        let max = *with.iter().max().unwrap();
        let used = with.iter().filter(|&&n| n > 0).count();
        assert!(
            max <= 12,
            "seed {seed}: {max} of 20 on one server: {with:?}"
        );
        assert!(used >= 3, "seed {seed}: only {used} servers used: {with:?}");
        let loads: Vec<u32> = UNEVEN
            .iter()
            .zip(&with)
            .map(|(app, n)| app + *n as u32)
            .collect();
        let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
        assert!(spread <= 7, "seed {seed}: final loads {loads:?}");
        // Reservations off: the two servers with a free slot take nearly all.
        assert!(
            without[0] + without[1] >= 16,
            "seed {seed}: reservations off, {without:?}"
        );
        assert_eq!(without[3] + without[4], 0, "seed {seed}: {without:?}");
        assert!(without[0].max(without[1]) > max || without[0] + without[1] > with[0] + with[1]);
        let equal_max = *equal.iter().max().unwrap();
        assert!(equal_max <= 8, "seed {seed}: equal loads, {equal:?}");
        assert!(equal.iter().all(|&n| n > 0), "seed {seed}: {equal:?}");
    }
}
