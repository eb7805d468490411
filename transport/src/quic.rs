//! quinn endpoints tuned for a hub holding many mostly-idle agent sessions behind NAT.

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Below the 30 s UDP mapping timeout of many consumer NATs and cellular CGNATs.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A session with no packets for this long is dead (four missed keep-alives).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Crypto(String),
    #[error("could not bind UDP socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Transport tuning shared by both sides. Windows are credit, not preallocated buffers, but
/// bounding them bounds what one peer can make us buffer.
fn transport(keep_alive: Option<Duration>, peer_bidi_streams: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(IDLE_TIMEOUT).unwrap_or(IdleTimeout::from(VarInt::from_u32(60_000))),
    ));
    t.keep_alive_interval(keep_alive);
    t.max_concurrent_bidi_streams(VarInt::from_u32(peer_bidi_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(256 * 1024));
    t.receive_window(VarInt::from_u32(1024 * 1024));
    t.send_window(1024 * 1024);
    t.datagram_receive_buffer_size(None);
    t
}

/// Hub endpoint. Only the agent sends keep-alives: it is the side behind NAT, and a hub pinging
/// 100k idle sessions would be pure overhead.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
) -> Result<quinn::Endpoint, QuicError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // An agent needs few parallel requests; this also caps per-connection stream state.
    cfg.transport_config(Arc::new(transport(None, 8)));
    quinn::Endpoint::server(cfg, addr).map_err(|source| QuicError::Bind { addr, source })
}

/// Agent-side client configuration.
pub fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, QuicError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport(Some(KEEP_ALIVE), 4)));
    Ok(cfg)
}

/// A client endpoint on an ephemeral port of the same address family as `peer`.
pub fn client_endpoint(peer: SocketAddr) -> Result<quinn::Endpoint, QuicError> {
    let addr: SocketAddr = if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(addr).map_err(|source| QuicError::Bind { addr, source })
}
