//! The client runtime: [`Client::connect`] races a pool and returns a [`Session`] with the
//! winner; [`Client::connect_n`] opens sessions with the `k` best servers of one race (L3). A
//! client endpoint — one UDP socket and one driver task per address family — serves every
//! connection of a client and keeps them alive afterwards (keepalive, failover).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, trace};
use volley_proto::client::{DEFAULT_WINDOW, PoolState, ServerOutcome, SharedPoolState, Winner};
use volley_proto::{
    ClientConfig, ClientEvent, CloseCode, CloseReason, ConnectError, Connection, MAX_DATAGRAM_LEN,
    SelectionPolicy,
};

use crate::error::Error;
use crate::report::{ConnectReport, OfferFate, OfferSeen};
use crate::session::{Cmd, Drained, INCOMING_QUEUE, Incoming, Link, Session, Status};
use crate::socket::{RECV_BATCH, RecvBuf, send_to, sleep_until, transient};

/// Connects to volley pools.
///
/// One `Client` (and its clones) is one client instance: its connections share what they learn
/// about the pool — answer and handshake times, which set the retransmission timers (L6), and
/// which servers failed, which are ejected from races for a while (L7). Independent `Client`s
/// share nothing.
///
/// A client serves all its connections from one UDP socket per address family (and loopback or
/// not), with one driver task: the first `connect` to a pool of that kind binds it (an
/// ephemeral port), or [`Client::with_socket`] hands one in.
#[derive(Debug, Clone)]
pub struct Client {
    config: ClientConfig,
    pool: SharedPoolState,
    endpoints: Arc<Mutex<HashMap<IpAddr, Endpoint>>>,
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
    /// fan-out, ejection).
    pub fn new(config: ClientConfig) -> Self {
        let pool = PoolState::shared(config.ejection);
        Self {
            config,
            pool,
            endpoints: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A client whose connections of `socket`'s address family use `socket` (bring your own:
    /// one with `SO_REUSEPORT`, a fixed port, or one handed over by systemd). A socket bound to
    /// a loopback address serves loopback pools only; one bound to a wildcard or another
    /// address serves every pool of its family. Call within a tokio runtime.
    pub fn with_socket(config: ClientConfig, socket: std::net::UdpSocket) -> Result<Self, Error> {
        let client = Self::new(config);
        let local = socket.local_addr()?;
        socket.set_nonblocking(true)?;
        let endpoint = Endpoint::start(UdpSocket::from_std(socket)?);
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

    /// The endpoint for pools reached from `ip`'s kind of address: the one running, or a new
    /// one on a fresh ephemeral socket.
    async fn endpoint(&self, remote: IpAddr) -> Result<Endpoint, Error> {
        let key = bind_ip(remote);
        if let Some(e) = lock_endpoints(&self.endpoints).get(&key) {
            if !e.opens.is_closed() {
                return Ok(e.clone());
            }
        }
        let socket = UdpSocket::bind(SocketAddr::new(key, 0)).await?;
        let endpoint = Endpoint::start(socket);
        // Two connects may race to create it: the first one stored wins, the other's driver
        // ends with nothing to serve once its handle is dropped.
        let mut endpoints = lock_endpoints(&self.endpoints);
        let e = endpoints.entry(key).or_insert_with(|| endpoint.clone());
        if e.opens.is_closed() {
            *e = endpoint;
        }
        Ok(e.clone())
    }

    /// Reports what became of a request served by `server` (L7): failures in a row eject it
    /// from this client's races for a back-off; a success ends a probation. Sessions report
    /// for their own server with [`Session::report_failure`] and [`Session::report_success`].
    pub fn report(&self, server: SocketAddr, outcome: ServerOutcome) {
        let mut state = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        state.report(crate::socket::now(), server, outcome);
    }

    /// Whether `server` is ejected from this client's races now (L7).
    pub fn is_ejected(&self, server: SocketAddr) -> bool {
        let state = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        state.is_ejected(crate::socket::now(), &server)
    }

    /// Races `pool` by the configured [`SelectionPolicy`] and returns a session with the chosen
    /// server, on this client's socket for the pool's address family. Under [`SelectionPolicy::NBest`] only the best server is used; see [`Client::connect_n`].
    pub async fn connect(&self, pool: &[SocketAddr]) -> Result<Session, Error> {
        let mut sessions = self.open(pool, self.config.clone(), None).await?;
        sessions
            .pop()
            .ok_or(Error::Connect(ConnectError::NothingToRace))
    }

    /// Opens sessions with the `k` best servers of one race (L3, `NBest`): one probe per
    /// server, the `k` earliest offers (collected for at most the configured window after the
    /// first, [`volley_proto::client::DEFAULT_WINDOW`] unless the policy names one) each get a
    /// handshake, all from one socket served by one driver task.
    ///
    /// Returns when every chosen server is established or has failed: the sessions that came
    /// up, best first — fewer than `k` when fewer servers answered or some handshakes failed
    /// (each failed one re-races the rest of the pool first, so two sessions can end up on one
    /// server). An error only when none came up. Each session fails over on its own; a session
    /// that fails over races with the configured policy (`Earliest` when that is `NBest`).
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
            state: SharedPoolState::clone(&self.pool),
        });
        self.open(pool, main, plan).await
    }

