//! QUIC + mutual TLS plumbing shared by the hub and the agent.
//!
//! - [`tls`]: rustls configurations (TLS 1.3 only, ring provider) and the certificate verifiers
//!   that enforce Tether's trust rules (pinned CA at join, CA chain + revocation on sessions).
//! - [`quic`]: quinn endpoints and the transport tuning for many long-lived idle sessions.
//! - [`framed`]: one request frame and one response frame per stream, each with size and time limits.
//! - [`certs`]: reading certificates (serial, validity, subject) and fingerprints.
//! - [`backoff`]: the sans-IO reconnect schedule.
//! - [`nudge`]: PING/PONG datagrams that keep loss recovery going while a request waits.
//! - [`beat`]: heartbeats as datagrams (what an idle session costs), and the datagram codec.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod beat;
pub mod certs;
pub mod framed;
pub mod nudge;
pub mod quic;
pub mod tls;

pub use framed::{Limits, TransportError};
