//! The application's handle on one encrypted session, client or server side ([`Session`]), the
//! requests a client sends ([`Session::request`], [`ReplyFuture`]) and a server session receives
//! ([`Request`]), and what a handle shares with its driver (`link`, `calls`).

mod calls;
mod link;
mod reply;
mod request;

pub use calls::LoadReport;
use link::Pushed;
pub(crate) use link::{Cmd, Core, Drained, Incoming, Link, Outbound, Status};
pub use reply::ReplyFuture;
pub use request::Request;
pub(crate) use request::WireRequest;

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{mpsc, watch};
use volley_proto::allow::AllowEntry;
use volley_proto::client::ServerOutcome;
use volley_proto::{CloseCode, CloseReason, MAX_DATAGRAM, MAX_REQUESTS, PublicKey};

use crate::error::Error;
use crate::report::ConnectReport;
use crate::shared_pool::{SharedPool, lock_pool};

/// Datagrams one session may have waiting for its driver. A full queue makes
/// [`Session::send`] wait and [`Session::try_send`] fail, for this session only.
pub const SEND_QUEUE: usize = 256;

/// A session's counters, as seen by its handle ([`Session::stats`]).
///
/// ```
/// use volley::SessionStats;
///
/// // Datagrams the application queued, and those lost to a full receive queue.
/// let stats = SessionStats::default();
/// assert_eq!((stats.datagrams_sent, stats.received_dropped), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Datagrams the application queued with `send`/`try_send`.
    pub datagrams_sent: u64,
    /// Datagrams waiting in the send queue now.
    pub send_queued: usize,
    /// Datagrams (and requests, on a server) that arrived and were queued for the application.
    pub datagrams_received: u64,
    /// Datagrams that arrived while the receive queue was full (the application was slow) and
    /// were dropped; requests so refused (REFUSED) count here too.
    pub received_dropped: u64,
    /// Datagrams still queued when the session ended, never sent.
    pub send_discarded: u64,
    /// The protocol session's own counters (packets, authentication and replay drops, pings);
    /// on the client they start again from zero after a failover.
    pub protocol: volley_proto::session::SessionStats,
}

/// An encrypted, authenticated datagram session with one peer: what [`crate::Client::connect`]
/// returns on the client side and [`crate::Server::accept`] on the server side.
///
/// Datagram semantics: `send` queues one datagram for the driver, which seals and sends it; there
/// is no retransmission and no ordering guarantee. On the client side a session survives the loss
/// of its server by failing over to another server of the pool (see [`Session::report`]).
/// Dropping the handle closes the session.
///
/// Every method takes `&self`: share a session in an [`Arc`] and let one task receive while
/// another sends, as with tokio's `UdpSocket`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use std::sync::Arc;
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// tokio::spawn(volley::echo::serve(server, std::future::pending()));
///
/// let session = Arc::new(Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?);
/// let reader = {
///     let session = Arc::clone(&session);
///     tokio::spawn(async move {
///         let mut echoed = 0;
///         while echoed < 3 && session.recv().await.is_ok() {
///             echoed += 1;
///         }
///         echoed
///     })
/// };
/// for i in 0..3u8 {
///     session.send(&[i]).await?;
/// }
/// assert_eq!(reader.await.unwrap(), 3);
/// session.close();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Session {
    id: u32,
    cmd: mpsc::UnboundedSender<Cmd>,
    link: Arc<Link>,
    /// [`Session::poll_recv`]'s wait for the next received datagram, kept between its polls
    /// (`recv` and `recv_request` keep theirs in their own futures).
    waiting: Mutex<Option<Pin<Box<OwnedNotified>>>>,
    /// [`Session::poll_request_ready`]'s wait for a call to end, kept between its polls.
    waiting_call: Mutex<Option<Pin<Box<OwnedNotified>>>>,
    status: watch::Receiver<Status>,
    report: Option<Arc<Mutex<ConnectReport>>>,
    /// Server side: switches the driver to request mode (a guard per datagram).
    requests: Option<Arc<AtomicBool>>,
    /// Client side: the client's pool knowledge, for the outcomes the application reports.
    pool: Option<SharedPool>,
    /// Server side: the client's authenticated static key and its allow-list name.
    client: Option<AllowEntry>,
    /// Server side: the session's first datagram rode in the handshake (PROTOCOL.md §4.8).
    early: bool,
}

