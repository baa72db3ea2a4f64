//! What the offer desk and the acceptor borrow from the endpoint while they handle one datagram:
//! the settings, the cookie jar, admission, counters, the load, and the session table (read
//! only — only the endpoint adds or removes sessions). The endpoint lends its parts for the
//! length of one call; neither side keeps a reference to the other.

use std::time::{Duration, Instant};

use super::admission::Admission;
use super::load::Load;
use super::sessions::SessionTable;
use super::{ServerConfig, ServerStats};
use crate::cookie::CookieJar;
use crate::packet::LoadHint;

/// The endpoint's parts, lent for one call.
pub(super) struct Context<'a> {
    pub(super) config: &'a ServerConfig,
    pub(super) jar: &'a CookieJar,
    pub(super) admission: &'a mut Admission,
    pub(super) stats: &'a mut ServerStats,
    pub(super) load: &'a mut Load,
    pub(super) sessions: &'a SessionTable,
    /// The server is draining: it makes no offer and opens no session (§7.8).
    pub(super) draining: bool,
}

impl Context<'_> {
    /// Requests in flight plus offers outstanding (see [`Load::effective`]).
    pub(super) fn effective(&mut self, now: Instant) -> u32 {
        self.load.effective(now, self.config, self.sessions.len())
    }

    /// The expected completion of one more request with `effective` in flight.
    pub(super) fn expected(&self, now: Instant, effective: u32) -> Duration {
        self.load.expected(now, self.config, effective)
    }

    /// The load hint of an offer written now.
    pub(super) fn hint(&mut self, now: Instant, own_reserved: bool) -> LoadHint {
        self.load
            .hint(now, self.config, self.sessions.len(), own_reserved)
    }

    /// Whether every slot is taken by requests in flight.
    pub(super) fn busy(&self) -> bool {
        self.load.busy(self.config, self.sessions.len())
    }

    /// Whether a slot is free, counting offers outstanding.
    pub(super) fn slot_free(&mut self, now: Instant) -> bool {
        self.load.slot_free(now, self.config, self.sessions.len())
    }

    /// Counts an offer sent at `from` as load.
    pub(super) fn reserve(&mut self, from: Instant) {
        self.load.reserve(self.config, from);
    }

    /// Whether the server cannot open another session: the hard `max_sessions` limit.
    pub(super) fn full(&self) -> bool {
        self.config
            .max_sessions
            .is_some_and(|m| self.sessions.len() as u32 >= m)
    }
}
