//! Simulated-network tests.
