//! The harness of the `server_datagram` target: a `ServerEndpoint` fed the records of one input.
//! `fuzz_targets/server_datagram.rs` documents the input format and what is asserted; it lives
//! here so that the tests can run the committed seeds through it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use volley_proto::allow::AllowList;
use volley_proto::packet::{Packet, Tag, kind};
use volley_proto::{
    AnswerPolicy, AppLoad, CloseCode, INIT_AMPLIFICATION, MAX_DATAGRAM_LEN, ServerEvent,
    ServerStats, SessionId,
};

use crate::sealed::{Delivery, Ledger, Sealer};
use crate::{
    Input, advance, canonical, client_addr, client_addr_moved, client_keypair, new_server_with,
    patched, recorded, redirect_peers, server_addr, stranger_keypair,
};

const MAX_HELD: usize = 16;

fn source(selector: u8) -> SocketAddr {
    match selector & 7 {
        0 => client_addr(),
        1 => client_addr_moved(),
        2 => "198.51.100.8:40000".parse().unwrap(),
        3 => "[::ffff:198.51.100.7]:40000".parse().unwrap(),
        4 => "[2001:db8::7]:40000".parse().unwrap(),
        5 => "198.51.100.7:53".parse().unwrap(),
        6 => "198.51.100.7:0".parse().unwrap(),
        _ => "192.0.2.99:40000".parse().unwrap(),
    }
}

fn local(selector: u8) -> SocketAddr {
    if selector & 8 == 0 {
        server_addr()
    } else {
        "203.0.113.9:4433".parse().unwrap()
    }
}

/// The allow-list of choice `k`: none, the recorded client's key, or a stranger's only.
fn allow(k: u8) -> Option<Arc<AllowList>> {
    match k % 3 {
        0 => None,
        1 => Some(Arc::new(AllowList::from_keys([client_keypair().public()]))),
        _ => Some(Arc::new(AllowList::from_keys(
            [stranger_keypair().public()],
        ))),
    }
}

/// The selector's template value that turns a record into a sealed one.
const SEALED: u8 = 7;

/// What one run saw, for the tests.
#[derive(Debug, Default)]
pub struct ServerRun {
    /// Records read (API calls included).
    pub records: usize,
    /// The endpoint's counters at the end.
    pub stats: ServerStats,
    /// Every datagram the endpoint delivered: the record it came with, and how the ledger
    /// explained it.
    pub deliveries: Vec<(usize, Delivery)>,
}

