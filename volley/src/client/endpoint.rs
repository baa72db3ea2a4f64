//! A client endpoint as the [`super::Client`] holds it: one UDP socket with its driver task, and
//! the two channels that reach the driver — new connects ([`super::open::Open`]) and the
//! session handles' commands.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::driver::ClientSide;
use super::open::Open;
use crate::runtime;
use crate::session::Cmd;
use crate::shared_pool::SharedPool;

/// A client endpoint: one UDP socket and the driver task serving every connection on it.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) local: SocketAddr,
    pub(super) opens: mpsc::UnboundedSender<Open>,
    pub(super) cmd: mpsc::UnboundedSender<Cmd>,
}

impl Endpoint {
    /// Starts the driver on `socket`; its connections learn into and use `pool`, the client's
    /// pool knowledge.
    /// `strays` counts the datagrams it drops for naming no connection.
    pub(super) fn start(socket: UdpSocket, pool: SharedPool, strays: Arc<AtomicU64>) -> Self {
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let (opens, opens_rx) = mpsc::unbounded_channel();
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let side = ClientSide::new(opens_rx, pool, strays);
        tokio::spawn(runtime::Driver::new(socket, cmd_rx, side, false).run());
        Self { local, opens, cmd }
    }
}
