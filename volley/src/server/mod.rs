//! The server runtime: one task owns the socket and the [`ServerEndpoint`]; the application
//! reports its load through [`LoadGuard`]s — taken for it by [`Session::recv_request`] — and
//! [`Server::set_app_load`], and the server turns that load into when it answers probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;
use volley_proto::allow::AllowList;
use volley_proto::{
    AnswerPolicy, AppLoad, PublicKey, ServerConfig, ServerEndpoint, ServerLoad, ServerStats,
};

mod driver;

use driver::{Control, ServerSide};

use crate::error::Error;
use crate::load::{LoadGuard, Shared};
use crate::runtime;
use crate::session::Session;
use crate::timer::PreciseTimer;
use crate::udp;

/// Sessions accepted by the driver but not yet taken by [`Server::accept`]; beyond this, new
/// sessions are closed at once (the application is not keeping up).
const ACCEPT_QUEUE: usize = 1024;

/// A cloneable handle on a running server's load and counters, for request handlers and
/// monitors that do not own the [`Server`] (which `accept` needs `&mut`, and
/// [`crate::echo::serve`] consumes).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let mut config = ServerConfig::new(key);
/// config.capacity = Some(4);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), config).await?;
/// let handle = server.handle();
/// tokio::spawn(volley::echo::serve(server, std::future::pending()));
///
/// // From any task: work the runtime cannot see counts while its guard lives ...
/// let guard = handle.load_guard();
/// drop(guard);
/// // ... and the counters and load as the server last published them.
/// assert_eq!(handle.stats().sessions_opened, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
}

impl ServerHandle {
    /// Counts one request in flight until the guard is dropped. See [`LoadGuard`].
    pub fn load_guard(&self) -> LoadGuard {
        self.shared.guard()
    }

    /// See [`Server::set_app_load`].
    pub fn set_app_load(&self, load: AppLoad) {
        self.shared.set_app_load(load);
    }

    /// See [`Server::load`].
    pub fn load(&self) -> ServerLoad {
        self.shared.published().load
    }

    /// See [`Server::stats`].
    pub fn stats(&self) -> ServerStats {
        self.shared.published().stats
    }

    /// Counters, load and answer delays from one published snapshot (so that, say,
    /// `sessions_opened - sessions_closed` is the `sessions` of the same moment).
    pub(crate) fn snapshot(&self) -> Snapshot {
        let p = self.shared.published();
        Snapshot {
            stats: p.stats,
            load: p.load,
            delays: p.answer_delays,
            allow_list_len: p.allow_list_len,
        }
    }

    /// See [`Server::answer_delays`].
    pub fn answer_delays(&self) -> volley_proto::server::AnswerDelays {
        self.shared.published().answer_delays
    }

    /// See [`Server::set_capacity`].
    pub fn set_capacity(&self, capacity: Option<u32>) {
        let _ = self.control.send(Control::Capacity(capacity));
    }

    /// See [`Server::set_max_sessions`].
    pub fn set_max_sessions(&self, max_sessions: Option<u32>) {
        let _ = self.control.send(Control::MaxSessions(max_sessions));
    }

    /// See [`Server::set_draining`].
    pub fn set_draining(&self, draining: bool) {
        let _ = self.control.send(Control::Drain(draining));
    }

    /// See [`Server::set_available`].
    pub fn set_available(&self, available: bool) {
        let _ = self.control.send(Control::Available(available));
    }

    /// See [`Server::set_allow_list`].
    pub async fn set_allow_list(&self, allow: Option<Arc<AllowList>>) -> usize {
        set_allow_list(&self.control, allow).await
    }

    /// See [`Server::allow_list_len`].
    pub fn allow_list_len(&self) -> Option<usize> {
        self.shared.published().allow_list_len
    }
}

