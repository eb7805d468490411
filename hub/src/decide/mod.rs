//! The decision core: from a view of the fleet, the works, the previous decisions and `now`,
//! what every work's placement, admission and rollout state is, and what the shell must do
//! about it. Pure: no store, no tokio, no clock; `controller` gathers the inputs and carries
//! out the effects.

pub mod placement;
mod progressive;
mod replicas;
pub mod rollout;
pub mod singleton;
mod taints;

use crate::api::Choice;
pub use crate::api::RolloutView;
use placement::Candidate;

use crate::works::WorkEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tether_protocol::work::{FailoverMode, RolloutStrategy};
use tether_protocol::{Labels, WorkPhase};
use tether_store::hub::{ClusterWorkRecord, RolloutRecord};

/// What the hub decided for one work at one generation (stored for the other hub replicas
/// on PostgreSQL, see `replicas`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkDecision {
    pub generation: u64,
    /// Selected clusters and the override rules that apply to each.
    pub selected: BTreeMap<String, crate::works::render::Assignment>,
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

impl WorkDecision {
    /// Whether a delivery task could plan differently under `other`.
    fn same_plan(&self, other: &WorkDecision) -> bool {
        self.generation == other.generation
            && self.selected == other.selected
            && self.admitted == other.admitted
            && self.replacements_ready == other.replacements_ready
            && self.waiting_for == other.waiting_for
    }
}

/// Whether a change of `cluster`'s row of a work can change that work's decision. A plain
/// work (no failover, no rollout settings) depends on a row only through
/// `replacements_ready`, so a status re-report that leaves a selected cluster as ready as it
/// was (the steady state of a fleet) costs nothing. Works with failover or rollout settings
/// are decided every tick anyway.
pub(crate) fn row_change_matters(
    entry: Option<&WorkEntry>,
    previous: Option<&WorkDecision>,
    cluster: &str,
    old: Option<&ClusterWorkRecord>,
    new: Option<&ClusterWorkRecord>,
) -> bool {
    let (Some(entry), Some(previous)) = (entry, previous) else {
        return true;
    };
    let spec = &entry.record.document.spec;
    let generation = entry.record.generation;
    if spec.failover.is_some() || spec.rollout.is_some() || previous.generation != generation {
        return true;
    }
    let ready = |r: Option<&ClusterWorkRecord>| {
        r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
            s.generation == generation
                && matches!(s.phase, WorkPhase::Available | WorkPhase::Applied)
        })
    };
    previous.selected.contains_key(cluster) && ready(old) != ready(new)
}

/// The clusters whose delivery plan can differ between two decisions of one work; `None`
/// means any cluster (a new generation, a deleted work, or a change that concerns clusters
/// holding old copies, which a decision does not list).
pub(crate) fn affected_clusters(
    old: Option<&WorkDecision>,
    new: Option<&WorkDecision>,
) -> Option<BTreeSet<String>> {
    let (old, new) = (old?, new?);
    if old.generation != new.generation
        || old.replacements_ready != new.replacements_ready
        || old.singleton != new.singleton
        || old.waiting_for != new.waiting_for
    {
        return None;
    }
    let mut out: BTreeSet<String> = BTreeSet::new();
    for (c, a) in &old.selected {
        if new.selected.get(c) != Some(a) {
            out.insert(c.clone());
        }
    }
    for c in new.selected.keys() {
        if !old.selected.contains_key(c) {
            out.insert(c.clone());
        }
    }
    match (&old.admitted, &new.admitted) {
        (Some(a), Some(b)) => out.extend(a.symmetric_difference(b).cloned()),
        (None, None) => {}
        _ => out.extend(old.selected.keys().chain(new.selected.keys()).cloned()),
    }
    Some(out)
}

/// One cluster as decisions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterView {
    /// Labels plus effective facts as `tether.dev/*` labels (see `placement::selectable_labels`).
    pub labels: Labels,
    /// Effective cpu count, and whether an admin pinned it (see `facts`).
    pub cpus: u32,
    pub cpus_pinned: bool,
    pub denied: bool,
    pub ready: bool,
    /// How long it has been unreachable (hub time); `None` while Ready.
    pub away_ms: Option<u64>,
    pub session_open: bool,
}

pub(crate) struct Inputs<'a> {
    pub now_ms: u64,
    pub works: &'a BTreeMap<String, Arc<WorkEntry>>,
    pub clusters: &'a BTreeMap<String, ClusterView>,
    /// Keyed by (work, cluster).
    pub status: &'a BTreeMap<(String, String), ClusterWorkRecord>,
    pub rollouts: &'a BTreeMap<String, RolloutRecord>,
    /// (work, cluster) singleton deliveries not yet answered.
    pub in_flight: &'a BTreeSet<(String, String)>,
    pub previous: &'a BTreeMap<String, Arc<WorkDecision>>,
    /// Decide only these works (the ones a change touched); every other work keeps its
    /// previous decision if that decision is for its current generation. `None`: all.
    pub only: Option<&'a BTreeSet<String>>,
}

