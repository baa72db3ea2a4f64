//! What a connect asks of a client driver ([`Open`], with an `NBest` group's [`SiblingPlan`]),
//! and what the driver hands back for each connection it opened ([`Outcome`], with the
//! session handle's [`Parts`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};
use volley_proto::{ClientConfig, ConnectError, EarlyData};

use crate::report::ConnectReport;
use crate::session::{Link, Status};

/// A connect for the driver: race `pool`, and tell `ready` when every connection of the group
/// is established or failed.
pub(super) struct Open {
    pub(super) config: ClientConfig,
    pub(super) pool: Vec<SocketAddr>,
    /// The main connection's first datagram, to ride in its INIT (PROTOCOL.md §4.8).
    pub(super) early: Option<EarlyData>,
    pub(super) plan: Option<SiblingPlan>,
    pub(super) ready: oneshot::Sender<Vec<Outcome>>,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// How an `NBest` group opens its sibling connections once the main race is decided.
pub(super) struct SiblingPlan {
    pub(super) config: ClientConfig,
    pub(super) pool: Vec<SocketAddr>,
}

/// The receiving ends of one connection's channels, handed to its [`crate::Session`].
pub(super) struct Parts {
    pub(super) link: Arc<Link>,
    pub(super) status: watch::Receiver<Status>,
    pub(super) report: Arc<Mutex<ConnectReport>>,
}

/// What became of one connection of a group: its id on the driver and its parts, or why it
/// failed.
pub(super) type Outcome = (u32, Result<Parts, ConnectError>);
