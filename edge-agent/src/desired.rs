//! Desired state as delivered by the hub: committed to the store before it is acknowledged.

use crate::AgentError;
use tether_protocol::bundle::{self, MAX_BUNDLE_BYTES};
use tether_protocol::work::ObjectRef;
use tether_protocol::{HeldWork, Inventory, WorkAck, WorkRemove, WorkUpdate};
use tether_store::agent::{DesiredWork, Removal, DESIRED};
use tether_store::{ReadTx, Store};

/// Fault-injection switch for simulations only (`simulations/tests/sim_broken.rs`): when set,
/// [`accept_update`] acknowledges an update WITHOUT committing it to the store, the "acks before
/// committing" bug the simulator must catch. Never set outside tests; off by default.
pub static ACK_BEFORE_COMMIT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Works one agent will hold. Keeps the store, the outbox and every reconcile pass bounded.
pub const MAX_WORKS: usize = 5_000;

/// What this agent holds, for the hub to compute the difference on connect.
pub fn inventory(tx: &ReadTx) -> Result<Inventory, AgentError> {
    let works = tx
        .list(&DESIRED)?
        .into_iter()
        .filter(|(_, d)| d.removal.is_none())
        .map(|(name, d)| {
            (
                name,
                HeldWork {
                    generation: d.generation,
                    hash: d.hash,
                    fenced: d.fenced,
                },
            )
        })
        .collect();
    Ok(Inventory { works })
}

/// Whether this agent holds a work that fences (a singleton), read once per session: then every heartbeat must be
/// confirmed by the hub, because the fencing deadline counts from the last confirmed one.
pub fn holds_fencing_work(tx: &ReadTx) -> Result<bool, AgentError> {
    Ok(tx
        .list(&DESIRED)?
        .into_iter()
        .any(|(_, d)| d.fence_after_ms.is_some()))
}

/// Why an update was refused; sent back to the hub as an error reply.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("work {0:?}: {1}")]
    Bundle(String, bundle::BundleError),
    #[error("work {0:?}: manifest {1}: {2}")]
    Manifest(String, usize, String),
    #[error("work {0:?}: no content with hash {1} is held here; send the bundle")]
    MissingContent(String, String),
    #[error("this agent already holds {MAX_WORKS} works; refusing {0:?}")]
    TooManyWorks(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl From<tether_store::StoreError> for DeliveryError {
    fn from(e: tether_store::StoreError) -> Self {
        DeliveryError::Agent(e.into())
    }
}

/// Decode, validate and commit a work update. Returns the acknowledgement to send.
///
/// `since_contact`: how long ago the agent last had a heartbeat acknowledged. A singleton
/// that arrives while that is already past its `fenceAfter` is a delivery delayed in the
/// network: the hub may have moved the work meanwhile, so it is stored fenced (kept, not run)
/// and acknowledged as such; the hub sends it again over a fresh session if it is still ours.
pub fn accept_update(
    store: &Store,
    update: WorkUpdate,
    since_contact: Option<std::time::Duration>,
) -> Result<WorkAck, DeliveryError> {
    let name = update.name.clone();
    let fenced = update.fence_after_ms.is_some_and(|ms| {
        tether_protocol::fencing::must_fence(std::time::Duration::from_millis(ms), since_contact)
    });
    let manifests = match &update.bundle {
        Some(b) => {
            let m = bundle::unpack(b, &update.hash, MAX_BUNDLE_BYTES)
                .map_err(|e| DeliveryError::Bundle(name.clone(), e))?;
            for (i, manifest) in m.iter().enumerate() {
                ObjectRef::of(manifest).map_err(|e| DeliveryError::Manifest(name.clone(), i, e))?;
            }
            Some(m)
        }
        None => None,
    };
    if ACK_BEFORE_COMMIT.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(WorkAck {
            name,
            held: Some(HeldWork {
                generation: update.generation,
                hash: update.hash,
                fenced: false,
            }),
        });
    }
    store.write(|tx| {
        let existing = tx.get(&DESIRED, &name)?;
        let manifests = match (manifests, &existing) {
            (Some(m), _) => m,
            (None, Some(d)) if d.hash == update.hash => d.manifests.clone(),
            (None, _) => {
                return Err(DeliveryError::MissingContent(
                    name.clone(),
                    update.hash.clone(),
                ))
            }
        };
        if existing.is_none() && tx.count(&DESIRED)? >= MAX_WORKS as u64 {
            return Err(DeliveryError::TooManyWorks(name.clone()));
        }
        let desired = DesiredWork {
            name: name.clone(),
            generation: update.generation,
            hash: update.hash.clone(),
            force_conflicts: update.force_conflicts,
            manifests,
            removal: None,
            fence_after_ms: update.fence_after_ms,
            // A timely delivery is the hub's word that this cluster holds the work again.
            fenced,
        };
        tx.put(&DESIRED, &name, &desired)?;
        Ok(())
    })?;
    Ok(WorkAck {
        name,
        held: Some(HeldWork {
            generation: update.generation,
            hash: update.hash,
            fenced,
        }),
    })
}

/// Mark a work for removal (the reconciler carries it out) and commit.
pub fn accept_removal(store: &Store, removal: WorkRemove) -> Result<WorkAck, DeliveryError> {
    store.write(|tx| {
        if let Some(mut d) = tx.get(&DESIRED, &removal.name)? {
            d.removal = Some(Removal {
                orphan: removal.orphan,
            });
            tx.put(&DESIRED, &removal.name, &d)?;
        }
        Ok::<_, DeliveryError>(())
    })?;
    Ok(WorkAck {
        name: removal.name,
        held: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn singleton_update() -> WorkUpdate {
        let manifests = vec![serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "controller", "namespace": "default"},
        })];
        let packed = bundle::pack(&manifests).unwrap();
        WorkUpdate {
            name: "controller".into(),
            generation: 1,
            hash: packed.hash,
            force_conflicts: false,
            bundle: Some(packed.compressed),
            fence_after_ms: Some(1_000),
        }
    }

    fn stored(store: &Store) -> DesiredWork {
        store
            .read(|tx| tx.get(&DESIRED, "controller"))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_singleton_arriving_after_contact_lapsed_is_stored_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        let late = accept_update(&store, singleton_update(), Some(Duration::from_secs(3))).unwrap();
        assert!(late.held.unwrap().fenced);
        assert!(stored(&store).fenced);
        let never = accept_update(&store, singleton_update(), None).unwrap();
        assert!(
            never.held.unwrap().fenced,
            "no contact at all is no contact"
        );
        // Delivered again within fenceAfter of contact: the hub's word that it is ours.
        let timely =
            accept_update(&store, singleton_update(), Some(Duration::from_millis(200))).unwrap();
        assert!(!timely.held.unwrap().fenced);
        assert!(!stored(&store).fenced);
    }

    #[test]
    fn works_without_fencing_ignore_contact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        let mut update = singleton_update();
        update.fence_after_ms = None;
        let ack = accept_update(&store, update, None).unwrap();
        assert!(!ack.held.unwrap().fenced);
    }
}
