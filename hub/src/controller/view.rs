//! The controller's in-memory fleet view: every cluster as decisions see it, every
//! (work, cluster) row, kept current from change events (see `fleet::changes`) by reading only
//! what an event names; a full re-read on the first pass, on overflow and as a periodic
//! safety net.

use crate::decide::{ClusterView, WorkDecision};
use crate::fleet::changes::Pending;
use crate::state::HubState;
use crate::works::WorkMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tether_store::hub::{
    cluster_prefix, cluster_work_key, ClusterRecord, ClusterState, ClusterWorkRecord, CLUSTERS,
    CLUSTER_WORKS,
};
use tether_store::{ReadTx, StoreError};

/// What a refresh touched: the works to decide again.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum Touched {
    /// Nothing changed.
    #[default]
    Nothing,
    /// Only these works.
    Works(BTreeSet<String>),
    /// Any work may be affected (a cluster changed, or everything was re-read).
    All,
}

impl Touched {
    fn add(&mut self, work: &str) {
        match self {
            Touched::Nothing => *self = Touched::Works(BTreeSet::from([work.to_string()])),
            Touched::Works(w) => {
                w.insert(work.to_string());
            }
            Touched::All => {}
        }
    }
}

#[derive(Default)]
pub(crate) struct FleetView {
    pub clusters: BTreeMap<String, ClusterView>,
    /// Keyed by (work, cluster), as `decide` reads it.
    pub status: BTreeMap<(String, String), ClusterWorkRecord>,
    /// Hub time since which each not-Ready cluster has been unreachable.
    away_since: BTreeMap<String, u64>,
    /// The works each cluster has a row for.
    rows_of: BTreeMap<String, BTreeSet<String>>,
}

impl FleetView {
    /// Apply `pending`; `None` from the caller's side means re-read everything.
    pub fn refresh(
        &mut self,
        state: &HubState,
        pending: &Pending,
        works: &WorkMap,
        previous: &BTreeMap<String, Arc<WorkDecision>>,
    ) -> Result<Touched, StoreError> {
        if pending.resync {
            *self = Self::default();
            let (records, rows) = state
                .store
                .read(|tx| Ok::<_, StoreError>((tx.list(&CLUSTERS)?, tx.list(&CLUSTER_WORKS)?)))?;
            for (name, rec) in records {
                self.set_cluster(state, &name, Some(rec));
            }
            for (key, row) in rows {
                if let Some((c, w)) = key.split_once('/') {
                    self.set_row(c, w, Some(row));
                }
            }
            return Ok(Touched::All);
        }
        let mut touched = Touched::Nothing;
        state.store.read(|tx| {
            for c in &pending.clusters {
                let before = self.decision_input(c);
                self.set_cluster(state, c, tx.get(&CLUSTERS, c)?);
                self.reload_rows(tx, c)?;
                if self.decision_input(c) != before {
                    touched = Touched::All;
                }
                for w in self.rows_of.get(c).into_iter().flatten() {
                    touched.add(w);
                }
            }
            for (c, w) in &pending.rows {
                if pending.clusters.contains(c) {
                    continue;
                }
                let new = tx.get(&CLUSTER_WORKS, &cluster_work_key(c, w))?;
                let old = self.status.get(&(w.clone(), c.clone()));
                if crate::decide::row_change_matters(
                    works.get(w).map(|e| e.as_ref()),
                    previous.get(w).map(|d| d.as_ref()),
                    c,
                    old,
                    new.as_ref(),
                ) {
                    touched.add(w);
                }
                self.set_row(c, w, new);
            }
            Ok::<_, StoreError>(())
        })?;
        for w in &pending.rollouts {
            touched.add(w);
        }
        Ok(touched)
    }

    /// What decisions read of a cluster, apart from the time: `away_ms` as stored has been
    /// aged by `age`, so compare the instant it counts from instead.
    fn decision_input(&self, cluster: &str) -> Option<(ClusterView, Option<u64>)> {
        let mut view = self.clusters.get(cluster)?.clone();
        view.away_ms = None;
        Some((view, self.away_since.get(cluster).copied()))
    }

    /// Bring `away_ms` up to `now` (it grows while a cluster stays unreachable).
    pub fn age(&mut self, now: u64) {
        for (c, since) in &self.away_since {
            if let Some(v) = self.clusters.get_mut(c) {
                v.away_ms = Some(now.saturating_sub(*since));
            }
        }
    }

    fn set_cluster(&mut self, state: &HubState, name: &str, rec: Option<ClusterRecord>) {
        let Some(c) = rec else {
            self.clusters.remove(name);
            self.away_since.remove(name);
            return;
        };
        let (ready, last_heartbeat, remote) = {
            let h = state.health.lock().unwrap_or_else(|p| p.into_inner());
            (
                h.state(name) == Some(ClusterState::Ready),
                h.last_heartbeat(name),
                h.is_remote(name),
            )
        };
        // Unreachable since (hub time): this process cannot know of anything before it
        // started, so a restart does not count as an outage.
        if ready {
            self.away_since.remove(name);
        } else {
            let since = last_heartbeat
                .or(c.last_seen_ms)
                .unwrap_or(c.state_since_ms)
                .max(state.started_ms);
            self.away_since.insert(name.to_string(), since);
        }
        let facts = crate::fleet::facts::effective(&c.facts, &c.pins);
        let view = ClusterView {
            labels: crate::decide::placement::selectable_labels(&c.labels, &facts),
            cpus: facts.cpus,
            cpus_pinned: c.pins.cpus.is_some(),
            denied: c.state == ClusterState::Denied,
            ready,
            // Set by `age` from `away_since`.
            away_ms: (!ready).then_some(0),
            // A session another replica holds is open while that replica says Ready.
            session_open: state.sessions.stable_id(name).is_some() || (remote && ready),
        };
        self.clusters.insert(name.to_string(), view);
    }

    fn reload_rows(&mut self, tx: &ReadTx, cluster: &str) -> Result<(), StoreError> {
        for w in self.rows_of.remove(cluster).unwrap_or_default() {
            self.status.remove(&(w, cluster.to_string()));
        }
        let prefix = cluster_prefix(cluster);
        for (key, row) in tx.list_prefix(&CLUSTER_WORKS, &prefix)? {
            self.set_row(cluster, &key[prefix.len()..], Some(row));
        }
        Ok(())
    }

    fn set_row(&mut self, cluster: &str, work: &str, row: Option<ClusterWorkRecord>) {
        let key = (work.to_string(), cluster.to_string());
        match row {
            Some(r) => {
                self.status.insert(key, r);
                self.rows_of
                    .entry(cluster.to_string())
                    .or_default()
                    .insert(work.to_string());
            }
            None => {
                self.status.remove(&key);
                if let Some(ws) = self.rows_of.get_mut(cluster) {
                    ws.remove(work);
                }
            }
        }
    }
}
