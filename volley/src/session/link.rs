//! What a session handle shares with its driver: the bounded send and receive queues and the
//! counters ([`Link`]), what the handle can see of the session's state ([`Status`]), and the
//! commands a handle sends its driver ([`Cmd`]). A handle and its driver never share more than
//! this, so sessions depend on neither the client nor the server side.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use volley_proto::{CloseCode, CloseReason, SendError};

use super::SessionStats;
use crate::load::LoadGuard;

/// Why [`Link::push`] gave a datagram back.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// The session has ended.
    Closed,
    /// The send queue is at its bound.
    Full,
}

/// Requests from session handles to their driver task. The channel is unbounded but holds at
/// most a few messages per session: `Ready` is sent only when a session's send queue goes from
/// empty to non-empty, `Close` at most twice (an explicit close and the drop).
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

#[derive(Debug, Default)]
struct OutState {
    queue: VecDeque<Bytes>,
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
        st.queue.push_back(data);
        st.stats.datagrams_sent += 1;
        st.stats.send_queued = st.queue.len();
        Ok(!std::mem::replace(&mut st.signalled, true))
    }

    /// Driver side: moves queued datagrams into the protocol core with `push` (which takes
    /// each by value and hands it back when refused) until the queue is empty or the core
    /// refuses one for lack of room (or for not being established yet). Also says whether any
    /// datagram moved.
    pub(crate) fn drain(
        &self,
        mut push: impl FnMut(Bytes) -> Result<(), (SendError, Bytes)>,
    ) -> (Drained, bool) {
        let mut st = self.state();
        let mut moved = false;
        let outcome = loop {
            let Some(data) = st.queue.pop_front() else {
                st.signalled = false;
                break Drained::Empty;
            };
            match push(data) {
                Ok(()) => moved = true,
                Err((SendError::QueueFull | SendError::NotEstablished, data)) => {
                    st.queue.push_front(data);
                    break Drained::Blocked;
                }
                Err((e, _)) => {
                    // Closed (or a size the handle already refused): nothing more can leave.
                    tracing::trace!(error = %e, "send queue discarded");
                    st.stats.send_discarded += st.queue.len() as u64 + 1;
                    st.queue.clear();
                    st.signalled = false;
                    moved = true;
                    break Drained::Empty;
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
        st.stats.send_queued = 0;
        drop(st);
        self.room.notify_waiters();
        // What was received stays readable; then the handle sees the end.
        self.inbox().closed = true;
        self.arrived.notify_waiters();
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // Plain data behind the lock; a panic elsewhere cannot leave it inconsistent.
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Driver side: queues a received datagram for the application. False (and the datagram
    /// dropped, its guard with it) when [`INCOMING_QUEUE`] are already waiting: the application
    /// is slow, and a datagram is dropped as UDP would drop it.
    pub(crate) fn deliver(&self, incoming: Incoming) -> bool {
        let mut inbox = self.inbox();
        if inbox.closed || inbox.queue.len() >= INCOMING_QUEUE {
            return false;
        }
        inbox.queue.push_back(incoming);
        drop(inbox);
        self.arrived.notify_waiters();
        true
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
/// the [`LoadGuard`] taken when it arrived.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub data: Bytes,
    pub guard: Option<LoadGuard>,
}
