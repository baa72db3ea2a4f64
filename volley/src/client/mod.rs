//! The client runtime: [`Client::connect`] races a pool and returns a [`Session`] with the
//! winner; [`Client::connect_n`] opens sessions with the `k` best servers of one race. A client
//! endpoint — one UDP socket and one driver task per address family — serves every connection
//! of a client and keeps them alive afterwards (keepalive, failover).
//!
//! The pieces: `endpoint` (the handle on one socket's driver), `open` (what a connect asks of
//! the driver and gets back), `driver` (the driver's side of the shared loop), `member` (one
//! connection and its session handle), `demux` (which connection a datagram is for), `nbest` (a
//! connect's group of connections).

mod demux;
mod driver;
mod endpoint;
mod member;
mod nbest;
mod open;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use volley_proto::client::{DEFAULT_WINDOW, PoolState, ServerOutcome};
use volley_proto::{ClientConfig, ConnectError, EarlyData, SelectionPolicy};

use crate::error::Error;
use crate::session::Session;
use crate::shared_pool::{SharedPool, lock_pool};
use endpoint::Endpoint;
use open::{Open, SiblingPlan};

/// Connects to volley pools: races a pool of servers and opens an encrypted [`Session`] with
/// the winner.
///
/// One `Client` (and its clones) is one client instance: its connections share what they learn
/// about the pool — answer and handshake times, which set the retransmission timers, and which
/// servers failed, which are left out of its races for a while. Independent `Client`s share
/// nothing.
///
/// A client serves all its connections from one UDP socket per address family (and loopback or
/// not), with one driver task: the first `connect` to a pool of that kind binds it (an
/// ephemeral port), or [`Client::with_socket`] hands one in.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// tokio::spawn(volley::echo::serve(server, std::future::pending()));
///
/// // Pin the servers' public key: offers signed by any other are ignored.
/// let client = Client::new(ClientConfig::new(vec![key.public()]));
/// let session = client.connect(&pool).await?;
/// session.send(b"hello").await?;
/// assert_eq!(&session.recv().await?[..], b"hello");
/// // Every connection of this client shares one socket.
/// assert!(client.local_addr(pool[0]).is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    config: ClientConfig,
    pool: SharedPool,
    endpoints: Arc<Mutex<HashMap<IpAddr, Endpoint>>>,
    /// Datagrams its endpoints dropped for naming no connection.
    strays: Arc<AtomicU64>,
}