    /// Hands the main connection (and siblings per `plan`) to the endpoint's driver and waits
    /// until every one is established or failed.
    async fn open(
        &self,
        pool: &[SocketAddr],
        config: ClientConfig,
        plan: Option<SiblingPlan>,
    ) -> Result<Vec<Session>, Error> {
        let first = pool.first().ok_or(ConnectError::NothingToRace)?;
        let endpoint = self.endpoint(first.ip()).await?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let open = Open {
            config,
            pool: pool.to_vec(),
            plan,
            state: SharedPoolState::clone(&self.pool),
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
                        parts.incoming,
                        parts.status,
                        Some(parts.report),
                    )
                    .with_pool(SharedPoolState::clone(&self.pool)),
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

fn rng() -> Box<rand::rngs::StdRng> {
    Box::new(rand::rngs::StdRng::from_entropy())
}

fn lock_endpoints(
    m: &Mutex<HashMap<IpAddr, Endpoint>>,
) -> MutexGuard<'_, HashMap<IpAddr, Endpoint>> {
    // Plain handles behind the lock; a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client endpoint: one UDP socket and the driver task serving every connection on it.
#[derive(Debug, Clone)]
struct Endpoint {
    local: SocketAddr,
    opens: mpsc::UnboundedSender<Open>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl Endpoint {
    fn start(socket: UdpSocket) -> Self {
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let (opens, opens_rx) = mpsc::unbounded_channel();
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            socket,
            members: BTreeMap::new(),
            groups: Vec::new(),
            next_id: 0,
            opens: opens_rx,
            cmd: cmd_rx,
        };
        tokio::spawn(driver.run());
        Self { local, opens, cmd }
    }
}

/// A connect for the driver: race `pool`, and tell `ready` when every connection of the group
/// is established or failed.
struct Open {
    config: ClientConfig,
    pool: Vec<SocketAddr>,
    plan: Option<SiblingPlan>,
    state: SharedPoolState,
    ready: oneshot::Sender<Vec<Outcome>>,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The connections of one `connect` (one) or `connect_n` (the main one and its siblings).
struct Group {
    ids: Vec<u32>,
    /// `NBest`: siblings still to be opened when the main race is decided.
    plan: Option<SiblingPlan>,
    ready: Option<oneshot::Sender<Vec<Outcome>>>,
}

/// How an `NBest` group opens its sibling connections once the main race is decided.
struct SiblingPlan {
    config: ClientConfig,
    pool: Vec<SocketAddr>,
    state: SharedPoolState,
}

/// The receiving ends of one member's channels, handed to its [`Session`].
struct Parts {
    link: Arc<Link>,
    incoming: mpsc::Receiver<Incoming>,
    status: watch::Receiver<Status>,
    report: Arc<Mutex<ConnectReport>>,
}

type Outcome = (u32, Result<Parts, ConnectError>);

/// One connection of the group: the main one (id 0) or an `NBest` sibling.
struct Member {
    id: u32,
    conn: Connection,
    /// Established (Ok) or failed for good (Err), once known.
    outcome: Option<Result<(), ConnectError>>,
    /// Handed out with the ready message.
    parts: Option<Parts>,
    report: Arc<Mutex<ConnectReport>>,
    link: Arc<Link>,
    /// The send queue holds datagrams the connection could not take yet (racing again after a
    /// failover, or its queue full): retried at every wake-up.
    blocked: bool,
    incoming: mpsc::Sender<Incoming>,
    status: watch::Sender<Status>,
    /// Whether this member's race was decided at least once (the main one: siblings may start).
    selected: bool,
    /// Whether its group's caller has been told how it went (it may leave the driver once done).
    reported: bool,
}

fn lock(report: &Mutex<ConnectReport>) -> MutexGuard<'_, ConnectReport> {
    // The lock guards plain data; a panic elsewhere cannot leave it inconsistent.
    report.lock().unwrap_or_else(|e| e.into_inner())
}

impl Member {
    /// Moves the handle's queued datagrams into the connection, as many as it takes now.
    fn drain(&mut self) {
        let conn = &mut self.conn;
        self.blocked = self.link.drain(|d| conn.send_datagram_owned(d)) == Drained::Blocked;
    }

    /// Drains the connection's events into the report, status and channels.
    fn events(&mut self) {
        let stats = self.conn.stats();
        let mut report = lock(&self.report);
        report.stats = stats;
        while let Some(event) = self.conn.poll_event() {
            match event {
                ClientEvent::RaceStarted { .. } => report.offers.clear(),
                ClientEvent::Collected {
                    server,
                    answer_time,
                    load,
                } => report.offers.push(OfferSeen {
                    server,
                    answer_time,
                    load: Some(load),
                    fate: OfferFate::Collected,
                }),
                ClientEvent::Selected {
                    server,
                    answer_time,
                    load,
                } => {
                    self.selected = true;
                    match report.offers.iter_mut().find(|o| o.server == server) {
                        Some(o) => o.fate = OfferFate::Selected,
                        None => report.offers.push(OfferSeen {
                            server,
                            answer_time,
                            load: Some(load),
                            fate: OfferFate::Selected,
                        }),
                    }
                    report.answer_time = Some(answer_time);
                    report.load = Some(load);
                }
                ClientEvent::LateOffer {
                    server,
                    answer_time,
                    load,
                } => {
                    report.offers.push(OfferSeen {
                        server,
                        answer_time,
                        load: Some(load),
                        fate: OfferFate::Late,
                    });
                    report.late_offers += 1;
                }
                ClientEvent::Redirected { from, added } => {
                    info!(%from, ?added, "server refused and redirected us");
                    report.redirected_to.extend(added);
                }
                ClientEvent::Established {
                    server,
                    handshake_time,
                    failover_from,
                } => {
                    report.server = Some(server);
                    report.handshake_time = Some(handshake_time);
                    self.status.send_modify(|s| s.remote = server);
                    if let Some(from) = failover_from {
                        report.failovers += 1;
                        info!(%from, to = %server, "failover: session moved to a new server");
                    }
                    self.outcome.get_or_insert(Ok(()));
                }
                ClientEvent::Datagram(data) => {
                    // A full queue means the application is slow: drop, as UDP would.
                    let delivered = self
                        .incoming
                        .try_send(Incoming { data, guard: None })
                        .is_ok();
                    if !delivered {
                        debug!("application slow: datagram dropped");
                    }
                    self.link.count_received(delivered, None);
                }
                ClientEvent::ServerLost { server, reason } => {
                    info!(%server, ?reason, "server lost; racing the rest of the pool");
                }
                ClientEvent::Ejected { server, length } => {
                    info!(%server, ?length, "server failed: ejected from races");
                }
                ClientEvent::Failed(e) => {
                    self.outcome.get_or_insert(Err(e));
                    self.link.close();
                    let reason = match e {
                        ConnectError::Refused(_) => CloseReason::Refused,
                        _ => CloseReason::IdleTimeout,
                    };
                    self.status.send_modify(|s| {
                        s.closed.get_or_insert(reason);
                    });
                }
                ClientEvent::Closed(reason) => {
                    self.link.close();
                    self.status.send_modify(|s| {
                        s.closed.get_or_insert(reason);
                    });
                }
                _ => {}
            }
        }
    }
}

/// Owns one socket and every connection on it: every `connect` and `connect_n` of a client
/// for pools of this kind. Datagrams go to the connection that claims them (race tag, handshake,
/// session id): a scan of the connections per datagram, fine for the hundreds a client holds
/// and not for a proxy's hundreds of thousands (an index by tag and session id would be).
struct Driver {
    socket: UdpSocket,
    members: BTreeMap<u32, Member>,
    groups: Vec<Group>,
    next_id: u32,
    opens: mpsc::UnboundedReceiver<Open>,
    cmd: mpsc::UnboundedReceiver<Cmd>,
}

impl Driver {
    fn add_member(&mut self, conn: Connection, remote: SocketAddr, report: ConnectReport) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let report = Arc::new(Mutex::new(report));
        let link = Arc::new(Link::default());
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let (st_tx, st_rx) = watch::channel(Status {
            remote,
            closed: None,
        });
        self.members.insert(
            id,
            Member {
                id,
                conn,
                outcome: None,
                parts: Some(Parts {
                    link: Arc::clone(&link),
                    incoming: in_rx,
                    status: st_rx,
                    report: Arc::clone(&report),
                }),
                report,
                link,
                blocked: false,
                incoming: in_tx,
                status: st_tx,
                selected: false,
                reported: false,
            },
        );
        id
    }

    /// Starts a group: its main connection now, its siblings when the main race is decided.
    fn start(&mut self, open: Open, now: Instant) {
        let Some(first) = open.pool.first().copied() else {
            let _ = open.ready.send(Vec::new());
            return;
        };
        let conn = Connection::with_state(now, open.config, open.pool, rng(), open.state);
        let id = self.add_member(conn, first, ConnectReport::default());
        self.groups.push(Group {
            ids: vec![id],
            plan: open.plan,
            ready: Some(open.ready),
        });
    }

    async fn run(mut self) {
        let mut rbuf: RecvBuf = [0; MAX_DATAGRAM_LEN + 1];
        let mut tbuf = [0u8; MAX_DATAGRAM_LEN];
        let mut opens_open = true;
        let mut handles_open = true;
        loop {
            let now = crate::socket::now();
            for m in self.members.values_mut() {
                if m.blocked {
                    m.drain();
                }
                while let Some(t) = m.conn.poll_transmit(now, &mut tbuf) {
                    send_to(&self.socket, &tbuf[..t.size], t.destination).await;
                }
                m.events();
                if let Some(stats) = m.conn.session_stats() {
                    m.link.set_protocol_stats(stats);
                }
            }
            if self.open_siblings(now) {
                // Their INITs go out now, not at the next wake-up.
                continue;
            }
            self.report_ready();
            self.reap();
            if (!opens_open || !handles_open) && self.members.is_empty() {
                // Nothing is served and nothing more can come (the client is gone, or every
                // handle and the client are).
                break;
            }
            let deadline = self
                .members
                .values()
                .filter_map(|m| m.conn.poll_timeout())
                .min()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_err() { break; }
                    for _ in 0..RECV_BATCH {
                        match self.socket.try_recv_from(&mut rbuf) {
                            Ok((n, from)) => self.datagram(from, &rbuf[..n]),
                            Err(e) if transient(&e) => {
                                if e.kind() == std::io::ErrorKind::WouldBlock { break; }
                            }
                            Err(e) => { debug!(error = %e, "recv failed"); break; }
                        }
                    }
                }
                open = self.opens.recv(), if opens_open => match open {
                    Some(open) => self.start(open, now),
                    None => opens_open = false,
                },
                cmd = self.cmd.recv(), if handles_open => match cmd {
                    Some(Cmd::Ready { id }) => {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.drain();
                        }
                    }
                    Some(Cmd::Close { id, code }) => {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.conn.close(code);
                        }
                    }
                    None => {
                        // Every handle and the client are gone: close politely.
                        handles_open = false;
                        for m in self.members.values_mut() {
                            m.conn.close(CloseCode::NORMAL);
                        }
                    }
                },
                _ = sleep_until(deadline) => {}
            }
            // Check the clock ourselves rather than trusting that the sleep branch fired.
            let now = crate::socket::now();
            for m in self.members.values_mut() {
                if m.conn.poll_timeout().is_some_and(|t| t <= now) {
                    m.conn.handle_timeout(now);
                }
            }
        }
        // Nothing more will be opened: whoever waits hears what became of each member.
        for g in &mut self.groups {
            g.plan = None;
        }
        for m in self.members.values_mut() {
            m.events();
            m.link.close();
            m.status.send_modify(|s| {
                s.closed
                    .get_or_insert(CloseReason::Local(CloseCode::NORMAL));
            });
        }
        self.report_ready();
    }

    /// Hands one datagram to the connection that claims it — or, when none does, to the oldest
    /// one, which counts what nobody wants — and drains that connection's events.
    fn datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        let now = crate::socket::now();
        let id = if self.members.len() > 1 {
            self.members
                .values()
                .find(|m| m.conn.claims(from, datagram))
                .map(|m| m.id)
        } else {
            None
        };
        let m = match id {
            Some(id) => self.members.get_mut(&id),
            None => self.members.values_mut().next(),
        };
        let Some(m) = m else {
            trace!(%from, "datagram for no connection");
            return;
        };
        m.conn.handle(now, from, datagram);
        m.events();
    }

    /// `NBest`: once a group's main race is decided, opens a sibling connection with each extra
    /// winner, on this socket (the cookies are bound to its address). Only the first race's
    /// runners-up are used; a later race of the main connection (after a refusal or failover)
    /// serves the main session alone. True when siblings were added.
    fn open_siblings(&mut self, now: Instant) -> bool {
        let mut added = false;
        for g in 0..self.groups.len() {
            let main_id = self.groups[g].ids[0];
            let Some(main) = self.members.get_mut(&main_id) else {
                self.groups[g].plan = None;
                continue;
            };
            let decided = main.selected;
            let failed = matches!(main.outcome, Some(Err(_)));
            let extra = main.conn.take_extra_winners();
            let tag = main.conn.decided_tag();
            if !decided {
                if failed {
                    self.groups[g].plan = None;
                }
                continue;
            }
            let Some(plan) = self.groups[g].plan.take() else {
                continue;
            };
            let Some(tag) = tag else {
                continue;
            };
            for w in extra {
                let report = sibling_report(&w);
                let server = w.server;
                let conn = Connection::from_winner(
                    now,
                    plan.config.clone(),
                    plan.pool.clone(),
                    tag,
                    w,
                    rng(),
                    SharedPoolState::clone(&plan.state),
                );
                debug!(%server, "n-best: opening a sibling session");
                let id = self.add_member(conn, server, report);
                self.groups[g].ids.push(id);
                added = true;
            }
        }
        added
    }

    /// Once every member of a group is established or failed (and no sibling is still to
    /// come), tells its caller, handing over each member's receiving ends.
    fn report_ready(&mut self) {
        for g in &mut self.groups {
            if g.ready.is_none()
                || g.plan.is_some()
                || g.ids.iter().any(|id| {
                    self.members
                        .get(id)
                        .is_some_and(|m| m.outcome.is_none() && !m.conn.is_done())
                })
            {
                continue;
            }
            let Some(ready) = g.ready.take() else {
                continue;
            };
            let outcomes = g
                .ids
                .iter()
                .map(|id| {
                    let outcome = match self.members.get_mut(id) {
                        Some(m) => {
                            m.reported = true;
                            match (m.outcome, m.parts.take()) {
                                (Some(Ok(())), Some(parts)) => Ok(parts),
                                (Some(Err(e)), _) => Err(e),
                                // Closed before it came up: only a local close does that.
                                _ => Err(ConnectError::NothingToRace),
                            }
                        }
                        None => Err(ConnectError::NothingToRace),
                    };
                    (*id, outcome)
                })
                .collect();
            let _ = ready.send(outcomes);
        }
        self.groups.retain(|g| g.ready.is_some());
    }

    /// Lets go of connections that are over and whose caller has heard of them.
    fn reap(&mut self) {
        self.members.retain(|_, m| {
            let keep = !(m.reported && m.conn.is_done());
            if !keep {
                m.link.close();
                m.status.send_modify(|s| {
                    s.closed
                        .get_or_insert(CloseReason::Local(CloseCode::NORMAL));
                });
            }
            keep
        });
    }
}

/// The report a sibling starts with: the offer that chose its server.
fn sibling_report(w: &Winner) -> ConnectReport {
    ConnectReport {
        answer_time: Some(w.answer_time),
        load: Some(w.load),
        offers: vec![OfferSeen {
            server: w.server,
            answer_time: w.answer_time,
            load: Some(w.load),
            fate: OfferFate::Selected,
        }],
        ..ConnectReport::default()
    }
}
