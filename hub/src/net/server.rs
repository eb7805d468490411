//! The QUIC listener: the join channel (`tether-join/1`) and authenticated sessions
//! (`tether/1`). Every stream carries one request frame and one response frame.

use crate::identity::registry::RegistryError;
use crate::state::HubState;
use crate::util::now_ms;
use quinn::{Connection, SendStream};
use rustls::pki_types::CertificateDer;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_protocol::frame::FrameError;
use tether_protocol::{
    close_code, CodecError, ErrorCode, HeartbeatAck, HelloAck, JoinStatus, Message, RenewResponse,
    StatusBatch, ALPN_JOIN, ALPN_SESSION, MAX_INVENTORY_WORKS, MAX_STATUS_ENTRIES,
    PROTOCOL_VERSION,
};
use tether_store::hub::{AuditEvent, ClusterState, AUDIT, CLUSTERS};
use tether_store::StoreError;
use tether_transport::framed::{read_frame, send_last, send_last_and_close};
use tether_transport::{beat, certs, TransportError};
use tokio::task::JoinSet;

use crate::limits::admission::HANDSHAKE_TIMEOUT;
const HUB_VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<HubState>) {
    // Connection tasks live in this set, so aborting the loop aborts them all.
    let mut conns = JoinSet::new();
    let admission = crate::limits::admission::Admission::default();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let source = incoming.remote_address().ip();
                    match admission.admit(source, incoming.remote_address_validated()) {
                        Ok((slot, timeout)) => {
                            conns.spawn(handle_incoming(incoming, slot, timeout, state.clone()));
                        }
                        Err(crate::limits::admission::Verdict::Retry) if incoming.may_retry() => {
                            state.metrics.reject("retry_sent");
                            // Fails only if the Initial already carried a token (see may_retry).
                            let _ = incoming.retry();
                        }
                        Err(crate::limits::admission::Verdict::Refuse(reason)) => {
                            state.metrics.reject(reason);
                            incoming.refuse();
                        }
                        Err(_) => {
                            state.metrics.reject("overloaded");
                            incoming.refuse();
                        }
                    }
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// TLS alerts our verifier produces; those rejections were already counted with a reason.
fn counted_by_verifier(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            let code = u64::from(t.code);
            (0x100..0x200).contains(&code) && [42, 44, 45, 48, 50].contains(&(code - 0x100))
        }
        _ => false,
    }
}

async fn handle_incoming(
    incoming: quinn::Incoming,
    slot: crate::limits::admission::Slot,
    timeout: Duration,
    state: Arc<HubState>,
) {
    let peer = incoming.remote_address();
    let handshake = tokio::time::timeout(timeout, incoming).await;
    drop(slot);
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if !counted_by_verifier(&e) {
                state.metrics.reject("tls_handshake_failed");
            }
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            state.metrics.reject("handshake_timeout");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match alpn.as_deref() {
        Some(p) if p == ALPN_SESSION => serve_session(conn, state).await,
        Some(p) if p == ALPN_JOIN => serve_join(conn, state).await,
        _ => {
            state.metrics.reject("unknown_alpn");
            conn.close(close_code::PROTOCOL_ERROR.into(), b"unsupported ALPN");
        }
    }
}

/// Reply with an error on this stream, and close the connection on protocol violations.
async fn refuse(conn: &Connection, send: &mut SendStream, err: &TransportError, state: &HubState) {
    let (code, text, fatal) = match err {
        TransportError::Frame(FrameError::TooLarge { .. }) => {
            (ErrorCode::TooLarge, err.to_string(), true)
        }
        TransportError::Frame(FrameError::Codec(CodecError::UnknownMessageType(k))) => (
            ErrorCode::UnexpectedMessage,
            format!("unknown message type {k:?} (hub protocol version {PROTOCOL_VERSION})"),
            false,
        ),
        TransportError::Timeout(_) => (ErrorCode::BadRequest, err.to_string(), true),
        _ => (ErrorCode::BadRequest, err.to_string(), true),
    };
    let msg = Message::error(code, text.clone());
    if fatal {
        tracing::warn!(peer = %conn.remote_address(), error = %text, "protocol violation, closing connection");
        send_last_and_close(
            conn,
            send,
            &msg,
            state.cfg.limits,
            close_code::PROTOCOL_ERROR,
            &text,
        )
        .await;
    } else {
        let _ = send_last(send, &msg, state.cfg.limits).await;
    }
}

