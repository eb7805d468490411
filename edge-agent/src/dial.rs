//! Dialing the hub: resolve, connect with a time limit, exchange `Hello`, classify failures.

use crate::hubs::Target;
use crate::AgentError;
use quinn::Connection;
use std::time::Duration;
use tether_protocol::{close_code, Hello, HelloAck, Message, PROTOCOL_VERSION};
use tether_transport::framed::request;
use tether_transport::{Limits, TransportError};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Split `host:port` / `[v6]:port` and return the host for certificate verification.
pub fn host_of(addr: &str) -> Result<&str, AgentError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| AgentError::Config(format!("hub address {addr:?} must be HOST:PORT")))?;
    port.parse::<u16>()
        .map_err(|_| AgentError::Config(format!("hub address {addr:?} has an invalid port")))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

/// Connect to one hub address. The endpoint is returned too: it must outlive the connection.
pub async fn connect(
    target: &Target,
    cfg: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, Connection), AgentError> {
    let (addr, host, sock) = (target.to_string(), target.host.as_str(), target.addr);
    let endpoint =
        tether_transport::quic::client_endpoint(sock).map_err(|e| AgentError::Io(e.to_string()))?;
    let connecting = endpoint
        .connect_with(cfg, sock, host)
        .map_err(|e| match e {
            // Only a bad address or name is the operator's to fix; the rest is transient
            // (an endpoint stopping under resource pressure, too many connections).
            quinn::ConnectError::InvalidServerName(_)
            | quinn::ConnectError::InvalidRemoteAddress(_) => {
                AgentError::Config(format!("cannot connect to {addr}: {e}"))
            }
            other => AgentError::Io(format!("cannot connect to {addr}: {other}")),
        })?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            AgentError::Io(format!(
                "connecting to {addr} timed out after {CONNECT_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| {
            classify_connection_error(&e)
                .unwrap_or_else(|| AgentError::Io(format!("connecting to {addr}: {e}")))
        })?;
    Ok((endpoint, conn))
}

/// First exchange on every connection.
pub async fn hello(conn: &Connection, limits: Limits) -> Result<HelloAck, AgentError> {
    let msg = Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: crate::AGENT_VERSION.to_string(),
        patches: true,
        confirmations: true,
    });
    match request(conn, &msg, limits).await {
        Ok(Message::HelloAck(ack)) if ack.protocol_version == PROTOCOL_VERSION => Ok(ack),
        Ok(Message::HelloAck(ack)) => Err(AgentError::VersionMismatch(format!(
            "hub {} speaks protocol {}, this agent speaks {PROTOCOL_VERSION}",
            ack.hub_version, ack.protocol_version
        ))),
        Ok(other) => Err(AgentError::Protocol(format!(
            "expected HelloAck, got {}",
            other.kind()
        ))),
        Err(TransportError::Peer(e)) if e.code == tether_protocol::ErrorCode::VersionMismatch => {
            Err(AgentError::VersionMismatch(e.message))
        }
        Err(e) => Err(transport_error(conn, e)),
    }
}

/// Turn a failed exchange into an agent error, preferring the connection's close reason.
pub fn transport_error(conn: &Connection, e: TransportError) -> AgentError {
    if let Some(reason) = conn.close_reason() {
        if let Some(fatal) = classify_connection_error(&reason) {
            return fatal;
        }
    }
    match e {
        TransportError::Peer(msg) => AgentError::Protocol(msg.to_string()),
        other => AgentError::Io(other.to_string()),
    }
}

/// Connection errors that mean "stop, and tell the operator why".
pub fn classify_connection_error(e: &quinn::ConnectionError) -> Option<AgentError> {
    const TLS_ALERT_BASE: u64 = 0x100;
    const ALERT_CERTIFICATE_REVOKED: u64 = 44;
    match e {
        quinn::ConnectionError::ApplicationClosed(ac) => {
            let reason = String::from_utf8_lossy(&ac.reason).into_owned();
            match u32::try_from(u64::from(ac.error_code)).unwrap_or(u32::MAX) {
                close_code::DENIED => Some(AgentError::Denied(reason)),
                close_code::DETACHED => Some(AgentError::Detached(reason)),
                close_code::UNAUTHORIZED => Some(AgentError::Unauthorized(reason)),
                close_code::VERSION_MISMATCH => Some(AgentError::VersionMismatch(reason)),
                _ => None,
            }
        }
        quinn::ConnectionError::ConnectionClosed(cc)
            if u64::from(cc.error_code) == TLS_ALERT_BASE + ALERT_CERTIFICATE_REVOKED =>
        {
            Some(AgentError::Revoked)
        }
        quinn::ConnectionError::TransportError(te)
            if u64::from(te.code) == TLS_ALERT_BASE + ALERT_CERTIFICATE_REVOKED =>
        {
            Some(AgentError::Revoked)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("hub.example:7443").unwrap(), "hub.example");
        assert_eq!(host_of("[::1]:7443").unwrap(), "::1");
        assert!(host_of("nohost").is_err());
        assert!(host_of("h:99999").is_err());
    }
}
