//! The server's part of the shared driver ([`runtime::Side`]): one [`ServerEndpoint`], the
//! sessions handed to the application through the accept queue, its load reports and the control
//! messages of its [`super::Server`] and handles, and the precise timer for paced offers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{debug, info, trace};
use volley_proto::allow::AllowList;
use volley_proto::{
    CloseCode, CloseReason, ReplyStatus, SendError, ServerEndpoint, ServerEvent, Transmit,
};

use crate::load::Shared;
use crate::runtime;
use crate::session::{Cmd, Core, Drained, Incoming, Link, Outbound, Session, Status, WireRequest};
use crate::timer::PreciseTimer;

/// What a [`super::Server`] or a [`super::ServerHandle`] asks of the running driver.
pub(super) enum Control {
    Shutdown(oneshot::Sender<()>),
    Capacity(Option<u32>),
    MaxSessions(Option<u32>),
    /// Start (true) or end draining (PROTOCOL.md §7.9).
    Drain(bool),
    /// Whether the server can serve new sessions besides a drain (false: its backend is down);
    /// an unavailable server behaves on the wire as a draining one (PROTOCOL.md §7.9).
    Available(bool),
    /// A new allow-list (None: any client); told how many sessions it revoked.
    AllowList(Option<Arc<AllowList>>, oneshot::Sender<usize>),
}

struct SessionSlot {
    link: Arc<Link>,
    status: watch::Sender<Status>,
    /// Set by the application's first [`Session::recv_request`]: from then on every datagram
    /// is a request and gets a [`LoadGuard`] the moment it arrives.
    requests: Arc<AtomicBool>,
    /// The session's first datagram rode in its INIT and has not been delivered yet: it is a
    /// request from its arrival, before the application could ask for requests (else a
    /// one-request session's work would never show in the load its server announces).
    early_unread: bool,
}

/// The server's part of the shared driver ([`runtime::Side`]): one [`ServerEndpoint`], the
/// sessions handed to the application, its load reports and control messages.
pub(super) struct ServerSide {
    endpoint: ServerEndpoint,
    accept: mpsc::Sender<Session>,
    control: mpsc::UnboundedReceiver<Control>,
    shared: Arc<Shared>,
    /// Handed to each new session: its commands come back to the driver through it.
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    sessions: HashMap<u32, SessionSlot>,
    /// Sessions whose send queue the core could not take whole; retried after each flush.
    blocked: Vec<u32>,
    /// Paced servers: the precise timer and the horizon within which it is used.
    precise: Option<(PreciseTimer, Duration)>,
    /// Whether the precise timer is armed for the next deadline.
    precise_armed: bool,
    /// A graceful shutdown's caller, told once the CLOSEs are out.
    stopping: Option<oneshot::Sender<()>>,
    /// Draining was asked for ([`Control::Drain`]).
    drain_asked: bool,
    /// The server cannot serve new sessions ([`Control::Available`] false).
    unavailable: bool,
}

/// What wakes a server besides its socket, its sessions and its core's deadline.
pub(super) enum ServerWake {
    Control(Option<Control>),
    /// A load guard was taken or dropped (or `set_app_load` called).
    Load,
    /// The precise timer fired (a paced offer is due).
    Timer,
}

impl ServerSide {
    pub(super) fn new(
        endpoint: ServerEndpoint,
        accept: mpsc::Sender<Session>,
        control: mpsc::UnboundedReceiver<Control>,
        shared: Arc<Shared>,
        cmd_tx: mpsc::UnboundedSender<Cmd>,
        precise: Option<(PreciseTimer, Duration)>,
    ) -> Self {
        Self {
            endpoint,
            accept,
            control,
            shared,
            cmd_tx,
            sessions: HashMap::new(),
            blocked: Vec::new(),
            precise,
            precise_armed: false,
            stopping: None,
            drain_asked: false,
            unavailable: false,
        }
    }

