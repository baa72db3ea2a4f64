//! Cookies (S3, R2, R7): validated by regeneration, bound to the client's address, the server and
//! the race; refused without state or reply when forged, tampered, expired or from another server;
//! refreshed once for a rebound client; keys rotated on a timer and never printed.

use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use ring::hmac;

use super::util::*;
use crate::client::{ClientConfig, ClientEvent, ConnectError};
use crate::cookie::{COOKIE_LEN, CookieBinding, CookieJar};
use crate::crypto::StaticKeypair;
use crate::packet::{Packet, Tag, kind};
use crate::server::{ServerConfig, ServerEndpoint, ServerEvent, ServerStats};

fn a() -> SocketAddr {
    "198.51.100.1:40000".parse().unwrap()
}

/// Where the cookie sits inside an INIT datagram.
fn cookie_range(init: &[u8]) -> std::ops::Range<usize> {
    let Ok(Packet::Init(i)) = Packet::decode(init) else {
        panic!("not an INIT")
    };
    let at = i.cookie.as_ptr() as usize - init.as_ptr() as usize;
    at..at + i.cookie.len()
}

fn with_cookie(init: &[u8], cookie: &[u8]) -> Vec<u8> {
    let r = cookie_range(init);
    assert_eq!(
        cookie.len(),
        r.len(),
        "same length keeps the INIT well-formed"
    );
    let mut out = init.to_vec();
    out[r].copy_from_slice(cookie);
    out
}

/// The one refusal counter an INIT should have moved, plus the two every INIT moves.
fn refused(set: impl FnOnce(&mut ServerStats)) -> ServerStats {
    let mut s = ServerStats {
        datagrams_received: 1,
        inits_received: 1,
        ..Default::default()
    };
    set(&mut s);
    s
}

/// Feeds `init` from `from`; asserts no reply, no queued output, no state; returns the counters it
/// moved.
fn refuse(b: &mut Bench, from: SocketAddr, init: &[u8]) -> ServerStats {
    let before = *b.server.stats();
    assert!(b.handle(from, init).is_none(), "a bad cookie got a reply");
    assert!(b.server_transmits().is_empty());
    assert!(b.server.poll_event().is_none());
    assert_eq!(b.server.session_count(), 0);
    assert_eq!(b.server.retained_state(), 0);
    server_delta(b.server.stats(), &before)
}

fn accepted(b: &mut Bench, from: SocketAddr, init: &[u8]) {
    let reply = b.handle(from, init).expect("genuine INIT refused");
    assert_eq!(reply[1], kind::ACCEPT);
}

#[test]
fn s3_a_cookie_tampered_at_any_bit_is_refused_without_state_or_reply() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut b = Bench::new(seed, |_| {});
        // Minted 5 s after the server started, so bit flips in `issued` land on both sides of the
        // lifetime.
        b.at(Duration::from_secs(5));
        let (_conn, init) = b.init_from(a());
        let r = cookie_range(&init);
        let cookie = init[r.clone()].to_vec();
        assert_eq!(cookie.len(), COOKIE_LEN);
        let issued = u32::from_be_bytes(cookie[1..5].try_into().unwrap());
        for i in 0..COOKIE_LEN {
            for bit in 0..8 {
                let mut bad = cookie.clone();
                bad[i] ^= 1 << bit;
                let delta = refuse(&mut b, a(), &with_cookie(&init, &bad));
                let want = match i {
                    0 => refused(|s| s.init_cookie_unknown_key = 1),
                    1..=4 => {
                        let stamped = u32::from_be_bytes(bad[1..5].try_into().unwrap());
                        if issued.wrapping_sub(stamped) > 10_000 {
                            refused(|s| s.init_cookie_expired = 1)
                        } else {
                            refused(|s| s.init_cookie_bad_mac = 1)
                        }
                    }
                    _ => refused(|s| s.init_cookie_bad_mac = 1),
                };
                assert_eq!(delta, want, "flip of bit {bit} in cookie byte {i}");
            }
        }
        // The untampered INIT was genuine all along.
        accepted(&mut b, a(), &init);
        assert_eq!(b.server.stats().sessions_opened, 1);
    }
}

