//! What a client learned while connecting ([`ConnectReport`]), shared by the client driver and
//! the session handles that show it.

use std::net::SocketAddr;
use std::time::Duration;

use volley_proto::{ClientStats, CloseReason, LoadHint};

/// What became of an offer the client received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OfferFate {
    /// It chose this session's server.
    Selected,
    /// A `Window` or `NBest` race collected it, and it did not choose this session's server
    /// (under `NBest` it may have chosen a sibling session's).
    Collected,
    /// It arrived after its race was decided: void (C5).
    Late,
}

/// One offer of a race, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OfferSeen {
    /// The server that offered (as probed).
    pub server: SocketAddr,
    /// From the race's first probe to this offer (C3).
    pub answer_time: Duration,
    /// The offer's load hint (L2). `None` only when the datagram could not be read again.
    pub load: Option<LoadHint>,
    /// What became of it.
    pub fate: OfferFate,
}

/// What a client learned while connecting, kept current for the life of the session.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectReport {
    /// The server of the current session.
    pub server: Option<SocketAddr>,
    /// Its answer time in the race that chose it (C3).
    pub answer_time: Option<Duration>,
    /// The load hint of the offer that chose it (L2).
    pub load: Option<LoadHint>,
    /// INIT to ACCEPT with it.
    pub handshake_time: Option<Duration>,
    /// The offers of the latest race in arrival order, with their load hints. Under
    /// `Earliest` the winner comes first and every other offer is late. (The offer that closes
    /// a `Window` race without winning it is counted in `stats.offers_not_chosen` only.) A
    /// session opened from an `NBest` race's runner-up lists just its own offer.
    pub offers: Vec<OfferSeen>,
    /// Offers that arrived after their race was decided, voided (C5), over the connection's life.
    pub late_offers: u64,
    /// Servers that REDIRECTs added to the pool (R3), over the connection's life.
    pub redirected_to: Vec<SocketAddr>,
    /// Times the connection lost its server and moved to another (R5).
    pub failovers: u64,
    /// Every server the connection lost, in order, and why: a server that shut down gracefully
    /// says `Remote(GOING_AWAY)`, one that went silent `Unresponsive` or `IdleTimeout`, one that
    /// refused the session `Refused`. At most one more than the failovers allowed.
    pub losses: Vec<(SocketAddr, CloseReason)>,
    /// The protocol counters.
    pub stats: ClientStats,
}
