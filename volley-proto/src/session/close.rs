//! Why a session ends, and why it refuses a datagram or a packet: the close codes carried on the
//! wire, the reasons a session reports, and the errors of sending and receiving.

use thiserror::Error;

use super::MAX_DATAGRAM;

/// A close code carried in a CLOSE frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// The application is done with the session.
    pub const NORMAL: CloseCode = CloseCode(0);
    /// The server is shutting down; a client should race the pool again.
    pub const GOING_AWAY: CloseCode = CloseCode(1);
    /// The server no longer allows the client's key (its allow-list was reloaded without it).
    /// A client reports it and does not race again with that key.
    pub const REVOKED: CloseCode = CloseCode(2);
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side closed it.
    Local(CloseCode),
    /// The peer sent CLOSE.
    Remote(CloseCode),
    /// Nothing authentic arrived for the idle timeout: the peer is gone.
    IdleTimeout,
    /// This side sent and heard nothing back, through every liveness probe: the peer is
    /// gone (crashed, partitioned), detected in a time scaled by the measured RTT.
    Unresponsive,
    /// The packet counter reached [`super::MAX_COUNTER`].
    CounterExhausted,
    /// The selected server refused the session (REDIRECT: full or under load).
    Refused,
}

/// Why `send_datagram` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// Larger than [`MAX_DATAGRAM`].
    #[error("datagram larger than {MAX_DATAGRAM} bytes")]
    TooLarge,
    /// [`super::MAX_SEND_QUEUE`] packets already wait: poll transmits first.
    #[error("send queue full")]
    QueueFull,
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// No session is established yet (the connection is racing or handshaking).
    #[error("no session established yet")]
    NotEstablished,
    /// A request from a server's session, or a reply from a client's: requests go client →
    /// server, replies back (PROTOCOL.md §5.8).
    #[error("requests go client to server and replies back")]
    WrongDirection,
    /// [`super::MAX_REQUESTS`] requests are in flight on the session already.
    #[error("{} requests in flight already", super::MAX_REQUESTS)]
    TooManyRequests,
    /// A request under an id already in flight.
    #[error("a request with this id is in flight")]
    RequestInFlight,
    /// A reply to no request in flight (never received, or already answered).
    #[error("no request in flight with this id")]
    UnknownRequest,
}

/// Why an incoming DATA packet was dropped. Each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DataDrop {
    /// AEAD open failed.
    #[error("authentication failed")]
    Auth,
    /// Counter already seen or older than the window.
    #[error("replayed or too old")]
    Replay,
    /// Authentic, but the frame inside is malformed.
    #[error("malformed frame")]
    BadFrame,
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// From an address that is not the session's (and the session does not migrate).
    #[error("not from the session's address")]
    WrongSource,
    /// A REQUEST under an id already in flight (PROTOCOL.md §5.8).
    #[error("a request with an id in flight")]
    DuplicateRequest,
    /// A REPLY for no request in flight: never sent, already answered, or forgotten (§5.8).
    #[error("a reply for no request in flight")]
    UnknownReply,
}
