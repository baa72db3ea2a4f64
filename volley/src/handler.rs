//! Serving requests without bookkeeping: a handler — an async function, or a tower `Service` —
//! is called once per request a session receives (a client's [`Session::request`], answered
//! with a REPLY naming it) or per datagram (answered with a datagram), and its answer, if any,
//! is sent back on the same session; a request it does not answer is answered DROPPED. The server counts every request as in flight from its arrival until its reply
//! has been queued (the handler's time included), and measures its service time from those
//! completions: load reporting needs no `LoadGuard`s in application code.
//!
//! One task per session. A session's datagrams are handled one after another, in arrival order;
//! its requests (REQUEST frames, PROTOCOL.md §5.8: many in flight, each reply naming its
//! request) each get a task of their own, so that a client multiplexing requests on one session
//! (a [`crate::Pool`]) is served as concurrently as clients with a session each. Sessions run
//! concurrently. A datagram that arrives while the previous one is being handled waits in the
//! session's receive queue — and counts as load meanwhile, so a slow handler shows up in the
//! server's answer times.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), volley::Error> {
//! use volley::handler::Call;
//! use volley::{Bytes, Server, ServerConfig, StaticKeypair};
//!
//! let key = StaticKeypair::generate(&mut volley::OsRng);
//! let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key)).await?;
//! // A handler: the reply to each request, or `None` for none.
//! let reverse = |call: Call| async move {
//!     let mut data = call.data.to_vec();
//!     data.reverse();
//!     Some(Bytes::from(data))
//! };
//! // Serves until the shutdown future resolves (here at once) and returns the counters.
//! let stats = volley::handler::serve(server, reverse, async {}).await;
//! assert_eq!(stats.sessions_opened, 0);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use std::time::Duration;

use tracing::{debug, info};
use volley_proto::allow::AllowEntry;

use crate::server::Server;
use crate::session::Session;

/// One request as a handler sees it: who sent it — the client's address and the static key its
/// handshake proved, with the allow-list's name for it — and what.
///
/// ```
/// use volley::handler::Call;
/// use volley::{AllowEntry, Bytes, StaticKeypair};
///
/// // What a handler gets, and how it answers: here, the reply greets the client by its
/// // allow-list name.
/// let key = StaticKeypair::generate(&mut volley::OsRng).public();
/// let call = Call {
///     peer: "127.0.0.1:5000".parse().unwrap(),
///     client: AllowEntry { key, name: Some("alice".into()) },
///     data: Bytes::from_static(b"who am I?"),
/// };
/// let name = call.client.name.as_deref().unwrap_or("stranger");
/// let reply = Some(Bytes::from(format!("{name} at {}", call.peer)));
/// assert_eq!(reply.as_deref(), Some(&b"alice at 127.0.0.1:5000"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct Call {
    /// The session's peer (its current address: it follows a client that moves).
    pub peer: SocketAddr,
    /// The client's static key, as its handshake authenticated it, and the name the server's
    /// allow-list gives it (None without a list, or for a key listed without a name). Without an
    /// allow-list an anonymous client's key is a random one of its process.
    pub client: AllowEntry,
    /// The datagram.
    pub data: Bytes,
}

