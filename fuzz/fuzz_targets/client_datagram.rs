//! A client `Connection` racing a pool of two servers, fed a sequence of datagrams (from the pool's
//! servers and from other addresses), clock steps and API calls. It must never panic, it must
//! never send to an address outside the pool, its PROBEs are never below `PROBE_MIN_LEN`, and a
//! datagram from an address outside the pool (whatever it carries) must change nothing: no state
//! change, no event, nothing sent.
//!
//! Genuine server datagrams recorded once (OFFER, COOKIE_CHANGE, REDIRECT, ACCEPT and three DATA
//! packets, all valid for this seeded client) are available as templates, so the fuzzer reaches the
//! handshake, the session and failover.
//!
//! Input: mode u8, then records. mode % 3 picks the selection policy (earliest, window, n-best
//! of 2), (mode / 3) % 3 the fan-out (all, 1, 2). Addresses a REDIRECT made the client add
//! (`redirect_servers_added`) join the pool the checks allow.
//!
//! Record: selector u8 | clock step u8 (see `volley_fuzz::advance`) | length u16 (mod 1601) |
//! that many bytes. Selector bits 0-2 pick the source address, bits 4-6 a template (0 = none: the
//! bytes are the datagram; 1 OFFER, 2 COOKIE_CHANGE, 3 ACCEPT, 4 DATA "hi", 5 a PATH_CHALLENGE
//! (DATA, key epoch 1), 6 DATA CLOSE — or, when bit 0x40 of the mode is set, a VERSIONS echoing the
//! recorded PROBE — 7 REDIRECT, each patched by the bytes, see `volley_fuzz::patched`), bit 7 turns
//! the record into an API call.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use volley_fuzz::{
    Client, Input, advance, backup_server_addr, canonical, client_addr, new_client_with, patched,
    recorded, server_addr,
};
use volley_proto::packet::{Packet, kind};
use volley_proto::{CloseCode, MAX_DATAGRAM_LEN, PROBE_MIN_LEN, SelectionPolicy};

fn source(selector: u8) -> SocketAddr {
    match selector & 7 {
        0 => server_addr(),
        1 => backup_server_addr(),
        2 => "203.0.113.3:4433".parse().unwrap(),
        3 => "203.0.113.1:4434".parse().unwrap(),
        4 => "[::ffff:203.0.113.1]:4433".parse().unwrap(),
        5 => "[2001:db8::1]:4433".parse().unwrap(),
        6 => client_addr(),
        _ => "203.0.113.2:4434".parse().unwrap(),
    }
}

/// Sends everything queued, checking it: only to the pool, PROBEs padded, all decodable.
fn drain(client: &mut Client, now: Instant, pool: &[SocketAddr]) {
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let mut sent = 0;
    while let Some(t) = client.poll_transmit(now, &mut buf) {
        assert!(
            pool.contains(&t.destination),
            "client sent to {} outside its pool",
            t.destination
        );
        assert!(t.size <= MAX_DATAGRAM_LEN);
        if buf[1] == kind::PROBE {
            assert!(t.size >= PROBE_MIN_LEN, "short PROBE");
        }
        assert!(
            Packet::decode(&buf[..t.size]).is_ok(),
            "client sent an undecodable datagram"
        );
        sent += 1;
        assert!(sent < 100_000, "poll_transmit does not terminate");
    }
    while client.poll_event().is_some() {}
}

/// Whether the mode byte (the input's first) has `bit` set.
fn mode_bit(data: &[u8], bit: u8) -> bool {
    data.first().is_some_and(|m| m & bit != 0)
}

fuzz_target!(|data: &[u8]| {
    let rec = recorded();
    // A VERSIONS naming version 1 that echoes the recorded PROBE (PROTOCOL.md §3.9).
    let mut versions = vec![0u8, 1, 1];
    versions.extend_from_slice(&rec.probe[..32]);
    let templates: [&[u8]; 7] = [
        &rec.offer,
        &rec.cookie_change,
        &rec.accept,
        &rec.server_data[0],
        &rec.path_challenge,
        if mode_bit(data, 0x40) {
            &versions
        } else {
            &rec.server_data[2]
        },
        &rec.redirect,
    ];
    let mut pool = vec![server_addr(), backup_server_addr()];
    let mut input = Input::new(data);
    let Some(mode) = input.u8() else { return };
    let mut now = Instant::now();
    let mut client = new_client_with(now, |cfg| {
        cfg.policy = match mode % 3 {
            0 => SelectionPolicy::Earliest,
            1 => SelectionPolicy::window(),
            _ => SelectionPolicy::n_best(2),
        };
        cfg.fanout = match (mode / 3) % 3 {
            0 => None,
            n => Some(usize::from(n)),
        };
    });

    loop {
        drain(&mut client, now, &pool);
        let (Some(selector), Some(step), Some(len)) = (input.u8(), input.u8(), input.u16()) else {
            break;
        };
        let payload = input.bytes(usize::from(len % 1601));
        now += advance(step);
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
            drain(&mut client, now, &pool);
        }
        if selector & 0x80 != 0 {
            let (&op, arg) = payload.split_first().unwrap_or((&0, &[]));
            match op % 3 {
                0 => {
                    let _ = client.send_datagram(arg);
                }
                1 => {
                    let code = u16::from_be_bytes([
                        arg.first().copied().unwrap_or(0),
                        arg.get(1).copied().unwrap_or(0),
                    ]);
                    client.close(CloseCode(code));
                }
                _ => {}
            }
        } else {
            let template = usize::from((selector >> 4) & 7)
                .checked_sub(1)
                .and_then(|k| templates.get(k));
            let datagram = match template {
                Some(t) => patched(t, payload),
                None => payload.to_vec(),
            };
            let from = source(selector);
            let off_path = !pool.contains(&canonical(from));
            let before = (client.is_done(), client.server(), client.poll_timeout());
            let added_before = client.stats().redirect_servers_added;
            client.handle(now, from, &datagram);
            let added = client.stats().redirect_servers_added - added_before;
            if added > 0 {
                assert!(
                    !off_path,
                    "a REDIRECT from {from} outside the pool was followed"
                );
                let Ok(Packet::Redirect(rd)) = Packet::decode(&datagram) else {
                    panic!("servers added without a REDIRECT");
                };
                let named: Vec<SocketAddr> = rd.servers().map(canonical).collect();
                let new: Vec<SocketAddr> =
                    named.into_iter().filter(|a| !pool.contains(a)).collect();
                assert!(new.len() as u64 >= added, "added servers it was not given");
                pool.extend(new);
            }
            if off_path {
                // Nothing from an address outside the pool may change the connection (C2, R4):
                // no state change, no event, nothing to send.
                let after = (client.is_done(), client.server(), client.poll_timeout());
                assert_eq!(
                    before, after,
                    "a datagram from {from} changed the connection"
                );
                assert!(
                    client.poll_event().is_none(),
                    "a datagram from {from} raised an event"
                );
                assert!(
                    client
                        .poll_transmit(now, &mut [0u8; MAX_DATAGRAM_LEN])
                        .is_none(),
                    "a datagram from {from} made the client send"
                );
            }
        }
    }
    let _ = client.stats();
});
