//! Which connection of a client driver a datagram is for: an index by the key the datagram
//! carries, in O(1) whatever it says (PROTOCOL.md §6.2.3). Each connection describes itself with
//! a [`RouteView`]; the index holds, for each connection, the keys its datagrams can carry:
//!
//! - `Offer(tag)`: OFFERs of its live race, and late ones of its last decided race;
//! - `Handshake(tag, server)`: the COOKIE_CHANGE or REDIRECT of its handshake, from the selected
//!   server only (the siblings of an `NBest` group share the tag, never the server);
//! - `Receiver(id)`: the ACCEPT of its handshake and its session's DATA (ids are unique among a
//!   client's connections: its pool state hands them out).
//!
//! A datagram is decoded once and looked up once. The connection a key names gets it whether or
//! not it claims it: it counts what is not its own (a late offer from a server its race did not
//! probe, an ACCEPT after its session began, a DATA that fails authentication) as any stray.
//! A datagram whose key names no connection is nobody's: dropped and counted here
//! ([`DemuxStats::unrouted`]). A forged datagram naming a live key therefore costs one lookup
//! and one connection's checks, never a walk over the others.

use std::collections::HashMap;
use std::net::SocketAddr;

use volley_proto::Tag;
use volley_proto::client::route::RouteView;
use volley_proto::packet::Packet;

use super::member::Member;

/// What routes a datagram to a connection (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Offer(Tag),
    Handshake(Tag, SocketAddr),
    Receiver(u32),
}

/// The keys one connection holds at a time: at most three (a handshake's: its decided race's
/// tag for late offers, its COOKIE_CHANGE/REDIRECT key, its ACCEPT's receiver id).
pub(super) type Keys = [Option<Key>; 3];

/// The keys a connection described by `view` holds.
pub(super) fn keys_of(view: &RouteView<'_>) -> Keys {
    let mut keys: Keys = [None; 3];
    let mut n = 0;
    let mut add = |k: Key| {
        if n < keys.len() && !keys.contains(&Some(k)) {
            keys[n] = Some(k);
            n += 1;
        }
    };
    if let Some(tag) = view.live_tag {
        add(Key::Offer(tag));
    }
    if let Some((tag, _)) = view.retired {
        add(Key::Offer(tag));
    }
    if let Some((server, tag, id)) = view.handshake {
        add(Key::Handshake(tag, volley_proto::canonical_addr(server)));
        add(Key::Receiver(id));
    }
    if let Some(id) = view.session {
        add(Key::Receiver(id));
    }
    keys
}

/// The key `datagram` from `from` carries, from one decode; None for what a client never takes
/// (or cannot decode). A VERSIONS is keyed by the tag in its echo.
fn key_of(from: SocketAddr, datagram: &[u8]) -> Option<Key> {
    let Ok(packet) = Packet::decode(datagram) else {
        // A VERSIONS (PROTOCOL.md §3.9) goes to the race whose tag its echo of our PROBE carries;
        // the connection checks the rest.
        let (_, echo) = volley_proto::packet::decode_versions(datagram)?;
        let tag: [u8; volley_proto::TAG_LEN] =
            echo.get(2..2 + volley_proto::TAG_LEN)?.try_into().ok()?;
        return Some(Key::Offer(volley_proto::Tag(tag)));
    };
    match packet {
        Packet::Offer(o) => Some(Key::Offer(o.tag)),
        Packet::CookieChange(cc) => {
            Some(Key::Handshake(cc.tag, volley_proto::canonical_addr(from)))
        }
        Packet::Redirect(rd) => Some(Key::Handshake(rd.tag, volley_proto::canonical_addr(from))),
        Packet::Accept(a) => Some(Key::Receiver(a.receiver_id)),
        Packet::Data(h, _) => Some(Key::Receiver(h.receiver_id)),
        _ => None,
    }
}

/// What the demultiplexer did, counted: for operators (`unrouted`) and for tests of its cost
/// (`decodes`, `lookups`: one each per datagram, whatever the number of connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct DemuxStats {
    /// Datagrams handed to the connection their key names.
    pub(super) routed: u64,
    /// Datagrams dropped: undecodable, of a kind a client never takes, or naming no connection.
    pub(super) unrouted: u64,
    /// Datagrams decoded to find their key.
    pub(super) decodes: u64,
    /// Index look-ups.
    pub(super) lookups: u64,
}

/// Connections by the keys their datagrams carry.
#[derive(Debug, Default)]
pub(super) struct Demux {
    index: HashMap<Key, u32>,
    stats: DemuxStats,
}

