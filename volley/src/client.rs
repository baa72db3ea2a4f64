//! The client runtime: `connect` races a pool and returns a [`Session`]; a driver task keeps the
//! connection alive afterwards (keepalive, failover).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info};
use volley_proto::{
    ClientConfig, ClientEvent, ClientStats, CloseCode, CloseReason, ConnectError, Connection,
    MAX_DATAGRAM_LEN,
};

use crate::error::Error;
use crate::server::sleep_until;
use crate::session::{Cmd, INCOMING_QUEUE, Session, Status};
use crate::socket::{RECV_BATCH, RecvBuf, send_to, transient};

/// What a client learned while connecting, kept current for the life of the session.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectReport {
    /// The server of the current session.
    pub server: Option<SocketAddr>,
    /// Its answer time in the race that chose it (C3).
    pub answer_time: Option<Duration>,
    /// INIT to ACCEPT with it.
    pub handshake_time: Option<Duration>,
    /// Every offer of the latest race in arrival order, winner first, with its answer time.
    pub offers: Vec<(SocketAddr, Duration)>,
    /// Offers that arrived after their race was decided, voided (C5), over the connection's life.
    pub late_offers: u64,
    /// Times the connection lost its server and moved to another (R5).
    pub failovers: u64,
    /// The protocol counters.
    pub stats: ClientStats,
}

/// Connects to volley pools.
#[derive(Debug, Clone)]
pub struct Client {
    config: ClientConfig,
}

impl Client {
    /// A client with this configuration (pinned keys, service, timers).
    pub fn new(config: ClientConfig) -> Self {
        Self { config }
    }

    /// Races `pool` and returns a session with the winner. Binds a fresh UDP socket on an
    /// ephemeral port of the pool's address family.
    pub async fn connect(&self, pool: &[SocketAddr]) -> Result<Session, Error> {
        let first = pool.first().ok_or(ConnectError::NothingToRace)?;
        let bind_ip = match first.ip() {
            IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
        let rng = Box::new(rand::rngs::StdRng::from_entropy());
        let conn = Connection::new(Instant::now(), self.config.clone(), pool.to_vec(), rng);
        let (ready_tx, ready_rx) = oneshot::channel();
        let report = Arc::new(Mutex::new(ConnectReport::default()));
        let (cmd_tx, cmd_rx) = mpsc::channel(4096);
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let (st_tx, st_rx) = watch::channel(Status {
            remote: *first,
            closed: None,
        });
        let driver = Driver {
            socket,
            conn,
            ready: Some(ready_tx),
            report: report.clone(),
            incoming: in_tx,
            status: st_tx,
            cmd: cmd_rx,
        };
        tokio::spawn(driver.run());
        match ready_rx.await {
            Ok(Ok(())) => Ok(Session::new(0, cmd_tx, in_rx, st_rx, Some(report))),
            Ok(Err(e)) => Err(Error::Connect(e)),
            Err(_) => Err(Error::Connect(ConnectError::NothingToRace)),
        }
    }
}

struct Driver {
    socket: UdpSocket,
    conn: Connection,
    ready: Option<oneshot::Sender<Result<(), ConnectError>>>,
    report: Arc<Mutex<ConnectReport>>,
    incoming: mpsc::Sender<Vec<u8>>,
    status: watch::Sender<Status>,
    cmd: mpsc::Receiver<Cmd>,
}

impl Driver {
    async fn run(mut self) {
        let mut rbuf: RecvBuf = [0; MAX_DATAGRAM_LEN + 1];
        let mut tbuf = [0u8; MAX_DATAGRAM_LEN];
        let mut handle_open = true;
        loop {
            let now = Instant::now();
            while let Some(t) = self.conn.poll_transmit(now, &mut tbuf) {
                send_to(&self.socket, &tbuf[..t.size], t.destination).await;
            }
            self.events();
            if self.conn.is_done() {
                break;
            }
            let deadline = self.conn.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_err() { break; }
                    for _ in 0..RECV_BATCH {
                        match self.socket.try_recv_from(&mut rbuf) {
                            Ok((n, from)) => self.conn.handle(Instant::now(), from, &rbuf[..n]),
                            Err(e) if transient(&e) => {
                                if e.kind() == std::io::ErrorKind::WouldBlock { break; }
                            }
                            Err(e) => { debug!(error = %e, "recv failed"); break; }
                        }
                    }
                }
                cmd = self.cmd.recv(), if handle_open => match cmd {
                    Some(Cmd::Send { data, .. }) => {
                        if let Err(e) = self.conn.send_datagram(&data) {
                            debug!(error = %e, "send dropped");
                        }
                    }
                    Some(Cmd::Close { code, .. }) => self.conn.close(code),
                    None => {
                        // Every handle is gone: close politely.
                        handle_open = false;
                        self.conn.close(CloseCode::NORMAL);
                    }
                },
                _ = sleep_until(deadline) => {}
            }
            let now = Instant::now();
            if self.conn.poll_timeout().is_some_and(|t| t <= now) {
                self.conn.handle_timeout(now);
            }
        }
        self.status.send_modify(|s| {
            s.closed
                .get_or_insert(CloseReason::Local(CloseCode::NORMAL));
        });
    }

    fn events(&mut self) {
        let stats = self.conn.stats();
        let mut report = self.report.lock().expect("report lock");
        report.stats = stats;
        while let Some(event) = self.conn.poll_event() {
            match event {
                ClientEvent::RaceStarted { .. } => report.offers.clear(),
                ClientEvent::Selected {
                    server,
                    answer_time,
                    ..
                } => {
                    report.offers.push((server, answer_time));
                    report.answer_time = Some(answer_time);
                }
                ClientEvent::LateOffer {
                    server,
                    answer_time,
                } => {
                    report.offers.push((server, answer_time));
                    report.late_offers += 1;
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
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                }
                ClientEvent::Datagram(d) => {
                    let dropped = self.incoming.try_send(d).is_err();
                    if dropped {
                        debug!("application slow: datagram dropped");
                    }
                }
                ClientEvent::ServerLost { server, reason } => {
                    info!(%server, ?reason, "server lost; racing the rest of the pool");
                }
                ClientEvent::Failed(e) => {
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Err(e));
                    }
                    self.status.send_modify(|s| {
                        s.closed.get_or_insert(CloseReason::IdleTimeout);
                    });
                }
                ClientEvent::Closed(reason) => {
                    self.status.send_modify(|s| {
                        s.closed.get_or_insert(reason);
                    });
                }
                _ => {}
            }
        }
    }
}
