//! `tether-agent leave`: forget the hub, and (when asked) take away what it delivered.
//!
//! A denied or detached cluster keeps running what it last held: the edge stays in charge,
//! and an agent cut off by mistake must not take workloads down with it. An owner who wants a
//! clean cluster says so locally (`leave --remove-objects`): every work the agent manages is
//! removed the way a hub removal would (objects Tether created are deleted, adopted ones
//! released), and only then is the identity wiped, so a failure can simply be retried.

use crate::executor::{Executor, Managed};
use crate::reconcile::{managed, ADOPTED};
use crate::{blocking, AgentError};
use std::path::Path;
use std::sync::Arc;
use tether_store::agent::{APPLIED, CURRENT, DESIRED, IDENTITY, PENDING_JOIN};
use tether_store::StoreError;

#[derive(Debug, Default)]
pub struct Left {
    /// The cluster whose identity was wiped, if one was stored.
    pub cluster: Option<String>,
    /// Works whose objects were removed.
    pub removed: Vec<String>,
}

/// Remove every managed work's objects through `executor` (when given), then wipe the identity.
pub async fn leave<E: Executor>(data_dir: &Path, executor: Option<&E>) -> Result<Left, AgentError> {
    let store = Arc::new(crate::open_store(data_dir)?);
    let mut left = Left::default();
    if let Some(executor) = executor {
        let s = store.clone();
        let works: Vec<(String, Managed)> = blocking(move || {
            s.read(|tx| {
                let mut names: Vec<String> =
                    tx.list(&DESIRED)?.into_iter().map(|(n, _)| n).collect();
                names.extend(tx.list(&APPLIED)?.into_iter().map(|(n, _)| n));
                names.sort();
                names.dedup();
                names
                    .into_iter()
                    .map(|n| Ok::<_, StoreError>((n.clone(), managed(tx, &n)?)))
                    .collect()
            })
        })
        .await??;
        let mut failed = Vec::new();
        for (name, managed) in works {
            match executor.remove(&name, &managed, false).await {
                Ok(()) => {
                    tracing::info!(work = %name, objects = managed.inventory.len(), "removed on leave");
                    let (s, n) = (store.clone(), name.clone());
                    blocking(move || {
                        s.write(|tx| {
                            tx.remove(&DESIRED, &n)?;
                            tx.remove(&crate::desired::QUARANTINE, &n)?;
                            tx.remove(&APPLIED, &n)?;
                            tx.remove(&ADOPTED, &n)?;
                            Ok::<_, StoreError>(())
                        })
                    })
                    .await??;
                    left.removed.push(name);
                }
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
        if !failed.is_empty() {
            return Err(AgentError::Io(format!(
                "could not remove {} work(s), so the identity was kept (run leave again to retry): {}",
                failed.len(),
                failed.join("; ")
            )));
        }
    }
    left.cluster = blocking(move || {
        store.write(|tx| {
            let name = tx.get(&IDENTITY, CURRENT)?.map(|i| i.name);
            tx.remove(&IDENTITY, CURRENT)?;
            tx.remove(&PENDING_JOIN, CURRENT)?;
            Ok::<_, StoreError>(name)
        })
    })
    .await??;
    Ok(left)
}
