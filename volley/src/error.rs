//! The runtime's errors.

use thiserror::Error;
use volley_proto::{CloseReason, ConnectError};

/// What can go wrong using a [`crate::Client`], [`crate::Server`] or [`crate::Session`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (bind, local address). Check the address and permissions.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The connection could not be made: nobody answered, or no session could be established.
    #[error("connect failed: {0}")]
    Connect(#[from] ConnectError),
    /// The session has ended; open a new one.
    #[error("session closed: {0:?}")]
    Closed(CloseReason),
    /// An argument out of its documented range (API misuse); the message names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The session's send queue is full ([`crate::Session::try_send`]); the datagram was not
    /// queued. [`crate::Session::send`] waits for room instead.
    #[error("send queue full")]
    QueueFull,
    /// A datagram larger than [`crate::MAX_APP_DATAGRAM`] bytes.
    #[error("datagram larger than {} bytes", volley_proto::MAX_APP_DATAGRAM)]
    TooLarge,
}
