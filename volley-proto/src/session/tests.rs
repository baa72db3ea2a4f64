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
    .with_migration()
    .serving();
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

/// The replies among `results`.
fn replies(results: Vec<Result<Delivered, DataDrop>>) -> Vec<Reply> {
    results
        .into_iter()
        .filter_map(|r| match r {
            Ok(Delivered::Reply(reply)) => Some(reply),
            _ => None,
        })
        .collect()
}

/// The requests among `results`, as (id, body).
fn requests(results: Vec<Result<Delivered, DataDrop>>) -> Vec<(u32, Bytes)> {
    results
        .into_iter()
        .filter_map(|r| match r {
            Ok(Delivered::Request { id, body }) => Some((id, body)),
            _ => None,
        })
        .collect()
}

fn report(us: u32) -> LoadReport {
    LoadReport {
        expected_us: us,
        in_flight: 3,
        capacity: 4,
    }
}

#[test]
fn p1_replies_find_their_requests_by_id_in_any_order_and_teach_the_report_and_reply_time() {
    let t0 = Instant::now();
    let (mut x, mut y) = pair(t0);
    let ids: Vec<u32> = (0..3u32)
        .map(|i| x.send_request(t0, Bytes::from(vec![i as u8; 3])).unwrap())
        .collect();
    assert_eq!(ids, vec![0, 1, 2], "ids in order");
    assert_eq!(x.requests_in_flight(), 3);
    assert_eq!(x.load_report(), None);
    let got = requests(deliver(&mut x, &mut y, t0));
    assert_eq!(got.len(), 3);
    assert_eq!(y.requests_in_flight(), 3);
    // Answered last first, 10 ms on.
    let t1 = t0 + Duration::from_millis(10);
    for (id, body) in got.iter().rev() {
        let mut answer = b"re:".to_vec();
        answer.extend_from_slice(body);
        y.send_reply(*id, ReplyStatus::OK, report(100 + id), answer.into())
            .unwrap();
    }
    assert_eq!(y.requests_in_flight(), 0);
    let back = replies(deliver(&mut y, &mut x, t1));
    assert_eq!(back.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 1, 0]);
    for r in &back {
        assert_eq!(
            &r.body[..],
            &[b'r', b'e', b':', r.id as u8, r.id as u8, r.id as u8]
        );
        assert_eq!(r.status, ReplyStatus::OK);
        assert_eq!(r.elapsed, Duration::from_millis(10));
    }
    assert_eq!(x.requests_in_flight(), 0);
    // The latest report (the last reply to arrive: request 0's) and when it came.
    assert_eq!(x.load_report(), Some((report(100), t1)));
    assert_eq!(x.reply_time(), Some(Duration::from_millis(10)));
    let s = x.stats();
    assert_eq!(
        (s.requests_sent, s.replies_received, s.replies_unknown),
        (3, 3, 0)
    );
    let s = y.stats();
    assert_eq!((s.requests_received, s.replies_sent), (3, 3));
    // The next id follows on; a DROPPED reply does not feed the reply time.
    assert_eq!(x.send_request(t1, Bytes::new()).unwrap(), 3);
    let (id, _) = requests(deliver(&mut x, &mut y, t1)).pop().unwrap();
    y.send_reply(id, ReplyStatus::DROPPED, report(7), Bytes::new())
        .unwrap();
    let t2 = t1 + Duration::from_millis(90);
    let r = replies(deliver(&mut y, &mut x, t2)).pop().unwrap();
    assert_eq!((r.id, r.status, r.body.len()), (3, ReplyStatus::DROPPED, 0));
    assert_eq!(x.reply_time(), Some(Duration::from_millis(10)));
    assert_eq!(x.load_report(), Some((report(7), t2)));
}

