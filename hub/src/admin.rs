//! The admin API: HTTPS on a separate (by default loopback) listener.
//!
//! Authentication: every `/v1/` route requires a client certificate whose SHA-256 fingerprint is
//! a registered admin credential (created by `init`). Cluster certificates chain to the same CA
//! but are never admin credentials. `/metrics` and `/healthz` are readable without a
//! certificate so that Prometheus can scrape; they reveal counts, not cluster data.

use crate::api::*;
use crate::hub::HubState;
use crate::registry::{RegistryError, TokenSpec};
use crate::util::now_ms;
use bytes_body::{full, Body};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_protocol::close_code;
use tether_store::hub::{
    AuditEvent, ClusterRecord, JoinDecision, AUDIT, CLUSTERS, JOIN_REQUESTS, TOKENS,
};
use tether_store::{ReadTx, StoreError};
use tether_transport::certs;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

/// TLS handshake, and each request's headers (which also bounds the idle time between
/// requests on a kept-alive connection: hyper times the wait for the next request head).
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Receiving a request body (32 MiB at most).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard limit on one connection's life, whatever it does: a client that stops reading a
/// response would otherwise hold its slot forever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Connections not (yet) known to come from an admin: TLS handshakes in progress, `/metrics`
/// scrapes, refused requests. When full, the oldest is closed to make room, so a flood of idle
/// or slow connections cannot lock an admin out (it only has to finish its handshake before
/// this many newer connections arrive).
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 64;
/// Connections authenticated as an admin; more get a 503 at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// How often coalesced audit events (401s, bad-token joins) are handed to the audit writer.
const AUDIT_FLUSH: Duration = Duration::from_secs(1);

mod bytes_body {
    use http_body_util::Full;
    pub type Body = Full<hyper::body::Bytes>;
    pub fn full(s: impl Into<hyper::body::Bytes>) -> Body {
        Full::new(s.into())
    }
}

/// The evictable tier: connections in arrival order, each with the sender that closes it.
#[derive(Default)]
struct Unauthenticated {
    next_id: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Leaves the evictable tier when dropped (promotion to admin, or the connection ended).
struct UnauthenticatedSlot {
    id: u64,
    tier: Arc<Mutex<Unauthenticated>>,
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        let mut t = self.tier.lock().unwrap_or_else(|p| p.into_inner());
        t.queue.retain(|(id, _)| *id != self.id);
    }
}

/// Counts the connection in `tether_hub_admin_connections` while it lives.
struct OpenConnection(Arc<crate::metrics::Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.admin_connections.dec();
    }
}

fn admit(
    tier: &Arc<Mutex<Unauthenticated>>,
    metrics: &crate::metrics::Metrics,
) -> (UnauthenticatedSlot, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    let mut t = tier.lock().unwrap_or_else(|p| p.into_inner());
    while t.queue.len() >= MAX_UNAUTHENTICATED_CONNECTIONS {
        let Some((_, oldest)) = t.queue.pop_front() else {
            break;
        };
        // The receiver may already be gone (connection ending): nothing to close then.
        let _ = oldest.send(());
        metrics
            .admin_connections_refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "evicted".into(),
            })
            .inc();
    }
    let id = t.next_id;
    t.next_id += 1;
    t.queue.push_back((id, tx));
    (
        UnauthenticatedSlot {
            id,
            tier: tier.clone(),
        },
        rx,
    )
}

