//! What the hub's shells share: configuration, the registry, the store, health, sessions,
//! the work catalog and the published decisions.

use crate::config::DataDir;
use crate::fleet::health::{HealthConfig, HealthTracker, Transition};
use crate::fleet::sessions::Sessions;
use crate::identity::registry::{Registry, Revocation};
use crate::metrics::{Metrics, StateLabel};
use crate::util::now_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_store::hub::{AuditEvent, ClusterState, CLUSTERS};
use tether_store::{Store, StoreError};
use tether_transport::Limits;
use tokio::sync::{mpsc, Semaphore};

use crate::decide::WorkDecision;
use std::sync::RwLock;
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: DataDir,
    /// Where the tables live: the data directory's redb file, or PostgreSQL.
    pub store: crate::config::StoreLocation,
    /// On PostgreSQL: how long the serving hub's lease lasts unrenewed, so how soon a standby
    /// takes over from a hub that died (renewed every third of it).
    pub lease_ttl: Duration,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub health: HealthConfig,
    /// Lifetime of certificates issued to clusters.
    pub cert_validity: Duration,
    pub limits: Limits,
    /// Concurrent unauthenticated join connections; more are refused as busy.
    pub max_join_connections: usize,
    /// A join connection is closed after this long; the agent reconnects and polls again.
    pub join_connection_lifetime: Duration,
    /// A join connection with no request for this long is closed (an agent polls every 2 s).
    pub join_idle_timeout: Duration,
}

impl HubConfig {
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            data_dir: DataDir::new(data_dir),
            store: Default::default(),
            lease_ttl: Duration::from_secs(10),
            listen: "0.0.0.0:7443"
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 7443))),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            health: HealthConfig::default(),
            cert_validity: Duration::from_secs(30 * 86_400),
            limits: Limits::default(),
            max_join_connections: 256,
            join_connection_lifetime: Duration::from_secs(300),
            join_idle_timeout: Duration::from_secs(20),
        }
    }
}

/// Shared state of a running hub.
pub struct HubState {
    pub cfg: HubConfig,
    pub registry: Registry,
    pub store: Arc<Store>,
    pub health: Mutex<HealthTracker>,
    pub sessions: Sessions,
    pub metrics: Arc<Metrics>,
    /// Admin credentials with their roles and scopes (see `identity::admins`).
    pub admins: crate::identity::admins::Admins,
    pub join_slots: Arc<Semaphore>,
    /// Open join connections by source (see `admission`).
    pub(crate) join_sources: crate::limits::admission::JoinSources,
    pub works: crate::works::WorkIndex,
    /// Placement, overrides and rollout decisions per work (see `controller`).
    pub decisions: crate::state::Decisions,
    /// Singleton deliveries not yet answered (see `singleton`).
    pub singleton_in_flight: crate::fleet::in_flight::InFlight,
    /// When this hub process started: it cannot know what happened before, so no cluster is
    /// treated as unreachable for longer than this (a restart must not trigger failover).
    pub started_ms: u64,
    /// What changed for the decision loop (status arrived, health changed, rollout paused...).
    pub changes: crate::fleet::changes::Changes,
    /// Group commit for hot-path durable writes (delivery acks, status).
    pub committer: crate::ingest::committer::Committer,
    /// Status entries each cluster may have stored (see `budget`).
    pub status_budget: crate::limits::budget::Budgets,
    /// Best-effort audit events from hot paths (handshake rejections); bounded, batched.
    pub(crate) audit_queue: mpsc::Sender<AuditEvent>,
    /// Health transitions not yet stored (see `apply_transitions`).
    pub(crate) pending_health: Mutex<BTreeMap<String, Transition>>,
    pub(crate) health_dirty: tokio::sync::Notify,
    /// Clusters whose agent last reported its store failing (for `/metrics`).
    pub(crate) store_unavailable: Mutex<std::collections::BTreeSet<String>>,
    /// Clones of the repositories of works with a git source (see `works::git`).
    pub(crate) git: Arc<crate::works::git::GitCache>,
    /// The last look at each git-sourced work's repository (see `controller::git_sync`).
    pub(crate) source_checks: Mutex<BTreeMap<String, crate::api::SourceCheck>>,
    /// Recent contents and patches between them, for agents that take patches.
    pub(crate) patches: crate::works::patches::Patches,
    /// Status entries appended since the last filing (see `ingest::history`).
    pub(crate) filer: Arc<crate::ingest::history::Filer>,
    /// On PostgreSQL: this process as one of the hub's replicas (see `replicas`).
    pub(crate) replica: Option<Arc<crate::fleet::replica::Replica>>,
}

