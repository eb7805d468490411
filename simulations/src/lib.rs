//! Run a Tether fleet on one machine: a real hub and real agents in one process, over loopback
//! QUIC. Used by `tether-sim demo`, by the end-to-end tests, by the fault-injection simulator
//! (`tether-sim run SCENARIO.toml`) and by the fleet-scale benchmarks (`tether-sim bench`).

#![forbid(unsafe_code)]

pub mod bench;
pub mod fleet;
pub mod flood;
pub mod lite;
pub mod pg;
pub mod plot;
pub mod relay;
pub mod scenario;
pub mod sim;
