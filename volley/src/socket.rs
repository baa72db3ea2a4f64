//! Socket helpers shared by the client and server drivers.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;
use volley_proto::MAX_DATAGRAM_LEN;

/// At most this many datagrams are read per wake-up before output is flushed, so one busy
/// socket cannot starve timers or transmits (and the core sees datagrams in batches).
pub const RECV_BATCH: usize = 64;

/// A receive buffer large enough for any datagram we accept plus one byte, so that oversized
/// datagrams are seen as oversized rather than silently truncated to a valid length.
pub type RecvBuf = [u8; MAX_DATAGRAM_LEN + 1];

/// The drivers' clock: tokio's, so that a test on a paused runtime (`start_paused`) moves the
/// protocol's timers with virtual time; the same as `std::time::Instant::now()` otherwise.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Sends, logging but otherwise ignoring errors: UDP sends fail transiently (buffer full,
/// ICMP unreachable reported on a later call) and the protocol's retransmissions cover them.
pub async fn send_to(socket: &UdpSocket, data: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(data, to).await {
        tracing::debug!(%to, error = %e, "send failed");
    }
}

/// Whether a receive error is transient (to be ignored) rather than fatal for the socket.
pub fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
