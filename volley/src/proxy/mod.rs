//! Proxies (D1): put volley in front of a service without changing it.
//!
//! - [`udp::run`], the client side: a local UDP socket that applications talk to as if it were
//!   the service; each of their flows (a source address) races the pool and rides its own volley
//!   session.
//! - [`forward::udp`], the server side: each session's datagrams go to the real backend from a
//!   socket of their own, and the backend's datagrams come back on the session.

pub mod forward;
pub mod udp;
