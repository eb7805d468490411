//! The long-lived authenticated session: dial out, heartbeat, renew the certificate in place,
//! reconnect with backoff and jitter, and stop for good when the hub cuts this cluster off.

use crate::dial::{classify_connection_error, connect, hello, transport_error};
use crate::{facts, open_store, renewal, AgentError, Shutdown};
use quinn::Connection;
use rand::Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_protocol::{close_code, Condition, Heartbeat, Message, RenewRequest, ALPN_SESSION};
use tether_store::agent::{Identity, CURRENT, IDENTITY};
use tether_store::Store;
use tether_transport::backoff::{AddressRing, Backoff};
use tether_transport::framed::request;
use tether_transport::tls::{session_client_config, SwappableClientCert};
use tether_transport::{certs, Limits};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub data_dir: PathBuf,
    /// Hub addresses to use instead of the ones stored at join time.
    pub hubs_override: Vec<String>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl RunOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            hubs_override: Vec::new(),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The identity in use, with its renewal deadline.
struct Current {
    identity: Identity,
    not_after_ms: u64,
    renew_at_ms: u64,
}

impl Current {
    fn new(identity: Identity) -> Result<Self, AgentError> {
        let info = certs::inspect_pem(&identity.cert_pem)
            .map_err(|e| AgentError::Protocol(format!("stored certificate: {e}")))?;
        let fraction = rand::rng().random_range(renewal::FRACTION_RANGE);
        let not_before_ms = (info.not_before.max(0) as u64) * 1000;
        let not_after_ms = (info.not_after.max(0) as u64) * 1000;
        Ok(Self {
            renew_at_ms: renewal::due_ms(not_before_ms, not_after_ms, fraction),
            not_after_ms,
            identity,
        })
    }
}

struct Agent {
    store: Store,
    cert: Arc<SwappableClientCert>,
    quic: quinn::ClientConfig,
    current: Current,
    limits: Limits,
}

enum End {
    Shutdown,
    Lost(AgentError),
}

pub async fn run(opts: &RunOptions, mut shutdown: Shutdown) -> Result<(), AgentError> {
    let store = open_store(&opts.data_dir)?;
    let identity = store
        .read(|tx| tx.get(&IDENTITY, CURRENT))?
        .ok_or(AgentError::NotJoined)?;
    let hubs = if opts.hubs_override.is_empty() {
        identity.hubs.clone()
    } else {
        opts.hubs_override.clone()
    };
    let mut ring =
        AddressRing::new(hubs).ok_or_else(|| AgentError::Config("no hub address known".into()))?;
    let cert = Arc::new(SwappableClientCert::new(
        &identity.cert_pem,
        &identity.key_pem,
    )?);
    let tls = session_client_config(&identity.ca_pem, cert.clone(), ALPN_SESSION)?;
    let quic = tether_transport::quic::client_config(tls)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let mut agent = Agent {
        store,
        cert,
        quic,
        current: Current::new(identity)?,
        limits: Limits::default(),
    };
    let mut backoff = Backoff::new(opts.backoff_base, opts.backoff_cap);
    tracing::info!(cluster = %agent.current.identity.name, cert_expires = %rfc3339(agent.current.not_after_ms), "agent starting");
    loop {
        if now_ms() >= agent.current.not_after_ms {
            return Err(AgentError::CertificateExpired(rfc3339(
                agent.current.not_after_ms,
            )));
        }
        let addr = ring.next_addr().to_string();
        match session(&mut agent, &addr, &mut backoff, &mut shutdown).await {
            Ok(End::Shutdown) => return Ok(()),
            Ok(End::Lost(e)) | Err(e) if !e.is_fatal() => {
                let delay = backoff.next_delay(rand::rng().random());
                tracing::warn!(hub = %addr, error = %e, "no session with the hub; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
            }
            Ok(End::Lost(e)) | Err(e) => {
                tracing::error!(error = %e, "stopping");
                return Err(e);
            }
        }
    }
}

async fn session(
    agent: &mut Agent,
    addr: &str,
    backoff: &mut Backoff,
    shutdown: &mut Shutdown,
) -> Result<End, AgentError> {
    let (_endpoint, conn) = tokio::select! {
        r = connect(addr, agent.quic.clone()) => r?,
        _ = shutdown.wait() => return Ok(End::Shutdown),
    };
    let ack = hello(&conn, agent.limits).await?;
    backoff.reset();
    let name = agent.current.identity.name.clone();
    tracing::info!(cluster = %name, hub = %addr, hub_version = %ack.hub_version, "session established");
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(ack.heartbeat_interval_ms.max(100)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let renew_in = Duration::from_millis(agent.current.renew_at_ms.saturating_sub(now_ms()));
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = send_heartbeat(&conn, &name, agent.limits).await {
                    return Ok(End::Lost(e));
                }
            }
            _ = tokio::time::sleep(renew_in) => {
                if let Err(e) = renew(agent, &conn).await {
                    if e.is_fatal() {
                        return Err(e);
                    }
                    // Retry in a minute, or sooner if the certificate is about to expire.
                    let left = agent.current.not_after_ms.saturating_sub(now_ms());
                    agent.current.renew_at_ms = now_ms() + (left / 10).clamp(1_000, 60_000);
                    tracing::warn!(error = %e, "certificate renewal failed; will retry");
                }
            }
            reason = conn.closed() => {
                return match classify_connection_error(&reason) {
                    Some(fatal) => Err(fatal),
                    None => Ok(End::Lost(AgentError::Io(format!("session lost: {reason}")))),
                };
            }
            _ = shutdown.wait() => {
                conn.close(close_code::NORMAL.into(), b"agent shutting down");
                return Ok(End::Shutdown);
            }
        }
    }
}

