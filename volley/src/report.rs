//! What a client learned while connecting ([`ConnectReport`]), shared by the client driver and
//! the session handles that show it.

use std::net::SocketAddr;
use std::time::Duration;

use volley_proto::{ClientStats, CloseReason, LoadHint};

/// What became of an offer the client received ([`OfferSeen::fate`]).
///
/// ```
/// use volley::OfferFate;
///
/// fn describe(fate: OfferFate) -> &'static str {
///     match fate {
///         OfferFate::Selected => "won",
///         OfferFate::Collected => "weighed, not chosen",
///         OfferFate::Late => "too late",
///         _ => "other",
///     }
/// }
/// assert_eq!(describe(OfferFate::Late), "too late");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OfferFate {
    /// It chose this session's server.
    Selected,
    /// A `Window` or `NBest` race collected it, and it did not choose this session's server
    /// (under `NBest` it may have chosen a sibling session's).
    Collected,
    /// It arrived after its race was decided: void (its cookie is never used).
    Late,
}

/// One offer of a race, as the client saw it ([`ConnectReport::offers`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// # use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
/// # let key = StaticKeypair::generate(&mut volley::OsRng);
/// # let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// # let pool = vec![server.local_addr()];
/// # tokio::spawn(volley::echo::serve(server, std::future::pending()));
/// # let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
/// for offer in session.report().unwrap().offers {
///     println!("{} answered in {:?}: {:?} ({:?})", offer.server, offer.answer_time, offer.load, offer.fate);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OfferSeen {
    /// The server that offered (as probed).
    pub server: SocketAddr,
    /// From the race's first probe to this offer.
    pub answer_time: Duration,
    /// The offer's load hint: the server's requests in flight, capacity and expected completion
    /// time. `None` only when the datagram could not be read again.
    pub load: Option<LoadHint>,
    /// What became of it.
    pub fate: OfferFate,
}

/// What a client learned while connecting, kept current for the life of the session
/// ([`crate::Session::report`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Client, ClientConfig, OfferFate, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// tokio::spawn(volley::echo::serve(server, std::future::pending()));
/// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
///
/// let report = session.report().unwrap();
/// let winner = &report.offers[0];
/// assert_eq!((winner.server, winner.fate), (pool[0], OfferFate::Selected));
/// println!("answered in {:?} with load {:?}", winner.answer_time, winner.load);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectReport {
    /// The server of the current session.
    pub server: Option<SocketAddr>,
    /// Its answer time in the race that chose it: from the first probe to its offer.
    pub answer_time: Option<Duration>,
    /// The load hint of the offer that chose it.
    pub load: Option<LoadHint>,
    /// INIT to ACCEPT with it.
    pub handshake_time: Option<Duration>,
    /// The offers of the latest race in arrival order, with their load hints. Under
    /// `Earliest` the winner comes first and every other offer is late. (The offer that closes
    /// a `Window` race without winning it is counted in `stats.offers_not_chosen` only.) A
    /// session opened from an `NBest` race's runner-up lists just its own offer.
    pub offers: Vec<OfferSeen>,
    /// Offers that arrived after their race was decided, voided, over the connection's life.
    pub late_offers: u64,
    /// Servers that refusing servers named (REDIRECT) and the client added to its pool, over
    /// the connection's life.
    pub redirected_to: Vec<SocketAddr>,
    /// Times the connection lost its server and moved to another.
    pub failovers: u64,
    /// Every server the connection lost, in order, and why: a server that shut down gracefully
    /// says `Remote(GOING_AWAY)`, one that went silent `Unresponsive` or `IdleTimeout`, one that
    /// refused the session `Refused`. At most one more than the failovers allowed.
    pub losses: Vec<(SocketAddr, CloseReason)>,
    /// The protocol counters.
    pub stats: ClientStats,
}
