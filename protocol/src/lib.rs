//! Tether wire protocol: message types, the CBOR codec and length-prefixed framing.
//!
//! Pure data and pure functions: nothing here performs I/O, so the same code runs in the hub,
//! the agent, tests and the simulator.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod codec;
pub mod fencing;
pub mod frame;
pub mod message;
pub mod names;
pub mod work;

pub use codec::{decode, encode, CodecError};
pub use frame::{FrameError, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN};
pub use message::*;

/// Version of the message set. Bumped on any incompatible change; peers compare it in `Hello`.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN for the unauthenticated join channel: submit and poll a join request, nothing else.
pub const ALPN_JOIN: &[u8] = b"tether-join/1";
/// ALPN for the mutually authenticated session of a registered cluster.
pub const ALPN_SESSION: &[u8] = b"tether/1";

/// QUIC application close codes the hub uses; the agent maps them to a clear exit.
pub mod close_code {
    /// Normal shutdown.
    pub const NORMAL: u32 = 0;
    /// Peer spoke an incompatible protocol version.
    pub const VERSION_MISMATCH: u32 = 1;
    /// Protocol violation (unexpected or malformed message).
    pub const PROTOCOL_ERROR: u32 = 2;
    /// An administrator denied this cluster: do not reconnect.
    pub const DENIED: u32 = 3;
    /// An administrator detached this cluster: do not reconnect.
    pub const DETACHED: u32 = 4;
    /// The certificate is not (or no longer) accepted for this cluster.
    pub const UNAUTHORIZED: u32 = 5;
    /// A newer session of the same cluster replaced this one.
    pub const SUPERSEDED: u32 = 6;
    /// The hub is shutting down; reconnect later.
    pub const SHUTDOWN: u32 = 7;
    /// The hub could not serve the session right now (e.g. its store failed); retry later.
    pub const UNAVAILABLE: u32 = 8;
}
