//! L1 and L2: answer policies turn load into answer time, offers carry the load hint.

use super::*;

// ---------------------------------------------------------------------------------------------
// L1: the share of new sessions on loaded servers, by policy.
// ---------------------------------------------------------------------------------------------

/// Clients per run of the share experiment.
const SHARE_CLIENTS: usize = 40;
/// Pause between one client's session closing and the next client starting: shorter than the
/// 5 ms reservation, so a server sees a race every few milliseconds.
const SHARE_GAP: Duration = Duration::from_millis(2);

/// The share experiment's fleet for `seed`: six servers of 4 slots and a 40 ms service time on a
/// LAN (one-way 200 µs plus 0..100–300 µs of jitter, per server), three of them loaded by the
/// application with 8 requests (every slot busy, four queued: expected completion 90 ms) and
/// three nearly idle (0–2: 40 ms). Returns the sim, the pool key and which servers are loaded.
/// The same seed gives the same fleet and links whatever the policy.
fn share_fleet(
    seed: u64,
    answer: AnswerPolicy,
) -> (Sim, crate::crypto::PublicKey, HashSet<SocketAddr>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed_f1ee7);
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(6, |_, cfg| {
        cfg.capacity = Some(CAP);
        cfg.service = ServiceModel::Fixed(SERVICE);
        cfg.answer = answer;
    });
    let mut order: Vec<usize> = (0..6).collect();
    shuffle(&mut rng, &mut order);
    let mut loaded = HashSet::new();
    for (rank, &i) in order.iter().enumerate() {
        let app = if rank < 3 {
            loaded.insert(server_addr(i));
            2 * CAP
        } else {
            rng.next_u32() % 3
        };
        sim.set_app(i, app);
        let jitter = us(100 + rng.next_u64() % 201);
        sim.set_jitter(server_addr(i), us(200), jitter);
    }
    sim.link = Link {
        latency: us(200),
        jitter: us(200),
        ..Link::default()
    };
    (sim, key, loaded)
}

/// Runs [`SHARE_CLIENTS`] clients one after the other (each closes its session once it is up, so
/// the load stays the application's) and returns the share that landed on loaded servers.
fn share_on_loaded(seed: u64, answer: AnswerPolicy, policy: SelectionPolicy, gap: Duration) -> f64 {
    let (mut sim, key, loaded) = share_fleet(seed, answer);
    let pool = sim.pool();
    let mut cfg = ClientConfig::new(vec![key]);
    cfg.policy = policy;
    let mut on_loaded = 0;
    for _ in 0..SHARE_CLIENTS {
        let c = sim.add_client(cfg.clone(), pool.clone());
        sim.establish(c, Duration::from_secs(1));
        let server = sim.clients[c].conn.server().expect("established");
        if loaded.contains(&server) {
            on_loaded += 1;
        }
        sim.clients[c].conn.close(CloseCode::NORMAL);
        sim.run_for(gap);
    }
    // Every session closed again: the load stayed what the application set.
    sim.run_for(ms(50));
    for s in &sim.servers {
        assert_eq!(s.endpoint.session_count(), 0);
    }
    f64::from(on_loaded) / SHARE_CLIENTS as f64
}

