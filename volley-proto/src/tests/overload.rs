//! No cliff at capacity (L6): busy servers answer late rather than not at all, probe and INIT
//! retransmission follow measured times, an INIT answering a just-made offer is honoured, a
//! refused client backs off, idle sessions are not load — and a fleet offered more than it can
//! serve keeps serving at its capacity, like a queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::util::*;
use crate::client::{ClientConfig, ClientEvent};
use crate::packet::kind;
use crate::server::answer::{DEFAULT_GATE_MAX_HOLD, DEFAULT_PACE_MAX_DELAY};
use crate::server::{AnswerPolicy, AppLoad, ServerEvent, ServiceModel, SessionId};
use crate::session::CloseCode;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// When client `c` first produced an event matching `f`, from the start.
fn first_at(sim: &Sim, c: usize, f: impl Fn(&ClientEvent) -> bool) -> Option<Duration> {
    sim.clients[c]
        .events
        .iter()
        .find(|(_, e)| f(e))
        .map(|(t, _)| *t - sim.start)
}

fn is_selected(e: &ClientEvent) -> bool {
    matches!(e, ClientEvent::Selected { .. })
}

#[test]
fn l6_a_busy_server_answers_late_not_never() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        // Paced: far beyond its 4 slots, a server answers at the capped delay, busy.
        let mut sim = Sim::new(seed);
        sim.link = Link::ms(1);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.capacity = Some(4);
            cfg.service = ServiceModel::Fixed(ms(40));
        });
        sim.set_app(0, 100);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c, Duration::from_secs(1));
        assert_eq!(
            first_at(&sim, c, is_selected),
            Some(ms(2) + DEFAULT_PACE_MAX_DELAY)
        );
        let st = *sim.servers[0].endpoint.stats();
        assert_eq!((st.offers_sent, st.offers_busy), (1, 1));
        assert_eq!(st.probes_withheld_full, 0);
        assert_eq!(
            sim.clients[c].conn.stats().probes_sent,
            1,
            "no retransmission"
        );

        // Gated: no slot frees, and the probe is answered when its hold runs out.
        let mut sim = Sim::new(seed);
        sim.link = Link::ms(1);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.capacity = Some(4);
            cfg.answer = AnswerPolicy::gated();
        });
        sim.set_app(0, 4);
        let c = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(c, Duration::from_secs(1));
        assert_eq!(
            first_at(&sim, c, is_selected),
            Some(ms(2) + DEFAULT_GATE_MAX_HOLD)
        );
        let st = *sim.servers[0].endpoint.stats();
        assert_eq!((st.probes_held, st.offers_busy), (1, 1));
        assert_eq!(st.probes_dropped_hold_expired, 0);
        assert_eq!(
            sim.clients[c].conn.stats().probes_sent,
            1,
            "no retransmission"
        );

        // Immediate: at once, with a hint that says how busy.
        let mut sim = Sim::new(seed);
        sim.link = Link::ms(1);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.capacity = Some(4);
            cfg.answer = AnswerPolicy::Immediate;
            cfg.service = ServiceModel::Fixed(ms(40));
        });
        sim.set_app(0, 11);
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        let load = sim
            .client_events(c)
            .into_iter()
            .find_map(|e| match e {
                ClientEvent::Selected { load, .. } => Some(load),
                _ => None,
            })
            .unwrap();
        assert_eq!((load.in_flight, load.capacity), (11, 4));
        assert_eq!(load.expected(), Some(ms(120)));
        assert_eq!(sim.servers[0].endpoint.stats().offers_busy, 1);
    }
}