#[test]
fn p1_the_asking_side_keeps_its_limit_and_ids_and_each_side_its_direction() {
    let t0 = Instant::now();
    let (mut x, mut y) = pair(t0);
    for id in 0..MAX_REQUESTS as u32 {
        x.send_request_with_id(t0, id * 2, Bytes::new()).unwrap();
    }
    // (They fill the send queue too: sent.)
    let _ = drain(&mut x, t0);
    let refused = x.send_request(t0, Bytes::from_static(b"one more"));
    assert_eq!(
        refused,
        Err((SendError::TooManyRequests, Bytes::from_static(b"one more")))
    );
    assert!(x.forget_request(10));
    assert!(!x.forget_request(10), "forgotten once");
    assert_eq!(
        x.send_request_with_id(t0, 12, Bytes::new()).unwrap_err().0,
        SendError::RequestInFlight
    );
    // The allocator skips the ids in flight (0, 2, 4, … are; 10 is free again).
    assert_eq!(x.send_request(t0, Bytes::new()), Ok(1));
    assert_eq!(
        x.send_request_with_id(t0, 1_000_000, vec![0u8; MAX_DATAGRAM + 1].into())
            .unwrap_err()
            .0,
        SendError::TooLarge,
        "the size is checked first"
    );
    assert_eq!(
        x.send_request(t0, Bytes::new()).unwrap_err().0,
        SendError::TooManyRequests,
        "1,024 in flight again"
    );
    // Requests go client → server, replies back.
    assert_eq!(
        y.send_request(t0, Bytes::new()).unwrap_err().0,
        SendError::WrongDirection
    );
    assert_eq!(
        x.send_reply(0, ReplyStatus::OK, report(1), Bytes::new())
            .unwrap_err()
            .0,
        SendError::WrongDirection
    );
    assert_eq!(
        y.send_reply(0, ReplyStatus::OK, report(1), Bytes::new())
            .unwrap_err()
            .0,
        SendError::UnknownRequest,
        "nothing received yet"
    );
    let mut fresh = pair(t0).0;
    assert_eq!(
        fresh
            .send_request(t0, vec![0u8; MAX_DATAGRAM + 1].into())
            .unwrap_err()
            .0,
        SendError::TooLarge
    );
    fresh.close(CloseCode::NORMAL);
    assert_eq!(
        fresh.send_request(t0, Bytes::new()).unwrap_err().0,
        SendError::Closed
    );
}

#[test]
fn p1_a_duplicate_request_id_in_flight_is_dropped_and_counted() {
    let t0 = Instant::now();
    let (mut x, mut y) = pair(t0);
    x.send_request_with_id(t0, 5, Bytes::from_static(b"first"))
        .unwrap();
    // The caller gave up on it, and its id was used again while the server still holds it.
    x.forget_request(5);
    x.send_request_with_id(t0, 5, Bytes::from_static(b"second"))
        .unwrap();
    let got = deliver(&mut x, &mut y, t0);
    assert_eq!(
        got,
        vec![
            Ok(Delivered::Request {
                id: 5,
                body: Bytes::from_static(b"first")
            }),
            Err(DataDrop::DuplicateRequest)
        ]
    );
    assert_eq!(y.stats().requests_duplicate, 1);
    assert_eq!(y.requests_in_flight(), 1);
    // Once answered, the id may come again.
    y.send_reply(5, ReplyStatus::OK, report(1), Bytes::new())
        .unwrap();
    x.send_request_with_id(t0, 5, Bytes::new()).unwrap_err();
    let _ = deliver(&mut y, &mut x, t0);
    x.send_request_with_id(t0, 5, Bytes::from_static(b"third"))
        .unwrap();
    assert_eq!(requests(deliver(&mut x, &mut y, t0)).len(), 1);
}

#[test]
fn p1_a_reply_for_an_unknown_forgotten_or_answered_id_is_counted_and_dropped() {
    let t0 = Instant::now();
    let (mut x, mut y) = pair(t0);
    x.send_request(t0, Bytes::from_static(b"a")).unwrap();
    x.send_request(t0, Bytes::from_static(b"b")).unwrap();
    let _ = deliver(&mut x, &mut y, t0);
    // The caller of request 0 stopped waiting.
    assert!(x.forget_request(0));
    y.send_reply(0, ReplyStatus::OK, report(11), Bytes::from_static(b"late"))
        .unwrap();
    y.send_reply(1, ReplyStatus::OK, report(12), Bytes::from_static(b"b"))
        .unwrap();
    // A forged second reply to 1 and one to an id never used (the server's own frames, sealed
    // as they are: authentic, and wrong).
    let mut again = vec![frame::REPLY];
    again.extend_from_slice(&request::reply_header(1, ReplyStatus::OK, report(13)));
    y.queue_raw(again.into());
    let mut never = vec![frame::REPLY];
    never.extend_from_slice(&request::reply_header(77, ReplyStatus::OK, report(14)));
    never.extend_from_slice(b"?");
    y.queue_raw(never.into());
    let got = deliver(&mut y, &mut x, t0);
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], Err(DataDrop::UnknownReply));
    assert!(matches!(&got[1], Ok(Delivered::Reply(r)) if r.id == 1 && &r.body[..] == b"b"));
    assert_eq!(got[2], Err(DataDrop::UnknownReply));
    assert_eq!(got[3], Err(DataDrop::UnknownReply));
    let s = x.stats();
    assert_eq!((s.replies_received, s.replies_unknown), (1, 3));
    // Their reports are authentic and fresh: the latest is taken all the same.
    assert_eq!(x.load_report(), Some((report(14), t0)));
    assert!(x.close_reason().is_none(), "the session goes on");
}

