//! R3: a refusing server names its peers in a REDIRECT; the client adds them (capped, filtered)
//! and races them.

use super::*;

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
            (5..=8).contains(&fit),
            "an INIT of {} bytes fits {fit} addresses",
            init.len
        );
        // Never the refusing server itself (A, last in the list).
        let others: Vec<_> = peers.iter().copied().filter(|p| *p != a).collect();
        assert_eq!(named, others[..fit.min(others.len())].to_vec());
        let st = sim.clients[c].conn.stats();
        assert_eq!(st.redirect_servers_added, 1, "capped at 1");
        assert_eq!(st.redirect_servers_ignored, named.len() as u64 - 1);
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
