//! The runtime's clock and socket helpers.

use std::io;

/// The drivers' clock: tokio's, so that a test on a paused runtime (`start_paused`) moves the
/// protocol's timers with virtual time; the same as `std::time::Instant::now()` otherwise.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
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

/// The socket buffers a volley socket asks for (4 MiB each way; the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`): a client with hundreds of requests in flight on a pool, or
/// a server answering a burst, must not lose replies to a 208 KiB default.
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER`] bytes of receive and send buffer on `socket`; best effort (a
/// smaller grant, or a refusal, leaves the default, and is logged at debug).
pub(crate) fn grow_buffers(socket: &tokio::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER) {
        tracing::debug!(error = %e, "SO_RCVBUF not raised");
    }
    if let Err(e) = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER) {
        tracing::debug!(error = %e, "SO_SNDBUF not raised");
    }
}