impl Demux {
    /// Enters member `m`'s current keys in the index (after any call into its connection).
    pub(super) fn reindex(&mut self, m: &mut Member) {
        let keys = keys_of(&m.conn.route_view());
        self.reindex_keys(m.id, &mut m.keys, keys);
    }

    /// Replaces connection `id`'s keys `held` with `keys`.
    pub(super) fn reindex_keys(&mut self, id: u32, held: &mut Keys, keys: Keys) {
        if *held == keys {
            return;
        }
        for old in held.iter().flatten() {
            if !keys.contains(&Some(*old)) && self.index.get(old) == Some(&id) {
                self.index.remove(old);
            }
        }
        for new in keys.iter().flatten() {
            let holder = *self.index.entry(*new).or_insert(id);
            if holder != id {
                // Cannot happen with tags drawn at random and ids the pool hands out once;
                // the first holder keeps it.
                tracing::debug!(?new, holder, id, "route key held by another connection");
            }
        }
        *held = keys;
    }

    /// Forgets connection `id`, whose keys are `held`.
    pub(super) fn unindex(&mut self, id: u32, held: &Keys) {
        for k in held.iter().flatten() {
            if self.index.get(k) == Some(&id) {
                self.index.remove(k);
            }
        }
    }

    /// The connection `datagram` from `from` is for: the one its key names. None (counted)
    /// when it names none.
    pub(super) fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<u32> {
        self.stats.decodes += 1;
        let hit = key_of(from, datagram).and_then(|k| {
            self.stats.lookups += 1;
            self.index.get(&k).copied()
        });
        match hit {
            Some(_) => self.stats.routed += 1,
            None => self.stats.unrouted += 1,
        }
        hit
    }

    /// The counters so far.
    #[cfg(test)]
    fn stats(&self) -> DemuxStats {
        self.stats
    }

    /// Keys indexed now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use volley_proto::packet::{Accept, DataHeader, Offer, Redirect};
    use volley_proto::{LoadHint, MAX_DATAGRAM_LEN};

    use super::*;

