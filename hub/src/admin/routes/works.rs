//! Routes for works: apply, list, get, delete, placement, rollout, pause/resume, history, undo,
//! rendered.

use crate::admin::server::bytes_body::Body;
use crate::admin::server::*;
use crate::api::*;
use crate::identity::admins::Caller;
use crate::state::HubState;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use tether_store::StoreError;

pub(super) async fn route(
    state: &Arc<HubState>,
    who: &Caller,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let actor = who.actor();
    match (method, seg) {
        (&Method::PUT, ["v1", "works"]) => {
            let force = query_param(&req, "force").is_some_and(|v| v == "true");
            let doc: tether_protocol::work::WorkDocument =
                read_json_limited(req, MAX_WORK_BODY).await?;
            let name = doc.metadata.name.clone();
            work_in_scope(state, who, &name)?;
            let refused = crate::works::tenancy::manifest_violations(&doc.spec, &who.scope);
            if !refused.is_empty() {
                return Err(error(StatusCode::FORBIDDEN, refused.join("; ")));
            }
            let st = state.clone();
            let scope = who.scope.clone();
            let applied = tokio::task::spawn_blocking(move || {
                let (doc, commit) = if doc.spec.source.is_some() {
                    let name = doc.metadata.name.clone();
                    let (doc, commit) = crate::controller::git_sync::fetch(&st, &name, doc)?;
                    (doc, Some(commit))
                } else {
                    (doc, None)
                };
                let outside = outside_scope(&st, &doc, &scope)?;
                if !outside.is_empty() {
                    return Ok(Err((StatusCode::FORBIDDEN, format!(
                        "the work's placement selects clusters outside the scope of this operator ({scope}): {}",
                        outside.join(", ")
                    ))));
                }
                let mut warnings = unknown_clusters(&st, named_clusters(&doc));
                let fights = contested(&st, &doc)?;
                if !fights.is_empty() && !force {
                    return Ok(Err((
                        StatusCode::CONFLICT,
                        format!(
                            "{}. Two works delivering one object to one cluster overwrite each \
                             other on every pass: keep the object in one work (or use overrides), \
                             or apply with --force (?force=true) to accept it",
                            fights.join("; ")
                        ),
                    )));
                }
                warnings.extend(fights);
                warnings.extend(singleton_across_replicas(&st, &doc));
                let applied = crate::works::apply(
                    &st.store,
                    &st.works,
                    doc,
                    st.cfg.limits.max_frame,
                    &actor,
                    &scope,
                )?;
                Ok::<_, crate::works::WorkError>(Ok((applied, warnings, commit)))
            })
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let ((outcome, generation), warnings, commit) = applied
                .map_err(|e| work_error(&e))?
                .map_err(|(code, why)| error(code, why))?;
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
                    warnings,
                    commit,
                },
            ))
        }
        (&Method::POST, ["v1", "works", name, "sync"]) => {
            work_in_scope(state, who, name)?;
            let synced = crate::controller::git_sync::sync(state, name, &actor)
                .await
                .map_err(|e| work_error(&e))?;
            Ok(json(
                StatusCode::OK,
                &ApplyResult {
                    name: name.to_string(),
                    generation: synced.generation,
                    outcome: synced.outcome,
                    warnings: vec![],
                    commit: Some(synced.commit),
                },
            ))
        }
        (&Method::GET, ["v1", "works"]) => {
            let views = in_blocking(state, |s| {
                let (works, decisions) = (s.works.snapshot(), s.decisions.snapshot());
                Ok(s.store
                    .read(|tx| crate::admin::views::summaries(tx, &works, &decisions))?)
            })
            .await?;
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::GET, ["v1", "works", name]) => {
            let n = name.to_string();
            let detail = in_blocking(state, move |s| {
                let decisions = s.decisions.snapshot();
                Ok(s.store
                    .read(|tx| crate::admin::views::detail(tx, &n, &decisions))?)
            })
            .await?;
            match detail {
                Some(mut d) => {
                    d.source_check = state
                        .source_checks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(*name)
                        .cloned();
                    Ok(json(StatusCode::OK, &d))
                }
                None => Err(error(
                    StatusCode::NOT_FOUND,
                    format!("work {name:?} not found"),
                )),
            }
        }
        (&Method::DELETE, ["v1", "works", name]) => {
            work_in_scope(state, who, name)?;
            let orphan = query_flag(&req, "orphan");
            let n = name.to_string();
            let st = state.clone();
            tokio::task::spawn_blocking(move || {
                crate::works::delete(&st.store, &st.works, &n, orphan, &actor)
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
        (&Method::GET, ["v1", "works", name, "placement"]) => match decided(state, name)? {
            Some(d) => Ok(json(StatusCode::OK, &d.choices)),
            None => Ok(json(StatusCode::OK, &Vec::<crate::api::Choice>::new())),
        },
        (&Method::GET, ["v1", "works", name, "rollout"]) => {
            let Some(d) = decided(state, name)? else {
                let generation = state
                    .works
                    .snapshot()
                    .get(*name)
                    .map_or(0, |e| e.record.generation);
                let pending = crate::decide::RolloutView {
                    generation,
                    phase: crate::api::RolloutPhase::Pending,
                    reason: "applied; the hub has not decided this generation yet".into(),
                    ..Default::default()
                };
                return Ok(json(StatusCode::OK, &pending));
            };
            let view = d.rollout.clone().unwrap_or(crate::decide::RolloutView {
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
            work_in_scope(state, who, name)?;
            let paused = *action == "pause";
            let st = state.clone();
            let n = name.to_string();
            tokio::task::spawn_blocking(move || crate::controller::set_paused(&st, &n, paused))
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| work_error(&e))?;
            // Answer once the controller has published the pause, so that what the operator
            // reads next (and what it admits next) already follows it.
            let deadline = tokio::time::Instant::now() + PAUSE_VISIBLE_WITHIN;
            while tokio::time::Instant::now() < deadline {
                let shown = state
                    .decisions
                    .snapshot()
                    .get(*name)
                    .map(|d| d.rollout.as_ref().map_or(!paused, |r| r.paused == paused));
                if shown != Some(false) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let (kind, verb) = if paused {
                ("rollout_paused", "paused")
            } else {
                ("rollout_resumed", "resumed")
            };
            audit_now(
                state,
                &actor,
                kind,
                format!("rollout of work {name} {verb}"),
            )
            .await?;
            Ok(json(
                StatusCode::OK,
                &PauseResult {
                    work: name.to_string(),
                    paused,
                },
            ))
        }
        (&Method::POST, ["v1", "works", name, "confirm-removal"]) => {
            let body: ConfirmRemovalRequest = read_json(req).await?;
            confirm_removal(state, who, name, &body.cluster).await
        }
        (&Method::GET, ["v1", "works", name, "history"]) => {
            let st = state.clone();
            let n = name.to_string();
            let rows = tokio::task::spawn_blocking(move || crate::controller::history(&st, &n))
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| work_error(&e))?;
            Ok(json(StatusCode::OK, &rows))
        }
        (&Method::POST, ["v1", "works", name, "undo"]) => {
            work_in_scope(state, who, name)?;
            let to = query_usize(&req, "to_generation").map(|g| g as u64);
            let st = state.clone();
            let n = name.to_string();
            let by = actor.clone();
            let (from, generation) = tokio::task::spawn_blocking(move || {
                let from = st
                    .works
                    .snapshot()
                    .get(n.as_str())
                    .map(|e| e.record.generation);
                crate::controller::undo(&st, &n, to, &by).map(|g| (from, g))
            })
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| work_error(&e))?;
            let from = from.unwrap_or(generation.saturating_sub(1));
            // `undo` defaults to the generation before the current one.
            let to = to.unwrap_or(from.saturating_sub(1));
            audit_now(
                state,
                &actor,
                "rollout_undone",
                format!("work {name} rolled back from generation {from} to generation {to} (as new generation {generation})"),
            )
            .await?;
            Ok(json(
                StatusCode::OK,
                &UndoResult {
                    work: name.to_string(),
                    generation,
                },
            ))
        }
        (&Method::POST, ["v1", "works", "render"]) => {
            // What an apply of this document would deliver (`tetherctl diff`): the manifests,
            // fetched from its git source if it has one, and with `?cluster=C` as that
            // cluster would receive them. Nothing is stored.
            let cluster = query_param(&req, "cluster").map(str::to_string);
            let doc: tether_protocol::work::WorkDocument =
                read_json_limited(req, MAX_WORK_BODY).await?;
            let st = state.clone();
            tokio::task::spawn_blocking(move || render_input(&st, doc, cluster.as_deref()))
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map(|manifests| json(StatusCode::OK, &manifests))
                .map_err(|(status, message)| error(status, message))
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
                crate::works::render::render_assignment(&entry.record.document.spec, &assignment)
                    .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
            Ok(json(StatusCode::OK, &manifests))
        }
        _ => Err(no_route(method, seg)),
    }
}

/// The manifests `doc` would deliver, to `cluster` if given: its override rules chosen by the
/// cluster's labels and facts as placement sees them, and its replica share taken from the
/// work's current placement (a share depends on the whole selection, which an apply decides).
fn render_input(
    state: &HubState,
    doc: tether_protocol::work::WorkDocument,
    cluster: Option<&str>,
) -> Result<Vec<serde_json::Value>, (StatusCode, String)> {
    let refused = |e: crate::works::WorkError| {
        let status = work_error_status(&e);
        (status, e.to_string())
    };
    let name = doc.metadata.name.clone();
    let (doc, _) = crate::works::fetch_source(&state.git, doc).map_err(refused)?;
    tether_protocol::work::validate(&doc)
        .map_err(|e| refused(crate::works::WorkError::Invalid(e)))?;
    let Some(cluster) = cluster else {
        return Ok(doc.spec.manifests);
    };
    let record = state
        .store
        .read(|tx| tx.get(&tether_store::hub::CLUSTERS, cluster))
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("cluster {cluster:?} not found"),
            )
        })?;
    let facts = crate::fleet::facts::effective(&record.facts, &record.pins);
    let labels = crate::decide::placement::selectable_labels(&record.labels, &facts);
    let replicas = state
        .decisions
        .snapshot()
        .get(&name)
        .and_then(|d| d.selected.get(cluster).and_then(|a| a.replicas));
    let assignment = crate::works::render::Assignment {
        rules: crate::works::render::matching_rules(&doc.spec, cluster, &labels),
        replicas,
    };
    crate::works::render::render_assignment(&doc.spec, &assignment)
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e))
}

