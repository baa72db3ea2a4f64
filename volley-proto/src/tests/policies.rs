//! Load distribution (L1–L4, R3): answer policies turn load into answer time, offers carry a load
//! hint, clients choose by time or by hint, spread over the fleet, and follow a refusing server's
//! REDIRECT to its peers. The speed-aware signal (L5), overload (L6) and outcomes (L7) have files
//! of their own.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::util::*;
use crate::client::{ClientConfig, ClientEvent, SelectionPolicy};
use crate::packet::{LoadHint, Packet, Redirect, Tag, kind};
use crate::server::answer::{DEFAULT_PACE_DIVISOR, DEFAULT_PACE_MAX_DELAY, pace_delay};
use crate::server::estimate::expected_completion;
use crate::server::{AnswerPolicy, ServiceModel};
use crate::session::CloseCode;
use crate::{MAX_DATAGRAM_LEN, PROBE_MIN_LEN};

/// Slots of the test servers.
const CAP: u32 = 4;
/// The test servers' stated mean service time (`ServiceModel::Fixed`), so that expected
/// completion times are exact.
const SERVICE: Duration = Duration::from_millis(40);

/// The expected completion time of a test server with `n` requests and offers in flight.
fn expected(n: u32) -> Duration {
    expected_completion(SERVICE, n, Some(CAP))
}

/// The default pace for `n` requests and offers in flight at a test server.
fn pace(n: u32) -> Duration {
    pace_delay(expected(n), DEFAULT_PACE_DIVISOR, DEFAULT_PACE_MAX_DELAY)
}

/// The hint a test server writes with `n` requests and offers in flight.
fn hint_of(n: u32) -> LoadHint {
    LoadHint {
        in_flight: n,
        capacity: CAP,
        expected_us: expected(n).as_micros() as u32,
    }
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Client `c`'s `Selected` events: (server, answer time, load hint).
fn selected(sim: &Sim, c: usize) -> Vec<(SocketAddr, Duration, LoadHint)> {
    sim.client_events(c)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Selected {
                server,
                answer_time,
                load,
            } => Some((server, answer_time, load)),
            _ => None,
        })
        .collect()
}

/// When client `c` produced its first event matching `f`, from the start of the simulation.
fn first_at(sim: &Sim, c: usize, f: impl Fn(&ClientEvent) -> bool) -> Option<Duration> {
    sim.clients[c]
        .events
        .iter()
        .find(|(_, e)| f(e))
        .map(|(t, _)| *t - sim.start)
}

fn probe(tag: Tag, size: usize) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = crate::packet::Probe {
        tag,
        service: b"echo",
    }
    .encode(&mut buf, size)
    .unwrap();
    buf[..n].to_vec()
}

fn offer_of(data: &[u8]) -> (Tag, LoadHint) {
    match Packet::decode(data) {
        Ok(Packet::Offer(o)) => (o.tag, o.load),
        other => panic!("not an offer: {other:?}"),
    }
}

