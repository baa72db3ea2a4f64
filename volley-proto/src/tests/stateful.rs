//! A stateful property test (issue 13): clients and servers on the simulated network driven
//! through random sequences of arbitrary datagrams (random bytes, replays and mutations of what was
//! on the wire, from real and spoofed addresses), timer firings, time jumps and API calls
//! (connect, send, close, load changes), with the invariants checked after every step:
//!
//! - no immediate reply is larger than the datagram that caused it, and every OFFER fits in the
//!   smallest PROBE (R6; the first is asserted by the simulator on every reply);
//! - one INIT opens at most one session: a server's `sessions_opened` never exceeds the distinct
//!   (source, tag) INITs that were ever sent to it (R1);
//! - retained state stays bounded by the sessions open and recently ended plus the held-probe
//!   queue, and drops to nothing once the clients are gone and the timers have run (S2);
//! - (A1, A2) the server with an allow-list never opens a session for a key no list of it ever
//!   held, while its list is reloaded at random;
//! - (A3, A4) with key updates every few packets and clients whose NAT rebinds at random, a
//!   server never sends an address more DATA bytes than 3 × the DATA bytes that address sent it,
//!   unless a session's client validly moved there.
//!
//! Seeded: a failure prints its seed and step, and replays exactly.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::util::*;
use crate::client::ClientConfig;
use crate::packet::{Packet, kind};
use crate::server::AppLoad;
use crate::{MAX_DATAGRAM_LEN, PROBE_MIN_LEN};

const CLIENTS: usize = 6;
const STEPS: usize = 400;