#[test]
fn l6_probe_retransmission_follows_the_answer_times_measured() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        // 2 ms round trips to immediate servers.
        sim.link = Link::ms(1);
        let key = sim.add_servers(2, |_, cfg| cfg.answer = AnswerPolicy::Immediate);
        let pool = sim.pool();
        let cfg = ClientConfig::new(vec![key]);
        let state = sim.add_instance(cfg.ejection);
        // A few connects teach the client its answer times.
        for _ in 0..4 {
            let c = sim.add_client_shared(cfg.clone(), pool.clone(), state);
            sim.establish(c, Duration::from_secs(1));
            sim.clients[c].conn.close(CloseCode::NORMAL);
        }
        sim.run_for(ms(50));
        let rto =
            sim.pools[state]
                .answers()
                .rto(cfg.race.initial_rto, cfg.min_rto, cfg.race.max_rto);
        assert!(rto < ms(30), "{rto:?}");
        // Now the first round of offers is lost: the client re-probes after the measured
        // timeout, not after the cold 250 ms.
        let t0 = sim.now;
        sim.filter = Some(Box::new(move |now, d| {
            if d.data[1] == kind::OFFER && now < t0 + ms(5) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        let c = sim.add_client_shared(cfg.clone(), pool.clone(), state);
        sim.establish(c, Duration::from_secs(1));
        let took = sim.clients[c]
            .events
            .iter()
            .find(|(_, e)| is_selected(e))
            .map(|(t, _)| *t - t0)
            .unwrap();
        assert_eq!(took, rto + ms(2), "re-probed at the measured timeout");
        assert_eq!(sim.clients[c].conn.stats().probes_sent, 4);

        // A client that has measured nothing waits the cold-start timeout.
        let t0 = sim.now;
        sim.filter = Some(Box::new(move |now, d| {
            if d.data[1] == kind::OFFER && now < t0 + ms(5) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        let c = sim.add_client(cfg.clone(), pool.clone());
        sim.establish(c, Duration::from_secs(1));
        let took = sim.clients[c]
            .events
            .iter()
            .find(|(_, e)| is_selected(e))
            .map(|(t, _)| *t - t0)
            .unwrap();
        assert_eq!(took, cfg.race.initial_rto + ms(2));
    }
}

#[test]
fn l6_an_init_answering_a_just_made_offer_is_honoured_at_max_sessions() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        // One session allowed; two clients race at once and both get the offer of an empty
        // server: both INITs come within the 5 ms reservation of their offers, and both are
        // honoured — the offers promised the slot (they took reservations: a capacity is set).
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.max_sessions = Some(1);
            cfg.capacity = Some(4);
            cfg.answer = AnswerPolicy::Immediate;
        });
        let pool = sim.pool();
        let c0 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        let c1 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        assert!(sim.run_until(Duration::from_secs(1), |s| s.established(c0)
            && s.established(c1)));
        let st = *sim.servers[0].endpoint.stats();
        assert_eq!((st.sessions_opened, st.init_honoured_full), (2, 1));
        assert_eq!(st.init_refused_full, 0);
        // Now at its limit it makes no offer, so it promises nothing more.
        let c2 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.run_for(ms(100));
        assert!(!sim.established(c2));
        assert!(sim.servers[0].endpoint.stats().probes_withheld_full >= 1);

        // An INIT that comes later than the reservation (5 ms) after its offer was not promised
        // anything: refused. A near client's session first, then two clients 6 ms away.
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.max_sessions = Some(1);
            cfg.capacity = Some(4);
            cfg.answer = AnswerPolicy::Immediate;
        });
        let near = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(near, Duration::from_secs(1));
        sim.clients[near].conn.close(CloseCode::NORMAL);
        assert!(sim.run_until(
            Duration::from_secs(1),
            |s| s.servers[0].endpoint.session_count() == 0
        ));
        // 6 ms each way towards the next two: their INITs arrive 6 ms after the offers were
        // minted.
        sim.links.insert(client_addr(1), Link::ms(6));
        sim.links.insert(client_addr(2), Link::ms(6));
        let c0 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        let c1 = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.run_for(ms(100));
        let st = *sim.servers[0].endpoint.stats();
        assert_eq!(st.sessions_opened, 2);
        assert_eq!((st.init_refused_full, st.init_honoured_full), (1, 0));
        assert!(sim.established(c0) != sim.established(c1));
    }
}

