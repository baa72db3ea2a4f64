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
//!   queue, and drops to nothing once the clients are gone and the timers have run (S2).
//!
//! Seeded: a failure prints its seed and step, and replays exactly.

use std::collections::HashSet;
use std::net::SocketAddr;
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

fn check(sim: &Sim, seed: u64, step: usize, max_held: usize) {
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
        let max_held = 1024;
        for i in 0..3 {
            sim.set_latency(server_addr(i), 1 + i as u64);
        }
        let pool = sim.pool();
        let mut clients: Vec<usize> = (0..3)
            .map(|_| sim.add_client(ClientConfig::new(vec![key]), pool.clone()))
            .collect();
        let spoofed: Vec<SocketAddr> = (0..4)
            .map(|i| format!("203.0.113.{}:{}", i + 1, 4000 + i).parse().unwrap())
            .collect();
        for step in 0..STEPS {
            match rng.next_u64() % 12 {
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
                        clients.push(sim.add_client(ClientConfig::new(vec![key]), pool.clone()));
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
            check(&sim, seed, step, max_held);
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
        check(&sim, seed, STEPS, max_held);
        for (i, s) in sim.servers.iter_mut().enumerate() {
            while s.endpoint.poll_event().is_some() {}
            assert_eq!(
                s.endpoint.retained_state(),
                0,
                "seed {seed}: server {i} still holds state after everyone left"
            );
        }
    }
}
