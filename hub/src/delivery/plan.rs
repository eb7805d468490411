//! The delivery plan, pure: what one agent must receive, given what it holds, the works and
//! the published decisions.

use crate::decide::WorkDecision;
use crate::works::{WorkEntry, WorkMap};
use std::collections::BTreeMap;
use std::sync::Arc;
use tether_protocol::bundle::Packed;
use tether_protocol::HeldWork;

/// What `cluster` should hold of `entry` under the published `decisions`.
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

/// One step of bringing an agent in line with the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the work; `full` carries the content, otherwise only the generation moves.
    Send {
        work: String,
        generation: u64,
        packed: Arc<Packed>,
        full: bool,
        /// With `full`: the hash of the content the agent holds now, which the content may
        /// be sent as a patch against (`delivery::patches`).
        base: Option<String>,
    },
    Remove {
        work: String,
        orphan: bool,
    },
}

impl Action {
    pub fn work(&self) -> &str {
        match self {
            Action::Send { work, .. } | Action::Remove { work, .. } => work,
        }
    }
}

/// What the hub wants one cluster to hold of one live work.
#[derive(Debug, Clone)]
pub enum Want {
    /// This generation with this (rendered) content.
    Hold(u64, Arc<Packed>),
    /// Selected, but a rollout has not admitted it yet: leave whatever it holds.
    Keep,
    /// Not selected: remove it if held.
    Absent,
}

