//! Unit tests of a session pair: keepalive, liveness, close, tampering, key updates and
//! migration.

use super::*;

const X: &str = "127.0.0.1:1";
const Y: &str = "127.0.0.1:2";

/// Session x at address X (client-like) and y at Y (server-like, follows x when it moves).
fn pair_with(now: Instant, suite: Suite, cfg: SessionConfig) -> (Session, Session) {
    let a = [1u8; 32];
    let b = [2u8; 32];
    let x = Session::new(
        now,
        1,
        2,
        Y.parse().unwrap(),
        SessionKeys::new(suite, &a, &b),
        cfg,
    );
    let y = Session::new(
        now,
        2,
        1,
        X.parse().unwrap(),
        SessionKeys::new(suite, &b, &a),
        cfg,
    )
    .with_migration();
    (x, y)
}

fn pair(now: Instant) -> (Session, Session) {
    pair_with(now, Suite::ChaCha20Poly1305, SessionConfig::default())
}

/// Every packet `from` has queued, as (bytes, destination).
fn drain(from: &mut Session, now: Instant) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = vec![];
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    while let Some(t) = from.poll_transmit(now, &mut buf) {
        out.push((buf[..t.size].to_vec(), t.destination));
    }
    out
}

fn open(to: &mut Session, now: Instant, src: &str, pkt: &[u8]) -> Result<Delivered, DataDrop> {
    let crate::packet::Packet::Data(h, ct) = crate::packet::Packet::decode(pkt).unwrap() else {
        panic!("not data")
    };
    to.handle_data(now, src.parse().unwrap(), h, ct)
}

/// Delivers everything `from` queued to `to`, as coming from `from`'s address as `to`
/// knows it.
fn deliver(from: &mut Session, to: &mut Session, now: Instant) -> Vec<Result<Delivered, DataDrop>> {
    let src = to.remote().to_string();
    drain(from, now)
        .into_iter()
        .map(|(p, _)| open(to, now, &src, &p))
        .collect()
}

#[test]
fn r5_keepalive_then_idle_timeout() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(a.poll_timeout(), Some(t1));
    assert_eq!(a.handle_timeout(t1), None);
    assert_eq!(deliver(&mut a, &mut b, t1), vec![Ok(Delivered::Keepalive)]);
    assert_eq!(deliver(&mut b, &mut a, t1), vec![Ok(Delivered::Keepalive)]);
    // b goes silent: a dies 5 s after the last thing it heard.
    let mut t = t1;
    for _ in 0..4 {
        t += Duration::from_secs(1);
        assert_eq!(a.handle_timeout(t), None);
    }
    assert_eq!(
        a.handle_timeout(t1 + Duration::from_secs(5)),
        Some(CloseReason::IdleTimeout)
    );
    assert_eq!(a.send_datagram(b"x"), Err(SendError::Closed));
}

#[test]
fn r9_rtt_samples_come_from_unambiguous_ping_pong_round_trips() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    assert_eq!(a.srtt(), None);
    // A keepalive PING answered 10 ms later: the first sample.
    let t1 = t0 + Duration::from_secs(1);
    a.handle_timeout(t1);
    deliver(&mut a, &mut b, t1);
    let t2 = t1 + Duration::from_millis(10);
    deliver(&mut b, &mut a, t2);
    assert_eq!(a.srtt(), Some(Duration::from_millis(10)));
    // A PING lost, a second sent a second later, its PONG after 500 ms: which PING does it
    // answer? Ambiguous, so no sample (Karn's rule).
    let t3 = t2 + Duration::from_secs(1);
    a.handle_timeout(t3);
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    while a.poll_transmit(t3, &mut buf).is_some() {}
    let t4 = t3 + Duration::from_secs(1);
    a.handle_timeout(t4);
    deliver(&mut a, &mut b, t4);
    deliver(&mut b, &mut a, t4 + Duration::from_millis(500));
    assert_eq!(a.srtt(), Some(Duration::from_millis(10)));
    // The next clean round trip samples again.
    let t5 = t4 + Duration::from_millis(1_500);
    a.handle_timeout(t5);
    deliver(&mut a, &mut b, t5);
    deliver(&mut b, &mut a, t5 + Duration::from_millis(18));
    assert_eq!(a.srtt(), Some(Duration::from_millis(11)));
}

