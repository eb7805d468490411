//! The admin API: HTTPS on a separate (by default loopback) listener.
//!
//! Authentication: every `/v1/` route requires a client certificate whose SHA-256 fingerprint is
//! a live admin credential (`init`'s, or one added with `tetherctl admins add`). Cluster
//! certificates chain to the same CA but are never admin credentials. `/metrics` and `/healthz`
//! are readable without a certificate so that Prometheus can scrape; they reveal counts, not
//! cluster data.
//!
//! Authorization: each route needs a role (`routes::required_role`, deny by default), checked
//! on every request against the credential as it is now; revoking a credential also closes its
//! live connections.

use crate::api::*;
use crate::identity::registry::RegistryError;
use crate::state::HubState;
use crate::util::now_ms;
use bytes_body::{full, Body};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_store::hub::{AuditEvent, AUDIT};
use tether_transport::certs;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

/// TLS handshake, and each request's headers (which also bounds the idle time between
/// requests on a kept-alive connection: hyper times the wait for the next request head).
pub(crate) const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Receiving a request body (32 MiB at most).
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard limit on one connection's life, whatever it does: a client that stops reading a
/// response would otherwise hold its slot forever.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Connections not (yet) known to come from an admin: TLS handshakes in progress, `/metrics`
/// scrapes, refused requests. When full, the oldest is closed to make room, so a flood of idle
/// or slow connections cannot lock an admin out (it only has to finish its handshake before
/// this many newer connections arrive).
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 64;
/// Connections authenticated as an admin; more get a 503 at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// How often coalesced audit events (401s, bad-token joins) are handed to the audit writer.
pub(crate) const AUDIT_FLUSH: Duration = Duration::from_secs(1);

pub(crate) mod bytes_body {
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
        .is_some_and(|fp| state.admins.lookup(fp, now_ms()).is_some());
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
        fingerprint: fingerprint.clone(),
    };
    let watch_state = state.clone();
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
    let served = builder.serve_connection(io, svc);
    match (is_admin, fingerprint) {
        (true, Some(fp)) => {
            tokio::select! {
                r = served => if let Err(e) = r {
                    tracing::debug!(peer = %addr, error = %e, "admin connection ended with error");
                },
                () = revoked(&watch_state, &fp) => {
                    tracing::info!(peer = %addr, "admin connection closed: its credential was revoked");
                }
            }
        }
        _ => {
            if let Err(e) = served.await {
                tracing::debug!(peer = %addr, error = %e, "admin connection ended with error");
            }
        }
    }
}

/// Resolves once the credential with this fingerprint is no longer live.
async fn revoked(state: &HubState, fingerprint: &str) {
    let mut changes = state.admins.watch();
    loop {
        if state.admins.lookup(fingerprint, now_ms()).is_none() {
            return;
        }
        if changes.changed().await.is_err() {
            // The hub is shutting down; the connection ends with it.
            std::future::pending::<()>().await;
        }
    }
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// A JSON body already serialized (the OpenAPI document, made once).
pub(crate) fn json_text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    json(status, &ApiError { error: msg.into() })
}

