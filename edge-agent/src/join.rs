//! Joining a hub: the agent makes its own key and CSR (the key never leaves this host), trusts
//! the hub only through the operator's CA pin, submits a join request and waits for a decision.
//!
//! Everything needed to resume waiting (key, CSR, request secret) is committed before the
//! request is sent, so a restart while waiting for approval picks up the same request.

use crate::dial::{connect, hello, transport_error};
use crate::hubs::{HubTargets, Target};
use crate::{facts, open_store, AgentError, Shutdown};
use rand::Rng;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tether_protocol::names::{validate_cluster_name, validate_labels};
use tether_protocol::{ErrorCode, JoinPoll, JoinRequest, JoinStatus, Labels, Message, ALPN_JOIN};
use tether_store::agent::{Identity, PendingJoin, CURRENT, IDENTITY, PENDING_JOIN};
use tether_store::StoreError;
use tether_transport::backoff::Backoff;
use tether_transport::framed::request;
use tether_transport::tls::{join_client_config, PinnedCaVerifier};
use tether_transport::{certs, Limits, TransportError};

#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub hubs: Vec<String>,
    pub token: String,
    pub ca_sha256: String,
    pub name: String,
    pub labels: Labels,
    pub data_dir: PathBuf,
    /// How often to ask whether an administrator has decided.
    pub poll_interval: Duration,
    pub backoff_cap: Duration,
}