fn shuffle<T>(rng: &mut ChaCha20Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

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

// ---------------------------------------------------------------------------------------------
// R3: REDIRECT names peers; the client adds them (capped, filtered) and races them.
// ---------------------------------------------------------------------------------------------

/// A REDIRECT's tag and addresses.
fn redirect_of(data: &[u8]) -> (Tag, Vec<SocketAddr>) {
    match Packet::decode(data) {
        Ok(Packet::Redirect(r)) => (r.tag, r.servers().collect()),
        other => panic!("not a redirect: {other:?}"),
    }
}

fn tag_at(data: &[u8]) -> Tag {
    let mut t = [0u8; 16];
    t.copy_from_slice(&data[2..18]);
    Tag(t)
}

/// Three immediate servers A, B, C; A has `peers`; one client whose pool is only A. A reaches its
/// session limit (`max_sessions` lowered to 0) after its offer left and before the INIT comes,
/// and its reservations are off, so the INIT does not answer an offer it promised. Returns the
/// sim and the client, run until the INIT left.
fn refused_by_a(seed: u64, peers: Vec<SocketAddr>, max_redirect_servers: usize) -> (Sim, usize) {
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(3, |i, cfg| {
        cfg.answer = AnswerPolicy::Immediate;
        if i == 0 {
            cfg.reservation = Duration::ZERO;
            cfg.peers = peers.clone();
        }
    });
    sim.link = Link::ms(1);
    let mut cfg = ClientConfig::new(vec![key]);
    cfg.max_redirect_servers = max_redirect_servers;
    let c = sim.add_client(cfg, vec![server_addr(0)]);
    assert!(sim.run_until(Duration::from_secs(1), |s| {
        !s.sent_of(kind::INIT).is_empty()
    }));
    sim.servers[0].endpoint.set_max_sessions(Some(0));
    (sim, c)
}

/// Everything client `c` sent went to an address in `allowed`.
fn sent_only_to(sim: &Sim, c: usize, allowed: &[SocketAddr]) {
    let addr = sim.clients[c].addr;
    for s in sim.sent.iter().filter(|s| s.src == addr) {
        assert!(
            allowed.contains(&s.dst),
            "client sent type {:#x} to {}, which it did not choose",
            s.kind,
            s.dst
        );
    }
}

#[test]
fn r3_a_full_server_redirects_to_its_peers_and_the_client_races_them() {
    let (a, b, c_) = (server_addr(0), server_addr(1), server_addr(2));
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let (mut sim, c) = refused_by_a(seed, vec![b, c_], 8);
        sim.establish(c, Duration::from_secs(2));
        let server = sim.clients[c].conn.server().unwrap();
        assert!(server == b || server == c_, "established on {server}");

        // A refused the verified INIT with a REDIRECT naming both peers, no larger than the INIT.
        let sa = *sim.servers[0].endpoint.stats();
        assert_eq!(
            (sa.init_refused_full, sa.redirects_sent, sa.sessions_opened),
            (1, 1, 0)
        );
        let init = sim.sent_of(kind::INIT)[0].clone();
        assert_eq!(init.dst, a);
        let redirects = sim.sent_of(kind::REDIRECT);
        assert_eq!(redirects.len(), 1);
        assert!(
            redirects[0].len <= init.len,
            "REDIRECT larger than the INIT"
        );
        let (tag, named) = redirect_of(&redirects[0].data);
        assert_eq!(tag, tag_at(&init.data));
        assert_eq!(named, vec![b, c_]);

        let st = sim.clients[c].conn.stats();
        assert_eq!(st.redirects, 1);
        assert_eq!(st.redirect_servers_added, 2);
        assert_eq!(st.redirect_servers_ignored, 0);
        assert_eq!(st.failovers, 1);
        let events = sim.client_events(c);
        assert!(events.contains(&ClientEvent::Redirected {
            from: a,
            added: vec![b, c_]
        }));
        // The next race probes the two new servers (A refused, so not A) at once.
        assert!(events.contains(&ClientEvent::RaceStarted {
            attempt: 1,
            servers: 2
        }));
        let at_redirect = first_at(&sim, c, |e| matches!(e, ClientEvent::Redirected { .. }));
        let probes_after: BTreeSet<SocketAddr> = sim
            .sent_of(kind::PROBE)
            .into_iter()
            .filter(|p| Some(p.at - sim.start) == at_redirect)
            .map(|p| p.dst)
            .collect();
        assert_eq!(probes_after, BTreeSet::from([b, c_]));
        assert!(events.contains(&ClientEvent::Established {
            server,
            handshake_time: ms(2),
            failover_from: Some(a),
        }));
        sent_only_to(&sim, c, &[a, b, c_]);
        assert!(sim.echo(c, b"redirected", Duration::from_secs(1)));
    }
}

#[test]
fn r3_redirected_servers_are_probed_first_even_under_fanout() {
    let (a, b, c_) = (server_addr(0), server_addr(1), server_addr(2));
    let pool = vec![a, server_addr(3), server_addr(4), server_addr(5)];
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        // The client knows A and servers 3..6, not B or C, and probes 2 of its 4 at random. A
        // must be in the first race's pair to be selected and refuse: worlds derived from the
        // seed are tried until one draws it (half of them do).
        let (mut sim, c) = (0..40)
            .find_map(|k| {
                let mut sim = Sim::new(seed * 1000 + k);
                let key = sim.add_servers(6, |i, cfg| {
                    cfg.answer = AnswerPolicy::Immediate;
                    if i == 0 {
                        cfg.reservation = Duration::ZERO;
                        cfg.peers = vec![b, c_];
                    }
                });
                // A is nearest.
                sim.link = Link::ms(1);
                for i in 1..6 {
                    sim.set_latency(server_addr(i), 3);
                }
                let mut cfg = ClientConfig::new(vec![key]);
                cfg.fanout = Some(2);
                let c = sim.add_client(cfg, pool.clone());
                assert!(sim.run_until(Duration::from_secs(1), |s| {
                    !s.sent_of(kind::INIT).is_empty()
                }));
                let first: BTreeSet<SocketAddr> =
                    sim.sent_of(kind::PROBE).iter().map(|p| p.dst).collect();
                assert_eq!(first.len(), 2);
                first.contains(&a).then_some((sim, c))
            })
            .expect("no world drew A");
        assert_eq!(sim.sent_of(kind::INIT)[0].dst, a, "A is nearest");
        sim.servers[0].endpoint.set_max_sessions(Some(0));
        sim.establish(c, Duration::from_secs(2));
        let server = sim.clients[c].conn.server().unwrap();
        assert!(server == b || server == c_);
        // The redirect's two servers take the whole fan-out of the next race.
        let at = first_at(&sim, c, |e| matches!(e, ClientEvent::Redirected { .. })).unwrap();
        let second: BTreeSet<SocketAddr> = sim
            .sent_of(kind::PROBE)
            .into_iter()
            .filter(|p| p.at - sim.start == at)
            .map(|p| p.dst)
            .collect();
        assert_eq!(second, BTreeSet::from([b, c_]));
        let mut allowed = pool.clone();
        allowed.extend([b, c_]);
        sent_only_to(&sim, c, &allowed);
    }
}