#[test]
fn r5_small_buffer_keeps_the_frame() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.send_datagram(&[7u8; 100]).unwrap();
    let mut small = [0u8; 64];
    assert_eq!(a.poll_transmit(t0, &mut small), None);
    assert_eq!(
        deliver(&mut a, &mut b, t0),
        vec![Ok(Delivered::Datagram(vec![7u8; 100].into()))]
    );
}

#[test]
fn r5_orderly_close_reaches_peer() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.send_datagram(b"last").unwrap();
    a.close(CloseCode::GOING_AWAY);
    assert_eq!(
        deliver(&mut a, &mut b, t0),
        vec![
            Ok(Delivered::Datagram(bytes::Bytes::from_static(b"last"))),
            Ok(Delivered::Closed(CloseCode::GOING_AWAY))
        ]
    );
    assert_eq!(
        b.close_reason(),
        Some(CloseReason::Remote(CloseCode::GOING_AWAY))
    );
    assert!(a.is_drained());
}

#[test]
fn s4_tampered_data_is_dropped() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.send_datagram(b"secret").unwrap();
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = a.poll_transmit(t0, &mut buf).unwrap().size;
    assert!(
        !buf[..n].windows(6).any(|w| w == b"secret"),
        "plaintext on the wire"
    );
    for i in 2..n {
        let mut t = buf;
        t[i] ^= 0x80;
        if crate::packet::Packet::decode(&t[..n]).is_ok() {
            assert!(
                open(&mut b, t0, X, &t[..n]).is_err(),
                "flip at {i} accepted"
            );
        }
    }
    assert_eq!(
        open(&mut b, t0, X, &buf[..n]),
        Ok(Delivered::Datagram(bytes::Bytes::from_static(b"secret")))
    );
    assert_eq!(open(&mut b, t0, X, &buf[..n]), Err(DataDrop::Replay));
    assert_eq!(b.stats().dropped_replay, 1);
}

fn rekeying(packets: u64) -> SessionConfig {
    SessionConfig {
        rekey_after_packets: packets,
        idle_timeout: Duration::from_secs(60),
        ..SessionConfig::default()
    }
}

#[test]
fn a3_rekey_loses_and_rejects_nothing_across_reordered_switches() {
    for suite in [Suite::ChaCha20Poly1305, Suite::Aes256Gcm] {
        let t0 = Instant::now();
        let (mut a, mut b) = pair_with(t0, suite, rekeying(50));
        let mut delivered = 0u64;
        let mut sent = 0u64;
        // The last packet of each batch, held back until after the next batch.
        let mut held: [Option<Vec<u8>>; 2] = [None, None];
        // 8 s of 500 packets/s each way, every batch of 16 delivered in reverse order, its
        // newest packet after the next batch: reordering across every key switch.
        for step in 0..250u64 {
            let now = t0 + Duration::from_millis(step * 32);
            for back in [false, true] {
                let (x, y) = if back {
                    (&mut b, &mut a)
                } else {
                    (&mut a, &mut b)
                };
                for i in 0..16u64 {
                    x.send_datagram(&(step * 16 + i).to_be_bytes()).unwrap();
                    sent += 1;
                }
                let mut batch: Vec<Vec<u8>> = drain(x, now).into_iter().map(|(p, _)| p).collect();
                let newest = batch.pop();
                batch.reverse();
                batch.extend(std::mem::replace(&mut held[usize::from(back)], newest));
                let src = if back { Y } else { X };
                for p in batch {
                    match open(y, now, src, &p) {
                        Ok(Delivered::Datagram(_)) => delivered += 1,
                        Ok(_) => {}
                        Err(e) => panic!("{suite:?} step {step}: {e:?}"),
                    }
                }
            }
        }
        assert_eq!(delivered + 2, sent, "{suite:?}: all but the two still held");
        for (x, y) in [(&a, &b), (&b, &a)] {
            let (xs, ys) = (x.stats(), y.stats());
            // One update per second at most (KEY_UPDATE_MIN_INTERVAL), 8 s of traffic.
            assert!(xs.key_updates_sent >= 7, "{xs:?}");
            assert_eq!(xs.key_updates_sent, ys.key_updates_received);
            assert_eq!(x.key_epochs().0, y.key_epochs().1);
            assert!(
                ys.opened_with_previous_key > 0,
                "reordering crossed a switch"
            );
            assert_eq!(ys.dropped_auth + ys.dropped_replay, 0);
        }
    }
}

