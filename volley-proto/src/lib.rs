//! # volley-proto
//!
//! volley's protocol as pure state machines: the wire codec ([`packet`]), stateless cookies
//! ([`cookie`]), the Noise IK handshake and key schedule, client allow-lists ([`allow`]) ([`crypto`]), the client's probe race and connection
//! ([`client`]), the server's stateless responder and session table ([`server`]), and the encrypted
//! session ([`session`]).
//!
//! It does no I/O, reads no clock and owns no global randomness. Time comes in as a `now: Instant`
//! argument, randomness from an RNG injected at construction, and output goes out through
//! `poll_*` methods writing into caller-owned buffers — so a runtime can feed it many datagrams
//! and collect many transmits per system call, and a test can run a whole fleet on a virtual
//! clock. `docs/PROTOCOL.md` in the repository is the normative description of the wire format
//! this crate implements.
//!
//! A server answering a probe, with no sockets involved:
//!
//! ```
//! use std::time::Instant;
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//! use volley_proto::packet::{Packet, Probe};
//! use volley_proto::{ServerConfig, ServerEndpoint, StaticKeypair, Tag, MAX_DATAGRAM_LEN};
//!
//! // Seeded for a reproducible example; a real server injects OS randomness.
//! let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let now = Instant::now();
//! let key = StaticKeypair::generate(&mut rng);
//! let rng = Box::new(ChaCha20Rng::seed_from_u64(8));
//! let mut server = ServerEndpoint::new(now, ServerConfig::new(key.clone()), rng);
//!
//! let mut probe = [0u8; MAX_DATAGRAM_LEN];
//! let n = Probe { tag: Tag([7; 16]), service: b"echo" }.encode(&mut probe, 0).unwrap();
//! let client = "192.0.2.1:50000".parse().unwrap();
//! let local = "192.0.2.9:4433".parse().unwrap();
//! let mut reply = [0u8; MAX_DATAGRAM_LEN];
//! let t = server.handle(now, client, local, &probe[..n], &mut reply).expect("an offer");
//! assert_eq!(t.destination, client);
//! assert!(t.size <= n, "never larger than the probe");
//! match Packet::decode(&reply[..t.size]).unwrap() {
//!     Packet::Offer(offer) => assert_eq!(offer.server_key_id, key.public().key_id()),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(server.retained_state(), 0, "nothing kept after the offer");
//! ```
#![deny(missing_docs)]

mod aead;
pub mod allow;
pub mod balance;
pub mod client;
pub mod coding;
pub mod config;
pub mod cookie;
pub mod crypto;
pub mod packet;
mod rtt;
pub mod server;
pub mod session;
pub mod stream;
mod util;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use client::{
    ClientConfig, ClientEvent, ClientStats, ConnectError, Connection, EarlyData, EarlyDataError,
    PathPolicy, SelectionPolicy,
};
pub use config::{ClientConfigBuilder, ConfigError, ServerConfigBuilder};
pub use crypto::{PublicKey, StaticKeypair};
pub use packet::{KeyId, LoadHint, Tag};
pub use server::{
    AdmissionConfig, AnswerPolicy, AppLoad, ServerConfig, ServerEndpoint, ServerEvent, ServerLoad,
    ServerStats, ServiceModel, SessionId,
};
pub use session::{
    CloseCode, CloseReason, LoadReport, MAX_APP_DATAGRAM, MAX_DATAGRAM, MAX_REQUESTS, Reply,
    ReplyStatus, SendError, SessionConfig,
};
pub use util::canonical as canonical_addr;

/// The protocol version byte: this crate speaks version 3 only (PROTOCOL.md §3.9 says what a
/// peer of another version gets from it).
pub const VERSION: u8 = 3;
/// Largest datagram sent or accepted (fits a 1500-byte IPv6 path: 1500 − 40 − 8).
pub const MAX_DATAGRAM_LEN: usize = 1452;
/// Smallest PROBE a server answers. Probes are padded to this so that an OFFER (or any other
/// answer to a probe) is never larger than what caused it.
pub const PROBE_MIN_LEN: usize = 256;
/// Bytes in a race tag.
pub const TAG_LEN: usize = 16;
/// Bytes in a server key id.
pub const KEY_ID_LEN: usize = 8;
/// Longest service name.
pub const MAX_SERVICE_LEN: usize = 64;
/// Longest cookie a client must carry (servers choose the format; ours is 39 bytes).
pub const MAX_COOKIE_LEN: usize = 64;
/// Longest Noise handshake message carried in ACCEPT (and in an INIT without early data).
pub const MAX_NOISE_LEN: usize = 256;
/// Bytes of Noise IK message 1 without early data: ephemeral key (32), encrypted static key
/// (32 + 16), the 5-byte payload and its tag (16).
pub const INIT_NOISE_BASE_LEN: usize = 101;
/// Most bytes of early data (the session's first datagram carried in INIT's Noise payload,
/// PROTOCOL.md §4.8): what is left of one datagram after an INIT with the longest service and
/// cookie and message 1 without early data — 1452 − 22 − 64 − 64 − 101.
pub const MAX_EARLY_DATA: usize =
    MAX_DATAGRAM_LEN - 22 - MAX_SERVICE_LEN - MAX_COOKIE_LEN - INIT_NOISE_BASE_LEN;
/// Longest Noise message 1 an INIT carries: with the most early data.
pub const MAX_INIT_NOISE_LEN: usize = INIT_NOISE_BASE_LEN + MAX_EARLY_DATA;
/// Bytes of the cleartext DATA header.
pub const DATA_HEADER_LEN: usize = 14;
/// Bytes of the AEAD tag on DATA.
pub const AEAD_TAG_LEN: usize = 16;
/// An ACCEPT (or anything else answering an INIT) is at most this many times the INIT's size.
pub const INIT_AMPLIFICATION: usize = 3;

/// A datagram the caller must send: `size` bytes at the start of the buffer it passed in.
#[must_use = "a Transmit describes bytes that must be sent"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// How many bytes of the caller's buffer to send.
    pub size: usize,
    /// The local address to send from: a server's answers go out from the address the client
    /// reached (the one its cookie and session are bound to), which a socket bound to a wildcard
    /// address (`0.0.0.0`, `::`) must set per datagram (IP_PKTINFO). None: the socket's own.
    pub source: Option<SocketAddr>,
}
