//! What a session handle shares with its driver: the bounded send and receive queues, the
//! requests in flight ([`Calls`]) and the counters ([`Link`]), what the handle can see of the
//! session's state ([`Status`]), and the commands a handle sends its driver ([`Cmd`]). A handle
//! and its driver never share more than this, so sessions depend on neither the client nor the
//! server side.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use volley_proto::{CloseCode, CloseReason, ReplyStatus, SendError};

use super::SessionStats;
use super::calls::Calls;
use super::request::WireRequest;
use crate::error::Error;
use crate::load::LoadGuard;

/// Why [`Link::push`] gave a datagram back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The session has ended.
    Closed,
    /// The send queue is at its bound.
    Full,
}

/// Requests from session handles to their driver task. The channel is unbounded but holds at
/// most a few messages per session: `Ready` is sent only when a session's send queue (or its
/// list of forgotten requests) goes from empty to non-empty, `Close` at most twice (an explicit
/// close and the drop).
#[derive(Debug)]
pub(crate) enum Cmd {
    /// The session's send queue has datagrams for the driver.
    Ready {
        id: u32,
    },
    Close {
        id: u32,
        code: CloseCode,
    },
    /// The session's stream ticket (for a TCP proxy stream), or None if it is not established.
    Ticket {
        id: u32,
        reply: tokio::sync::oneshot::Sender<Option<volley_proto::stream::StreamTicket>>,
    },
}

/// What a handle queues for its driver to hand to the protocol core.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A datagram.
    Datagram(Bytes),
    /// A client's request, under the id its call took.
    Request { id: u32, body: Bytes },
    /// A server's reply to request `id`.
    Reply {
        id: u32,
        status: ReplyStatus,
        body: Bytes,
    },
}

/// The protocol core a driver drains a session's queue into.
pub(crate) trait Core {
    /// The caller of request `id` stopped waiting: the session forgets it.
    fn forget(&mut self, id: u32);
    /// Takes one item, or hands it back with why not.
    fn push(&mut self, item: Outbound) -> Result<(), (SendError, Outbound)>;
}

#[derive(Debug, Default)]
struct OutState {
    queue: VecDeque<Outbound>,
    /// Requests handed to the core whose callers stopped waiting, to forget at the next drain.
    forgotten: Vec<u32>,
    /// A `Ready` is in the channel or the driver holds the session as blocked.
    signalled: bool,
    closed: bool,
    stats: SessionStats,
}

/// Datagrams received for the application, and whether more can come.
#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Incoming>,
    closed: bool,
}

/// The state a session handle shares with its driver: the bounded send queue, the bounded
/// receive queue and the counters. Both queues allocate only while they hold something, so an
/// idle session costs this struct and nothing more (a channel per session would hold a block of
/// slots from its creation).
#[derive(Debug, Default)]
pub(crate) struct Link {
    state: Mutex<OutState>,
    /// Notified when the send queue shrinks or the session closes.
    room: Notify,
    inbox: Mutex<Inbox>,
    /// Notified (every waiter) when a datagram arrives or the session closes. Every waiter
    /// wakes, not one: with several receivers on one session (an `Arc<Session>` shared by
    /// tasks), a wake-up handed to one waiter that then stops waiting — a `recv` dropped in a
    /// `select!`, a `poll_recv` caller that polls no more — would otherwise be lost to the rest.
    /// A waiter that finds the queue empty waits again.
    arrived: Arc<Notify>,
    /// A client session's requests in flight.
    calls: Calls,
}

/// What [`Link::drain`] left behind.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The queue is empty.
    Empty,
    /// The core took what it could; call again after its transmits are flushed (or once the
    /// session is established again, on a client racing after a failover).
    Blocked,
}

impl Link {
    fn state(&self) -> MutexGuard<'_, OutState> {
        // Plain data behind the lock; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The send queue's room: notified when it shrinks or the session closes.
    pub(super) fn room(&self) -> &Notify {
        &self.room
    }

    /// The counters as of now.
    pub(super) fn stats(&self) -> SessionStats {
        self.state().stats
    }

