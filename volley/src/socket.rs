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