/// Runs one input (the format is documented in `fuzz_targets/server_datagram.rs`); panics when
/// an assertion fails.
pub fn run(data: &[u8]) -> ServerRun {
    let mut run = ServerRun::default();
    let mut input = Input::new(data);
    let Some(mode) = input.u8() else { return run };
    let rec = recorded();
    let mut now = Instant::now();
    let policy = (mode / 3) % 4;
    let mut server = new_server_with(now, |cfg| {
        cfg.peers = redirect_peers();
        cfg.max_held = MAX_HELD;
        if policy > 0 {
            cfg.capacity = Some(4);
        }
        match policy {
            1 => cfg.answer = AnswerPolicy::Immediate,
            3 => cfg.answer = AnswerPolicy::gated(),
            _ => {}
        }
        cfg.allow = allow(mode / 12);
    });
    let admits_client = (mode / 12) % 3 != 2;
    // DATA bytes each source sent, and DATA bytes sent to addresses no ACCEPT went to.
    let mut data_in: HashMap<SocketAddr, usize> = HashMap::new();
    let mut data_out: HashMap<SocketAddr, usize> = HashMap::new();
    // (source, tag) of every well-formed PROBE, with the smallest size seen: what a held OFFER
    // may answer.
    let mut probed: HashMap<(SocketAddr, Tag), usize> = HashMap::new();
    let peers: Vec<SocketAddr> = redirect_peers().into_iter().map(canonical).collect();
    let mut resp = [0u8; MAX_DATAGRAM_LEN];
    let mut verified: HashSet<SocketAddr> = HashSet::new();
    let mut opened: Vec<SessionId> = Vec::new();
    // The application's running total of completed requests (API call 2).
    let mut completed = 0u64;
    let mut templates: Vec<&[u8]> = Vec::new();
    if mode % 3 >= 1 {
        templates.push(&rec.init);
        templates.push(&rec.probe);
    }
    if mode % 3 == 2 && admits_client {
        let t = server
            .handle(now, client_addr(), server_addr(), &rec.init, &mut resp)
            .expect("recorded INIT accepted");
        assert_eq!(&resp[..t.size], &rec.accept[..], "deterministic ACCEPT");
        verified.insert(client_addr());
        // Its Opened now, before any record can reload the list.
        while let Some(event) = server.poll_event() {
            if let ServerEvent::Opened { id, .. } = event {
                opened.push(id);
            }
        }
        templates.extend(rec.client_data.iter().map(|d| &d[..]));
        templates.push(&rec.path_response);
    }
    let mut sealer = Sealer::client_to_server();
    // The recorded client's only DATAGRAM; anything else delivered must be sealed here.
    let mut ledger = Ledger::new(&[b"hello"]);

    while !input.is_empty() {
        let (Some(selector), Some(step), Some(len)) = (input.u8(), input.u8(), input.u16()) else {
            break;
        };
        let payload = input.bytes(usize::from(len % 1601));
        let record = run.records;
        run.records += 1;
        now += advance(step);
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }

        if selector & 0x80 != 0 {
            let (&op, arg) = payload.split_first().unwrap_or((&0, &[]));
            let arg0 = arg.first().copied().unwrap_or(0);
            match op % 7 {
                0 => server.set_capacity(Some(u32::from(arg0))),
                1 if arg0 % 2 == 0 => server.set_capacity(None),
                1 => server.set_max_sessions((arg0 > 1).then_some(u32::from(arg0 / 4))),
                2 => {
                    completed += u64::from(arg.get(1).copied().unwrap_or(0));
                    server.set_app_load(
                        now,
                        AppLoad {
                            in_flight: u32::from(arg0),
                            completed,
                        },
                    );
                }
                3 => server.close_all(CloseCode::GOING_AWAY),
                4 => {
                    for &id in &opened {
                        let _ = server.send(id, arg);
                    }
                }
                5 => {
                    if let Some(&id) = opened.first() {
                        server.close(id, CloseCode(u16::from(arg0)));
                    }
                }
                _ => {
                    server.set_allow_list(allow(arg0));
                }
            }
        } else {
            let remote = source(selector);
            let template = usize::from((selector >> 4) & 7)
                .checked_sub(1)
                .and_then(|k| templates.get(k));
            let datagram = if (selector >> 4) & 7 == SEALED {
                let sealed = sealer.record(payload);
                ledger.sent(&sealed.plaintext, Some(now));
                sealed.datagram
            } else {
                match template {
                    Some(t) => patched(t, payload),
                    None => payload.to_vec(),
                }
            };
            let is_probe_type = datagram.len() >= 2 && datagram[1] == kind::PROBE;
            let probe_tag = match Packet::decode(&datagram) {
                Ok(Packet::Probe(p)) => Some(p.tag),
                _ => None,
            };
            let decodes_as_probe = probe_tag.is_some();
            if let Some(tag) = probe_tag {
                let e = probed
                    .entry((canonical(remote), tag))
                    .or_insert(datagram.len());
                *e = (*e).min(datagram.len());
            }
            let decodes_as_init = matches!(Packet::decode(&datagram), Ok(Packet::Init(_)));
            if matches!(Packet::decode(&datagram), Ok(Packet::Data(..))) {
                *data_in.entry(canonical(remote)).or_default() += datagram.len();
            }
            let state_before = server.retained_state();
            let sessions_before = server.session_count();
            let answer = server.handle(now, remote, local(selector), &datagram, &mut resp);
            if let Some(t) = answer {
                assert!(
                    t.size <= INIT_AMPLIFICATION * datagram.len(),
                    "amplification: {} byte answer to a {} byte datagram",
                    t.size,
                    datagram.len()
                );
                if is_probe_type {
                    assert!(
                        t.size <= datagram.len(),
                        "answer to a PROBE larger than the PROBE"
                    );
                }
                assert_eq!(
                    t.destination,
                    canonical(remote),
                    "answer not sent to the source"
                );
                if resp[0] == 0 {
                    // VERSIONS (PROTOCOL.md §3.9): only for a probe-sized datagram of another
                    // version, and carrying back its first 32 bytes.
                    assert!(datagram.len() >= 256, "VERSIONS to a short datagram");
                    assert!(
                        datagram[0] != 0 && datagram[0] != volley_proto::VERSION,
                        "VERSIONS to version {}",
                        datagram[0]
                    );
                    assert_eq!(&resp[3..t.size], &datagram[..32], "VERSIONS echo");
                } else {
                    match Packet::decode(&resp[..t.size]).expect("the server's answer decodes") {
                        Packet::Offer(_) => assert!(decodes_as_probe, "OFFER for a non-PROBE"),
                        Packet::CookieChange(_) => {
                            assert!(
                                t.size <= datagram.len(),
                                "COOKIE_CHANGE larger than the INIT"
                            )
                        }
                        Packet::Accept(_) => {
                            verified.insert(t.destination);
                        }
                        Packet::Redirect(rd) => {
                            assert!(decodes_as_init, "REDIRECT for a non-INIT");
                            assert!(t.size <= datagram.len(), "REDIRECT larger than the INIT");
                            for named in rd.servers() {
                                assert!(
                                    peers.contains(&named),
                                    "REDIRECT names a non-peer {named}"
                                );
                                assert_ne!(named, t.destination, "REDIRECT names the client");
                            }
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
            }
            let accepted = answer.is_some_and(|t| resp[1] == kind::ACCEPT && t.size >= 2);
            if server.session_count() > sessions_before {
                assert!(accepted, "a session was created without an ACCEPT");
                assert_eq!(
                    server.session_count(),
                    sessions_before + 1,
                    "one INIT, one session"
                );
            }
            if decodes_as_probe {
                assert!(
                    server.retained_state() <= state_before + 1,
                    "a PROBE left more than one held entry behind"
                );
            }
            assert!(
                server.load(now).held as usize <= MAX_HELD,
                "held queue beyond its bound"
            );
        }

        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let mut sent = 0;
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            assert!(t.size <= MAX_DATAGRAM_LEN);
            match Packet::decode(&buf[..t.size]) {
                Ok(Packet::Data(..)) if !verified.contains(&t.destination) => {
                    // Path challenges to an address under validation: at most 3× what it sent.
                    let out = data_out.entry(t.destination).or_default();
                    *out += t.size;
                    let got = data_in.get(&t.destination).copied().unwrap_or(0);
                    assert!(
                        *out <= 3 * got,
                        "{} DATA bytes to unverified {} which sent {got}",
                        *out,
                        t.destination
                    );
                }
                Ok(Packet::Data(..)) => {}
                Ok(Packet::Offer(offer)) => {
                    let bound = probed.get(&(t.destination, offer.tag));
                    assert!(
                        bound.is_some(),
                        "held OFFER to {} never probed",
                        t.destination
                    );
                    assert!(
                        bound.is_some_and(|b| t.size <= *b),
                        "held OFFER larger than its probe"
                    );
                }
                other => panic!("poll_transmit sent {other:?}"),
            }
            sent += 1;
            assert!(sent < 100_000, "poll_transmit does not terminate");
        }
        while let Some(event) = server.poll_event() {
            match event {
                ServerEvent::Opened { id, remote, client } => {
                    assert!(
                        verified.contains(&remote),
                        "session opened without an ACCEPT"
                    );
                    if let Some(list) = server.allow_list() {
                        assert!(list.contains(&client.key), "session for an unlisted key");
                    }
                    opened.push(id);
                }
                // At most MAX_DATAGRAM bytes, and nothing from an incomplete set of pieces.
                ServerEvent::Datagram { data, .. } => {
                    run.deliveries.push((record, ledger.check(now, &data)));
                }
                _ => {}
            }
        }
        // A session that validly moved may send to its new address from now on.
        for &id in &opened {
            if let Some(remote) = server.remote(id) {
                verified.insert(remote);
            }
        }
        let stats = server.stats();
        assert_eq!(
            stats.amplification_suppressed, 0,
            "amplification bug guard fired"
        );
        // Every datagram put together took two or more pieces, each counted once.
        assert!(
            2 * stats.data_reassembled <= stats.data_fragments,
            "{} datagrams reassembled from {} fragments",
            stats.data_reassembled,
            stats.data_fragments
        );
    }
    run.stats = *server.stats();
    run
}
