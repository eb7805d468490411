//! Per-session delivery: bring one connected agent in line with the hub's works, then follow
//! every change. The planner is pure (`works::plan`); this module is its I/O.
//!
//! The hub records a work as delivered only after the agent's `WorkAck`, which the agent sends
//! only after committing. A lost ack means a resend, which the agent treats idempotently.

use crate::delivery::{plan, Action};
use crate::state::HubState;
use crate::util::now_ms;
use quinn::Connection;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tether_protocol::{close_code, HeldWork, Message, WorkRemove, WorkUpdate};
use tether_store::hub::{cluster_work_key, ClusterWorkRecord, CLUSTER_WORKS};
use tether_transport::framed::request;

/// Record what the agent says it holds, so `describe work` is right even before any delivery.
///
/// The inventory is the agent's committed desired state, so it is also the truth about what it
/// does *not* hold: a row the hub still has for a work missing from it is stale (the agent
/// committed a removal whose `WorkAck` was lost with the session) and goes, as it would have
/// when the ack arrived. Found by `singleton-failover` (full form, seed 4).
///
/// Only works that are the cluster's (`scope`) get a row; returns how many named in the
/// inventory were not.
pub async fn record_inventory(
    state: &HubState,
    cluster: &str,
    held: &BTreeMap<String, HeldWork>,
) -> Result<usize, crate::ingest::committer::CommitError> {
    let selected = state
        .scope_of(cluster, held.keys().map(String::as_str))
        .selected;
    let cluster = cluster.to_string();
    let held = held.clone();
    let now = now_ms();
    let singletons: BTreeSet<String> = state
        .works
        .snapshot()
        .iter()
        .filter(|(_, e)| {
            crate::decide::singleton::fence_after_ms(&e.record.document.spec).is_some()
        })
        .map(|(n, _)| n.clone())
        .collect();
    let changed = cluster.clone();
    let reads = state.reads_for(|| {
        held.keys()
            .map(|w| (CLUSTER_WORKS.name(), cluster_work_key(&cluster, w)))
            .collect()
    });
    let foreign = state
        .committer
        .write_reading(reads, move |tx| {
            let mut foreign = 0;
            for (work, h) in &held {
                let key = cluster_work_key(&cluster, work);
                let row = tx.get(&CLUSTER_WORKS, &key)?;
                if row.is_none() && !selected.contains(work) {
                    foreign += 1;
                    continue;
                }
                let mut row = row.unwrap_or(ClusterWorkRecord {
                    delivered: None,
                    delivered_at_ms: None,
                    status: None,
                    status_seq: 0,
                });
                if row.delivered.as_ref() != Some(h) {
                    row.delivered = Some(h.clone());
                    row.delivered_at_ms = Some(now);
                    tx.put(&CLUSTER_WORKS, &key, &row)?;
                }
            }
            let prefix = cluster_work_key(&cluster, "");
            for (key, row) in tx.list_prefix(&CLUSTER_WORKS, &prefix)? {
                let work = &key[prefix.len()..];
                if row.delivered.is_some() && !held.contains_key(work) {
                    tracing::info!(%cluster, %work, "agent no longer holds this work; forgetting the delivery");
                    let mut row = row;
                    row.delivered = None;
                    // A singleton's copy may still be being removed: keep what its last
                    // status says until the agent reports it gone (see `singleton`).
                    if singletons.contains(work) && crate::decide::singleton::copy_may_run(Some(&row)) {
                        tx.put(&CLUSTER_WORKS, &key, &row)?;
                    } else {
                        tx.remove(&CLUSTER_WORKS, &key)?;
                    }
                }
            }
            Ok(foreign)
        })
        .await;
    if foreign.is_ok() {
        state.changes.cluster(&changed);
    }
    foreign
}

/// How many changes an agent holding `held` is about to receive.
pub fn pending_changes(
    state: &HubState,
    cluster: &str,
    held: &BTreeMap<String, HeldWork>,
) -> usize {
    plan_for(state, cluster, held, &state.works.snapshot())
        .0
        .len()
}

fn plan_for(
    state: &HubState,
    cluster: &str,
    held: &BTreeMap<String, HeldWork>,
    works: &crate::works::WorkMap,
) -> (Vec<Action>, Vec<String>) {
    let decisions = state.decisions.snapshot();
    plan(held, works, |name, entry| {
        crate::delivery::plan::want_from(&decisions, cluster, name, entry)
    })
}