#[test]
fn r3_redirect_addresses_are_capped_and_filtered() {
    let (a, b, c_) = (server_addr(0), server_addr(1), server_addr(2));
    let port0: SocketAddr = "10.0.0.9:0".parse().unwrap();
    let unspecified: SocketAddr = "0.0.0.0:4433".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
    let multicast: SocketAddr = "224.0.0.1:4433".parse().unwrap();
    let broadcast: SocketAddr = "255.255.255.255:4433".parse().unwrap();
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        // Eight peers configured; a REDIRECT names as many as fit within the INIT (at most 8), in
        // the configured order. Unusable ones are ignored, and the cap (1) lets only B in.
        let peers = vec![port0, unspecified, v6, b, c_, multicast, broadcast, a];
        let (mut sim, c) = refused_by_a(seed, peers.clone(), 1);
        sim.establish(c, Duration::from_secs(2));
        let init = sim.sent_of(kind::INIT)[0].clone();
        let redirect = sim.sent_of(kind::REDIRECT)[0].clone();
        assert!(redirect.len <= init.len, "REDIRECT larger than the INIT");
        let (_, named) = redirect_of(&redirect.data);
        let fit = ((init.len - Redirect::HEADER_LEN) / crate::packet::REDIRECT_ADDR_LEN)
            .min(crate::packet::MAX_REDIRECT_ADDRS);
        assert!(
            (5..8).contains(&fit),
            "an INIT of {} bytes fits {fit} addresses",
            init.len
        );
        assert_eq!(named, peers[..fit].to_vec());
        let st = sim.clients[c].conn.stats();
        assert_eq!(st.redirect_servers_added, 1, "capped at 1");
        assert_eq!(st.redirect_servers_ignored, fit as u64 - 1);
        assert!(sim.client_events(c).contains(&ClientEvent::Redirected {
            from: a,
            added: vec![b]
        }));
        assert_eq!(sim.clients[c].conn.server(), Some(b));
        sent_only_to(&sim, c, &[a, b]);

        // Multicast and broadcast are ignored too; the server never names itself; under the
        // default cap B and C both join.
        let peers = vec![multicast, broadcast, a, b, c_];
        let (mut sim, c) = refused_by_a(seed, peers.clone(), 8);
        sim.establish(c, Duration::from_secs(2));
        let (_, named) = redirect_of(&sim.sent_of(kind::REDIRECT)[0].data);
        assert_eq!(named, vec![multicast, broadcast, b, c_]);
        let st = sim.clients[c].conn.stats();
        assert_eq!(
            (st.redirect_servers_added, st.redirect_servers_ignored),
            (2, 2)
        );
        sent_only_to(&sim, c, &[a, b, c_]);

        // A REDIRECT from a server the client did not select, or with another tag, is ignored:
        // its addresses are never used.
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, cfg| cfg.answer = AnswerPolicy::Immediate);
        sim.set_latency(a, 1);
        sim.set_latency(b, 5);
        let client = client_addr(0);
        let lure: SocketAddr = "10.9.9.9:4433".parse().unwrap();
        sim.filter = Some(Box::new(move |_, d: &mut Datagram| {
            if d.src != client || d.data[1] != kind::INIT {
                return Verdict::Pass;
            }
            let tag = tag_at(&d.data);
            let mut wrong = tag;
            wrong.0[0] ^= 1;
            let other = if d.dst == a { b } else { a };
            let forge = |src, tag: Tag, to: &[SocketAddr]| {
                let mut addrs = Vec::new();
                for t in to {
                    addrs.extend(crate::util::encode_addr(*t));
                }
                let mut buf = [0u8; MAX_DATAGRAM_LEN];
                let n = Redirect {
                    tag,
                    servers: &addrs,
                }
                .encode(&mut buf)
                .unwrap();
                Datagram {
                    src,
                    dst: client,
                    data: buf[..n].to_vec(),
                }
            };
            Verdict::PassAnd(vec![
                forge(other, tag, &[lure, c_]),
                forge(d.dst, wrong, &[lure, c_]),
            ])
        }));
        let c = sim.add_client(ClientConfig::new(vec![key]), vec![a, b]);
        assert_eq!(sim.clients[c].addr, client);
        sim.establish(c, Duration::from_secs(2));
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.clients[c].conn.server(), Some(a));
        let st = sim.clients[c].conn.stats();
        assert_eq!(
            (
                st.redirects,
                st.redirect_servers_added,
                st.failovers,
                st.unexpected
            ),
            (0, 0, 0, 2)
        );
        assert!(
            !sim.client_events(c)
                .iter()
                .any(|e| matches!(e, ClientEvent::Redirected { .. }))
        );
        sent_only_to(&sim, c, &[a, b]);
        assert!(sim.sent.iter().all(|s| s.dst != lure && s.dst != c_));
    }
}