#[test]
fn s3_forged_expired_and_wrong_server_cookies_open_nothing_and_get_no_reply() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let pool_key = StaticKeypair::generate(&mut rng);
        let k = pool_key.clone();
        let mut b = Bench::new(seed, move |c| c.keypair = k);
        let (_conn, init) = b.init_from(a());
        let genuine = init[cookie_range(&init)].to_vec();

        // Forged: random bytes under the live key id and a fresh stamp, so only the MAC can tell.
        for _ in 0..20 {
            let mut forged = [0u8; COOKIE_LEN];
            rng.fill_bytes(&mut forged);
            forged[..5].copy_from_slice(&genuine[..5]);
            let d = refuse(&mut b, a(), &with_cookie(&init, &forged));
            assert_eq!(d, refused(|s| s.init_cookie_bad_mac = 1));
        }
        // Forged with a length no cookie of ours has.
        for len in [
            1usize,
            16,
            COOKIE_LEN - 1,
            COOKIE_LEN + 1,
            crate::MAX_COOKIE_LEN,
        ] {
            let mut buf = [0u8; crate::MAX_DATAGRAM_LEN];
            let Ok(Packet::Init(mut i)) = Packet::decode(&init) else {
                panic!()
            };
            let forged = vec![0xA5; len];
            i.cookie = &forged;
            let n = i.encode(&mut buf).unwrap();
            let d = refuse(&mut b, a(), &buf[..n]);
            assert_eq!(
                d,
                refused(|s| s.init_cookie_malformed = 1),
                "{len}-byte cookie"
            );
        }
        // Presented to this server on another of its addresses: the MAC binds the server address.
        let before = *b.server.stats();
        let mut out = [0u8; crate::MAX_DATAGRAM_LEN];
        assert!(
            b.server
                .handle(b.now, a(), server_addr(7), &init, &mut out)
                .is_none()
        );
        assert_eq!(
            server_delta(b.server.stats(), &before),
            refused(|s| s.init_cookie_bad_mac = 1)
        );

        // Another server of the same pool (same static key), and one of another pool: their
        // cookie keys are their own, so the cookie is unknown to them, or fails its MAC if the
        // key ids happen to collide.
        for other_pool in [false, true] {
            let k = pool_key.clone();
            let mut other = Bench::new(seed + 1000, move |c| {
                if !other_pool {
                    c.keypair = k;
                }
            });
            other.addr = server_addr(1);
            assert_eq!(other.key == b.key, !other_pool);
            let (_c, own) = other.init_from(a());
            let own_key_id = own[cookie_range(&own)][0];
            let d = refuse(&mut other, a(), &init);
            if own_key_id == genuine[0] {
                assert_eq!(d, refused(|s| s.init_cookie_bad_mac = 1));
            } else {
                assert_eq!(d, refused(|s| s.init_cookie_unknown_key = 1));
            }
        }

        // Expired: the lifetime (10 s) has passed.
        b.now += Duration::from_millis(10_001);
        let d = refuse(&mut b, a(), &init);
        assert_eq!(d, refused(|s| s.init_cookie_expired = 1));
        assert_eq!(b.server.stats().sessions_opened, 0);
    }
}

