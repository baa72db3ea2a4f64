//! The test harness: a simulated network of servers and clients on a virtual clock ([`sim`]), one
//! server driven by hand ([`bench`]), and counter arithmetic ([`counters`]).

pub mod bench;
pub mod counters;
pub mod sim;

pub use bench::*;
pub use counters::*;
pub use sim::*;
