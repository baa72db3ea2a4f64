//! Demultiplexing: which client connection a datagram is for, read from the datagram alone, so
//! that a runtime serving many connections on one socket finds the right one in O(1) — an index
//! by [`RouteKey`], confirmed by [`super::Connection::claims`].

use crate::packet::{Packet, Tag};

/// What identifies the client connection a datagram is for, read from the datagram alone: the
/// race tag (OFFER, COOKIE_CHANGE, REDIRECT) or the receiver id (ACCEPT, DATA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// A race's tag.
    Tag(Tag),
    /// The client's own session id.
    Receiver(u32),
}

impl RouteKey {
    /// The key `datagram` carries; None for anything a client does not take (or cannot decode).
    pub fn of(datagram: &[u8]) -> Option<Self> {
        match Packet::decode(datagram).ok()? {
            Packet::Offer(o) => Some(Self::Tag(o.tag)),
            Packet::CookieChange(cc) => Some(Self::Tag(cc.tag)),
            Packet::Redirect(rd) => Some(Self::Tag(rd.tag)),
            Packet::Accept(a) => Some(Self::Receiver(a.receiver_id)),
            Packet::Data(h, _) => Some(Self::Receiver(h.receiver_id)),
            _ => None,
        }
    }
}

/// What identifies one connection's datagrams right now: the tag of its live race, the tag of
/// its last decided race with the servers that race probed (their late offers are still its
/// own, to be counted), its handshake (server, tag, receiver id) or its session's receiver id.
/// A connection describes itself with one ([`super::Connection::route_view`]); routing reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteView<'a> {
    /// The live race's tag.
    pub live_tag: Option<Tag>,
    /// The last decided race's retired tag and the servers it probed.
    pub retired: Option<(Tag, &'a [std::net::SocketAddr])>,
    /// The handshake under way: the selected server, the race's tag and this side's id.
    pub handshake: Option<(std::net::SocketAddr, Tag, u32)>,
    /// The established session's receiver id.
    pub session: Option<u32>,
}

impl RouteView<'_> {
    /// The keys a datagram for this connection can carry: its live and retired race tags, its
    /// handshake's tag and receiver id, or its session's receiver id (at most two at a time).
    /// A runtime serving many connections on one socket indexes them by these — refreshed after
    /// every call into a connection — and confirms a hit with [`RouteView::claims`].
    pub fn keys(&self) -> [Option<RouteKey>; 2] {
        let retired = self.retired.map(|(tag, _)| RouteKey::Tag(tag));
        if let Some((_, tag, id)) = self.handshake {
            return [Some(RouteKey::Tag(tag)), Some(RouteKey::Receiver(id))];
        }
        if let Some(id) = self.session {
            return [retired, Some(RouteKey::Receiver(id))];
        }
        match self.live_tag {
            Some(tag) => [Some(RouteKey::Tag(tag)), retired],
            None => [retired, None],
        }
    }

    /// Whether `datagram` from `from` belongs to this connection: an offer for its live race,
    /// or for its decided race from a server that race probed; its handshake's COOKIE_CHANGE or
    /// REDIRECT (from the selected server, with the race's tag) or ACCEPT (its receiver id), or
    /// a DATA from the selected server for its receiver id that overtook the ACCEPT; its
    /// session's DATA.
    pub fn claims(&self, from: std::net::SocketAddr, datagram: &[u8]) -> bool {
        let from = crate::util::canonical(from);
        let Ok(packet) = Packet::decode(datagram) else {
            return false;
        };
        let handshake_tag = |tag: Tag| {
            self.handshake
                .is_some_and(|(server, hs_tag, _)| from == server && tag == hs_tag)
        };
        match packet {
            Packet::Offer(o) => {
                self.live_tag == Some(o.tag)
                    || self
                        .retired
                        .is_some_and(|(tag, probed)| tag == o.tag && probed.contains(&from))
            }
            Packet::CookieChange(cc) => handshake_tag(cc.tag),
            Packet::Redirect(rd) => handshake_tag(rd.tag),
            Packet::Accept(a) => self.handshake.is_some_and(|(_, _, id)| a.receiver_id == id),
            // A DATA can overtake its handshake's ACCEPT (the reply to early data).
            Packet::Data(h, _) => {
                self.session == Some(h.receiver_id)
                    || self
                        .handshake
                        .is_some_and(|(server, _, id)| from == server && h.receiver_id == id)
            }
            _ => false,
        }
    }
}