/// First stream of every connection: `Hello` with a compatible version, or a clear refusal.
async fn expect_hello(conn: &Connection, state: &HubState) -> Option<tether_protocol::Hello> {
    let (mut send, mut recv) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await
    {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(close_code::PROTOCOL_ERROR.into(), b"no Hello within 10s");
            return None;
        }
    };
    let limits = state.cfg.limits;
    match read_frame(&mut recv, limits).await {
        Ok(Message::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => {
            let ack = Message::HelloAck(HelloAck {
                protocol_version: PROTOCOL_VERSION,
                hub_version: HUB_VERSION.to_string(),
                heartbeat_interval_ms: state.cfg.health.heartbeat_interval.as_millis() as u64,
                datagram_heartbeats: true,
                hub_time_ms: now_ms(),
            });
            send_last(&mut send, &ack, limits).await.ok().map(|()| h)
        }
        Ok(Message::Hello(h)) => {
            let why = format!(
                "incompatible protocol version: agent {} speaks {}, hub {HUB_VERSION} speaks {PROTOCOL_VERSION}",
                h.agent_version, h.protocol_version
            );
            state.metrics.reject("version_mismatch");
            tracing::warn!(peer = %conn.remote_address(), "{why}");
            let msg = Message::error(ErrorCode::VersionMismatch, why.clone());
            send_last_and_close(
                conn,
                &mut send,
                &msg,
                limits,
                close_code::VERSION_MISMATCH,
                &why,
            )
            .await;
            None
        }
        Ok(other) => {
            let why = format!("expected Hello, got {}", other.kind());
            let msg = Message::error(ErrorCode::UnexpectedMessage, why.clone());
            send_last_and_close(
                conn,
                &mut send,
                &msg,
                limits,
                close_code::PROTOCOL_ERROR,
                &why,
            )
            .await;
            None
        }
        Err(e) => {
            refuse(conn, &mut send, &e, state).await;
            if conn.close_reason().is_none() {
                conn.close(close_code::PROTOCOL_ERROR.into(), b"bad Hello");
            }
            None
        }
    }
}

async fn blocking<T: Send + 'static>(
    state: &Arc<HubState>,
    f: impl FnOnce(&HubState) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .unwrap_or_else(|e| {
            Err(RegistryError::BadRequest(format!(
                "internal task failed: {e}"
            )))
        })
}

fn registry_error(e: &RegistryError) -> Message {
    Message::error(e.wire_code(), e.to_string())
}

// ---------------------------------------------------------------- join channel

/// Largest frame on the join channel: a join request is a CSR, a name, labels and facts, a few
/// KiB; anonymous peers get no more room than that.
pub const MAX_JOIN_FRAME: usize = 64 * 1024;

