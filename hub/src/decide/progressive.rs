//! One step of a progressive rollout, and maintenance windows.

use super::{Inputs, RolloutView};
use crate::api::RolloutPhase;
use crate::decide::placement::Candidate;
use crate::decide::rollout::{self, ClusterProgress, Group, Limit, OfflinePolicy, Phase, Progress};
use std::collections::{BTreeMap, BTreeSet};
use tether_protocol::work::{CountOrPercent, OfflinePolicySpec, RolloutSpec, WorkSpec};
use tether_protocol::{Labels, WorkPhase};
use tether_store::hub::RolloutRecord;

/// Selected clusters whose maintenance window (named by their label, defined in the work) is
/// closed at `now`. A window that cannot be read counts as closed: never update by accident.
pub(super) fn outside_window(
    name: &str,
    spec: &WorkSpec,
    selected: &BTreeMap<String, crate::works::render::Assignment>,
    labels_of: &dyn Fn(&str) -> Labels,
    now_ms: u64,
) -> BTreeSet<String> {
    let Some(r) = spec
        .rollout
        .as_ref()
        .filter(|r| !r.maintenance_windows.is_empty())
    else {
        return BTreeSet::new();
    };
    selected
        .keys()
        .filter(|c| {
            let labels = labels_of(c);
            let Some(w) = labels
                .get(tether_protocol::work::MAINTENANCE_WINDOW_LABEL)
                .and_then(|n| r.maintenance_windows.get(n))
            else {
                return false;
            };
            match crate::works::windows::is_open(w, now_ms) {
                Ok(open) => !open,
                Err(e) => {
                    tracing::warn!(work = %name, cluster = %c, error = %e, "bad maintenance window");
                    true
                }
            }
        })
        .cloned()
        .collect()
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

pub(super) fn strategy(spec: &RolloutSpec, fleet: &[Candidate]) -> rollout::Strategy {
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

pub(super) struct Context<'a> {
    pub name: &'a str,
    pub generation: u64,
    pub spec: &'a RolloutSpec,
    pub fleet: &'a [Candidate],
    pub inputs: &'a Inputs<'a>,
    pub outside_window: &'a BTreeSet<String>,
    /// `admission_peak` already published for this generation.
    pub peak_before: usize,
}

pub(super) struct Step {
    pub view: RolloutView,
    pub admitted: BTreeSet<String>,
    pub record: RolloutRecord,
    /// Failures passed `maxFailures` and the work rolls back automatically (once).
    pub roll_back: bool,
}

/// Map each selected cluster's status to rollout progress and let `rollout::decide` admit.
pub(super) fn step(
    cx: &Context,
    selected: &BTreeMap<String, crate::works::render::Assignment>,
    mut record: RolloutRecord,
) -> Step {
    let now = cx.inputs.now_ms;
    let members: Vec<Candidate> = cx
        .fleet
        .iter()
        .filter(|c| selected.contains_key(&c.name))
        .cloned()
        .collect();
    let mut progress = Vec::new();
    for c in &members {
        let row = cx.inputs.status.get(&(cx.name.to_string(), c.name.clone()));
        let st = row
            .and_then(|r| r.status.as_ref())
            .filter(|s| s.generation == cx.generation);
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
                    .is_some_and(|d| d.generation == cx.generation) =>
                {
                    Progress::Updating { since_ms: now }
                }
                None => Progress::NotStarted,
            },
        };
        progress.push(ClusterProgress {
            name: c.name.clone(),
            online: cx.inputs.clusters.get(&c.name).is_some_and(|v| v.ready),
            progress: p,
            admissible: !cx.outside_window.contains(&c.name),
        });
    }
    let strat = strategy(cx.spec, &members);
    let d = rollout::decide(&strat, &progress, record.paused, now);
    let in_use_before = d.in_flight - d.newly_admitted.len();
    let admission_peak = if d.newly_admitted.is_empty() {
        cx.peak_before
    } else {
        cx.peak_before.max(in_use_before + d.newly_admitted.len())
    };
    for n in &d.admitted {
        record.admitted.entry(n.clone()).or_insert(now);
    }
    let (phase, reason) = match &d.phase {
        Phase::Progressing => (RolloutPhase::Progressing, String::new()),
        Phase::Complete => (RolloutPhase::Complete, String::new()),
        Phase::Paused(why) => (RolloutPhase::Paused, why.clone()),
    };
    let roll_back = cx.spec.auto_rollback
        && !record.rolled_back
        && d.failed > strat.max_failures.resolve(members.len(), false);
    if roll_back {
        record.rolled_back = true;
    }
    if !d.newly_admitted.is_empty() {
        tracing::info!(work = %cx.name, generation = cx.generation, admitted = ?d.newly_admitted, "rollout admitted clusters");
    }
    // The stored record keeps the text form it always had.
    record.phase = if reason.is_empty() {
        format!("{phase:?}")
    } else {
        format!("{phase:?}: {reason}")
    };
    Step {
        view: RolloutView {
            generation: cx.generation,
            phase,
            reason,
            paused: record.paused,
            total: members.len(),
            admitted: d.admitted.len(),
            done: d.done,
            in_flight: d.in_flight,
            failed: d.failed,
            pending_offline: d.pending_offline,
            rollback_of: None,
            admission_peak,
        },
        admitted: d.admitted,
        record,
        roll_back,
    }
}
