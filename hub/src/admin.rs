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
use std::sync::Arc;
use std::time::Duration;
use tether_protocol::close_code;
use tether_store::hub::{ClusterRecord, JoinDecision, AUDIT, CLUSTERS, JOIN_REQUESTS, TOKENS};
use tether_transport::certs;
use tokio::task::JoinSet;

/// Works carry manifests; the frame limit (4 MiB compressed) is enforced separately.
const MAX_BODY: usize = 32 * 1024 * 1024;
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

mod bytes_body {
    use http_body_util::Full;
    pub type Body = Full<hyper::body::Bytes>;
    pub fn full(s: impl Into<hyper::body::Bytes>) -> Body {
        Full::new(s.into())
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<HubState>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        conns.spawn(async move {
            let tls = match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let is_admin = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|c| state.admin_fingerprints.contains(&certs::fingerprint(c)));
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, req, is_admin).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(TLS_TIMEOUT)
                .serve_connection(io, svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with error");
            }
        });
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
        RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = tokio::time::timeout(TLS_TIMEOUT, limited.collect())
        .await
        .map_err(|_| {
            error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            )
        })?
        .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))?
        .to_bytes();
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn work_error(e: &crate::works::WorkError) -> Response<Body> {
    use crate::works::WorkError;
    let status = match e {
        WorkError::NotFound(_) => StatusCode::NOT_FOUND,
        WorkError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        WorkError::Invalid(_) | WorkError::Bundle(_) => StatusCode::UNPROCESSABLE_ENTITY,
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
        state: live_state.as_str().to_string(),
        last_seen_ms: health.last_heartbeat(&rec.name).or(rec.last_seen_ms),
        name: rec.name,
        labels: rec.labels,
        facts: rec.facts,
        conditions: rec.conditions,
        joined_at_ms: rec.joined_at_ms,
        cert_serial: rec.cert_serial,
        cert_not_after_ms: rec.cert_not_after_ms,
    }
}

async fn handle(state: Arc<HubState>, req: Request<Incoming>, is_admin: bool) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return Response::new(full("ok\n")),
        (&Method::GET, "/metrics") => {
            return Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(full(state.metrics.render()))
                .unwrap_or_else(|_| Response::new(full("")))
        }
        _ => {}
    }
    if !is_admin {
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
        (&Method::GET, ["v1", "join-requests"]) => {
            let rows =
                in_blocking(state, |s| Ok(s.store.read(|tx| tx.list(&JOIN_REQUESTS))?)).await?;
            let views: Vec<_> = rows
                .into_iter()
                .map(|(_, r)| {
                    let (st, reason) = match r.decision {
                        JoinDecision::Pending => ("Pending", None),
                        JoinDecision::Approved { .. } => ("Approved", None),
                        JoinDecision::Denied { reason } => ("Denied", Some(reason)),
                    };
                    JoinRequestView {
                        name: r.name,
                        state: st.into(),
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
                })
                .collect();
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::GET, ["v1", "audit"]) => {
            let limit = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(100)
                .min(10_000);
            let rows = in_blocking(state, move |s| {
                Ok(s.store.read(|tx| tx.tail(&AUDIT, limit))?)
            })
            .await?;
            let views: Vec<_> = rows
                .into_iter()
                .map(|(seq, e)| AuditView {
                    seq,
                    at_ms: e.at_ms,
                    kind: e.kind,
                    cluster: e.cluster,
                    actor: e.actor,
                    detail: e.detail,
                })
                .collect();
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::PUT, ["v1", "works"]) => {
            let doc: tether_protocol::work::WorkDocument = read_json(req).await?;
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
                    outcome: format!("{outcome:?}"),
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
                phase: "All: no progressive rollout; every selected cluster at once".into(),
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
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"work": name, "paused": paused}),
            ))
        }
        (&Method::POST, ["v1", "works", name, "undo"]) => {
            let to = query_usize(&req, "to_generation").map(|g| g as u64);
            let st = state.clone();
            let n = name.to_string();
            let generation =
                tokio::task::spawn_blocking(move || crate::controller::undo(&st, &n, to, "admin"))
                    .await
                    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                    .map_err(|e| work_error(&e))?;
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
                            phase: e.status.phase.as_str().to_string(),
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