#[test]
fn p1_requests_and_replies_larger_than_a_packet_cross_in_frame_fragments() {
    let t0 = Instant::now();
    for (max_packet, suite) in [
        (MAX_DATAGRAM_LEN, Suite::ChaCha20Poly1305),
        (MIN_PACKET, Suite::Aes256Gcm),
    ] {
        let cfg = SessionConfig {
            max_packet,
            ..SessionConfig::default()
        };
        let (mut x, mut y) = pair_with(t0, suite, cfg);
        let single = max_packet - DATA_HEADER_LEN - 1 - AEAD_TAG_LEN;
        for len in [
            single - REQUEST_HEADER_LEN,
            single - REQUEST_HEADER_LEN + 1,
            9_000,
            MAX_DATAGRAM,
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let id = x.send_request(t0, body.clone().into()).unwrap();
            let mut packets = drain(&mut x, t0);
            assert!(packets.iter().all(|(p, _)| p.len() <= max_packet));
            let whole = len + REQUEST_HEADER_LEN <= single;
            assert_eq!(packets.len() == 1, whole, "{len} B");
            if !whole {
                // Every piece is a FRAME_FRAGMENT, as few as fit the whole frame.
                assert_eq!(
                    packets.len(),
                    (1 + REQUEST_HEADER_LEN + len).div_ceil(single - FRAGMENT_HEADER_LEN)
                );
            }
            packets.rotate_right(1);
            let got = requests(
                packets
                    .iter()
                    .map(|(p, _)| open(&mut y, t0, X, p))
                    .collect(),
            );
            assert_eq!(
                got,
                vec![(id, Bytes::from(body.clone()))],
                "{len} B, {max_packet}"
            );
            // The reply: as large, plus its 13-byte header.
            let mut answer = body;
            answer.reverse();
            y.send_reply(id, ReplyStatus::OK, report(5), answer.clone().into())
                .unwrap();
            let mut packets = drain(&mut y, t0);
            assert!(packets.iter().all(|(p, _)| p.len() <= max_packet));
            packets.reverse();
            let back = replies(
                packets
                    .iter()
                    .map(|(p, _)| open(&mut x, t0, Y, p))
                    .collect(),
            );
            assert_eq!(back.len(), 1, "{len} B reply, {max_packet}");
            assert_eq!((back[0].id, &back[0].body[..]), (id, &answer[..]));
            assert_eq!(x.reassembly_held() + y.reassembly_held(), 0);
        }
        assert_eq!(x.stats().replies_received, 4);
    }
}

#[test]
fn p2_a_reply_costs_its_id_status_and_an_eight_byte_report() {
    let t0 = Instant::now();
    let (mut x, mut y) = pair(t0);
    x.send_datagram(b"hello").unwrap();
    let datagram = drain(&mut x, t0)[0].0.len();
    x.send_request(t0, Bytes::from_static(b"hello")).unwrap();
    let request = drain(&mut x, t0);
    assert_eq!(request[0].0.len(), datagram + REQUEST_HEADER_LEN);
    let _ = open(&mut y, t0, X, &request[0].0);
    y.send_reply(0, ReplyStatus::OK, report(1), Bytes::from_static(b"hello"))
        .unwrap();
    let reply = drain(&mut y, t0);
    // id (4) + status (1) + report (8) more than the datagram of the same bytes.
    assert_eq!(LOAD_REPORT_LEN, 8);
    assert_eq!(report(1).encode().len(), LOAD_REPORT_LEN);
    assert_eq!(reply[0].0.len(), datagram + 4 + 1 + LOAD_REPORT_LEN);
    assert_eq!(REPLY_HEADER_LEN, 4 + 1 + LOAD_REPORT_LEN);
}

