//! Rules of the decision core, one test each, on hand-built fleets; and properties that hold
//! for any fleet.

use super::*;
use proptest::prelude::*;
use tether_protocol::{HeldWork, WorkStatus};

const NOW: u64 = 10_000_000;

fn cluster(labels: &[(&str, &str)], ready: bool, away_s: Option<u64>) -> ClusterView {
    ClusterView {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cpus: 4,
        cpus_pinned: false,
        denied: false,
        ready,
        away_ms: away_s.map(|s| s * 1000),
        session_open: ready,
    }
}

fn work(name: &str, generation: u64, spec: serde_json::Value) -> Arc<WorkEntry> {
    let mut spec = spec;
    spec.as_object_mut().unwrap().insert(
        "manifests".into(),
        serde_json::json!([{"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default"}, "data": {"k": "v"}}]),
    );
    let document = serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Work",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("test work");
    Arc::new(WorkEntry::new(
        tether_store::hub::WorkRecord {
            document,
            generation,
            created_at_ms: 0,
            updated_at_ms: 0,
            deleted: None,
            scope: Default::default(),
        },
        None,
    ))
}

fn applied(generation: u64) -> ClusterWorkRecord {
    ClusterWorkRecord {
        delivered: Some(HeldWork {
            generation,
            hash: "0".repeat(64),
            fenced: false,
        }),
        delivered_at_ms: Some(0),
        status: Some(WorkStatus {
            work: String::new(),
            generation,
            hash: "0".repeat(64),
            phase: WorkPhase::Applied,
            conditions: vec![],
            resources: vec![],
            message: String::new(),
            observed_at_ms: 0,
        }),
        status_seq: 1,
    }
}

#[derive(Default)]
struct World {
    works: BTreeMap<String, Arc<WorkEntry>>,
    clusters: BTreeMap<String, ClusterView>,
    status: BTreeMap<(String, String), ClusterWorkRecord>,
    rollouts: BTreeMap<String, RolloutRecord>,
    in_flight: BTreeSet<(String, String)>,
    previous: BTreeMap<String, Arc<WorkDecision>>,
}

impl World {
    fn with(mut self, name: &str, c: ClusterView) -> Self {
        self.clusters.insert(name.into(), c);
        self
    }
    fn add_work(mut self, w: Arc<WorkEntry>) -> Self {
        self.works
            .insert(w.record.document.metadata.name.clone(), w);
        self
    }
    fn decide(&self, now_ms: u64) -> Outcome {
        self.decide_among(now_ms, None)
    }
    fn decide_only(&self, now_ms: u64, only: &[&str]) -> Outcome {
        let only: BTreeSet<String> = only.iter().map(|s| s.to_string()).collect();
        self.decide_among(now_ms, Some(&only))
    }
    fn decide_among(&self, now_ms: u64, only: Option<&BTreeSet<String>>) -> Outcome {
        decide(&Inputs {
            now_ms,
            works: &self.works,
            clusters: &self.clusters,
            status: &self.status,
            rollouts: &self.rollouts,
            in_flight: &self.in_flight,
            previous: &self.previous,
            only,
        })
    }
    /// Decide, and remember the result as the previous decisions.
    fn step(&mut self, now_ms: u64) -> Outcome {
        let out = self.decide(now_ms);
        self.previous = out.decisions.clone();
        out
    }
}

fn selected(out: &Outcome, work: &str) -> Vec<String> {
    out.decisions[work].selected.keys().cloned().collect()
}

#[test]
fn a_taint_moves_a_slot_only_past_toleration_seconds() {
    let spec = serde_json::json!({
        "placement": {"selector": {}, "maxClusters": 1},
        "failover": {"mode": "Multi", "tolerationSeconds": 60},
    });
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .with("b", cluster(&[], true, None))
        .add_work(work("web", 1, spec));
    let first = selected(&w.step(NOW), "web");
    assert_eq!(first.len(), 1);
    let holder = first[0].clone();
    let other = if holder == "a" { "b" } else { "a" };
    w.clusters
        .insert(holder.clone(), cluster(&[], false, Some(60)));
    assert_eq!(
        selected(&w.step(NOW), "web"),
        vec![holder.clone()],
        "at the limit it stays"
    );
    w.clusters
        .insert(holder.clone(), cluster(&[], false, Some(61)));
    let out = w.step(NOW);
    assert_eq!(selected(&out, "web"), vec![other.to_string()]);
    let why = &out.decisions["web"]
        .choices
        .iter()
        .find(|c| c.cluster == holder)
        .unwrap()
        .reason;
    assert!(why.contains("tolerationSeconds"), "{why}");
}

