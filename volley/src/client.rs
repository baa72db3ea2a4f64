//! The client runtime: [`Client::connect`] races a pool and returns a [`Session`] with the
//! winner; [`Client::connect_n`] opens sessions with the `k` best servers of one race (L3). One
//! driver task per call owns the UDP socket and every connection on it, and keeps them alive
//! afterwards (keepalive, failover).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info};
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
#[derive(Debug, Clone)]
pub struct Client {
    config: ClientConfig,
    pool: SharedPoolState,
}

impl Client {
    /// A client with this configuration (pinned keys, service, timers, selection policy,
    /// fan-out, ejection).
    pub fn new(config: ClientConfig) -> Self {
        let pool = PoolState::shared(config.ejection);
        Self { config, pool }
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
    /// server. Binds a fresh UDP socket on an ephemeral port of the pool's address family.
    /// Under [`SelectionPolicy::NBest`] only the best server is used; see [`Client::connect_n`].
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

    /// Binds a socket, starts a driver with the main connection (and siblings per `plan`), and
    /// waits until every connection is established or failed.
    async fn open(
        &self,
        pool: &[SocketAddr],
        config: ClientConfig,
        plan: Option<SiblingPlan>,
    ) -> Result<Vec<Session>, Error> {
        let first = pool.first().ok_or(ConnectError::NothingToRace)?;
        let bind_ip = match first.ip() {
            IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
        let now = crate::socket::now();
        let conn = Connection::with_state(
            now,
            config,
            pool.to_vec(),
            rng(),
            SharedPoolState::clone(&self.pool),
        );
        let (ready_tx, ready_rx) = oneshot::channel();
        // Session handles send their commands here, tagged with their member id. Only the
        // handles hold senders: when the last one is dropped the driver closes everything.
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            socket,
            members: Vec::new(),
            plan,
            ready: Some(ready_tx),
            cmd: cmd_rx,
        };
        driver.add_member(conn, *first, ConnectReport::default());
        tokio::spawn(driver.run());
        let outcomes = ready_rx
            .await
            .map_err(|_| Error::Connect(ConnectError::NothingToRace))?;
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
                    self.link.count_received(delivered);
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

/// Owns one socket and every connection on it: one for `connect`, the main connection and its
/// `NBest` siblings for `connect_n`.
struct Driver {
    socket: UdpSocket,
    members: Vec<Member>,
    /// `NBest`: siblings still to be opened when the main race is decided.
    plan: Option<SiblingPlan>,
    ready: Option<oneshot::Sender<Vec<Outcome>>>,
    cmd: mpsc::UnboundedReceiver<Cmd>,
}

impl Driver {
    fn add_member(&mut self, conn: Connection, remote: SocketAddr, report: ConnectReport) {
        let id = self.members.len() as u32;
        let report = Arc::new(Mutex::new(report));
        let link = Arc::new(Link::default());
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let (st_tx, st_rx) = watch::channel(Status {
            remote,
            closed: None,
        });
        self.members.push(Member {
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
        });
    }

    async fn run(mut self) {
        let mut rbuf: RecvBuf = [0; MAX_DATAGRAM_LEN + 1];
        let mut tbuf = [0u8; MAX_DATAGRAM_LEN];
        let mut handles_open = true;
        loop {
            let now = crate::socket::now();
            for m in &mut self.members {
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
            if self.members.iter().all(|m| m.conn.is_done()) {
                break;
            }
            let deadline = self
                .members
                .iter()
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
                cmd = self.cmd.recv(), if handles_open => match cmd {
                    Some(Cmd::Ready { id }) => {
                        if let Some(m) = self.member(id) {
                            m.drain();
                        }
                    }
                    Some(Cmd::Close { id, code }) => {
                        if let Some(m) = self.member(id) {
                            m.conn.close(code);
                        }
                    }
                    None => {
                        // Every handle is gone: close politely.
                        handles_open = false;
                        for m in &mut self.members {
                            m.conn.close(CloseCode::NORMAL);
                        }
                    }
                },
                _ = sleep_until(deadline) => {}
            }
            // Check the clock ourselves rather than trusting that the sleep branch fired.
            let now = crate::socket::now();
            for m in &mut self.members {
                if m.conn.poll_timeout().is_some_and(|t| t <= now) {
                    m.conn.handle_timeout(now);
                }
            }
        }
        // Nothing more will be opened: whoever waits hears what became of each member.
        self.plan = None;
        for m in &mut self.members {
            m.events();
            m.link.close();
            m.status.send_modify(|s| {
                s.closed
                    .get_or_insert(CloseReason::Local(CloseCode::NORMAL));
            });
        }
        self.report_ready();
    }

    fn member(&mut self, id: u32) -> Option<&mut Member> {
        self.members.get_mut(id as usize)
    }

    /// Hands one datagram to the first connection that claims it, else to the main one (which
    /// counts what nobody wants), and drains that connection's events.
    fn datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        let now = crate::socket::now();
        let index = if self.members.len() > 1 {
            self.members
                .iter()
                .position(|m| m.conn.claims(from, datagram))
                .unwrap_or(0)
        } else {
            0
        };
        let Some(m) = self.members.get_mut(index) else {
            return;
        };
        m.conn.handle(now, from, datagram);
        m.events();
    }

    /// `NBest`: once the main race is decided, opens a sibling connection with each extra
    /// winner, on this socket (the cookies are bound to its address). Only the first race's
    /// runners-up are used; a later race of the main connection (after a refusal or failover)
    /// serves the main session alone. True when siblings were added.
    fn open_siblings(&mut self, now: Instant) -> bool {
        let Some(main) = self.members.first_mut() else {
            return false;
        };
        let decided = main.selected;
        let failed = matches!(main.outcome, Some(Err(_)));
        let extra = main.conn.take_extra_winners();
        let tag = main.conn.decided_tag();
        if !decided {
            if failed {
                self.plan = None;
            }
            return false;
        }
        let Some(plan) = self.plan.take() else {
            return false;
        };
        let Some(tag) = tag else {
            return false;
        };
        let added = !extra.is_empty();
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
            self.add_member(conn, server, report);
        }
        added
    }

    /// Once every member is established or failed (and no sibling is still to come), tells
    /// the caller, handing over each member's receiving ends.
    fn report_ready(&mut self) {
        if self.ready.is_none()
            || self.plan.is_some()
            || self
                .members
                .iter()
                .any(|m| m.outcome.is_none() && !m.conn.is_done())
        {
            return;
        }
        let Some(ready) = self.ready.take() else {
            return;
        };
        let outcomes = self
            .members
            .iter_mut()
            .map(|m| {
                let outcome = match (m.outcome, m.parts.take()) {
                    (Some(Ok(())), Some(parts)) => Ok(parts),
                    (Some(Err(e)), _) => Err(e),
                    // Closed before it came up: only a local close does that.
                    _ => Err(ConnectError::NothingToRace),
                };
                (m.id, outcome)
            })
            .collect();
        let _ = ready.send(outcomes);
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