async fn serve_join(conn: Connection, state: Arc<HubState>) {
    let Some(_source_slot) = state.join_sources.admit(conn.remote_address().ip()) else {
        state.metrics.reject("join_source_busy");
        conn.close(
            close_code::SHUTDOWN.into(),
            b"hub busy: too many join connections from this address, retry later",
        );
        return;
    };
    let Ok(_permit) = state.join_slots.clone().try_acquire_owned() else {
        state.metrics.reject("join_busy");
        conn.close(
            close_code::SHUTDOWN.into(),
            b"hub busy: too many concurrent joins, retry later",
        );
        return;
    };
    state
        .metrics
        .handshakes_accepted
        .get_or_create(&crate::metrics::AlpnLabel {
            alpn: "tether-join/1".into(),
        })
        .inc();
    let lifetime = state.cfg.join_connection_lifetime;
    let limits = tether_transport::Limits {
        max_frame: state.cfg.limits.max_frame.min(MAX_JOIN_FRAME),
        ..state.cfg.limits
    };
    let served = tokio::time::timeout(lifetime, async {
        expect_hello(&conn, &state).await?;
        loop {
            let Ok(next) =
                tokio::time::timeout(state.cfg.join_idle_timeout, conn.accept_bi()).await
            else {
                conn.close(
                    close_code::NORMAL.into(),
                    b"join connection idle, reconnect to poll",
                );
                return None;
            };
            let (mut send, mut recv) = next.ok()?;
            let msg = match read_frame(&mut recv, limits).await {
                Ok(m) => m,
                Err(e) => {
                    refuse(&conn, &mut send, &e, &state).await;
                    continue;
                }
            };
            let peer = conn.remote_address().to_string();
            let reply = match msg {
                Message::JoinRequest(req) => {
                    // Unvalidated until the registry has looked at it: never logged raw.
                    let name = crate::util::loggable(&req.name, 64);
                    let joining = req.name.clone();
                    let r = blocking(&state, move |s| {
                        s.registry.submit_join(&req, &peer, now_ms())
                    })
                    .await;
                    if let Ok(JoinStatus::Approved { .. }) = &r {
                        state.changes.cluster(&joining);
                    }
                    let outcome = match &r {
                        Ok(JoinStatus::Approved { .. }) => "auto_approved",
                        Ok(JoinStatus::Pending) => "pending",
                        Ok(JoinStatus::Denied { .. }) => "denied",
                        Err(_) => "refused",
                    };
                    state
                        .metrics
                        .join_requests
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: outcome.into(),
                        })
                        .inc();
                    match r {
                        Ok(status) => {
                            tracing::info!(cluster = %name, outcome, "join request");
                            if matches!(status, JoinStatus::Approved { .. }) {
                                // Valid: the registry accepted it.
                                state.health_event(|h| {
                                    h.track(&name, ClusterState::Unknown, None, now_ms());
                                    None
                                });
                            }
                            Message::JoinStatus(status)
                        }
                        Err(e) => {
                            tracing::info!(cluster = %name, error = %crate::util::loggable(&e.to_string(), 200), "join request refused");
                            registry_error(&e)
                        }
                    }
                }
                Message::JoinPoll(poll) => {
                    match blocking(&state, move |s| s.registry.poll_join(&poll)).await {
                        Ok(status) => Message::JoinStatus(status),
                        Err(e) => registry_error(&e),
                    }
                }
                other => Message::error(
                    ErrorCode::UnexpectedMessage,
                    format!("{} is not allowed on the join channel", other.kind()),
                ),
            };
            let _ = send_last(&mut send, &reply, limits).await;
        }
        #[allow(unreachable_code)]
        Some(())
    });
    let served = tokio::select! {
        r = served => r,
        // The connection ended; `served` would see that on its next read.
        _ = tether_transport::nudge::answer(conn.clone()) => return,
    };
    if served.is_err() {
        conn.close(
            close_code::NORMAL.into(),
            b"join connection lifetime reached, reconnect to keep polling",
        );
    }
}

// ---------------------------------------------------------------- sessions

type Refusal = (u32, &'static str, String);

fn unauthorized(reason: &'static str, msg: String) -> Refusal {
    (close_code::UNAUTHORIZED, reason, msg)
}

/// Who the peer claims to be, from the verified certificate only: (common name, serial).
fn peer_identity(conn: &Connection) -> Result<(String, String), Refusal> {
    let chain = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            unauthorized(
                "no_client_certificate",
                "a client certificate is required on tether/1".into(),
            )
        })?;
    let info = certs::inspect_der(&chain[0])
        .map_err(|e| unauthorized("invalid_certificate", format!("client certificate: {e}")))?;
    Ok((info.common_name, info.serial_hex))
}

/// Whether the store still lets `name` in with `serial`: registered, not denied, serial live.
fn authorize(state: &HubState, name: &str, serial: &str) -> Result<(), Refusal> {
    let record = state
        .store
        .read(|tx| tx.get(&CLUSTERS, name))
        // A storage hiccup is not the agent's fault: tell it to come back, not to give up.
        .map_err(|e: StoreError| (close_code::UNAVAILABLE, "internal", e.to_string()))?
        .ok_or_else(|| {
            unauthorized(
                "unknown_cluster",
                format!("{name:?} is not a registered cluster"),
            )
        })?;
    if record.state == ClusterState::Denied {
        return Err((
            close_code::DENIED,
            "denied",
            format!("cluster {:?} has been denied", record.name),
        ));
    }
    if !record.serials.iter().any(|s| s == serial) {
        return Err(unauthorized(
            "serial_not_issued",
            format!(
                "certificate serial {serial} was not issued to cluster {:?} (or has been superseded)",
                record.name
            ),
        ));
    }
    Ok(())
}

