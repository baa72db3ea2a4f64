//! The runtime's errors.

use thiserror::Error;
use volley_proto::{CloseReason, ConnectError};

/// What can go wrong using a [`crate::Client`], [`crate::Server`] or [`crate::Session`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use volley::{Client, ClientConfig, Error, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng).public();
/// let client = Client::new(ClientConfig::new(vec![key]));
/// // A pool of both address families cannot be raced from one socket.
/// let mixed = ["127.0.0.1:7001".parse().unwrap(), "[::1]:7001".parse().unwrap()];
/// match client.connect(&mixed).await {
///     Err(Error::InvalidArgument(why)) => println!("refused: {why}"),
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding a socket to `addr` failed (in use, not a local address, no permission).
    #[error("cannot bind {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Another socket operation failed (local address, non-blocking mode).
    #[error("socket error")]
    Io(#[from] std::io::Error),
    /// The connection could not be made: nobody answered, or no session could be established.
    /// (The cause is the error's `source`, as with every variant that wraps one.)
    #[error("connect failed")]
    Connect(#[from] ConnectError),
    /// The session has ended; open a new one.
    #[error("session closed: {0:?}")]
    Closed(CloseReason),
    /// A configuration setting out of range ([`volley_proto::ConfigError`] names it).
    #[error("invalid configuration")]
    Config(#[from] volley_proto::ConfigError),
    /// A pool's names could not be resolved ([`crate::discovery`]); the message says which and
    /// why.
    #[error("discovery: {0}")]
    Discovery(String),
    /// An argument out of its documented range (API misuse); the message names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The session's send queue is full ([`crate::Session::try_send`]); the datagram was not
    /// queued. [`crate::Session::send`] waits for room instead.
    #[error("send queue full")]
    QueueFull,
    /// A datagram that cannot ride in an INIT as early data
    /// ([`crate::Client::connect_with_early`]): empty, or more than
    /// [`volley_proto::MAX_EARLY_DATA`] bytes.
    #[error("early data refused")]
    EarlyData(#[from] volley_proto::EarlyDataError),
    /// A datagram larger than [`crate::MAX_DATAGRAM`] bytes (65,535).
    #[error("datagram larger than {} bytes", volley_proto::MAX_DATAGRAM)]
    TooLarge,
}
