//! volley's lab: `select`, the side-by-side selection benchmark on loopback
//! (`../shared/BENCHMARKS.md` §2), and `sim`, the discrete-event simulator that drives the real
//! `volley-proto` state machines on a virtual clock (§3).

pub mod bench;
pub mod chaos;
pub mod select;
pub mod sim;
pub mod soak;
