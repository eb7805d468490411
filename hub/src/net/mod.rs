//! The QUIC listener: handshakes, joins and agent sessions.

pub mod server;
