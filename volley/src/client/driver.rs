//! The client's part of the shared driver ([`runtime::Side`]): every connection of one client
//! on one socket. A datagram reaches its connection through the [`Demux`] in O(1); connections' deadlines
//! sit in a heap; a flush visits only the connections touched since the last one. A client
//! holding 100,000 sessions (a proxy) pays for the ones that are active. Each call into a
//! connection that learns or uses pool knowledge holds the client's [`PoolState`] lock for that
//! call only.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use tokio::sync::mpsc;
use tracing::{debug, trace};
use volley_proto::{CloseCode, CloseReason, Connection, Transmit};

use super::demux::Demux;
use super::member::Member;
use super::nbest::Groups;
use super::open::Open;
use crate::report::ConnectReport;
use crate::runtime::{self, Flow};
use crate::session::Cmd;
use crate::shared_pool::{SharedPool, lock_pool};

fn rng() -> Box<rand::rngs::StdRng> {
    Box::new(rand::rngs::StdRng::from_entropy())
}

/// Datagrams a connection sends per turn of a flush before the next touched connection's.
const TRANSMIT_TURN: usize = 8;

/// Every connection on one socket.
pub(super) struct ClientSide {
    members: BTreeMap<u32, Member>,
    groups: Groups,
    next_id: u32,
    opens: mpsc::UnboundedReceiver<Open>,
    /// The client (or a clone) can still open connections here.
    opens_open: bool,
    /// Some session handle, or the client, is still alive.
    handles_open: bool,
    /// The client's pool knowledge, shared with its other endpoints and its handles.
    pool: SharedPool,
    demux: Demux,
    /// The client's count of datagrams dropped for naming no connection.
    strays: Arc<AtomicU64>,
    /// Members' deadlines; an entry whose deadline is no longer its member's is skipped.
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Members touched since the last flush, each once (`Member::dirty`).
    dirty: Vec<u32>,
    /// How far `poll_transmit` has gone through `dirty` in this pass, how many datagrams the
    /// member there has sent in its turn, and whether any member sent in this pass.
    tx_cursor: usize,
    tx_turn: usize,
    tx_progress: bool,
    /// Members whose send queue the connection could not take whole.
    blocked: Vec<u32>,
}

impl ClientSide {
    pub(super) fn new(
        opens: mpsc::UnboundedReceiver<Open>,
        pool: SharedPool,
        strays: Arc<AtomicU64>,
    ) -> Self {
        Self {
            members: BTreeMap::new(),
            groups: Groups::default(),
            next_id: 0,
            opens,
            opens_open: true,
            handles_open: true,
            pool,
            demux: Demux::default(),
            strays,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            tx_cursor: 0,
            tx_turn: 0,
            tx_progress: false,
            blocked: Vec::new(),
        }
    }

    fn touch(&mut self, id: u32) {
        if let Some(m) = self.members.get_mut(&id)
            && !m.dirty
        {
            m.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Enters a member's current route keys in the index (after any call into it).
    fn reindex(&mut self, id: u32) {
        if let Some(m) = self.members.get_mut(&id) {
            self.demux.reindex(m);
        }
    }

    /// Enters a member's current deadline in the heap if it changed.
    fn retime(&mut self, id: u32) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let deadline = m.conn.poll_timeout();
        if deadline != m.deadline {
            m.deadline = deadline;
            if let Some(t) = deadline {
                self.timers.push(Reverse((t, id)));
            }
        }
        // Stale entries are dropped as they surface; rebuild when they pile up.
        if self.timers.len() > 2 * self.members.len() + 64 {
            self.timers = self
                .members
                .iter()
                .filter_map(|(&id, m)| m.deadline.map(|t| Reverse((t, id))))
                .collect();
        }
    }

    fn add_member(&mut self, conn: Connection, remote: SocketAddr, report: ConnectReport) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.members
            .insert(id, Member::new(id, conn, remote, report));
        self.touch(id);
        self.reindex(id);
        id
    }

    /// Starts a group: its main connection now, its siblings when the main race is decided.
    fn start(&mut self, open: Open, now: Instant) {
        let Some(first) = open.pool.first().copied() else {
            let _ = open.ready.send(Vec::new());
            return;
        };
        let mut pool = lock_pool(&self.pool);
        let conn = match open.early {
            Some(early) => {
                Connection::with_early_data(now, open.config, open.pool, early, rng(), &mut pool)
            }
            None => Connection::new(now, open.config, open.pool, rng(), &mut pool),
        };
        drop(pool);
        let id = self.add_member(conn, first, ConnectReport::default());
        self.groups.start(id, open.plan, open.ready);
    }

    /// `NBest`: once a group's main race is decided, opens a sibling connection with each extra
    /// winner, on this socket (the cookies are bound to its address).
    fn open_siblings(&mut self, now: Instant) {
        for sibling in self.groups.siblings_due(&mut self.members) {
            let report = sibling.report();
            let server = sibling.winner.server;
            let conn = Connection::from_winner(
                now,
                sibling.config,
                sibling.pool,
                sibling.tag,
                sibling.winner,
                rng(),
                &mut lock_pool(&self.pool),
            );
            debug!(%server, "n-best: opening a sibling session");
            let id = self.add_member(conn, server, report);
            self.groups.add(sibling.group, id);
        }
    }

    /// Lets go of a connection that is over and whose caller has heard of it.
    fn reap(&mut self, id: u32) {
        if !self
            .members
            .get(&id)
            .is_some_and(|m| m.reported && m.conn.is_done())
        {
            return;
        }
        if let Some(m) = self.members.remove(&id) {
            m.end(CloseReason::Local(CloseCode::NORMAL));
            self.demux.unindex(m.id, &m.keys);
            m.conn.retire(&mut lock_pool(&self.pool));
        }
    }
}