/// Runs for the life of the session. `patches`: the agent takes changed works as patches.
pub async fn run(
    conn: Connection,
    state: Arc<HubState>,
    cluster: String,
    mut held: BTreeMap<String, HeldWork>,
    patches: bool,
) {
    let mut changes = state.decisions.subscribe();
    let mut seen = *changes.borrow_and_update();
    if patches {
        remember_held(&state, &cluster, &held);
    }
    // Works the agent refused at a given content: not retried until the content changes.
    let mut refused: BTreeSet<(String, String)> = BTreeSet::new();
    // Consecutive passes that ended in a retry: the pause doubles up to RETRY_MAX.
    let mut retries: u32 = 0;
    loop {
        let mut retry = false;
        let works = state.works.snapshot();
        let (actions, unknown) = plan_for(&state, &cluster, &held, &works);
        if !unknown.is_empty() {
            // One line, however many: the names come from the cluster.
            tracing::warn!(%cluster, count = unknown.len(), first = ?unknown.iter().take(5).collect::<Vec<_>>(), "agent holds works this hub has no record of; leaving them alone");
        }
        for action in actions {
            if let Action::Send { work, packed, .. } = &action {
                if refused.contains(&(work.clone(), packed.hash.clone())) {
                    continue;
                }
            }
            match send(&conn, &state, &cluster, &works, &action, patches).await {
                Ok(Some(now_held)) => {
                    held.insert(action.work().to_string(), now_held);
                }
                Ok(None) => {
                    held.remove(action.work());
                }
                Err(Failure::Refused(msg)) => {
                    tracing::warn!(%cluster, work = %action.work(), error = %msg, "agent refused a delivery");
                    state.metrics.deliveries_refused.inc();
                    if let Action::Send { work, packed, .. } = &action {
                        refused.insert((work.clone(), packed.hash.clone()));
                    }
                }
                Err(Failure::Retry(msg)) => {
                    tracing::info!(%cluster, work = %action.work(), error = %msg, retries, "delivery not acknowledged; will retry");
                    retry = true;
                    break;
                }
                Err(Failure::Connection(msg)) => {
                    tracing::debug!(%cluster, error = %msg, "delivery stopped: session lost");
                    return;
                }
            }
        }
        // Re-plan after a change, or after a pause when a delivery went unanswered.
        let pause = if retry {
            retries = retries.saturating_add(1);
            RETRY_FIRST
                .saturating_mul(1 << retries.min(5).saturating_sub(1))
                .min(RETRY_MAX)
        } else {
            retries = 0;
            std::time::Duration::from_secs(86_400)
        };
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let version = *changes.borrow_and_update();
                    let concerns = state.decisions.concerns(&cluster, seen);
                    seen = version;
                    if concerns {
                        break;
                    }
                }
                _ = &mut sleep => break,
                _ = conn.closed() => return,
            }
        }
    }
}

/// What the agent holds of the current works, as bases for later patches: after a hub restart
/// the hub has sent nothing yet, but the next generation can still be a patch.
fn remember_held(state: &HubState, cluster: &str, held: &BTreeMap<String, HeldWork>) {
    let works = state.works.snapshot();
    let decisions = state.decisions.snapshot();
    for (name, h) in held {
        let Some(entry) = works.get(name) else {
            continue;
        };
        if let plan::Want::Hold(_, packed) = plan::want_from(&decisions, cluster, name, entry) {
            if packed.hash == h.hash {
                state.patches.remember(&packed);
            }
        }
    }
}

/// Pause after a delivery pass that must be retried; doubles per consecutive retry.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(16);

enum Failure {
    /// The agent answered with an error: do not resend this content on this session.
    Refused(String),
    /// No answer in time (a lossy link): try again shortly.
    Retry(String),
    Connection(String),
}

