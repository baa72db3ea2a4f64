//! A client session's requests in flight as its handle sees them ([`Calls`]): who waits for
//! which id, the ids handed out, and what the replies taught (the server's latest load report,
//! the smoothed reply time). Shared by the handle, which opens and cancels calls, and the
//! driver, which completes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use volley_proto::MAX_REQUESTS;

use crate::error::Error;

/// How a call ends: the reply's bytes, or why there are none.
pub(crate) type Outcome = Result<Bytes, Error>;

/// The server's load as a reply reported it (PROTOCOL.md §5.8), and when the reply arrived:
/// what [`crate::Session::load_report`] returns.
///
/// ```
/// use std::time::Duration;
/// use volley::LoadReport;
///
/// // What a balancer ranks a session by: the server's expected completion, aged.
/// let report = LoadReport::default();
/// let penalty = report.expected.unwrap_or(Duration::ZERO) + report.age() / 2;
/// assert!(penalty < Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// The server's expected completion of one more request when it wrote the reply; None when
    /// it gave no estimate.
    pub expected: Option<Duration>,
    /// Requests in flight at the server (plus its offers outstanding) then, the reply's own
    /// request no longer counted; at most 65,535.
    pub in_flight: u32,
    /// The server's capacity (requests it serves at once); 0 when unbounded; at most 65,535.
    pub capacity: u32,
    /// When the reply arrived.
    pub at: Instant,
}

impl Default for LoadReport {
    fn default() -> Self {
        Self {
            expected: None,
            in_flight: 0,
            capacity: 0,
            at: crate::socket::now(),
        }
    }
}

impl LoadReport {
    /// The report as the wire gave it, arrived `at`.
    pub(crate) fn new(report: volley_proto::LoadReport, at: Instant) -> Self {
        Self {
            expected: report.expected(),
            in_flight: u32::from(report.in_flight),
            capacity: u32::from(report.capacity),
            at,
        }
    }

    /// How long ago the reply carrying it arrived (on the runtime's clock, so that paused
    /// time in tests ages it too).
    pub fn age(&self) -> Duration {
        crate::socket::now().saturating_duration_since(self.at)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Calls waiting for their reply, by request id.
    waiting: HashMap<u32, oneshot::Sender<Outcome>>,
    /// The next id to try.
    next_id: u32,
    /// The session has ended: no call is taken any more.
    closed: bool,
    report: Option<LoadReport>,
    reply_time: Option<Duration>,
}

/// A session's calls; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    state: Mutex<State>,
    /// Notified (every waiter) when a call ends or the session does: room for another call.
    room: Arc<Notify>,
}

/// Why [`Calls::open`] refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The session has ended.
    Closed,
    /// [`MAX_REQUESTS`] calls are waiting already.
    Full,
}

impl Calls {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain data behind the lock; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handle side: a new call under the next id not waiting, and where its outcome will come.
    pub(crate) fn open(&self) -> Result<(u32, oneshot::Receiver<Outcome>), Refused> {
        let mut st = self.state();
        if st.closed {
            return Err(Refused::Closed);
        }
        if st.waiting.len() >= MAX_REQUESTS {
            return Err(Refused::Full);
        }
        // At most MAX_REQUESTS ids wait, so this ends within MAX_REQUESTS + 1 steps.
        let id = loop {
            let id = st.next_id;
            st.next_id = st.next_id.wrapping_add(1);
            if !st.waiting.contains_key(&id) {
                break id;
            }
        };
        let (tx, rx) = oneshot::channel();
        st.waiting.insert(id, tx);
        Ok((id, rx))
    }

    /// Handle side: the caller stopped waiting for `id`. Whether it was still waiting (then its
    /// request is to be forgotten by the session).
    pub(crate) fn cancel(&self, id: u32) -> bool {
        let gone = self.state().waiting.remove(&id).is_some();
        if gone {
            self.room.notify_waiters();
        }
        gone
    }

    /// Driver side: call `id` ends with `outcome`. False when nobody waits for it any more.
    pub(crate) fn complete(&self, id: u32, outcome: Outcome) -> bool {
        let Some(tx) = self.state().waiting.remove(&id) else {
            return false;
        };
        self.room.notify_waiters();
        // A receiver dropped since is a caller that stopped waiting just now.
        tx.send(outcome).is_ok()
    }

    /// The session has ended: every waiting call fails (its sender dropped: the caller reads the
    /// session's close reason) and no more are taken.
    pub(crate) fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        st.waiting.clear();
        drop(st);
        self.room.notify_waiters();
    }

    /// Calls waiting for their reply now.
    pub(crate) fn in_flight(&self) -> usize {
        self.state().waiting.len()
    }

    /// Whether the session ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Notified when a call ends or the session does.
    pub(crate) fn room(&self) -> &Arc<Notify> {
        &self.room
    }

    /// Driver side: what the replies taught so far.
    pub(crate) fn set_learned(&self, report: Option<LoadReport>, reply_time: Option<Duration>) {
        let mut st = self.state();
        if report.is_some() {
            st.report = report;
        }
        if reply_time.is_some() {
            st.reply_time = reply_time;
        }
    }

    /// Driver side: the session has a new server (a failover): what the old one's replies
    /// taught is forgotten.
    pub(crate) fn forget_learned(&self) {
        let mut st = self.state();
        st.report = None;
        st.reply_time = None;
    }

    /// The latest load report, and the smoothed reply time.
    pub(crate) fn learned(&self) -> (Option<LoadReport>, Option<Duration>) {
        let st = self.state();
        (st.report, st.reply_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_calls_take_free_ids_up_to_the_limit_and_end_once() {
        let calls = Calls::default();
        let mut open: Vec<_> = (0..MAX_REQUESTS).map(|_| calls.open().unwrap()).collect();
        assert_eq!(open[0].0, 0);
        assert_eq!(open[MAX_REQUESTS - 1].0, MAX_REQUESTS as u32 - 1);
        assert_eq!(calls.open().unwrap_err(), Refused::Full);
        // Call 3 completes, call 5 is cancelled: two places, and ids go on from where they were.
        assert!(calls.complete(3, Ok(Bytes::from_static(b"three"))));
        assert!(!calls.complete(3, Ok(Bytes::new())), "once");
        assert!(calls.cancel(5));
        assert!(!calls.complete(5, Ok(Bytes::new())), "nobody waits");
        assert_eq!(calls.in_flight(), MAX_REQUESTS - 2);
        assert_eq!(calls.open().unwrap().0, MAX_REQUESTS as u32);
        assert_eq!(
            open[3].1.try_recv().unwrap().unwrap(),
            Bytes::from_static(b"three")
        );
        // The session ends: every waiting call sees its sender gone, and nothing more opens.
        calls.close();
        assert!(open[7].1.try_recv().is_err());
        assert_eq!(calls.open().unwrap_err(), Refused::Closed);
        assert_eq!(calls.in_flight(), 0);
    }
}