#[test]
fn s3_a_cookie_from_another_source_address_is_not_valid_there() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut b = Bench::new(seed, |_| {});
        let (_conn, init) = b.init_from(a());
        for from in [
            "198.51.100.1:40001",
            "198.51.100.99:40000",
            "[2001:db8::1]:40000",
        ] {
            let from: SocketAddr = from.parse().unwrap();
            let before = *b.server.stats();
            let reply = b.handle(from, &init).expect("a cookie change");
            let Ok(Packet::CookieChange(cc)) = Packet::decode(&reply) else {
                panic!("not a COOKIE_CHANGE")
            };
            let Ok(Packet::Init(i)) = Packet::decode(&init) else {
                panic!()
            };
            assert_eq!(cc.tag, i.tag);
            assert_ne!(cc.cookie, i.cookie);
            let d = server_delta(b.server.stats(), &before);
            assert_eq!(d, refused(|s| s.cookie_changes_sent = 1));
            assert_eq!(b.server.session_count(), 0);
            assert_eq!(b.server.retained_state(), 0);
        }
        accepted(&mut b, a(), &init);
    }
}

#[test]
fn s3_cookies_tampered_in_flight_never_open_a_session() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, _| {});
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        sim.filter = Some(Box::new(move |_, d| {
            if d.data[1] == kind::INIT {
                let r = cookie_range(&d.data);
                let i = r.start + (rng.next_u64() as usize) % r.len();
                d.data[i] ^= 1 << (rng.next_u64() % 8);
            }
            Verdict::Pass
        }));
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.run_for(Duration::from_secs(5));
        let s = *sim.servers[0].endpoint.stats();
        // The INIT timeout from the race's answer time (20 ms floor), doubling to 1 s: 8 INITs
        // in the 3 s handshake window (0, 20, 60, 140, 300, 620, 1260, 2260 ms).
        assert_eq!(s.inits_received, 8, "8 INITs in the 3 s handshake window");
        assert_eq!(
            s.init_cookie_bad_mac + s.init_cookie_expired + s.init_cookie_unknown_key,
            8
        );
        assert_eq!(s.sessions_opened, 0);
        assert!(
            sim.sent_of(kind::ACCEPT).is_empty() && sim.sent_of(kind::COOKIE_CHANGE).is_empty()
        );
        assert!(sim.client_events(c).iter().any(|e| matches!(
            e,
            ClientEvent::Failed(ConnectError::HandshakeTimeout(a, _)) if *a == server_addr(0)
        )));
    }
}

/// A NAT in front of client 0: every datagram the client sends but its PROBEs leaves from a new
/// public port (`port(n)` for the n-th such datagram); answers to any of them reach the client.
fn nat(sim: &mut Sim, port: impl Fn(u32) -> u16 + 'static) {
    let client = client_addr(0);
    let mut n = 0;
    sim.filter = Some(Box::new(move |_, d| {
        if d.src == client && d.data[1] != kind::PROBE {
            d.src.set_port(port(n));
            n += 1;
        } else if d.dst.ip() == client.ip() {
            d.dst = client;
        }
        Verdict::Pass
    }));
}

#[test]
fn r2_nat_rebinding_gets_a_cookie_change_and_one_retry_establishes() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        nat(&mut sim, |_| 61_000);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        assert!(sim.echo(c, b"through the NAT", Duration::from_secs(1)));
        let s = sim.server_index(sim.clients[c].conn.server().unwrap());
        let stats = *sim.servers[s].endpoint.stats();
        assert_eq!((stats.cookie_changes_sent, stats.sessions_opened), (1, 1));
        let cs = sim.clients[c].conn.stats();
        assert_eq!(
            (cs.cookie_changes, cs.cookie_changes_ignored, cs.inits_sent),
            (1, 0, 2)
        );
        let rebound = SocketAddr::from(([192, 168, 0, 1], 61_000));
        assert!(
            matches!(sim.servers[s].events[0], ServerEvent::Opened { remote, .. } if remote == rebound)
        );
        // The retry carries exactly the cookie from the COOKIE_CHANGE.
        let ccs = sim.sent_of(kind::COOKIE_CHANGE);
        let Ok(Packet::CookieChange(cc)) = Packet::decode(&ccs[0].data) else {
            panic!()
        };
        let inits = sim.sent_of(kind::INIT);
        let Ok(Packet::Init(retry)) = Packet::decode(&inits[1].data) else {
            panic!()
        };
        assert_eq!(retry.cookie, cc.cookie);
        assert_eq!(retry.tag, cc.tag);
    }
}