async fn send(
    conn: &Connection,
    state: &HubState,
    cluster: &str,
    works: &crate::works::WorkMap,
    action: &Action,
    patches: bool,
) -> Result<Option<HeldWork>, Failure> {
    let limits = state.cfg.limits;
    let msg = match action {
        Action::Send {
            work,
            generation,
            packed,
            full,
            base,
        } => {
            let entry = works
                .get(work)
                .ok_or_else(|| Failure::Refused(format!("work {work} vanished")))?;
            let (bundle, base) = match base {
                Some(b) if *full && patches => match state.patches.patch(b, packed).await {
                    Some(p) => (Some(p.to_vec()), Some(b.clone())),
                    None => (Some(packed.compressed.clone()), None),
                },
                _ => (full.then(|| packed.compressed.clone()), None),
            };
            if *full {
                state.patches.remember(packed);
            }
            Message::WorkUpdate(WorkUpdate {
                name: work.clone(),
                generation: *generation,
                hash: packed.hash.clone(),
                force_conflicts: entry.record.document.spec.force_conflicts,
                bundle,
                base,
                fence_after_ms: crate::decide::singleton::fence_after_ms(
                    &entry.record.document.spec,
                ),
            })
        }
        Action::Remove { work, orphan } => Message::WorkRemove(WorkRemove {
            name: work.clone(),
            orphan: *orphan,
        }),
    };
    let bytes = match &msg {
        Message::WorkUpdate(u) => u.bundle.as_ref().map_or(0, Vec::len),
        _ => 0,
    };
    let patched = matches!(&msg, Message::WorkUpdate(u) if u.base.is_some());
    let singleton = matches!(&msg, Message::WorkUpdate(u) if u.fence_after_ms.is_some());
    let singleton_removal = matches!(action, Action::Remove { work, .. }
        if works.get(work).and_then(|e| crate::decide::singleton::fence_after_ms(&e.record.document.spec)).is_some());
    let _in_flight = singleton.then(|| state.singleton_in_flight.start(action.work(), cluster));
    let reply = match request(conn, &msg, limits).await {
        Ok(r) => r,
        Err(e) if conn.close_reason().is_some() => return Err(Failure::Connection(e.to_string())),
        // Answered with an error: handled below (one of them asks for the full bundle).
        Err(tether_transport::TransportError::Peer(e)) => Message::Error(e),
        Err(e) if singleton => {
            // QUIC would keep retransmitting the abandoned copy, and it could land after the
            // work moved on (see `singleton`): end the session instead; the agent reconnects
            // and reports its inventory.
            conn.close(
                close_code::NORMAL.into(),
                b"singleton delivery unanswered; reconnect",
            );
            return Err(Failure::Connection(e.to_string()));
        }
        Err(e) => return Err(Failure::Retry(e.to_string())),
    };
    let ack = match reply {
        Message::WorkAck(ack) if ack.name == action.work() => ack,
        Message::Error(e) => {
            // The agent lacks the content a bump or a patch refers to: send it whole, once.
            if let Action::Send {
                work,
                generation,
                packed,
                full,
                base,
            } = action
            {
                if e.content_missing && (!*full || base.is_some()) {
                    let whole = Action::Send {
                        work: work.clone(),
                        generation: *generation,
                        packed: packed.clone(),
                        full: true,
                        base: None,
                    };
                    return Box::pin(send(conn, state, cluster, works, &whole, patches)).await;
                }
            }
            // Busy/Internal: the agent could not take it now (its store is failing, say), not
            // a verdict on the work; refusing it would never resend on this session.
            if matches!(
                e.code,
                tether_protocol::ErrorCode::Busy | tether_protocol::ErrorCode::Internal
            ) {
                return Err(Failure::Retry(format!("agent could not take it now: {e}")));
            }
            return Err(Failure::Refused(e.to_string()));
        }
        other => {
            return Err(Failure::Refused(format!(
                "unexpected reply {}",
                other.kind()
            )))
        }
    };
    state.metrics.deliveries.inc();
    state.metrics.delivered_bytes.inc_by(bytes as u64);
    if patched {
        state.metrics.deliveries_patched.inc();
    }
    let key = cluster_work_key(cluster, &ack.name);
    let held = ack.held.clone();
    let now = now_ms();
    let reads = state.reads_for(|| vec![(CLUSTER_WORKS.name(), key.clone())]);
    let committed = state
        .committer
        .write_reading(reads, move |tx| {
            match &held {
                Some(h) => {
                    let mut row = tx.get(&CLUSTER_WORKS, &key)?.unwrap_or(ClusterWorkRecord {
                        delivered: None,
                        delivered_at_ms: None,
                        status: None,
                        status_seq: 0,
                    });
                    row.delivered = Some(h.clone());
                    row.delivered_at_ms = Some(now);
                    tx.put(&CLUSTER_WORKS, &key, &row)?;
                }
                None => {
                    let mut row = tx.get(&CLUSTER_WORKS, &key)?;
                    if let Some(r) = row.as_mut() {
                        r.delivered = None;
                    }
                    // A singleton's row stays until the copy is reported gone: the
                    // acknowledgement only says the removal is committed (see `singleton`).
                    match row {
                        Some(r)
                            if singleton_removal
                                && crate::decide::singleton::copy_may_run(Some(&r)) =>
                        {
                            tx.put(&CLUSTER_WORKS, &key, &r)?;
                        }
                        _ => {
                            tx.remove(&CLUSTER_WORKS, &key)?;
                        }
                    }
                }
            }
            Ok(())
        })
        .await;
    match committed {
        Ok(()) => state.changes.rows(cluster, [ack.name.as_str()]),
        // The agent holds it either way; the next session's inventory will set this right.
        Err(e) => {
            tracing::error!(%cluster, work = %ack.name, error = %e, "could not record a delivery")
        }
    }
    tracing::debug!(%cluster, work = %ack.name, held = ?ack.held, "delivered");
    Ok(ack.held)
}