fn pick<T: Copy>(rng: &mut ChaCha20Rng, items: &[T]) -> T {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

/// The distinct (source, tag) of every INIT ever sent to `server`.
fn inits_to(sim: &Sim, server: SocketAddr) -> usize {
    sim.sent
        .iter()
        .filter(|s| s.dst == server && s.kind == kind::INIT)
        .filter_map(|s| match Packet::decode(&s.data) {
            Ok(Packet::Init(i)) => Some((s.src, i.tag)),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .len()
}

/// Whether `k` is a DATA type byte (0x10..=0x1F).
fn is_data(k: u8) -> bool {
    k & !kind::KEY_PHASE_MASK == kind::DATA
}

fn check(sim: &Sim, seed: u64, step: usize, max_held: usize, homes: &HashSet<SocketAddr>) {
    // A4: DATA to an address no client lives at (a spoofed one) is bounded by 3× the DATA it
    // sent that server (path challenges only).
    let mut to: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let mut from: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    for d in sim.sent.iter().filter(|d| is_data(d.kind)) {
        *to.entry((d.src, d.dst)).or_default() += d.len;
        *from.entry((d.dst, d.src)).or_default() += d.len;
    }
    for (&(server, addr), &bytes) in &to {
        if homes.contains(&addr) || !sim.servers.iter().any(|s| s.addr == server) {
            continue;
        }
        let got = from.get(&(server, addr)).copied().unwrap_or(0);
        assert!(
            bytes <= 3 * got,
            "seed {seed} step {step}: {server} sent {bytes} DATA bytes to {addr}, which sent it {got}"
        );
    }
    for (i, s) in sim.servers.iter().enumerate() {
        let stats = s.endpoint.stats();
        let inits = inits_to(sim, s.addr);
        assert!(
            stats.sessions_opened as usize <= inits,
            "seed {seed} step {step}: server {i} opened {} sessions from {inits} distinct INITs",
            stats.sessions_opened
        );
        // Sessions open, their duplicate-filter entries, the ended list (one per session that
        // ended within a cookie lifetime), timers and ready marks: a few entries per session
        // opened, plus the held probes.
        let bound = 4 * stats.sessions_opened as usize + max_held + 16;
        assert!(
            s.endpoint.retained_state() <= bound,
            "seed {seed} step {step}: server {i} retains {} entries (bound {bound})",
            s.endpoint.retained_state()
        );
    }
    for sent in sim.sent.iter().filter(|s| s.kind == kind::OFFER) {
        assert!(
            sent.len <= PROBE_MIN_LEN,
            "seed {seed} step {step}: a {} byte OFFER",
            sent.len
        );
    }
}

#[test]
fn r1_r6_s2_arbitrary_datagrams_timers_and_calls_keep_the_invariants() {
    let (mut migrated, mut unauthorized, mut updated) = (0, 0, 0);
    for seed in seeds(12) {
        let _g = SeedGuard(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |i, cfg| {
            // One server with a capacity and the gated policy (held probes), one with a session
            // limit (refusals, REDIRECT), one with the defaults.
            match i {
                0 => {
                    cfg.capacity = Some(2);
                    cfg.answer = crate::server::AnswerPolicy::Gated {
                        max_hold: Duration::from_millis(50),
                    };
                }
                1 => cfg.max_sessions = Some(2),
                _ => {}
            }
        });
        // Client keys: the first two are on server 2's allow-list to begin with.
        let client_keys: Vec<_> = (0..4).map(|_| sim.keypair()).collect();
        let known: HashSet<_> = client_keys.iter().map(|k| k.public()).collect();
        sim.servers[2]
            .endpoint
            .set_allow_list(Some(Arc::new(crate::allow::AllowList::from_keys(
                client_keys[..2].iter().map(|k| k.public()),
            ))));
        let config = |rng: &mut ChaCha20Rng| {
            let mut cfg = ClientConfig::new(vec![key]);
            cfg.session.rekey_after_packets = 3;
            if !rng.next_u64().is_multiple_of(3) {
                cfg.key = Some(pick(rng, &client_keys.iter().collect::<Vec<_>>()).clone());
            }
            cfg
        };
        // Each client's public address (its NAT mapping), changed at random.
        let nat: Rc<RefCell<HashMap<SocketAddr, SocketAddr>>> = Rc::default();
        let mut homes: HashSet<SocketAddr> = (0..CLIENTS + 8).map(client_addr).collect();
        {
            let nat = nat.clone();
            sim.filter = Some(Box::new(move |_, d| {
                let map = nat.borrow();
                if let Some(public) = map.get(&d.src) {
                    d.src = *public;
                } else if let Some((inside, _)) = map.iter().find(|(_, p)| **p == d.dst) {
                    d.dst = *inside;
                }
                Verdict::Pass
            }));
        }
        let max_held = 1024;
        for i in 0..3 {
            sim.set_latency(server_addr(i), 1 + i as u64);
        }
        let pool = sim.pool();
        let mut clients: Vec<usize> = (0..3)
            .map(|_| {
                let cfg = config(&mut rng);
                sim.add_client(cfg, pool.clone())
            })
            .collect();
        let spoofed: Vec<SocketAddr> = (0..4)
            .map(|i| format!("203.0.113.{}:{}", i + 1, 4000 + i).parse().unwrap())
            .collect();
        for step in 0..STEPS {
            match rng.next_u64() % 14 {
                // Let the network and the timers run.
                0..=2 => {
                    for _ in 0..(1 + rng.next_u64() % 20) {
                        if !sim.step() {
                            break;
                        }
                    }
                }
                // Jump ahead in time.
                3 => sim.run_for(Duration::from_millis(rng.next_u64() % 3_000)),
                // An application sends.
                4 => {
                    let c = pick(&mut rng, &clients);
                    let len = (rng.next_u64() % 64) as usize;
                    let _ = sim.clients[c].conn.send_datagram(&vec![0x42; len]);
                }
                // A client closes; another connects.
                5 => {
                    let c = pick(&mut rng, &clients);
                    sim.clients[c].conn.close(crate::session::CloseCode::NORMAL);
                    if clients.len() < CLIENTS {
                        let cfg = config(&mut rng);
                        clients.push(sim.add_client(cfg, pool.clone()));
                    }
                }
                // A replay of something that was on the wire, from its source or another.
                6 | 7 => {
                    if sim.sent.is_empty() {
                        continue;
                    }
                    let i = (rng.next_u64() % sim.sent.len() as u64) as usize;
                    let s = sim.sent[i].clone();
                    let src = if rng.next_u64() % 2 == 0 {
                        s.src
                    } else {
                        pick(&mut rng, &spoofed)
                    };
                    sim.send(src, s.dst, s.data);
                }
                // A mutation of something that was on the wire.
                8 | 9 => {
                    if sim.sent.is_empty() {
                        continue;
                    }
                    let i = (rng.next_u64() % sim.sent.len() as u64) as usize;
                    let s = sim.sent[i].clone();
                    let mut data = s.data;
                    match rng.next_u64() % 3 {
                        0 => {
                            for _ in 0..(1 + rng.next_u64() % 4) {
                                if data.is_empty() {
                                    break;
                                }
                                let j = (rng.next_u64() % data.len() as u64) as usize;
                                data[j] ^= 1 << (rng.next_u64() % 8);
                            }
                        }
                        1 => data.truncate((rng.next_u64() % (data.len() as u64 + 1)) as usize),
                        _ => data.extend((0..rng.next_u64() % 64).map(|_| rng.next_u64() as u8)),
                    }
                    data.truncate(MAX_DATAGRAM_LEN + 100);
                    let src = if rng.next_u64() % 2 == 0 {
                        s.src
                    } else {
                        pick(&mut rng, &spoofed)
                    };
                    sim.send(src, s.dst, data);
                }
                // Random bytes to a server.
                10 => {
                    let len = (rng.next_u64() % 1_500) as usize;
                    let mut data = vec![0u8; len];
                    rng.fill_bytes(&mut data);
                    if len >= 2 && rng.next_u64() % 2 == 0 {
                        data[0] = crate::VERSION; // get past the version check
                    }
                    let dst = server_addr((rng.next_u64() % 3) as usize);
                    sim.send(pick(&mut rng, &spoofed), dst, data);
                }
                // A client's NAT rebinds it to a new public port.
                12 => {
                    let c = pick(&mut rng, &clients);
                    let inside = sim.clients[c].addr;
                    let public: SocketAddr =
                        format!("192.0.2.200:{}", 20_000 + step).parse().unwrap();
                    homes.insert(public);
                    nat.borrow_mut().insert(inside, public);
                }
                // Server 2 reloads its allow-list: a random subset of the known keys.
                13 => {
                    let subset: Vec<_> = client_keys
                        .iter()
                        .filter(|_| rng.next_u64() % 2 == 0)
                        .map(|k| k.public())
                        .collect();
                    sim.servers[2]
                        .endpoint
                        .set_allow_list(Some(Arc::new(crate::allow::AllowList::from_keys(subset))));
                }
                // The application on a server reports load, or closes a session.
                _ => {
                    let s = (rng.next_u64() % 3) as usize;
                    let now = sim.now;
                    if rng.next_u64() % 2 == 0 {
                        sim.servers[s].endpoint.set_app_load(
                            now,
                            AppLoad {
                                in_flight: (rng.next_u64() % 4) as u32,
                                completed: step as u64,
                            },
                        );
                    } else {
                        let opened: Vec<_> = sim.servers[s]
                            .events
                            .iter()
                            .filter_map(|e| match e {
                                crate::server::ServerEvent::Opened { id, .. } => Some(*id),
                                _ => None,
                            })
                            .collect();
                        if !opened.is_empty() {
                            let id = pick(&mut rng, &opened);
                            sim.servers[s]
                                .endpoint
                                .close(id, crate::session::CloseCode::GOING_AWAY);
                        }
                    }
                }
            }
            check(&sim, seed, step, max_held, &homes);
            // A1: the listed server only ever opened sessions for keys a list of it held.
            for e in &sim.servers[2].events {
                if let crate::server::ServerEvent::Opened { client, .. } = e {
                    assert!(
                        known.contains(&client.key),
                        "seed {seed} step {step}: {client:?}"
                    );
                }
            }
        }
        // The sequence did reach the interesting states: sessions opened, forged and replayed
        // datagrams turned away.
        let opened: u64 = sim
            .servers
            .iter()
            .map(|s| s.endpoint.stats().sessions_opened)
            .sum();
        let refused: u64 = sim
            .servers
            .iter()
            .map(|s| server_drops(s.endpoint.stats()))
            .sum();
        assert!(
            opened > 0 && refused > 0,
            "seed {seed}: opened {opened}, refused {refused}"
        );
        migrated += sim
            .servers
            .iter()
            .map(|s| s.endpoint.stats().sessions_migrated)
            .sum::<u64>();
        unauthorized += sim.servers[2].endpoint.stats().inits_unauthorized;
        updated += sim
            .sent
            .iter()
            .filter(|d| is_data(d.kind) && d.kind != kind::DATA)
            .count();
        // Everyone leaves; once the timers have run, the servers hold nothing.
        for &c in &clients {
            sim.clients[c].conn.close(crate::session::CloseCode::NORMAL);
        }
        for s in 0..3 {
            let now = sim.now;
            sim.servers[s].endpoint.set_app_load(
                now,
                AppLoad {
                    in_flight: 0,
                    completed: STEPS as u64,
                },
            );
        }
        sim.run_for(Duration::from_secs(120));
        check(&sim, seed, STEPS, max_held, &homes);
        for (i, s) in sim.servers.iter_mut().enumerate() {
            while s.endpoint.poll_event().is_some() {}
            assert_eq!(
                s.endpoint.retained_state(),
                0,
                "seed {seed}: server {i} still holds state after everyone left"
            );
        }
    }
    // Across the seeds the sequences reached what A1–A4 are about.
    assert!(
        migrated > 0 && unauthorized > 0 && updated > 0,
        "migrated {migrated}, unauthorized {unauthorized}, DATA under updated keys {updated}"
    );
}