/// Store health transitions. With replicas, only those of clusters this replica decides, as
/// the stored session holder says in this very transaction: a replica whose old session of a
/// cluster ends after the agent moved must not store Unknown over the new holder's Ready.
pub(crate) fn store_transitions(
    tx: &tether_store::WriteTx,
    transitions: &BTreeMap<String, Transition>,
    replica: Option<&crate::fleet::replica::Replica>,
) -> Result<(), StoreError> {
    for t in transitions.values() {
        if let Some(r) = replica {
            let holder = tx
                .get(&crate::fleet::replica::SESSION_HOLDERS, &t.cluster)?
                .map(|h| h.replica);
            if !r.responsible(holder.as_deref()) {
                continue;
            }
        }
        if let Some(mut rec) = tx.get(&CLUSTERS, &t.cluster)? {
            if rec.state == ClusterState::Denied {
                continue;
            }
            rec.state = t.to;
            rec.state_since_ms = t.at_ms;
            if t.last_heartbeat_ms.is_some() {
                rec.last_seen_ms = t.last_heartbeat_ms;
            }
            tx.put(&CLUSTERS, &t.cluster, &rec)?;
        }
    }
    Ok(())
}

/// Store queued health transitions, one group commit per wake-up, and refresh the gauges.
pub(crate) async fn persist_health(state: Arc<HubState>) {
    loop {
        state.health_dirty.notified().await;
        let batch = state.take_pending_health();
        if batch.is_empty() {
            continue;
        }
        // A reconnect storm queues thousands: read their rows in one statement on PostgreSQL
        // (the session holders only where `store_transitions` checks them: with replicas).
        let reads = state.reads_for(|| {
            let holders = state.replica.is_some();
            batch
                .keys()
                .flat_map(|c| {
                    let holder = (crate::fleet::replica::SESSION_HOLDERS.name(), c.clone());
                    holders
                        .then_some(holder)
                        .into_iter()
                        .chain([(CLUSTERS.name(), c.clone())])
                })
                .collect()
        });
        if let Err(e) = state
            .committer
            .write_reading(reads, {
                let replica = state.replica.clone();
                move |tx| store_transitions(tx, &batch, replica.as_deref())
            })
            .await
        {
            tracing::error!(error = %e, "could not persist cluster health");
        }
        state.refresh_state_gauges();
    }
}

impl HubState {
    /// Record that this replica holds `cluster`'s session, before the session counts: from the
    /// commit on, this replica decides the cluster's health and every other one shows it.
    pub(crate) async fn claim_session(
        &self,
        replica: &crate::fleet::replica::Replica,
        cluster: &str,
    ) -> Result<(), crate::ingest::committer::CommitError> {
        let (c, holder) = (
            cluster.to_string(),
            crate::fleet::replica::Holder {
                replica: replica.name.clone(),
                since_ms: crate::util::now_ms(),
            },
        );
        self.committer
            .write(move |tx| tx.put(&crate::fleet::replica::SESSION_HOLDERS, &c, &holder))
            .await?;
        replica.set_holder(cluster, Some(replica.name.clone()));
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_local(cluster, crate::util::now_ms());
        Ok(())
    }