/// What the shell must do, in this order, before it publishes the decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A tainted cluster that may hold a singleton keeps a session: close it, so nothing in
    /// flight reaches it after the singleton moves.
    CloseSession { cluster: String, work: String },
    /// Failures passed `maxFailures` with `autoRollback`: restore the previous generation.
    AutoRollback { work: String },
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub decisions: BTreeMap<String, Arc<WorkDecision>>,
    /// Rollout state that changed, to persist before publishing.
    pub rollout_writes: Vec<(String, RolloutRecord)>,
    pub effects: Vec<Effect>,
    /// Whether any work's plan differs from `previous` (sessions must re-plan).
    pub changed: bool,
    /// The works whose plan differs from `previous` (deleted ones included).
    pub changed_works: BTreeSet<String>,
    /// How many works were decided (the rest kept their previous decision).
    pub decided: usize,
}

/// Decide every work that is not deleted (or, with `only`, the works a change touched).
pub(crate) fn decide(inputs: &Inputs) -> Outcome {
    // Built only if some work is decided: a change that touches no work costs nothing per
    // cluster.
    let mut fleet: Option<Vec<Candidate>> = None;
    let mut out = Outcome::default();
    // Sessions closed earlier in this pass count as closed for later works, as they are by the
    // time the decisions are published.
    let mut closing: BTreeSet<String> = BTreeSet::new();
    for (name, entry) in inputs.works.iter() {
        if entry.record.deleted.is_some() {
            continue;
        }
        let previous = inputs.previous.get(name);
        let untouched = inputs.only.is_some_and(|only| !only.contains(name));
        if let Some(p) = previous.filter(|p| untouched && p.generation == entry.record.generation) {
            out.decisions.insert(name.clone(), p.clone());
            continue;
        }
        out.decided += 1;
        let fleet = fleet.get_or_insert_with(|| {
            inputs
                .clusters
                .iter()
                .filter(|(_, c)| !c.denied)
                .map(|(n, c)| Candidate {
                    name: n.clone(),
                    labels: c.labels.clone(),
                })
                .collect()
        });
        let decision = decide_work(inputs, fleet, name, entry, &mut closing, &mut out);
        if previous.is_none_or(|b| !b.same_plan(&decision)) {
            out.changed_works.insert(name.clone());
        }
        out.decisions.insert(name.clone(), Arc::new(decision));
    }
    // A work deleted (or gone) since: sessions must re-plan to remove it.
    for k in inputs.previous.keys() {
        if !out.decisions.contains_key(k) {
            out.changed_works.insert(k.clone());
        }
    }
    out.changed = !out.changed_works.is_empty();
    out
}