fn refuse_session(conn: &Connection, state: &HubState, (code, reason, msg): Refusal) {
    state.metrics.reject(reason);
    let peer = conn.remote_address();
    // Coalesced per reason: a flood of refused sessions costs a counter and a couple of audit
    // rows (and log lines) a minute.
    let first = state.registry.coalesced.record(
        "handshake_rejected",
        reason,
        format!("{reason} from {peer}: {msg}"),
        &peer.to_string(),
        now_ms(),
    );
    if first {
        tracing::warn!(%peer, reason, "session refused: {msg} (more like it this minute are only counted)");
    } else {
        tracing::debug!(%peer, reason, "session refused: {msg}");
    }
    conn.close(code.into(), msg.as_bytes());
}

async fn serve_session(conn: Connection, state: Arc<HubState>) {
    let (cluster, serial) = match peer_identity(&conn) {
        Ok(who) => who,
        Err(refusal) => return refuse_session(&conn, &state, refusal),
    };
    // Tracked before the store is asked (see `sessions`): a deny or detach that commits after
    // this check still finds and closes the connection.
    let _tracked = state.sessions.track(&cluster, &serial, &conn);
    if let Err(refusal) = authorize(&state, &cluster, &serial) {
        return refuse_session(&conn, &state, refusal);
    }
    let Some(hello) = expect_hello(&conn, &state).await else {
        return;
    };
    // Hello may come seconds after the handshake; whatever was decided meanwhile counts.
    if let Err(refusal) = authorize(&state, &cluster, &serial) {
        return refuse_session(&conn, &state, refusal);
    }
    if conn.close_reason().is_some() {
        return;
    }
    if let Some(replica) = state.replica.clone() {
        // A replica that cannot record the session cannot serve it: the agent tries another.
        if let Err(e) = state.claim_session(&replica, &cluster).await {
            return refuse_session(
                &conn,
                &state,
                (
                    close_code::UNAVAILABLE,
                    "internal",
                    format!("this hub replica cannot record the session: {e}"),
                ),
            );
        }
    }
    state
        .metrics
        .handshakes_accepted
        .get_or_create(&crate::metrics::AlpnLabel {
            alpn: "tether/1".into(),
        })
        .inc();
    state
        .sessions
        .insert(&cluster, conn.clone(), hello.confirmations);
    state.changes.cluster(&cluster);
    state.metrics.live_sessions.inc();
    state.health_event(|h| h.session_opened(&cluster, now_ms()));
    // The Hello counts as a heartbeat: the agent counts it as contact (fencing contract).
    state.health_event(|h| h.heartbeat(&cluster, now_ms()));
    tracing::info!(%cluster, peer = %conn.remote_address(), "session opened");

    let session = Arc::new(SessionCtx {
        cluster: cluster.clone(),
        serial,
        conn: conn.clone(),
        last_reported: Mutex::new(None),
        delivery: Mutex::new(None),
        patches: hello.patches,
    });
    let mut streams = JoinSet::new();
    let mut nudges = tether_transport::nudge::Responder::default();
    let mut beats = beat::Gate::default();
    let end = loop {
        let (mut send, mut recv) = tokio::select! {
            r = conn.accept_bi() => match r {
                Ok(s) => s,
                Err(e) => break e,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            Ok(d) = conn.read_datagram() => {
                let now = std::time::Instant::now();
                match beat::Datagram::parse(&d) {
                    beat::Datagram::Beat(confirm) => {
                        if beats.admit(now) {
                            state.metrics.heartbeats.inc();
                            state.metrics.heartbeat_datagrams.inc();
                            state.health_event(|h| h.heartbeat(&cluster, now_ms()));
                            // Only after recording it: the agent's fencing deadline counts
                            // from this beat's send time (tether_protocol::fencing).
                            if let Some(nonce) = confirm {
                                beat::acknowledge(&conn, nonce);
                            }
                        }
                    }
                    other => nudges.on_datagram(&conn, other, now),
                }
                continue;
            }
        };
        // Streams are served concurrently (a slow status commit must not delay heartbeats);
        // QUIC's stream limit bounds how many at once.
        let state = state.clone();
        let session = session.clone();
        streams.spawn(async move {
            match read_frame(&mut recv, state.cfg.limits).await {
                Ok(msg) => {
                    let reply = handle_session_message(&state, &session, msg).await;
                    let _ = send_last(&mut send, &reply, state.cfg.limits).await;
                }
                Err(e) => refuse(&session.conn, &mut send, &e, &state).await,
            }
        });
    };
    streams.abort_all();
    if let Some(d) = session
        .delivery
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        d.abort();
    }
    state.sessions.remove(&cluster, conn.stable_id());
    state.changes.cluster(&cluster);
    state.metrics.live_sessions.dec();
    state.health_event(|h| h.session_closed(&cluster, now_ms()));
    tracing::info!(%cluster, reason = %end, "session closed");
}

