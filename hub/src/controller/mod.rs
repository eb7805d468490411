//! The decision loop, the shell around `decide`. Writers report what changed (see
//! `fleet::changes`); the loop re-reads only that into its in-memory fleet view (`view`),
//! decides only the works the changes touch (plus the works whose decisions depend on time,
//! every 500 ms), persists rollout state through the group committer, carries out the effects
//! (close a session, start an auto-rollback) and publishes, naming the clusters each change
//! concerns. A full re-read every `RESYNC_EVERY` is the safety net. Undo and pause/resume live
//! in `undo`.

use crate::decide::{Effect, Inputs, Outcome, WorkDecision};
use crate::state::HubState;
use crate::util::now_ms;
use crate::works::WorkMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_protocol::close_code;
use tether_store::hub::{RolloutRecord, ROLLOUTS};
use tether_store::StoreError;
use view::{FleetView, Touched};

pub mod cost;
pub(crate) mod git_sync;
pub mod undo;
mod view;

pub use undo::{history, set_paused, undo};

/// Run until the hub stops.
pub async fn run(state: Arc<HubState>) {
    let mut works = state.works.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view = Some(FleetView::default());
    let mut last_resync = Instant::now();
    loop {
        if last_resync.elapsed() >= RESYNC_EVERY {
            state.changes.resync();
        }
        let pending = state.changes.take();
        if pending.resync {
            last_resync = Instant::now();
        }
        let st = state.clone();
        let started = Instant::now();
        let mut v = view.take().unwrap_or_default();
        let pass = tokio::task::spawn_blocking(move || {
            let r = decide_pass(&st, &mut v, &pending);
            (v, r)
        })
        .await;
        match pass {
            Ok((v, Ok(pass))) => {
                view = Some(v);
                carry_out(&state, pass).await;
            }
            Ok((_, Err(e))) => {
                tracing::error!(error = %e, "decision pass failed; the next one re-reads everything");
                state.changes.resync();
            }
            Err(e) => {
                tracing::error!(error = %e, "decision pass panicked; the next one re-reads everything");
                state.changes.resync();
            }
        }
        let took = started.elapsed();
        let by_change = tokio::select! {
            r = works.changed() => if r.is_err() { return } else { continue },
            _ = state.changes.wait() => true,
            _ = tick.tick() => false,
        };
        // Under a status storm the wake-ups never stop, and back-to-back passes would take a
        // whole core from the sessions delivering and acknowledging (during a 10k-cluster
        // rollout every Applied status re-decides the work over the whole fleet). Passes are
        // spaced by their own duration, and by `MIN_CHANGE_SPACING` after a fleet change, so
        // changes that arrive meanwhile are coalesced into the next pass. An operator's apply
        // is decided at once, and cuts a pause short: it is what the fleet waits for.
        let mut spacing = took.min(MAX_PASS_SPACING);
        if by_change {
            spacing = spacing.max(MIN_CHANGE_SPACING);
        }
        tokio::select! {
            r = works.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(spacing) => {}
        }
    }
}

/// How often works whose decisions depend on time (failover tolerations, rollout pacing,
/// maintenance windows) are decided again without a change.
const TICK: Duration = Duration::from_millis(500);
/// A full re-read of clusters and rows: the safety net under the change events.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// Lower bound of the spacing after a pass woken by a fleet change (see `run`).
const MIN_CHANGE_SPACING: Duration = Duration::from_millis(100);
/// Upper bound of the spacing between decision passes (see `run`).
const MAX_PASS_SPACING: Duration = Duration::from_secs(1);

/// What one pass decided, for the async half to persist, carry out and publish.
struct Pass {
    outcome: Outcome,
    previous: Arc<BTreeMap<String, Arc<WorkDecision>>>,
}