    /// The session's requests in flight.
    pub(crate) fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Handle side: queues `data` for the driver, unless the session is closed or `bound`
    /// datagrams already wait (then it comes back, with why). `Ok(true)`: the driver has not
    /// been told of this queue yet, and must be (one `Ready` per queue that stops being empty).
    pub(super) fn push(&self, data: Bytes, bound: usize) -> Result<bool, (Pushed, Bytes)> {
        let mut st = self.state();
        if st.closed {
            return Err((Pushed::Closed, data));
        }
        if st.queue.len() >= bound {
            return Err((Pushed::Full, data));
        }
        st.queue.push_back(Outbound::Datagram(data));
        st.stats.datagrams_sent += 1;
        st.stats.send_queued = st.queue.len();
        Ok(!std::mem::replace(&mut st.signalled, true))
    }

    /// Handle side: queues a request or a reply, unless the session is closed. Not bounded by
    /// the datagrams' bound: requests are bounded by the calls in flight
    /// ([`volley_proto::MAX_REQUESTS`]), replies by the requests received. `Ok(true)`: the
    /// driver must be told, as for [`Link::push`].
    pub(crate) fn push_call(&self, item: Outbound) -> Result<bool, Pushed> {
        let mut st = self.state();
        if st.closed {
            return Err(Pushed::Closed);
        }
        st.queue.push_back(item);
        st.stats.send_queued = st.queue.len();
        Ok(!std::mem::replace(&mut st.signalled, true))
    }

    /// Handle side: the caller of request `id` stopped waiting. Still queued here, the request
    /// is taken out; handed to the core already, it is forgotten at the next drain. `true`: the
    /// driver must be told, as for [`Link::push`].
    pub(crate) fn forget(&self, id: u32) -> bool {
        let mut st = self.state();
        if st.closed {
            return false;
        }
        let queued = st
            .queue
            .iter()
            .position(|o| matches!(o, Outbound::Request { id: queued, .. } if *queued == id));
        match queued {
            Some(at) => {
                st.queue.remove(at);
                st.stats.send_queued = st.queue.len();
                false
            }
            None => {
                st.forgotten.push(id);
                !std::mem::replace(&mut st.signalled, true)
            }
        }
    }

    /// Driver side: tells the core of the forgotten requests, then moves queued items into it
    /// (each by value, handed back when refused) until the queue is empty or the core refuses
    /// one for lack of room (or for not being established yet). An item the core refuses for
    /// itself (a request it will not take) is dropped, its caller told why; a closed core takes
    /// nothing more. Also says whether anything moved.
    pub(crate) fn drain(&self, core: &mut impl Core) -> (Drained, bool) {
        let mut st = self.state();
        let mut moved = false;
        for id in st.forgotten.drain(..) {
            core.forget(id);
        }
        let outcome = loop {
            let Some(item) = st.queue.pop_front() else {
                st.signalled = false;
                break Drained::Empty;
            };
            match core.push(item) {
                Ok(()) => moved = true,
                Err((SendError::QueueFull | SendError::NotEstablished, item)) => {
                    st.queue.push_front(item);
                    break Drained::Blocked;
                }
                Err((SendError::Closed, _)) => {
                    // Nothing more can leave.
                    tracing::trace!("send queue discarded: the session is closed");
                    st.stats.send_discarded += st.queue.len() as u64 + 1;
                    st.queue.clear();
                    st.signalled = false;
                    moved = true;
                    break Drained::Empty;
                }
                Err((e, item)) => {
                    // This item only (a size the handle already refused, a request the session
                    // will not take): the rest goes on.
                    tracing::trace!(error = %e, "one queued item refused");
                    st.stats.send_discarded += 1;
                    moved = true;
                    if let Outbound::Request { id, .. } = item {
                        self.calls.complete(id, Err(Error::from_send(e)));
                    }
                }
            }
        };
        st.stats.send_queued = st.queue.len();
        drop(st);
        if moved {
            self.room.notify_waiters();
        }
        (outcome, moved)
    }