type Reported = Option<(tether_protocol::Facts, Vec<tether_protocol::Condition>)>;

/// What a live session's stream handlers share.
struct SessionCtx {
    cluster: String,
    /// Serial of the certificate this session authenticated with.
    serial: String,
    conn: Connection,
    last_reported: Mutex<Reported>,
    delivery: Mutex<Option<tokio::task::AbortHandle>>,
    /// The agent takes changed works as patches (`Hello.patches`).
    patches: bool,
}

async fn handle_session_message(
    state: &Arc<HubState>,
    session: &SessionCtx,
    msg: Message,
) -> Message {
    let cluster = session.cluster.as_str();
    match msg {
        Message::Inventory(inv) => {
            if inv.works.len() > MAX_INVENTORY_WORKS {
                state
                    .metrics
                    .refuse_cluster_input("too_many_entries", inv.works.len() as u64);
                return Message::error(
                    ErrorCode::TooLarge,
                    format!(
                        "an inventory names at most {MAX_INVENTORY_WORKS} works, this one {}",
                        inv.works.len()
                    ),
                );
            }
            match crate::delivery::record_inventory(state, cluster, &inv.works).await {
                Ok(0) => {}
                Ok(foreign) => {
                    state
                        .metrics
                        .refuse_cluster_input("foreign_inventory", foreign as u64);
                    tracing::warn!(%cluster, works = foreign, "inventory names works that are not this cluster's; not recorded");
                }
                Err(e) => {
                    tracing::error!(%cluster, error = %e, "could not record the agent's inventory")
                }
            }
            let pending = crate::delivery::pending_changes(state, cluster, &inv.works);
            tracing::info!(%cluster, held = inv.works.len(), pending, "inventory received");
            let task = tokio::spawn(crate::delivery::run(
                session.conn.clone(),
                state.clone(),
                cluster.to_string(),
                inv.works,
                session.patches,
            ));
            let previous = session
                .delivery
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace(task.abort_handle());
            if let Some(p) = previous {
                p.abort();
            }
            Message::InventoryAck(tether_protocol::InventoryAck {
                pending_changes: u32::try_from(pending).unwrap_or(u32::MAX),
            })
        }
        Message::StatusBatch(batch) => ingest_status(state, cluster, batch).await,
        Message::Heartbeat(hb) => {
            state.metrics.heartbeats.inc();
            // `hb.cluster` is informational; identity is the certificate's, already in `cluster`.
            if hb.cluster.as_deref().is_some_and(|c| c != cluster) {
                tracing::warn!(%cluster, claimed = ?hb.cluster, "heartbeat names another cluster; ignoring the field");
            }
            state.health_event(|h| h.heartbeat(cluster, now_ms()));
            state.note_conditions(cluster, &hb.conditions);
            let report = (crate::fleet::facts::clamp(&hb.facts), hb.conditions);
            let seen = session
                .last_reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                == Some(&report);
            if !seen {
                let name = cluster.to_string();
                let to_store = report.clone();
                let r = state
                    .committer
                    .write(move |tx| {
                        let Some(mut rec) = tx.get(&CLUSTERS, &name)? else {
                            return Ok(false);
                        };
                        let changed = crate::fleet::facts::changes(&rec.facts, &to_store.0);
                        let now = now_ms();
                        if !changed.is_empty() {
                            // Reported facts are claims; a change is worth a trail, and pinned
                            // facts keep placement where a human put it.
                            tx.append(
                                &AUDIT,
                                &AuditEvent {
                                    at_ms: now,
                                    kind: "facts_changed".into(),
                                    cluster: Some(name.clone()),
                                    actor: format!("agent:{name}"),
                                    detail: changed.join(", "),
                                },
                            )?;
                        }
                        rec.facts = to_store.0;
                        rec.conditions = to_store.1;
                        rec.last_seen_ms = Some(now);
                        tx.put(&CLUSTERS, &name, &rec)?;
                        Ok(!changed.is_empty())
                    })
                    .await;
                match r {
                    Ok(placement_input_changed) => {
                        if placement_input_changed {
                            state.changes.cluster(cluster);
                        }
                        *session
                            .last_reported
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(report)
                    }
                    Err(e) => {
                        tracing::error!(%cluster, error = %e, "could not store reported facts")
                    }
                }
            }
            Message::HeartbeatAck(HeartbeatAck {
                hub_time_ms: now_ms(),
            })
        }
        Message::RenewRequest(req) => {
            let name = cluster.to_string();
            let serial = session.serial.clone();
            match blocking(state, move |s| {
                s.registry.renew(&name, &serial, &req.csr_pem, now_ms())
            })
            .await
            {
                Ok(cert_pem) => {
                    tracing::info!(%cluster, "certificate renewed");
                    Message::RenewResponse(RenewResponse { cert_pem })
                }
                Err(e) => {
                    tracing::warn!(%cluster, error = %e, "renewal refused");
                    registry_error(&e)
                }
            }
        }
        other => Message::error(
            ErrorCode::UnexpectedMessage,
            format!("{} is not a request a hub accepts", other.kind()),
        ),
    }
}

