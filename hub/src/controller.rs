//! The decision loop, the shell around `decide`: it gathers the fleet view when works,
//! clusters, health or status change (and every 500 ms), persists rollout state, carries out
//! the effects (close a session, start an auto-rollback) and publishes the decisions to the
//! sessions. Undo and pause/resume live here too: they write the store.

use crate::decide::{ClusterView, Effect, Inputs};
use crate::hub::HubState;
use crate::placement;
use crate::util::now_ms;
use crate::works::{Want, WorkEntry};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tether_protocol::close_code;
use tether_store::hub::{
    work_history_key, ClusterState, ClusterWorkRecord, RolloutRecord, CLUSTERS, CLUSTER_WORKS,
    ROLLOUTS, WORK_HISTORY,
};
use tether_store::StoreError;

pub use crate::decide::{RolloutView, WorkDecision};

/// The published decisions, and the channel that tells delivery tasks they changed. Works
/// changes wake the controller only: a session has nothing to re-plan until the controller
/// has decided the new generation.
pub struct Decisions {
    map: RwLock<Arc<BTreeMap<String, Arc<WorkDecision>>>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Decisions {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Decisions {
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<WorkDecision>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, next: BTreeMap<String, Arc<WorkDecision>>, changed: bool) {
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Ticks whenever a published decision could change what a session should hold.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What `cluster` should hold of `entry` (used by delivery planning).
    pub fn want(&self, cluster: &str, name: &str, entry: &WorkEntry) -> Want {
        let snapshot = self.snapshot();
        want_from(&snapshot, cluster, name, entry)
    }
}

pub fn want_from(
    decisions: &BTreeMap<String, Arc<WorkDecision>>,
    cluster: &str,
    name: &str,
    entry: &WorkEntry,
) -> Want {
    let Some(d) = decisions.get(name) else {
        return Want::Keep;
    };
    if d.generation != entry.record.generation {
        // Not decided yet for this generation: change nothing until it is.
        return Want::Keep;
    }
    let Some(assignment) = d.selected.get(cluster) else {
        // A singleton's old copy goes first, but only once its successor may start (not while
        // the successor waits for its rollout slot or maintenance window).
        let successor_admitted = d
            .selected
            .keys()
            .all(|c| d.admitted.as_ref().is_none_or(|a| a.contains(c)));
        return if d.replacements_ready || (d.singleton && successor_admitted) {
            Want::Absent
        } else {
            Want::Keep
        };
    };
    if d.admitted.as_ref().is_some_and(|a| !a.contains(cluster)) || !d.waiting_for.is_empty() {
        return Want::Keep;
    }
    match entry.rendered(assignment) {
        Ok(p) => Want::Hold(d.generation, p),
        Err(e) => {
            tracing::error!(work = %name, %cluster, error = %e, "cannot render work for cluster");
            Want::Keep
        }
    }
}

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
                let facts = crate::facts::effective(&c.facts, &c.pins);
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

/// Re-apply an earlier generation's document as a new generation that goes everywhere at once.
/// `to` defaults to the generation before the current one.
pub fn undo(
    state: &HubState,
    name: &str,
    to: Option<u64>,
    actor: &str,
) -> Result<u64, crate::works::WorkError> {
    use crate::works::WorkError;
    let current = state
        .works
        .snapshot()
        .get(name)
        .filter(|e| e.record.deleted.is_none())
        .map(|e| e.record.generation)
        .ok_or_else(|| WorkError::NotFound(name.to_string()))?;
    let to = to.unwrap_or(current.saturating_sub(1));
    if to == 0 || to >= current {
        return Err(WorkError::Invalid(vec![format!(
            "cannot roll back work {name} from generation {current} to {to}"
        )]));
    }
    let doc = state
        .store
        .read(|tx| tx.get(&WORK_HISTORY, &work_history_key(name, to)))?
        .ok_or_else(|| {
            WorkError::Invalid(vec![format!(
                "generation {to} of work {name} is not in the history"
            )])
        })?;
    // Mark the next generation as a rollback before it becomes visible to the decision loop.
    let next = current + 1;
    state.store.write(|tx| {
        tx.put(
            &ROLLOUTS,
            name,
            &RolloutRecord {
                generation: next,
                rollback_of: Some(to),
                phase: "RolledBack".into(),
                ..RolloutRecord::default()
            },
        )
    })?;
    let (_, generation) = crate::works::apply(
        &state.store,
        &state.works,
        doc,
        state.cfg.limits.max_frame,
        actor,
    )?;
    tracing::warn!(work = %name, from = current, to, new_generation = generation, %actor, "rolled back");
    Ok(generation)
}

/// Pause or resume a progressive rollout.
pub fn set_paused(
    state: &HubState,
    name: &str,
    paused: bool,
) -> Result<(), crate::works::WorkError> {
    let generation = state
        .works
        .snapshot()
        .get(name)
        .filter(|e| e.record.deleted.is_none())
        .map(|e| e.record.generation)
        .ok_or_else(|| crate::works::WorkError::NotFound(name.to_string()))?;
    state.store.write(|tx| {
        let mut r = tx
            .get(&ROLLOUTS, name)?
            .filter(|r| r.generation == generation)
            .unwrap_or(RolloutRecord {
                generation,
                ..RolloutRecord::default()
            });
        r.paused = paused;
        tx.put(&ROLLOUTS, name, &r)
    })?;
    state.decisions_wake.notify_one();
    Ok(())
}

/// Singleton works tell their agent when to fence itself.
pub fn fence_after_ms(spec: &tether_protocol::work::WorkSpec) -> Option<u64> {
    spec.failover
        .as_ref()
        .filter(|f| f.mode == tether_protocol::work::FailoverMode::Singleton)
        .map(|f| f.fence_after_seconds * 1000)
}
