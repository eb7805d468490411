//! Follow the change feed into this replica's caches.
//!
//! Every commit to a cached table also wrote `(table, key, origin)` to `tether_changes` in
//! the same transaction, and rang a `NOTIFY` doorbell. This task reads the feed from its
//! position (on the doorbell, and every `POLL` since a notification can be lost), skips the
//! changes this replica made itself, and reads again only the entries named (`route`).
//! A replica that could not read for `RELIST_AFTER` (the leader prunes what is older than
//! ten minutes) reads everything again instead.

use super::route::Refresh;
use crate::decide::WorkDecision;
use crate::fleet::replica::{Replica, SESSION_HOLDERS};
use crate::state::HubState;
use crate::state::DECISIONS;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_protocol::close_code;
use tether_store::hub::{ClusterState, ADMINS, CLUSTERS, REVOKED};
use tether_store::StoreError;

/// Read the feed at least this often, doorbell or not.
const POLL: Duration = Duration::from_secs(1);
/// Entries read per query; a full batch is followed by the next one at once.
const BATCH: i64 = 5_000;
/// Half the leader's pruning age: a reader this far behind may have lost entries.
const RELIST_AFTER: Duration = Duration::from_secs(300);

/// Run until the hub stops.
pub(crate) async fn run(state: Arc<HubState>, replica: Arc<Replica>) {
    let bell = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    listen(state.store.clone(), bell.clone(), stop);
    let mut pos = None;
    let mut last_read = Instant::now();
    loop {
        if pos.is_none() || last_read.elapsed() >= RELIST_AFTER {
            let (st, r) = (state.clone(), replica.clone());
            match tokio::task::spawn_blocking(move || relist(&st, &r)).await {
                Ok(Ok(head)) => {
                    pos = Some(head);
                    last_read = Instant::now();
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not read the shared state; retrying")
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the shared state panicked; retrying")
                }
            }
            if pos.is_none() {
                tokio::time::sleep(POLL).await;
                continue;
            }
        }
        let after = pos.unwrap_or(0);
        let (st, r) = (state.clone(), replica.clone());
        let step = tokio::task::spawn_blocking(move || catch_up(&st, &r, after)).await;
        let full = match step {
            Ok(Ok((next, n))) => {
                pos = Some(next);
                last_read = Instant::now();
                n as i64 == BATCH
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read the change feed; retrying");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "following the change feed panicked; reading everything again");
                pos = None;
                false
            }
        };
        if !full {
            tokio::select! {
                _ = bell.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A thread of its own waits on the doorbell (`LISTEN`) and rings `bell`; it ends within a
/// second of `stop`.
fn listen(store: Arc<tether_store::Store>, bell: Arc<tokio::sync::Notify>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("change-feed-doorbell".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut door = match store.doorbell() {
                    Ok(d) => d,
                    Err(_) => {
                        std::thread::sleep(POLL);
                        continue;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    match door.wait(POLL) {
                        Ok(true) => bell.notify_one(),
                        Ok(false) => {}
                        Err(_) => break,
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no doorbell thread; following the change feed by polling only");
    }
}

/// Read the feed after `after`; returns the new position and how many entries were read.
fn catch_up(state: &HubState, replica: &Replica, after: i64) -> Result<(i64, usize), StoreError> {
    let batch = state.store.changes_since(after, BATCH)?;
    let Some(last) = batch.last().map(|c| c.id) else {
        return Ok((after, 0));
    };
    state.metrics.feed_changes.inc_by(batch.len() as u64);
    let mut refresh = Refresh::default();
    for c in batch.iter().filter(|c| c.origin != replica.name) {
        refresh.add(&c.table, &c.key);
    }
    if !refresh.is_empty() {
        apply(state, replica, &refresh)?;
    }
    Ok((last, batch.len()))
}

/// Read again what `refresh` names, and tell the rest of the hub.
fn apply(state: &HubState, replica: &Replica, refresh: &Refresh) -> Result<(), StoreError> {
    for w in &refresh.works {
        if let Err(e) = state.works.reload(&state.store, w) {
            tracing::error!(work = %w, error = %e, "could not load a work another replica changed");
        }
    }
    let mut clusters = refresh.clusters.clone();
    for c in &refresh.holders {
        let holder = state.store.read(|tx| tx.get(&SESSION_HOLDERS, c))?;
        replica.set_holder(c, holder.map(|h| h.replica));
        clusters.insert(c.clone());
    }
    for c in &clusters {
        let rec = state.store.read(|tx| tx.get(&CLUSTERS, c))?;
        follow_cluster(state, replica, c, rec);
    }
    for (c, w) in &refresh.rows {
        state.changes.rows(c, [w.as_str()]);
    }
    for w in &refresh.rollouts {
        state.changes.rollout(w);
    }
    if refresh.admins {
        state
            .admins
            .replace_all(state.store.read(|tx| tx.list(&ADMINS))?);
    }
    for serial in &refresh.revoked {
        state.registry.revocations().revoke(serial);
    }
    if !replica.is_leader() && !refresh.decisions.is_empty() {
        let mut updates = Vec::new();
        for w in &refresh.decisions {
            updates.push((w.clone(), state.store.read(|tx| tx.get(&DECISIONS, w))?));
        }
        publish_decisions(state, updates, false);
    }
    state.refresh_state_gauges();
    Ok(())
}

/// Bring one cluster's cached state in line with its stored record: close connections the
/// record no longer allows (a deny, detach, or revoked serial committed by another replica),
/// and show the health its session holder stored when that is not this replica.
fn follow_cluster(
    state: &HubState,
    replica: &Replica,
    cluster: &str,
    rec: Option<tether_store::hub::ClusterRecord>,
) {
    let why = "revoked on another hub replica";
    match rec {
        None => {
            state
                .sessions
                .close_cluster(cluster, &[], close_code::DETACHED, why);
            state
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget(cluster);
        }
        Some(rec) if rec.state == ClusterState::Denied => {
            state
                .sessions
                .close_cluster(cluster, &rec.serials, close_code::DENIED, why);
            state
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget(cluster);
        }
        Some(rec) => {
            let closed = state.sessions.close_other_serials(
                cluster,
                &rec.serials,
                close_code::UNAUTHORIZED,
                why,
            );
            if closed > 0 {
                tracing::warn!(%cluster, connections = closed, "closed connections whose certificate another replica revoked");
            }
            if !replica.responsible_now(cluster) {
                state
                    .health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .mirror(cluster, rec.state, rec.last_seen_ms, crate::util::now_ms());
            }
        }
    }
    state.changes.cluster(cluster);
}

/// Publish decisions the leader stored; `all`: `updates` is every decision there is.
fn publish_decisions(state: &HubState, updates: Vec<(String, Option<WorkDecision>)>, all: bool) {
    let prev = state.decisions.snapshot();
    let mut next: BTreeMap<String, Arc<WorkDecision>> = if all {
        BTreeMap::new()
    } else {
        (*prev).clone()
    };
    let mut concerned = Some(BTreeSet::new());
    let mut changed = false;
    for (w, d) in updates {
        let old = prev.get(&w).map(|d| d.as_ref());
        if old == d.as_ref() {
            if let Some(o) = prev.get(&w) {
                next.insert(w, o.clone());
            }
            continue;
        }
        changed = true;
        concerned = match (concerned, crate::decide::affected_clusters(old, d.as_ref())) {
            (Some(mut all), Some(c)) => {
                all.extend(c);
                Some(all)
            }
            _ => None,
        };
        match d {
            Some(d) => next.insert(w, Arc::new(d)),
            None => next.remove(&w),
        };
    }
    if all {
        changed = changed || prev.keys().any(|w| !next.contains_key(w));
        concerned = None;
    }
    state.decisions.publish(next, changed, concerned);
}

/// Read everything cached again; returns the feed position it is current with (taken
/// first, so that nothing committed meanwhile is missed: at worst it is read twice).
fn relist(state: &HubState, replica: &Replica) -> Result<i64, StoreError> {
    let head = state.store.changes_head()?;
    state.metrics.feed_relists.inc();
    if let Err(e) = state.works.reload_all(&state.store) {
        tracing::error!(error = %e, "could not load the works");
    }
    let (holders, clusters, admins, revoked) = state.store.read(|tx| {
        Ok::<_, StoreError>((
            tx.list(&SESSION_HOLDERS)?,
            tx.list(&CLUSTERS)?,
            tx.list(&ADMINS)?,
            tx.list(&REVOKED)?,
        ))
    })?;
    for (c, h) in holders {
        replica.set_holder(&c, Some(h.replica));
    }
    let known: BTreeSet<&String> = clusters.iter().map(|(c, _)| c).collect();
    let gone: Vec<String> = replica
        .holders()
        .into_iter()
        .map(|(c, _)| c)
        .filter(|c| !known.contains(c))
        .collect();
    for c in gone {
        follow_cluster(state, replica, &c, None);
    }
    for (c, rec) in clusters {
        follow_cluster(state, replica, &c, Some(rec));
    }
    state.admins.replace_all(admins);
    for (serial, _) in revoked {
        state.registry.revocations().revoke(&serial);
    }
    if !replica.is_leader() {
        let all = state.store.read(|tx| tx.list(&DECISIONS))?;
        publish_decisions(
            state,
            all.into_iter().map(|(w, d)| (w, Some(d))).collect(),
            true,
        );
    }
    state.changes.resync();
    state.refresh_state_gauges();
    Ok(head)
}
