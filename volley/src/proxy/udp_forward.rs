//! The server side of the UDP proxy: [`UdpForward`].
//!
//! Each session's datagrams are sent to the backend from a socket of the session's own (so
//! the backend tells sessions apart by source port, as it tells clients apart), and every
//! datagram the backend sends to that socket goes back on the session.
//!
//! Load, counted with no help from the backend: each datagram is a request in flight from its
//! arrival until the backend's next datagram on that session (request/response services: DNS,
//! RPC, game state queries) or [`UDP_REQUEST_TIMEOUT`], whichever comes first — so a flow that
//! only sends does not fill the server.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, info, trace};

use crate::load::LoadGuard;
use crate::server::Server;
use crate::session::Session;

/// How long a forwarded datagram counts as a request without a datagram back.
pub const UDP_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Requests of one session counted at once (a bound on its bookkeeping, not on its traffic).
const MAX_IN_FLIGHT: usize = 1024;

/// Datagrams of the backend's a session reads per system call, into a buffer of this many
/// 64 KiB slots that every session on a thread shares (a datagram of any size goes through, in
/// fragments, PROTOCOL.md §5.7, and a session holds no buffer of its own).
pub(crate) const SESSION_RECV_SLOTS: usize = 4;

thread_local! {
    /// The backend's datagrams are read here, then copied out at their size.
    static BACKEND_RX: std::cell::RefCell<crate::udp::RecvBatch> =
        std::cell::RefCell::new(crate::udp::RecvBatch::large(SESSION_RECV_SLOTS));
}

/// The server side of the UDP proxy: serves every session of a [`Server`] by forwarding its
/// datagrams to a UDP service (the backend) and the backend's datagrams back on the session.
///
/// Each session talks to the backend from a UDP socket of its own, so the backend tells
/// sessions apart by source port as it tells clients apart. Load is counted with no help from
/// the backend: each datagram is a request in flight from its arrival until the backend's next
/// datagram on that session, or [`UDP_REQUEST_TIMEOUT`], whichever comes first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use tokio::net::UdpSocket;
/// use volley::proxy::UdpForward;
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// // A UDP service that answers in upper case.
/// let service = UdpSocket::bind("127.0.0.1:0").await?;
/// let backend = service.local_addr()?;
/// tokio::spawn(async move {
///     let mut buf = [0u8; 1500];
///     while let Ok((n, from)) = service.recv_from(&mut buf).await {
///         let _ = service.send_to(&buf[..n].to_ascii_uppercase(), from).await;
///     }
/// });
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// tokio::spawn(UdpForward::new(server, backend).serve(std::future::pending()));
///
/// // A volley client reaches the service through the forwarder.
/// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
/// session.send(b"hello").await?;
/// assert_eq!(&session.recv().await?[..], b"HELLO");
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a forwarder does nothing until it is served"]
pub struct UdpForward {
    server: Server,
    backend: SocketAddr,
    drain: crate::Drain,
    health: Option<crate::proxy::BackendHealth>,
}

impl UdpForward {
    /// A forwarder from `server`'s sessions to the UDP service at `backend`.
    pub fn new(server: Server, backend: SocketAddr) -> Self {
        Self {
            server,
            backend,
            drain: crate::Drain::default(),
            health: None,
        }
    }

    /// Tells `health` (started for this forwarder's server and backend) of every refusal a
    /// session's socket sees (ICMP port unreachable): the passive half of the health check.
    pub fn health(mut self, health: crate::proxy::BackendHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// How to end once `serve`'s shutdown resolves: drain first (PROTOCOL.md §7.9; default:
    /// close every session at once).
    pub fn drain(mut self, drain: crate::Drain) -> Self {
        self.drain = drain;
        self
    }

    /// Forwards every session until `shutdown` resolves; then shuts the server down gracefully
    /// (clients are told to go elsewhere) and returns its final counters.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> crate::ServerStats {
        let backend = self.backend;
        let health = self.health;
        crate::handler::serve_sessions(self.server, shutdown, self.drain, move |session| {
            let health = health.clone();
            async move { relay(&session, None, backend, health).await }
        })
        .await
    }
}