#[test]
fn r2_a_second_cookie_change_is_ignored() {
    for seed in seeds(10) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, _| {});
        let client = client_addr(0);
        // Rebinding as above, and every COOKIE_CHANGE arrives twice.
        sim.filter = Some(Box::new(move |_, d| {
            if d.src == client && d.data[1] != kind::PROBE {
                d.src.set_port(61_000);
            } else if d.dst.ip() == client.ip() {
                d.dst = client;
                if d.data[1] == kind::COOKIE_CHANGE {
                    return Verdict::PassAnd(vec![d.clone()]);
                }
            }
            Verdict::Pass
        }));
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        sim.run_for(Duration::from_secs(1));
        let cs = sim.clients[c].conn.stats();
        assert_eq!(
            (cs.cookie_changes, cs.cookie_changes_ignored, cs.inits_sent),
            (1, 1, 2)
        );
        assert_eq!(cs.accepts_invalid, 0);
        assert_eq!(sim.servers[0].endpoint.stats().sessions_opened, 1);
        assert!(sim.established(c));
    }
}

#[test]
fn r2_a_client_that_moves_again_gets_no_second_retry() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(1, |_, _| {});
        // A new public port for every datagram: each INIT arrives from somewhere else.
        nat(&mut sim, |n| 61_000 + n as u16);
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.run_for(Duration::from_secs(5));
        let s = *sim.servers[0].endpoint.stats();
        let cs = sim.clients[c].conn.stats();
        assert_eq!(s.sessions_opened, 0);
        assert_eq!(s.cookie_changes_sent, cs.inits_sent);
        assert_eq!(cs.cookie_changes, 1);
        assert_eq!(cs.cookie_changes_ignored, s.cookie_changes_sent - 1);
        assert!(cs.cookie_changes_ignored >= 1);
        assert!(sim.client_events(c).iter().any(|e| matches!(
            e,
            ClientEvent::Failed(ConnectError::HandshakeTimeout(a, _)) if *a == server_addr(0)
        )));
    }
}

#[test]
fn r7_cookie_keys_rotate_on_the_timer_and_the_previous_key_is_honoured_once() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut b = Bench::new(seed, |_| {});
        let secs = Duration::from_secs_f64;
        assert_eq!(
            b.server.poll_timeout(),
            Some(b.start + secs(30.0)),
            "rotation timer"
        );
        let key_id = |b: &mut Bench, from| {
            let (_c, init) = b.init_from(from);
            (init[cookie_range(&init)][0], init)
        };
        let addr = |i: u8| SocketAddr::from(([198, 51, 100, i], 40000));
        let (k0, _) = key_id(&mut b, addr(1));
        // Not due yet: same key.
        b.at(secs(29.9));
        b.server.handle_timeout(b.now);
        let (k, before_rotation) = key_id(&mut b, addr(2));
        let (_, too_old) = key_id(&mut b, addr(3));
        assert_eq!(k, k0);
        // Rotation at 30 s: new cookies use a new key, old ones still verify.
        b.at(secs(30.0));
        b.server.handle_timeout(b.now);
        assert_eq!(b.server.poll_timeout(), Some(b.start + secs(60.0)));
        let (k1, _) = key_id(&mut b, addr(4));
        assert_ne!(k1, k0, "keys did not rotate");
        b.at(secs(30.5));
        accepted(&mut b, addr(2), &before_rotation);
        // Second rotation at 60 s: the key that minted `too_old` is gone.
        b.at(secs(60.0));
        b.server.handle_timeout(b.now);
        b.at(secs(60.1));
        let d = refuse_kept(&mut b, addr(3), &too_old);
        assert_eq!(d, refused(|s| s.init_cookie_unknown_key = 1));
    }
}