    /// Moves a session's queued datagrams and replies into the core, as many as it has room
    /// for. True when any moved.
    fn drain(&mut self, id: u32) -> bool {
        let Some(slot) = self.sessions.get(&id) else {
            return false; // ended: its handle already sees it closed
        };
        let mut core = SessionCore {
            endpoint: &mut self.endpoint,
            id,
            now: crate::socket::now(),
        };
        let (drained, moved) = slot.link.drain(&mut core);
        if drained == Drained::Blocked {
            self.blocked.push(id);
        }
        moved
    }

    fn event(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::Opened { id, remote, client } => {
                let (st_tx, st_rx) = watch::channel(Status {
                    remote,
                    closed: None,
                });
                let requests = Arc::new(AtomicBool::new(false));
                let link = Arc::new(Link::default());
                let early = self.endpoint.early_data(id).unwrap_or(false);
                let session = Session::new(id, self.cmd_tx.clone(), Arc::clone(&link), st_rx, None)
                    .with_requests(Arc::clone(&requests))
                    .with_client(client)
                    .with_early_data(early);
                if self.accept.try_send(session).is_err() {
                    debug!(id, "accept queue full: session refused");
                    self.endpoint.close(id, CloseCode::GOING_AWAY);
                    return;
                }
                self.sessions.insert(
                    id,
                    SessionSlot {
                        link,
                        status: st_tx,
                        requests,
                        early_unread: early,
                    },
                );
            }
            ServerEvent::Datagram { id, data } => {
                if let Some(slot) = self.sessions.get_mut(&id) {
                    // A request counts from the moment it arrives, queueing included — the
                    // early datagram too, which arrives with the session.
                    let early = std::mem::take(&mut slot.early_unread);
                    let guard = (slot.requests.load(Ordering::Acquire) || early)
                        .then(|| self.shared.guard());
                    let delivered = slot
                        .link
                        .deliver(Incoming {
                            data,
                            guard,
                            wire: None,
                        })
                        .is_ok();
                    if !delivered {
                        // (Its guard, if any, drops here: a request never served.)
                        trace!(id, "application slow: datagram dropped");
                    }
                    slot.link
                        .count_received(delivered, self.endpoint.session_stats(id));
                }
            }
            ServerEvent::Request { id, request, body } => {
                let Some(slot) = self.sessions.get(&id) else {
                    return;
                };
                // The endpoint counts it as load from now until its REPLY; the application
                // answers it through its `Request` (dropped unanswered: DROPPED).
                let wire =
                    WireRequest::new(request, id, Arc::clone(&slot.link), self.cmd_tx.clone());
                let incoming = Incoming {
                    data: body,
                    guard: None,
                    wire: Some(wire),
                };
                let delivered = match slot.link.deliver(incoming) {
                    Ok(()) => true,
                    Err(back) => {
                        // The application is slow: its caller hears REFUSED at once.
                        trace!(id, request, "application slow: request refused");
                        if let Some(wire) = back.wire {
                            wire.disarm();
                        }
                        let now = crate::socket::now();
                        let refused = ReplyStatus::REFUSED;
                        if self
                            .endpoint
                            .reply(now, id, request, refused, Bytes::new())
                            .is_err()
                        {
                            self.endpoint.forget_request(now, id, request);
                        }
                        false
                    }
                };
                slot.link
                    .count_received(delivered, self.endpoint.session_stats(id));
            }
            ServerEvent::Migrated { id, remote } => {
                if let Some(slot) = self.sessions.get(&id) {
                    slot.status.send_modify(|s| s.remote = remote);
                }
            }
            ServerEvent::Closed { id, reason } => {
                if let Some(slot) = self.sessions.remove(&id) {
                    slot.status.send_modify(|s| s.closed = Some(reason));
                    slot.link.close();
                }
            }
            _ => {}
        }
    }
}