#[test]
fn max_clusters_keeps_its_choice_when_a_new_cluster_appears() {
    let spec = serde_json::json!({"placement": {"selector": {}, "maxClusters": 2}});
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .with("b", cluster(&[], true, None))
        .add_work(work("web", 1, spec));
    let before = selected(&w.step(NOW), "web");
    for n in ["c", "d", "e", "f"] {
        w.clusters.insert(n.into(), cluster(&[], true, None));
    }
    assert_eq!(selected(&w.step(NOW), "web"), before, "no flapping");
}

#[test]
fn a_singleton_goes_only_to_a_ready_cluster() {
    let spec = serde_json::json!({
        "placement": {"selector": {}, "maxClusters": 1},
        "failover": {"mode": "Singleton"},
    });
    let w = World::default()
        .with("a", cluster(&[], false, Some(1)))
        .with("b", cluster(&[], true, None))
        .add_work(work("db", 1, spec));
    let out = w.decide(NOW);
    assert_eq!(selected(&out, "db"), vec!["b".to_string()]);
    assert!(out.decisions["db"].singleton);
}

#[test]
fn a_tainted_holder_of_a_singleton_loses_its_session_and_stops_blocking() {
    let spec = serde_json::json!({
        "placement": {"selector": {}, "maxClusters": 1},
        "failover": {"mode": "Singleton", "fenceAfterSeconds": 30, "clockSkewSeconds": 10},
    });
    let mut w = World::default()
        .with("old", cluster(&[], true, None))
        .add_work(work("db", 1, spec));
    w.step(NOW);
    w.status.insert(("db".into(), "old".into()), applied(1));
    w.clusters.insert("new".into(), cluster(&[], true, None));
    // Unreachable long enough to have fenced itself, but its connection lingers.
    let mut gone = cluster(&[], false, Some(3600));
    gone.session_open = true;
    w.clusters.insert("old".into(), gone);
    let out = w.step(NOW);
    assert_eq!(selected(&out, "db"), vec!["new".to_string()]);
    assert_eq!(
        out.effects,
        vec![Effect::CloseSession {
            cluster: "old".into(),
            work: "db".into()
        }]
    );
    assert!(
        out.decisions["db"].waiting_for.is_empty(),
        "the closed session no longer blocks the move"
    );
    // Reachable again but no longer selected: it may still run a copy, so the new holder waits.
    w.clusters.insert("old".into(), cluster(&[], true, None));
    let out = w.step(NOW);
    assert_eq!(out.decisions["db"].waiting_for, vec!["old".to_string()]);
}

#[test]
fn weighted_replicas_follow_label_weights() {
    let spec = serde_json::json!({"placement": {"selector": {}, "replicas": {
        "total": 9, "divide": "weighted",
        "weights": [{"selector": {"matchLabels": {"size": "large"}}, "weight": 2}]}}});
    let w = World::default()
        .with("big", cluster(&[("size", "large")], true, None))
        .with("s1", cluster(&[], true, None))
        .with("s2", cluster(&[], true, None))
        .add_work(work("app", 1, spec));
    let out = w.decide(NOW);
    let r = |c: &str| out.decisions["app"].selected[c].replicas;
    assert_eq!((r("big"), r("s1"), r("s2")), (Some(5), Some(2), Some(2)));
}