/// Like `refuse`, for a server that may hold other sessions.
fn refuse_kept(b: &mut Bench, from: SocketAddr, init: &[u8]) -> ServerStats {
    let before = *b.server.stats();
    let sessions = b.server.session_count();
    assert!(b.handle(from, init).is_none(), "a bad cookie got a reply");
    assert_eq!(b.server.session_count(), sessions);
    server_delta(b.server.stats(), &before)
}

#[test]
fn r7_a_cookie_older_than_its_lifetime_is_refused_as_expired() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        for (lifetime, tweak) in [(10_000u64, None), (2_000, Some(Duration::from_secs(2)))] {
            let mut b = Bench::new(seed, |c| {
                if let Some(l) = tweak {
                    c.cookie_lifetime = l;
                }
            });
            b.at(Duration::from_secs(1));
            let from = |i: u8| SocketAddr::from(([198, 51, 100, i], 40000));
            let (_c1, in_time) = b.init_from(from(1));
            let (_c2, late) = b.init_from(from(2));
            b.now += Duration::from_millis(lifetime - 1);
            accepted(&mut b, from(1), &in_time);
            b.now += Duration::from_millis(2);
            let d = refuse_kept(&mut b, from(2), &late);
            assert_eq!(
                d,
                refused(|s| s.init_cookie_expired = 1),
                "lifetime {lifetime} ms"
            );
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts that `text` shows `secret` in none of the usual renderings.
fn assert_hidden(text: &str, secret: &[u8], what: &str) {
    for shown in [
        hex(secret),
        hex(secret).to_uppercase(),
        format!("{secret:?}"),
        format!("{secret:02x?}"),
    ] {
        assert!(!text.contains(&shown), "{what} printed in {text}");
    }
    // Nor any 8 consecutive bytes of it in decimal list form.
    for w in secret.windows(8) {
        let list = format!("{w:?}");
        assert!(
            !text.contains(&list[1..list.len() - 1]),
            "{what} printed in {text}"
        );
    }
}

#[test]
fn r7_debug_output_never_shows_key_material() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let kp = StaticKeypair::generate(&mut rng);
        let private = {
            let h = kp.private_hex();
            (0..32)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<_>>()
        };
        let t0 = std::time::Instant::now();
        // The endpoint's RNG, and a shadow that replays its draws: the jar's first key id and key,
        // then the key drawn at the first rotation.
        let ep_seed = rng.next_u64();
        let mut ep = ServerEndpoint::new(
            t0,
            ServerConfig::new(kp.clone()),
            Box::new(ChaCha20Rng::seed_from_u64(ep_seed)),
        );
        let mut shadow = ChaCha20Rng::seed_from_u64(ep_seed);
        let mut id = [0u8; 1];
        shadow.fill_bytes(&mut id);
        let mut first = [0u8; 32];
        shadow.fill_bytes(&mut first);
        let mut second = [0u8; 32];
        shadow.fill_bytes(&mut second);

        // The shadow is right: it reproduces the MAC of a cookie the server minted.
        let mut b = Bench::new(seed, |_| {});
        b.server = ServerEndpoint::new(
            b.now,
            ServerConfig::new(kp.clone()),
            Box::new(ChaCha20Rng::seed_from_u64(ep_seed)),
        );
        b.start = b.now;
        b.key = kp.public();
        let (_c, init) = b.init_from(a());
        let cookie = init[cookie_range(&init)].to_vec();
        let Ok(Packet::Init(i)) = Packet::decode(&init) else {
            panic!()
        };
        let mut msg = b"volley/1 cookie".to_vec();
        msg.extend_from_slice(&cookie[..23]);
        msg.extend_from_slice(&crate::util::encode_addr(b.addr));
        msg.extend_from_slice(&i.tag.0);
        msg.push(4);
        msg.extend_from_slice(b"echo");
        let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &first), &msg);
        assert_eq!(
            &mac.as_ref()[..16],
            &cookie[23..],
            "shadow key is not the cookie key"
        );
        assert_eq!(cookie[0], id[0]);

        for rotated in [false, true] {
            if rotated {
                ep.handle_timeout(t0 + Duration::from_secs(30));
            }
            for text in [format!("{ep:?}"), format!("{ep:#?}")] {
                assert_hidden(&text, &private, "static private key");
                assert_hidden(&text, &first, "cookie key");
                assert_hidden(&text, &second, "rotated cookie key");
            }
        }
        let cfg = ServerConfig::new(kp.clone());
        assert_hidden(&format!("{cfg:?}"), &private, "static private key");
        assert_hidden(&format!("{kp:?}"), &private, "static private key");

        // The jar alone, built from a known RNG.
        let jar_seed = rng.next_u64();
        let mut jar_rng = ChaCha20Rng::seed_from_u64(jar_seed);
        let mut jar = CookieJar::new(
            t0,
            Duration::from_secs(30),
            Duration::from_secs(10),
            &mut jar_rng,
        );
        let mut shadow = ChaCha20Rng::seed_from_u64(jar_seed);
        shadow.fill_bytes(&mut id);
        shadow.fill_bytes(&mut first);
        shadow.fill_bytes(&mut second);
        let tag = Tag([9; 16]);
        let binding = CookieBinding {
            client: a(),
            server: server_addr(0),
            tag: &tag,
            service: b"echo",
        };
        let c = jar.mint(t0, &binding);
        let mut msg = b"volley/1 cookie".to_vec();
        msg.extend_from_slice(&c[..23]);
        msg.extend_from_slice(&crate::util::encode_addr(server_addr(0)));
        msg.extend_from_slice(&tag.0);
        msg.push(4);
        msg.extend_from_slice(b"echo");
        let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &first), &msg);
        assert_eq!(&mac.as_ref()[..16], &c[23..]);
        assert_hidden(&format!("{jar:?} {jar:#?}"), &first, "cookie key");
        assert!(jar.rotate_if_due(t0 + Duration::from_secs(30), &mut jar_rng));
        assert_hidden(&format!("{jar:?} {jar:#?}"), &first, "previous cookie key");
        assert_hidden(&format!("{jar:?} {jar:#?}"), &second, "current cookie key");
    }
}

