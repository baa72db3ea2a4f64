//! The harness of the `client_datagram` target: a client `Connection` fed the records of one
//! input. `fuzz_targets/client_datagram.rs` documents the input format and what is asserted; it
//! lives here so that the tests can run the committed seeds through it.

use std::net::SocketAddr;
use std::time::Instant;

use volley_proto::packet::{Packet, kind};
use volley_proto::session::SessionStats;
use volley_proto::{
    ClientEvent, ClientStats, CloseCode, MAX_DATAGRAM_LEN, PROBE_MIN_LEN, SelectionPolicy,
};

use crate::sealed::{Delivery, Ledger, Sealer};
use crate::{
    Client, Input, advance, backup_server_addr, canonical, client_addr, new_client_with, patched,
    recorded, server_addr,
};

/// Selector bit of a sealed record.
const SEALED: u8 = 0x08;

/// What one run saw, for the tests.
#[derive(Debug, Default)]
pub struct ClientRun {
    /// Records read (API calls included).
    pub records: usize,
    /// The connection's counters at the end.
    pub stats: ClientStats,
    /// The established session's counters at the end, if one is up.
    pub session: Option<SessionStats>,
    /// Sessions established.
    pub established: u64,
    /// Every datagram the connection delivered: the record it came with, and how the ledger
    /// explained it.
    pub deliveries: Vec<(usize, Delivery)>,
}

/// What `drain` checks delivered datagrams against, and where it notes them.
struct Deliveries<'a> {
    ledger: &'a Ledger,
    record: usize,
    seen: &'a mut Vec<(usize, Delivery)>,
}

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

/// Sends everything queued, checking it: only to the pool, PROBEs padded, all decodable; and
/// checks every datagram delivered against the ledger (at most `MAX_DATAGRAM` bytes, nothing
/// from an incomplete set).
fn drain(client: &mut Client, now: Instant, pool: &[SocketAddr], delivered: Deliveries<'_>) {
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
    while let Some(event) = client.poll_event() {
        if let ClientEvent::Datagram(data) = event {
            let how = delivered.ledger.check(now, &data);
            delivered.seen.push((delivered.record, how));
        }
    }
}

/// Whether the mode byte (the input's first) has `bit` set.
fn mode_bit(data: &[u8], bit: u8) -> bool {
    data.first().is_some_and(|m| m & bit != 0)
}

/// Runs one input (the format is documented in `fuzz_targets/client_datagram.rs`); panics when
/// an assertion fails.
pub fn run(data: &[u8]) -> ClientRun {
    let mut run = ClientRun::default();
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
    let Some(mode) = input.u8() else { return run };
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

    let mut sealer = Sealer::server_to_client();
    // The recorded server's only DATAGRAM; anything else delivered must be sealed here.
    let mut ledger = Ledger::new(&[b"hi"]);

    loop {
        let record = run.records;
        let seen = &mut run.deliveries;
        drain(
            &mut client,
            now,
            &pool,
            Deliveries {
                ledger: &ledger,
                record: record.saturating_sub(1),
                seen,
            },
        );
        let (Some(selector), Some(step), Some(len)) = (input.u8(), input.u8(), input.u16()) else {
            break;
        };
        let payload = input.bytes(usize::from(len % 1601));
        run.records += 1;
        now += advance(step);
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
            let seen = &mut run.deliveries;
            drain(
                &mut client,
                now,
                &pool,
                Deliveries {
                    ledger: &ledger,
                    record,
                    seen,
                },
            );
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
            let datagram = if selector & SEALED != 0 {
                let sealed = sealer.record(payload);
                // Before its session is up, the client may hold one DATA and read it when the
                // ACCEPT comes: when the piece was taken is then not known.
                let at = client.server().is_some().then_some(now);
                ledger.sent(&sealed.plaintext, at);
                sealed.datagram
            } else {
                match template {
                    Some(t) => patched(t, payload),
                    None => payload.to_vec(),
                }
            };
            let from = source(selector);
            let off_path = !pool.contains(&canonical(from));
            let before = (client.is_done(), client.server(), client.poll_timeout());
            let added_before = client.stats().redirect_servers_added;
            let established_before = client.stats().sessions_established;
            client.handle(now, from, &datagram);
            run.established += client.stats().sessions_established - established_before;
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
    run.stats = client.stats();
    run.session = client.session_stats();
    run
}