/// Paced and gated servers turn load into answer time, so sessions leave the loaded servers;
/// under `immediate` the answer order is LAN noise and the loaded servers take about their fleet
/// fraction. `window` reads the load hint (the expected completion time) instead and avoids the
/// loaded servers even when they answer at once. Paced offers of loaded servers leave 90/32 ms
/// after their probe, the idle ones' 40/32 ms: 1.6 ms apart, more than the links' jitter.
/// Gated loaded servers have no free slot and hold the probe; the idle ones answer at once.
#[test]
fn l1_share_of_sessions_moves_to_idle_servers_under_paced_and_gated_not_under_immediate() {
    // (name, answer policy, selection, gap between clients, the bound every seed's share obeys)
    type Setup = (&'static str, AnswerPolicy, SelectionPolicy, Duration, Bound);
    #[derive(Clone, Copy)]
    enum Bound {
        AtMost(f64),
        AtLeast(f64),
    }
    use Bound::*;
    let setups: [Setup; 5] = [
        (
            "immediate+earliest",
            AnswerPolicy::Immediate,
            SelectionPolicy::Earliest,
            SHARE_GAP,
            AtLeast(0.20),
        ),
        (
            "paced+earliest",
            AnswerPolicy::paced(),
            SelectionPolicy::Earliest,
            SHARE_GAP,
            AtMost(0.15),
        ),
        (
            "gated+earliest",
            AnswerPolicy::gated(),
            SelectionPolicy::Earliest,
            SHARE_GAP,
            AtMost(0.15),
        ),
        (
            "immediate+window",
            AnswerPolicy::Immediate,
            SelectionPolicy::window(),
            SHARE_GAP,
            AtMost(0.15),
        ),
        (
            "paced+window",
            AnswerPolicy::paced(),
            SelectionPolicy::window(),
            SHARE_GAP,
            AtMost(0.15),
        ),
    ];
    let seeds = seeds(8);
    let mut table: HashMap<&str, Vec<f64>> = HashMap::new();
    for &seed in &seeds {
        let _g = SeedGuard(seed);
        for (name, answer, policy, gap, _) in setups {
            table
                .entry(name)
                .or_default()
                .push(share_on_loaded(seed, answer, policy, gap));
        }
    }
    eprintln!(
        "L1 share of {SHARE_CLIENTS} sequential sessions on the 3 loaded of 6 servers \
         (app load {}/{CAP} vs 0-2/{CAP}; fleet fraction 0.50; next client {SHARE_GAP:?} after \
         the last one's session), seeds {seeds:?}",
        2 * CAP
    );
    eprintln!(
        "{:<20} {:<40} {:>6} {:>11}",
        "policy", "per seed", "median", "min-max"
    );
    for (name, ..) in setups {
        let v = &table[name];
        let per_seed: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        eprintln!(
            "{:<20} {:<40} {:>6.2} {:>5.2}-{:.2}",
            name,
            per_seed.join(" "),
            median(v),
            min,
            max
        );
    }
    // Paired, seed by seed (same fleet, same links, only the policy differs): paced and gated
    // take at least 0.2 of the sessions off the loaded servers compared with immediate.
    for (i, seed) in seeds.iter().enumerate() {
        let immediate = table["immediate+earliest"][i];
        for name in ["paced+earliest", "gated+earliest"] {
            let moved = immediate - table[name][i];
            assert!(
                moved >= 0.2,
                "seed {seed}: {name} moved only {moved:.2} of the sessions off loaded servers"
            );
        }
    }
    // Immediate: about the fleet fraction, in the middle of the seeds.
    if seeds.len() >= 5 {
        let m = median(&table["immediate+earliest"]);
        assert!((0.35..=0.65).contains(&m), "immediate median {m:.2}");
    }
    for (name, .., bound) in setups {
        for (seed, share) in seeds.iter().zip(&table[name]) {
            match bound {
                AtMost(b) => assert!(
                    *share <= b,
                    "{name}, seed {seed}: {share:.2} of sessions on loaded servers, want <= {b}"
                ),
                AtLeast(b) => assert!(
                    *share >= b,
                    "{name}, seed {seed}: {share:.2} of sessions on loaded servers, want >= {b}"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// L1 gated, S2: the held queue is bounded, expires, and releases on a freed slot.
// ---------------------------------------------------------------------------------------------

/// A tag from the bench's RNG.
fn fresh_tag(b: &mut Bench) -> Tag {
    let mut t = [0u8; 16];
    b.rng.fill_bytes(&mut t);
    Tag(t)
}

#[test]
fn l1_gated_probes_stay_bounded_under_a_probe_flood() {
    const MAX_HELD: usize = 64;
    const FLOOD: usize = 5_000;
    let max_hold = crate::server::answer::DEFAULT_GATE_MAX_HOLD;
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut b = Bench::new(seed, |c| {
            c.capacity = Some(4);
            c.answer = AnswerPolicy::gated();
            c.max_held = MAX_HELD;
            c.service = ServiceModel::Fixed(SERVICE);
        });
        // Busy: every slot taken by the application.
        b.set_app(4);
        // Thousands of probes from as many addresses, 10 µs apart (the flood lasts 50 ms, well
        // within max_hold), of varying sizes.
        for i in 0..FLOOD {
            let from = SocketAddr::from((
                [
                    198,
                    18 + (i / 62_500) as u8,
                    (i / 250 % 250) as u8,
                    (i % 250 + 1) as u8,
                ],
                40_000,
            ));
            let tag = fresh_tag(&mut b);
            let size = PROBE_MIN_LEN + (i % 5) * 200;
            assert!(
                b.handle(from, &probe(tag, size)).is_none(),
                "answered while full"
            );
            assert!(b.server_transmits().is_empty());
            assert!(
                b.server.retained_state() <= MAX_HELD,
                "held beyond the bound"
            );
            b.now += us(10);
        }
        let st = *b.server.stats();
        assert_eq!(st.probes_received, FLOOD as u64);
        assert_eq!(st.probes_held, MAX_HELD as u64);
        assert_eq!(st.probes_dropped_queue_full, (FLOOD - MAX_HELD) as u64);
        assert_eq!(st.offers_sent, 0);
        assert_eq!(
            st.probes_withheld_full, 0,
            "gated holds rather than withholds"
        );
        assert_eq!(b.server.retained_state(), MAX_HELD);
        assert_eq!(b.server.load(b.now).held, MAX_HELD as u32);
        // The first held probe's hold ends max_hold after it came.
        assert_eq!(b.server.poll_timeout(), Some(b.start + max_hold));

        // Just before max_hold nothing is answered; once the last held probe's hold ran out,
        // every held probe got a late, busy offer (L6) and nothing is left.
        b.at(max_hold - us(1));
        b.server.handle_timeout(b.now);
        assert!(b.server_transmits().is_empty());
        assert_eq!(b.server.retained_state(), MAX_HELD);
        b.at(max_hold + us(10) * MAX_HELD as u32);
        b.server.handle_timeout(b.now);
        let late = b.server_transmits();
        assert_eq!(late.len(), MAX_HELD);
        for (_, data) in &late {
            assert!(data.len() <= PROBE_MIN_LEN + 4 * 200);
            assert_eq!(offer_of(data).1.capacity, 4);
        }
        let st = *b.server.stats();
        assert_eq!(st.probes_dropped_hold_expired, 0);
        assert_eq!(st.offers_sent, MAX_HELD as u64);
        assert_eq!(st.offers_busy, MAX_HELD as u64);
        assert_eq!(b.server.retained_state(), 0, "state left after max_hold");
        assert_eq!(server_drops(&st), (FLOOD - MAX_HELD) as u64);
        // Let the late offers' reservations lapse.
        b.now += ms(10);

        // Hold three probes again, then free one slot: the oldest gets its offer at once (its
        // tag, no larger than its probe), the others wait for the next free slot.
        let mut waiting = Vec::new();
        for (i, size) in [(0u8, 300usize), (1, PROBE_MIN_LEN), (2, 900)] {
            let from = SocketAddr::from(([203, 0, 113, i + 1], 40_000));
            let tag = fresh_tag(&mut b);
            assert!(b.handle(from, &probe(tag, size)).is_none());
            waiting.push((from, tag, size));
            b.now += us(100);
        }
        assert_eq!(b.server.retained_state(), 3);
        b.now += ms(10);
        b.set_app(3);
        let out = b.server_transmits();
        assert_eq!(out.len(), 1, "one free slot, one offer");
        let (to, data) = &out[0];
        assert_eq!(*to, waiting[0].0);
        assert!(data.len() <= waiting[0].2, "offer larger than its probe");
        let (tag, load) = offer_of(data);
        assert_eq!(tag, waiting[0].1);
        assert_eq!(load, hint_of(3));
        assert_eq!(b.server.retained_state(), 2);
        // The offer reserves the freed slot; when the reservation lapses (no INIT came), the
        // next held probe gets it — poll_timeout wakes the server for that.
        let lapse = b.now + crate::server::answer::DEFAULT_RESERVATION;
        assert_eq!(b.server.poll_timeout(), Some(lapse));
        b.now = lapse;
        b.server.handle_timeout(b.now);
        let out = b.server_transmits();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, waiting[1].0);
        assert!(out[0].1.len() <= waiting[1].2);
        assert_eq!(offer_of(&out[0].1).0, waiting[1].1);
        // All slots free: the last one goes at once too.
        b.set_app(0);
        let out = b.server_transmits();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, waiting[2].0);
        assert!(out[0].1.len() <= waiting[2].2);
        assert_eq!(offer_of(&out[0].1).0, waiting[2].1);
        assert_eq!(b.server.retained_state(), 0);
        assert_eq!(b.server.stats().offers_sent, MAX_HELD as u64 + 3);
    }
}

#[test]
fn l1_a_gated_probe_held_at_a_full_server_is_answered_when_a_session_closes() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        // One slot, and a session is the unit of work.
        let key = sim.add_servers(1, |_, cfg| {
            cfg.capacity = Some(1);
            cfg.count_sessions = true;
            cfg.service = ServiceModel::Fixed(SERVICE);
            cfg.answer = AnswerPolicy::gated();
        });
        sim.link.jitter = us(300);
        let pool = sim.pool();
        let c0 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c0, Duration::from_secs(1));
        sim.run_for(ms(10));
        let c1 = sim.add_client(ClientConfig::new(vec![key]), pool);
        let c1_start = sim.elapsed();
        sim.run_for(ms(50));
        let st = *sim.servers[0].endpoint.stats();
        assert_eq!(st.probes_held, 1);
        assert_eq!(st.offers_sent, 1, "only c0 got an offer");
        assert!(selected(&sim, c1).is_empty());
        assert_eq!(sim.servers[0].endpoint.load(sim.now).held, 1);
        // c0 leaves; its CLOSE reaches the server and frees the slot.
        sim.clients[c0].conn.close(CloseCode::NORMAL);
        let closed = sim.elapsed();
        sim.establish(c1, Duration::from_secs(1));
        let sel = selected(&sim, c1);
        assert_eq!(sel.len(), 1);
        let (server, answer_time, load) = sel[0];
        assert_eq!(server, server_addr(0));
        // Answered the moment the slot freed: one trip for the CLOSE, one for the offer — not at
        // the probe's retransmission (250 ms) nor at max_hold (200 ms).
        let since_close = c1_start + answer_time - closed;
        assert!(
            since_close <= us(2 * (200 + 300)),
            "offer came {since_close:?} after the close"
        );
        assert_eq!(
            load,
            LoadHint {
                in_flight: 0,
                capacity: 1,
                expected_us: SERVICE.as_micros() as u32,
            }
        );
        assert_eq!(sim.clients[c1].conn.stats().probes_sent, 1);
        assert_eq!(
            sim.servers[0].endpoint.stats().probes_dropped_hold_expired,
            0
        );
        assert_eq!(
            sim.servers[0].endpoint.retained_state(),
            4 - 1,
            "c1's session only"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// L1 paced, L2 hint.
// ---------------------------------------------------------------------------------------------

#[test]
fn l1_paced_delay_grows_with_load() {
    // One-way 1 ms each way, no jitter: the answer time is 2 ms plus the pace delay exactly.
    let rtt = ms(2);
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut last = None;
        for app in [0u32, 1, 3, 4, 5, 8, 12, 40] {
            let mut sim = Sim::new(seed);
            sim.link = Link::ms(1);
            let key = sim.add_servers(1, |_, cfg| {
                cfg.capacity = Some(CAP);
                cfg.service = ServiceModel::Fixed(SERVICE);
            });
            assert_eq!(AnswerPolicy::default(), AnswerPolicy::paced());
            sim.set_app(0, app);
            let pool = sim.pool();
            let c = sim.add_client(ClientConfig::new(vec![key]), pool);
            sim.establish(c, Duration::from_secs(1));
            let (_, answer_time, load) = selected(&sim, c)[0];
            let delay = pace(app);
            assert_eq!(answer_time, rtt + delay, "app load {app}");
            assert_eq!(load, hint_of(app));
            // The server sent it that long after the probe arrived (1 ms in).
            let offer = sim.sent_of(kind::OFFER)[0].at - sim.start;
            assert_eq!(offer, ms(1) + delay);
            assert_eq!(sim.servers[0].endpoint.stats().probes_held, 1);
            // Flat while a slot is free, then later with every request queued, capped.
            if let Some(prev) = last {
                if app < CAP {
                    assert_eq!(answer_time, prev, "app load {app}: a slot is free");
                } else if app < 40 {
                    assert!(answer_time > prev, "app load {app}: not later");
                } else {
                    assert_eq!(answer_time, rtt + DEFAULT_PACE_MAX_DELAY, "capped");
                }
            }
            last = Some(answer_time);
        }
    }
}

#[test]
fn l2_offers_carry_the_load_hint() {
    let from = |i: u8| SocketAddr::from(([203, 0, 113, i], 40_000));
    let fixed = |c: &mut crate::server::ServerConfig| {
        c.capacity = Some(CAP);
        c.service = ServiceModel::Fixed(SERVICE);
    };
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        // Immediate, 4 slots, app load 5: the hint is the load and the expected completion; a
        // second probe at the same instant sees the first offer's reservation.
        let mut b = Bench::new(seed, |c| {
            fixed(c);
            c.answer = AnswerPolicy::Immediate;
        });
        b.set_app(5);
        let t1 = fresh_tag(&mut b);
        let o1 = b.handle(from(1), &probe(t1, PROBE_MIN_LEN)).expect("offer");
        assert_eq!(offer_of(&o1), (t1, hint_of(5)));
        let t2 = fresh_tag(&mut b);
        let o2 = b.handle(from(2), &probe(t2, PROBE_MIN_LEN)).expect("offer");
        assert_eq!(offer_of(&o2), (t2, hint_of(6)));
        // Once the reservations lapse, the hint is back to the requests in flight.
        b.now += crate::server::answer::DEFAULT_RESERVATION;
        let t3 = fresh_tag(&mut b);
        let o3 = b.handle(from(3), &probe(t3, PROBE_MIN_LEN)).expect("offer");
        assert_eq!(offer_of(&o3).1, hint_of(5));

        // No capacity: capacity 0 in the hint, in_flight still reported, and the expected
        // completion is the service time (the 10 ms prior of a server that measured nothing).
        let mut b = Bench::new(seed, |_| {});
        b.set_app(3);
        let t = fresh_tag(&mut b);
        let o = b.handle(from(1), &probe(t, PROBE_MIN_LEN)).expect("offer");
        assert_eq!(
            offer_of(&o).1,
            LoadHint {
                in_flight: 3,
                capacity: 0,
                expected_us: 10_000
            }
        );

        // Paced: the offer leaves when due, and its hint excludes its own reservation (taken
        // when the probe came) but counts the other outstanding offers.
        let mut b = Bench::new(seed, fixed);
        b.set_app(5);
        let t1 = fresh_tag(&mut b);
        assert!(b.handle(from(1), &probe(t1, PROBE_MIN_LEN)).is_none());
        let due = b.start + pace(5);
        assert_eq!(b.server.poll_timeout(), Some(due));
        b.now = due;
        let out = b.server_transmits();
        assert_eq!(out.len(), 1);
        assert_eq!(offer_of(&out[0].1), (t1, hint_of(5)));
        // A second probe while the first offer is outstanding is paced one step later and told
        // of it; a third, one more.
        let t2 = fresh_tag(&mut b);
        assert!(b.handle(from(2), &probe(t2, PROBE_MIN_LEN)).is_none());
        let t3 = fresh_tag(&mut b);
        assert!(b.handle(from(3), &probe(t3, PROBE_MIN_LEN)).is_none());
        let due2 = b.now + pace(6);
        let due3 = b.now + pace(7);
        assert!(due3 > due2);
        assert_eq!(b.server.poll_timeout(), Some(due2));
        b.now = due2;
        let out = b.server_transmits();
        assert_eq!(out.len(), 1);
        // App 5, the first offer's and the third's reservations: 7.
        assert_eq!(offer_of(&out[0].1), (t2, hint_of(7)));
        b.now = due3;
        let out = b.server_transmits();
        assert_eq!(offer_of(&out[0].1), (t3, hint_of(7)));

        // End to end, where sessions are the unit of work (`count_sessions`): sessions and
        // application load both count; the client sees the hint its offer carried.
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, c| {
            fixed(c);
            c.count_sessions = true;
            c.answer = AnswerPolicy::Immediate;
        });
        sim.set_app(0, 2);
        let pool = sim.pool();
        for i in 0..4u32 {
            let c = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
            sim.establish(c, Duration::from_secs(1));
            assert_eq!(selected(&sim, c)[0].2, hint_of(2 + i));
            let sent = sim.sent_of(kind::OFFER);
            assert_eq!(offer_of(&sent.last().unwrap().data).1, hint_of(2 + i));
        }
    }
}