async fn send_heartbeat(conn: &Connection, name: &str, limits: Limits) -> Result<(), AgentError> {
    let hb = Message::Heartbeat(Heartbeat {
        facts: facts::collect(),
        conditions: vec![Condition {
            kind: "AgentReady".into(),
            status: "True".into(),
            reason: "SessionUp".into(),
            message: String::new(),
        }],
        sent_at_ms: now_ms(),
        cluster: Some(name.to_string()),
    });
    match request(conn, &hb, limits).await {
        Ok(Message::HeartbeatAck(_)) => Ok(()),
        Ok(other) => Err(AgentError::Protocol(format!(
            "expected HeartbeatAck, got {}",
            other.kind()
        ))),
        Err(e) => Err(transport_error(conn, e)),
    }
}

/// Renew over the live session with a fresh key; persist, then swap, so the running session is
/// untouched and the next handshake uses the new certificate.
async fn renew(agent: &mut Agent, conn: &Connection) -> Result<(), AgentError> {
    let (key_pem, csr_pem) = crate::join::key_and_csr(&agent.current.identity.name)?;
    let cert_pem = match request(
        conn,
        &Message::RenewRequest(RenewRequest { csr_pem }),
        agent.limits,
    )
    .await
    {
        Ok(Message::RenewResponse(r)) => r.cert_pem,
        Ok(other) => {
            return Err(AgentError::Protocol(format!(
                "expected RenewResponse, got {}",
                other.kind()
            )))
        }
        Err(e) => return Err(transport_error(conn, e)),
    };
    let info = certs::inspect_pem(&cert_pem)
        .map_err(|e| AgentError::Protocol(format!("renewed certificate: {e}")))?;
    if info.common_name != agent.current.identity.name {
        return Err(AgentError::Protocol(format!(
            "renewed certificate names {:?}",
            info.common_name
        )));
    }
    let mut identity = agent.current.identity.clone();
    identity.key_pem = key_pem;
    identity.cert_pem = cert_pem;
    agent
        .store
        .write(|tx| tx.put(&IDENTITY, CURRENT, &identity))?;
    agent.cert.swap(&identity.cert_pem, &identity.key_pem)?;
    agent.current = Current::new(identity)?;
    tracing::info!(serial = %info.serial_hex, valid_until = %rfc3339(agent.current.not_after_ms), next_renewal = %rfc3339(agent.current.renew_at_ms), "certificate renewed");
    Ok(())
}
