//! Routes for clusters: list, get, approve, deny, detach, pin facts, labels, status log.

use crate::admin::server::bytes_body::Body;
use crate::admin::server::*;
use crate::api::*;
use crate::identity::admins::Caller;
use crate::state::HubState;
use crate::util::now_ms;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use tether_protocol::close_code;
use tether_store::hub::{ClusterRecord, CLUSTERS};

pub(super) async fn route(
    state: &Arc<HubState>,
    who: &Caller,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let actor = who.actor();
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
            in_scope(state, who, name).await?;
            let n = name.to_string();
            let rec = in_blocking(state, move |s| s.registry.approve(&n, &actor, now_ms())).await?;
            state.health_event(|h| {
                h.track(&rec.name, rec.state, None, now_ms());
                None
            });
            state.changes.cluster(name);
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
            in_scope(state, who, name).await?;
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
                    s.registry.detach(&n, &actor, now_ms())
                } else {
                    s.registry.deny(&n, &why, &actor, now_ms())
                }
            })
            .await?;
            state.changes.cluster(name);
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
            in_scope(state, who, name).await?;
            let body: crate::api::PinFactsRequest = read_json(req).await?;
            let n = name.to_string();
            let rec = in_blocking(state, move |s| {
                s.registry.pin_facts(&n, &body, &actor, now_ms())
            })
            .await?;
            state.changes.cluster(name);
            tracing::info!(cluster = %name, pins = %crate::fleet::facts::describe_pins(&rec.pins), "facts pinned by admin");
            Ok(json(StatusCode::OK, &cluster_view(state, rec)))
        }
        (&Method::POST, ["v1", "clusters", name, "labels"]) => {
            let labels = in_scope(state, who, name).await?;
            let body: LabelsRequest = read_json(req).await?;
            if let Some(mut after) = labels {
                // An operator may not move a cluster out of its own cluster set either.
                after.extend(body.set.clone());
                after.retain(|k, _| !body.remove.contains(k));
                super::cluster_in_scope(who, name, &after)?;
            }
            let n = name.to_string();
            let rec = in_blocking(state, move |s| {
                s.registry.set_labels(&n, &body, &actor, now_ms())
            })
            .await?;
            state.changes.cluster(name);
            tracing::info!(cluster = %name, labels = ?rec.labels, "labels changed by admin");
            Ok(json(StatusCode::OK, &cluster_view(state, rec)))
        }
        (&Method::GET, ["v1", "clusters", name, "status-log"]) => {
            let limit = query_usize(&req, "limit").unwrap_or(1000).min(100_000);
            let n = name.to_string();
            let rows = in_blocking(state, move |s| {
                Ok(s.store
                    .read(|tx| crate::ingest::history::history_of(tx, &n))?)
                .map(|rows| {
                    let mut mine: Vec<StatusLogView> = rows
                        .into_iter()
                        .map(|e| StatusLogView {
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
        _ => Err(no_route(method, seg)),
    }
}

/// 403 unless the cluster (or its join request) is in the caller's cluster set. Returns the
/// labels it was judged by (`None` when the caller's scope does not restrict clusters, or no
/// such cluster exists: the action then answers for itself).
async fn in_scope(
    state: &Arc<HubState>,
    who: &Caller,
    name: &str,
) -> Result<Option<tether_protocol::Labels>, Response<Body>> {
    if who.scope.clusters.is_empty() {
        return Ok(None);
    }
    let n = name.to_string();
    let labels = in_blocking(state, move |s| {
        Ok(s.store.read(|tx| {
            Ok::<_, tether_store::StoreError>(match tx.get(&CLUSTERS, &n)? {
                Some(r) => Some(r.labels),
                None => tx
                    .get(&tether_store::hub::JOIN_REQUESTS, &n)?
                    .map(|r| r.labels),
            })
        })?)
    })
    .await?;
    if let Some(l) = &labels {
        super::cluster_in_scope(who, name, l)?;
    }
    Ok(labels)
}

pub(crate) fn cluster_view(state: &HubState, rec: ClusterRecord) -> ClusterView {
    let health = state.health.lock().unwrap_or_else(|p| p.into_inner());
    let live_state = match rec.state {
        tether_store::hub::ClusterState::Denied => rec.state,
        persisted => health.state(&rec.name).unwrap_or(persisted),
    };
    let connected = health.is_connected(&rec.name);
    // Conditions are the agent's report over its heartbeats: once those stop (Unknown,
    // Offline) they are only the last word, and AgentReady=True for a silent agent misleads.
    let conditions = if live_state == tether_store::hub::ClusterState::Ready {
        rec.conditions
    } else {
        rec.conditions
            .into_iter()
            .map(|c| tether_protocol::Condition {
                message: format!(
                    "last reported {} ({}) before the heartbeats stopped",
                    c.status, c.reason
                ),
                kind: c.kind,
                status: "Unknown".into(),
                reason: "NoHeartbeat".into(),
            })
            .collect()
    };
    let recent_sessions = health.sessions_of(&rec.name);
    ClusterView {
        connected,
        state: live_state,
        last_seen_ms: health.last_heartbeat(&rec.name).or(rec.last_seen_ms),
        name: rec.name,
        labels: rec.labels,
        facts: rec.facts,
        pins: rec.pins,
        conditions,
        state_since_ms: rec.state_since_ms,
        recent_sessions,
        joined_at_ms: rec.joined_at_ms,
        cert_serial: rec.cert_serial,
        cert_not_after_ms: rec.cert_not_after_ms,
    }
}