/// Who is on the other end, from the TLS layer only.
#[derive(Clone)]
struct Peer {
    addr: SocketAddr,
    is_admin: bool,
    /// SHA-256 of the client certificate, if one was presented.
    fingerprint: Option<String>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<HubState>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    let tier: Arc<Mutex<Unauthenticated>> = Default::default();
    let admin_slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut flush = tokio::time::interval(AUDIT_FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = flush.tick() => {
                for ev in state.registry.coalesced.drain(now_ms()) {
                    state.audit_async(&ev.kind, ev.cluster, &ev.actor, ev.detail);
                }
                continue;
            }
        };
        let (slot, mut evicted) = admit(&tier, &state.metrics);
        state.metrics.admin_connections.inc();
        let open = OpenConnection(state.metrics.clone());
        let acceptor = acceptor.clone();
        let state = state.clone();
        let admin_slots = admin_slots.clone();
        conns.spawn(async move {
            let _open = open;
            let served = serve_connection(tcp, addr, acceptor, state, slot, admin_slots);
            tokio::select! {
                Ok(()) = &mut evicted => {
                    tracing::debug!(peer = %addr, "admin connection closed to make room for a newer one");
                }
                r = tokio::time::timeout(CONNECTION_LIFETIME, served) => {
                    if r.is_err() {
                        tracing::debug!(peer = %addr, "admin connection closed: lifetime reached");
                    }
                }
            }
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<HubState>,
    slot: UnauthenticatedSlot,
    admin_slots: Arc<Semaphore>,
) {
    let tls = match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "admin TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| certs::fingerprint(c));
    let is_admin = fingerprint
        .as_ref()
        .is_some_and(|fp| state.admin_fingerprints.contains(fp));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(TLS_TIMEOUT);
    // An admin connection leaves the evictable tier; one over the admin limit stays in it
    // and is answered 503.
    let mut slot = Some(slot);
    let mut permit = None;
    if is_admin {
        match admin_slots.try_acquire_owned() {
            Ok(p) => {
                permit = Some(p);
                slot = None;
            }
            Err(_) => {
                state
                    .metrics
                    .admin_connections_refused
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: "admin_limit".into(),
                    })
                    .inc();
                builder.keep_alive(false);
            }
        }
    }
    let over_limit = is_admin && permit.is_none();
    let _held = (slot, permit);
    let peer = Peer {
        addr,
        is_admin,
        fingerprint,
    };
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let peer = peer.clone();
        async move {
            if over_limit {
                return Ok::<_, std::convert::Infallible>(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("too many concurrent admin connections (limit {MAX_ADMIN_CONNECTIONS}); retry shortly"),
                ));
            }
            Ok(handle(state, req, &peer).await)
        }
    });
    let io = hyper_util::rt::TokioIo::new(tls);
    if let Err(e) = builder.serve_connection(io, svc).await {
        tracing::debug!(peer = %addr, error = %e, "admin connection ended with error");
    }
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    json(status, &ApiError { error: msg.into() })
}

fn registry_status(e: &RegistryError) -> StatusCode {
    match e {
        RegistryError::NotFound(_) | RegistryError::UnknownRequest(_) => StatusCode::NOT_FOUND,
        RegistryError::Conflict(_) | RegistryError::NameTaken(_) => StatusCode::CONFLICT,
        RegistryError::Store(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Read a request body of at most `limit` bytes within `BODY_TIMEOUT`.
///
/// Over the limit the answer is 413 naming the limit. The rest of the body is still read and
/// discarded (up to another `limit`), because closing a socket with unread data resets it and
/// the client would see "connection reset" instead of the 413.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
) -> Result<hyper::body::Bytes, Response<Body>> {
    let route = format!("{} {}", req.method(), req.uri().path());
    let refuse = |route: &str| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body exceeds the {} limit of {route}",
                human_bytes(limit)
            ),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > 2 * limit as u64) {
        // Not worth draining: answer now, the connection closes.
        return Err(refuse(&route));
    }
    let mut body = req.into_body();
    let read = async {
        let mut buf = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len());
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > 2 * limit {
                break;
            }
        }
        if total > limit {
            return Err(refuse(&route));
        }
        Ok(hyper::body::Bytes::from(buf))
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| {
            error(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {BODY_TIMEOUT:?}"),
            )
        })?
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    read_json_limited(req, MAX_CONTROL_BODY).await
}

async fn read_json_limited<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Response<Body>> {
    let bytes = read_body(req, limit).await?;
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// Write one audit event now (admin actions whose state change is committed elsewhere, e.g.
/// by the controller): the admin is answered only once it is durable.
async fn audit_now(
    state: &Arc<HubState>,
    kind: &'static str,
    detail: String,
) -> Result<(), Response<Body>> {
    in_blocking(state, move |s| {
        s.store.write(|tx| {
            tx.append(
                &AUDIT,
                &AuditEvent {
                    at_ms: now_ms(),
                    kind: kind.to_string(),
                    cluster: None,
                    actor: "admin".into(),
                    detail,
                },
            )?;
            Ok::<_, RegistryError>(())
        })
    })
    .await
    .map_err(|_| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the action was done, but its audit event ({kind}) could not be stored"),
        )
    })
}

