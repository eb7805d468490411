//! The decision loop, the shell around `decide`: it gathers the fleet view when works,
//! clusters, health or status change (and every 500 ms), persists rollout state, carries out
//! the effects (close a session, start an auto-rollback) and publishes the decisions to the
//! sessions. Undo and pause/resume live here too: they write the store.

use crate::decide::placement;
use crate::decide::{ClusterView, Effect, Inputs};
use crate::state::HubState;
use crate::util::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tether_protocol::close_code;
use tether_store::hub::{
    ClusterState, ClusterWorkRecord, RolloutRecord, CLUSTERS, CLUSTER_WORKS, ROLLOUTS,
};
use tether_store::StoreError;

pub mod undo;
pub use undo::{set_paused, undo};

/// Run until the hub stops.
pub async fn run(state: Arc<HubState>) {
    let mut works = state.works.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let st = state.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || decide_all(&st)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "decision pass failed"),
            Err(e) => tracing::error!(error = %e, "decision pass panicked"),
        }
        let took = started.elapsed();
        tokio::select! {
            r = works.changed() => if r.is_err() { return },
            _ = state.decisions_wake.notified() => {}
            _ = tick.tick() => {}
        }
        // A pass reads every cluster and status row. Under a status storm the wake-ups never
        // stop, and back-to-back passes would take a whole core from the sessions delivering
        // and acknowledging; spacing passes by their own duration caps the controller at half
        // a core, at the cost of deciding at most one pass later.
        tokio::time::sleep(took.min(MAX_PASS_SPACING)).await;
    }
}

/// Upper bound of the spacing between decision passes (see `run`).
const MAX_PASS_SPACING: Duration = Duration::from_secs(1);

/// One pass over every work: gather the inputs, let `decide` decide, persist rollout state,
/// carry out the effects, publish. Returns whether any cluster's allowed state changed.
pub fn decide_all(state: &HubState) -> Result<bool, StoreError> {
    let now = now_ms();
    let works = state.works.snapshot();
    let in_flight = state.singleton_in_flight.snapshot();
    let (records, rows, rollouts) = state.store.read(|tx| {
        Ok::<_, StoreError>((
            tx.list(&CLUSTERS)?,
            tx.list(&CLUSTER_WORKS)?,
            tx.list(&ROLLOUTS)?,
        ))
    })?;
    let clusters: BTreeMap<String, ClusterView> = {
        let h = state.health.lock().unwrap_or_else(|p| p.into_inner());
        records
            .into_iter()
            .map(|(n, c)| {
                let ready = h.state(&n) == Some(ClusterState::Ready);
                // Unreachable since (hub time): this process cannot know of anything before it
                // started, so a restart does not count as an outage.
                let away_ms = (!ready).then(|| {
                    let since = h
                        .last_heartbeat(&n)
                        .or(c.last_seen_ms)
                        .unwrap_or(c.state_since_ms)
                        .max(state.started_ms);
                    now.saturating_sub(since)
                });
                let facts = crate::fleet::facts::effective(&c.facts, &c.pins);
                let view = ClusterView {
                    labels: placement::selectable_labels(&c.labels, &facts),
                    cpus: facts.cpus,
                    cpus_pinned: c.pins.cpus.is_some(),
                    denied: c.state == ClusterState::Denied,
                    ready,
                    away_ms,
                    session_open: state.sessions.stable_id(&n).is_some(),
                };
                (n, view)
            })
            .collect()
    };
    let mut status: BTreeMap<(String, String), ClusterWorkRecord> = BTreeMap::new();
    for (key, row) in rows {
        if let Some((c, w)) = key.split_once('/') {
            status.insert((w.to_string(), c.to_string()), row);
        }
    }
    let rollouts: BTreeMap<String, RolloutRecord> = rollouts.into_iter().collect();
    let previous = state.decisions.snapshot();
    let outcome = crate::decide::decide(&Inputs {
        now_ms: now,
        works: &works,
        clusters: &clusters,
        status: &status,
        rollouts: &rollouts,
        in_flight: &in_flight,
        previous: &previous,
    });
    if !outcome.rollout_writes.is_empty() {
        state.store.write(|tx| {
            for (name, r) in &outcome.rollout_writes {
                tx.put(&ROLLOUTS, name, r)?;
            }
            Ok::<_, StoreError>(())
        })?;
    }
    // Sessions close before the decisions that count on them being closed are published.
    let mut rollbacks = Vec::new();
    for effect in outcome.effects {
        match effect {
            Effect::CloseSession { cluster, work } => {
                tracing::info!(%work, %cluster, "closing the session of a tainted cluster that may hold the singleton, so nothing in flight reaches it after the move");
                state
                    .sessions
                    .close(&cluster, close_code::NORMAL, "singleton moves away");
            }
            Effect::AutoRollback { work } => rollbacks.push(work),
        }
    }
    state.decisions.publish(outcome.decisions, outcome.changed);
    for name in rollbacks {
        if let Err(e) = undo(state, &name, None, "auto-rollback") {
            tracing::error!(work = %name, error = %e, "automatic rollback failed");
        }
    }
    Ok(outcome.changed)
}