/// Serves every session of `server` with `handler` until `shutdown` resolves, then shuts the
/// server down gracefully (clients are told to go elsewhere) and returns its final counters.
/// `handler` returns the reply, or `None` for a request that gets none.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::handler::Call;
/// use volley::{Bytes, Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// let upper_case = |call: Call| async move { Some(Bytes::from(call.data.to_ascii_uppercase())) };
/// tokio::spawn(volley::handler::serve(server, upper_case, std::future::pending()));
///
/// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
/// session.send(b"hello").await?;
/// assert_eq!(&session.recv().await?[..], b"HELLO");
/// # Ok(()) }
/// ```
pub async fn serve<H, Fut>(
    server: Server,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> crate::ServerStats
where
    H: Fn(Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<Bytes>> + Send + 'static,
{
    serve_sessions(server, shutdown, Drain::default(), move |session| {
        let handler = handler.clone();
        async move {
            // Every server session carries its client; a handle without one serves nothing.
            let Some(client) = session.client_entry().cloned() else {
                return;
            };
            let session = std::sync::Arc::new(session);
            while let Ok(request) = session.recv_request().await {
                let call = Call {
                    peer: session.remote(),
                    client: client.clone(),
                    data: request.data_bytes(),
                };
                if request.id().is_some() {
                    // A request names its reply: it runs beside the session's others.
                    let (handler, session) = (handler.clone(), std::sync::Arc::clone(&session));
                    tokio::spawn(async move {
                        match handler(call).await {
                            Some(reply) => {
                                let _ = request.reply_bytes(&session, reply).await;
                            }
                            None => drop(request),
                        }
                    });
                    continue;
                }
                match handler(call).await {
                    // Completed once the reply is queued: a REPLY naming a client's request,
                    // or a datagram back for a datagram.
                    Some(reply) => {
                        if request.reply_bytes(&session, reply).await.is_err() {
                            break;
                        }
                    }
                    // No reply: a datagram's request completes; a client's request is
                    // answered DROPPED, so that its caller need not wait for a timeout.
                    None => drop(request),
                }
            }
        }
    })
    .await
}

/// Like [`serve`], with a tower `Service` per server (cloned for each session, as tower services
/// are): `poll_ready` is honoured before each call — a request waiting for a service that is
/// not ready counts as load — and an error ends that request without a reply (logged).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use std::convert::Infallible;
/// use std::future::{Ready, ready};
/// use std::task::{Context, Poll};
/// use volley::handler::Call;
/// use volley::{Bytes, Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// /// A tower service that answers with the request's length.
/// #[derive(Clone)]
/// struct Length;
///
/// impl tower_service::Service<Call> for Length {
///     type Response = Option<Bytes>;
///     type Error = Infallible;
///     type Future = Ready<Result<Option<Bytes>, Infallible>>;
///
///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
///         Poll::Ready(Ok(()))
///     }
///
///     fn call(&mut self, call: Call) -> Self::Future {
///         ready(Ok(Some(Bytes::from(call.data.len().to_string()))))
///     }
/// }
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// tokio::spawn(volley::handler::serve_service(server, Length, std::future::pending()));
///
/// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
/// session.send(b"four").await?;
/// assert_eq!(&session.recv().await?[..], b"4");
/// # Ok(()) }
/// ```
pub async fn serve_service<S>(
    server: Server,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> crate::ServerStats
where
    S: tower_service::Service<Call, Response = Option<Bytes>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send,
{
    serve_sessions(server, shutdown, Drain::default(), move |session| {
        let mut service = service.clone();
        async move {
            let Some(client) = session.client_entry().cloned() else {
                return;
            };
            let session = std::sync::Arc::new(session);
            while let Ok(request) = session.recv_request().await {
                let call = Call {
                    peer: session.remote(),
                    client: client.clone(),
                    data: request.data_bytes(),
                };
                if let Err(e) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
                    debug!(error = %e, "service not available: session ends");
                    // (A client's request is answered REFUSED: it was never taken.)
                    let _ = request.refuse(&session);
                    break;
                }
                if request.id().is_some() {
                    // A request names its reply: its response future runs beside the others.
                    let answer = service.call(call);
                    let session = std::sync::Arc::clone(&session);
                    tokio::spawn(async move {
                        match answer.await {
                            Ok(Some(reply)) => {
                                let _ = request.reply_bytes(&session, reply).await;
                            }
                            Ok(None) => drop(request),
                            Err(e) => {
                                debug!(error = %e, "request failed: answered DROPPED");
                                drop(request);
                            }
                        }
                    });
                    continue;
                }
                match service.call(call).await {
                    Ok(Some(reply)) => {
                        if request.reply_bytes(&session, reply).await.is_err() {
                            break;
                        }
                    }
                    // No reply (or an error): a client's request is answered DROPPED.
                    Ok(None) => drop(request),
                    Err(e) => {
                        debug!(error = %e, "request failed: no reply");
                        drop(request);
                    }
                }
            }
        }
    })
    .await
}

/// How a serving loop ends once its shutdown future resolves (PROTOCOL.md §7.9): with a
/// drain — the server wins no race any more and its sessions go on until they end, `timeout`
/// passes or `stop` resolves — then the sessions left are closed with GOING_AWAY. The default
/// (no drain) closes them at once.
///
/// ```
/// use std::time::Duration;
/// use volley::Drain;
///
/// // What `volley serve` does: drain for up to 30 s, or until a second signal.
/// let (now, stop) = tokio::sync::oneshot::channel::<()>();
/// let drain = Drain::new(Duration::from_secs(30), async { let _ = stop.await; });
/// assert_eq!(drain.timeout(), Duration::from_secs(30));
/// # drop(now);
/// ```
#[derive(Default)]
pub struct Drain {
    timeout: Duration,
    stop: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("timeout", &self.timeout)
            .field("stop", &self.stop.is_some())
            .finish()
    }
}

impl Drain {
    /// Drains for at most `timeout`, or until `stop` resolves (a second signal).
    pub fn new(timeout: Duration, stop: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            timeout,
            stop: Some(Box::pin(stop)),
        }
    }

    /// The longest the drain waits for the sessions (zero: no drain).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits for `done` until the timeout passes or `stop` resolves: whether `done` came first.
    pub(crate) async fn wait<T>(self, done: impl Future<Output = T>) -> bool {
        let stop = self
            .stop
            .unwrap_or_else(|| Box::pin(std::future::pending()));
        tokio::select! {
            _ = done => true,
            () = tokio::time::sleep(self.timeout) => false,
            () = stop => false,
        }
    }

    /// Resolves when the drain is over: its timeout passed or `stop` resolved (at once when
    /// the timeout is zero).
    pub(crate) async fn over(self) {
        if self.timeout.is_zero() {
            return;
        }
        let stop = self
            .stop
            .unwrap_or_else(|| Box::pin(std::future::pending()));
        tokio::select! {
            () = tokio::time::sleep(self.timeout) => {}
            () = stop => {}
        }
    }

    /// Drains `server`, accepting (and serving with `spawn`) the sessions still queued, until
    /// every session ended, the timeout passed or `stop` resolved.
    async fn run(self, server: &mut Server, spawn: impl Fn(Session)) {
        if self.timeout.is_zero() {
            return;
        }
        let handle = server.handle();
        handle.set_draining(true);
        let sessions = server.session_count();
        info!(
            sessions,
            timeout = ?self.timeout,
            "draining: no new sessions; waiting for the open ones to end"
        );
        let stop = self
            .stop
            .unwrap_or_else(|| Box::pin(std::future::pending()));
        let ended = crate::server::sessions_ended(&handle);
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(stop, ended, deadline);
        loop {
            tokio::select! {
                session = server.accept() => match session {
                    Some(session) => spawn(session),
                    None => return,
                },
                () = &mut ended => {
                    info!("drained: every session ended");
                    return;
                }
                () = &mut deadline => {
                    info!(sessions = server.session_count(), "drain timeout: closing the sessions left (going away)");
                    return;
                }
                () = &mut stop => {
                    info!(sessions = server.session_count(), "stopping now: closing the sessions left (going away)");
                    return;
                }
            }
        }
    }
}

/// Accepts sessions until `shutdown`, each served by its own task running `session_task`; then
/// drains as `drain` says and shuts down gracefully.
pub(crate) async fn serve_sessions<T, Fut>(
    mut server: Server,
    shutdown: impl Future<Output = ()>,
    drain: Drain,
    session_task: T,
) -> crate::ServerStats
where
    T: Fn(Session) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let spawn = |session: Session| {
        let peer = session.remote();
        // One task per session: sessions are independent and may block on a slow peer.
        let task = session_task(session);
        tokio::spawn(async move {
            task.await;
            debug!(%peer, "session ended");
        });
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            session = server.accept() => {
                let Some(session) = session else { break };
                spawn(session);
            }
            _ = &mut shutdown => {
                drain.run(&mut server, spawn).await;
                break;
            }
        }
    }
    server.shutdown().await
}