#[test]
fn l6_a_server_without_a_capacity_promises_nothing_and_refuses_at_its_session_limit() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        // The race of the honoured case above, on a server without a capacity: its offers take
        // no reservation (§7.2.3), so the second INIT, however soon after its offer, is refused
        // and the session limit holds.
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.max_sessions = Some(1);
            cfg.answer = AnswerPolicy::Immediate;
        });
        let pool = sim.pool();
        let mut cfg = ClientConfig::new(vec![key]);
        cfg.max_failovers = 0;
        let c0 = sim.add_client(cfg.clone(), pool.clone());
        let c1 = sim.add_client(cfg, pool);
        sim.run_for(ms(100));
        let st = *sim.servers[0].endpoint.stats();
        assert_eq!(st.offers_sent, 2, "both offered while empty: {st:?}");
        assert_eq!(
            (
                st.sessions_opened,
                st.init_honoured_full,
                st.init_refused_full
            ),
            (1, 0, 1),
            "{st:?}"
        );
        assert_eq!(st.redirects_sent, 1);
        assert!(sim.established(c0) != sim.established(c1));
        assert_eq!(sim.servers[0].endpoint.session_count(), 1);
    }
}

#[test]
fn l6_a_refused_client_backs_off_before_racing_again() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        // Two servers; both reach their session limit after answering, and neither promised
        // anything (reservations off): every INIT is refused, without peers to go to.
        let key = sim.add_servers(2, |_, cfg| {
            cfg.answer = AnswerPolicy::Immediate;
            cfg.reservation = Duration::ZERO;
        });
        sim.link = Link::ms(1);
        let mut cfg = ClientConfig::new(vec![key]);
        cfg.max_failovers = 3;
        let pool = sim.pool();
        let c = sim.add_client(cfg.clone(), pool);
        assert!(sim.run_until(Duration::from_secs(1), |s| {
            !s.sent_of(kind::INIT).is_empty()
        }));
        for s in &mut sim.servers {
            s.endpoint.set_max_sessions(Some(0));
        }
        sim.run_for(Duration::from_secs(4));
        let st = sim.clients[c].conn.stats();
        assert_eq!(st.redirects, 1);
        assert_eq!(st.refusal_backoffs, 1);
        // The refusal arrived 2 ms after the INIT left; the next race started 5–15 ms later
        // (10 ms ± 50 %), not at once.
        let init_at = sim.sent_of(kind::INIT)[0].at - sim.start;
        let redirect_at = init_at + ms(2);
        let second_race = first_at(&sim, c, |e| {
            matches!(e, ClientEvent::RaceStarted { attempt: 1, .. })
        })
        .expect("raced again");
        let waited = second_race - redirect_at;
        assert!(
            (ms(5)..=ms(15)).contains(&waited),
            "raced again {waited:?} after the refusal"
        );
        let probes: Vec<_> = sim
            .sent_of(kind::PROBE)
            .into_iter()
            .filter(|p| p.at - sim.start > init_at)
            .collect();
        assert!(
            probes
                .iter()
                .all(|p| p.at - sim.start >= redirect_at + ms(5))
        );
        // Full servers withhold, so that race found no offer: the connection failed.
        assert!(
            sim.client_events(c)
                .iter()
                .any(|e| matches!(e, ClientEvent::Failed(_)))
        );
    }
}

#[test]
fn l6_idle_sessions_are_not_load() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        for count_sessions in [false, true] {
            let mut sim = Sim::new(seed);
            let key = sim.add_servers(1, |_, cfg| {
                cfg.capacity = Some(4);
                cfg.service = ServiceModel::Fixed(ms(40));
                cfg.count_sessions = count_sessions;
            });
            let pool = sim.pool();
            for _ in 0..10 {
                let c = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
                sim.establish(c, Duration::from_secs(1));
            }
            // Ten sessions open and silent; let the offers' reservations lapse.
            sim.run_for(ms(20));
            let load = sim.servers[0].endpoint.load(sim.now);
            assert_eq!(load.sessions, 10);
            if count_sessions {
                assert_eq!(load.in_flight(), 10);
                assert_eq!(load.expected, ms(110));
            } else {
                assert_eq!(load.in_flight(), 0, "idle sessions fill nothing");
                assert_eq!(load.expected, ms(40));
            }
        }
    }
}

