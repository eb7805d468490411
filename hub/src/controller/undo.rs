//! Operator actions on a work's rollout that write the store: undo (re-apply an earlier
//! generation) and pause/resume.

use crate::state::HubState;
use tether_store::hub::{work_history_key, RolloutRecord, ROLLOUTS, WORK_HISTORY};

/// Re-apply an earlier generation's document as a new generation that goes everywhere at once.
/// `to` defaults to the generation before the current one.
pub fn undo(
    state: &HubState,
    name: &str,
    to: Option<u64>,
    actor: &str,
) -> Result<u64, crate::works::WorkError> {
    use crate::works::WorkError;
    let current = live_generation(state, name)?;
    let to = to.unwrap_or(current.saturating_sub(1));
    if to == 0 || to >= current {
        return Err(WorkError::Invalid(vec![format!(
            "cannot roll back work {name} from generation {current} to {to}"
        )]));
    }
    let mut doc = state
        .store
        .read(|tx| tx.get(&WORK_HISTORY, &work_history_key(name, to)))?
        .ok_or_else(|| {
            WorkError::Invalid(vec![format!(
                "generation {to} of work {name} is not in the history"
            )])
        })?;
    doc.metadata.annotations.insert(
        tether_protocol::work::RESTORES_ANNOTATION.to_string(),
        to.to_string(),
    );
    // Mark the next generation as a rollback before it becomes visible to the decision loop.
    let next = current + 1;
    state.store.write(|tx| {
        tx.put(
            &ROLLOUTS,
            name,
            &RolloutRecord {
                generation: next,
                rollback_of: Some(to),
                phase: "RolledBack".into(),
                ..RolloutRecord::default()
            },
        )
    })?;
    // The rollback keeps the scope the work has: undo is no way to widen it.
    let scope = state
        .works
        .snapshot()
        .get(name)
        .map(|e| e.record.scope.clone())
        .unwrap_or_default();
    let (_, generation) = crate::works::apply(
        &state.store,
        &state.works,
        doc,
        state.cfg.limits.max_frame,
        actor,
        &scope,
    )?;
    tracing::warn!(work = %name, from = current, to, new_generation = generation, %actor, "rolled back");
    Ok(generation)
}

/// The generations of `name` still kept, oldest first.
pub fn history(
    state: &HubState,
    name: &str,
) -> Result<Vec<crate::api::RevisionView>, crate::works::WorkError> {
    use tether_protocol::work::{RESTORES_ANNOTATION, SOURCE_ANNOTATION};
    let current = live_generation(state, name)?;
    let rows = state
        .store
        .read(|tx| tx.list_prefix(&WORK_HISTORY, &tether_store::hub::work_history_prefix(name)))?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, doc)| {
            let generation = key.rsplit('/').next()?.parse().ok()?;
            let note = |k: &str| doc.metadata.annotations.get(k);
            Some(crate::api::RevisionView {
                generation,
                manifests: doc.spec.manifests.len(),
                source: note(SOURCE_ANNOTATION).cloned(),
                restores: note(RESTORES_ANNOTATION).and_then(|g| g.parse().ok()),
                current: generation == current,
            })
        })
        .collect())
}

/// Pause or resume a rollout (progressive or not); the pause holds across later applies.
pub fn set_paused(
    state: &HubState,
    name: &str,
    paused: bool,
) -> Result<(), crate::works::WorkError> {
    let generation = live_generation(state, name)?;
    state.store.write(|tx| {
        let mut r = tx
            .get(&ROLLOUTS, name)?
            .filter(|r| r.generation == generation)
            .unwrap_or(RolloutRecord {
                generation,
                ..RolloutRecord::default()
            });
        r.paused = paused;
        tx.put(&ROLLOUTS, name, &r)
    })?;
    state.changes.rollout(name);
    Ok(())
}

/// The current generation of a work that is not deleted.
fn live_generation(state: &HubState, name: &str) -> Result<u64, crate::works::WorkError> {
    state
        .works
        .snapshot()
        .get(name)
        .filter(|e| e.record.deleted.is_none())
        .map(|e| e.record.generation)
        .ok_or_else(|| crate::works::WorkError::NotFound(name.to_string()))
}