/// The kind of local address a pool is reached from: loopback or any, IPv4 or IPv6.
fn bind_ip(remote: IpAddr) -> IpAddr {
    match remote {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

impl Client {
    /// A client with this configuration (pinned keys, service, timers, selection policy,
    /// fan-out, ejection). Nothing is bound until the first connect.
    ///
    /// ```
    /// use volley::{Client, ClientConfig, SelectionPolicy, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng).public();
    /// let mut config = ClientConfig::new(vec![key]);
    /// config.policy = SelectionPolicy::window(); // the best load hint within a short window
    /// let client = Client::new(config);
    /// assert_eq!(client.local_addr("127.0.0.1:7001".parse().unwrap()), None);
    /// ```
    pub fn new(config: ClientConfig) -> Self {
        let pool = Arc::new(Mutex::new(PoolState::new(config.ejection)));
        Self {
            config,
            pool,
            endpoints: Arc::new(Mutex::new(HashMap::new())),
            strays: Arc::default(),
        }
    }

    /// The same client (keys, sockets, pool knowledge) whose sessions never fail over: a
    /// [`crate::Pool`] replaces a lost member itself, by a race over the servers it lacks.
    pub(crate) fn without_failover(&self) -> Self {
        let mut client = self.clone();
        client.config.max_failovers = 0;
        client
    }

    /// The same client choosing its races' winners by `policy` (a pool's replacement races:
    /// [`SelectionPolicy::Spare`]). A fan-out of one leaves nothing to choose: the policy stays.
    pub(crate) fn choosing_by(&self, policy: SelectionPolicy) -> Self {
        let mut client = self.clone();
        if client.config.fanout != Some(1) {
            client.config.policy = policy;
        }
        client
    }

    /// Labels pool servers with their zones (replacing earlier labels): with a fan-out and
    /// [`ClientConfig::zone`] set, a race asks servers of the client's own zone first, before it
    /// has measured anything (PROTOCOL.md §6.1). [`crate::discovery::Pool::zones`] gives the
    /// labels of a pool's `ZONE=ENTRY` entries. Races already running keep their targets.
    ///
    /// ```
    /// use volley::{Client, ClientConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng).public();
    /// let mut config = ClientConfig::new(vec![key]);
    /// config.zone = Some("eu-1".into());
    /// config.fanout = Some(4);
    /// let client = Client::new(config);
    /// client.set_server_zones([("127.0.0.1:7001".parse().unwrap(), "eu-1".to_string())].into());
    /// ```
    pub fn set_server_zones(&self, zones: HashMap<SocketAddr, String>) {
        lock_pool(&self.pool).set_server_zones(zones);
    }

    /// A client whose connections of `socket`'s address family use `socket` (bring your own:
    /// one with `SO_REUSEPORT`, a fixed port, or one handed over by systemd). A socket bound to
    /// a loopback address serves loopback pools only; one bound to a wildcard or another
    /// address serves every pool of its family. Call within a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use volley::{Client, ClientConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng).public();
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let local = socket.local_addr()?;
    /// let client = Client::with_socket(ClientConfig::new(vec![key]), socket)?;
    /// // Loopback pools are reached from the socket handed in.
    /// assert_eq!(client.local_addr("127.0.0.1:7001".parse().unwrap()), Some(local));
    /// # Ok(()) }
    /// ```
    pub fn with_socket(config: ClientConfig, socket: std::net::UdpSocket) -> Result<Self, Error> {
        let client = Self::new(config);
        let local = socket.local_addr()?;
        socket.set_nonblocking(true)?;
        let endpoint = Endpoint::start(
            UdpSocket::from_std(socket)?,
            SharedPool::clone(&client.pool),
            Arc::clone(&client.strays),
        );
        let mut endpoints = lock_endpoints(&client.endpoints);
        let family = |loopback: bool| match (local.ip(), loopback) {
            (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        endpoints.insert(family(true), endpoint.clone());
        if !local.ip().is_loopback() {
            endpoints.insert(family(false), endpoint);
        }
        drop(endpoints);
        Ok(client)
    }

    /// The local address connections to `remote` are made from, once a connect has bound it
    /// (or [`Client::with_socket`] gave it).
    pub fn local_addr(&self, remote: SocketAddr) -> Option<SocketAddr> {
        lock_endpoints(&self.endpoints)
            .get(&bind_ip(remote.ip()))
            .map(|e| e.local)
    }

    /// Datagrams this client's sockets received that named no connection of it — an unknown
    /// tag or receiver id, a kind a client never takes, garbage — and dropped, over all its
    /// endpoints. Routing costs one decode and one look-up per datagram whatever it says and
    /// however many connections the client holds (PROTOCOL.md §6.2.3).
    ///
    /// ```
    /// use volley::{Client, ClientConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng).public();
    /// assert_eq!(Client::new(ClientConfig::new(vec![key])).stray_datagrams(), 0);
    /// ```
    pub fn stray_datagrams(&self) -> u64 {
        self.strays.load(Ordering::Relaxed)
    }

    /// The endpoint for pools reached from `ip`'s kind of address: the one running, or a new
    /// one on a fresh ephemeral socket.
    async fn endpoint(&self, remote: IpAddr) -> Result<Endpoint, Error> {
        let key = bind_ip(remote);
        if let Some(e) = lock_endpoints(&self.endpoints).get(&key)
            && !e.opens.is_closed()
        {
            return Ok(e.clone());
        }
        let addr = SocketAddr::new(key, 0);
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        crate::socket::grow_buffers(&socket);
        let endpoint = Endpoint::start(
            socket,
            SharedPool::clone(&self.pool),
            Arc::clone(&self.strays),
        );
        // Two connects may race to create it: the first one stored wins, the other's driver
        // ends with nothing to serve once its handle is dropped.
        let mut endpoints = lock_endpoints(&self.endpoints);
        let e = endpoints.entry(key).or_insert_with(|| endpoint.clone());
        if e.opens.is_closed() {
            *e = endpoint;
        }
        Ok(e.clone())
    }

    /// Reports what became of a request served by `server`: failures in a row eject it from
    /// this client's races for a back-off (it is not probed meanwhile); a success ends the
    /// probation that follows. Sessions report for their own server with
    /// [`Session::report_failure`] and [`Session::report_success`].
    ///
    /// ```
    /// use volley::{Client, ClientConfig, ServerOutcome, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng).public();
    /// let client = Client::new(ClientConfig::new(vec![key]));
    /// let server = "127.0.0.1:7001".parse().unwrap();
    /// // Two failures in a row (the default threshold) eject it.
    /// client.report(server, ServerOutcome::Failure);
    /// assert!(!client.is_ejected(server));
    /// client.report(server, ServerOutcome::Failure);
    /// assert!(client.is_ejected(server));
    /// ```
    pub fn report(&self, server: SocketAddr, outcome: ServerOutcome) {
        lock_pool(&self.pool).report(crate::socket::now(), server, outcome);
    }

    /// Whether `server` is ejected from this client's races now ([`Client::report`]).
    pub fn is_ejected(&self, server: SocketAddr) -> bool {
        lock_pool(&self.pool).is_ejected(crate::socket::now(), &server)
    }

    /// Races `pool` by the configured [`SelectionPolicy`] and returns a session with the chosen
    /// server, on this client's socket for the pool's address family. Under
    /// [`SelectionPolicy::NBest`] only the best server is used; see [`Client::connect_n`]. A pool
    /// that mixes IPv4 and IPv6 addresses is refused ([`Error::InvalidArgument`]); a race that
    /// finds no usable offer, or a handshake that fails, is [`Error::Connect`] with why.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let mut pool = Vec::new();
    /// for _ in 0..3 {
    ///     let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    ///     pool.push(server.local_addr());
    ///     tokio::spawn(volley::echo::serve(server, std::future::pending()));
    /// }
    /// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
    /// // What the race saw: the winner, its answer time, the offers and their load hints.
    /// let report = session.report().unwrap();
    /// assert_eq!(report.server, Some(session.remote()));
    /// assert!(report.answer_time.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn connect(&self, pool: &[SocketAddr]) -> Result<Session, Error> {
        let mut sessions = self.open(pool, self.config.clone(), None, None).await?;
        sessions
            .pop()
            .ok_or(Error::Connect(ConnectError::NothingToRace))
    }

    /// [`Client::connect`], with the session's first datagram `first` riding in the INIT as
    /// early data (PROTOCOL.md §4.8): a one-request session then costs the race and one round
    /// trip (plus the server's service time) instead of the race and two. The server's
    /// application receives `first` as the session's first datagram; read its reply with
    /// [`Session::recv`] as usual (one that overtakes the handshake's answer is kept).
    ///
    /// Opt in only for a first request that may be processed twice and need not stay secret
    /// should the server's private key be stolen later: early data is encrypted without forward
    /// secrecy, and a client that loses a server before its answer sends it to the next server
    /// of the race (the first may have taken it). [`Error::EarlyData`] when `first` is empty or
    /// longer than [`volley_proto::MAX_EARLY_DATA`] (1201) bytes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use volley::{Bytes, Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    /// let pool = vec![server.local_addr()];
    /// tokio::spawn(volley::echo::serve(server, std::future::pending()));
    ///
    /// let client = Client::new(ClientConfig::new(vec![key.public()]));
    /// let session = client.connect_with_early(&pool, Bytes::from_static(b"GET /time")).await?;
    /// // The echo of the request that rode in the handshake.
    /// assert_eq!(&session.recv().await?[..], b"GET /time");
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_early(
        &self,
        pool: &[SocketAddr],
        first: Bytes,
    ) -> Result<Session, Error> {
        let early = EarlyData::new(first)?;
        let mut sessions = self
            .open(pool, self.config.clone(), None, Some(early))
            .await?;
        sessions
            .pop()
            .ok_or(Error::Connect(ConnectError::NothingToRace))
    }

    /// Opens sessions with the `k` best servers of one race (the `NBest` policy): one probe per
    /// server, the `k` earliest offers (collected for at most the configured window after the
    /// first, [`volley_proto::client::DEFAULT_WINDOW`] unless the policy names one) each get a
    /// handshake, all from one socket served by one driver task.
    ///
    /// Returns when every chosen server is established or has failed: the sessions that came
    /// up, best first — fewer than `k` when fewer servers answered or some handshakes failed
    /// (each failed one re-races the rest of the pool first, so two sessions can end up on one
    /// server). An error only when none came up. Each session fails over on its own; a session
    /// that fails over races with the configured policy (`Earliest` when that is `NBest`).
    /// [`Error::InvalidArgument`] when `k` is 0.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volley::Error> {
    /// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
    ///
    /// let key = StaticKeypair::generate(&mut volley::OsRng);
    /// let mut pool = Vec::new();
    /// for _ in 0..3 {
    ///     let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
    ///     pool.push(server.local_addr());
    ///     tokio::spawn(volley::echo::serve(server, std::future::pending()));
    /// }
    /// let client = Client::new(ClientConfig::new(vec![key.public()]));
    /// let sessions = client.connect_n(&pool, 2).await?;
    /// assert_eq!(sessions.len(), 2);
    /// assert_ne!(sessions[0].remote(), sessions[1].remote());
    /// # Ok(()) }
    /// ```
    pub async fn connect_n(&self, pool: &[SocketAddr], k: usize) -> Result<Vec<Session>, Error> {
        if k == 0 {
            return Err(Error::InvalidArgument("connect_n needs k of at least 1"));
        }
        let delta = match self.config.policy {
            SelectionPolicy::Window { delta, .. } | SelectionPolicy::NBest { delta, .. } => delta,
            _ => DEFAULT_WINDOW,
        };
        let mut main = self.config.clone();
        main.policy = SelectionPolicy::NBest { k, delta };
        let mut sibling = self.config.clone();
        if matches!(sibling.policy, SelectionPolicy::NBest { .. }) {
            sibling.policy = SelectionPolicy::Earliest;
        }
        let plan = (k > 1).then(|| SiblingPlan {
            config: sibling,
            pool: pool.to_vec(),
        });
        self.open(pool, main, plan, None).await
    }

    /// Hands the main connection (and siblings per `plan`) to the endpoint's driver and waits
    /// until every one is established or failed.
    async fn open(
        &self,
        pool: &[SocketAddr],
        config: ClientConfig,
        plan: Option<SiblingPlan>,
        early: Option<EarlyData>,
    ) -> Result<Vec<Session>, Error> {
        config.validate()?;
        let first = pool.first().ok_or(ConnectError::NothingToRace)?;
        // One socket serves a race: a pool of both families cannot be raced from it (the other
        // family's probes could not be sent), so it is refused rather than half raced.
        if pool.iter().any(|a| a.is_ipv4() != first.is_ipv4()) {
            return Err(Error::InvalidArgument(
                "the pool mixes IPv4 and IPv6 addresses; race each family with its own connect",
            ));
        }
        // A socket bound to loopback reaches only loopback: any other address in the pool
        // takes the family's wildcard socket, which reaches both.
        let reach = pool.iter().find(|a| !a.ip().is_loopback()).unwrap_or(first);
        let endpoint = self.endpoint(reach.ip()).await?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let open = Open {
            config,
            pool: pool.to_vec(),
            early,
            plan,
            ready: ready_tx,
        };
        if endpoint.opens.send(open).is_err() {
            return Err(Error::Connect(ConnectError::NothingToRace));
        }
        let outcomes = ready_rx
            .await
            .map_err(|_| Error::Connect(ConnectError::NothingToRace))?;
        let cmd_tx = endpoint.cmd;
        let mut sessions = Vec::new();
        let mut first_error = None;
        for (id, outcome) in outcomes {
            match outcome {
                Ok(parts) => sessions.push(
                    Session::new(
                        id,
                        cmd_tx.clone(),
                        parts.link,
                        parts.status,
                        Some(parts.report),
                    )
                    .with_pool(SharedPool::clone(&self.pool)),
                ),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if sessions.is_empty() {
            return Err(Error::Connect(
                first_error.unwrap_or(ConnectError::NothingToRace),
            ));
        }
        Ok(sessions)
    }
}

fn lock_endpoints(
    m: &Mutex<HashMap<IpAddr, Endpoint>>,
) -> MutexGuard<'_, HashMap<IpAddr, Endpoint>> {
    // Plain handles behind the lock; a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