impl runtime::Side for ServerSide {
    type Wake = ServerWake;

    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<Transmit> {
        self.endpoint.handle(now, from, local, data, out)
    }

    /// Sessions' DATA and INITs first, PROBEs last (PROTOCOL.md §7.7): a PROBE flood delays
    /// the rest by one batch at most.
    fn first_pass(&self, data: &[u8]) -> bool {
        data.get(1) != Some(&volley_proto::packet::kind::PROBE)
    }

    /// Every round full: the socket has a backlog, which the endpoint weighs (§7.7).
    fn backlog(&mut self, now: Instant, backlog: bool) {
        self.endpoint.set_backlog(now, backlog);
    }

    fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        self.endpoint.poll_transmit(now, out)
    }

    fn after_flush(&mut self, now: Instant) -> bool {
        // The core's queues are empty now: sessions it turned away get their turn.
        let mut more = false;
        for id in std::mem::take(&mut self.blocked) {
            more |= self.drain(id);
        }
        while let Some(event) = self.endpoint.poll_event() {
            // A session refused for a full accept queue is closed: its CLOSE is to send.
            more |= matches!(event, ServerEvent::Opened { .. });
            self.event(event);
        }
        let load = self.endpoint.load(now);
        let mut published = self.shared.published();
        published.stats = *self.endpoint.stats();
        published.load = load;
        published.answer_delays = *self.endpoint.answer_delays();
        published.allow_list_len = self.endpoint.allow_list().map(|l| l.len());
        more
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let next = self.endpoint.poll_timeout();
        // Near deadlines (paced offers) also arm the precise timer; tokio's sleep stays as the
        // backstop either way.
        if let Some((timer, horizon)) = &self.precise {
            let near = next.filter(|t| t.saturating_duration_since(now) <= *horizon);
            timer.arm(near);
            self.precise_armed = near.is_some();
        }
        next
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
    }

    fn command(&mut self, cmd: Cmd) {
        // A reply usually drops its request's guard too: take that change first, so that the
        // load report a REPLY carries counts it.
        if take_permit(&self.shared.changed) {
            self.endpoint
                .set_app_load(crate::socket::now(), self.shared.app_load());
        }
        match cmd {
            Cmd::Ready { id } => {
                self.drain(id);
            }
            Cmd::Close { id, code } => self.endpoint.close(id, code),
            Cmd::Ticket { id, reply } => {
                let _ = reply.send(self.endpoint.stream_ticket(id));
            }
        }
        // A datagram reply drops its request's guard after it is queued: take that change now
        // rather than on another wake-up.
        if take_permit(&self.shared.changed) {
            self.endpoint
                .set_app_load(crate::socket::now(), self.shared.app_load());
        }
    }

    fn wake(&mut self) -> impl Future<Output = ServerWake> + Send {
        let precise = self
            .precise
            .as_ref()
            .map(|(timer, _)| (timer, self.precise_armed));
        let control = &mut self.control;
        let changed = &self.shared.changed;
        async move {
            tokio::select! {
                c = control.recv() => ServerWake::Control(c),
                // Application load changed (a guard taken or dropped): the flush that follows
                // sends any held offer a freed slot releases.
                _ = changed.notified() => ServerWake::Load,
                _ = fired(precise) => ServerWake::Timer,
            }
        }
    }

    fn on_wake(&mut self, now: Instant, wake: ServerWake) -> runtime::Flow {
        match wake {
            ServerWake::Control(Some(Control::Capacity(c))) => self.endpoint.set_capacity(c),
            ServerWake::Control(Some(Control::MaxSessions(m))) => self.endpoint.set_max_sessions(m),
            ServerWake::Control(Some(Control::Drain(on))) => {
                if on != self.drain_asked {
                    info!(
                        sessions = self.endpoint.session_count(),
                        draining = on,
                        "{}",
                        if on {
                            "draining: no new sessions; the open ones go on"
                        } else {
                            "drain ended"
                        }
                    );
                }
                self.drain_asked = on;
                self.endpoint
                    .set_draining(self.drain_asked || self.unavailable);
            }
            ServerWake::Control(Some(Control::Available(on))) => {
                self.unavailable = !on;
                self.endpoint
                    .set_draining(self.drain_asked || self.unavailable);
            }
            ServerWake::Control(Some(Control::AllowList(allow, reply))) => {
                let keys = allow.as_ref().map(|l| l.len());
                // The revoked sessions' CLOSEs are queued now and leave with the flush that
                // follows this wake-up; each session's handle sees `Local(REVOKED)` once its
                // CLOSE is out.
                let revoked = self.endpoint.set_allow_list(allow);
                // Published before the caller hears back, so that it reads the new size.
                self.shared.published().allow_list_len = keys;
                match keys {
                    Some(keys) => info!(keys, revoked, "allow-list replaced"),
                    None => info!(revoked, "allow-list removed: any client may connect"),
                }
                let _ = reply.send(revoked);
            }
            ServerWake::Control(Some(Control::Shutdown(done))) => {
                self.stopping = Some(done);
                self.begin_shutdown();
                return runtime::Flow::Stop;
            }
            ServerWake::Control(None) => {
                self.begin_shutdown();
                return runtime::Flow::Stop;
            }
            ServerWake::Load => self.endpoint.set_app_load(now, self.shared.app_load()),
            ServerWake::Timer => {}
        }
        runtime::Flow::Continue
    }

    /// After the last flush (the CLOSEs are out): every session still known ends, and the
    /// shutdown's caller hears of it.
    fn finish(&mut self) {
        for (_, slot) in self.sessions.drain() {
            slot.status.send_modify(|s| {
                s.closed
                    .get_or_insert(CloseReason::Local(CloseCode::GOING_AWAY));
            });
            slot.link.close();
        }
        if let Some(done) = self.stopping.take() {
            let _ = done.send(());
        }
    }
}

