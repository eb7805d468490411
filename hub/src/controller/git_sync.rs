//! Keeps works with a git source at the commit their revision names: each is looked at every
//! `intervalSeconds` (and at once on `tetherctl works sync`), and a new commit becomes a new
//! generation through the ordinary apply. A failed look keeps the last good generation and is
//! shown in `describe work`; it never removes anything from a cluster.

use crate::api::{ApplyOutcome, SourceCheck};
use crate::state::HubState;
use crate::util::now_ms;
use crate::works::WorkError;
use std::sync::Arc;
use std::time::Duration;
use tether_protocol::work::{WorkDocument, SOURCE_ANNOTATION};

/// How often the loop looks for works that are due. Intervals are at least 10 s.
const POLL: Duration = Duration::from_secs(2);

/// What one sync did.
pub(crate) struct Synced {
    pub outcome: ApplyOutcome,
    pub generation: u64,
    pub commit: String,
}

/// Run until the hub stops. Works are synced one after the other: each is a fetch from
/// someone's git server, and a burst of them helps no one.
pub(crate) async fn run(state: Arc<HubState>) {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        for name in due(&state, now_ms()) {
            // Errors are recorded in the work's source check and logged by `sync`.
            let _ = sync(&state, &name, "git-sync").await;
        }
    }
}

/// Works with a git source whose last look is older than their interval (or that were never
/// looked at by this hub process).
fn due(state: &HubState, now: u64) -> Vec<String> {
    let works = state.works.snapshot();
    let mut checks = state
        .source_checks
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    checks.retain(|name, _| {
        works
            .get(name)
            .is_some_and(|e| e.record.deleted.is_none() && e.record.document.spec.source.is_some())
    });
    works
        .iter()
        .filter(|(_, e)| e.record.deleted.is_none())
        .filter_map(|(name, e)| {
            let src = e.record.document.spec.source.as_ref()?;
            let every = src.git.interval_seconds().saturating_mul(1000);
            let last = checks.get(name).map(|c| c.checked_at_ms);
            last.is_none_or(|t| now.saturating_sub(t) >= every)
                .then(|| name.clone())
        })
        .collect()
}

/// Look at the repository of work `name` now and apply what its revision names.
pub(crate) async fn sync(
    state: &Arc<HubState>,
    name: &str,
    actor: &str,
) -> Result<Synced, WorkError> {
    let entry = state
        .works
        .snapshot()
        .get(name)
        .filter(|e| e.record.deleted.is_none())
        .cloned()
        .ok_or_else(|| WorkError::NotFound(name.to_string()))?;
    if entry.record.document.spec.source.is_none() {
        return Err(WorkError::Invalid(vec![format!(
            "work {name:?} has no spec.source; its manifests are the ones applied"
        )]));
    }
    let doc = crate::works::unpinned(entry.record.document.clone());
    // A new commit keeps the scope of whoever applied the work.
    let scope = entry.record.scope.clone();
    let st = state.clone();
    let (name, actor) = (name.to_string(), actor.to_string());
    tokio::task::spawn_blocking(move || {
        let (doc, commit) = fetch(&st, &name, doc)?;
        let (outcome, generation) = crate::works::apply(
            &st.store,
            &st.works,
            doc,
            st.cfg.limits.max_frame,
            &actor,
            &scope,
        )?;
        if outcome != ApplyOutcome::Unchanged {
            tracing::info!(work = %name, %commit, generation, "new commit in the work's git source");
        }
        Ok(Synced {
            outcome,
            generation,
            commit,
        })
    })
    .await
    .map_err(|e| WorkError::Invalid(vec![format!("sync task failed: {e}")]))?
}

/// Fetch `doc`'s source (blocking) and record the look, good or bad, for `describe work` and
/// for when the work is next due. A new commit that changes nothing the work delivers (a
/// monorepo's commit elsewhere) keeps the current generation and its commit: a generation is
/// a redelivery to every cluster, and it would say nothing new.
pub(crate) fn fetch(
    state: &HubState,
    name: &str,
    doc: WorkDocument,
) -> Result<(WorkDocument, String), WorkError> {
    let current = state
        .works
        .snapshot()
        .get(name)
        .filter(|e| e.record.deleted.is_none())
        .map(|e| e.record.document.clone());
    let fetched =
        crate::works::fetch_source(&state.git, doc).map(|(doc, commit)| match current.as_ref() {
            Some(c) if same_but_commit(c, &doc) => {
                let held = c.spec.source.as_ref().and_then(|s| s.git.commit.clone());
                (c.clone(), commit, held)
            }
            _ => (doc, commit.clone(), commit),
        });
    let check = match &fetched {
        Ok((_, commit, _)) => Some(SourceCheck {
            checked_at_ms: now_ms(),
            commit: commit.clone(),
            error: None,
        }),
        // Only for a work that exists: a refused first apply leaves nothing to describe.
        Err(WorkError::Source(e)) if current.is_some() => {
            tracing::warn!(work = %name, error = %e, "git source check failed; the work keeps its last good generation");
            Some(SourceCheck {
                checked_at_ms: now_ms(),
                commit: None,
                error: Some(e.to_string()),
            })
        }
        // A document refused before any fetch says nothing about the repository.
        Err(_) => None,
    };
    if let Some(check) = check {
        state
            .source_checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), check);
    }
    let (doc, _, held) = fetched?;
    Ok((doc, held.unwrap_or_default()))
}

/// The two documents differ at most in the commit they pin.
fn same_but_commit(a: &WorkDocument, b: &WorkDocument) -> bool {
    let strip = |d: &WorkDocument| {
        let mut d = d.clone();
        if let Some(s) = d.spec.source.as_mut() {
            s.git.commit = None;
        }
        d.metadata.annotations.remove(SOURCE_ANNOTATION);
        d
    };
    strip(a) == strip(b)
}
