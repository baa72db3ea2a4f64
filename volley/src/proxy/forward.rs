//! The server side of the UDP proxy: each session's datagrams are sent to the backend from a
//! socket of the session's own (so the backend tells sessions apart by source port, as it tells
//! clients apart), and every datagram the backend sends to that socket goes back on the session.
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
use tracing::debug;

use crate::load::LoadGuard;
use crate::server::Server;
use crate::session::Session;

/// How long a forwarded datagram counts as a request without a datagram back.
pub const UDP_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Requests of one session counted at once (a bound on its bookkeeping, not on its traffic).
const MAX_IN_FLIGHT: usize = 1024;

/// Serves every session of `server` by forwarding its datagrams to the UDP service at `backend`
/// until `shutdown` resolves; then shuts the server down gracefully and returns its counters.
pub async fn udp(
    server: Server,
    backend: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> crate::ServerStats {
    crate::handler::serve_sessions(server, shutdown, move |session| relay(session, backend)).await
}

async fn relay(mut session: Session, backend: SocketAddr) {
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
    let mut buf = vec![0u8; 65_536];
    loop {
        let expiry = in_flight.front().map(|(t, _)| *t);
        tokio::select! {
            request = session.recv_request() => {
                let Ok(request) = request else { break };
                let (data, guard) = request.into_parts();
                if socket.send(&data).await.is_err() {
                    continue; // the backend refused it (ICMP): a lost datagram
                }
                // A one-way flood keeps at most MAX_IN_FLIGHT entries: the oldest stops counting.
                if in_flight.len() >= MAX_IN_FLIGHT {
                    in_flight.pop_front();
                }
                in_flight.push_back((Instant::now() + UDP_REQUEST_TIMEOUT, guard));
            }
            received = socket.recv(&mut buf) => {
                match received {
                    Ok(n) => {
                        // The answer to the oldest request, as far as load goes.
                        in_flight.pop_front();
                        if session.send_bytes(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            break;
                        }
                    }
                    Err(e) if crate::socket::transient(&e) => {}
                    Err(e) => {
                        debug!(error = %e, "forward: backend socket failed");
                        break;
                    }
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