/// Store a status batch: bounded in size, paced by the cluster's budget, and only what is the
/// cluster's own (`scope`).
async fn ingest_status(state: &Arc<HubState>, cluster: &str, batch: StatusBatch) -> Message {
    let n = batch.entries.len();
    if n > MAX_STATUS_ENTRIES {
        state
            .metrics
            .refuse_cluster_input("too_many_entries", n as u64);
        return Message::error(
            ErrorCode::TooLarge,
            format!("a status batch holds at most {MAX_STATUS_ENTRIES} entries, this one {n}"),
        );
    }
    match state
        .status_budget
        .take(cluster, n, std::time::Instant::now())
    {
        Ok(wait) if wait.is_zero() => {}
        Ok(wait) => tokio::time::sleep(wait).await,
        Err(wait) => {
            state.metrics.refuse_cluster_input("rate_limited", n as u64);
            tracing::warn!(%cluster, entries = n, "status over the cluster's budget; refused");
            return Message::error(
                ErrorCode::Busy,
                format!(
                    "status arrives faster than {}/s; retry in {} s",
                    crate::limits::budget::STATUS_ENTRIES.per_second,
                    wait.as_secs() + 1
                ),
            );
        }
    }
    let scope = state.scope_of(
        cluster,
        batch.entries.iter().map(|e| e.status.work.as_str()),
    );
    let touched: BTreeSet<String> = batch
        .entries
        .iter()
        .map(|e| e.status.work.clone())
        .collect();
    let ingested = state.ingest_status(cluster, batch, scope).await;
    match ingested {
        Ok(i) => {
            if i.stored > 0 {
                state
                    .changes
                    .rows(cluster, touched.iter().map(String::as_str));
            }
            state.metrics.status_entries.inc_by(i.stored as u64);
            state.metrics.status_duplicates.inc_by(i.duplicates as u64);
            if i.duplicates > 0 && i.stored == 0 && i.foreign == 0 {
                // A batch of nothing new: the agent resends what the hub has. Once in a while
                // is a lost ack; again and again is a loop worth seeing (coalesced per minute).
                let first = state.registry.coalesced.record(
                    "status_resent",
                    &format!("agent:{cluster}"),
                    format!(
                        "{} status entries the hub already has, through seq {}",
                        i.duplicates, i.through
                    ),
                    cluster,
                    now_ms(),
                );
                if first {
                    tracing::warn!(%cluster, entries = i.duplicates, through = i.through, "agent resends statuses the hub already stored (more this minute are only counted)");
                }
            }
            if i.foreign > 0 {
                state
                    .metrics
                    .refuse_cluster_input("foreign_status", i.foreign as u64);
                tracing::warn!(%cluster, entries = i.foreign, "status about works that are not this cluster's; dropped");
            }
            if let Some((expected, got)) = i.gap {
                state.metrics.status_gaps.inc();
                tracing::error!(%cluster, expected, got, "status sequence gap: entries were lost before reaching the hub");
            }
            Message::StatusAck(tether_protocol::StatusAck {
                through_seq: i.through,
            })
        }
        Err(e) => {
            tracing::error!(%cluster, error = %e, "could not store status");
            Message::error(ErrorCode::Internal, format!("status not stored: {e}"))
        }
    }
}