    fn server(i: u32) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 4433)
    }

    fn tag(i: u32, salt: u8) -> Tag {
        let mut t = [salt; 16];
        t[..4].copy_from_slice(&i.to_be_bytes());
        Tag(t)
    }

    /// `n` connections: every third racing (live tag), every third in its handshake (with a
    /// decided race), every third established (with the race that chose its server).
    fn demux_of(n: u32) -> Demux {
        let mut d = Demux::default();
        let probed = [server(0), server(1)];
        for id in 0..n {
            let view = match id % 3 {
                0 => RouteView {
                    live_tag: Some(tag(id, 1)),
                    ..RouteView::default()
                },
                1 => RouteView {
                    retired: Some((tag(id, 2), &probed)),
                    handshake: Some((server(0), tag(id, 2), id)),
                    ..RouteView::default()
                },
                _ => RouteView {
                    retired: Some((tag(id, 2), &probed)),
                    session: Some(id),
                    ..RouteView::default()
                },
            };
            let mut held = Keys::default();
            d.reindex_keys(id, &mut held, keys_of(&view));
        }
        d
    }

    /// A stream of forged datagrams, each naming a live key of connection `i` (or nothing):
    /// DATA and ACCEPTs naming live receiver ids, REDIRECTs with a live handshake tag from
    /// another address, OFFERs with a live or a retired tag from an unprobed address, OFFERs
    /// with unknown tags, garbage.
    fn forged(n: u32, i: u32) -> (SocketAddr, Vec<u8>) {
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
        let id = (i * 7_919) % n;
        let attacker = SocketAddr::from(([203, 0, 113, 66], 4433));
        let len = match i % 6 {
            0 => {
                let h = DataHeader {
                    receiver_id: id,
                    counter: u64::from(i),
                    key_phase: (i % 16) as u8,
                };
                let n = h.encode(&mut buf).unwrap();
                buf[n..n + 40].fill(0xa5);
                n + 40
            }
            1 => Accept {
                receiver_id: id,
                noise: &[7; 48],
            }
            .encode(&mut buf)
            .unwrap(),
            2 => Redirect {
                tag: tag(id, 2),
                servers: &[],
            }
            .encode(&mut buf)
            .unwrap(),
            3 | 4 => Offer {
                tag: tag(id, if i % 6 == 3 { 1 } else { 9 }),
                server_key_id: volley_proto::KeyId([1; 8]),
                load: LoadHint {
                    in_flight: 0,
                    capacity: 0,
                    expected_us: 0,
                },
                held_us: 0,
                cookie: &[3; 39],
            }
            .encode(&mut buf)
            .unwrap(),
            _ => {
                buf[..64].fill(0xee);
                64
            }
        };
        buf.truncate(len);
        (attacker, buf)
    }

    #[test]
    fn a5_a_forged_datagram_costs_one_decode_and_one_lookup_at_100k_connections() {
        let forged_count = 60_000u32;
        let run = |n: u32| {
            let mut d = demux_of(n);
            // One key for a race, three for a handshake, two for a session.
            let class = |c: u32| (0..n).filter(|id| id % 3 == c).count();
            assert_eq!(d.len(), class(0) + 3 * class(1) + 2 * class(2));
            for i in 0..forged_count {
                let (from, datagram) = forged(n, i);
                d.route(from, &datagram);
            }
            d.stats()
        };
        let small = run(1_000);
        let large = run(100_000);
        for s in [small, large] {
            // Every forged datagram is counted once: handed to the connection its key names
            // (which counts it as a stray) or dropped here.
            assert_eq!(s.routed + s.unrouted, u64::from(forged_count), "{s:?}");
            // One decode each, and one look-up for each that decoded (the garbage did not).
            assert_eq!(s.decodes, u64::from(forged_count));
            assert_eq!(s.lookups, u64::from(forged_count) * 5 / 6);
        }
        // The work per forged datagram does not grow with the number of connections: a
        // hundred times more connections, the same count of decodes and look-ups.
        assert_eq!(
            (small.decodes, small.lookups),
            (large.decodes, large.lookups)
        );
        // Which ones reached a connection: DATA naming an established id, ACCEPTs naming a
        // handshaking one, OFFERs with a live tag — a third of each kind names a connection
        // in that state.
        assert!(
            large.routed > 0 && large.unrouted > large.routed,
            "{large:?}"
        );
    }

    #[test]
    fn a5_each_datagram_reaches_the_connection_its_key_names() {
        let mut d = demux_of(300);
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
        // The DATA of established connection 5 and the ACCEPT of handshaking connection 4.
        let n = DataHeader {
            receiver_id: 5,
            counter: 0,
            key_phase: 0,
        }
        .encode(&mut buf)
        .unwrap();
        buf[n..n + 20].fill(1);
        assert_eq!(d.route(server(0), &buf[..n + 20]), Some(5));
        let n = Accept {
            receiver_id: 4,
            noise: &[7; 48],
        }
        .encode(&mut buf)
        .unwrap();
        assert_eq!(d.route(server(0), &buf[..n]), Some(4));
        // Connection 4's REDIRECT, from its selected server only; an IPv4-mapped source is the
        // same address.
        let n = Redirect {
            tag: tag(4, 2),
            servers: &[],
        }
        .encode(&mut buf)
        .unwrap();
        assert_eq!(d.route(server(0), &buf[..n]), Some(4));
        let mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::from(0x0a00_0000u32).to_ipv6_mapped()),
            4433,
        );
        assert_eq!(d.route(mapped, &buf[..n]), Some(4));
        assert_eq!(d.route(server(1), &buf[..n]), None);
        // A late offer for connection 5's decided race, and one for connection 3's live race.
        let offer = |t: Tag, buf: &mut Vec<u8>| {
            let n = Offer {
                tag: t,
                server_key_id: volley_proto::KeyId([1; 8]),
                load: LoadHint {
                    in_flight: 0,
                    capacity: 0,
                    expected_us: 0,
                },
                held_us: 0,
                cookie: &[3; 39],
            }
            .encode(buf)
            .unwrap();
            buf[..n].to_vec()
        };
        assert_eq!(d.route(server(1), &offer(tag(5, 2), &mut buf)), Some(5));
        assert_eq!(d.route(server(1), &offer(tag(3, 1), &mut buf)), Some(3));
        // Connection 3 moves on to its handshake, then leaves: its keys go with it.
        let probed = [server(1)];
        let mut held = keys_of(&RouteView {
            live_tag: Some(tag(3, 1)),
            ..RouteView::default()
        });
        let handshake = keys_of(&RouteView {
            retired: Some((tag(3, 1), &probed)),
            handshake: Some((server(1), tag(3, 1), 3)),
            ..RouteView::default()
        });
        d.reindex_keys(3, &mut held, handshake);
        assert_eq!(d.route(server(1), &offer(tag(3, 1), &mut buf)), Some(3));
        d.unindex(3, &held);
        assert_eq!(d.route(server(1), &offer(tag(3, 1), &mut buf)), None);
        assert_eq!(d.stats().unrouted, 2);
    }
}