#[test]
fn l6_an_offer_counts_as_load_until_its_first_request_arrives() {
    for seed in seeds(3) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, cfg| {
            cfg.capacity = Some(4);
            cfg.answer = AnswerPolicy::Immediate;
            cfg.reservation = ms(50);
        });
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        sim.run_for(ms(5));
        // Session open, no request yet: the offer still counts.
        assert_eq!(sim.servers[0].endpoint.load(sim.now).reserved, 1);
        assert!(sim.echo(c, b"first request", Duration::from_secs(1)));
        // The request arrived: the application counts it now, the reservation is gone.
        assert_eq!(sim.servers[0].endpoint.load(sim.now).reserved, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// A fleet at 1.2× its capacity.
// ---------------------------------------------------------------------------------------------

/// A server's application: `slots` parallel slots, FIFO queue, work from the request.
#[derive(Default)]
struct Worker {
    queue: VecDeque<(SessionId, [u8; 4], Duration)>,
    running: Vec<(Instant, SessionId, [u8; 4], Instant)>,
    completed: u64,
    /// Slot-time spent working inside the measurement window.
    busy: Duration,
    seen: usize,
}

const SLOTS: usize = 2;

fn clip(from: Instant, to: Instant, lo: Instant, hi: Instant) -> Duration {
    let a = from.max(lo);
    let b = to.min(hi);
    b.saturating_duration_since(a)
}

#[test]
fn l6_a_fleet_driven_to_1_2x_capacity_keeps_goodput_at_capacity() {
    // 4 paced servers × 2 slots, exponential work of mean 20 ms: capacity 400 requests/s.
    // Sessions arrive at 480/s (1.2×) for 2 s; each opens a session, sends one request, waits
    // for its reply and closes. Measured from 0.5 s to 2 s.
    const SERVERS: usize = 4;
    let mean_work = 20e-3;
    let capacity = (SERVERS * SLOTS) as f64 / mean_work;
    let rate = 1.2 * capacity;
    for seed in seeds(2) {
        let _g = SeedGuard(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x00e7_10ad);
        let mut exp = |mean: f64| -> f64 {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            -(1.0 - u).ln() * mean
        };
        let mut sim = Sim::new(seed);
        sim.link = Link {
            latency: us(100),
            jitter: us(50),
            ..Link::default()
        };
        let key = sim.add_servers(SERVERS, |_, cfg| cfg.capacity = Some(SLOTS as u32));
        for s in &mut sim.servers {
            s.echo = false;
        }
        let pool = sim.pool();
        let cfg = ClientConfig::new(vec![key]);
        let start = sim.now;
        let (lo, hi) = (start + ms(500), start + ms(2000));
        let mut workers: Vec<Worker> = (0..SERVERS).map(|_| Worker::default()).collect();
        let mut next_arrival = start + Duration::from_secs_f64(exp(1.0 / rate));
        // (client, arrived, event index, connected at, request sent)
        let mut active: Vec<(usize, Instant, usize, Option<Instant>)> = Vec::new();
        let mut connect_times = Vec::new();
        let (mut arrived, mut failed, mut done_in_window) = (0u64, 0u64, 0u64);
        let tick = us(500);
        while sim.now < hi {
            let next_done = workers
                .iter()
                .flat_map(|w| w.running.iter().map(|r| r.0))
                .min();
            let next = [Some(sim.now + tick), Some(next_arrival), next_done]
                .into_iter()
                .flatten()
                .min()
                .unwrap()
                .min(hi);
            let limit = next.saturating_duration_since(sim.now);
            sim.run_until(limit, |_| false);
            let now = sim.now;
            // Arrivals.
            while next_arrival <= now {
                let c = sim.add_client(cfg.clone(), pool.clone());
                active.push((c, now, 0, None));
                arrived += 1;
                next_arrival += Duration::from_secs_f64(exp(1.0 / rate));
            }
            // Servers: new requests, completions, starts, and the load report.
            for (i, w) in workers.iter_mut().enumerate() {
                let evs = &sim.servers[i].events;
                for ev in &evs[w.seen..] {
                    if let ServerEvent::Datagram { id, data } = ev {
                        let seq = [data[0], data[1], data[2], data[3]];
                        let work = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                        w.queue
                            .push_back((*id, seq, Duration::from_micros(u64::from(work))));
                    }
                }
                w.seen = evs.len();
                let mut k = 0;
                while k < w.running.len() {
                    if w.running[k].0 <= now {
                        let (end, id, seq, began) = w.running.swap_remove(k);
                        w.busy += clip(began, end, lo, hi);
                        w.completed += 1;
                        if (lo..hi).contains(&end) {
                            done_in_window += 1;
                        }
                        let _ = sim.servers[i].endpoint.send(id, &seq);
                    } else {
                        k += 1;
                    }
                }
                while w.running.len() < SLOTS {
                    let Some((id, seq, work)) = w.queue.pop_front() else {
                        break;
                    };
                    w.running.push((now + work, id, seq, now));
                }
                let in_flight = (w.queue.len() + w.running.len()) as u32;
                let completed = w.completed;
                sim.servers[i].endpoint.set_app_load(
                    now,
                    AppLoad {
                        in_flight,
                        completed,
                    },
                );
            }
            // Clients: send the request once up; close on the reply.
            let mut still = Vec::with_capacity(active.len());
            for (c, at, mut seen, mut connected) in active.drain(..) {
                let mut finished = false;
                let events: Vec<ClientEvent> = sim.clients[c].events[seen..]
                    .iter()
                    .map(|(_, e)| e.clone())
                    .collect();
                seen += events.len();
                for e in events {
                    match e {
                        ClientEvent::Established { .. } if connected.is_none() => {
                            connected = Some(now);
                            connect_times.push(now - at);
                            let work = (exp(mean_work) * 1e6) as u32;
                            let mut req = [0u8; 8];
                            req[..4].copy_from_slice(&(c as u32).to_be_bytes());
                            req[4..].copy_from_slice(&work.to_be_bytes());
                            sim.clients[c].conn.send_datagram(&req).expect("queued");
                        }
                        ClientEvent::Datagram(_) => {
                            sim.clients[c].conn.close(CloseCode::NORMAL);
                            finished = true;
                        }
                        ClientEvent::Failed(_) => {
                            failed += 1;
                            finished = true;
                        }
                        _ => {}
                    }
                }
                if !finished {
                    still.push((c, at, seen, connected));
                }
            }
            active = still;
        }
        let window = (hi - lo).as_secs_f64();
        let utilisation: Vec<f64> = workers
            .iter()
            .map(|w| {
                let open: Duration = w.running.iter().map(|r| clip(r.3, hi, lo, hi)).sum();
                (w.busy + open).as_secs_f64() / (SLOTS as f64 * window)
            })
            .collect();
        let goodput = done_in_window as f64 / window;
        connect_times.sort();
        let p50 = connect_times[connect_times.len() / 2];
        let p99 = connect_times[connect_times.len() * 99 / 100];
        let probes: u64 = sim.clients.iter().map(|c| c.conn.stats().probes_sent).sum();
        let servers: Vec<_> = sim.servers.iter().map(|s| *s.endpoint.stats()).collect();
        eprintln!(
            "seed {seed}: {arrived} arrivals at {rate:.0}/s for capacity {capacity:.0}/s; \
             goodput {goodput:.0}/s; utilisation {utilisation:.3?}; connect p50 {p50:?} p99 \
             {p99:?}; {failed} failed; {:.2} probes per session; busy offers {}",
            probes as f64 / arrived as f64,
            servers.iter().map(|s| s.offers_busy).sum::<u64>()
        );
        assert_eq!(failed, 0, "no session fails: overload is a queue");
        for u in &utilisation {
            assert!(*u >= 0.97, "a server idled under overload: {utilisation:?}");
        }
        assert!(
            goodput >= 0.9 * capacity,
            "goodput {goodput:.0}/s at capacity {capacity:.0}/s"
        );
        // Connecting stays quick: probes are answered (late, capped at 10 ms), never dropped.
        assert!(p99 <= ms(20), "connect p99 {p99:?}");
        assert!(
            probes as f64 / arrived as f64 <= SERVERS as f64 * 1.1,
            "retransmissions"
        );
        for s in &servers {
            assert_eq!(s.probes_withheld_full + s.init_refused_full, 0);
        }
    }
}