#[test]
fn r2_a_stray_cookie_change_disturbs_neither_a_race_nor_a_session() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        sim.set_latency(server_addr(0), 5);
        sim.set_latency(server_addr(1), 5);
        let client = client_addr(0);
        // Anyone can put the server's address on a datagram: a COOKIE_CHANGE with a made-up tag
        // reaches the client while it races, and again once its session is up.
        let forged = move |tag: u8| {
            let mut buf = [0u8; crate::MAX_DATAGRAM_LEN];
            let n = crate::packet::CookieChange {
                tag: Tag([tag; 16]),
                cookie: &[3; COOKIE_LEN],
            }
            .encode(&mut buf)
            .unwrap();
            Datagram {
                src: server_addr(0),
                dst: client,
                data: buf[..n].to_vec(),
            }
        };
        let mut sent = 0;
        sim.filter = Some(Box::new(move |_, d| {
            if d.src == client
                && ((d.data[1] == kind::PROBE && sent == 0)
                    || (d.data[1] == kind::DATA && sent == 1))
            {
                sent += 1;
                return Verdict::PassAnd(vec![forged(sent)]);
            }
            Verdict::Pass
        }));
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(c, Duration::from_secs(1));
        assert!(sim.echo(c, b"one", Duration::from_secs(1)));
        assert!(
            sim.echo(c, b"two", Duration::from_secs(1)),
            "a stray COOKIE_CHANGE killed the session"
        );
        let cs = sim.clients[c].conn.stats();
        assert_eq!((cs.cookie_changes, cs.cookie_changes_ignored), (0, 2));
        assert!(sim.established(c));
    }
}