/// Decode `%XX` and `+` in a query value.
fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Most events one audit request returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;
/// Rows one audit request reads at most; a page that needs more ends early with a cursor.
const AUDIT_SCAN_BUDGET: u64 = 100_000;
const AUDIT_CHUNK: u64 = 4_096;
/// Audit times come from the hub's wall clock, which can step backwards. `since`/`until` use
/// the log's order to skip rows, allowing for a clock step up to this size.
pub const AUDIT_CLOCK_SLACK_MS: u64 = 3_600_000;

fn audit_query(req: &Request<Incoming>) -> Result<(AuditFilter, Option<u64>, usize), String> {
    let mut f = AuditFilter::default();
    let mut before = None;
    let mut limit = 100;
    for kv in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v).ok_or_else(|| format!("bad percent-encoding in {k}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}={v:?}: expected a non-negative integer"))
        };
        match k {
            "kind" => f.kind = Some(v),
            "cluster" => f.cluster = Some(v),
            "actor" => f.actor = Some(v),
            "since" => f.since_ms = Some(num(&v)?),
            "until" => f.until_ms = Some(num(&v)?),
            "before" => before = Some(num(&v)?),
            "limit" => limit = (num(&v)? as usize).clamp(1, MAX_AUDIT_LIMIT),
            _ => {
                return Err(format!(
                    "unknown audit query parameter {k:?} (kind, cluster, actor, since, until, before, limit)"
                ))
            }
        }
    }
    Ok((f, before, limit))
}

fn audit_matches(f: &AuditFilter, e: &AuditEvent) -> bool {
    f.kind.as_ref().is_none_or(|k| *k == e.kind)
        && f.actor.as_ref().is_none_or(|a| *a == e.actor)
        && f.cluster
            .as_ref()
            .is_none_or(|c| Some(c) == e.cluster.as_ref())
        && f.since_ms.is_none_or(|t| e.at_ms >= t)
        && f.until_ms.is_none_or(|t| e.at_ms <= t)
}

