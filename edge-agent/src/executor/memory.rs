//! In-process executor for simulations and tests: objects live in a map.
//!
//! A manifest annotated `tether.dev/simulate-failure: "<message>"` fails to apply, so rollout
//! and failure-budget behaviour can be exercised without a cluster.

use super::{condition, refs_of, ApplyReport, ExecError, Executor, Managed};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tether_protocol::work::ObjectRef;
use tether_protocol::ResourceStatus;
use tether_store::agent::DesiredWork;

pub const SIMULATE_FAILURE: &str = "tether.dev/simulate-failure";

#[derive(Default)]
struct Cluster {
    objects: BTreeMap<ObjectRef, Value>,
    applies: u64,
}

/// Cheap to clone: clones share the same simulated cluster.
#[derive(Clone, Default)]
pub struct MemoryExecutor {
    cluster: Arc<Mutex<Cluster>>,
}

impl MemoryExecutor {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Snapshot of every object in the simulated cluster.
    pub fn objects(&self) -> BTreeMap<ObjectRef, Value> {
        self.lock().objects.clone()
    }

    /// Apply passes that changed at least one object.
    pub fn applies(&self) -> u64 {
        self.lock().applies
    }

    /// Simulate someone editing or deleting an object behind Tether's back.
    pub fn tamper(&self, object: &ObjectRef, value: Option<Value>) {
        let mut c = self.lock();
        match value {
            Some(v) => c.objects.insert(object.clone(), v),
            None => c.objects.remove(object),
        };
    }
}

impl Executor for MemoryExecutor {
    async fn apply(
        &self,
        work: &DesiredWork,
        previous: &Managed,
    ) -> Result<ApplyReport, ExecError> {
        let refs = refs_of(work)?;
        for m in &work.manifests {
            if let Some(why) = m
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(SIMULATE_FAILURE))
                .and_then(Value::as_str)
            {
                return Err(ExecError::transient(format!("simulated failure: {why}")));
            }
        }
        let mut c = self.lock();
        let mut changed = false;
        for (r, m) in refs.iter().zip(&work.manifests) {
            if c.objects.get(r) != Some(m) {
                c.objects.insert(r.clone(), m.clone());
                changed = true;
            }
        }
        let keep: BTreeSet<&ObjectRef> = refs.iter().collect();
        for old in previous.inventory.iter().filter(|o| !keep.contains(o)) {
            changed |= c.objects.remove(old).is_some();
        }
        if changed {
            c.applies += 1;
        }
        Ok(ApplyReport {
            resources: refs
                .iter()
                .map(|r| ResourceStatus {
                    object: r.clone(),
                    ready: Some(true),
                    detail: String::new(),
                })
                .collect(),
            inventory: refs,
            adopted: Default::default(),
            conditions: vec![condition("Applied", true, "Applied", "")],
            readiness_known: true,
            refused: Vec::new(),
        })
    }

    async fn remove(&self, _work: &str, managed: &Managed, orphan: bool) -> Result<(), ExecError> {
        if !orphan {
            let mut c = self.lock();
            for r in &managed.inventory {
                c.objects.remove(r);
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