#[test]
fn replacements_are_ready_only_when_every_selected_cluster_applied_this_generation() {
    let spec = serde_json::json!({"placement": {"clusters": ["a", "b"]}});
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .with("b", cluster(&[], true, None))
        .add_work(work("app", 2, spec));
    w.status.insert(("app".into(), "a".into()), applied(2));
    w.status.insert(("app".into(), "b".into()), applied(1));
    assert!(!w.decide(NOW).decisions["app"].replacements_ready);
    w.status.insert(("app".into(), "b".into()), applied(2));
    assert!(w.decide(NOW).decisions["app"].replacements_ready);
}

#[test]
fn outside_its_maintenance_window_a_cluster_keeps_what_it_has() {
    let spec = serde_json::json!({
        "placement": {"selector": {}},
        "rollout": {"maintenanceWindows": {"night": {"cron": "0 1 * * *", "durationMinutes": 60}}},
    });
    let w = World::default()
        .with(
            "day",
            cluster(
                &[(tether_protocol::work::MAINTENANCE_WINDOW_LABEL, "night")],
                true,
                None,
            ),
        )
        .with("free", cluster(&[], true, None))
        .add_work(work("app", 1, spec));
    // 12:00 UTC: the night window is closed.
    let noon = 12 * 3_600_000;
    let admitted = w.decide(noon).decisions["app"].admitted.clone().unwrap();
    assert_eq!(admitted, BTreeSet::from(["free".to_string()]));
}

#[test]
fn failures_past_max_failures_roll_back_once() {
    let spec = serde_json::json!({
        "placement": {"selector": {}},
        "rollout": {"strategy": "Progressive", "maxConcurrency": 2, "maxFailures": 0, "autoRollback": true},
    });
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .with("b", cluster(&[], true, None))
        .add_work(work("app", 3, spec));
    let out = w.step(NOW);
    assert_eq!(out.rollout_writes.len(), 1, "admissions are persisted");
    w.rollouts = out.rollout_writes.into_iter().collect();
    let mut failed = applied(3);
    if let Some(s) = failed.status.as_mut() {
        s.phase = WorkPhase::Failed;
    }
    w.status.insert(("app".into(), "a".into()), failed);
    let out = w.step(NOW + 1000);
    assert_eq!(
        out.effects,
        vec![Effect::AutoRollback { work: "app".into() }]
    );
    w.rollouts = out.rollout_writes.into_iter().collect();
    assert!(w.rollouts["app"].rolled_back);
    assert!(w.step(NOW + 2000).effects.is_empty(), "only once");
}

#[test]
fn an_unchanged_fleet_is_no_change() {
    let spec = serde_json::json!({"placement": {"selector": {}}});
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .add_work(work("app", 1, spec));
    assert!(w.step(NOW).changed);
    assert!(!w.step(NOW + 500).changed);
}

#[test]
fn a_deleted_work_is_a_change_once() {
    let spec = serde_json::json!({"placement": {"selector": {}}});
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .add_work(work("app", 1, spec));
    w.step(NOW);
    w.works.clear();
    assert!(w.step(NOW).changed, "sessions must re-plan to remove it");
    assert!(!w.step(NOW).changed);
}

proptest! {
    /// Any fleet: a singleton is on at most one cluster, admitted clusters are selected ones,
    /// `maxClusters` holds, and denied clusters are never selected.
    #[test]
    fn decisions_respect_their_bounds(
        fleet in proptest::collection::vec((any::<bool>(), proptest::option::of(0u64..7200), any::<bool>(), any::<bool>()), 1..12),
        max in 1usize..4,
        singleton in any::<bool>(),
    ) {
        let mut w = World::default();
        for (i, (ready, away, denied, zone)) in fleet.iter().enumerate() {
            let mut c = cluster(&[("zone", if *zone { "x" } else { "y" })], *ready, if *ready { None } else { *away });
            c.denied = *denied;
            w.clusters.insert(format!("c{i}"), c);
        }
        let mut spec = serde_json::json!({"placement": {"selector": {}, "maxClusters": max}});
        if singleton {
            spec["placement"]["maxClusters"] = 1.into();
            spec["failover"] = serde_json::json!({"mode": "Singleton"});
        }
        w = w.add_work(work("p", 1, spec));
        let out = w.decide(NOW);
        let d = &out.decisions["p"];
        let bound = if singleton { 1 } else { max };
        prop_assert!(d.selected.len() <= bound);
        for c in d.selected.keys() {
            prop_assert!(!w.clusters[c].denied);
            if singleton {
                prop_assert!(w.clusters[c].ready);
            }
        }
        if let Some(a) = &d.admitted {
            prop_assert!(a.iter().all(|c| d.selected.contains_key(c)));
        }
    }
}