/// A driver stopped without a shutdown (the `Server` dropped, its task aborted): every session
/// handle sees its session end once it has read what arrived.
impl Drop for ServerSide {
    fn drop(&mut self) {
        for slot in self.sessions.values() {
            slot.link.close();
        }
    }
}

impl ServerSide {
    fn begin_shutdown(&mut self) {
        info!(
            sessions = self.endpoint.session_count(),
            "shutting down: closing sessions (going away)"
        );
        self.endpoint.close_all(CloseCode::GOING_AWAY);
    }
}

/// One server session as the core a handle's queue drains into.
struct SessionCore<'a> {
    endpoint: &'a mut ServerEndpoint,
    id: u32,
    now: Instant,
}

impl Core for SessionCore<'_> {
    fn forget(&mut self, _: u32) {
        // A server's handle forgets nothing: it answers every request.
    }

    fn push(&mut self, item: Outbound) -> Result<(), (SendError, Outbound)> {
        match item {
            Outbound::Datagram(d) => self
                .endpoint
                .send_owned(self.id, d)
                .map_err(|(e, d)| (e, Outbound::Datagram(d))),
            Outbound::Reply { id, status, body } => self
                .endpoint
                .reply(self.now, self.id, id, status, body)
                .map_err(|(e, body)| (e, Outbound::Reply { id, status, body })),
            request @ Outbound::Request { .. } => Err((SendError::WrongDirection, request)),
        }
    }
}

/// Takes `notify`'s stored permit if it has one (a change already signalled), without waiting.
fn take_permit(notify: &Notify) -> bool {
    let notified = std::pin::pin!(notify.notified());
    notified
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

/// Resolves when an armed precise timer fires; never when there is none or it is not armed.
async fn fired(precise: Option<(&PreciseTimer, bool)>) {
    match precise {
        Some((timer, true)) => timer.fired().await,
        _ => std::future::pending().await,
    }
}
