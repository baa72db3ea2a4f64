//! Simulated-network tests: the real state machines on a virtual clock (see `util`).

mod abuse;
mod cookies;
mod docs;
mod drain;
mod early;
mod flood;
mod handshake;
mod malformed;
mod outcomes;
mod overload;
mod policies;
mod race;
mod requests;
mod responder;
mod retransmit;
mod session_life;
mod signal;
mod stateful;
mod trust;
#[allow(dead_code)]
pub mod util;
mod vectors;
