//! The measurement plumbing every experiment shares: starting and stopping `volley` processes
//! and pinning threads ([`process`]), a client's echo exchange over a session ([`echo`]), CPU
//! and memory accounting ([`cpu`], [`footprint`]), the one quantile and median every figure is
//! computed with ([`stats`]), the output folder and its `results.md` / `results.json`
//! ([`results`]), and the SVG plots' common strokes ([`svg`]).
//!
//! Experiments import from here (and from [`crate::peers`]) and never from one another, so that
//! each can change, or be removed, alone.

pub mod cpu;
pub mod echo;
pub mod footprint;
pub mod process;
pub mod results;
pub mod stats;
pub mod svg;
