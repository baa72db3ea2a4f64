//! # volley
//!
//! Client-driven server load distribution over UDP. A [`Client`] fires one tagged probe at every
//! server of a pool at once; each server answers statelessly with an offer (or, when busy, late or
//! not at all); the earliest offer wins and the client opens a Noise-encrypted [`Session`] with that
//! server by presenting its cookie. A [`Server`] keeps no state until that cookie checks out.
//!
//! Servers turn load into answer time by their [`AnswerPolicy`] (L1, L5): a server estimates
//! how long one more request would take — its requests in flight, its slots, the service time it
//! measured — and paces its offers and fills its load hint with that. Requests are counted for
//! you when a server session receives them with [`Session::recv_request`]; other work counts with
//! a [`LoadGuard`] per request ([`Server::load_guard`], [`ServerHandle::load_guard`]). Clients
//! choose by their [`SelectionPolicy`] (earliest, window, fan-out), learn from outcomes
//! ([`Session::report_failure`], L7), and [`Client::connect_n`] opens sessions with the `k` best
//! servers of one race.
//!
//! This crate is the tokio runtime around the sans-IO core in [`volley_proto`]: it owns the UDP
//! sockets and the timers and drives the state machines. It does not discover pools or persist
//! anything.
//!
//! ```no_run
//! # async fn demo() -> Result<(), volley::Error> {
//! use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
//! let key = StaticKeypair::generate(&mut volley::OsRng);
//! let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
//! let pool = vec![server.local_addr()];
//! tokio::spawn(async move {
//!     while let Some(mut s) = server.accept().await {
//!         tokio::spawn(async move { while let Ok(d) = s.recv().await { let _ = s.send(&d).await; } });
//!     }
//! });
//! let mut session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
//! session.send(b"hello").await?;
//! assert_eq!(&session.recv().await?[..], b"hello");
//! # Ok(()) }
//! ```
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
pub mod proxy;
mod report;
mod runtime;
mod server;
mod session;
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
pub use load::LoadGuard;
/// The operating system's CSPRNG, as [`StaticKeypair::generate`] takes it (re-exported so that
/// no `rand` version has to be matched).
pub use rand::rngs::OsRng;
pub use report::{ConnectReport, OfferFate, OfferSeen};
pub use server::{Server, ServerHandle};
pub use session::{Request, SEND_QUEUE, Session, SessionStats};
pub use volley_proto::client::{EjectionConfig, ServerOutcome};
pub use volley_proto::{
    AdmissionConfig, AnswerPolicy, AppLoad, ClientConfig, ClientConfigBuilder, ClientStats,
    CloseCode, CloseReason, ConfigError, ConnectError, LoadHint, MAX_APP_DATAGRAM, PublicKey,
    SelectionPolicy, ServerConfig, ServerConfigBuilder, ServerLoad, ServerStats, ServiceModel,
    SessionConfig, StaticKeypair,
};
