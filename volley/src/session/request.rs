//! A request received on a server session ([`Request`]): its bytes, and what counts it in
//! flight until it is answered or let go — the server itself for a request that came as a
//! REQUEST frame (its [`WireRequest`] sends the REPLY), a load guard for a datagram.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use volley_proto::{MAX_DATAGRAM, ReplyStatus};

use super::Session;
use super::link::{Cmd, Link, Outbound, Pushed};
use crate::error::Error;
use crate::load::LoadGuard;

/// A request that came as a REQUEST frame (PROTOCOL.md §5.8): its id, and the way to its
/// session's driver. Answered exactly once: by [`WireRequest::answer`], or with status DROPPED
/// when it is dropped unanswered.
#[derive(Debug)]
pub(crate) struct WireRequest {
    id: u32,
    session: u32,
    link: Arc<Link>,
    cmd: mpsc::UnboundedSender<Cmd>,
    answered: bool,
}

impl WireRequest {
    pub(crate) fn new(
        id: u32,
        session: u32,
        link: Arc<Link>,
        cmd: mpsc::UnboundedSender<Cmd>,
    ) -> Self {
        Self {
            id,
            session,
            link,
            cmd,
            answered: false,
        }
    }

    /// The request's id.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Queues the REPLY. `Err(Closed)`: the session has ended (nothing to answer).
    fn answer(&mut self, status: ReplyStatus, body: Bytes) -> Result<(), Pushed> {
        self.answered = true;
        let reply = Outbound::Reply {
            id: self.id,
            status,
            body,
        };
        if self.link.push_call(reply)? && self.cmd.send(Cmd::Ready { id: self.session }).is_err() {
            // The driver is gone: the session is over.
            self.link.close();
            return Err(Pushed::Closed);
        }
        Ok(())
    }

    /// Answered some other way (the driver refused it itself): nothing is sent on drop.
    pub(crate) fn disarm(mut self) {
        self.answered = true;
    }
}

impl Drop for WireRequest {
    fn drop(&mut self) {
        if !self.answered {
            // Let go unanswered: the caller hears so at once (§5.8), rather than at its timeout.
            let _ = self.answer(ReplyStatus::DROPPED, Bytes::new());
        }
    }
}

/// One request received on a server session ([`Session::recv_request`]), counted as a request
/// in flight since it arrived, and its service time measured from exactly that. A request that
/// came as a REQUEST frame (a client's [`Session::request`]; [`Request::id`] is `Some`) is counted
/// by the server itself until its REPLY is queued: [`Request::reply`] sends it with the
/// request's id, and a request dropped unanswered is answered with status DROPPED at once, so
/// that its caller does not wait for a timeout. A request that came as a datagram holds a
/// [`LoadGuard`]: the server counts it as completed when the `Request` is dropped — after
/// [`Request::reply`] (a datagram back), or when you let it go.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// tokio::spawn(async move {
///     while let Some(session) = server.accept().await {
///         tokio::spawn(async move {
///             // Each request counts as load from its arrival until its reply is queued.
///             while let Ok(request) = session.recv_request().await {
///                 let answer = request.data().len().to_string();
///                 if request.reply(&session, answer.as_bytes()).await.is_err() {
///                     break;
///                 }
///             }
///         });
///     }
/// });
/// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
/// session.send(b"four").await?;
/// assert_eq!(&session.recv().await?[..], b"4");
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "the request counts as in flight until it is answered or dropped"]
pub struct Request {
    data: Bytes,
    guard: Option<LoadGuard>,
    wire: Option<WireRequest>,
}

impl Request {
    /// A request that arrived as `data`, counted by `guard` (a datagram in request mode), or
    /// a REQUEST frame answered through `wire`.
    pub(super) fn new(data: Bytes, guard: Option<LoadGuard>, wire: Option<WireRequest>) -> Self {
        Self { data, guard, wire }
    }

    /// The request's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The request's bytes as [`Bytes`] (a cheap reference to the buffer it arrived in), to
    /// hand on while the request itself is kept for its reply.
    pub fn data_bytes(&self) -> Bytes {
        self.data.clone()
    }

    /// The request's id when it came as a REQUEST frame (PROTOCOL.md §5.8): its reply names
    /// it. None for a datagram.
    pub fn id(&self) -> Option<u32> {
        self.wire.as_ref().map(WireRequest::id)
    }

    /// Answers a request of a REQUEST frame with `status` and `body`.
    fn answer(mut self, session: &Session, status: ReplyStatus, body: Bytes) -> Result<(), Error> {
        let Some(wire) = self.wire.as_mut() else {
            return Ok(());
        };
        if body.len() > MAX_DATAGRAM {
            // Dropped unanswered on the way out: the caller hears DROPPED.
            return Err(Error::TooLarge);
        }
        wire.answer(status, body)
            .map_err(|_| session.closed_error())
    }

    /// Sends `reply` on `session` and completes the request: a REPLY naming the request when it
    /// came as a REQUEST frame, a datagram when it came as one. A reply larger than
    /// [`MAX_DATAGRAM`] is [`Error::TooLarge`] (a REQUEST's caller then hears DROPPED).
    pub async fn reply(self, session: &Session, reply: &[u8]) -> Result<(), Error> {
        if self.wire.is_some() {
            return self.answer(session, ReplyStatus::OK, Bytes::copy_from_slice(reply));
        }
        let sent = session.send(reply).await;
        drop(self);
        sent
    }

    /// Refuses the request: a REQUEST's caller hears at once that it was not taken (status
    /// REFUSED, [`Error::RequestRefused`]) — for a server that cannot take more work now. A
    /// datagram's request is let go (no datagram goes back).
    pub fn refuse(self, session: &Session) -> Result<(), Error> {
        self.answer(session, ReplyStatus::REFUSED, Bytes::new())
    }

    /// Sends `reply`, a datagram the application owns, on `session` without copying it, and
    /// completes the request.
    pub async fn reply_vec(self, session: &Session, reply: Vec<u8>) -> Result<(), Error> {
        self.reply_bytes(session, Bytes::from(reply)).await
    }

    /// Sends `reply` ([`Bytes`], e.g. a slice of the request itself) on `session` without
    /// copying it, and completes the request.
    pub async fn reply_bytes(self, session: &Session, reply: Bytes) -> Result<(), Error> {
        if self.wire.is_some() {
            return self.answer(session, ReplyStatus::OK, reply);
        }
        let sent = session.send_bytes(reply).await;
        drop(self);
        sent
    }

    /// Echoes the request's own bytes back on `session` without copying them, and completes
    /// the request.
    pub async fn echo(mut self, session: &Session) -> Result<(), Error> {
        if self.wire.is_some() {
            let data = std::mem::take(&mut self.data);
            return self.answer(session, ReplyStatus::OK, data);
        }
        let Request { data, guard, .. } = self;
        let sent = session.send_bytes(data).await;
        drop(guard);
        sent
    }

    /// The bytes, with the request still counted until the returned guard is dropped (for
    /// handing the request on to other code; `None` on a client session). A request that came
    /// as a REQUEST frame cannot be answered once taken apart: it is answered DROPPED here, and
    /// has no guard — keep the `Request` and use [`Request::reply`] for those.
    pub fn into_parts(self) -> (Bytes, Option<LoadGuard>) {
        (self.data, self.guard)
    }
}
