//! The one replica that decides. Every replica asks for the lease while it serves; the one
//! holding it runs the controller and the git sync, and its writes (decisions, rollout
//! state) check the lease's epoch in the same transaction. Losing the lease ends this task,
//! and with it the process (its supervisor restarts it as a follower); a paused old leader
//! can never write, whatever it believes.

use crate::fleet::replica::Replica;
use crate::state::HubState;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wait for the lease, then decide until it is lost or a decision task stops.
pub(crate) async fn run(state: Arc<HubState>, replica: Arc<Replica>) {
    let ttl = state.cfg.lease_ttl;
    let lease = match crate::lease::acquire(&state.store, &replica.name, ttl).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot take part in the lease election");
            return;
        }
    };
    let acquired = Instant::now();
    replica.set_leader(lease.clone());
    state.metrics.lease_holder.set(1);
    // Speak for the clusters of replicas that died before this one took over, and decide
    // from everything stored: the previous leader's view is gone with it.
    adopt_orphans(&state, &replica);
    state.changes.resync();
    tokio::select! {
        _ = crate::lease::keep(state.store.clone(), lease, ttl, acquired) => {}
        _ = crate::controller::run(state.clone()) => {
            tracing::error!("the controller stopped");
        }
        _ = crate::controller::git_sync::run(state.clone()) => {
            tracing::error!("the git source sync stopped");
        }
    }
}

/// Keep this replica's liveness row fresh and learn which replicas are alive; the leader
/// adopts the clusters of replicas that died. Returns (which stops the hub, closing its
/// sessions so that agents move to a replica that can serve them) when the database cannot
/// be reached for a whole `--lease-ttl`: a replica cut off from it must not keep agents.
pub(crate) async fn liveness(state: Arc<HubState>, replica: Arc<Replica>) {
    let ttl = state.cfg.lease_ttl;
    let mut beaten = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let left = ttl.saturating_sub(beaten.elapsed());
        let (s, name) = (state.store.clone(), replica.name.clone());
        let attempt = tokio::task::spawn_blocking(move || {
            s.beat_replica(&name, ttl)?;
            s.live_replicas()
        });
        match tokio::time::timeout(left.max(Duration::from_millis(1)), attempt).await {
            Ok(Ok(Ok(live))) => {
                beaten = Instant::now();
                state
                    .metrics
                    .replicas_live
                    .set(i64::try_from(live.len()).unwrap_or(i64::MAX));
                replica.set_live(live.into_iter().collect());
                if replica.is_leader() {
                    adopt_orphans(&state, &replica);
                }
            }
            Ok(Ok(Err(e))) if beaten.elapsed() < ttl => {
                tracing::warn!(error = %e, "could not renew this replica's liveness; retrying");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the liveness task failed; stopping");
                return;
            }
            _ => {
                tracing::error!(
                    "cut off from the database for {ttl:?}; stopping so that agents move to a replica that can serve them"
                );
                return;
            }
        }
    }
}

/// Decide here the health of clusters whose session holder died (or that no replica holds).
fn adopt_orphans(state: &HubState, replica: &Replica) {
    let now = crate::util::now_ms();
    let mut adopted = Vec::new();
    {
        let mut h = state.health.lock().unwrap_or_else(|p| p.into_inner());
        for c in h.remote_clusters() {
            if replica.responsible_now(&c) {
                h.adopt(&c, now);
                adopted.push(c);
            }
        }
    }
    if !adopted.is_empty() {
        tracing::warn!(
            clusters = adopted.len(),
            "the replica holding these clusters' sessions is gone; this replica decides their health until they connect again"
        );
        for c in &adopted {
            state.changes.cluster(c);
        }
    }
}