/// Relays one session's datagrams to `backend` and the backend's back, until either side ends;
/// `first` is a request already taken from the session (the TCP forwarder's datagram sessions).
pub(crate) async fn relay(
    session: &Session,
    first: Option<crate::session::Request>,
    backend: SocketAddr,
    health: Option<crate::proxy::BackendHealth>,
) {
    let refused = |e: &std::io::Error| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            debug!(%backend, "forward: the backend refused a datagram (port unreachable)");
            if let Some(h) = &health {
                h.refused("datagram");
            }
        }
    };
    let (key, name) = crate::proxy::client_of(session);
    info!(
        client_key = %key,
        client_name = name,
        peer = %session.remote(),
        %backend,
        "forward: session opened; its datagrams go to the backend"
    );
    let any = match backend.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = match UdpSocket::bind(SocketAddr::new(any, 0)).await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "forward: no socket for the session");
            return;
        }
    };
    if let Err(e) = socket.connect(backend).await {
        debug!(error = %e, %backend, "forward: backend unreachable");
        return;
    }
    // Requests in flight, oldest first, each with when it stops counting regardless.
    let mut in_flight: VecDeque<(Instant, Option<LoadGuard>)> = VecDeque::new();
    if let Some(request) = first {
        let (data, guard) = request.into_parts();
        match socket.send(&data).await {
            Ok(_) => in_flight.push_back((Instant::now() + UDP_REQUEST_TIMEOUT, guard)),
            Err(e) => refused(&e),
        }
    }
    // The backend's answers are read a few per system call when several are waiting, into the
    // thread's buffer, and copied out at their size.
    loop {
        let expiry = in_flight.front().map(|(t, _)| *t);
        tokio::select! {
            request = session.recv_request() => {
                let Ok(request) = request else { break };
                let (data, guard) = request.into_parts();
                if let Err(e) = socket.send(&data).await {
                    refused(&e);
                    continue; // the backend refused it (ICMP): a lost datagram
                }
                // A one-way flood keeps at most MAX_IN_FLIGHT entries: the oldest stops counting.
                if in_flight.len() >= MAX_IN_FLIGHT {
                    in_flight.pop_front();
                }
                in_flight.push_back((Instant::now() + UDP_REQUEST_TIMEOUT, guard));
            }
            ready = socket.readable() => {
                if ready.is_err() {
                    break;
                }
                let mut failed = false;
                let read = BACKEND_RX.with_borrow_mut(|rx| {
                    rx.recv(&socket).map(|_| {
                        rx.iter()
                            .map(|(_, data)| Bytes::copy_from_slice(data))
                            .collect::<Vec<_>>()
                    })
                });
                let datagrams = match read {
                    Ok(datagrams) => datagrams,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) if crate::socket::transient(&e) => {
                        refused(&e);
                        continue;
                    }
                    Err(e) => {
                        debug!(error = %e, "forward: backend socket failed");
                        break;
                    }
                };
                for data in datagrams {
                    // The answer to the oldest request, as far as load goes.
                    in_flight.pop_front();
                    if data.len() > crate::MAX_DATAGRAM {
                        trace!(len = data.len(), "forward: backend datagram too large, dropped");
                        continue;
                    }
                    if session.send_bytes(data).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    break;
                }
            }
            _ = crate::socket::sleep_until(expiry) => {
                let now = Instant::now();
                while in_flight.front().is_some_and(|(t, _)| *t <= now) {
                    in_flight.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a5_o4_forwarded_sessions_read_the_backend_into_one_buffer_per_thread() {
        // A session holds no receive buffer: the thread's holds 4 datagrams of any size.
        let shared = BACKEND_RX.with_borrow(|rx| rx.capacity());
        assert_eq!(shared, SESSION_RECV_SLOTS * 65_536);
        assert!(shared > volley_proto::MAX_DATAGRAM);
    }
}
