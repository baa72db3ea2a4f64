//! The client endpoint: one UDP socket and the driver task ([`runtime::Driver`]) serving every
//! connection of a [`super::Client`] on it — each `connect` and `connect_n` hands its race to the
//! driver, which keeps the sessions alive afterwards (keepalive, failover).
//!
//! Cost per event, not per connection: a datagram reaches its connection through an index by
//! route key (race tag or receiver id, [`RouteKey`]), confirmed by [`Connection::claims`];
//! connections' deadlines sit in a heap; a flush visits only the connections touched since the
//! last one. A client holding 100,000 sessions (a proxy) pays for the ones that are active.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, trace};
use volley_proto::client::{RouteKey, SharedPoolState, Winner};
use volley_proto::{
    ClientConfig, ClientEvent, CloseCode, CloseReason, ConnectError, Connection, Transmit,
};

use crate::report::{ConnectReport, OfferFate, OfferSeen};
use crate::runtime::{self, Flow};
use crate::session::{Cmd, Drained, Incoming, Link, Status};

pub(super) fn rng() -> Box<rand::rngs::StdRng> {
    Box::new(rand::rngs::StdRng::from_entropy())
}

/// A client endpoint: one UDP socket and the driver task serving every connection on it.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) local: SocketAddr,
    pub(super) opens: mpsc::UnboundedSender<Open>,
    pub(super) cmd: mpsc::UnboundedSender<Cmd>,
}

impl Endpoint {
    pub(super) fn start(socket: UdpSocket) -> Self {
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let (opens, opens_rx) = mpsc::unbounded_channel();
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let side = ClientSide {
            members: BTreeMap::new(),
            groups: Vec::new(),
            next_id: 0,
            opens: opens_rx,
            opens_open: true,
            handles_open: true,
            index: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            tx_cursor: 0,
            tx_turn: 0,
            tx_progress: false,
            blocked: Vec::new(),
        };
        tokio::spawn(runtime::Driver::new(socket, cmd_rx, side, false).run());
        Self { local, opens, cmd }
    }
}

/// A connect for the driver: race `pool`, and tell `ready` when every connection of the group
/// is established or failed.
pub(super) struct Open {
    pub(super) config: ClientConfig,
    pub(super) pool: Vec<SocketAddr>,
    pub(super) plan: Option<SiblingPlan>,
    pub(super) state: SharedPoolState,
    pub(super) ready: oneshot::Sender<Vec<Outcome>>,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The connections of one `connect` (one) or `connect_n` (the main one and its siblings).
struct Group {
    ids: Vec<u32>,
    /// `NBest`: siblings still to be opened when the main race is decided.
    plan: Option<SiblingPlan>,
    ready: Option<oneshot::Sender<Vec<Outcome>>>,
}

/// How an `NBest` group opens its sibling connections once the main race is decided.
pub(super) struct SiblingPlan {
    pub(super) config: ClientConfig,
    pub(super) pool: Vec<SocketAddr>,
    pub(super) state: SharedPoolState,
}

/// The receiving ends of one member's channels, handed to its [`Session`].
pub(super) struct Parts {
    pub(super) link: Arc<Link>,
    pub(super) status: watch::Receiver<Status>,
    pub(super) report: Arc<Mutex<ConnectReport>>,
}

pub(super) type Outcome = (u32, Result<Parts, ConnectError>);

/// One connection of the group: the main one (id 0) or an `NBest` sibling.
struct Member {
    id: u32,
    conn: Connection,
    /// Established (Ok) or failed for good (Err), once known.
    outcome: Option<Result<(), ConnectError>>,
    /// Handed out with the ready message.
    parts: Option<Parts>,
    report: Arc<Mutex<ConnectReport>>,
    link: Arc<Link>,
    /// The send queue holds datagrams the connection could not take yet (racing again after a
    /// failover, or its queue full): retried at every wake-up.
    blocked: bool,
    status: watch::Sender<Status>,
    /// Whether this member's race was decided at least once (the main one: siblings may start).
    selected: bool,
    /// Whether its group's caller has been told how it went (it may leave the driver once done).
    reported: bool,
    /// The deadline last entered in the timer heap.
    deadline: Option<Instant>,
    /// The route keys last entered in the index.
    keys: [Option<RouteKey>; 2],
    /// Touched since the last flush: its transmits, events and timer are to be taken.
    dirty: bool,
    /// Listed in `ClientSide::blocked`.
    in_blocked: bool,
}

fn lock(report: &Mutex<ConnectReport>) -> MutexGuard<'_, ConnectReport> {
    // The lock guards plain data; a panic elsewhere cannot leave it inconsistent.
    report.lock().unwrap_or_else(|e| e.into_inner())
}

