//! Works on the hub: validation, generations, the in-memory index sessions plan from, and the
//! pure delivery planner (what to send or remove given what an agent holds).

use crate::util::now_ms;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tether_protocol::bundle::{self, Packed};
use tether_protocol::work::{validate, WorkDocument};
use tether_protocol::HeldWork;
use tether_store::hub::{
    work_history_key, AuditEvent, Deletion, WorkRecord, AUDIT, WORKS, WORK_HISTORY,
};
use tether_store::{Store, StoreError};
use tokio::sync::watch;

/// Room left in a frame for the `WorkUpdate` envelope around the bundle.
const ENVELOPE_ALLOWANCE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("invalid Work: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("work {name:?} is too large: {compressed} bytes compressed ({raw} raw); a work must fit in one {limit}-byte frame. Split it into several works")]
    TooLarge {
        name: String,
        compressed: usize,
        raw: usize,
        limit: usize,
    },
    #[error("work {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A work as sessions see it: the record plus its packed bundle (absent once deleted).
#[derive(Debug)]
pub struct WorkEntry {
    pub record: WorkRecord,
    /// The bundle without overrides.
    pub packed: Option<Packed>,
    /// Rendered bundles by the set of override rules that apply (clusters with the same set
    /// share one). Dropped with the entry when the work changes.
    renders: std::sync::Mutex<std::collections::HashMap<crate::render::Assignment, Arc<Packed>>>,
}

impl WorkEntry {
    pub fn new(record: WorkRecord, packed: Option<Packed>) -> Self {
        Self {
            record,
            packed,
            renders: Default::default(),
        }
    }

    /// The bundle for a cluster with this assignment (override rules, replica share).
    pub fn rendered(&self, a: &crate::render::Assignment) -> Result<Arc<Packed>, String> {
        let base = self.packed.as_ref().ok_or("work is deleted")?;
        if a == &crate::render::Assignment::default() {
            return Ok(Arc::new(base.clone()));
        }
        let mut cache = self.renders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(a) {
            return Ok(p.clone());
        }
        let manifests = crate::render::render_assignment(&self.record.document.spec, a)?;
        let packed = Arc::new(bundle::pack(&manifests).map_err(|e| e.to_string())?);
        cache.insert(a.clone(), packed.clone());
        Ok(packed)
    }
}

pub type WorkMap = BTreeMap<String, Arc<WorkEntry>>;

/// Copy-on-write index: a session takes a snapshot (one `Arc` clone) and plans without locks.
pub struct WorkIndex {
    map: RwLock<Arc<WorkMap>>,
    changed: watch::Sender<u64>,
}

impl WorkIndex {
    pub fn load(store: &Store) -> Result<Self, WorkError> {
        let mut map = WorkMap::new();
        for (name, record) in store.read(|tx| tx.list(&WORKS))? {
            let packed = match record.deleted {
                None => Some(bundle::pack(&record.document.spec.manifests)?),
                Some(_) => None,
            };
            map.insert(name, Arc::new(WorkEntry::new(record, packed)));
        }
        Ok(Self {
            map: RwLock::new(Arc::new(map)),
            changed: watch::channel(0).0,
        })
    }

    pub fn snapshot(&self) -> Arc<WorkMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn publish(&self, name: &str, entry: WorkEntry) {
        {
            let mut guard = self.map.write().unwrap_or_else(|p| p.into_inner());
            let mut next = (**guard).clone();
            next.insert(name.to_string(), Arc::new(entry));
            *guard = Arc::new(next);
        }
        self.changed.send_modify(|v| *v += 1);
    }
}

pub use crate::api::ApplyOutcome;

/// Create or update a work. Idempotent: applying the same document changes nothing.
pub fn apply(
    store: &Store,
    index: &WorkIndex,
    doc: WorkDocument,
    max_frame: usize,
    actor: &str,
) -> Result<(ApplyOutcome, u64), WorkError> {
    validate(&doc).map_err(WorkError::Invalid)?;
    // Each override rule must apply cleanly on its own (a JSON patch to a missing path...).
    let broken: Vec<String> = (0..doc.spec.overrides.len())
        .filter_map(|i| crate::render::render(&doc.spec, &[i]).err())
        .collect();
    let mut broken = broken;
    if let Some(r) = &doc.spec.rollout {
        for (name, w) in &r.maintenance_windows {
            if let Err(e) = crate::windows::validate(w) {
                broken.push(format!("spec.rollout.maintenanceWindows.{name}: {e}"));
            }
        }
    }
    if !broken.is_empty() {
        return Err(WorkError::Invalid(broken));
    }
    let name = doc.metadata.name.clone();
    let packed = bundle::pack(&doc.spec.manifests)?;
    let limit = max_frame.saturating_sub(ENVELOPE_ALLOWANCE);
    if packed.compressed.len() > limit {
        return Err(WorkError::TooLarge {
            name,
            compressed: packed.compressed.len(),
            raw: packed.raw_len,
            limit,
        });
    }
    let now = now_ms();
    let (outcome, record) = store.write(|tx| {
        let existing = tx.get(&WORKS, &name)?;
        let (outcome, record) = match existing {
            Some(r) if r.deleted.is_none() && r.document == doc => (ApplyOutcome::Unchanged, r),
            Some(r) => (
                if r.deleted.is_some() {
                    ApplyOutcome::Created
                } else {
                    ApplyOutcome::Updated
                },
                WorkRecord {
                    document: doc.clone(),
                    generation: r.generation + 1,
                    created_at_ms: if r.deleted.is_some() {
                        now
                    } else {
                        r.created_at_ms
                    },
                    updated_at_ms: now,
                    deleted: None,
                },
            ),
            None => (
                ApplyOutcome::Created,
                WorkRecord {
                    document: doc.clone(),
                    generation: 1,
                    created_at_ms: now,
                    updated_at_ms: now,
                    deleted: None,
                },
            ),
        };
        if outcome != ApplyOutcome::Unchanged {
            tx.put(&WORKS, &name, &record)?;
            tx.put(
                &WORK_HISTORY,
                &work_history_key(&name, record.generation),
                &record.document,
            )?;
            tx.append(
                &AUDIT,
                &AuditEvent {
                    at_ms: now,
                    kind: "work_applied".into(),
                    cluster: None,
                    actor: actor.into(),
                    detail: format!(
                        "work {name} generation {} ({} manifests, {})",
                        record.generation,
                        doc.spec.manifests.len(),
                        packed.hash
                    ),
                },
            )?;
        }
        Ok::<_, WorkError>((outcome, record))
    })?;
    let generation = record.generation;
    if outcome != ApplyOutcome::Unchanged {
        tracing::info!(work = %name, generation, outcome = ?outcome, "work applied");
        index.publish(&name, WorkEntry::new(record, Some(packed)));
    }
    Ok((outcome, generation))
}

/// Mark a work deleted. Clusters remove it (or orphan its objects) as they are reached; the
/// tombstone keeps the generation counter and reaches clusters that were offline.
pub fn delete(
    store: &Store,
    index: &WorkIndex,
    name: &str,
    orphan: bool,
    actor: &str,
) -> Result<u64, WorkError> {
    let now = now_ms();
    let record = store.write(|tx| {
        let mut r = tx
            .get(&WORKS, name)?
            .filter(|r| r.deleted.is_none())
            .ok_or_else(|| WorkError::NotFound(name.to_string()))?;
        r.deleted = Some(Deletion { at_ms: now, orphan });
        r.updated_at_ms = now;
        tx.put(&WORKS, name, &r)?;
        tx.append(
            &AUDIT,
            &AuditEvent {
                at_ms: now,
                kind: "work_deleted".into(),
                cluster: None,
                actor: actor.into(),
                detail: format!("work {name} (orphan: {orphan})"),
            },
        )?;
        Ok::<_, WorkError>(r)
    })?;
    let generation = record.generation;
    tracing::info!(work = %name, orphan, "work deleted");
    index.publish(name, WorkEntry::new(record, None));
    Ok(generation)
}

/// One step of bringing an agent in line with the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the work; `full` carries the bundle, otherwise only the generation moves.
    Send {
        work: String,
        generation: u64,
        packed: Arc<Packed>,
        full: bool,
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
                h => actions.push(Action::Send {
                    work: name.clone(),
                    generation,
                    full: h.is_none_or(|h| h.hash != packed.hash),
                    packed,
                }),
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
    use tether_protocol::work::*;
    use tether_protocol::Labels;

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
                    },
                    spec: WorkSpec {
                        targets,
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
                Want::Hold(e.record.generation, Arc::new(e.packed.clone().unwrap()))
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
                    Action::Send { work, generation, packed, full } => {
                        prop_assert_eq!(*full, held.get(work).is_none_or(|h| h.hash != packed.hash));
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