fn decide_work(
    inputs: &Inputs,
    fleet: &[Candidate],
    name: &str,
    entry: &WorkEntry,
    closing: &mut BTreeSet<String>,
    out: &mut Outcome,
) -> WorkDecision {
    let spec = &entry.record.document.spec;
    let generation = entry.record.generation;
    let row = |c: &str| inputs.status.get(&(name.to_string(), c.to_string()));
    let tainted = taints::tainted(spec.failover.as_ref(), inputs.clusters);
    let sticky: BTreeSet<String> = inputs
        .previous
        .get(name)
        .map(|d| d.selected.keys().cloned().collect())
        .unwrap_or_else(|| {
            // After a hub restart: whoever holds it keeps it.
            inputs
                .status
                .range((name.to_string(), String::new())..)
                .take_while(|((w, _), _)| w == name)
                .filter(|(_, row)| row.delivered.is_some())
                .map(|((_, c), _)| c.clone())
                .collect()
        });
    let singleton = spec
        .failover
        .as_ref()
        .is_some_and(|f| f.mode == FailoverMode::Singleton);
    // A singleton goes to a cluster that can take it now: sending it into a partition leaves a
    // copy in flight that could start later next to its replacement.
    let mut excluded = tainted.clone();
    if singleton {
        for (c, view) in inputs.clusters {
            if !view.ready && !sticky.contains(c) {
                excluded
                    .entry(c.clone())
                    .or_insert_with(|| "not Ready (a singleton goes to a Ready cluster)".into());
            }
        }
    }
    // A work applied by a scoped operator reaches only that operator's cluster set, decided
    // anew at every pass: a cluster relabelled out of the set loses the work.
    let scope = &entry.record.scope;
    if !scope.clusters.is_empty() {
        for c in fleet.iter().filter(|c| !scope.admits_cluster(&c.labels)) {
            excluded.entry(c.name.clone()).or_insert_with(|| {
                format!(
                    "outside the cluster set of the operator who applied the work ({})",
                    scope
                )
            });
        }
    }
    let choices = placement::select(name, spec, fleet, &sticky, &excluded);
    let labels_of = |c: &str| -> Labels {
        inputs
            .clusters
            .get(c)
            .filter(|v| !v.denied)
            .map(|v| v.labels.clone())
            .unwrap_or_default()
    };
    let shares = replicas::shares(spec, &choices, inputs.clusters, &labels_of);
    let selected: BTreeMap<String, crate::works::render::Assignment> = choices
        .iter()
        .filter(|c| c.selected)
        .map(|c| {
            (
                c.cluster.clone(),
                crate::works::render::Assignment {
                    rules: crate::works::render::matching_rules(
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
        row(c).and_then(|r| r.status.as_ref()).is_some_and(|s| {
            s.generation == generation
                && matches!(s.phase, WorkPhase::Available | WorkPhase::Applied)
        })
    });
    let outside_window =
        progressive::outside_window(name, spec, &selected, &labels_of, inputs.now_ms);
    let mut waiting_for = Vec::new();
    if singleton && !selected.is_empty() {
        let others: Vec<singleton::Other> = inputs
            .clusters
            .iter()
            .filter(|(c, _)| !selected.contains_key(*c))
            .map(|(c, view)| singleton::Other {
                cluster: c,
                may_hold: inputs.in_flight.contains(&(name.to_string(), c.clone()))
                    || singleton::copy_may_run(row(c)),
                tainted: tainted.contains_key(c),
                session_open: view.session_open && !closing.contains(c),
            })
            .collect();
        for c in singleton::sessions_to_close(others.iter().cloned()) {
            closing.insert(c.clone());
            out.effects.push(Effect::CloseSession {
                cluster: c,
                work: name.to_string(),
            });
        }
        waiting_for = singleton::blockers(others.into_iter().map(|mut o| {
            o.session_open = o.session_open && !closing.contains(o.cluster);
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
    // A pause is the operator's, not the generation's: it holds across later applies until
    // `resume` (an undo writes its own record and is never held).
    let record = match inputs.rollouts.get(name) {
        Some(r) if r.generation == generation => r.clone(),
        previous => RolloutRecord {
            generation,
            paused: previous.is_some_and(|r| r.paused && r.rollback_of.is_none()),
            ..RolloutRecord::default()
        },
    };
    let progressive_spec = spec
        .rollout
        .as_ref()
        .filter(|r| r.strategy == RolloutStrategy::Progressive);
    match progressive_spec {
        Some(r) if record.rollback_of.is_none() => {
            let step = progressive::step(
                &progressive::Context {
                    name,
                    generation,
                    spec: r,
                    fleet,
                    inputs,
                    outside_window: &outside_window,
                    peak_before: inputs
                        .previous
                        .get(name)
                        .and_then(|p| p.rollout.as_ref())
                        .filter(|v| v.generation == generation)
                        .map_or(0, |v| v.admission_peak),
                },
                &decision.selected,
                record,
            );
            if step.roll_back {
                out.effects.push(Effect::AutoRollback {
                    work: name.to_string(),
                });
            }
            decision.rollout = Some(step.view);
            decision.admitted = Some(step.admitted);
            if inputs.rollouts.get(name) != Some(&step.record) {
                out.rollout_writes.push((name.to_string(), step.record));
            }
        }
        _ => {
            let held = |c: &String| {
                row(c).is_some_and(|r| {
                    r.delivered
                        .as_ref()
                        .is_some_and(|d| d.generation == generation)
                })
            };
            let paused = record.paused && record.rollback_of.is_none();
            if paused {
                // Paused without a progressive strategy: nobody new receives this generation;
                // clusters that already hold it keep it.
                let admitted: BTreeSet<String> = decision
                    .selected
                    .keys()
                    .filter(|c| held(c))
                    .cloned()
                    .collect();
                decision.rollout = Some(RolloutView {
                    generation,
                    phase: crate::api::RolloutPhase::Paused,
                    reason: "paused by an operator".into(),
                    paused: true,
                    total: decision.selected.len(),
                    admitted: admitted.len(),
                    ..RolloutView::default()
                });
                decision.admitted = Some(admitted);
                if inputs.rollouts.get(name) != Some(&record) {
                    out.rollout_writes.push((name.to_string(), record.clone()));
                }
            } else if !outside_window.is_empty() && record.rollback_of.is_none() {
                // Outside its window a cluster keeps what it has; already-updated ones stay.
                decision.admitted = Some(
                    decision
                        .selected
                        .keys()
                        .filter(|c| !outside_window.contains(*c) || held(c))
                        .cloned()
                        .collect(),
                );
            }
            if let Some(of) = record.rollback_of {
                decision.rollout = Some(RolloutView {
                    generation,
                    phase: crate::api::RolloutPhase::RolledBack,
                    reason: format!("restores generation {of} everywhere at once"),
                    rollback_of: Some(of),
                    total: decision.selected.len(),
                    ..RolloutView::default()
                });
            }
        }
    }
    decision
}

#[cfg(test)]
mod tests;
