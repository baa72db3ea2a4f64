//! The server runtime: one task owns the socket and the [`ServerEndpoint`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace};
use volley_proto::{
    CloseCode, CloseReason, MAX_DATAGRAM_LEN, PublicKey, ServerConfig, ServerEndpoint, ServerEvent,
    ServerStats,
};

use crate::error::Error;
use crate::session::{Cmd, INCOMING_QUEUE, Session, Status};
use crate::socket::{RECV_BATCH, RecvBuf, send_to, transient};

/// Sessions accepted by the driver but not yet taken by [`Server::accept`]; beyond this, new
/// sessions are closed at once (the application is not keeping up).
const ACCEPT_QUEUE: usize = 1024;

enum Control {
    Shutdown(oneshot::Sender<()>),
    Capacity(Option<u32>),
    AppLoad(u32),
}

/// A volley server bound to one UDP socket.
#[derive(Debug)]
pub struct Server {
    local: SocketAddr,
    public: PublicKey,
    accept: mpsc::Receiver<Session>,
    control: mpsc::UnboundedSender<Control>,
    stats: Arc<Mutex<ServerStats>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (use port 0 for any) and starts serving.
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> Result<Self, Error> {
        let socket = UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        let public = config.keypair.public();
        let rng = Box::new(rand::rngs::StdRng::from_entropy());
        let endpoint = ServerEndpoint::new(Instant::now(), config, rng);
        // The accept queue decouples the driver from a slow application; the control channel is
        // unbounded because it carries a handful of rare messages.
        let (accept_tx, accept) = mpsc::channel(ACCEPT_QUEUE);
        let (control, control_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(ServerStats::default()));
        let driver = Driver {
            socket,
            local,
            endpoint,
            accept: accept_tx,
            control: control_rx,
            stats: stats.clone(),
            sessions: HashMap::new(),
        };
        let task = tokio::spawn(driver.run());
        info!(%local, key = %public.to_hex(), "volley server listening");
        Ok(Self {
            local,
            public,
            accept,
            control,
            stats,
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

    /// The next established session; None once the server has shut down.
    pub async fn accept(&mut self) -> Option<Session> {
        self.accept.recv().await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        *self.stats.lock().expect("stats lock")
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        let s = self.stats();
        s.sessions_opened.saturating_sub(s.sessions_closed) as usize
    }

    /// Changes the capacity: at capacity, probes are withheld and initiations refused.
    pub fn set_capacity(&self, capacity: Option<u32>) {
        let _ = self.control.send(Control::Capacity(capacity));
    }

    /// Reports application load (requests in flight) on top of the sessions served.
    pub fn set_app_load(&self, in_flight: u32) {
        let _ = self.control.send(Control::AppLoad(in_flight));
    }

    /// Closes every session with GOING_AWAY (clients fail over), sends those CLOSEs, and stops.
    /// Returns the final counters.
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

struct SessionSlot {
    incoming: mpsc::Sender<Vec<u8>>,
    status: watch::Sender<Status>,
}

struct Driver {
    socket: UdpSocket,
    local: SocketAddr,
    endpoint: ServerEndpoint,
    accept: mpsc::Sender<Session>,
    control: mpsc::UnboundedReceiver<Control>,
    stats: Arc<Mutex<ServerStats>>,
    sessions: HashMap<u32, SessionSlot>,
}

impl Driver {
    async fn run(mut self) {
        // Session handles send their commands here; the driver keeps a sender so the channel
        // outlives any one session.
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(4096);
        let mut rbuf: RecvBuf = [0; MAX_DATAGRAM_LEN + 1];
        let mut tbuf = [0u8; MAX_DATAGRAM_LEN];
        loop {
            self.flush(&cmd_tx, &mut tbuf).await;
            let deadline = self
                .endpoint
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                ready = self.socket.readable() => {
                    if let Err(e) = ready {
                        tracing::error!(error = %e, "socket failed; server stops");
                        break;
                    }
                    for _ in 0..RECV_BATCH {
                        match self.socket.try_recv_from(&mut rbuf) {
                            Ok((n, from)) => {
                                let now = Instant::now();
                                if let Some(t) = self.endpoint.handle(now, from, self.local, &rbuf[..n], &mut tbuf) {
                                    send_to(&self.socket, &tbuf[..t.size], t.destination).await;
                                }
                            }
                            Err(e) if transient(&e) => {
                                if e.kind() == std::io::ErrorKind::WouldBlock { break; }
                            }
                            Err(e) => { debug!(error = %e, "recv failed"); break; }
                        }
                    }
                }
                Some(cmd) = cmd_rx.recv() => self.command(cmd),
                control = self.control.recv() => match control {
                    Some(Control::Capacity(c)) => self.endpoint.set_capacity(c),
                    Some(Control::AppLoad(l)) => self.endpoint.set_app_load(l),
                    Some(Control::Shutdown(done)) => {
                        self.shutdown(&cmd_tx, &mut tbuf).await;
                        let _ = done.send(());
                        break;
                    }
                    None => {
                        self.shutdown(&cmd_tx, &mut tbuf).await;
                        break;
                    }
                },
                _ = sleep_until(deadline) => {}
            }
            // Check the clock ourselves rather than trusting that the sleep branch fired.
            let now = Instant::now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
        }
    }

    async fn shutdown(&mut self, cmd_tx: &mpsc::Sender<Cmd>, tbuf: &mut [u8; MAX_DATAGRAM_LEN]) {
        info!(
            sessions = self.endpoint.session_count(),
            "shutting down: closing sessions (going away)"
        );
        self.endpoint.close_all(CloseCode::GOING_AWAY);
        self.flush(cmd_tx, tbuf).await;
        for (_, slot) in self.sessions.drain() {
            slot.status.send_modify(|s| {
                s.closed
                    .get_or_insert(CloseReason::Local(CloseCode::GOING_AWAY));
            });
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send { id, data } => {
                if let Err(e) = self.endpoint.send(id, &data) {
                    trace!(id, error = %e, "send dropped");
                }
            }
            Cmd::Close { id, code } => self.endpoint.close(id, code),
        }
    }

    async fn flush(&mut self, cmd_tx: &mpsc::Sender<Cmd>, tbuf: &mut [u8; MAX_DATAGRAM_LEN]) {
        let now = Instant::now();
        while let Some(t) = self.endpoint.poll_transmit(now, tbuf) {
            send_to(&self.socket, &tbuf[..t.size], t.destination).await;
        }
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                ServerEvent::Opened { id, remote } => {
                    let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
                    let (st_tx, st_rx) = watch::channel(Status {
                        remote,
                        closed: None,
                    });
                    let session = Session::new(id, cmd_tx.clone(), in_rx, st_rx, None);
                    if self.accept.try_send(session).is_err() {
                        debug!(id, "accept queue full: session refused");
                        self.endpoint.close(id, CloseCode::GOING_AWAY);
                        continue;
                    }
                    self.sessions.insert(
                        id,
                        SessionSlot {
                            incoming: in_tx,
                            status: st_tx,
                        },
                    );
                }
                ServerEvent::Datagram { id, data } => {
                    if let Some(slot) = self.sessions.get(&id) {
                        if slot.incoming.try_send(data).is_err() {
                            trace!(id, "application slow: datagram dropped");
                        }
                    }
                }
                ServerEvent::Closed { id, reason } => {
                    if let Some(slot) = self.sessions.remove(&id) {
                        slot.status.send_modify(|s| s.closed = Some(reason));
                    }
                }
                _ => {}
            }
        }
        // Events can queue packets (a session refused for a full accept queue is closed): send them.
        while let Some(t) = self.endpoint.poll_transmit(now, tbuf) {
            send_to(&self.socket, &tbuf[..t.size], t.destination).await;
        }
        *self.stats.lock().expect("stats lock") = *self.endpoint.stats();
    }
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
