//! # volley
//!
//! Client-driven server load distribution over UDP. A [`Client`] fires one tagged probe at every
//! server of a pool at once; each server answers statelessly with an offer — at once when it is
//! idle, later (or, when full, not at all) the busier it is; the earliest offer wins and the
//! client opens a Noise-encrypted [`Session`] with that server by presenting the offer's cookie.
//! A [`Server`] keeps no state for a client until that cookie checks out. No load balancer sits
//! in between: the servers' answer times are the balancing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), volley::Error> {
//! use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
//!
//! // Two echo servers sharing one key, which the client pins.
//! let key = StaticKeypair::generate(&mut volley::OsRng);
//! let mut pool = Vec::new();
//! for _ in 0..2 {
//!     let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
//!     pool.push(server.local_addr());
//!     tokio::spawn(volley::echo::serve(server, std::future::pending()));
//! }
//!
//! let client = Client::new(ClientConfig::new(vec![key.public()]));
//! let session = client.connect(&pool).await?; // the earliest offer of the two wins
//! session.send(b"hello").await?;
//! assert_eq!(&session.recv().await?[..], b"hello");
//! assert!(pool.contains(&session.remote()));
//! # Ok(()) }
//! ```
//!
//! ## Servers: load becomes answer time
//!
//! A server estimates how long one more request would take — its requests in flight, its
//! capacity (requests served at once) and the service time it measures — and its
//! [`AnswerPolicy`] turns that into when it answers a probe: `Paced` delays each offer by a
//! share of that time, `Gated` holds probes while every slot is busy, `Immediate` answers at
//! once and lets the offer's load hint speak. Requests are counted for you when a server session
//! receives them with [`Session::recv_request`], or when a [`handler`] serves them; other work
//! counts with a [`LoadGuard`] per request ([`Server::load_guard`], [`ServerHandle::load_guard`]).
//!
//! ## Clients: choose, learn, fail over
//!
//! A client chooses by its [`SelectionPolicy`] (the earliest offer, the best hint within a
//! window, or several servers at once with [`Client::connect_n`]), learns from what the
//! application reports ([`Session::report_failure`] ejects a failing server from its races for
//! a while), and moves a session to another server of the pool when its server goes away.
//! [`Session::report`] says what the race and the handshake saw ([`ConnectReport`]).
//!
//! ## Only your clients
//!
//! Every client proves a static key in its handshake: its own ([`ClientConfig::key`]) or, without
//! one, a random key of its process. A server with an allow-list ([`ServerConfig::allow`], an
//! [`AllowList`]) opens sessions only for listed keys; an unlisted client's INIT goes
//! unanswered ([`ConnectError::HandshakeTimeout`] on its side, `inits_unauthorized` on the
//! server's). [`Server::set_allow_list`] replaces the list on a running server and ends the
//! sessions of keys it drops ([`CloseCode::REVOKED`]). A server session names its client
//! ([`Session::client_key`], [`Session::client_name`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), volley::Error> {
//! use std::sync::Arc;
//! use volley::{AllowList, Client, ClientConfig, Server, ServerConfig, StaticKeypair};
//!
//! let server_key = StaticKeypair::generate(&mut volley::OsRng);
//! let alice = StaticKeypair::generate(&mut volley::OsRng);
//! let mut list = AllowList::new();
//! list.insert(alice.public(), Some("alice"));
//! let mut config = ServerConfig::new(server_key.clone());
//! config.allow = Some(Arc::new(list));
//! let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), config).await?;
//! let pool = vec![server.local_addr()];
//!
//! let mut config = ClientConfig::new(vec![server_key.public()]);
//! config.key = Some(alice.clone());
//! let session = Client::new(config).connect(&pool).await?;
//! let accepted = server.accept().await.unwrap();
//! assert_eq!(accepted.client_key(), Some(alice.public()));
//! assert_eq!(accepted.client_name(), Some("alice"));
//! # drop(session);
//! # Ok(()) }
//! ```
//!
//! ## Around them
//!
//! - [`echo`] and [`handler`]: serve sessions without writing the accept loop.
//! - [`proxy`]: put volley in front of an unchanged UDP or TCP service and its clients.
//! - [`discovery`]: pools from DNS names, kept current.
//! - [`metrics`]: Prometheus metrics of servers, forwarders and proxies.
//!
//! This crate is the tokio runtime around the sans-IO protocol core in [`volley_proto`]: it
//! owns the UDP sockets and the timers and drives the state machines. It persists nothing.
//!
//! ## Cargo features
//!
//! - `unstable`: exposes internals as `volley::unstable` (the drivers' batched UDP I/O) for
//!   benchmarks that must do the very same I/O. Outside semver: they may change or go in any
//!   release.
#![warn(missing_docs)]

