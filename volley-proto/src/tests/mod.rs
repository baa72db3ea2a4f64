//! Simulated-network tests: the real state machines on a virtual clock (see `util`).

mod handshake;
#[allow(dead_code)]
pub mod util;