pub(crate) fn registry_status(e: &RegistryError) -> StatusCode {
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
pub(crate) async fn read_body(
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

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    read_json_limited(req, MAX_CONTROL_BODY).await
}

pub(crate) async fn read_json_limited<T: serde::de::DeserializeOwned>(
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
pub(crate) async fn audit_now(
    state: &Arc<HubState>,
    actor: &str,
    kind: &'static str,
    detail: String,
) -> Result<(), Response<Body>> {
    let actor = actor.to_string();
    in_blocking(state, move |s| {
        s.store.write(|tx| {
            tx.append(
                &AUDIT,
                &AuditEvent {
                    at_ms: now_ms(),
                    kind: kind.to_string(),
                    cluster: None,
                    actor,
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
pub(crate) fn percent_decode(v: &str) -> Option<String> {
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

pub(crate) fn work_error(e: &crate::works::WorkError) -> Response<Body> {
    error(work_error_status(e), e.to_string())
}

pub(crate) fn work_error_status(e: &crate::works::WorkError) -> StatusCode {
    use crate::works::WorkError;
    match e {
        WorkError::NotFound(_) => StatusCode::NOT_FOUND,
        WorkError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        WorkError::Invalid(_) | WorkError::Bundle(_) => StatusCode::UNPROCESSABLE_ENTITY,
        // The repository did not answer (or not in time): the document may be fine.
        WorkError::Source(e) if e.is_remote() => StatusCode::BAD_GATEWAY,
        WorkError::Source(_) => StatusCode::UNPROCESSABLE_ENTITY,
        WorkError::Store(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        WorkError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    })
}

pub(crate) fn query_flag(req: &Request<Incoming>, key: &str) -> bool {
    matches!(query_param(req, key), Some("true" | "1"))
}

pub(crate) fn query_usize(req: &Request<Incoming>, key: &str) -> Option<usize> {
    query_param(req, key).and_then(|v| v.parse().ok())
}

pub(crate) async fn in_blocking<T: Send + 'static>(
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
    let caller = peer
        .fingerprint
        .as_deref()
        .and_then(|fp| state.admins.lookup(fp, now_ms()));
    let Some(caller) = caller else {
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
            "a live admin client certificate is required (the tetherctl.yaml written by `tether-hub init`, or one from `tetherctl admins add`)",
        );
    };
    if let Some(why) = cross_site(&req) {
        return error(StatusCode::FORBIDDEN, why);
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Some(needed) = super::routes::required_role(&method, &segments) else {
        return no_route(&method, &segments);
    };
    if caller.role < needed {
        state.metrics.admin_forbidden.inc();
        let first = state.registry.coalesced.record(
            "admin_forbidden",
            &caller.actor(),
            format!("{method} {path} needs role {}", needed.as_str()),
            &peer.addr.to_string(),
            now_ms(),
        );
        if first {
            tracing::warn!(actor = %caller.actor(), %method, %path, "admin request refused: needs role {}", needed.as_str());
        }
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "{method} {path} needs the {} role; {} has the {} role",
                needed.as_str(),
                caller.name,
                caller.role.as_str()
            ),
        );
    }
    let result = super::routes::route(&state, &caller, &method, &segments, req).await;
    let response = result.unwrap_or_else(|r| r);
    tracing::debug!(%method, %path, status = %response.status(), "admin request");
    response
}

/// Why a request that changes something is refused as coming from another site, if it is.
///
/// A browser holding an admin certificate (the dashboard's) presents it to this hub whatever
/// page makes the request, and a plain cross-site form POST needs no CORS permission: without
/// this, any page the operator visits could approve or detach clusters. Browsers mark such
/// requests (`Sec-Fetch-Site`, `Origin`); tetherctl and scripts send neither and pass. Reads
/// need no check: the same-origin policy keeps their answers from the other site.
pub(crate) fn cross_site<B>(req: &Request<B>) -> Option<String> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!(
                "refused: a {site} request from a browser may not change anything (Sec-Fetch-Site)"
            ));
        }
    }
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or("");
        let same = origin
            .strip_prefix("https://")
            .is_some_and(|o| !host.is_empty() && o == host);
        if !same {
            return Some(format!(
                "refused: a request from origin {origin:?} may not change anything on {host:?}"
            ));
        }
    }
    None
}

pub(crate) fn no_route(method: &Method, seg: &[&str]) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        format!("no route for {method} /{}", seg.join("/")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            percent_decode("token%3Aab+c").as_deref(),
            Some("token:ab c")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .uri("/v1/clusters/a/approve");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn cross_site_changes_are_refused_and_reads_and_clients_are_not() {
        let host = ("host", "127.0.0.1:7444");
        // tetherctl: no browser headers.
        assert_eq!(cross_site(&request(Method::POST, &[host])), None);
        // The dashboard itself.
        let own = [
            host,
            ("origin", "https://127.0.0.1:7444"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(cross_site(&request(Method::POST, &own)), None);
        // Another page's form or fetch.
        for bad in [
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "http://127.0.0.1:7444")],
            vec![host, ("origin", "null")],
            vec![("origin", "https://127.0.0.1:7444")],
        ] {
            assert!(
                cross_site(&request(Method::POST, &bad)).is_some(),
                "{bad:?}"
            );
            assert!(
                cross_site(&request(Method::DELETE, &bad)).is_some(),
                "{bad:?}"
            );
            assert_eq!(cross_site(&request(Method::GET, &bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn limits_are_named_in_human_units() {
        assert_eq!(human_bytes(MAX_WORK_BODY), "32 MiB");
        assert_eq!(human_bytes(MAX_CONTROL_BODY), "64 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