mod client;
pub mod discovery;
pub mod echo;
mod error;
pub mod handler;
mod load;
pub mod metrics;
mod pool;
pub mod proxy;
mod report;
mod runtime;
mod server;
mod session;
mod shared_pool;
mod socket;
mod timer;
mod udp;

/// Internals exposed for benchmarks and tools that must do exactly what the runtime does;
/// enabled by the `unstable` cargo feature. **Outside semver**: anything here may change or
/// disappear in any release. See [`udp`](unstable::udp) for an example.
#[cfg(feature = "unstable")]
pub mod unstable {
    /// Batched UDP as the drivers do it: up to [`BATCH`](udp::BATCH) datagrams per system call
    /// each way (`recvmmsg`, `sendmmsg`), with UDP GSO and GRO where the kernel has them and
    /// each datagram's local address on wildcard binds. Linux only.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use std::time::Duration;
    /// use tokio::net::UdpSocket;
    /// use volley::unstable::udp::{RecvBatch, SendBatch};
    ///
    /// let (rx, tx) = (UdpSocket::bind("127.0.0.1:0").await?, UdpSocket::bind("127.0.0.1:0").await?);
    /// // Three datagrams written in place and sent with one system call.
    /// let mut out = SendBatch::with_gso(false);
    /// for i in 0..3u8 {
    ///     out.slot()[0] = i;
    ///     out.commit(1, rx.local_addr()?, None);
    /// }
    /// out.flush(&tx).await;
    /// // Read back a batch at a time.
    /// let mut batch = RecvBatch::new(false);
    /// let mut got = Vec::new();
    /// tokio::time::timeout(Duration::from_secs(5), async {
    ///     while got.len() < 3 {
    ///         rx.readable().await?;
    ///         match batch.recv(&rx) {
    ///             Ok(_) => got.extend(batch.iter().map(|(_, d)| d[0])),
    ///             Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
    ///             Err(e) => return Err(e),
    ///         }
    ///     }
    ///     Ok(())
    /// })
    /// .await??;
    /// assert_eq!(got, [0, 1, 2]);
    /// # Ok(()) }
    /// ```
    pub mod udp {
        pub use crate::udp::*;
    }
}

pub use bytes::Bytes;
pub use client::Client;
pub use error::Error;
pub use handler::Drain;
pub use load::LoadGuard;
pub use pool::{Pool, PoolConfig, PoolStats, ReplyClassifier};
/// The operating system's CSPRNG, as [`StaticKeypair::generate`] takes it (re-exported so that
/// no `rand` version has to be matched).
pub use rand::rngs::OsRng;
pub use report::{ConnectReport, OfferFate, OfferSeen};
pub use server::{Server, ServerHandle};
pub use session::{LoadReport, ReplyFuture, Request, SEND_QUEUE, Session, SessionStats};
pub use volley_proto::allow::{AllowEntry, AllowList, AllowListError};
pub use volley_proto::balance::{BalanceConfig, BalanceStats, MemberView};
pub use volley_proto::client::{EjectionConfig, ServerOutcome};
pub use volley_proto::{
    AdmissionConfig, AnswerPolicy, AppLoad, ClientConfig, ClientConfigBuilder, ClientStats,
    CloseCode, CloseReason, ConfigError, ConnectError, EarlyDataError, LoadHint, MAX_APP_DATAGRAM,
    MAX_DATAGRAM, MAX_EARLY_DATA, MAX_REQUESTS, PathPolicy, PublicKey, SelectionPolicy,
    ServerConfig, ServerConfigBuilder, ServerLoad, ServerStats, ServiceModel, SessionConfig,
    StaticKeypair,
};