impl Member {
    /// Moves the handle's queued datagrams into the connection, as many as it takes now. True
    /// when any moved.
    fn drain(&mut self) -> bool {
        let conn = &mut self.conn;
        let (drained, moved) = self.link.drain(|d| conn.send_datagram_owned(d));
        self.blocked = drained == Drained::Blocked;
        moved
    }

    /// Drains the connection's events into the report, status and channels.
    fn events(&mut self) {
        let stats = self.conn.stats();
        let mut report = lock(&self.report);
        report.stats = stats;
        while let Some(event) = self.conn.poll_event() {
            match event {
                ClientEvent::RaceStarted { .. } => report.offers.clear(),
                ClientEvent::Collected {
                    server,
                    answer_time,
                    load,
                } => report.offers.push(OfferSeen {
                    server,
                    answer_time,
                    load: Some(load),
                    fate: OfferFate::Collected,
                }),
                ClientEvent::Selected {
                    server,
                    answer_time,
                    load,
                } => {
                    self.selected = true;
                    match report.offers.iter_mut().find(|o| o.server == server) {
                        Some(o) => o.fate = OfferFate::Selected,
                        None => report.offers.push(OfferSeen {
                            server,
                            answer_time,
                            load: Some(load),
                            fate: OfferFate::Selected,
                        }),
                    }
                    report.answer_time = Some(answer_time);
                    report.load = Some(load);
                }
                ClientEvent::LateOffer {
                    server,
                    answer_time,
                    load,
                } => {
                    report.offers.push(OfferSeen {
                        server,
                        answer_time,
                        load: Some(load),
                        fate: OfferFate::Late,
                    });
                    report.late_offers += 1;
                }
                ClientEvent::Redirected { from, added } => {
                    info!(%from, ?added, "server refused and redirected us");
                    report.redirected_to.extend(added);
                }
                ClientEvent::Established {
                    server,
                    handshake_time,
                    failover_from,
                } => {
                    report.server = Some(server);
                    report.handshake_time = Some(handshake_time);
                    self.status.send_modify(|s| s.remote = server);
                    if let Some(from) = failover_from {
                        report.failovers += 1;
                        info!(%from, to = %server, "failover: session moved to a new server");
                    }
                    self.outcome.get_or_insert(Ok(()));
                }
                ClientEvent::Datagram(data) => {
                    // A full queue means the application is slow: drop, as UDP would.
                    let delivered = self.link.deliver(Incoming { data, guard: None });
                    if !delivered {
                        debug!("application slow: datagram dropped");
                    }
                    self.link.count_received(delivered, None);
                }
                ClientEvent::ServerLost { server, reason } => {
                    info!(%server, ?reason, "server lost; racing the rest of the pool");
                }
                ClientEvent::Ejected { server, length } => {
                    info!(%server, ?length, "server failed: ejected from races");
                }
                ClientEvent::Failed(e) => {
                    self.outcome.get_or_insert(Err(e));
                    self.link.close();
                    let reason = match e {
                        ConnectError::Refused(_) => CloseReason::Refused,
                        _ => CloseReason::IdleTimeout,
                    };
                    self.status.send_modify(|s| {
                        s.closed.get_or_insert(reason);
                    });
                }
                ClientEvent::Closed(reason) => {
                    self.link.close();
                    self.status.send_modify(|s| {
                        s.closed.get_or_insert(reason);
                    });
                }
                _ => {}
            }
        }
    }
}

