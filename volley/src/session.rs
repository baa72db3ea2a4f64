//! The application's handle on one encrypted session, client or server side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use volley_proto::client::{ServerOutcome, SharedPoolState};
use volley_proto::{CloseCode, CloseReason, MAX_APP_DATAGRAM};

use crate::client::ConnectReport;
use crate::error::Error;
use crate::server::LoadGuard;

/// Requests from session handles to their driver task.
#[derive(Debug)]
pub(crate) enum Cmd {
    Send { id: u32, data: Vec<u8> },
    Close { id: u32, code: CloseCode },
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
    pub data: Vec<u8>,
    pub guard: Option<LoadGuard>,
}

/// One request received on a server session (L5, L6): the datagram and the [`LoadGuard`] that
/// has counted it as a request in flight since it arrived. The server counts the request as
/// completed when this is dropped — after [`Request::reply`], or when you let it go.
#[derive(Debug)]
#[must_use = "the request counts as in flight until it is dropped"]
pub struct Request {
    data: Vec<u8>,
    guard: Option<LoadGuard>,
}

impl Request {
    /// The request's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Sends `reply` on `session` and completes the request.
    pub async fn reply(self, session: &Session, reply: &[u8]) -> Result<(), Error> {
        let sent = session.send(reply).await;
        drop(self);
        sent
    }

    /// The bytes, with the request still counted until the returned guard is dropped.
    pub fn into_parts(self) -> (Vec<u8>, Option<LoadGuard>) {
        (self.data, self.guard)
    }
}

/// An encrypted, authenticated datagram session with one peer.
///
/// Datagram semantics: `send` queues one datagram for the driver, which seals and sends it; there
/// is no retransmission and no ordering guarantee. On the client side a session survives the loss
/// of its server by failing over to another server of the pool (see [`Session::report`]).
/// Dropping the handle closes the session.
#[derive(Debug)]
pub struct Session {
    id: u32,
    cmd: mpsc::Sender<Cmd>,
    incoming: mpsc::Receiver<Incoming>,
    status: watch::Receiver<Status>,
    report: Option<Arc<Mutex<ConnectReport>>>,
    /// Server side: switches the driver to request mode (a guard per datagram).
    requests: Option<Arc<AtomicBool>>,
    /// Client side: the client's pool knowledge, for outcome reports (L7).
    pool: Option<SharedPoolState>,
}

impl Session {
    pub(crate) fn new(
        id: u32,
        cmd: mpsc::Sender<Cmd>,
        incoming: mpsc::Receiver<Incoming>,
        status: watch::Receiver<Status>,
        report: Option<Arc<Mutex<ConnectReport>>>,
    ) -> Self {
        Self {
            id,
            cmd,
            incoming,
            status,
            report,
            requests: None,
            pool: None,
        }
    }

    pub(crate) fn with_requests(mut self, flag: Arc<AtomicBool>) -> Self {
        self.requests = Some(flag);
        self
    }

    pub(crate) fn with_pool(mut self, pool: SharedPoolState) -> Self {
        self.pool = Some(pool);
        self
    }

    fn closed_error(&self) -> Error {
        Error::Closed(
            self.status
                .borrow()
                .closed
                .unwrap_or(CloseReason::Local(CloseCode::NORMAL)),
        )
    }

    /// Sends one datagram (at most [`MAX_APP_DATAGRAM`] bytes).
    pub async fn send(&self, data: &[u8]) -> Result<(), Error> {
        if data.len() > MAX_APP_DATAGRAM {
            return Err(Error::TooLarge);
        }
        if self.status.borrow().closed.is_some() {
            return Err(self.closed_error());
        }
        self.cmd
            .send(Cmd::Send {
                id: self.id,
                data: data.to_vec(),
            })
            .await
            .map_err(|_| self.closed_error())
    }

    /// Receives the next datagram; an error once the session has ended and nothing is left.
    ///
    /// On a server session that has switched to requests ([`Session::recv_request`]), a datagram
    /// received this way counts as a request completed at once.
    pub async fn recv(&mut self) -> Result<Vec<u8>, Error> {
        match self.incoming.recv().await {
            Some(d) => Ok(d.data),
            None => Err(self.closed_error()),
        }
    }

    /// Server side: receives the next datagram as a **request** (L5, L6). From the first call on,
    /// the server counts every datagram of this session as a request in flight from the moment
    /// it arrives (queueing in the application included) until the returned [`Request`] is
    /// dropped, and measures its service time from those completions — no manual
    /// [`LoadGuard`]s. Use it for request/response services; a datagram that was already queued
    /// before the first call is counted from the call.
    ///
    /// On a client session it behaves like [`Session::recv`], with no guard.
    pub async fn recv_request(&mut self) -> Result<Request, Error> {
        if let Some(flag) = &self.requests {
            flag.store(true, Ordering::Release);
        }
        match self.incoming.recv().await {
            Some(Incoming { data, guard }) => Ok(Request { data, guard }),
            None => Err(self.closed_error()),
        }
    }

    /// Client side: tells the client that this session's server served a request well (L7):
    /// it ends a probation and resets the failure count. No effect on a server session.
    pub fn report_success(&self) {
        self.report_outcome(ServerOutcome::Success);
    }

    /// Client side: tells the client that this session's server failed a request (L7). Failures
    /// in a row eject the server from the client's races for a back-off (see
    /// [`volley_proto::client::EjectionConfig`]). No effect on a server session.
    pub fn report_failure(&self) {
        self.report_outcome(ServerOutcome::Failure);
    }

    fn report_outcome(&self, outcome: ServerOutcome) {
        if let Some(pool) = &self.pool {
            let server = self.remote();
            let mut state = pool.lock().unwrap_or_else(|e| e.into_inner());
            state.report(Instant::now(), server, outcome);
        }
    }

    /// The peer's address (for a client: the current server, which changes on failover).
    pub fn remote(&self) -> SocketAddr {
        self.status.borrow().remote
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.status.borrow().closed
    }

    /// Client side: the race and handshake figures, kept current (late offers, failovers).
    /// None on the server side.
    pub fn report(&self) -> Option<ConnectReport> {
        self.report
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Closes the session with `code`; the peer is told.
    pub fn close_with(&self, code: CloseCode) {
        let _ = self.cmd.try_send(Cmd::Close { id: self.id, code });
    }

    /// Closes the session normally.
    pub fn close(&self) {
        self.close_with(CloseCode::NORMAL);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.status.borrow().closed.is_none() {
            self.close();
        }
    }
}
