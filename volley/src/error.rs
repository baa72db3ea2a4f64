//! The runtime's errors.

use thiserror::Error;
use volley_proto::{CloseReason, ConnectError, ReplyStatus, SendError};

/// What can go wrong using a [`crate::Client`], [`crate::Server`] or [`crate::Session`].
///
/// Each message says why as well as what (`connect failed: no server answered within 3s`): the
/// cause a variant wraps is both in its `Display` and its `source`, so a log line of the error
/// alone is enough. A printer that walks `source` too (anyhow's `{:#}`) repeats it; skip a
/// cause whose text the message already ends with.
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
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Another socket operation failed (local address, non-blocking mode).
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection could not be made: nobody answered, or no session could be established.
    /// (The cause is in the message and is the error's `source`, as with every variant that
    /// wraps one.)
    #[error("connect failed: {0}")]
    Connect(#[from] ConnectError),
    /// The session has ended; open a new one.
    #[error("session closed: {0:?}")]
    Closed(CloseReason),
    /// A configuration setting out of range ([`volley_proto::ConfigError`] names it).
    #[error("invalid configuration: {0}")]
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
    #[error("early data refused: {0}")]
    EarlyData(#[from] volley_proto::EarlyDataError),
    /// A datagram, request or reply larger than [`crate::MAX_DATAGRAM`] bytes (65,535).
    #[error("datagram larger than {} bytes", volley_proto::MAX_DATAGRAM)]
    TooLarge,
    /// [`volley_proto::MAX_REQUESTS`] requests are in flight on the session already
    /// ([`crate::Session::request`]); wait for one to end
    /// ([`crate::Session::poll_request_ready`]) or use another session.
    #[error(
        "{} requests in flight on the session already",
        volley_proto::MAX_REQUESTS
    )]
    TooManyRequests,
    /// The server's application let the request go without answering it (REPLY status
    /// DROPPED, PROTOCOL.md §5.8): no answer will come; another server may give one.
    #[error("the server dropped the request without answering it")]
    RequestDropped,
    /// The server did not take the request: its session had
    /// [`volley_proto::MAX_REQUESTS`] in flight, or its application's queue was full (REPLY
    /// status REFUSED, §5.8). It was not served.
    #[error("the server refused the request (too many in flight, or its queue full)")]
    RequestRefused,
    /// A reply with a status this version does not know (§5.8): the request failed.
    #[error("the request failed with status {0}")]
    RequestFailed(u8),
    /// The session ended, or lost its server, with the request in flight (the reason): no
    /// reply will come. A client's session may go on with another server (a failover): send
    /// the request again there if it is safe to.
    #[error("request lost: its session ended ({0:?})")]
    RequestLost(CloseReason),
    /// The [`crate::Pool`] was closed ([`crate::Pool::close`], or its last handle dropped).
    #[error("the pool is closed")]
    PoolClosed,
    /// The [`crate::Pool`] has no live member and its race for one found none (every server
    /// gone or refusing): what the race said.
    #[error("the pool has no server: {0}")]
    PoolEmpty(String),
    /// The session refused what the handle queued for a reason of its own (a bug guard: the
    /// handle checks sizes and limits first).
    #[error("refused by the session: {0}")]
    Refused(SendError),
}

impl Error {
    /// A reply's status as the caller's outcome: `Ok(())` for OK, else the error naming it.
    pub(crate) fn from_status(status: ReplyStatus) -> Result<(), Self> {
        match status {
            ReplyStatus::OK => Ok(()),
            ReplyStatus::DROPPED => Err(Self::RequestDropped),
            ReplyStatus::REFUSED => Err(Self::RequestRefused),
            ReplyStatus(other) => Err(Self::RequestFailed(other)),
        }
    }

    /// What a caller hears of a request its session would not take.
    pub(crate) fn from_send(e: SendError) -> Self {
        match e {
            SendError::TooLarge => Self::TooLarge,
            SendError::TooManyRequests => Self::TooManyRequests,
            SendError::QueueFull => Self::QueueFull,
            other => Self::Refused(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_a_replys_status_is_its_callers_outcome() {
        assert!(Error::from_status(ReplyStatus::OK).is_ok());
        assert!(matches!(
            Error::from_status(ReplyStatus::DROPPED),
            Err(Error::RequestDropped)
        ));
        assert!(matches!(
            Error::from_status(ReplyStatus::REFUSED),
            Err(Error::RequestRefused)
        ));
        // A status a later version may add: named, not mistaken for an answer.
        assert!(matches!(
            Error::from_status(ReplyStatus(9)),
            Err(Error::RequestFailed(9))
        ));
        assert!(matches!(
            Error::from_send(SendError::TooManyRequests),
            Error::TooManyRequests
        ));
    }

    #[test]
    fn o7_every_error_that_wraps_a_cause_says_it() {
        let addr: std::net::SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let cases: Vec<Error> = vec![
            Error::Bind { addr, source: io() },
            Error::Io(io()),
            Error::Connect(ConnectError::UnpinnedKey(3)),
            Error::Config(volley_proto::ConfigError::NoService),
            Error::EarlyData(volley_proto::EarlyDataError::Empty),
        ];
        for e in cases {
            let text = e.to_string();
            let cause = std::error::Error::source(&e).expect("a cause").to_string();
            assert!(text.ends_with(&cause), "{text:?} hides {cause:?}");
            assert!(text.len() > cause.len(), "{text:?} says what failed");
        }
        assert_eq!(
            Error::Connect(ConnectError::UnpinnedKey(3)).to_string(),
            "connect failed: 3 offers came from servers whose keys are not pinned, and none \
             from a pinned one"
        );
    }
}
