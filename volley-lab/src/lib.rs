//! volley's lab: the experiments that measure volley against the balancers in use today, and
//! the plumbing they share. Each experiment is a `volley-lab` subcommand and writes its results
//! into an output folder (`docs/BENCHMARKS.md` says what each measures and why).
//!
//! - [`bench`](mod@bench): the datapath on real sockets, the server and the load generator pinned to one CPU
//!   each (§1), and `bench proxy`, UDP and TCP services reached directly and through volley's
//!   proxies (§4).
//! - [`select`]: the side-by-side selection benchmark on loopback: every policy replays the same
//!   open-loop trace against a fresh fleet (§2).
//! - [`sim`]: the discrete-event simulator that drives the real `volley-proto` state machines on
//!   a virtual clock, at fleet scale (§3).
//! - [`chaos`]: faults on real sockets — loss, duplication, jitter, a server killed, stopped or
//!   partitioned — through seeded relays in front of `volley serve` processes (§5).
//! - [`soak`]: the long run: `volley serve` and `volley proxy` processes, library clients,
//!   restarts and key rotations, with memory, descriptors and counters sampled over time (§5).
//!
//! [`harness`] holds the measurement plumbing the experiments share (processes, CPU and memory
//! accounting, the one quantile and median, results files, plots), and [`peers`] the decision
//! logic of the balancers compared with volley that more than one experiment runs. Experiments
//! import from those two and never from one another.

pub mod bench;
pub mod chaos;
pub mod harness;
pub mod peers;
pub mod select;
pub mod sim;
pub mod soak;