    /// Store one status batch of `cluster` through the group committer (exactly once, see
    /// `ingest::status`); answers once it is durable.
    pub async fn ingest_status(
        &self,
        cluster: &str,
        batch: tether_protocol::StatusBatch,
        scope: crate::limits::scope::Scope,
    ) -> Result<crate::ingest::status::Ingested, crate::ingest::committer::CommitError> {
        let name = cluster.to_string();
        let now = crate::util::now_ms();
        let reads = self.reads_for(|| crate::ingest::status::reads(cluster, &batch));
        let ingested = self
            .committer
            .write_reading(reads, move |tx| {
                crate::ingest::status::ingest(tx, &name, &batch, &scope, now)
            })
            .await?;
        self.filer.appended(ingested.stored);
        Ok(ingested)
    }

    /// The rows a group-committed write will `get`, for [`Committer::write_reading`]: nothing
    /// on redb, which reads locally and would ignore them.
    ///
    /// [`Committer::write_reading`]: crate::ingest::committer::Committer::write_reading
    pub(crate) fn reads_for(
        &self,
        rows: impl FnOnce() -> crate::ingest::committer::Reads,
    ) -> crate::ingest::committer::Reads {
        if self.store.is_embedded() {
            Vec::new()
        } else {
            rows()
        }
    }

    /// Log health transitions and queue them for persistence.
    ///
    /// Called from the session and tick paths on the async runtime, so nothing here touches
    /// the disk: `persist_health` writes the queued transitions through the group committer,
    /// newest per cluster, many per fsync. (Writing them here, one fsynced transaction per
    /// transition, blocked the runtime's workers when tens of thousands of agents connected at
    /// once: 60k sessions never all came up.) The live state is the tracker's; the stored one
    /// only seeds the next start.
    pub fn apply_transitions(&self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            return;
        }
        for t in &transitions {
            tracing::info!(cluster = %t.cluster, from = t.from.as_str(), to = t.to.as_str(), "cluster health changed");
        }
        for t in &transitions {
            self.changes.cluster(&t.cluster);
        }
        {
            let mut pending = self
                .pending_health
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Bounded by the number of clusters: the newest transition per cluster wins.
            for t in transitions {
                pending.insert(t.cluster.clone(), t);
            }
        }
        self.health_dirty.notify_one();
    }

    pub(crate) fn take_pending_health(&self) -> BTreeMap<String, Transition> {
        std::mem::take(
            &mut *self
                .pending_health
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    pub(crate) fn refresh_state_gauges(&self) {
        let counts = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count_by_state();
        for s in [
            ClusterState::Ready,
            ClusterState::Unknown,
            ClusterState::Offline,
        ] {
            self.metrics
                .clusters
                .get_or_create(&StateLabel {
                    state: s.as_str().to_string(),
                })
                .set(counts.get(&s).copied().unwrap_or(0) as i64);
        }
    }

    pub fn health_event(&self, f: impl FnOnce(&mut HealthTracker) -> Option<Transition>) {
        let t = f(&mut self.health.lock().unwrap_or_else(|p| p.into_inner()));
        self.apply_transitions(t.into_iter().collect());
    }

    /// Queue a security event that is not part of a state change (rate-limited by the queue).
    /// Track a cluster's `StoreUnavailable` condition from its heartbeat.
    pub(crate) fn note_conditions(&self, cluster: &str, conditions: &[tether_protocol::Condition]) {
        let failing = conditions
            .iter()
            .any(|c| c.kind == tether_protocol::message::STORE_UNAVAILABLE && c.status == "True");
        let mut set = self
            .store_unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let changed = if failing {
            set.insert(cluster.to_string())
        } else {
            set.remove(cluster)
        };
        if changed {
            self.metrics
                .clusters_store_unavailable
                .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
            if failing {
                tracing::error!(%cluster, "the cluster's agent reports its store failing (StoreUnavailable)");
            } else {
                tracing::info!(%cluster, "the cluster's agent store works again");
            }
        }
    }

    /// Why the hub cannot serve durably, if it cannot: its store fails or its writer stopped.
    pub fn store_trouble(&self) -> Option<String> {
        self.metrics
            .store_failures
            .set(i64::try_from(self.store.failures_total()).unwrap_or(i64::MAX));
        let trouble = if let Some(f) = self.store.failure() {
            Some(format!(
                "store failing since {}: {}",
                crate::util::rfc3339(f.since_ms),
                f.error
            ))
        } else if *self.committer.stopped().borrow() {
            Some("the store writer has stopped".to_string())
        } else {
            None
        };
        self.metrics.store_failing.set(i64::from(trouble.is_some()));
        trouble
    }

    pub fn audit_async(&self, kind: &str, cluster: Option<String>, actor: &str, detail: String) {
        let ev = AuditEvent {
            at_ms: now_ms(),
            kind: kind.to_string(),
            cluster,
            actor: actor.to_string(),
            detail,
        };
        if self.audit_queue.try_send(ev).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }

    /// What the hub knows and selects for `cluster` of the works `names` (see `scope`).
    pub(crate) fn scope_of<'a>(
        &self,
        cluster: &str,
        names: impl IntoIterator<Item = &'a str>,
    ) -> crate::limits::scope::Scope {
        let works = self.works.snapshot();
        let decisions = self.decisions.snapshot();
        crate::limits::scope::of(
            names,
            |n| works.contains_key(n),
            |n| {
                decisions
                    .get(n)
                    .is_some_and(|d| d.selected.contains_key(cluster))
            },
        )
    }

    /// After an admin revoked a cluster (the revocation is committed): cut every connection of
    /// it, registered or still before Hello, and stop tracking its health.
    pub fn enforce_revocation(&self, revocation: &Revocation, code: u32, why: &str) -> bool {
        let closed =
            self.sessions
                .close_cluster(&revocation.cluster, &revocation.serials, code, why);
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(&revocation.cluster);
        self.refresh_state_gauges();
        if closed > 0 {
            tracing::warn!(cluster = %revocation.cluster, reason = why, connections = closed, "closed the cluster's connections");
        }
        closed > 0
    }
}