impl Session {
    pub(crate) fn new(
        id: u32,
        cmd: mpsc::UnboundedSender<Cmd>,
        link: Arc<Link>,
        status: watch::Receiver<Status>,
        report: Option<Arc<Mutex<ConnectReport>>>,
    ) -> Self {
        Self {
            id,
            cmd,
            link,
            waiting: Mutex::new(None),
            waiting_call: Mutex::new(None),
            status,
            report,
            requests: None,
            pool: None,
            client: None,
            early: false,
        }
    }

    pub(crate) fn with_client(mut self, client: AllowEntry) -> Self {
        self.client = Some(client);
        self
    }

    pub(crate) fn with_early_data(mut self, early: bool) -> Self {
        self.early = early;
        self
    }

    pub(crate) fn with_requests(mut self, flag: Arc<AtomicBool>) -> Self {
        self.requests = Some(flag);
        self
    }

    pub(crate) fn with_pool(mut self, pool: SharedPool) -> Self {
        self.pool = Some(pool);
        self
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed(
            self.status
                .borrow()
                .closed
                .unwrap_or(CloseReason::Local(CloseCode::NORMAL)),
        )
    }

    /// Queues one datagram (at most [`MAX_DATAGRAM`] bytes, 65,535: one that does not fit a packet goes in fragments, PROTOCOL.md §5.7) for sending, waiting while this
    /// session's send queue ([`SEND_QUEUE`] datagrams) is full. `Ok` means the datagram is
    /// queued and will be sealed and sent unless the session ends first (then it is counted in
    /// [`SessionStats::send_discarded`]); as with UDP, delivery is not guaranteed. A full queue
    /// on one session never holds up another. Errors: [`Error::TooLarge`], [`Error::Closed`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// # use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    /// # let key = StaticKeypair::generate(&mut volley::OsRng);
    /// # let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    /// # let pool = vec![server.local_addr()];
    /// # tokio::spawn(volley::echo::serve(server, std::future::pending()));
    /// # let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
    /// session.send(b"hello").await?;
    /// assert_eq!(&session.recv().await?[..], b"hello");
    /// assert_eq!(session.stats().datagrams_sent, 1);
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, data: &[u8]) -> Result<(), Error> {
        loop {
            let mut room = pin!(self.link.room().notified());
            // Registered before the check, so a drain between the check and the await is seen.
            room.as_mut().enable();
            match self.try_send(data) {
                Err(Error::QueueFull) => room.await,
                other => return other,
            }
        }
    }

    /// Queues one datagram without waiting: like [`Session::send`], but a full send queue is
    /// [`Error::QueueFull`] (the datagram was not queued; retry later or drop it).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// # use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    /// # let key = StaticKeypair::generate(&mut volley::OsRng);
    /// # let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    /// # let pool = vec![server.local_addr()];
    /// # tokio::spawn(volley::echo::serve(server, std::future::pending()));
    /// # let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
    /// match session.try_send(b"now or never") {
    ///     Ok(()) => {}
    ///     Err(volley::Error::QueueFull) => { /* the application is ahead of the network: drop it */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_send(&self, data: &[u8]) -> Result<(), Error> {
        if data.len() > MAX_DATAGRAM {
            return Err(Error::TooLarge);
        }
        self.try_push(Bytes::copy_from_slice(data))
            .map_err(|(e, _)| e)
    }

    /// Like [`Session::send`] for a datagram the application owns: it is moved into the send
    /// queue and sealed from there, never copied on the way.
    pub async fn send_vec(&self, data: Vec<u8>) -> Result<(), Error> {
        self.send_bytes(Bytes::from(data)).await
    }

    /// Like [`Session::send`] for [`Bytes`]: moved into the send queue and sealed from there,
    /// never copied on the way (an echo sends back the `Bytes` it received — the very buffer
    /// the datagram was decrypted in).
    pub async fn send_bytes(&self, data: Bytes) -> Result<(), Error> {
        if data.len() > MAX_DATAGRAM {
            return Err(Error::TooLarge);
        }
        let mut data = data;
        loop {
            let mut room = pin!(self.link.room().notified());
            room.as_mut().enable();
            match self.try_push(data) {
                Err((Error::QueueFull, back)) => {
                    data = back;
                    room.await;
                }
                other => return other.map_err(|(e, _)| e),
            }
        }
    }

    /// Queues `data`, or hands it back with why not.
    fn try_push(&self, data: Bytes) -> Result<(), (Error, Bytes)> {
        if self.status.borrow().closed.is_some() {
            return Err((self.closed_error(), data));
        }
        match self.link.push(data, SEND_QUEUE) {
            Ok(false) => Ok(()),
            Ok(true) => {
                if self.cmd.send(Cmd::Ready { id: self.id }).is_err() {
                    // The driver is gone: the session is over.
                    self.link.close();
                    return Err((self.closed_error(), Bytes::new()));
                }
                Ok(())
            }
            Err((Pushed::Closed, data)) => Err((self.closed_error(), data)),
            Err((Pushed::Full, data)) => Err((Error::QueueFull, data)),
        }
    }

    /// This session's counters.
    pub fn stats(&self) -> SessionStats {
        self.link.stats()
    }

    /// Resolves when the session has ended, with why.
    pub async fn closed(&self) -> CloseReason {
        let mut status = self.status.clone();
        match status.wait_for(|s| s.closed.is_some()).await {
            Ok(s) => s.closed.unwrap_or(CloseReason::Local(CloseCode::NORMAL)),
            // The driver is gone without saying: as good as a local close.
            Err(_) => self
                .status
                .borrow()
                .closed
                .unwrap_or(CloseReason::Local(CloseCode::NORMAL)),
        }
    }

    /// Polls for the next datagram, for use in hand-written futures and streams: `Ready(Ok)`
    /// with a datagram, `Ready(Err)` once the session has ended and nothing is left, `Pending`
    /// otherwise (the waker is woken when that changes). Like [`Session::recv`].
    ///
    /// As with tokio's `UdpSocket::poll_recv`, the session keeps one waker for this method:
    /// when several tasks call it on one session, only the most recent caller's waker is woken.
    /// Tasks that receive at once should each use [`Session::recv`], which has no such limit.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Bytes, Error>> {
        // Plain data behind the lock; a panic elsewhere cannot leave it inconsistent.
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match self.link.poll_incoming(&mut waiting, cx) {
            Poll::Ready(Some(d)) => Poll::Ready(Ok(d.data)),
            Poll::Ready(None) => Poll::Ready(Err(self.closed_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Receives the next datagram; an error once the session has ended and nothing is left.
    ///
    /// Takes `&self`: one task may receive while others send on the same session (share it in
    /// an [`Arc`]), and several tasks may receive at once — each datagram goes to exactly one
    /// of them. Cancel safe: a `recv` dropped before it completes (in a `select!`) loses no
    /// datagram.
    ///
    /// On a server session that has switched to requests ([`Session::recv_request`]), a datagram
    /// received this way counts as a request completed at once. A request that came as a REQUEST
    /// frame (a client's [`Session::request`]) can only be answered through
    /// [`Session::recv_request`]: received here, it gives its bytes and is answered DROPPED.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// # use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    /// # let key = StaticKeypair::generate(&mut volley::OsRng);
    /// # let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    /// # let pool = vec![server.local_addr()];
    /// # tokio::spawn(volley::echo::serve(server, std::future::pending()));
    /// # let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
    /// session.send(b"ping").await?;
    /// let reply = session.recv().await?;
    /// assert_eq!(&reply[..], b"ping");
    /// // Once the session is closed and nothing is left to read, `recv` says why.
    /// session.close();
    /// assert!(matches!(session.recv().await, Err(volley::Error::Closed(_))));
    /// # Ok(()) }
    /// ```
    pub async fn recv(&self) -> Result<Bytes, Error> {
        match self.link.next_incoming().await {
            Some(d) => Ok(d.data),
            None => Err(self.closed_error()),
        }
    }

    /// Server side: receives the next datagram as a **request**. From the first call on,
    /// the server counts every datagram of this session as a request in flight from the moment
    /// it arrives (queueing in the application included) until the returned [`Request`] is
    /// dropped, and measures its service time from those completions — no manual
    /// [`LoadGuard`](crate::LoadGuard)s. Use it for request/response services; a datagram that
    /// was already queued before the first call is counted from the call. Cancel safe, like
    /// [`Session::recv`].
    ///
    /// On a client session it behaves like [`Session::recv`], with no guard. See [`Request`]
    /// for an example.
    pub async fn recv_request(&self) -> Result<Request, Error> {
        if let Some(flag) = &self.requests {
            flag.store(true, Ordering::Release);
        }
        match self.link.next_incoming().await {
            Some(Incoming { data, guard, wire }) => Ok(Request::new(data, guard, wire)),
            None => Err(self.closed_error()),
        }
    }

    /// Client side: sends a **request** (PROTOCOL.md §5.8) — at most [`MAX_DATAGRAM`] bytes,
    /// in pieces when it does not fit a packet — and returns the future of its reply. Unlike a
    /// datagram, a request names itself with an id its reply carries back, so that up to
    /// [`MAX_REQUESTS`] requests can be in flight on one session, from any number of tasks, and
    /// each reply reaches its own caller whatever the order replies come in; the server counts
    /// the request as load from its arrival to its reply, and every reply brings the server's
    /// load ([`Session::load_report`]).
    ///
    /// The request is queued at once (the future need not be polled for it to go). The future
    /// resolves to the reply's bytes, or to why there are none: [`Error::RequestDropped`] (the
    /// server's application let it go unanswered), [`Error::RequestRefused`] (the server did
    /// not take it), [`Error::RequestLost`] (the session ended or lost its server first: a
    /// client session may go on with another server), and at once [`Error::TooManyRequests`],
    /// [`Error::TooLarge`] or [`Error::Closed`]. Nothing is retransmitted: wrap it in a timeout
    /// (dropping the future forgets the request). While the session races after losing its
    /// server, requests wait in its queue and go to the next server. A server's session sends
    /// no requests ([`Error::InvalidArgument`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use std::time::Duration;
    /// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    /// let pool = vec![server.local_addr()];
    /// // The echo service answers every request with its own bytes.
    /// tokio::spawn(volley::echo::serve(server, std::future::pending()));
    ///
    /// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
    /// // Two requests in flight at once; each reply finds its caller.
    /// let (a, b) = tokio::join!(session.request("first"), session.request("second"));
    /// assert_eq!((&a?[..], &b?[..]), (&b"first"[..], &b"second"[..]));
    /// // A request under a timeout: dropped by it, it is forgotten.
    /// let reply = tokio::time::timeout(Duration::from_secs(1), session.request("third")).await;
    /// assert_eq!(&reply.expect("in time")?[..], b"third");
    /// // Every reply carried the server's load.
    /// assert!(session.load_report().is_some());
    /// assert_eq!(session.requests_in_flight(), 0);
    /// # Ok(()) }
    /// ```
    pub fn request(&self, body: impl Into<Bytes>) -> ReplyFuture {
        let body = body.into();
        if self.requests.is_some() {
            return ReplyFuture::failed(Error::InvalidArgument(
                "requests are sent on a client's session",
            ));
        }
        if body.len() > MAX_DATAGRAM {
            return ReplyFuture::failed(Error::TooLarge);
        }
        if self.status.borrow().closed.is_some() {
            return ReplyFuture::failed(self.closed_error());
        }
        let calls = self.link.calls();
        let (id, rx) = match calls.open() {
            Ok(call) => call,
            Err(calls::Refused::Closed) => return ReplyFuture::failed(self.closed_error()),
            Err(calls::Refused::Full) => return ReplyFuture::failed(Error::TooManyRequests),
        };
        match self.link.push_call(Outbound::Request { id, body }) {
            Ok(false) => {}
            Ok(true) => {
                if self.cmd.send(Cmd::Ready { id: self.id }).is_err() {
                    // The driver is gone: the session is over.
                    self.link.close();
                    return ReplyFuture::failed(self.closed_error());
                }
            }
            Err(_) => {
                calls.cancel(id);
                return ReplyFuture::failed(self.closed_error());
            }
        }
        ReplyFuture::waiting(
            id,
            rx,
            Arc::clone(&self.link),
            self.cmd.clone(),
            self.id,
            self.status.clone(),
        )
    }

    /// Client side: the requests of this session waiting for their reply now (sent or still
    /// queued; not those whose caller gave up). At most [`MAX_REQUESTS`].
    pub fn requests_in_flight(&self) -> usize {
        self.link.calls().in_flight()
    }

    /// Client side: `Ready(Ok)` when one more request can be sent now (fewer than
    /// [`MAX_REQUESTS`] in flight), `Ready(Err)` once the session has ended, `Pending`
    /// otherwise (the waker is woken when a request ends) — a `tower::Service`'s `poll_ready`.
    /// The session keeps one waker for this method, like [`Session::poll_recv`].
    pub fn poll_request_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Plain data behind the lock; a panic elsewhere cannot leave it inconsistent.
        let mut waiting = self.waiting_call.lock().unwrap_or_else(|e| e.into_inner());
        let calls = self.link.calls();
        loop {
            if calls.is_closed() || self.status.borrow().closed.is_some() {
                *waiting = None;
                return Poll::Ready(Err(self.closed_error()));
            }
            if calls.in_flight() < MAX_REQUESTS {
                *waiting = None;
                return Poll::Ready(Ok(()));
            }
            match waiting.as_mut() {
                // A new wait counts wake-ups from its creation: check again before polling it.
                None => *waiting = Some(Box::pin(Arc::clone(calls.room()).notified_owned())),
                Some(notified) => match notified.as_mut().poll(cx) {
                    Poll::Ready(()) => *waiting = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    /// Client side: the server's load as the latest reply reported it (PROTOCOL.md §5.8), and
    /// when that reply arrived: its expected completion of one more request, its requests in
    /// flight and its capacity. None before the first reply, and again after a failover until
    /// the new server's first. With [`Session::reply_time`] and
    /// [`Session::requests_in_flight`], what a balancer ranks sessions by.
    pub fn load_report(&self) -> Option<LoadReport> {
        self.link.calls().learned().0
    }

    /// Client side: the smoothed time from a request's sending to its reply (RFC 6298's
    /// weights over the requests answered OK on the current server): the path's round trip plus
    /// the server's time. None before the first reply, and again after a failover.
    pub fn reply_time(&self) -> Option<std::time::Duration> {
        self.link.calls().learned().1
    }

    /// Client side: tells the client that this session's server served a request well: it
    /// ends the server's probation after an ejection and resets its failure count. No effect
    /// on a server session.
    pub fn report_success(&self) {
        self.report_outcome(ServerOutcome::Success);
    }

    /// Client side: tells the client that this session's server failed a request. Failures in
    /// a row eject the server from the client's races for a back-off (see
    /// [`volley_proto::client::EjectionConfig`]): its next connects go elsewhere. No effect on a
    /// server session.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// # use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    /// # let key = StaticKeypair::generate(&mut volley::OsRng);
    /// # let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    /// # let pool = vec![server.local_addr()];
    /// # tokio::spawn(volley::echo::serve(server, std::future::pending()));
    /// let client = Client::new(ClientConfig::new(vec![key.public()]));
    /// let session = client.connect(&pool).await?;
    /// // The application judged two answers wrong: the server is left out for a while.
    /// session.report_failure();
    /// session.report_failure();
    /// assert!(client.is_ejected(session.remote()));
    /// # Ok(()) }
    /// ```
    pub fn report_failure(&self) {
        self.report_outcome(ServerOutcome::Failure);
    }

    fn report_outcome(&self, outcome: ServerOutcome) {
        if let Some(pool) = &self.pool {
            let server = self.remote();
            lock_pool(pool).report(crate::socket::now(), server, outcome);
        }
    }

    /// Server side: the client's static key, as the handshake authenticated it (an anonymous
    /// client's is a random key of its process). None on a client's session.
    pub fn client_key(&self) -> Option<PublicKey> {
        self.client.as_ref().map(|c| c.key)
    }

    /// Server side: the name the allow-list gives the client's key, if it gives one (as of the
    /// session's opening).
    pub fn client_name(&self) -> Option<&str> {
        self.client.as_ref().and_then(|c| c.name.as_deref())
    }

    /// Server side: whether the session's first datagram rode in the handshake as early data
    /// (PROTOCOL.md §4.8; the client used [`crate::Client::connect_with_early`]). It was
    /// encrypted without forward secrecy, and a client that lost this server's answer to its
    /// handshake may have sent it to another server too: an application that must not run a
    /// request twice can refuse the first one when this is true. False on a client's session.
    pub fn early_data(&self) -> bool {
        self.early
    }

    /// Server side: the client's key and name together.
    pub(crate) fn client_entry(&self) -> Option<&AllowEntry> {
        self.client.as_ref()
    }

    /// The peer's address (for a client: the current server, which changes on failover; for a
    /// server: the client's, which follows the client when it moves, PROTOCOL.md §5.6).
    pub fn remote(&self) -> SocketAddr {
        self.status.borrow().remote
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.status.borrow().closed
    }

    /// Client side: the race and handshake figures, kept current (late offers, failovers).
    /// None on the server side.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// # use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    /// # let key = StaticKeypair::generate(&mut volley::OsRng);
    /// # let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    /// # let pool = vec![server.local_addr()];
    /// # tokio::spawn(volley::echo::serve(server, std::future::pending()));
    /// # let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
    /// let report = session.report().expect("a client session");
    /// println!("won by {:?} in {:?}", report.server, report.answer_time);
    /// assert_eq!(report.failovers, 0);
    /// # Ok(()) }
    /// ```
    pub fn report(&self) -> Option<ConnectReport> {
        self.report
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// What a TCP proxy stream ([`crate::proxy::TcpProxy`]) on this session needs: the
    /// server's session id, the peer's address and the stream keys derived from the session's
    /// keys. Crate-private: the keys are the session's secrets. On the client it names the
    /// current server (a failover gives another ticket). [`Error::Closed`] once the session has
    /// ended or while it is not established.
    pub(crate) async fn stream_ticket(&self) -> Result<volley_proto::stream::StreamTicket, Error> {
        let (reply, ticket) = tokio::sync::oneshot::channel();
        if self.cmd.send(Cmd::Ticket { id: self.id, reply }).is_err() {
            return Err(self.closed_error());
        }
        match ticket.await {
            Ok(Some(t)) => Ok(t),
            _ => Err(self.closed_error()),
        }
    }

    /// Closes the session with `code`; the peer is told.
    pub fn close_with(&self, code: CloseCode) {
        let _ = self.cmd.send(Cmd::Close { id: self.id, code });
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

#[cfg(test)]
mod tests {
    use super::link::INCOMING_QUEUE;
    use super::*;

    fn session() -> (Session, Arc<Link>) {
        let (cmd, _) = mpsc::unbounded_channel();
        let link = Arc::new(Link::default());
        let (_, status) = watch::channel(Status {
            remote: "127.0.0.1:1".parse().unwrap(),
            closed: None,
        });
        (Session::new(1, cmd, Arc::clone(&link), status, None), link)
    }

    fn datagram(i: u32) -> Incoming {
        Incoming {
            data: Bytes::copy_from_slice(&i.to_be_bytes()),
            guard: None,
            wire: None,
        }
    }

    #[tokio::test]
    async fn r5_receive_queue_is_bounded_ordered_and_ends_after_what_arrived() {
        let (s, link) = session();
        for i in 0..INCOMING_QUEUE as u32 {
            assert!(link.deliver(datagram(i)).is_ok());
        }
        assert!(
            link.deliver(datagram(u32::MAX)).is_err(),
            "one past the bound is refused"
        );
        for i in 0..3u32 {
            assert_eq!(&s.recv().await.unwrap()[..], &i.to_be_bytes());
        }
        // A closed session still hands over what arrived, then reports the end.
        link.close();
        assert!(
            link.deliver(datagram(7)).is_err(),
            "nothing arrives after the close"
        );
        let mut left = 0;
        while s.recv().await.is_ok() {
            left += 1;
        }
        assert_eq!(left, INCOMING_QUEUE - 3);
    }

    #[tokio::test]
    async fn r5_a_waiting_receiver_wakes_for_a_datagram_and_for_the_close() {
        let (s, link) = session();
        let l = Arc::clone(&link);
        let waiter = tokio::spawn(async move {
            let first = s.recv().await.unwrap();
            let end = s.recv().await;
            (first, end.is_err())
        });
        tokio::task::yield_now().await;
        assert!(link.deliver(datagram(42)).is_ok());
        tokio::task::yield_now().await;
        l.close();
        let (first, ended) = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], &42u32.to_be_bytes());
        assert!(ended);
    }

    #[tokio::test]
    async fn r5_every_receiver_waiting_on_a_shared_session_wakes_for_the_close() {
        // Two tasks wait on one `Arc<Session>`. The close must reach both: a wake-up for one
        // waiter only would leave the other waiting for good.
        let (s, link) = session();
        let s = Arc::new(s);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.recv().await })
            })
            .collect();
        // On this current-thread runtime the spawned tasks run (and start waiting) before the
        // test task is polled again.
        tokio::task::yield_now().await;
        link.close();
        for w in waiters {
            let ended = tokio::time::timeout(std::time::Duration::from_secs(5), w)
                .await
                .expect("a waiting receiver was not woken by the close")
                .unwrap();
            assert!(matches!(ended, Err(Error::Closed(_))), "{ended:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r5_two_concurrent_receivers_never_lose_or_duplicate_a_datagram() {
        // One task receives with `recv`, another with `poll_recv`, on two worker threads, while
        // datagrams keep arriving: together they get every datagram exactly once.
        const N: u32 = 20_000;
        let (s, link) = session();
        let s = Arc::new(s);
        let by_recv = {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(d) = s.recv().await {
                    got.push(u32::from_be_bytes(d[..].try_into().unwrap()));
                }
                got
            })
        };
        let by_poll = {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(d) = std::future::poll_fn(|cx| s.poll_recv(cx)).await {
                    got.push(u32::from_be_bytes(d[..].try_into().unwrap()));
                }
                got
            })
        };
        let delivered = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            for i in 0..N {
                // A full receive queue refuses the datagram: wait for the receivers to drain it.
                while link.deliver(datagram(i)).is_err() {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await;
        assert!(
            delivered.is_ok(),
            "the receivers stopped draining the queue"
        );
        link.close();
        let bound = std::time::Duration::from_secs(20);
        let mut all = tokio::time::timeout(bound, by_recv).await.unwrap().unwrap();
        let polled = tokio::time::timeout(bound, by_poll).await.unwrap().unwrap();
        // Each receiver sees its share in arrival order.
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(polled.windows(2).all(|w| w[0] < w[1]));
        all.extend(polled);
        all.sort_unstable();
        assert_eq!(
            all,
            (0..N).collect::<Vec<_>>(),
            "each datagram exactly once"
        );
    }
}
