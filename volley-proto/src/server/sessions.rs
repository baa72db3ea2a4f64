//! The server's session table: established sessions by their locally drawn id, their timers,
//! the duplicate-INIT filter and the list of recently ended sessions, and the sessions with packets
//! to send. Everything the endpoint keeps per session lives here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use crate::packet::Tag;
use crate::session::Session;
use crate::util::IdMap;

/// A server-side session handle: the id the client puts in DATA.
pub type SessionId = u32;

/// (client address, tag) of the INIT that opened a session.
pub(crate) type Origin = (SocketAddr, Tag);

/// One established session and what the endpoint remembers about how it began.
pub(crate) struct Served {
    pub(crate) session: Session,
    /// The server address the INIT arrived on: the session's packets leave from it.
    pub(crate) local: SocketAddr,
    /// (client address, tag) of the INIT that opened it, for the duplicate filter.
    pub(crate) origin: Origin,
    /// The ACCEPT sent, re-sent verbatim to a duplicate INIT.
    pub(crate) accept: Vec<u8>,
    /// The client's authenticated static key, and its allow-list name.
    pub(crate) client: crate::allow::AllowEntry,
    /// Whether the offer this session came from still holds a reservation, to be released when
    /// its first request arrives (sessions that do not count as load).
    pub(crate) holds_reservation: bool,
    /// Whether its INIT's early data was delivered (PROTOCOL.md §4.8): then (tag, client key)
    /// stays on the early list while it is open and for a while after.
    pub(crate) early: bool,
}