/// Datagrams a connection sends per turn of a flush before the next touched connection's.
const TRANSMIT_TURN: usize = 8;

/// The client's part of the shared driver ([`runtime::Side`]): every connection on one socket.
struct ClientSide {
    members: BTreeMap<u32, Member>,
    groups: Vec<Group>,
    next_id: u32,
    opens: mpsc::UnboundedReceiver<Open>,
    /// The client (or a clone) can still open connections here.
    opens_open: bool,
    /// Some session handle, or the client, is still alive.
    handles_open: bool,
    /// Members by the route keys their datagrams carry.
    index: HashMap<RouteKey, u32>,
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
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let keys = m.conn.route_keys();
        if keys == m.keys {
            return;
        }
        for old in m.keys.iter().flatten() {
            if !keys.contains(&Some(*old)) && self.index.get(old) == Some(&id) {
                self.index.remove(old);
            }
        }
        for new in keys.iter().flatten() {
            // A key another member holds (a 32-bit session id both drew) stays with it; the
            // scan in `route` finds this one.
            self.index.entry(*new).or_insert(id);
        }
        m.keys = keys;
    }

    fn unindex(&mut self, id: u32, keys: [Option<RouteKey>; 2]) {
        for k in keys.iter().flatten() {
            if self.index.get(k) == Some(&id) {
                self.index.remove(k);
            }
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
        let report = Arc::new(Mutex::new(report));
        let link = Arc::new(Link::default());
        let (st_tx, st_rx) = watch::channel(Status {
            remote,
            closed: None,
        });
        self.members.insert(
            id,
            Member {
                id,
                conn,
                outcome: None,
                parts: Some(Parts {
                    link: Arc::clone(&link),
                    status: st_rx,
                    report: Arc::clone(&report),
                }),
                report,
                link,
                blocked: false,
                status: st_tx,
                selected: false,
                reported: false,
                deadline: None,
                keys: [None, None],
                dirty: false,
                in_blocked: false,
            },
        );
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
        let conn = Connection::with_state(now, open.config, open.pool, rng(), open.state);
        let id = self.add_member(conn, first, ConnectReport::default());
        self.groups.push(Group {
            ids: vec![id],
            plan: open.plan,
            ready: Some(open.ready),
        });
    }

    /// The member a datagram is for: the one its route key names, if that one claims it; else
    /// (a key two members share, a stale offer) the first that claims it; else the oldest
    /// member, which counts what nobody wants.
    fn route(&self, from: SocketAddr, datagram: &[u8]) -> Option<u32> {
        let hit = RouteKey::of(datagram).and_then(|k| self.index.get(&k).copied());
        match hit {
            Some(id) if self.members.get(&id)?.conn.claims(from, datagram) => Some(id),
            Some(_) => self
                .members
                .values()
                .find(|m| m.conn.claims(from, datagram))
                .map(|m| m.id)
                .or_else(|| self.members.keys().next().copied()),
            None => self.members.keys().next().copied(),
        }
    }

    /// `NBest`: once a group's main race is decided, opens a sibling connection with each extra
    /// winner, on this socket (the cookies are bound to its address). Only the first race's
    /// runners-up are used; a later race of the main connection (after a refusal or failover)
    /// serves the main session alone. True when siblings were added.
    fn open_siblings(&mut self, now: Instant) -> bool {
        let mut added = false;
        for g in 0..self.groups.len() {
            if self.groups[g].plan.is_none() {
                continue;
            }
            let main_id = self.groups[g].ids[0];
            let Some(main) = self.members.get_mut(&main_id) else {
                self.groups[g].plan = None;
                continue;
            };
            let decided = main.selected;
            let failed = matches!(main.outcome, Some(Err(_)));
            if !decided {
                if failed {
                    self.groups[g].plan = None;
                }
                continue;
            }
            let extra = main.conn.take_extra_winners();
            let tag = main.conn.decided_tag();
            let Some(plan) = self.groups[g].plan.take() else {
                continue;
            };
            let Some(tag) = tag else {
                continue;
            };
            for w in extra {
                let report = sibling_report(&w);
                let server = w.server;
                let conn = Connection::from_winner(
                    now,
                    plan.config.clone(),
                    plan.pool.clone(),
                    tag,
                    w,
                    rng(),
                    SharedPoolState::clone(&plan.state),
                );
                debug!(%server, "n-best: opening a sibling session");
                let id = self.add_member(conn, server, report);
                self.groups[g].ids.push(id);
                added = true;
            }
        }
        added
    }

    /// Once every member of a group is established or failed (and no sibling is still to
    /// come), tells its caller, handing over each member's receiving ends. Returns the members
    /// reported.
    fn report_ready(&mut self) -> Vec<u32> {
        let mut reported = Vec::new();
        for g in &mut self.groups {
            if g.ready.is_none()
                || g.plan.is_some()
                || g.ids.iter().any(|id| {
                    self.members
                        .get(id)
                        .is_some_and(|m| m.outcome.is_none() && !m.conn.is_done())
                })
            {
                continue;
            }
            let Some(ready) = g.ready.take() else {
                continue;
            };
            let outcomes = g
                .ids
                .iter()
                .map(|id| {
                    let outcome = match self.members.get_mut(id) {
                        Some(m) => {
                            m.reported = true;
                            match (m.outcome, m.parts.take()) {
                                (Some(Ok(())), Some(parts)) => Ok(parts),
                                (Some(Err(e)), _) => Err(e),
                                // Closed before it came up: only a local close does that.
                                _ => Err(ConnectError::NothingToRace),
                            }
                        }
                        None => Err(ConnectError::NothingToRace),
                    };
                    (*id, outcome)
                })
                .collect();
            reported.extend_from_slice(&g.ids);
            let _ = ready.send(outcomes);
        }
        self.groups.retain(|g| g.ready.is_some());
        reported
    }

    /// Lets go of a connection that is over and whose caller has heard of it.
    fn reap(&mut self, id: u32) {
        let Some(m) = self.members.get(&id) else {
            return;
        };
        if !(m.reported && m.conn.is_done()) {
            return;
        }
        if let Some(m) = self.members.remove(&id) {
            m.link.close();
            m.status.send_modify(|s| {
                s.closed
                    .get_or_insert(CloseReason::Local(CloseCode::NORMAL));
            });
            self.unindex(id, m.keys);
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
enum ClientWake {
    Open(Option<Open>),
}

impl runtime::Side for ClientSide {
    type Wake = ClientWake;

    /// Hands one datagram to the connection it is for (see [`ClientSide::route`]).
    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        _local: SocketAddr,
        data: &[u8],
        _out: &mut [u8],
    ) -> Option<Transmit> {
        let Some(id) = self.route(from, data) else {
            trace!(%from, "datagram for no connection");
            return None;
        };
        if let Some(m) = self.members.get_mut(&id) {
            m.conn.handle(now, from, data);
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
        let reported = self.report_ready();
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
            m.conn.handle_timeout(now);
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
        for g in &mut self.groups {
            g.plan = None;
        }
        for m in self.members.values_mut() {
            m.events();
            m.link.close();
            m.status.send_modify(|s| {
                s.closed
                    .get_or_insert(CloseReason::Local(CloseCode::NORMAL));
            });
        }
        let _ = self.report_ready();
    }
}

/// The report a sibling starts with: the offer that chose its server.
fn sibling_report(w: &Winner) -> ConnectReport {
    ConnectReport {
        answer_time: Some(w.answer_time),
        load: Some(w.load),
        offers: vec![OfferSeen {
            server: w.server,
            answer_time: w.answer_time,
            load: Some(w.load),
            fate: OfferFate::Selected,
        }],
        ..ConnectReport::default()
    }
}
