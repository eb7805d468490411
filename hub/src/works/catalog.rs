//! Works on the hub: validation, generations, the in-memory index sessions plan from, and the
//! pure delivery planner (what to send or remove given what an agent holds).

use crate::util::now_ms;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tether_protocol::bundle::{self, Packed};
use tether_protocol::work::{validate, WorkDocument};
use tether_store::hub::{
    work_history_key, work_history_prefix, AuditEvent, Deletion, WorkRecord, AUDIT, WORKS,
    WORK_HISTORY,
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
    #[error("{0}")]
    Source(#[from] crate::works::git::GitError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A work as sessions see it: the record plus its packed bundle (absent once deleted).
#[derive(Debug)]
pub struct WorkEntry {
    pub record: WorkRecord,
    /// The bundle without overrides, shared by every cluster with the default assignment.
    pub packed: Option<Arc<Packed>>,
    /// Rendered bundles by the set of override rules that apply (clusters with the same set
    /// share one). Dropped with the entry when the work changes.
    renders:
        std::sync::Mutex<std::collections::HashMap<crate::works::render::Assignment, Arc<Packed>>>,
}

impl WorkEntry {
    pub fn new(record: WorkRecord, packed: Option<Packed>) -> Self {
        let packed = packed.map(Arc::new);
        Self {
            record,
            packed,
            renders: Default::default(),
        }
    }

    /// The bundle for a cluster with this assignment (override rules, replica share).
    pub fn rendered(&self, a: &crate::works::render::Assignment) -> Result<Arc<Packed>, String> {
        let base = self.packed.as_ref().ok_or("work is deleted")?;
        if a == &crate::works::render::Assignment::default() {
            return Ok(base.clone());
        }
        let mut cache = self.renders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(a) {
            return Ok(p.clone());
        }
        let manifests = crate::works::render::render_assignment(&self.record.document.spec, a)?;
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

    /// Read one work again from the store (another hub replica changed it) and publish it.
    pub(crate) fn reload(&self, store: &Store, name: &str) -> Result<(), WorkError> {
        let Some(record) = store.read(|tx| tx.get(&WORKS, name))? else {
            let mut guard = self.map.write().unwrap_or_else(|p| p.into_inner());
            if guard.contains_key(name) {
                let mut next = (**guard).clone();
                next.remove(name);
                *guard = Arc::new(next);
                drop(guard);
                self.changed.send_modify(|v| *v += 1);
            }
            return Ok(());
        };
        if let Some(old) = self.snapshot().get(name) {
            if old.record == record {
                return Ok(());
            }
        }
        let packed = match record.deleted {
            None => Some(bundle::pack(&record.document.spec.manifests)?),
            Some(_) => None,
        };
        self.publish(name, WorkEntry::new(record, packed));
        Ok(())
    }

    /// Read every work again (a replica that fell behind the change feed).
    pub(crate) fn reload_all(&self, store: &Store) -> Result<(), WorkError> {
        let names: std::collections::BTreeSet<String> = store
            .read(|tx| tx.list(&WORKS))?
            .into_iter()
            .map(|(n, _)| n)
            .chain(self.snapshot().keys().cloned())
            .collect();
        for n in names {
            self.reload(store, &n)?;
        }
        Ok(())
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
    scope: &tether_store::hub::AdminScope,
) -> Result<(ApplyOutcome, u64), WorkError> {
    validate(&doc).map_err(WorkError::Invalid)?;
    // Each override rule must apply cleanly on its own (a JSON patch to a missing path...).
    let broken: Vec<String> = (0..doc.spec.overrides.len())
        .filter_map(|i| crate::works::render::render(&doc.spec, &[i]).err())
        .collect();
    let mut broken = broken;
    if let Some(r) = &doc.spec.rollout {
        for (name, w) in &r.maintenance_windows {
            if let Err(e) = crate::works::windows::validate(w) {
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
            Some(r) if r.deleted.is_none() && r.document == doc && &r.scope == scope => {
                (ApplyOutcome::Unchanged, r)
            }
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
                    scope: scope.clone(),
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
                    scope: scope.clone(),
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
            tx.remove_prefix_except_newest(
                &WORK_HISTORY,
                &work_history_prefix(&name),
                tether_protocol::work::HISTORY_KEEP,
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

/// The document to store for a work whose manifests come from `spec.source`: fetched now from
/// the revision it names, with the commit pinned. A document without a source is returned as
/// it is.
pub(crate) fn fetch_source(
    git: &crate::works::git::GitCache,
    doc: WorkDocument,
) -> Result<(WorkDocument, Option<String>), WorkError> {
    let Some(src) = &doc.spec.source else {
        return Ok((doc, None));
    };
    let mut wrong = Vec::new();
    if !doc.spec.manifests.is_empty() {
        wrong.push(
            "spec.manifests and spec.source are both given: a work's manifests come from one \
             place (leave spec.manifests out; the hub fills them from the repository)"
                .to_string(),
        );
    }
    if src.git.commit.is_some() {
        wrong.push(
            "spec.source.git.commit is set by the hub; to pin a commit, give it as \
             spec.source.git.revision"
                .to_string(),
        );
    }
    validate(&doc).map_err(|e| WorkError::Invalid(wrong.iter().cloned().chain(e).collect()))?;
    if !wrong.is_empty() {
        return Err(WorkError::Invalid(wrong));
    }
    let fetched = git.fetch(&src.git)?;
    let commit = fetched.commit.clone();
    Ok((crate::works::git::pinned(doc, fetched), Some(commit)))
}

/// A stored git-sourced document as its user wrote it: without what the hub filled in.
pub(crate) fn unpinned(mut doc: WorkDocument) -> WorkDocument {
    if let Some(src) = doc.spec.source.as_mut() {
        src.git.commit = None;
        doc.spec.manifests.clear();
    }
    doc
}

/// Mark a work deleted. Clusters remove it (or orphan its objects) as they are reached; the
/// tombstone keeps the generation counter and the placement, and reaches clusters that were
/// offline. It keeps no manifests and no history: agents remove what their own inventory
/// says, and a deleted work's megabytes must not stay in the database forever.
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
        r.document.spec.manifests.clear();
        tx.put(&WORKS, name, &r)?;
        tx.remove_prefix(&WORK_HISTORY, &work_history_prefix(name))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protocol::work::HISTORY_KEEP;

    fn doc(value: usize) -> WorkDocument {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Work",
            "metadata": {"name": "app"},
            "spec": {"targets": {"clusters": ["a"]}, "manifests": [{"apiVersion": "v1",
                "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"},
                "data": {"v": value.to_string()}}]},
        }))
        .expect("test work")
    }

    #[test]
    fn the_history_keeps_the_newest_generations_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("hub.redb")).unwrap();
        let index = WorkIndex::load(&store).unwrap();
        let applies = HISTORY_KEEP + 5;
        for v in 0..applies {
            apply(&store, &index, doc(v), 1 << 20, "test", &Default::default()).unwrap();
        }
        let kept: Vec<String> = store
            .read(|tx| tx.list_prefix(&WORK_HISTORY, &work_history_prefix("app")))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let want: Vec<String> = (applies - HISTORY_KEEP + 1..=applies)
            .map(|g| work_history_key("app", g as u64))
            .collect();
        assert_eq!(kept, want);

        delete(&store, &index, "app", false, "test").unwrap();
        let (record, history) = store
            .read(|tx| {
                Ok::<_, StoreError>((
                    tx.get(&WORKS, "app")?,
                    tx.list_prefix(&WORK_HISTORY, &work_history_prefix("app"))?,
                ))
            })
            .unwrap();
        let record = record.expect("the tombstone stays");
        assert_eq!(record.generation, applies as u64, "it keeps the counter");
        assert!(record.document.spec.manifests.is_empty() && history.is_empty());
        let (_, again) =
            apply(&store, &index, doc(0), 1 << 20, "test", &Default::default()).unwrap();
        assert_eq!(again, applies as u64 + 1, "generations are never reused");
    }
}
