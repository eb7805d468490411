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
pub fn accept_update(store: &Store, update: WorkUpdate) -> Result<WorkAck, DeliveryError> {
    let name = update.name.clone();
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
            // A fresh delivery is the hub's word that this cluster holds the work again.
            fenced: false,
        };
        tx.put(&DESIRED, &name, &desired)?;
        Ok(())
    })?;
    Ok(WorkAck {
        name,
        held: Some(HeldWork {
            generation: update.generation,
            hash: update.hash,
            fenced: false,
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