/// How long a pause or resume waits for the controller to publish it before answering anyway.
const PAUSE_VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Every cluster a work names explicitly, in its targets or its placement.
fn named_clusters(doc: &tether_protocol::work::WorkDocument) -> Vec<String> {
    let mut names = doc.spec.targets.clusters.clone();
    if let Some(p) = &doc.spec.placement {
        names.extend(p.clusters.iter().cloned());
    }
    names.sort();
    names.dedup();
    names
}

/// A warning for a singleton applied to a hub running as several replicas: its
/// break-before-make counts on one process knowing every delivery in flight (docs/ha.md).
fn singleton_across_replicas(
    state: &HubState,
    doc: &tether_protocol::work::WorkDocument,
) -> Option<String> {
    let singleton = doc
        .spec
        .failover
        .as_ref()
        .is_some_and(|f| f.mode == tether_protocol::work::FailoverMode::Singleton);
    let replicas = state.replica.as_ref().map_or(1, |r| r.live().len());
    (singleton && replicas > 1).then(|| {
        format!(
            "this hub runs as {replicas} replicas, and a singleton's break-before-make is not guaranteed across replicas: a copy may start before the old one stopped (docs/ha.md); run singleton works on a single hub"
        )
    })
}

/// A warning per named cluster that is not registered: a typo would otherwise look like a
/// rollout that never starts. A store error only loses the warnings, never the apply.
fn unknown_clusters(state: &HubState, named: Vec<String>) -> Vec<String> {
    let known = state.store.read(|tx| {
        named
            .iter()
            .map(|n| Ok(tx.get(&tether_store::hub::CLUSTERS, n)?.is_some()))
            .collect::<Result<Vec<bool>, tether_store::StoreError>>()
    });
    match known {
        Ok(known) => named
            .into_iter()
            .zip(known)
            .filter(|(_, k)| !k)
            .map(|(n, _)| {
                format!("cluster {n:?} is not registered; the work reaches it once it joins")
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not check the clusters a work names");
            Vec::new()
        }
    }
}

/// 403 unless the caller's scope contains the scope the work was applied with: a scoped
/// operator may not change (or take over) a work of a wider scope.
// The error is the HTTP answer itself, made once per refused request, as in the async helpers.
#[allow(clippy::result_large_err)]
fn work_in_scope(state: &HubState, who: &Caller, name: &str) -> Result<(), Response<Body>> {
    let works = state.works.snapshot();
    let Some(entry) = works.get(name).filter(|e| e.record.deleted.is_none()) else {
        return Ok(());
    };
    if who.scope.contains(&entry.record.scope) {
        return Ok(());
    }
    Err(error(
        StatusCode::FORBIDDEN,
        format!(
            "work {name} was applied with scope {}, which the scope of {} ({}) does not contain",
            entry.record.scope, who.name, who.scope
        ),
    ))
}

/// Relay an operator's confirmation of a held deletion to the cluster's agent (which decides:
/// its owner may take confirmations on the cluster only), and audit it once the agent has it.
async fn confirm_removal(
    state: &Arc<HubState>,
    who: &Caller,
    work: &str,
    cluster: &str,
) -> Result<Response<Body>, Response<Body>> {
    let works = state.works.snapshot();
    let Some(entry) = works.get(work) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("work {work} not found"),
        ));
    };
    // Deleted works too: a held removal is what is confirmed.
    if !who.scope.contains(&entry.record.scope) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "work {work} was applied with scope {}, which the scope of {} ({}) does not contain",
                entry.record.scope, who.name, who.scope
            ),
        ));
    }
    let n = cluster.to_string();
    let rec = in_blocking(state, move |s| {
        Ok(s.store
            .read(|tx| tx.get(&tether_store::hub::CLUSTERS, &n))?)
    })
    .await?
    .ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("cluster {cluster} not found"),
        )
    })?;
    super::cluster_in_scope(who, cluster, &rec.labels)?;
    let conn = state.sessions.confirming(cluster).map_err(|has_session| {
        error(
            StatusCode::CONFLICT,
            if has_session {
                format!("the agent of {cluster} is too old to take confirmations from the hub; run `tether-agent confirm-removal --data-dir DIR {work}` on the cluster")
            } else if let Some(h) = state
                .replica
                .as_ref()
                .and_then(|r| r.holder(cluster))
                .filter(|h| state.replica.as_ref().is_some_and(|r| &r.name != h))
            {
                format!("{cluster}'s session is with hub replica {h}; send the confirmation to that replica's admin address (or run `tether-agent confirm-removal` on the cluster)")
            } else {
                format!("{cluster} has no session with this hub; the confirmation needs the agent connected (or run `tether-agent confirm-removal` on the cluster)")
            },
        )
    })?;
    let msg = tether_protocol::Message::ConfirmRemoval(tether_protocol::ConfirmRemoval {
        work: work.to_string(),
        actor: who.actor(),
    });
    let answer = tokio::time::timeout(
        CONFIRM_TIMEOUT,
        tether_transport::framed::request(&conn, &msg, state.cfg.limits),
    )
    .await
    .map_err(|_| {
        error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the agent of {cluster} did not answer within {CONFIRM_TIMEOUT:?}"),
        )
    })?;
    let was_held = match answer {
        Ok(tether_protocol::Message::RemovalConfirmed(r)) if r.work == work => r.was_held,
        Ok(tether_protocol::Message::Error(e)) | Err(tether_transport::TransportError::Peer(e))
            if e.code == tether_protocol::ErrorCode::Unauthorized =>
        {
            return Err(error(
                StatusCode::FORBIDDEN,
                format!("the agent of {cluster} refused: {}", e.message),
            ));
        }
        Ok(other) => {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the agent of {cluster} answered {} to ConfirmRemoval",
                    other.kind()
                ),
            ))
        }
        Err(e) => {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                format!("confirming on {cluster}: {e}"),
            ))
        }
    };
    audit_now(
        state,
        &who.actor(),
        "removal_confirmed",
        format!("work {work} on cluster {cluster} (held there: {was_held})"),
    )
    .await?;
    tracing::warn!(%work, %cluster, actor = %who.actor(), was_held, "held deletion confirmed through the hub");
    Ok(json(
        StatusCode::OK,
        &ConfirmRemovalResult {
            work: work.to_string(),
            cluster: cluster.to_string(),
            was_held,
        },
    ))
}