    /// Driver side: the session has ended; queued datagrams are discarded and waiting senders
    /// wake to an error.
    pub(crate) fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        st.stats.send_discarded += st.queue.len() as u64;
        st.queue.clear();
        st.forgotten.clear();
        st.stats.send_queued = 0;
        drop(st);
        self.room.notify_waiters();
        // Every call in flight fails (its caller reads the close reason).
        self.calls.close();
        // What was received stays readable; then the handle sees the end.
        self.inbox().closed = true;
        self.arrived.notify_waiters();
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // Plain data behind the lock; a panic elsewhere cannot leave it inconsistent.
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Driver side: queues a received datagram or request for the application. Handed back
    /// when [`INCOMING_QUEUE`] are already waiting (the application is slow: a datagram is
    /// dropped as UDP would drop it, its guard with it; a request is refused) or the session is
    /// closed.
    pub(crate) fn deliver(&self, incoming: Incoming) -> Result<(), Incoming> {
        let mut inbox = self.inbox();
        if inbox.closed || inbox.queue.len() >= INCOMING_QUEUE {
            return Err(incoming);
        }
        inbox.queue.push_back(incoming);
        drop(inbox);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Handle side, without waiting: the next received datagram (`Some(Some)`), the end once
    /// closed and empty (`Some(None)`), or nothing yet (`None`). Each datagram is popped under
    /// the inbox's lock, so receivers racing for it get it once between them.
    fn take_incoming(&self) -> Option<Option<Incoming>> {
        let mut inbox = self.inbox();
        match inbox.queue.pop_front() {
            Some(incoming) => Some(Some(incoming)),
            None if inbox.closed => Some(None),
            None => None,
        }
    }

    /// Handle side: the next received datagram, `None` once closed and empty. Any number of
    /// tasks may wait at once.
    pub(super) async fn next_incoming(&self) -> Option<Incoming> {
        loop {
            // Made before the check: a `notify_waiters` from then on completes it even though
            // it is not polled yet, so a datagram queued between the check and the wait is not
            // missed.
            let arrived = self.arrived.notified();
            if let Some(next) = self.take_incoming() {
                return next;
            }
            arrived.await;
        }
    }

    /// Handle side, for [`super::Session::poll_recv`]: like [`Link::next_incoming`] with the wait kept
    /// in `waiting` between polls.
    pub(super) fn poll_incoming(
        &self,
        waiting: &mut Option<Pin<Box<OwnedNotified>>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Incoming>> {
        loop {
            if let Some(next) = self.take_incoming() {
                *waiting = None;
                return Poll::Ready(next);
            }
            match waiting {
                // A new wait counts wake-ups from its creation: check the queue again before
                // polling it, so nothing queued before it was made is missed.
                None => *waiting = Some(Box::pin(Arc::clone(&self.arrived).notified_owned())),
                Some(notified) => match notified.as_mut().poll(cx) {
                    Poll::Ready(()) => *waiting = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    /// Driver side: one datagram delivered to the application, or dropped for a full queue;
    /// with the protocol session's counters as of now when the driver has them at hand (one
    /// lock for both).
    pub(crate) fn count_received(
        &self,
        delivered: bool,
        protocol: Option<volley_proto::session::SessionStats>,
    ) {
        let mut st = self.state();
        if let Some(p) = protocol {
            st.stats.protocol = p;
        }
        if delivered {
            st.stats.datagrams_received += 1;
        } else {
            st.stats.received_dropped += 1;
        }
    }

    /// Driver side: the protocol session's counters as of now.
    pub(crate) fn set_protocol_stats(&self, stats: volley_proto::session::SessionStats) {
        self.state().stats.protocol = stats;
    }
}

/// What a session handle can see of its state; updated by the driver.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub remote: SocketAddr,
    pub closed: Option<CloseReason>,
}

/// How many received datagrams wait for the application before newer ones are dropped.
pub(crate) const INCOMING_QUEUE: usize = 1024;

/// A received datagram on its way to the application; on a server session in request mode, with
/// the [`LoadGuard`] taken when it arrived; a request (REQUEST frame), with what answers it.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub data: Bytes,
    pub guard: Option<LoadGuard>,
    pub wire: Option<WireRequest>,
}