/// The published decisions, and the channel that tells delivery tasks they changed. Works
/// changes wake the controller only: a session has nothing to re-plan until the controller
/// has decided the new generation. Each publication logs which clusters it concerns, so a
/// delivery task re-plans only when its own cluster's plan can differ.
pub struct Decisions {
    map: RwLock<Arc<BTreeMap<String, Arc<WorkDecision>>>>,
    changed: tokio::sync::watch::Sender<u64>,
    /// (version, clusters concerned; `None` = all), newest last, at most `LOG_LEN`.
    log: Mutex<std::collections::VecDeque<(u64, Option<BTreeSet<String>>)>>,
}

/// The decisions per work as stored for the other hub replicas on PostgreSQL, written by the
/// lease holder only (see `replicas`).
pub(crate) const DECISIONS: tether_store::StrTable<WorkDecision> =
    tether_store::StrTable::new("decisions");

/// Publications remembered for `concerns`; a task further behind re-plans.
const LOG_LEN: usize = 256;

impl Default for Decisions {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
            changed: tokio::sync::watch::channel(0).0,
            log: Mutex::default(),
        }
    }
}

impl Decisions {
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<WorkDecision>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publish `next`; `concerned` names the clusters whose plan may differ (`None`: all).
    /// Nothing is signalled when no work's plan changed.
    pub(crate) fn publish(
        &self,
        next: BTreeMap<String, Arc<WorkDecision>>,
        changed: bool,
        concerned: Option<BTreeSet<String>>,
    ) {
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        if changed {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            let version = *self.changed.borrow() + 1;
            log.push_back((version, concerned));
            while log.len() > LOG_LEN {
                log.pop_front();
            }
            self.changed.send_modify(|v| *v = version);
        }
    }

    /// Whether a publication after version `seen` may change what `cluster` should hold.
    pub fn concerns(&self, cluster: &str, seen: u64) -> bool {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        match log.front() {
            Some((oldest, _)) if *oldest <= seen + 1 => log
                .iter()
                .filter(|(v, _)| *v > seen)
                .any(|(_, c)| c.as_ref().is_none_or(|c| c.contains(cluster))),
            // Fell behind the log (or nothing logged yet): assume it does.
            _ => *self.changed.borrow() > seen,
        }
    }

    /// Ticks whenever a published decision could change what a session should hold.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