/// A driver that stops (its task aborted with the runtime): every session handle sees its
/// session end once it has read what arrived.
impl Drop for ClientSide {
    fn drop(&mut self) {
        for m in self.members.values() {
            m.link.close();
        }
    }
}

/// What wakes a client endpoint besides its socket, its sessions and its deadlines.
pub(super) enum ClientWake {
    Open(Option<Open>),
}

impl runtime::Side for ClientSide {
    type Wake = ClientWake;

    /// Hands one datagram to the connection it is for (see [`Demux::route`]).
    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        _local: SocketAddr,
        data: &[u8],
        _out: &mut [u8],
    ) -> Option<Transmit> {
        let Some(id) = self.demux.route(from, data) else {
            trace!(%from, len = data.len(), "datagram for no connection: dropped");
            self.strays.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if let Some(m) = self.members.get_mut(&id) {
            m.conn.handle(now, from, data, &mut lock_pool(&self.pool));
        }
        self.touch(id);
        // At once: the next datagram of this batch may carry the key this one created.
        self.reindex(id);
        None
    }

    /// Round-robin over the touched members, [`TRANSMIT_TURN`] datagrams each per turn, so that
    /// one session's burst does not go out ahead of everything another has queued.
    fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        loop {
            let Some(&id) = self.dirty.get(self.tx_cursor) else {
                if !self.tx_progress || self.dirty.is_empty() {
                    return None;
                }
                // Another pass: some member still had more than its turn.
                self.tx_cursor = 0;
                self.tx_progress = false;
                continue;
            };
            if self.tx_turn < TRANSMIT_TURN
                && let Some(t) = self
                    .members
                    .get_mut(&id)
                    .and_then(|m| m.conn.poll_transmit(now, out))
            {
                self.tx_turn += 1;
                self.tx_progress = true;
                return Some(t);
            }
            self.tx_cursor += 1;
            self.tx_turn = 0;
        }
    }

    fn after_flush(&mut self, now: Instant) -> bool {
        // The members touched since the last flush: their events, index entries and timers.
        let touched = std::mem::take(&mut self.dirty);
        self.tx_cursor = 0;
        self.tx_turn = 0;
        self.tx_progress = false;
        for &id in &touched {
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            m.dirty = false;
            m.events();
            if let Some(stats) = m.conn.session_stats() {
                m.link.set_protocol_stats(stats);
            }
            if m.blocked && !m.in_blocked {
                m.in_blocked = true;
                self.blocked.push(id);
            }
            self.reindex(id);
            self.retime(id);
        }
        // Blocked send queues: the connections' queues were just flushed, or a connection is
        // established again after a failover. What moves is sent in the next round.
        let mut still = Vec::new();
        for id in std::mem::take(&mut self.blocked) {
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            let moved = m.drain();
            if m.blocked {
                still.push(id);
            } else {
                m.in_blocked = false;
            }
            if moved {
                self.touch(id);
            }
        }
        self.blocked = still;
        // Siblings' INITs go out now, not at the next wake-up.
        self.open_siblings(now);
        let reported = self.groups.report_ready(&mut self.members);
        for id in touched.into_iter().chain(reported) {
            self.reap(id);
        }
        !self.dirty.is_empty()
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        // Members touched but not yet flushed (the driver's flush rounds ran out): now.
        if !self.dirty.is_empty() {
            return Some(now);
        }
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if self.members.get(&id).is_some_and(|m| m.deadline == Some(t)) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    fn handle_timeout(&mut self, now: Instant) {
        // One lock for every connection due now.
        let pool = SharedPool::clone(&self.pool);
        let mut pool = lock_pool(&pool);
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            if m.deadline != Some(t) {
                continue;
            }
            m.deadline = None;
            m.conn.handle_timeout(now, &mut pool);
            self.touch(id);
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Ready { id } => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.drain();
                    self.touch(id);
                }
            }
            Cmd::Close { id, code } => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.conn.close(code);
                    self.touch(id);
                }
            }
            Cmd::Ticket { id, reply } => {
                let _ = reply.send(self.members.get(&id).and_then(|m| m.conn.stream_ticket()));
            }
        }
    }

    /// Every handle and the client are gone: close politely.
    fn commands_closed(&mut self) {
        self.handles_open = false;
        let ids: Vec<u32> = self.members.keys().copied().collect();
        for id in ids {
            if let Some(m) = self.members.get_mut(&id) {
                m.conn.close(CloseCode::NORMAL);
            }
            self.touch(id);
        }
    }

    fn wake(&mut self) -> impl Future<Output = ClientWake> + Send {
        let opens = self.opens_open.then_some(&mut self.opens);
        async move {
            match opens {
                Some(rx) => ClientWake::Open(rx.recv().await),
                None => std::future::pending().await,
            }
        }
    }

    fn on_wake(&mut self, now: Instant, wake: ClientWake) -> Flow {
        match wake {
            ClientWake::Open(Some(open)) => self.start(open, now),
            ClientWake::Open(None) => self.opens_open = false,
        }
        Flow::Continue
    }

    /// Nothing is served and nothing more can come (the client is gone, or every handle and
    /// the client are).
    fn done(&self) -> bool {
        (!self.opens_open || !self.handles_open) && self.members.is_empty()
    }

    /// Nothing more will be opened: whoever waits hears what became of each member.
    fn finish(&mut self) {
        self.groups.drop_plans();
        for m in self.members.values_mut() {
            m.events();
            m.end(CloseReason::Local(CloseCode::NORMAL));
        }
        let _ = self.groups.report_ready(&mut self.members);
    }
}