/// The first sequence number whose event is later than `t`, assuming times grow along the
/// log (binary search; a few reads whatever the log's size).
fn first_seq_after(tx: &ReadTx, t: u64, end: u64) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (1u64, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match tx.range(&AUDIT, mid, 1)?.into_iter().next() {
            Some((seq, e)) if e.at_ms <= t => lo = seq.max(mid) + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The newest `limit` events matching `f` with a sequence number below `before`, reading at
/// most about `AUDIT_SCAN_BUDGET` rows.
pub fn audit_page(
    tx: &ReadTx,
    f: &AuditFilter,
    before: Option<u64>,
    limit: usize,
) -> Result<AuditPage, StoreError> {
    let Some((last, _)) = tx.tail(&AUDIT, 1)?.into_iter().next() else {
        return Ok(AuditPage::default());
    };
    let mut upper = before.unwrap_or(u64::MAX).min(last + 1);
    if let Some(until) = f.until_ms {
        upper = upper.min(first_seq_after(
            tx,
            until.saturating_add(AUDIT_CLOCK_SLACK_MS),
            last + 1,
        )?);
    }
    let floor_ms = f.since_ms.map(|t| t.saturating_sub(AUDIT_CLOCK_SLACK_MS));
    let mut found = Vec::new();
    let mut scanned = 0u64;
    let mut done = false;
    'scan: while upper > 1 && scanned < AUDIT_SCAN_BUDGET {
        let lower = upper.saturating_sub(AUDIT_CHUNK).max(1);
        let rows = tx.range(&AUDIT, lower, (upper - lower) as usize)?;
        scanned += rows.len() as u64;
        for (seq, e) in rows.into_iter().rev() {
            if seq >= upper {
                continue;
            }
            if floor_ms.is_some_and(|floor| e.at_ms < floor) {
                done = true;
                break 'scan;
            }
            if audit_matches(f, &e) {
                found.push(AuditView {
                    seq,
                    at_ms: e.at_ms,
                    kind: e.kind,
                    cluster: e.cluster,
                    actor: e.actor,
                    detail: e.detail,
                });
                if found.len() >= limit {
                    upper = seq;
                    break 'scan;
                }
            }
        }
        upper = lower;
    }
    found.reverse();
    Ok(AuditPage {
        events: found,
        next_before: (!done && upper > 1).then_some(upper),
        scanned,
    })
}

fn work_error(e: &crate::works::WorkError) -> Response<Body> {
    use crate::works::WorkError;
    let status = match e {
        WorkError::NotFound(_) => StatusCode::NOT_FOUND,
        WorkError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        WorkError::Invalid(_) | WorkError::Bundle(_) => StatusCode::UNPROCESSABLE_ENTITY,
        WorkError::Store(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        WorkError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    })
}

fn query_flag(req: &Request<Incoming>, key: &str) -> bool {
    matches!(query_param(req, key), Some("true" | "1"))
}

fn query_usize(req: &Request<Incoming>, key: &str) -> Option<usize> {
    query_param(req, key).and_then(|v| v.parse().ok())
}

async fn in_blocking<T: Send + 'static>(
    state: &Arc<HubState>,
    f: impl FnOnce(&HubState) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, Response<Body>> {
    let state = state.clone();
    match tokio::task::spawn_blocking(move || f(&state)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(registry_status(&e), e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

pub fn cluster_view(state: &HubState, rec: ClusterRecord) -> ClusterView {
    let health = state.health.lock().unwrap_or_else(|p| p.into_inner());
    let live_state = match rec.state {
        tether_store::hub::ClusterState::Denied => rec.state,
        persisted => health.state(&rec.name).unwrap_or(persisted),
    };
    ClusterView {
        connected: health.is_connected(&rec.name),
        state: live_state,
        last_seen_ms: health.last_heartbeat(&rec.name).or(rec.last_seen_ms),
        name: rec.name,
        labels: rec.labels,
        facts: rec.facts,
        pins: rec.pins,
        conditions: rec.conditions,
        joined_at_ms: rec.joined_at_ms,
        cert_serial: rec.cert_serial,
        cert_not_after_ms: rec.cert_not_after_ms,
    }
}

async fn handle(state: Arc<HubState>, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => {
            return match state.store_trouble() {
                None => Response::new(full("ok\n")),
                Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
            }
        }
        (&Method::GET, "/metrics") => {
            state.store_trouble();
            return Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(full(state.metrics.render()))
                .unwrap_or_else(|_| Response::new(full("")));
        }
        _ => {}
    }
    if !peer.is_admin {
        state.metrics.admin_unauthorized.inc();
        let who = match &peer.fingerprint {
            None => "no client certificate".to_string(),
            Some(fp) => format!("certificate sha256 {fp} is not an admin credential"),
        };
        // Coalesced: a flood of 401s costs a counter and a couple of audit rows a minute.
        let first = state.registry.coalesced.record(
            "admin_unauthorized",
            "anonymous",
            format!("{method} {path} from {}: {who}", peer.addr),
            &peer.addr.to_string(),
            now_ms(),
        );
        if first {
            tracing::warn!(peer = %peer.addr, %method, %path, "admin request refused: {who} (more this minute are only counted)");
        }
        return error(
            StatusCode::UNAUTHORIZED,
            "an admin client certificate is required (use the tetherctl.yaml written by `tether-hub init`)",
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = route(&state, &method, &segments, req).await;
    let response = result.unwrap_or_else(|r| r);
    tracing::debug!(%method, %path, status = %response.status(), "admin request");
    response
}

async fn route(
    state: &Arc<HubState>,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    match (method, seg) {
        (&Method::GET, ["v1", "clusters"]) => {
            let rows = in_blocking(state, |s| Ok(s.store.read(|tx| tx.list(&CLUSTERS))?)).await?;
            let views: Vec<_> = rows
                .into_iter()
                .map(|(_, r)| cluster_view(state, r))
                .collect();
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::GET, ["v1", "clusters", name]) => {
            let n = name.to_string();
            let rec = in_blocking(state, move |s| {
                Ok(s.store.read(|tx| tx.get(&CLUSTERS, &n))?)
            })
            .await?;
            match rec {
                Some(r) => Ok(json(StatusCode::OK, &cluster_view(state, r))),
                None => Err(error(
                    StatusCode::NOT_FOUND,
                    format!("cluster {name:?} not found"),
                )),
            }
        }
        (&Method::POST, ["v1", "clusters", name, "approve"]) => {
            let n = name.to_string();
            let rec =
                in_blocking(state, move |s| s.registry.approve(&n, "admin", now_ms())).await?;
            state.health_event(|h| {
                h.track(&rec.name, rec.state, None, now_ms());
                None
            });
            tracing::info!(cluster = %name, "join request approved by admin");
            Ok(json(
                StatusCode::OK,
                &ActionResult {
                    cluster: name.to_string(),
                    action: "approved".into(),
                    session_closed: false,
                },
            ))
        }
        (&Method::POST, ["v1", "clusters", name, action @ ("deny" | "detach")]) => {
            let body: DenyRequest = read_json(req).await?;
            let n = name.to_string();
            let detach = *action == "detach";
            let reason = if body.reason.is_empty() {
                format!("{action} by admin")
            } else {
                body.reason
            };
            let why = reason.clone();
            let revocation = in_blocking(state, move |s| {
                if detach {
                    s.registry.detach(&n, "admin", now_ms())
                } else {
                    s.registry.deny(&n, &why, "admin", now_ms())
                }
            })
            .await?;
            let code = if detach {
                close_code::DETACHED
            } else {
                close_code::DENIED
            };
            let session_closed = revocation
                .as_ref()
                .is_some_and(|r| state.enforce_revocation(r, code, &reason));
            tracing::warn!(cluster = %name, action, session_closed, "cluster {action} by admin");
            Ok(json(
                StatusCode::OK,
                &ActionResult {
                    cluster: name.to_string(),
                    action: if detach { "detached" } else { "denied" }.into(),
                    session_closed,
                },
            ))
        }
        (&Method::POST, ["v1", "clusters", name, "facts"]) => {
            let body: crate::api::PinFactsRequest = read_json(req).await?;
            let n = name.to_string();
            let rec = in_blocking(state, move |s| {
                s.registry.pin_facts(&n, &body, "admin", now_ms())
            })
            .await?;
            state.decisions_wake.notify_one();
            tracing::info!(cluster = %name, pins = %crate::facts::describe_pins(&rec.pins), "facts pinned by admin");
            Ok(json(StatusCode::OK, &cluster_view(state, rec)))
        }
        (&Method::POST, ["v1", "backup"]) => {
            let body: crate::api::BackupRequest = read_json(req).await?;
            let to = std::path::PathBuf::from(&body.to);
            if !to.is_absolute() {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "backup path {:?} must be absolute (it is a path on the hub's machine)",
                        body.to
                    ),
                ));
            }
            if to.exists() {
                return Err(error(
                    StatusCode::CONFLICT,
                    format!("{} exists; a backup never overwrites a file", to.display()),
                ));
            }
            let info = in_blocking(state, move |s| {
                let info = crate::backup::write_backup(&s.store, &to, now_ms())?;
                s.audit_async(
                    "backup_written",
                    None,
                    "admin",
                    format!("{} ({} rows, {} bytes)", info.path, info.rows, info.bytes),
                );
                Ok(info)
            })
            .await?;
            tracing::info!(path = %info.path, rows = info.rows, bytes = info.bytes, "backup written");
            Ok(json(StatusCode::OK, &info))
        }
        (&Method::GET, ["v1", "join-requests"]) => {
            let rows =
                in_blocking(state, |s| Ok(s.store.read(|tx| tx.list(&JOIN_REQUESTS))?)).await?;
            let views: Vec<_> = rows
                .into_iter()
                .map(|(_, r)| {
                    let (st, reason) = match r.decision {
                        JoinDecision::Pending => (crate::api::JoinState::Pending, None),
                        JoinDecision::Approved { .. } => (crate::api::JoinState::Approved, None),
                        JoinDecision::Denied { reason } => {
                            (crate::api::JoinState::Denied, Some(reason))
                        }
                    };
                    JoinRequestView {
                        name: r.name,
                        state: st,
                        reason,
                        token_id: r.token_id,
                        labels: r.labels,
                        facts: r.facts,
                        peer_addr: r.peer_addr,
                        created_at_ms: r.created_at_ms,
                    }
                })
                .collect();
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::POST, ["v1", "tokens"]) => {
            let body: CreateTokenRequest = read_json(req).await?;
            let spec = TokenSpec {
                ttl: Duration::from_secs(body.ttl_secs),
                uses: body.uses,
                auto_approve: body.auto_approve,
                labels: body.labels,
                allowed_labels: body.allowed_labels,
            };
            let created = in_blocking(state, move |s| {
                s.registry.create_token(&spec, "admin", now_ms())
            })
            .await?;
            tracing::info!(token = %created.id, "bootstrap token created");
            Ok(json(StatusCode::CREATED, &created))
        }
        (&Method::GET, ["v1", "tokens"]) => {
            let rows = in_blocking(state, |s| Ok(s.store.read(|tx| tx.list(&TOKENS))?)).await?;
            let views: Vec<_> = rows
                .into_iter()
                .map(|(_, t)| TokenView {
                    id: t.id,
                    expires_at_ms: t.expires_at_ms,
                    max_uses: t.max_uses,
                    used: t.used,
                    auto_approve: t.auto_approve,
                    labels: t.labels,
                    allowed_labels: t.allowed_labels,
                    revoked_at_ms: t.revoked_at_ms,
                })
                .collect();
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::POST, ["v1", "tokens", id, "revoke"]) => {
            let id = id.to_string();
            let t = in_blocking(state, move |s| {
                s.registry.revoke_token(&id, "admin", now_ms())
            })
            .await?;
            tracing::warn!(token = %t.id, "bootstrap token revoked by admin");
            Ok(json(
                StatusCode::OK,
                &TokenView {
                    id: t.id,
                    expires_at_ms: t.expires_at_ms,
                    max_uses: t.max_uses,
                    used: t.used,
                    auto_approve: t.auto_approve,
                    labels: t.labels,
                    allowed_labels: t.allowed_labels,
                    revoked_at_ms: t.revoked_at_ms,
                },
            ))
        }
        (&Method::GET, ["v1", "audit"]) => {
            // The original shape (a bare array), kept for older tetherctl; filters work here
            // too, the cursor only on /v1/audit/page.
            let (filter, before, limit) =
                audit_query(&req).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
            let page = in_blocking(state, move |s| {
                Ok(s.store.read(|tx| audit_page(tx, &filter, before, limit))?)
            })
            .await?;
            Ok(json(StatusCode::OK, &page.events))
        }
        (&Method::GET, ["v1", "audit", "page"]) => {
            let (filter, before, limit) =
                audit_query(&req).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
            let page = in_blocking(state, move |s| {
                Ok(s.store.read(|tx| audit_page(tx, &filter, before, limit))?)
            })
            .await?;
            Ok(json(StatusCode::OK, &page))
        }
        (&Method::PUT, ["v1", "works"]) => {
            let doc: tether_protocol::work::WorkDocument =
                read_json_limited(req, MAX_WORK_BODY).await?;
            let name = doc.metadata.name.clone();
            let st = state.clone();
            let applied = tokio::task::spawn_blocking(move || {
                crate::works::apply(&st.store, &st.works, doc, st.cfg.limits.max_frame, "admin")
            })
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let (outcome, generation) = applied.map_err(|e| work_error(&e))?;
            let status = if outcome == crate::works::ApplyOutcome::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json(
                status,
                &ApplyResult {
                    name,
                    generation,
                    outcome,
                },
            ))
        }
        (&Method::GET, ["v1", "works"]) => {
            let views = in_blocking(state, |s| {
                let decisions = s.decisions.snapshot();
                Ok(s.store
                    .read(|tx| crate::work_views::summaries(tx, &decisions))?)
            })
            .await?;
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::GET, ["v1", "works", name]) => {
            let n = name.to_string();
            let detail = in_blocking(state, move |s| {
                let decisions = s.decisions.snapshot();
                Ok(s.store
                    .read(|tx| crate::work_views::detail(tx, &n, &decisions))?)
            })
            .await?;
            match detail {
                Some(d) => Ok(json(StatusCode::OK, &d)),
                None => Err(error(
                    StatusCode::NOT_FOUND,
                    format!("work {name:?} not found"),
                )),
            }
        }
        (&Method::DELETE, ["v1", "works", name]) => {
            let orphan = query_flag(&req, "orphan");
            let n = name.to_string();
            let st = state.clone();
            tokio::task::spawn_blocking(move || {
                crate::works::delete(&st.store, &st.works, &n, orphan, "admin")
            })
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| work_error(&e))?;
            Ok(json(
                StatusCode::OK,
                &DeleteResult {
                    name: name.to_string(),
                    orphan,
                },
            ))
        }
        (&Method::GET, ["v1", "works", name, "placement"]) => {
            let d = state
                .decisions
                .snapshot()
                .get(*name)
                .cloned()
                .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("work {name:?} not found")))?;
            Ok(json(StatusCode::OK, &d.choices))
        }
        (&Method::GET, ["v1", "works", name, "rollout"]) => {
            let d = state
                .decisions
                .snapshot()
                .get(*name)
                .cloned()
                .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("work {name:?} not found")))?;
            let view = d.rollout.clone().unwrap_or(crate::controller::RolloutView {
                generation: d.generation,
                phase: crate::api::RolloutPhase::All,
                reason: "no progressive rollout: every selected cluster at once".into(),
                total: d.selected.len(),
                admitted: d.selected.len(),
                ..Default::default()
            });
            Ok(json(StatusCode::OK, &view))
        }
        (&Method::POST, ["v1", "works", name, action @ ("pause" | "resume")]) => {
            let paused = *action == "pause";
            let st = state.clone();
            let n = name.to_string();
            tokio::task::spawn_blocking(move || crate::controller::set_paused(&st, &n, paused))
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| work_error(&e))?;
            let (kind, verb) = if paused {
                ("rollout_paused", "paused")
            } else {
                ("rollout_resumed", "resumed")
            };
            audit_now(state, kind, format!("rollout of work {name} {verb}")).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"work": name, "paused": paused}),
            ))
        }
        (&Method::POST, ["v1", "works", name, "undo"]) => {
            let to = query_usize(&req, "to_generation").map(|g| g as u64);
            let st = state.clone();
            let n = name.to_string();
            let (from, generation) = tokio::task::spawn_blocking(move || {
                let from = st
                    .works
                    .snapshot()
                    .get(n.as_str())
                    .map(|e| e.record.generation);
                crate::controller::undo(&st, &n, to, "admin").map(|g| (from, g))
            })
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| work_error(&e))?;
            let from = from.unwrap_or(generation.saturating_sub(1));
            // `undo` defaults to the generation before the current one.
            let to = to.unwrap_or(from.saturating_sub(1));
            audit_now(
                state,
                "rollout_undone",
                format!("work {name} rolled back from generation {from} to generation {to} (as new generation {generation})"),
            )
            .await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"work": name, "generation": generation}),
            ))
        }
        (&Method::GET, ["v1", "works", name, "rendered", cluster]) => {
            let snapshot = state.works.snapshot();
            let entry = snapshot
                .get(*name)
                .filter(|e| e.record.deleted.is_none())
                .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("work {name:?} not found")))?;
            let d = state.decisions.snapshot().get(*name).cloned();
            let assignment = d
                .as_ref()
                .and_then(|d| d.selected.get(*cluster).cloned())
                .ok_or_else(|| {
                    error(
                        StatusCode::NOT_FOUND,
                        format!("work {name:?} is not placed on cluster {cluster:?}"),
                    )
                })?;
            let manifests =
                crate::render::render_assignment(&entry.record.document.spec, &assignment)
                    .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
            Ok(json(StatusCode::OK, &manifests))
        }
        (&Method::GET, ["v1", "clusters", name, "status-log"]) => {
            let limit = query_usize(&req, "limit").unwrap_or(1000).min(100_000);
            let n = name.to_string();
            let rows = in_blocking(state, move |s| {
                Ok(s.store.read(|tx| {
                    tx.list_prefix(
                        &tether_store::hub::STATUS_HISTORY,
                        &tether_store::hub::cluster_prefix(&n),
                    )
                })?)
                .map(|rows| {
                    let mut mine: Vec<StatusLogView> = rows
                        .into_iter()
                        .map(|(_, e)| StatusLogView {
                            log_seq: e.seq,
                            cluster: e.cluster,
                            seq: e.seq,
                            work: e.status.work,
                            generation: e.status.generation,
                            phase: e.status.phase,
                            received_at_ms: e.received_at_ms,
                        })
                        .collect();
                    let skip = mine.len().saturating_sub(limit);
                    mine.drain(..skip);
                    mine
                })
            })
            .await?;
            Ok(json(StatusCode::OK, &rows))
        }
        _ => Err(error(
            StatusCode::NOT_FOUND,
            format!("no route for {method} /{}", seg.join("/")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_store::Store;

    fn event(at_ms: u64, kind: &str, actor: &str) -> AuditEvent {
        AuditEvent {
            at_ms,
            kind: kind.into(),
            cluster: None,
            actor: actor.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn audit_pages_reach_every_event_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a.redb")).unwrap();
        let n = AUDIT_SCAN_BUDGET + 50_000;
        store
            .write(|tx| {
                tx.append(&AUDIT, &event(1_000, "token_created", "admin"))?;
                for i in 0..n {
                    // 100 ms apart: the log spans more than the clock slack.
                    tx.append(
                        &AUDIT,
                        &event(10_000_000 + i * 100, "cert_renewed", "agent:a"),
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let kind = AuditFilter {
            kind: Some("token_created".into()),
            ..Default::default()
        };
        // More rows than one request may read: the first page ends early with a cursor.
        let p1 = store.read(|tx| audit_page(tx, &kind, None, 10)).unwrap();
        assert!(p1.events.is_empty());
        assert!(p1.scanned <= AUDIT_SCAN_BUDGET + AUDIT_CHUNK);
        let p2 = store
            .read(|tx| audit_page(tx, &kind, p1.next_before, 10))
            .unwrap();
        assert_eq!(p2.events.len(), 1);
        assert_eq!(p2.events[0].seq, 1);
        assert_eq!(p2.next_before, None);
        // `until` jumps over the newer rows by binary search: one page, few rows read.
        let until = AuditFilter {
            until_ms: Some(5_000),
            ..Default::default()
        };
        let p = store.read(|tx| audit_page(tx, &until, None, 10)).unwrap();
        assert_eq!(p.events.len(), 1);
        assert!(p.scanned < 10, "{}", p.scanned);
        // `since` stops the scan (past the clock slack) instead of reading to the start.
        let since = AuditFilter {
            since_ms: Some(10_000_000 + (n - 100) * 100),
            ..Default::default()
        };
        let p = store
            .read(|tx| audit_page(tx, &since, None, 10_000))
            .unwrap();
        assert_eq!(p.events.len(), 100);
        assert_eq!(p.next_before, None);
        assert!(p.scanned < AUDIT_SCAN_BUDGET, "{}", p.scanned);
        // A limit-sized page continues from its oldest event.
        let all = AuditFilter::default();
        let p = store.read(|tx| audit_page(tx, &all, None, 3)).unwrap();
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![n - 1, n, n + 1]
        );
        assert_eq!(p.next_before, Some(n - 1));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            percent_decode("token%3Aab+c").as_deref(),
            Some("token:ab c")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn limits_are_named_in_human_units() {
        assert_eq!(human_bytes(MAX_WORK_BODY), "32 MiB");
        assert_eq!(human_bytes(MAX_CONTROL_BODY), "64 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
