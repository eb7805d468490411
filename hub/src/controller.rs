//! The decision loop: placement, overrides and rollouts for every work, recomputed when works,
//! clusters, health or status change (and every second). The decisions themselves are the pure
//! functions in `placement`, `render` and `rollout`; this module gathers their inputs, persists
//! rollout state and publishes the result to the sessions.

use crate::hub::HubState;
use crate::placement::{self, Candidate, Choice};
use crate::rollout::{self, ClusterProgress, Group, Limit, OfflinePolicy, Phase, Progress};
use crate::singleton;
use crate::util::now_ms;
use crate::works::{Want, WorkEntry};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tether_protocol::work::{
    CountOrPercent, Divide, FailoverMode, OfflinePolicySpec, RolloutSpec, RolloutStrategy,
};
use tether_protocol::{close_code, Labels, WorkPhase};
use tether_store::hub::{
    work_history_key, ClusterState, ClusterWorkRecord, RolloutRecord, CLUSTERS, CLUSTER_WORKS,
    ROLLOUTS, WORK_HISTORY,
};
use tether_store::StoreError;

/// What the hub decided for one work at one generation.
#[derive(Debug, Clone, Default)]
pub struct WorkDecision {
    pub generation: u64,
    /// Selected clusters and the override rules that apply to each.
    pub selected: BTreeMap<String, crate::render::Assignment>,
    pub choices: Vec<Choice>,
    /// `None`: every selected cluster may hold this generation.
    pub admitted: Option<BTreeSet<String>>,
    pub rollout: Option<RolloutView>,
    /// Every selected cluster reports this generation applied: copies on clusters that are no
    /// longer selected may now be removed (never before: nothing is mass-deleted on reconnect).
    pub replacements_ready: bool,
    /// A singleton: copies elsewhere go first (break before make, see `singleton`).
    pub singleton: bool,
    /// Singleton only: clusters that may still run it; the target waits for them.
    pub waiting_for: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RolloutView {
    pub generation: u64,
    pub phase: String,
    pub paused: bool,
    pub total: usize,
    pub admitted: usize,
    pub done: usize,
    pub in_flight: usize,
    pub failed: usize,
    pub pending_offline: usize,
    pub rollback_of: Option<u64>,
    /// Highest (slots in use + newly admitted) at any admission for this generation since the
    /// hub started: the quantity `maxConcurrency` bounds. Simulations check it.
    #[serde(default)]
    pub admission_peak: usize,
}

#[derive(Default)]
pub struct Decisions {
    map: RwLock<Arc<BTreeMap<String, Arc<WorkDecision>>>>,
}

impl Decisions {
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<WorkDecision>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, next: BTreeMap<String, Arc<WorkDecision>>) {
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
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

fn limit(v: &Option<CountOrPercent>, default: Limit) -> Limit {
    match v {
        None => default,
        Some(CountOrPercent::Count(n)) => Limit::Count(*n),
        Some(p @ CountOrPercent::Percent(_)) => match p.percent() {
            Ok(Some(p)) => Limit::Percent(p),
            _ => default,
        },
    }
}

fn strategy(spec: &RolloutSpec, fleet: &[Candidate]) -> rollout::Strategy {
    rollout::Strategy {
        max_concurrency: limit(&spec.max_concurrency, Limit::Percent(25)),
        max_failures: limit(&spec.max_failures, Limit::Count(0)),
        min_success_ms: spec.min_success_seconds * 1000,
        progress_deadline_ms: spec.progress_deadline_seconds.map(|s| s * 1000),
        offline: match spec.offline_policy {
            OfflinePolicySpec::Skip => OfflinePolicy::Skip,
            OfflinePolicySpec::Wait => OfflinePolicy::Wait,
            OfflinePolicySpec::Fail => OfflinePolicy::Fail,
        },
        groups: spec
            .groups
            .iter()
            .map(|g| Group {
                name: g.name.clone(),
                members: fleet
                    .iter()
                    .filter(|c| {
                        g.clusters.contains(&c.name)
                            || g.selector.as_ref().is_some_and(|s| s.matches(&c.labels))
                    })
                    .map(|c| c.name.clone())
                    .collect(),
                mandatory: g.mandatory,
            })
            .collect(),
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
            Ok(Ok(changed)) => {
                if changed {
                    state.works.poke();
                }
            }
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

/// One pass over every work. Returns whether any cluster's allowed state changed.
pub fn decide_all(state: &HubState) -> Result<bool, StoreError> {
    let now = now_ms();
    let works = state.works.snapshot();
    let in_flight = state.singleton_in_flight.snapshot();
    let (clusters, rows, rollouts) = state.store.read(|tx| {
        Ok::<_, StoreError>((
            tx.list(&CLUSTERS)?,
            tx.list(&CLUSTER_WORKS)?,
            tx.list(&ROLLOUTS)?,
        ))
    })?;
    // Per cluster: reachable now, and for how long it has not been (hub time).
    let (online, unreachable_ms): (BTreeMap<String, bool>, BTreeMap<String, u64>) = {
        let h = state.health.lock().unwrap_or_else(|p| p.into_inner());
        let mut online = BTreeMap::new();
        let mut away = BTreeMap::new();
        for (n, c) in &clusters {
            let ready = h.state(n) == Some(ClusterState::Ready);
            online.insert(n.clone(), ready);
            if !ready {
                let since = h
                    .last_heartbeat(n)
                    .or(c.last_seen_ms)
                    .unwrap_or(c.state_since_ms)
                    .max(state.started_ms);
                away.insert(n.clone(), now.saturating_sub(since));
            }
        }
        (online, away)
    };
    let fleet: Vec<Candidate> = clusters
        .iter()
        .filter(|(_, c)| c.state != ClusterState::Denied)
        .map(|(n, c)| Candidate {
            name: n.clone(),
            labels: placement::selectable_labels(
                &c.labels,
                &crate::facts::effective(&c.facts, &c.pins),
            ),
        })
        .collect();
    let mut status: BTreeMap<(String, String), ClusterWorkRecord> = BTreeMap::new();
    for (key, row) in rows {
        if let Some((c, w)) = key.split_once('/') {
            status.insert((w.to_string(), c.to_string()), row);
        }
    }
    let rollouts: BTreeMap<String, RolloutRecord> = rollouts.into_iter().collect();
    let previous = state.decisions.snapshot();
    let mut next = BTreeMap::new();
    let mut writes: Vec<(String, RolloutRecord)> = Vec::new();
    let mut rollbacks = Vec::new();
    let mut changed = false;

    for (name, entry) in works.iter() {
        if entry.record.deleted.is_some() {
            continue;
        }
        let spec = &entry.record.document.spec;
        let generation = entry.record.generation;
        let tainted: BTreeMap<String, String> = match &spec.failover {
            None => BTreeMap::new(),
            Some(f) => {
                let (limit_s, what) = match f.mode {
                    FailoverMode::Singleton => (
                        f.fence_after_seconds + f.clock_skew_seconds,
                        "fenceAfterSeconds + clockSkewSeconds",
                    ),
                    FailoverMode::Multi => (f.toleration_seconds, "tolerationSeconds"),
                };
                let may_move = |ms: u64| match f.mode {
                    FailoverMode::Singleton => tether_protocol::fencing::may_move(
                        Duration::from_millis(ms),
                        Duration::from_secs(f.fence_after_seconds),
                        Duration::from_secs(f.clock_skew_seconds),
                    ),
                    FailoverMode::Multi => ms > limit_s * 1000,
                };
                unreachable_ms
                    .iter()
                    .filter(|(_, ms)| may_move(**ms))
                    .map(|(c, ms)| {
                        (
                            c.clone(),
                            format!(
                                "tainted unreachable for {}s (> {what} = {limit_s}s)",
                                ms / 1000
                            ),
                        )
                    })
                    .collect()
            }
        };
        let sticky: BTreeSet<String> = previous
            .get(name)
            .map(|d| d.selected.keys().cloned().collect())
            .unwrap_or_else(|| {
                // After a hub restart: whoever holds it keeps it.
                status
                    .iter()
                    .filter(|((w, _), row)| w == name && row.delivered.is_some())
                    .map(|((_, c), _)| c.clone())
                    .collect()
            });
        let singleton = spec
            .failover
            .as_ref()
            .is_some_and(|f| f.mode == FailoverMode::Singleton);
        // A singleton goes to a cluster that can take it now: sending it into a partition
        // leaves a copy in flight that could start later next to its replacement.
        let mut excluded = tainted.clone();
        if singleton {
            for (c, ready) in &online {
                if !ready && !sticky.contains(c) {
                    excluded.entry(c.clone()).or_insert_with(|| {
                        "not Ready (a singleton goes to a Ready cluster)".into()
                    });
                }
            }
        }
        let choices = placement::select(name, spec, &fleet, &sticky, &excluded);
        let labels_of = |c: &str| -> Labels {
            fleet
                .iter()
                .find(|f| f.name == c)
                .map(|f| f.labels.clone())
                .unwrap_or_default()
        };
        let shares = spec
            .placement
            .as_ref()
            .and_then(|p| p.replicas.as_ref())
            .map(|div| {
                let picked = choices.iter().filter(|c| c.selected);
                let weights = match div.divide {
                    Divide::Capacity => {
                        let claimed: Vec<(String, u32, bool)> = picked
                            .map(|c| {
                                let rec = clusters.iter().find(|(n, _)| n == &c.cluster);
                                let cpus = rec
                                    .map(|(_, r)| crate::facts::effective(&r.facts, &r.pins).cpus)
                                    .unwrap_or(1);
                                let pinned = rec.is_some_and(|(_, r)| r.pins.cpus.is_some());
                                (c.cluster.clone(), cpus, pinned)
                            })
                            .collect();
                        crate::facts::capacity_weights(&claimed)
                            .into_iter()
                            .collect()
                    }
                    Divide::Weighted => picked
                        .map(|c| {
                            let labels = labels_of(&c.cluster);
                            let w = div
                                .weights
                                .iter()
                                .find(|w| w.selector.matches(&labels))
                                .map(|w| w.weight)
                                .unwrap_or(1);
                            (c.cluster.clone(), w)
                        })
                        .collect(),
                };
                placement::divide_replicas(div.total, &weights)
            })
            .unwrap_or_default();
        let selected: BTreeMap<String, crate::render::Assignment> = choices
            .iter()
            .filter(|c| c.selected)
            .map(|c| {
                (
                    c.cluster.clone(),
                    crate::render::Assignment {
                        rules: crate::render::matching_rules(
                            spec,
                            &c.cluster,
                            &labels_of(&c.cluster),
                        ),
                        replicas: shares.get(&c.cluster).copied(),
                    },
                )
            })
            .collect();
        let replacements_ready = selected.keys().all(|c| {
            status
                .get(&(name.clone(), c.clone()))
                .and_then(|r| r.status.as_ref())
                .is_some_and(|s| {
                    s.generation == generation
                        && matches!(s.phase, WorkPhase::Available | WorkPhase::Applied)
                })
        });
        // Clusters whose maintenance window (named by label, defined in this work) is closed.
        let outside_window: BTreeSet<String> = spec
            .rollout
            .as_ref()
            .filter(|r| !r.maintenance_windows.is_empty())
            .map(|r| {
                selected
                    .keys()
                    .filter(|c| {
                        let labels = labels_of(c);
                        let Some(w) = labels
                            .get(tether_protocol::work::MAINTENANCE_WINDOW_LABEL)
                            .and_then(|name| r.maintenance_windows.get(name))
                        else {
                            return false;
                        };
                        match crate::windows::is_open(w, now) {
                            Ok(open) => !open,
                            Err(e) => {
                                tracing::warn!(work = %name, cluster = %c, error = %e, "bad maintenance window");
                                true
                            }
                        }
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut waiting_for = Vec::new();
        if singleton && !selected.is_empty() {
            let others: Vec<singleton::Other> = clusters
                .iter()
                .filter(|(c, _)| !selected.contains_key(c))
                .map(|(c, _)| singleton::Other {
                    cluster: c,
                    may_hold: in_flight.contains(&(name.clone(), c.clone()))
                        || singleton::copy_may_run(status.get(&(name.clone(), c.clone()))),
                    tainted: tainted.contains_key(c),
                    session_open: state.sessions.stable_id(c).is_some(),
                })
                .collect();
            for c in singleton::sessions_to_close(others.iter().cloned()) {
                tracing::info!(work = %name, cluster = %c, "closing the session of a tainted cluster that may hold the singleton, so nothing in flight reaches it after the move");
                state
                    .sessions
                    .close(&c, close_code::NORMAL, "singleton moves away");
            }
            waiting_for = singleton::blockers(others.into_iter().map(|mut o| {
                o.session_open = state.sessions.stable_id(o.cluster).is_some();
                o
            }));
        }
        let mut decision = WorkDecision {
            generation,
            selected,
            choices,
            admitted: None,
            rollout: None,
            replacements_ready,
            singleton,
            waiting_for,
        };
        let progressive = spec
            .rollout
            .as_ref()
            .filter(|r| r.strategy == RolloutStrategy::Progressive);
        let mut record = rollouts
            .get(name)
            .filter(|r| r.generation == generation)
            .cloned()
            .unwrap_or(RolloutRecord {
                generation,
                ..RolloutRecord::default()
            });
        match progressive {
            Some(r) if record.rollback_of.is_none() => {
                let members: Vec<Candidate> = fleet
                    .iter()
                    .filter(|c| decision.selected.contains_key(&c.name))
                    .cloned()
                    .collect();
                let mut progress = Vec::new();
                for c in &members {
                    let row = status.get(&(name.clone(), c.name.clone()));
                    let st = row
                        .and_then(|r| r.status.as_ref())
                        .filter(|s| s.generation == generation);
                    let p = match st.map(|s| s.phase) {
                        Some(WorkPhase::Available | WorkPhase::Applied) => {
                            let since = *record.healthy_since.entry(c.name.clone()).or_insert(now);
                            Progress::Healthy { since_ms: since }
                        }
                        Some(WorkPhase::Failed) => Progress::Failed,
                        _ => match record.admitted.get(&c.name) {
                            Some(at) => Progress::Updating { since_ms: *at },
                            // Already on this generation (e.g. content unchanged): started.
                            None if row
                                .and_then(|r| r.delivered.as_ref())
                                .is_some_and(|d| d.generation == generation) =>
                            {
                                Progress::Updating { since_ms: now }
                            }
                            None => Progress::NotStarted,
                        },
                    };
                    progress.push(ClusterProgress {
                        name: c.name.clone(),
                        online: online.get(&c.name).copied().unwrap_or(false),
                        progress: p,
                        admissible: !outside_window.contains(&c.name),
                    });
                }
                let strat = strategy(r, &members);
                let d = rollout::decide(&strat, &progress, record.paused, now);
                let in_use_before = d.in_flight - d.newly_admitted.len();
                let peak_before = previous
                    .get(name)
                    .and_then(|p| p.rollout.as_ref())
                    .filter(|v| v.generation == generation)
                    .map_or(0, |v| v.admission_peak);
                let admission_peak = if d.newly_admitted.is_empty() {
                    peak_before
                } else {
                    peak_before.max(in_use_before + d.newly_admitted.len())
                };
                for n in &d.admitted {
                    record.admitted.entry(n.clone()).or_insert(now);
                }
                let phase = match &d.phase {
                    Phase::Progressing => "Progressing".to_string(),
                    Phase::Complete => "Complete".to_string(),
                    Phase::Paused(why) => format!("Paused: {why}"),
                };
                if r.auto_rollback
                    && !record.rolled_back
                    && d.failed > strat.max_failures.resolve(members.len(), false)
                {
                    record.rolled_back = true;
                    rollbacks.push(name.clone());
                }
                if !d.newly_admitted.is_empty() {
                    tracing::info!(work = %name, generation, admitted = ?d.newly_admitted, "rollout admitted clusters");
                }
                decision.rollout = Some(RolloutView {
                    generation,
                    phase: phase.clone(),
                    paused: record.paused,
                    total: members.len(),
                    admitted: d.admitted.len(),
                    done: d.done,
                    in_flight: d.in_flight,
                    failed: d.failed,
                    pending_offline: d.pending_offline,
                    rollback_of: None,
                    admission_peak,
                });
                decision.admitted = Some(d.admitted);
                record.phase = phase;
                if rollouts.get(name) != Some(&record) {
                    writes.push((name.clone(), record));
                }
            }
            _ => {
                if !outside_window.is_empty() && record.rollback_of.is_none() {
                    // Outside its window a cluster keeps what it has; already-updated ones stay.
                    decision.admitted = Some(
                        decision
                            .selected
                            .keys()
                            .filter(|c| {
                                !outside_window.contains(*c)
                                    || status.get(&(name.clone(), (*c).clone())).is_some_and(|r| {
                                        r.delivered
                                            .as_ref()
                                            .is_some_and(|d| d.generation == generation)
                                    })
                            })
                            .cloned()
                            .collect(),
                    );
                }
                if let Some(of) = record.rollback_of {
                    decision.rollout = Some(RolloutView {
                        generation,
                        phase: format!("RolledBack: restores generation {of} everywhere at once"),
                        rollback_of: Some(of),
                        total: decision.selected.len(),
                        ..RolloutView::default()
                    });
                }
            }
        }
        let before = previous.get(name);
        if before.is_none_or(|b| {
            b.generation != decision.generation
                || b.selected != decision.selected
                || b.admitted != decision.admitted
                || b.replacements_ready != decision.replacements_ready
                || b.waiting_for != decision.waiting_for
        }) {
            changed = true;
        }
        next.insert(name.clone(), Arc::new(decision));
    }
    if !writes.is_empty() {
        state.store.write(|tx| {
            for (name, r) in &writes {
                tx.put(&ROLLOUTS, name, r)?;
            }
            Ok::<_, StoreError>(())
        })?;
    }
    state.decisions.publish(next);
    for name in rollbacks {
        if let Err(e) = undo(state, &name, None, "auto-rollback") {
            tracing::error!(work = %name, error = %e, "automatic rollback failed");
        }
    }
    Ok(changed)
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