/// How long the admin waits for the agent to record a confirmation.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The registered, not denied clusters as placement sees them.
fn fleet(state: &HubState) -> Result<Vec<crate::decide::placement::Candidate>, StoreError> {
    use crate::decide::placement::{selectable_labels, Candidate};
    let records = state
        .store
        .read(|tx| tx.list(&tether_store::hub::CLUSTERS))?;
    Ok(records
        .into_iter()
        .filter(|(_, r)| r.state != tether_store::hub::ClusterState::Denied)
        .map(|(name, r)| Candidate {
            name,
            labels: selectable_labels(
                &r.labels,
                &crate::fleet::facts::effective(&r.facts, &r.pins),
            ),
        })
        .collect())
}

/// The clusters `doc`'s placement selects among `candidates` (no taints, no stickiness).
fn selected_now(
    doc: &tether_protocol::work::WorkDocument,
    candidates: &[crate::decide::placement::Candidate],
) -> std::collections::BTreeSet<String> {
    crate::decide::placement::select(
        &doc.metadata.name,
        &doc.spec,
        candidates,
        &Default::default(),
        &Default::default(),
    )
    .into_iter()
    .filter(|c| c.selected)
    .map(|c| c.cluster)
    .collect()
}

/// Clusters the work's placement selects now that are outside the cluster set of `scope`
/// (the decisions keep it off them later too; refusing now says so while the operator looks).
fn outside_scope(
    state: &HubState,
    doc: &tether_protocol::work::WorkDocument,
    scope: &tether_store::hub::AdminScope,
) -> Result<Vec<String>, StoreError> {
    if scope.clusters.is_empty() {
        return Ok(Vec::new());
    }
    let candidates = fleet(state)?;
    let selected = selected_now(doc, &candidates);
    Ok(candidates
        .into_iter()
        .filter(|c| selected.contains(&c.name) && !scope.admits_cluster(&c.labels))
        .map(|c| c.name)
        .collect())
}