#[test]
fn deciding_only_the_touched_works_keeps_the_others_and_matches_a_full_pass() {
    let spec = serde_json::json!({"targets": {"selector": {"matchLabels": {"env": "prod"}}}});
    let mut w = World::default()
        .with("a", cluster(&[("env", "prod")], true, None))
        .with("b", cluster(&[("env", "dev")], true, None))
        .add_work(work("one", 1, spec.clone()))
        .add_work(work("two", 1, spec.clone()));
    w.step(NOW);
    // Cluster b joins prod; a change event names work "one" only.
    w.clusters
        .insert("b".into(), cluster(&[("env", "prod")], true, None));
    let partial = w.decide_only(NOW, &["one"]);
    assert_eq!(partial.decided, 1);
    assert_eq!(selected(&partial, "one"), ["a", "b"]);
    assert_eq!(
        selected(&partial, "two"),
        ["a"],
        "untouched: previous decision"
    );
    assert!(Arc::ptr_eq(&partial.decisions["two"], &w.previous["two"]));
    assert_eq!(partial.changed_works, BTreeSet::from(["one".to_string()]));
    let full = w.decide(NOW);
    assert_eq!(selected(&full, "one"), selected(&partial, "one"));
    // A new generation is decided even when no change event named it.
    w.works.insert("two".into(), work("two", 2, spec));
    let partial = w.decide_only(NOW, &[]);
    assert_eq!(partial.decided, 1);
    assert_eq!(partial.decisions["two"].generation, 2);
    assert_eq!(selected(&partial, "two"), ["a", "b"]);
}

#[test]
fn a_deleted_work_counts_as_a_changed_plan() {
    let spec = serde_json::json!({"targets": {"clusters": ["a"]}});
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .add_work(work("gone", 1, spec));
    w.step(NOW);
    w.works.clear();
    let out = w.decide_only(NOW, &[]);
    assert!(out.changed);
    assert_eq!(out.changed_works, BTreeSet::from(["gone".to_string()]));
}

#[test]
fn only_the_clusters_a_decision_change_concerns_are_woken() {
    let spec = serde_json::json!({
        "targets": {"selector": {}},
        "rollout": {"strategy": "Progressive", "maxConcurrency": 1},
    });
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .with("b", cluster(&[], true, None))
        .with("c", cluster(&[], true, None))
        .add_work(work("web", 1, spec));
    let first = w.step(NOW);
    let admitted = first.decisions["web"].admitted.clone().unwrap();
    assert_eq!(admitted.len(), 1);
    let done = admitted.iter().next().unwrap().clone();
    w.status.insert(("web".into(), done.clone()), applied(1));
    let second = w.decide(NOW + 60_000);
    let now_admitted = second.decisions["web"].admitted.clone().unwrap();
    let woken = affected_clusters(
        Some(&first.decisions["web"]),
        Some(&second.decisions["web"]),
    );
    let expected: BTreeSet<String> = now_admitted.difference(&admitted).cloned().collect();
    assert!(!expected.is_empty(), "the rollout moved on");
    assert_eq!(woken, Some(expected), "the one already done is not woken");
    // A new generation concerns every cluster (old copies included).
    let mut next = (*second.decisions["web"]).clone();
    next.generation = 2;
    assert_eq!(
        affected_clusters(Some(&second.decisions["web"]), Some(&next)),
        None
    );
    assert_eq!(affected_clusters(Some(&next), None), None);
}