#[test]
fn a3_previous_key_is_erased_after_its_lifetime() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair_with(t0, Suite::ChaCha20Poly1305, rekeying(1));
    a.send_datagram(b"old").unwrap();
    let old = drain(&mut a, t0);
    let t1 = t0 + Duration::from_secs(1);
    a.send_datagram(b"new").unwrap();
    let new = drain(&mut a, t1);
    assert_eq!(a.stats().key_updates_sent, 1);
    assert!(matches!(
        open(&mut b, t1, X, &new[0].0),
        Ok(Delivered::Datagram(_))
    ));
    assert_eq!(b.key_epochs().1, 1);
    // The epoch-0 packet, reordered: opens within the lifetime...
    let mut late = old[0].0.clone();
    assert!(b.recv.previous_until().is_some());
    assert_eq!(
        b.poll_timeout().map(|t| t <= t1 + PREVIOUS_KEY_LIFETIME),
        Some(true)
    );
    b.handle_timeout(t1 + PREVIOUS_KEY_LIFETIME);
    // ...but not after: the key is gone.
    assert!(b.recv.previous_until().is_none());
    assert_eq!(
        open(&mut b, t1 + PREVIOUS_KEY_LIFETIME, X, &late),
        Err(DataDrop::Auth)
    );
    late[1] = 0x10;
    assert_eq!(b.stats().opened_with_previous_key, 0);
}

#[test]
fn a3_phase_nibble_is_bound_and_a_forged_phase_switches_nothing() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.send_datagram(b"x").unwrap();
    let p = drain(&mut a, t0).remove(0).0;
    for phase in 1..16u8 {
        let mut f = p.clone();
        f[1] = 0x10 | phase;
        assert_eq!(
            open(&mut b, t0, X, &f),
            Err(DataDrop::Auth),
            "phase {phase}"
        );
    }
    assert_eq!(b.key_epochs(), (0, 0));
    assert!(matches!(
        open(&mut b, t0, X, &p),
        Ok(Delivered::Datagram(_))
    ));
}

#[test]
fn a4_a_validated_new_address_moves_the_session() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair(t0);
    let moved = "192.0.2.7:4000";
    // The client's NAT rebinds: its next packet comes from `moved`.
    c.send_datagram(b"from the new address").unwrap();
    let (p, _) = drain(&mut c, t0).remove(0);
    assert!(matches!(
        open(&mut s, t0, moved, &p),
        Ok(Delivered::Datagram(_))
    ));
    assert_eq!(
        s.remote(),
        X.parse().unwrap(),
        "not moved before validation"
    );
    assert_eq!(s.pending_path(), Some(moved.parse().unwrap()));
    // The server answers its datagram; the answer still goes to the old address, and only
    // the challenge goes to the new one.
    s.send_datagram(b"reply").unwrap();
    let out = drain(&mut s, t0);
    let to_new: Vec<_> = out.iter().filter(|(_, d)| d.to_string() == moved).collect();
    assert_eq!(to_new.len(), 1, "{out:?}");
    assert_eq!(out.len(), 2);
    // The client answers the challenge (from wherever it is now: `moved`).
    let (challenge, _) = to_new[0];
    assert_eq!(open(&mut c, t0, Y, challenge), Ok(Delivered::Keepalive));
    let (resp, dest) = drain(&mut c, t0).remove(0);
    assert_eq!(dest, Y.parse().unwrap());
    assert_eq!(open(&mut s, t0, moved, &resp), Ok(Delivered::Keepalive));
    assert_eq!(s.remote(), moved.parse().unwrap());
    assert_eq!(s.stats().migrations, 1);
    s.send_datagram(b"after").unwrap();
    assert!(
        drain(&mut s, t0)
            .iter()
            .all(|(_, d)| d.to_string() == moved)
    );
}

