//! The balancers volley is compared with, as decision logic with no clock and no I/O, shared by
//! the experiments that run them: `select` on real sockets, `sim` on a virtual clock.

pub mod c3;
pub mod prequal;
pub mod wrr;
