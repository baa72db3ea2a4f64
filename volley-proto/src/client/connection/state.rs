//! The phases of a connection as one type: racing ([`Race`]), waiting for the winner's ACCEPT
//! ([`ExpectAccept`]), established ([`Session`]), backing off after a refusal, done — and what
//! can be read or asked of a connection in each (its routing view, its server, its session's
//! counters and stream keys, its next deadline, a datagram to queue).

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

use super::super::handshake::ExpectAccept;
use super::super::race::Race;
use super::super::route::RouteView;
use crate::packet::Tag;
use crate::session::{SendError, Session, SessionStats};
use crate::stream::StreamTicket;

// One Connection exists per connect, so the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub(super) enum State {
    /// Racing: waiting for offers.
    ExpectOffer(Race),
    /// Waiting for the winner's ACCEPT.
    ExpectAccept(ExpectAccept),
    Established {
        session: Session,
        server: SocketAddr,
    },
    /// Refused, waiting before racing `targets` again.
    Backoff {
        until: Instant,
        targets: Vec<SocketAddr>,
    },
    Done,
}

impl State {
    /// What identifies the connection's datagrams now; `decided` is its last decided race.
    pub(super) fn route_view<'a>(&'a self, decided: Option<&'a Race>) -> RouteView<'a> {
        let mut view = RouteView {
            retired: decided.and_then(|r| Some((r.retired_tag()?, r.targets()))),
            ..RouteView::default()
        };
        match self {
            Self::ExpectOffer(r) => view.live_tag = r.live_tag(),
            Self::ExpectAccept(hs) => {
                view.handshake = Some((hs.server(), hs.tag(), hs.local_id()));
            }
            Self::Established { session, .. } => view.session = Some(session.local_id()),
            Self::Backoff { .. } | Self::Done => {}
        }
        view
    }

    /// The tag of the race that chose the current server, once decided.
    pub(super) fn decided_tag(&self, decided: Option<&Race>) -> Option<Tag> {
        match self {
            Self::ExpectAccept(hs) => Some(hs.tag()),
            _ => decided.and_then(|r| r.retired_tag()),
        }
    }

    /// Probes the running race has sent (not yet counted in the connection's stats).
    pub(super) fn probes_sent(&self) -> u64 {
        match self {
            Self::ExpectOffer(race) => race.probes_sent(),
            _ => 0,
        }
    }

    /// The established session's counters.
    pub(super) fn session_stats(&self) -> Option<SessionStats> {
        match self {
            Self::Established { session, .. } => Some(session.stats()),
            _ => None,
        }
    }

    /// The client's stream ticket for the established session.
    pub(super) fn stream_ticket(&self) -> Option<StreamTicket> {
        match self {
            Self::Established { session, server } => Some(StreamTicket {
                session_id: session.remote_id(),
                peer: *server,
                keys: session.stream_keys(),
            }),
            _ => None,
        }
    }

    /// The established session's server.
    pub(super) fn server(&self) -> Option<SocketAddr> {
        match self {
            Self::Established { server, .. } => Some(*server),
            _ => None,
        }
    }

    /// Queues a datagram on the established session.
    pub(super) fn send_datagram(&mut self, data: &[u8]) -> Result<(), SendError> {
        match self {
            Self::Established { session, .. } => session.send_datagram(data),
            Self::Done => Err(SendError::Closed),
            _ => Err(SendError::NotEstablished),
        }
    }

    /// Queues a datagram the caller owns on the established session, or hands it back.
    pub(super) fn send_datagram_owned(&mut self, data: Bytes) -> Result<(), (SendError, Bytes)> {
        match self {
            Self::Established { session, .. } => session.send_datagram_owned(data),
            Self::Done => Err((SendError::Closed, data)),
            _ => Err((SendError::NotEstablished, data)),
        }
    }

    /// The established session, if there is one.
    pub(super) fn session(&self) -> Option<&Session> {
        match self {
            Self::Established { session, .. } => Some(session),
            _ => None,
        }
    }

    /// The established session, mutably.
    pub(super) fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            Self::Established { session, .. } => Some(session),
            _ => None,
        }
    }

    /// Why a request cannot be queued in this phase: not yet established, or done.
    pub(super) fn not_established(&self) -> SendError {
        match self {
            Self::Done => SendError::Closed,
            _ => SendError::NotEstablished,
        }
    }

    /// When the phase next has a timer to fire.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Self::ExpectOffer(race) => race.poll_timeout(),
            Self::ExpectAccept(hs) => Some(hs.poll_timeout()),
            Self::Established { session, .. } => session.poll_timeout(),
            Self::Backoff { until, .. } => Some(*until),
            Self::Done => None,
        }
    }
}