/// Resolves once `handle`'s server has no session open (polled every 50 ms: the published
/// counters are the source).
pub(crate) async fn sessions_ended(handle: &ServerHandle) {
    loop {
        let s = handle.stats();
        if s.sessions_opened <= s.sessions_closed {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Hands the driver a new allow-list and waits for how many sessions it revoked (0 when the
/// driver is gone: nothing is served any more).
async fn set_allow_list(
    control: &mpsc::UnboundedSender<Control>,
    allow: Option<Arc<AllowList>>,
) -> usize {
    let (tx, rx) = oneshot::channel();
    if control.send(Control::AllowList(allow, tx)).is_err() {
        return 0;
    }
    rx.await.unwrap_or(0)
}

/// One published moment of a server, for the metrics endpoint.
pub(crate) struct Snapshot {
    pub(crate) stats: ServerStats,
    pub(crate) load: ServerLoad,
    pub(crate) delays: volley_proto::server::AnswerDelays,
    pub(crate) allow_list_len: Option<usize>,
}

/// A volley server bound to one UDP socket: it answers the probes of clients with offers —
/// sooner the less loaded it is — and hands each session a client opens to
/// [`Server::accept`].
///
/// Serve sessions with your own accept loop, or let [`crate::echo::serve`],
/// [`crate::handler::serve`] or a [`crate::proxy`] forwarder run it. Dropping a `Server` stops it
/// where it stands (its clients find out by their timeouts); [`Server::shutdown`] tells them to
/// go elsewhere first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// let client = tokio::spawn(async move {
///     let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
///     session.send(b"question").await?;
///     session.recv().await
/// });
///
/// // An accept loop of one session: each datagram is a request, answered in upper case.
/// let session = server.accept().await.unwrap();
/// let request = session.recv_request().await?;
/// let answer = request.data().to_ascii_uppercase();
/// request.reply(&session, &answer).await?;
/// assert_eq!(&client.await.unwrap()?[..], b"QUESTION");
/// let stats = server.shutdown().await;
/// assert_eq!(stats.sessions_opened, 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    local: SocketAddr,
    public: PublicKey,
    accept: mpsc::Receiver<Session>,
    control: mpsc::UnboundedSender<Control>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (use port 0 for any) and starts serving. Errors: [`Error::Config`] when
    /// `config` does not validate ([`ServerConfig::validate`]), [`Error::Bind`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use volley::{Server, ServerConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key)).await?;
    /// assert_eq!(server.local_addr().ip().to_string(), "127.0.0.1");
    /// assert_ne!(server.local_addr().port(), 0);
    /// # Ok(()) }
    /// ```
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> Result<Self, Error> {
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        crate::socket::grow_buffers(&socket);
        Self::serve(socket, config)
    }

    /// Serves on a socket the caller made (bring your own: one with `SO_REUSEPORT` so that
    /// several servers share a port, or one handed over by systemd). It is made non-blocking;
    /// call within a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use volley::{Server, ServerConfig, StaticKeypair};
    ///
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let addr = socket.local_addr()?;
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let server = Server::from_socket(socket, ServerConfig::new(key))?;
    /// assert_eq!(server.local_addr(), addr);
    /// # Ok(()) }
    /// ```
    pub fn from_socket(socket: std::net::UdpSocket, config: ServerConfig) -> Result<Self, Error> {
        socket.set_nonblocking(true)?;
        Self::serve(UdpSocket::from_std(socket)?, config)
    }

    fn serve(socket: UdpSocket, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let local = socket.local_addr()?;
        udp::enable_local_addr(&socket)?;
        let public = config.keypair.public();
        let allow_list_len = config.allow.as_ref().map(|l| l.len());
        // Paced offers need sub-millisecond timing (see `timer`); deadlines further away than
        // the longest pace are other timers, for which tokio's millisecond is plenty.
        let precise = match config.answer {
            AnswerPolicy::Paced { max_delay, .. } => match PreciseTimer::new() {
                Ok(timer) => Some((timer, max_delay + Duration::from_millis(1))),
                Err(e) => {
                    tracing::warn!(error = %e, "no timer thread: paced offers keep 1 ms timing");
                    None
                }
            },
            _ => None,
        };
        let rng = Box::new(rand::rngs::StdRng::from_entropy());
        let endpoint = ServerEndpoint::new(crate::socket::now(), config, rng);
        // The accept queue decouples the driver from a slow application; the control channel is
        // unbounded because it carries a handful of rare messages.
        let (accept_tx, accept) = mpsc::channel(ACCEPT_QUEUE);
        let (control, control_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        shared.published().allow_list_len = allow_list_len;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let side = ServerSide::new(
            endpoint,
            accept_tx,
            control_rx,
            Arc::clone(&shared),
            cmd_tx,
            precise,
        );
        let task = tokio::spawn(runtime::Driver::new(socket, cmd_rx, side, true).run());
        // Debug, not info: whoever binds a server announces it in its own words (the `volley`
        // binary prints one banner); a second line per start is noise.
        match allow_list_len {
            Some(keys) => debug!(
                %local,
                key = %public.to_hex(),
                allowed_keys = keys,
                "volley server listening (allow-list: only listed client keys get sessions)"
            ),
            None => debug!(%local, key = %public.to_hex(), "volley server listening"),
        }
        Ok(Self {
            local,
            public,
            accept,
            control,
            shared,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The static public key clients pin.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The next established session; None once the server has shut down. Sessions that
    /// arrive while none is being accepted wait in a queue (1024 of them; beyond, new sessions
    /// are closed at once). See [`Server`] for an example.
    pub async fn accept(&mut self) -> Option<Session> {
        self.accept.recv().await
    }

    /// A snapshot of the counters, as of the driver's last wake-up.
    pub fn stats(&self) -> ServerStats {
        self.shared.published().stats
    }

    /// How long answered probes waited for their offers, as of the driver's last wake-up.
    pub fn answer_delays(&self) -> volley_proto::server::AnswerDelays {
        self.shared.published().answer_delays
    }

    /// The load as of the driver's last wake-up: sessions, application load (guards plus
    /// [`Server::set_app_load`]), offers outstanding, probes held, capacity.
    pub fn load(&self) -> ServerLoad {
        self.shared.published().load
    }

    /// A cloneable handle for taking [`LoadGuard`]s and reading load and counters from other
    /// tasks (see [`ServerHandle`]).
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
            control: self.control.clone(),
        }
    }

    /// Counts one request in flight until the guard is dropped. See [`LoadGuard`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use volley::{Server, ServerConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key)).await?;
    /// let guard = server.load_guard(); // a request the runtime cannot see begins
    /// // ... serve it ...
    /// drop(guard); // and ends: the server learns its service time from it
    /// # Ok(()) }
    /// ```
    pub fn load_guard(&self) -> LoadGuard {
        self.shared.guard()
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        let s = self.stats();
        s.sessions_opened.saturating_sub(s.sessions_closed) as usize
    }

    /// Changes the capacity (the requests served at once), which the server weighs its
    /// requests in flight against.
    pub fn set_capacity(&self, capacity: Option<u32>) {
        let _ = self.control.send(Control::Capacity(capacity));
    }

    /// Changes the session limit: at it, probes are withheld and initiations refused (except
    /// those answering an offer just made).
    pub fn set_max_sessions(&self, max_sessions: Option<u32>) {
        let _ = self.control.send(Control::MaxSessions(max_sessions));
    }

    /// Starts draining (`true`) or stops (PROTOCOL.md §7.9): a draining server answers no
    /// probe and refuses every new session with a REDIRECT to its peers, so it wins no race,
    /// while its open sessions go on. [`Server::drain`] drains and then shuts down.
    pub fn set_draining(&self, draining: bool) {
        let _ = self.control.send(Control::Drain(draining));
    }

    /// Whether the server can serve new sessions (default true). An unavailable server — its
    /// backend down, say ([`crate::proxy::BackendHealth`]) — behaves on the wire as a draining
    /// one (PROTOCOL.md §7.9: no OFFER, a new INIT gets a REDIRECT) while its open sessions go
    /// on; unlike a drain, it ends when `set_available(true)` comes. Independent of
    /// [`Server::set_draining`]: the server offers sessions only when available and not
    /// draining.
    pub fn set_available(&self, available: bool) {
        let _ = self.control.send(Control::Available(available));
    }

    /// Drains (see [`Server::set_draining`]) until every session has ended or `timeout` has
    /// passed, then shuts down: the sessions left are closed with GOING_AWAY. Returns the final
    /// counters.
    pub async fn drain(self, timeout: std::time::Duration) -> ServerStats {
        self.set_draining(true);
        let handle = self.handle();
        let _ = tokio::time::timeout(timeout, sessions_ended(&handle)).await;
        self.shutdown().await
    }

    /// Replaces the allow-list at once (None: any client that completes the handshake gets a
    /// session), and resolves to how many open sessions it revoked: each session whose client
    /// key the new list does not hold is closed with [`CloseCode::REVOKED`] — its CLOSE leaves
    /// with the driver's very next flush, its handle here sees
    /// `CloseReason::Local(CloseCode::REVOKED)` and its client `Remote(REVOKED)` (no failover),
    /// and it is counted in [`ServerStats::sessions_revoked`]. Sessions of keys still listed
    /// stay open and take the new list's names. Resolves to 0 once the server has stopped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use std::sync::Arc;
    /// use volley::{AllowList, Server, ServerConfig, StaticKeypair};
    ///
    /// let alice = StaticKeypair::generate(&mut volley::OsRng);
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let mut config = ServerConfig::new(key);
    /// config.allow = Some(Arc::new(AllowList::from_keys([alice.public()])));
    /// let server = Server::bind("127.0.0.1:0".parse().unwrap(), config).await?;
    /// assert_eq!(server.allow_list_len(), Some(1));
    /// // Alice is off the list now; her sessions, had she any, would end at once.
    /// let revoked = server.set_allow_list(Some(Arc::new(AllowList::new()))).await;
    /// assert_eq!(revoked, 0);
    /// assert_eq!(server.allow_list_len(), Some(0));
    /// # Ok(()) }
    /// ```
    ///
    /// [`CloseCode::REVOKED`]: volley_proto::CloseCode::REVOKED
    pub async fn set_allow_list(&self, allow: Option<Arc<AllowList>>) -> usize {
        set_allow_list(&self.control, allow).await
    }

    /// How many client keys the allow-list in force holds, as of the driver's last wake-up;
    /// None when the server takes any client.
    pub fn allow_list_len(&self) -> Option<usize> {
        self.shared.published().allow_list_len
    }

    /// Reports application load for applications that count it themselves: requests in flight
    /// now and the running total completed. The server weighs this plus the [`LoadGuard`]s
    /// alive; lowering it can release held probes at once.
    pub fn set_app_load(&self, load: AppLoad) {
        self.shared.set_app_load(load);
    }

    /// Closes every session with GOING_AWAY (clients fail over), sends those CLOSEs, and stops.
    /// Returns the final counters.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use volley::{Server, ServerConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key)).await?;
    /// let stats = server.shutdown().await;
    /// assert_eq!(stats.sessions_closed, 0);
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(mut self) -> ServerStats {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.stats()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Without a graceful shutdown the driver is stopped where it stands (like a crash).
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