#[test]
fn p1_malformed_request_reply_and_frame_fragment_bodies_are_dropped_and_counted() {
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    let t0 = Instant::now();
    let (mut x, mut y) = pair(t0);
    // A few requests in flight each way, so that some random replies and duplicates hit.
    for _ in 0..4 {
        x.send_request(t0, Bytes::from_static(b"q")).unwrap();
    }
    let _ = deliver(&mut x, &mut y, t0);
    let before = [x.stats(), y.stats()];
    let mut now = t0;
    let mut sent = [0u64; 2];
    let mut ok = [0u64; 2];
    for round in 0..20_000u32 {
        now += Duration::from_micros(100);
        // Short bodies often (below the headers), any type of the three, either direction.
        let len = match rng.next_u32() % 4 {
            0 => (rng.next_u32() % 16) as usize,
            _ => (rng.next_u32() % 1_400) as usize,
        };
        let mut plain = vec![0u8; 1 + len];
        rng.fill_bytes(&mut plain);
        plain[0] = [frame::REQUEST, frame::REPLY, frame::FRAME_FRAGMENT][round as usize % 3];
        if plain[0] == frame::FRAME_FRAGMENT && plain.len() > 7 {
            // Ids and counts that collide, and pieces that start with a frame type at times.
            plain[1..5].copy_from_slice(&(rng.next_u32() % 4).to_be_bytes());
            plain[6] = 2 + (rng.next_u32() % 3) as u8;
            plain[5] = (rng.next_u32() % u32::from(plain[6])) as u8;
            plain[7] = [frame::DATAGRAM, frame::REQUEST, frame::REPLY, frame::PING]
                [round as usize / 3 % 4];
        } else if plain.len() > 4 {
            // Ids that collide with each other and with the requests in flight.
            plain[1..5].copy_from_slice(&(rng.next_u32() % 8).to_be_bytes());
        }
        let to_server = round % 2 == 0;
        let (from, to, src) = if to_server {
            (&mut x, &mut y, X)
        } else {
            (&mut y, &mut x, Y)
        };
        from.queue_raw(plain.into());
        for (p, _) in drain(from, now) {
            sent[usize::from(to_server)] += 1;
            if open(to, now, src, &p).is_ok() {
                ok[usize::from(to_server)] += 1;
            }
        }
        let _ = to.handle_timeout(now);
    }
    // Every packet authentic: each either delivered something (or kept a piece) or was counted
    // as malformed, a duplicate request or an unknown reply — never a panic, never silence.
    for (side, s) in [(1, y.stats()), (0, x.stats())] {
        let drops = s.dropped_bad_frame + s.requests_duplicate + s.replies_unknown;
        let was = before[side];
        let drops = drops - was.dropped_bad_frame - was.requests_duplicate - was.replies_unknown;
        assert_eq!(
            s.packets_received - was.packets_received,
            sent[side],
            "{s:?}"
        );
        assert_eq!(ok[side] + drops, sent[side], "{s:?}");
        assert!(s.dropped_bad_frame > 0 && s.dropped_auth == 0, "{s:?}");
    }
    assert!(y.stats().requests_duplicate > 0 && x.stats().replies_unknown > 0);
    assert!(y.reassembly_held() <= MAX_REASSEMBLY_BYTES);
    assert!(x.close_reason().is_none() && y.close_reason().is_none());
}

#[test]
fn p1_frame_fragments_make_only_requests_and_replies() {
    let t0 = Instant::now();
    let (mut x, mut y) = pair(t0);
    // Two pieces whose frame would be a DATAGRAM `hi`: a large datagram goes in FRAGMENTs, so
    // this is malformed.
    // FRAME_FRAGMENT, id `id`, index `index` of 2, the piece `bytes`.
    let piece = |id: u8, index: u8, bytes: &[u8]| {
        let mut plain = vec![frame::FRAME_FRAGMENT, 0, 0, 0, id, index, 2];
        plain.extend_from_slice(bytes);
        Bytes::from(plain)
    };
    x.queue_raw(piece(9, 0, &[frame::DATAGRAM, b'h']));
    x.queue_raw(piece(9, 1, b"i"));
    assert_eq!(
        deliver(&mut x, &mut y, t0),
        vec![Ok(Delivered::Keepalive), Err(DataDrop::BadFrame)]
    );
    assert_eq!(y.stats().dropped_bad_frame, 1);
    assert_eq!(y.stats().datagrams_received, 0);
    // The same two pieces making a REQUEST are one.
    x.queue_raw(piece(10, 0, &[frame::REQUEST, 0, 0]));
    x.queue_raw(piece(10, 1, &[0, 4, b'?']));
    assert_eq!(
        deliver(&mut x, &mut y, t0),
        vec![
            Ok(Delivered::Keepalive),
            Ok(Delivered::Request {
                id: 4,
                body: Bytes::from_static(b"?")
            })
        ]
    );
}
