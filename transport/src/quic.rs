//! quinn endpoints tuned for a hub holding many mostly-idle agent sessions behind NAT.

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Below the 30 s UDP mapping timeout of many consumer NATs and cellular CGNATs. Above the
/// default heartbeat (15 s): quinn restarts this timer on every packet received, so while
/// heartbeat datagrams (`beat`) flow no keep-alive is sent, and one is only for hubs that ask
/// for rarer heartbeats.
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);
/// A session with no packets for this long is dead (four missed keep-alives).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Crypto(String),
    #[error("no async runtime to drive the QUIC endpoint (start it inside tokio)")]
    NoRuntime,
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
    // Room for nudges and heartbeat beats (`nudge`, `beat`), a few bytes each.
    t.datagram_receive_buffer_size(Some(crate::nudge::DATAGRAM_BUFFER));
    // quinn re-runs path MTU discovery every 600 s by default. On a path whose MTU is below
    // the 1452 B it searches up to (tunnels, many cellular links), every run sends probes of
    // up to 1452 B that are lost and retried: several KB per run and side, a multiple of the
    // idle heartbeat budget (docs/benchmarks.md). An edge path's MTU rarely rises, and a
    // black hole still lowers it at once; re-probing hourly is enough.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.interval(MTU_RECHECK);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// How long after a completed path MTU search quinn searches again.
pub const MTU_RECHECK: Duration = Duration::from_secs(3600);

/// Hub endpoint. Only the agent sends keep-alives: it is the side behind NAT, and a hub pinging
/// 100k idle sessions would be pure overhead.
///
/// `reset_secret` is the hub's persistent stateless-reset secret. A hub that restarts (or
/// crashes) loses every connection's state; with the same secret, its new process recognises
/// the old connection IDs and answers each agent's next packet with a stateless reset
/// (RFC 9000 section 10.3), so agents reconnect at once instead of waiting out the idle
/// timeout or a heartbeat's read timeout.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    reset_secret: &[u8; 32],
) -> Result<quinn::Endpoint, QuicError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // An agent needs few parallel requests; this also caps per-connection stream state.
    cfg.transport_config(Arc::new(transport(None, 8)));
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| QuicError::Bind { addr, source })?;
    let runtime = quinn::default_runtime().ok_or(QuicError::NoRuntime)?;
    quinn::Endpoint::new(endpoint_config(reset_secret), Some(cfg), socket, runtime)
        .map_err(|source| QuicError::Bind { addr, source })
}

/// Separate keys for the two uses of the secret, so neither can be derived from the other.
fn endpoint_config(reset_secret: &[u8; 32]) -> quinn::EndpointConfig {
    let derive = |label: &[u8]| {
        ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret),
            label,
        )
    };
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        derive(b"tether stateless reset v1").as_ref(),
    );
    let cid_tag = derive(b"tether connection id v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection IDs carry a keyed check; the same key after a restart is what lets the new
    // process tell an old session's packets from junk and reset them.
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // quinn's default (one reset per 20 ms) would take minutes to reset 10k sessions after a
    // restart. A reset is smaller than the packet that caused it, so this is no amplifier.
    cfg.min_reset_interval(RESET_INTERVAL);
    cfg
}

/// At most one stateless reset per this interval (1000/s).
pub const RESET_INTERVAL: Duration = Duration::from_millis(1);

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
