//! Which connection of a client driver a datagram is for: an index by the route key the
//! datagram carries (a race tag or a receiver id, [`RouteKey`]), confirmed by the connection's
//! own [`volley_proto::Connection::claims`]. A datagram costs one decode and one lookup however
//! many connections the driver holds; only a key two connections share (or a stray) falls back
//! to asking each in turn.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use volley_proto::client::RouteKey;

use super::member::Member;

/// Members by the route keys their datagrams carry.
#[derive(Default)]
pub(super) struct Demux {
    index: HashMap<RouteKey, u32>,
}

impl Demux {
    /// Enters member `id`'s current route keys (after any call into its connection).
    pub(super) fn reindex(&mut self, m: &mut Member) {
        let keys = m.conn.route_keys();
        if keys == m.keys {
            return;
        }
        for old in m.keys.iter().flatten() {
            if !keys.contains(&Some(*old)) && self.index.get(old) == Some(&m.id) {
                self.index.remove(old);
            }
        }
        for new in keys.iter().flatten() {
            // A key another member holds (a 32-bit session id both drew) stays with it; the
            // scan in `route` finds this one.
            self.index.entry(*new).or_insert(m.id);
        }
        m.keys = keys;
    }

    /// Forgets a member leaving the driver.
    pub(super) fn unindex(&mut self, m: &Member) {
        for k in m.keys.iter().flatten() {
            if self.index.get(k) == Some(&m.id) {
                self.index.remove(k);
            }
        }
    }

    /// The member a datagram is for: the one its route key names, if that one claims it; else
    /// (a key two members share, a stale offer) the first that claims it; else the oldest
    /// member, which counts what nobody wants.
    pub(super) fn route(
        &self,
        members: &BTreeMap<u32, Member>,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Option<u32> {
        let hit = RouteKey::of(datagram).and_then(|k| self.index.get(&k).copied());
        match hit {
            Some(id) if members.get(&id)?.conn.claims(from, datagram) => Some(id),
            Some(_) => members
                .values()
                .find(|m| m.conn.claims(from, datagram))
                .map(|m| m.id)
                .or_else(|| members.keys().next().copied()),
            None => members.keys().next().copied(),
        }
    }
}