/// Conflicts with other works over objects on clusters both would hold: the applied work's
/// placement evaluated over the registered fleet (without taints), against the other works'
/// current decisions. Costs a read of the clusters only when an object is shared at all.
fn contested(
    state: &HubState,
    doc: &tether_protocol::work::WorkDocument,
) -> Result<Vec<String>, crate::works::WorkError> {
    let shared = crate::works::overlap::shared_objects(doc, &state.works.snapshot());
    if shared.is_empty() {
        return Ok(Vec::new());
    }
    let mine = selected_now(doc, &fleet(state)?);
    let decisions = state.decisions.snapshot();
    Ok(shared
        .into_iter()
        .filter_map(|(other, objects)| {
            let theirs = decisions.get(&other)?;
            let both: Vec<String> = theirs
                .selected
                .keys()
                .filter(|c| mine.contains(*c))
                .cloned()
                .collect();
            (!both.is_empty()).then(|| {
                crate::works::overlap::describe(&doc.metadata.name, &other, &objects, &both)
            })
        })
        .collect())
}

/// The work's published decision; `None` for a work applied but not decided yet (a moment
/// after an apply, longer on a replica the decision reaches through the change feed); 404
/// for a work that does not exist or was deleted. (The error is the response itself, as for
/// every route helper here: built once per refused request, not worth a box.)
#[allow(clippy::result_large_err)]
fn decided(
    state: &HubState,
    name: &str,
) -> Result<Option<Arc<crate::decide::WorkDecision>>, Response<Body>> {
    if let Some(d) = state.decisions.snapshot().get(name) {
        return Ok(Some(d.clone()));
    }
    match state.works.snapshot().get(name) {
        Some(e) if e.record.deleted.is_none() => Ok(None),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            format!("work {name:?} not found"),
        )),
    }
}