#[test]
fn a4_replayed_or_reordered_packets_from_a_new_address_move_nothing() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair(t0);
    c.send_datagram(b"1").unwrap();
    c.send_datagram(b"2").unwrap();
    let pkts = drain(&mut c, t0);
    assert!(open(&mut s, t0, X, &pkts[1].0).is_ok());
    // A replay of a seen packet from elsewhere: dropped before anything.
    assert_eq!(
        open(&mut s, t0, "192.0.2.9:9", &pkts[1].0),
        Err(DataDrop::Replay)
    );
    // An unseen but older packet (reordered) from elsewhere: delivered, moves nothing.
    assert!(open(&mut s, t0, "192.0.2.9:9", &pkts[0].0).is_ok());
    assert_eq!(s.pending_path(), None);
    assert!(drain(&mut s, t0).is_empty(), "nothing sent anywhere");
    assert_eq!(s.remote(), X.parse().unwrap());
}

#[test]
fn a4_a_spoofed_source_never_gets_the_sessions_traffic() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair(t0);
    let victim = "198.51.100.1:40053";
    // An on-path attacker races a genuine fresh packet to the server from a spoofed source.
    c.send_datagram(b"genuine").unwrap();
    let (p, _) = drain(&mut c, t0).remove(0);
    let received = p.len();
    assert!(open(&mut s, t0, victim, &p).is_ok());
    // The genuine copy is then a replay.
    assert_eq!(open(&mut s, t0, X, &p), Err(DataDrop::Replay));
    // The server keeps sending its session's traffic to the client; the victim gets at most
    // 3× what "it" sent, all of it challenges, through every retry.
    let mut to_victim = 0;
    let mut now = t0;
    for i in 0..40 {
        s.send_datagram(format!("reply {i}").as_bytes()).unwrap();
        for (pkt, dest) in drain(&mut s, now) {
            if dest.to_string() == victim {
                to_victim += pkt.len();
            } else {
                assert_eq!(dest, X.parse().unwrap());
                // The real client keeps the session alive.
                let _ = open(&mut c, now, Y, &pkt);
            }
        }
        for (pkt, _) in drain(&mut c, now) {
            let _ = open(&mut s, now, X, &pkt);
        }
        now += Duration::from_millis(100);
        s.handle_timeout(now);
    }
    assert!(
        to_victim > 0 && to_victim <= 3 * received,
        "{to_victim} vs {received}"
    );
    assert_eq!(s.remote(), X.parse().unwrap());
    assert_eq!(s.pending_path(), None, "validation abandoned");
    assert_eq!(s.stats().migrations, 0);
}

#[test]
fn a4_a_clients_session_never_migrates() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair(t0);
    s.send_datagram(b"x").unwrap();
    let (p, _) = drain(&mut s, t0).remove(0);
    assert_eq!(
        open(&mut c, t0, "192.0.2.1:1", &p),
        Err(DataDrop::WrongSource)
    );
    assert_eq!(c.stats().dropped_wrong_source, 1);
    assert!(matches!(
        open(&mut c, t0, Y, &p),
        Ok(Delivered::Datagram(_))
    ));
}

/// The datagrams `results` delivered.
fn datagrams(results: Vec<Result<Delivered, DataDrop>>) -> Vec<Bytes> {
    results
        .into_iter()
        .filter_map(|r| match r {
            Ok(Delivered::Datagram(d)) => Some(d),
            _ => None,
        })
        .collect()
}

