//! What a connection tells its application: every outcome of the race, the handshake and the
//! session as a [`ClientEvent`], and why it gave up as a [`ConnectError`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use crate::packet::LoadHint;
use crate::session::{CloseReason, Reply};

/// Why a connection gave up. Terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No server answered the probe before the race deadline.
    #[error("no server answered within {0:?}")]
    NoOffer(Duration),
    /// Servers answered the probes, but the handshakes went unanswered (the count; the last
    /// server named): a server with an allow-list says nothing to a client whose key it does not
    /// list, so this is what an unlisted client sees — or every INIT and ACCEPT was lost.
    /// The connection gives up after two in a row rather than racing the pool again.
    #[error(
        "the servers answered but accepted no session for this client key ({1} handshake(s) unanswered, last with {0}): is the key on their allow-list?"
    )]
    HandshakeTimeout(SocketAddr, u32),
    /// The server ended the session because this client's key is no longer allowed (CLOSE
    /// `REVOKED`).
    #[error("{0} revoked this client's key: it is no longer on the server's allow-list")]
    Revoked(SocketAddr),
    /// No offer came, and a server answered with VERSIONS (§3.9): it speaks only other protocol
    /// versions, the highest of which is named.
    #[error("{0} speaks protocol version {1} (and no later one), this client speaks only version {v}: upgrade the older side", v = crate::VERSION)]
    VersionMismatch(SocketAddr, u8),
    /// The selected server refused (full or under load), and no other server remained to race.
    #[error("{0} refused the session (full) and no other server remains")]
    Refused(SocketAddr),
    /// The session's server was lost, and no other server (or failover) remained.
    #[error("lost server {0} and no other server remains")]
    ServerLost(SocketAddr),
    /// The pool is empty, or no server key is pinned.
    #[error("no servers or no pinned server keys")]
    NothingToRace,
    /// Servers answered before the race deadline, but every offer named a key this client
    /// does not pin (`offers_unknown_key`; the count of such offers in the last race): the
    /// client was given the wrong server key, or the servers the wrong key file.
    #[error("{0} offers came from servers whose keys are not pinned, and none from a pinned one")]
    UnpinnedKey(u32),
}

/// What the application should know. Every outcome of the race (answer times, the winner, late
/// offers), the handshake and the session's life, failover included, shows up here.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A race started (`attempt` 0 is the first; more follow failovers).
    RaceStarted {
        /// 0 for the first race.
        attempt: u32,
        /// How many servers it probes.
        servers: usize,
    },
    /// The earliest valid offer won.
    Selected {
        /// The winner.
        server: SocketAddr,
        /// Its answer time.
        answer_time: Duration,
        /// Its load hint.
        load: LoadHint,
    },
    /// A `Window` or `NBest` race collected a valid offer; the choice comes when the window
    /// closes.
    Collected {
        /// Who offered.
        server: SocketAddr,
        /// Its answer time.
        answer_time: Duration,
        /// Its load hint.
        load: LoadHint,
    },
    /// The selected server refused and named other servers; those not known before joined the
    /// pool and the next race.
    Redirected {
        /// The refusing server.
        from: SocketAddr,
        /// The addresses added to the pool.
        added: Vec<SocketAddr>,
    },
    /// An offer arrived after the race was decided: void. Its answer time is still reported.
    LateOffer {
        /// Who answered late.
        server: SocketAddr,
        /// Its answer time.
        answer_time: Duration,
        /// Its load hint.
        load: LoadHint,
    },
    /// The session is up.
    Established {
        /// The server.
        server: SocketAddr,
        /// From INIT sent to ACCEPT received.
        handshake_time: Duration,
        /// The server this connection failed over from, if this is a failover.
        failover_from: Option<SocketAddr>,
    },
    /// An application datagram arrived (the buffer it was decrypted in).
    Datagram(Bytes),
    /// The reply to a request in flight arrived (PROTOCOL.md §5.8).
    Reply(Reply),
    /// The session ended — closed, or its server lost (a failover follows if one remains) —
    /// with these requests in flight: no reply will come for them.
    RequestsLost {
        /// Their ids.
        ids: Vec<u32>,
        /// How the session ended.
        reason: CloseReason,
    },
    /// This connection's failure ejected a server from the client's races for `length`.
    Ejected {
        /// The server.
        server: SocketAddr,
        /// How long it stays out before it is readmitted on probation.
        length: Duration,
    },
    /// The server was lost; a new race starts if failovers remain.
    ServerLost {
        /// The lost server.
        server: SocketAddr,
        /// How it was lost.
        reason: CloseReason,
    },
    /// The connection failed for good.
    Failed(ConnectError),
    /// The connection is closed (locally, or by the server for good).
    Closed(CloseReason),
}

/// Why a datagram cannot ride in an INIT as early data (PROTOCOL.md §4.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EarlyDataError {
    /// An empty early datagram cannot be told from none on the wire (§4.5).
    #[error("early data cannot be empty")]
    Empty,
    /// Longer than [`crate::MAX_EARLY_DATA`].
    #[error("early data is at most {max} bytes, not {0}", max = crate::MAX_EARLY_DATA)]
    TooLarge(usize),
}