/// Works whose decision can change with time alone.
fn time_dependent(works: &WorkMap) -> BTreeSet<String> {
    works
        .iter()
        .filter(|(_, e)| e.record.deleted.is_none())
        .filter(|(_, e)| {
            let spec = &e.record.document.spec;
            spec.failover.is_some() || spec.rollout.is_some()
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// Refresh the view from `pending`, and decide the works it touched.
fn decide_pass(
    state: &HubState,
    view: &mut FleetView,
    pending: &crate::fleet::changes::Pending,
) -> Result<Pass, StoreError> {
    let now = now_ms();
    let works = state.works.snapshot();
    let in_flight = state.singleton_in_flight.snapshot();
    let previous = state.decisions.snapshot();
    let touched = view.refresh(state, pending, &works, &previous)?;
    view.age(now);
    let rollouts: BTreeMap<String, RolloutRecord> = state
        .store
        .read(|tx| tx.list(&ROLLOUTS))?
        .into_iter()
        .collect();
    let only = match touched {
        Touched::All => None,
        Touched::Nothing => Some(time_dependent(&works)),
        Touched::Works(mut w) => {
            w.extend(time_dependent(&works));
            Some(w)
        }
    };
    let outcome = crate::decide::decide(&Inputs {
        now_ms: now,
        works: &works,
        clusters: &view.clusters,
        status: &view.status,
        rollouts: &rollouts,
        in_flight: &in_flight,
        previous: &previous,
        only: only.as_ref(),
    });
    Ok(Pass { outcome, previous })
}

/// Persist rollout state, carry out the effects, publish; then start any auto-rollback.
async fn carry_out(state: &Arc<HubState>, pass: Pass) {
    let Pass { outcome, previous } = pass;
    if !outcome.rollout_writes.is_empty() {
        let writes = outcome.rollout_writes.clone();
        let r = state
            .committer
            .write(move |tx| {
                for (name, r) in &writes {
                    tx.put(&ROLLOUTS, name, r)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            // Publishing decisions whose rollout state is not stored could admit more than
            // the stored state allows after a restart: skip this pass and read everything again.
            tracing::error!(error = %e, "could not store rollout state; deciding again");
            state.changes.resync();
            return;
        }
    }
    // Other replicas publish what is stored, so it is stored before it is published here.
    if state.replica.is_some() && !outcome.changed_works.is_empty() {
        let writes: Vec<(String, Option<WorkDecision>)> = outcome
            .changed_works
            .iter()
            .map(|w| (w.clone(), outcome.decisions.get(w).map(|d| (**d).clone())))
            .collect();
        let r = state
            .committer
            .write(move |tx| {
                for (w, d) in &writes {
                    match d {
                        Some(d) => tx.put(&crate::state::DECISIONS, w, d)?,
                        None => {
                            tx.remove(&crate::state::DECISIONS, w)?;
                        }
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "could not store decisions for the other replicas; deciding again");
            state.changes.resync();
            return;
        }
    }
    // Sessions close before the decisions that count on them being closed are published.
    let mut rollbacks = Vec::new();
    for effect in outcome.effects {
        match effect {
            Effect::CloseSession { cluster, work } => {
                tracing::info!(%work, %cluster, "closing the session of a tainted cluster that may hold the singleton, so nothing in flight reaches it after the move");
                state
                    .sessions
                    .close(&cluster, close_code::NORMAL, "singleton moves away");
            }
            Effect::AutoRollback { work } => rollbacks.push(work),
        }
    }
    let mut concerned = Some(BTreeSet::new());
    for w in &outcome.changed_works {
        let c = crate::decide::affected_clusters(
            previous.get(w).map(|d| d.as_ref()),
            outcome.decisions.get(w).map(|d| d.as_ref()),
        );
        concerned = match (concerned, c) {
            (Some(mut all), Some(c)) => {
                all.extend(c);
                Some(all)
            }
            _ => None,
        };
    }
    state
        .decisions
        .publish(outcome.decisions, outcome.changed, concerned);
    for name in rollbacks {
        let st = state.clone();
        let n = name.clone();
        let r = tokio::task::spawn_blocking(move || undo(&st, &n, None, "auto-rollback")).await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(work = %name, error = %e, "automatic rollback failed"),
            Err(e) => tracing::error!(work = %name, error = %e, "automatic rollback panicked"),
        }
    }
}