/// Make a P-256 key pair and a CSR naming the cluster. The hub overrides every field but the
/// public key; the name is included for operators reading the request.
pub fn key_and_csr(name: &str) -> Result<(String, String), AgentError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AgentError::Io(format!("generating key: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Io(format!("creating CSR: {e}")))?;
    Ok((key.serialize_pem(), csr))
}

fn load_or_create_pending(
    store: &tether_store::Store,
    opts: &JoinOptions,
    pin_hex: &str,
) -> Result<PendingJoin, AgentError> {
    if let Some(p) = store.read(|tx| tx.get(&PENDING_JOIN, CURRENT))? {
        if p.name == opts.name && p.ca_sha256 == pin_hex {
            tracing::info!(cluster = %p.name, "resuming the join request made earlier");
            return Ok(p);
        }
    }
    let (key_pem, csr_pem) = key_and_csr(&opts.name)?;
    let secret: [u8; 32] = rand::random();
    let pending = PendingJoin {
        name: opts.name.clone(),
        key_pem,
        csr_pem,
        request_secret: hex_encode(&secret),
        ca_sha256: pin_hex.to_string(),
        hubs: opts.hubs.clone(),
        labels: opts.labels.clone(),
    };
    store.write(|tx| tx.put(&PENDING_JOIN, CURRENT, &pending))?;
    Ok(pending)
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

enum Attempt {
    Done(Identity),
    Retry(AgentError),
}

pub async fn join(opts: &JoinOptions, mut shutdown: Shutdown) -> Result<Identity, AgentError> {
    validate_cluster_name(&opts.name).map_err(|e| AgentError::Config(e.to_string()))?;
    validate_labels(&opts.labels).map_err(|e| AgentError::Config(e.to_string()))?;
    let pin = certs::parse_fingerprint(&opts.ca_sha256).ok_or_else(|| {
        AgentError::Config(format!(
            "--ca-sha256 {:?} is not a SHA-256 fingerprint (64 hex digits)",
            opts.ca_sha256
        ))
    })?;
    if opts.token.trim().is_empty() {
        return Err(AgentError::Config("--token is empty".into()));
    }
    if opts.hubs.is_empty() {
        return Err(AgentError::Config("at least one --hub is required".into()));
    }
    let mut targets = HubTargets::new(opts.hubs.clone(), &opts.name)?;
    let store = open_store(&opts.data_dir)?;
    if let Some(id) = store.read(|tx| tx.get(&IDENTITY, CURRENT))? {
        if id.name == opts.name {
            tracing::info!(cluster = %id.name, "already joined");
            return Ok(id);
        }
        return Err(AgentError::AlreadyJoined(id.name));
    }
    let pending = load_or_create_pending(&store, opts, &hex_encode(&pin))?;
    let mut backoff = Backoff::new(Duration::from_millis(500), opts.backoff_cap);
    loop {
        let target = tokio::select! {
            t = targets.next() => t,
            _ = shutdown.wait() => return Err(AgentError::Interrupted),
        };
        let addr = target
            .as_ref()
            .map_or_else(|_| "(no address resolved)".to_string(), |t| t.to_string());
        let attempt = match target {
            Ok(t) => tokio::select! {
                r = attempt(&store, opts, &pending, pin, &t) => r?,
                _ = shutdown.wait() => return Err(AgentError::Interrupted),
            },
            Err(e) => Attempt::Retry(e),
        };
        match attempt {
            Attempt::Done(identity) => return Ok(identity),
            Attempt::Retry(e) => {
                let delay = backoff.next_delay(rand::rng().random());
                tracing::warn!(hub = %addr, error = %e, "join attempt failed; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Err(AgentError::Interrupted),
                }
            }
        }
    }
}

/// One connection to one hub: submit (idempotent), then poll until decided or disconnected.
async fn attempt(
    store: &tether_store::Store,
    opts: &JoinOptions,
    pending: &PendingJoin,
    pin: [u8; 32],
    target: &Target,
) -> Result<Attempt, AgentError> {
    let verifier = Arc::new(PinnedCaVerifier::new(pin));
    let tls = join_client_config(verifier.clone(), ALPN_JOIN)?;
    let cfg = tether_transport::quic::client_config(tls)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let (_endpoint, conn) = match connect(target, cfg).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(why) = verifier.last_failure() {
                return Err(AgentError::CaPinMismatch(why));
            }
            return Ok(Attempt::Retry(e));
        }
    };
    let limits = Limits::default();
    if let Err(e) = hello(&conn, limits).await {
        return if e.is_fatal() {
            Err(e)
        } else {
            Ok(Attempt::Retry(e))
        };
    }
    let submit = Message::JoinRequest(JoinRequest {
        token: opts.token.clone(),
        name: pending.name.clone(),
        labels: pending.labels.clone(),
        facts: facts::collect(),
        csr_pem: pending.csr_pem.clone(),
        request_secret: pending.request_secret.clone(),
    });
    let poll = Message::JoinPoll(JoinPoll {
        name: pending.name.clone(),
        request_secret: pending.request_secret.clone(),
    });
    let mut msg = &submit;
    let mut told_waiting = false;
    loop {
        let status = match request(&conn, msg, limits).await {
            Ok(Message::JoinStatus(s)) => s,
            Ok(other) => {
                return Ok(Attempt::Retry(AgentError::Protocol(format!(
                    "expected JoinStatus, got {}",
                    other.kind()
                ))))
            }
            Err(TransportError::Peer(e)) => {
                return match e.code {
                    // Our request vanished (an admin cleared it): submit it again.
                    ErrorCode::Unauthorized => {
                        msg = &submit;
                        continue;
                    }
                    ErrorCode::Busy | ErrorCode::Internal => {
                        Ok(Attempt::Retry(AgentError::Protocol(e.to_string())))
                    }
                    _ => Err(AgentError::JoinRefused(e)),
                };
            }
            Err(e) => return Ok(Attempt::Retry(transport_error(&conn, e))),
        };
        match status {
            JoinStatus::Pending => {
                if !told_waiting {
                    tracing::info!(cluster = %pending.name, hub = %target, "join request pending; an administrator must run `tetherctl clusters approve {}`", pending.name);
                    told_waiting = true;
                }
                msg = &poll;
                tokio::time::sleep(opts.poll_interval).await;
            }
            JoinStatus::Denied { reason } => {
                store.write(|tx| tx.remove(&PENDING_JOIN, CURRENT).map(|_| ()))?;
                conn.close(0u32.into(), b"join denied");
                return Err(AgentError::JoinDenied(reason));
            }
            JoinStatus::Approved { cert_pem, ca_pem } => {
                let identity =
                    accept_approval(pending, pin, cert_pem, ca_pem, verifier.matched_ca())?;
                store.write(|tx| {
                    tx.put(&IDENTITY, CURRENT, &identity)?;
                    tx.remove(&PENDING_JOIN, CURRENT)?;
                    Ok::<_, StoreError>(())
                })?;
                conn.close(0u32.into(), b"joined");
                tracing::info!(cluster = %identity.name, "joined: certificate received and stored");
                return Ok(Attempt::Done(identity));
            }
        }
    }
}

/// Check what the hub sent before storing it as our identity.
fn accept_approval(
    pending: &PendingJoin,
    pin: [u8; 32],
    cert_pem: String,
    ca_pem: String,
    handshake_ca: Option<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Identity, AgentError> {
    let ca = certs::certs_from_pem(&ca_pem, "CA from hub")
        .map_err(|e| AgentError::Protocol(e.to_string()))?;
    if certs::fingerprint(&ca[0]) != hex_encode(&pin)
        || handshake_ca.as_deref() != Some(ca[0].as_ref())
    {
        return Err(AgentError::CaPinMismatch(
            "the CA sent with the approval is not the pinned CA".into(),
        ));
    }
    crate::clock::check_issued(
        "issued",
        &pending.name,
        &ca_pem,
        &cert_pem,
        &pending.key_pem,
        crate::clock::now_s(),
    )?;
    Ok(Identity {
        name: pending.name.clone(),
        key_pem: pending.key_pem.clone(),
        cert_pem,
        ca_pem,
        hubs: pending.hubs.clone(),
        labels: pending.labels.clone(),
    })
}