#[test]
fn a_status_re_report_of_a_plain_work_touches_nothing() {
    let spec = serde_json::json!({"targets": {"clusters": ["a", "b"]}});
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .with("b", cluster(&[], true, None))
        .add_work(work("web", 1, spec));
    w.step(NOW);
    let entry = w.works["web"].clone();
    let prev = w.previous["web"].clone();
    let mut again = applied(1);
    again.status_seq = 2;
    let matters = |c: &str, old: Option<&ClusterWorkRecord>, new: Option<&ClusterWorkRecord>| {
        row_change_matters(Some(&entry), Some(&prev), c, old, new)
    };
    assert!(
        !matters("a", Some(&applied(1)), Some(&again)),
        "still applied"
    );
    assert!(matters("a", None, Some(&applied(1))), "now applied");
    let mut failed = applied(1);
    if let Some(s) = failed.status.as_mut() {
        s.phase = WorkPhase::Failed;
    }
    assert!(
        matters("a", Some(&applied(1)), Some(&failed)),
        "no longer applied"
    );
    assert!(
        !matters("z", None, Some(&applied(1))),
        "not selected: no effect"
    );
    assert!(
        row_change_matters(Some(&entry), None, "a", None, None),
        "undecided: decide"
    );
    // A full pass agrees: the re-report leaves the decision as it was.
    w.status.insert(("web".into(), "a".into()), applied(1));
    w.status.insert(("web".into(), "b".into()), applied(1));
    let before = w.step(NOW);
    w.status.insert(("web".into(), "a".into()), again);
    let after = w.decide(NOW);
    assert!(before.decisions["web"].same_plan(&after.decisions["web"]));
}

#[test]
fn a_pause_holds_across_a_new_generation_until_resume() {
    for strategy in ["Progressive", "All"] {
        let spec = serde_json::json!({
            "placement": {"selector": {}},
            "rollout": {"strategy": strategy, "maxConcurrency": 1},
        });
        let mut w = World::default()
            .with("a", cluster(&[], true, None))
            .with("b", cluster(&[], true, None))
            .add_work(work("app", 2, spec.clone()));
        // Generation 1 was paused; "a" already holds generation 2 from before the pause.
        w.rollouts.insert(
            "app".into(),
            RolloutRecord {
                generation: 1,
                paused: true,
                ..RolloutRecord::default()
            },
        );
        w.status.insert(("app".into(), "a".into()), applied(2));
        let out = w.step(NOW);
        let d = &out.decisions["app"];
        let view = d.rollout.as_ref().expect("a paused work shows its rollout");
        assert!(view.paused, "{strategy}: the pause carries to generation 2");
        assert_eq!(view.phase, crate::api::RolloutPhase::Paused, "{strategy}");
        let admitted = d.admitted.clone().expect("admission is held");
        assert!(
            !admitted.contains("b"),
            "{strategy}: b must wait: {admitted:?}"
        );
        let written: BTreeMap<_, _> = out.rollout_writes.into_iter().collect();
        assert!(
            written["app"].paused && written["app"].generation == 2,
            "{strategy}"
        );

        // Resume: the operator's record for this generation, unpaused.
        w.rollouts.insert(
            "app".into(),
            RolloutRecord {
                generation: 2,
                ..RolloutRecord::default()
            },
        );
        let out = w.step(NOW + 1000);
        let d = &out.decisions["app"];
        assert!(d.rollout.as_ref().is_none_or(|r| !r.paused), "{strategy}");
        if strategy == "All" {
            assert_eq!(d.admitted, None, "{strategy}: everyone, at once");
        }
    }
}

#[test]
fn an_undo_is_never_held_by_a_pause() {
    let spec = serde_json::json!({"placement": {"selector": {}}});
    let mut w = World::default()
        .with("a", cluster(&[], true, None))
        .add_work(work("app", 3, spec));
    w.rollouts.insert(
        "app".into(),
        RolloutRecord {
            generation: 3,
            rollback_of: Some(1),
            paused: true,
            ..RolloutRecord::default()
        },
    );
    let d = &w.step(NOW).decisions["app"];
    assert_eq!(d.admitted, None);
    assert_eq!(
        d.rollout.as_ref().map(|r| r.phase),
        Some(crate::api::RolloutPhase::RolledBack)
    );
}