#[test]
fn o4_datagrams_up_to_65535_bytes_cross_in_fragments_in_any_order_within_the_packet_size() {
    let t0 = Instant::now();
    for (max_packet, suite) in [
        (MAX_DATAGRAM_LEN, Suite::ChaCha20Poly1305),
        (MIN_PACKET, Suite::Aes256Gcm),
    ] {
        let cfg = SessionConfig {
            max_packet,
            ..SessionConfig::default()
        };
        let (mut a, mut b) = pair_with(t0, suite, cfg);
        for len in [MAX_APP_DATAGRAM + 1, 4_000, 9_000, MAX_DATAGRAM] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            a.send_datagram(&data).unwrap();
            let mut packets = drain(&mut a, t0);
            let single = max_packet - DATA_HEADER_LEN - 1 - AEAD_TAG_LEN;
            assert!(packets.len() >= 2, "{len} B went whole");
            assert!(packets.iter().all(|(p, _)| p.len() <= max_packet));
            assert_eq!(
                packets.len(),
                len.div_ceil(single - FRAGMENT_HEADER_LEN).max(2),
                "as few fragments as fit"
            );
            // Reordered: last first, then the rest.
            packets.rotate_right(1);
            let got: Vec<Bytes> = datagrams(
                packets
                    .iter()
                    .map(|(p, _)| open(&mut b, t0, X, p))
                    .collect(),
            );
            assert_eq!(
                got,
                vec![Bytes::from(data.clone())],
                "{len} B, {max_packet}"
            );
            assert_eq!(b.reassembly_held(), 0);
        }
        assert_eq!(b.reassembly_stats().reassembled, 4);
        // A datagram that fits one packet still goes whole.
        a.send_datagram(&[1u8; 100]).unwrap();
        assert_eq!(drain(&mut a, t0).len(), 1);
        // Beyond 65,535 bytes: refused at the sender.
        assert_eq!(
            a.send_datagram(&vec![0u8; MAX_DATAGRAM + 1]),
            Err(SendError::TooLarge)
        );
    }
}

#[test]
fn o4_a_lost_fragment_loses_its_datagram_only_and_frees_its_memory_after_the_timeout() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.send_datagram(&[7u8; 9_000]).unwrap();
    a.send_datagram(&[8u8; 9_000]).unwrap();
    let mut packets = drain(&mut a, t0);
    // One fragment of the first datagram is lost.
    packets.remove(2);
    let got = datagrams(
        packets
            .iter()
            .map(|(p, _)| open(&mut b, t0, X, p))
            .collect(),
    );
    assert_eq!(got, vec![Bytes::from(vec![8u8; 9_000])]);
    assert!(b.reassembly_held() > 7_000);
    let deadline = b.poll_timeout().unwrap();
    assert!(deadline <= t0 + REASSEMBLY_TIMEOUT);
    // The session lives on; the incomplete datagram goes at its deadline.
    let t1 = t0 + REASSEMBLY_TIMEOUT;
    let _ = deliver(&mut a, &mut b, t0);
    let _ = b.handle_timeout(t1);
    assert_eq!(b.reassembly_held(), 0);
    assert_eq!(b.reassembly_stats().timed_out, 1);
    assert!(b.close_reason().is_none());
}

#[test]
fn o4_a_send_queue_without_room_for_every_fragment_refuses_the_whole_datagram() {
    let t0 = Instant::now();
    let (mut a, _) = pair(t0);
    for _ in 0..MAX_SEND_QUEUE - 10 {
        a.send_datagram(b"x").unwrap();
    }
    // 47 fragments do not fit in the 10 places left: nothing of it is queued.
    assert_eq!(
        a.send_datagram(&vec![0u8; MAX_DATAGRAM]),
        Err(SendError::QueueFull)
    );
    assert_eq!(drain(&mut a, t0).len(), MAX_SEND_QUEUE - 10);
}