/// A session in the table, with the deadline its entry in the timer heap was filed at.
struct Slot {
    served: Served,
    /// The deadline of this session's live heap entry; entries with another deadline are stale.
    filed: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct SessionTable {
    sessions: IdMap<Slot>,
    /// Session deadlines (keepalive, idle timeout, liveness probe), earliest first: one live
    /// entry per open session, at or before its real deadline (`Slot::filed`). Activity moves a
    /// keepalive or idle deadline later, so an entry that comes due early is re-filed at the
    /// real deadline. A sent datagram can bring a deadline earlier (the liveness probe one PTO
    /// later, PROTOCOL.md §5.3): [`SessionTable::refile`] files it at once, and the entry it
    /// replaces is skipped when it surfaces, as are entries of ended sessions. A wake-up costs
    /// O(log n) per due session, not a scan of every session.
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    by_origin: HashMap<Origin, SessionId>,
    /// (client address, tag) of sessions that ended, until their cookies can no longer verify:
    /// a replayed INIT must not open a second session. Only MAC-verified INITs ever land here;
    /// swept at each cookie rotation.
    ended: HashMap<Origin, Instant>,
    /// (tag, client key) of sessions whose INIT's early data was delivered: None while the
    /// session is open, then until when it is kept. The same client's INIT for the same race
    /// from another address (after a COOKIE_CHANGE) opens a session but delivers no early data
    /// again (PROTOCOL.md §4.8). Only authenticated INITs land here; swept at each rotation.
    early: HashMap<(Tag, [u8; 32]), Option<Instant>>,
    /// Sessions that may have packets to send.
    ready: VecDeque<SessionId>,
    /// Incomplete datagrams dropped by the timers since the endpoint last took the count.
    reassembly_timeouts: u64,
}

impl SessionTable {
    /// Incomplete datagrams the timers dropped since the last call.
    pub(crate) fn take_reassembly_timeouts(&mut self) -> u64 {
        std::mem::take(&mut self.reassembly_timeouts)
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Entries kept across all the maps and queues (for the endpoint's `retained_state`).
    pub(crate) fn retained(&self) -> usize {
        self.sessions.len()
            + self.by_origin.len()
            + self.ended.len()
            + self.early.len()
            + self.ready.len()
    }

    /// Whether early data of race `tag` from client `key` was delivered to a session that is
    /// open or ended before `now` less than the early list keeps it.
    pub(crate) fn early_seen(&self, now: Instant, tag: &Tag, key: &[u8; 32]) -> bool {
        self.early
            .get(&(*tag, *key))
            .is_some_and(|until| until.is_none_or(|until| now < until))
    }

    pub(crate) fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<&Served> {
        self.sessions.get(&id).map(|s| &s.served)
    }

    pub(crate) fn get_mut(&mut self, id: SessionId) -> Option<&mut Served> {
        self.sessions.get_mut(&id).map(|s| &mut s.served)
    }

    pub(crate) fn ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// The open session a previous INIT with this origin created (duplicate filter).
    pub(crate) fn by_origin(&self, origin: &Origin) -> Option<&Served> {
        self.by_origin.get(origin).and_then(|id| self.get(*id))
    }

    /// Whether a session with this origin ended less than a cookie lifetime before `now`.
    pub(crate) fn ended_recently(&self, now: Instant, origin: &Origin) -> bool {
        self.ended.get(origin).is_some_and(|until| now < *until)
    }

    /// Adds a session, files its first deadline and remembers its origin.
    pub(crate) fn insert(&mut self, id: SessionId, served: Served) {
        let filed = served.session.poll_timeout();
        if let Some(due) = filed {
            self.timers.push(Reverse((due, id)));
        }
        self.by_origin.insert(served.origin, id);
        if served.early {
            self.early
                .insert((served.origin.1, served.client.key.0), None);
        }
        self.sessions.insert(id, Slot { served, filed });
    }

    /// Files session `id`'s deadline again if it came earlier than the one filed: after it
    /// sent, a datagram waiting for an answer wants its liveness probe one PTO later
    /// (PROTOCOL.md §5.3), and a path validation its next challenge one PTO later (§5.6), either
    /// of which may be well before its keepalive.
    pub(crate) fn refile(&mut self, id: SessionId) {
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        if let Some(due) = slot.served.session.poll_timeout()
            && slot.filed.is_none_or(|filed| due < filed)
        {
            slot.filed = Some(due);
            self.timers.push(Reverse((due, id)));
        }
    }

    /// Removes a session; its origin stays on the ended list until `until`, and its (tag,
    /// client key), if its early data was delivered, on the early list until `early_until`.
    pub(crate) fn remove(
        &mut self,
        id: SessionId,
        until: Instant,
        early_until: Instant,
    ) -> Option<Served> {
        let served = self.sessions.remove(&id)?.served;
        self.by_origin.remove(&served.origin);
        self.ended.insert(served.origin, until);
        if served.early {
            self.early
                .insert((served.origin.1, served.client.key.0), Some(early_until));
        }
        Some(served)
    }

    /// Forgets ended origins whose cookies can no longer verify, and early-list entries past
    /// their time.
    pub(crate) fn sweep_ended(&mut self, now: Instant) {
        self.ended.retain(|_, until| now < *until);
        self.early
            .retain(|_, until| until.is_none_or(|until| now < until));
    }

    pub(crate) fn mark_ready(&mut self, id: SessionId) {
        self.ready.push_back(id);
    }

    pub(crate) fn pop_ready(&mut self) -> Option<SessionId> {
        self.ready.pop_front()
    }

    /// Puts `id` back at the front: it may have more to send.
    pub(crate) fn unpop_ready(&mut self, id: SessionId) {
        self.ready.push_front(id);
    }

    /// The earliest filed session deadline (possibly early: see `timers`).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((due, _))| *due)
    }

    pub(crate) fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// Fires every session timer due at `now` (keepalives queue a PING, and such sessions are
    /// marked ready); returns the sessions that died of idleness, for the endpoint to finish.
    pub(crate) fn fire_timers(&mut self, now: Instant) -> Vec<SessionId> {
        let mut dead = Vec::new();
        while let Some(&Reverse((due, id))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.sessions.get_mut(&id) else {
                continue; // the session ended since this entry was filed
            };
            if slot.filed != Some(due) {
                continue; // replaced by an earlier entry (`refile`)
            }
            let served = &mut slot.served;
            match served.session.poll_timeout() {
                // Closed: it leaves through `poll_transmit` once drained.
                None => {
                    slot.filed = None;
                    continue;
                }
                Some(real) if real > now => {
                    // Activity postponed it: file it again at its real deadline.
                    slot.filed = Some(real);
                    self.timers.push(Reverse((real, id)));
                    continue;
                }
                Some(_) => {}
            }
            let timed_out = served.session.reassembly_stats().timed_out;
            if served.session.handle_timeout(now).is_some() {
                dead.push(id);
                continue;
            }
            self.reassembly_timeouts += served.session.reassembly_stats().timed_out - timed_out;
            if served.session.has_pending() {
                self.ready.push_back(id);
            }
            slot.filed = served.session.poll_timeout();
            if let Some(next) = slot.filed {
                self.timers.push(Reverse((next, id)));
            }
        }
        dead
    }
}