/// What an agent holding `held` must receive (pure). `want` answers, for each live work, what
/// this cluster should hold. Works the hub has never heard of are left alone and reported: a
/// hub restored from an old backup must not wipe a fleet.
pub fn plan(
    held: &BTreeMap<String, HeldWork>,
    works: &WorkMap,
    want: impl Fn(&str, &WorkEntry) -> Want,
) -> (Vec<Action>, Vec<String>) {
    let mut actions = Vec::new();
    let mut unknown = Vec::new();
    for (name, entry) in works {
        let h = held.get(name);
        if let Some(d) = entry.record.deleted {
            if h.is_some() {
                actions.push(Action::Remove {
                    work: name.clone(),
                    orphan: d.orphan,
                });
            }
            continue;
        }
        match want(name, entry) {
            Want::Hold(generation, packed) => match h {
                Some(h) if h.hash == packed.hash && h.generation == generation && !h.fenced => {}
                h => {
                    let full = h.is_none_or(|h| h.hash != packed.hash);
                    actions.push(Action::Send {
                        work: name.clone(),
                        generation,
                        full,
                        base: h.filter(|_| full).map(|h| h.hash.clone()),
                        packed,
                    })
                }
            },
            Want::Keep => {}
            Want::Absent if h.is_some() => actions.push(Action::Remove {
                work: name.clone(),
                orphan: false,
            }),
            Want::Absent => {}
        }
    }
    for name in held.keys() {
        if !works.contains_key(name) {
            unknown.push(name.clone());
        }
    }
    (actions, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use tether_protocol::bundle;
    use tether_protocol::work::*;
    use tether_protocol::Labels;
    use tether_store::hub::{Deletion, WorkRecord};

    fn entry(
        name: &str,
        generation: u64,
        targets: Targets,
        data: &str,
        deleted: Option<bool>,
    ) -> Arc<WorkEntry> {
        let manifests = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": data}}),
        ];
        let packed = bundle::pack(&manifests).unwrap();
        Arc::new(WorkEntry::new(
            WorkRecord {
                document: WorkDocument {
                    api_version: WORK_API_VERSION.into(),
                    kind: WORK_KIND.into(),
                    metadata: WorkMetadata {
                        name: name.into(),
                        labels: Labels::new(),
                        annotations: Labels::new(),
                    },
                    spec: WorkSpec {
                        targets,
                        source: None,
                        manifests,
                        force_conflicts: false,
                        placement: None,
                        overrides: vec![],
                        rollout: None,
                        failover: None,
                    },
                },
                generation,
                created_at_ms: 0,
                updated_at_ms: 0,
                deleted: deleted.map(|orphan| Deletion { at_ms: 0, orphan }),
                scope: Default::default(),
            },
            if deleted.is_some() {
                None
            } else {
                Some(packed)
            },
        ))
    }

    fn to(c: &[&str]) -> Targets {
        Targets {
            clusters: c.iter().map(|s| s.to_string()).collect(),
            selector: None,
        }
    }

    /// Targets only, no rollout: what the hub wants without placement extras.
    fn by_targets(cluster: &'static str) -> impl Fn(&str, &WorkEntry) -> Want {
        move |_, e| {
            if e.record
                .document
                .spec
                .targets
                .matches(cluster, &Labels::new())
            {
                Want::Hold(e.record.generation, e.packed.clone().unwrap())
            } else {
                Want::Absent
            }
        }
    }

    fn held_of(works: &WorkMap, names: &[&str]) -> BTreeMap<String, HeldWork> {
        names
            .iter()
            .filter_map(|n| {
                works.get(*n).and_then(|e| {
                    e.packed.as_ref().map(|p| {
                        (
                            n.to_string(),
                            HeldWork {
                                generation: e.record.generation,
                                hash: p.hash.clone(),
                                fenced: false,
                            },
                        )
                    })
                })
            })
            .collect()
    }

    #[test]
    fn sends_only_the_difference() {
        let mut works = WorkMap::new();
        works.insert("a".into(), entry("a", 3, to(&["c1"]), "x", None));
        works.insert("b".into(), entry("b", 1, to(&["c1"]), "y", None));
        works.insert(
            "gone".into(),
            entry("gone", 2, to(&["c1"]), "z", Some(true)),
        );
        works.insert(
            "elsewhere".into(),
            entry("elsewhere", 1, to(&["c2"]), "w", None),
        );
        let mut held = held_of(&works, &["a"]);
        held.insert(
            "gone".into(),
            HeldWork {
                generation: 2,
                hash: "h".into(),
                fenced: false,
            },
        );
        held.insert(
            "elsewhere".into(),
            HeldWork {
                generation: 1,
                hash: "h".into(),
                fenced: false,
            },
        );
        held.insert(
            "mystery".into(),
            HeldWork {
                generation: 9,
                hash: "h".into(),
                fenced: false,
            },
        );
        let (actions, unknown) = plan(&held, &works, by_targets("c1"));
        assert_eq!(unknown, vec!["mystery".to_string()]);
        assert_eq!(actions.len(), 3, "{actions:?}");
        assert!(actions.contains(&Action::Remove {
            work: "gone".into(),
            orphan: true
        }));
        assert!(actions.contains(&Action::Remove {
            work: "elsewhere".into(),
            orphan: false
        }));
        assert!(matches!(&actions[0], Action::Send { work, full: true, .. } if work == "b"));
    }

    #[test]
    fn generation_bump_without_content_change_sends_no_bundle() {
        let mut works = WorkMap::new();
        works.insert("a".into(), entry("a", 1, to(&["c1"]), "x", None));
        let held = held_of(&works, &["a"]);
        works.insert("a".into(), entry("a", 2, to(&["c1", "c2"]), "x", None));
        let (actions, _) = plan(&held, &works, by_targets("c1"));
        assert!(matches!(
            &actions[..],
            [Action::Send {
                generation: 2,
                full: false,
                ..
            }]
        ));
    }

    proptest! {
        /// After applying the plan, the agent holds exactly the targeted works at their
        /// current generation, and a second plan is empty (convergence, no churn).
        #[test]
        fn plan_converges(
            spec in proptest::collection::vec((0u8..6, 1u64..5, any::<bool>(), 0u8..3, any::<bool>()), 0..8),
            held_spec in proptest::collection::vec((0u8..8, 1u64..5, any::<bool>()), 0..8),
        ) {
            let mut works = WorkMap::new();
            for (i, generation, here, data, deleted) in &spec {
                let name = format!("w{i}");
                let t = if *here { to(&["me"]) } else { to(&["other"]) };
                works.insert(name.clone(), entry(&name, *generation, t, &data.to_string(), deleted.then_some(false)));
            }
            let mut held = BTreeMap::new();
            for (i, generation, same) in held_spec {
                let name = format!("w{i}");
                let hash = match (same, works.get(&name).and_then(|e| e.packed.as_ref())) {
                    (true, Some(p)) => p.hash.clone(),
                    _ => "sha256:old".into(),
                };
                held.insert(name, HeldWork { generation, hash, fenced: false });
            }
            let (actions, unknown) = plan(&held, &works, by_targets("me"));
            for a in &actions {
                match a {
                    Action::Send { work, generation, packed, full, base } => {
                        prop_assert_eq!(*full, held.get(work).is_none_or(|h| h.hash != packed.hash));
                        // A patch is offered against exactly what the agent holds, and only
                        // when the content changes.
                        prop_assert_eq!(base.as_ref(), held.get(work).filter(|_| *full).map(|h| &h.hash));
                        held.insert(work.clone(), HeldWork { generation: *generation, hash: packed.hash.clone(), fenced: false });
                    }
                    Action::Remove { work, .. } => { held.remove(work); }
                }
            }
            let (again, _) = plan(&held, &works, by_targets("me"));
            prop_assert!(again.is_empty(), "{:?}", again);
            for (name, e) in &works {
                let targeted = e.record.deleted.is_none() && e.record.document.spec.targets.clusters.contains(&"me".to_string());
                prop_assert_eq!(held.contains_key(name), targeted);
            }
            for u in unknown { prop_assert!(!works.contains_key(&u) && held.contains_key(&u)); }
        }
    }
}
