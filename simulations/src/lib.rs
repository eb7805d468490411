//! Run a Tether fleet on one machine: a real hub and real agents in one process, over loopback
//! QUIC. Used by `tether-sim demo` and by the end-to-end tests; the fault-injecting simulator
//! will build on it.

pub mod fleet;
