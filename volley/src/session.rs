//! The application's handle on one encrypted session, client or server side.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use volley_proto::{CloseCode, CloseReason, MAX_APP_DATAGRAM};

use crate::client::ConnectReport;
use crate::error::Error;

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
    incoming: mpsc::Receiver<Vec<u8>>,
    status: watch::Receiver<Status>,
    report: Option<Arc<Mutex<ConnectReport>>>,
}

impl Session {
    pub(crate) fn new(
        id: u32,
        cmd: mpsc::Sender<Cmd>,
        incoming: mpsc::Receiver<Vec<u8>>,
        status: watch::Receiver<Status>,
        report: Option<Arc<Mutex<ConnectReport>>>,
    ) -> Self {
        Self {
            id,
            cmd,
            incoming,
            status,
            report,
        }
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
    pub async fn recv(&mut self) -> Result<Vec<u8>, Error> {
        match self.incoming.recv().await {
            Some(d) => Ok(d),
            None => Err(self.closed_error()),
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
            .map(|r| r.lock().expect("report lock").clone())
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
