//! Assembles a running hub: store, registry, health, QUIC listener, admin API, background tick.

use crate::config::DataDir;
use crate::health::{HealthConfig, HealthTracker, Transition};
use crate::metrics::{Metrics, StateLabel};
use crate::pki::CertificateAuthority;
use crate::registry::{Registry, Revocation};
use crate::sessions::Sessions;
use crate::util::now_ms;
use anyhow::Context;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_protocol::{close_code, ALPN_JOIN, ALPN_SESSION};
use tether_store::hub::{AuditEvent, ClusterState, ADMINS, AUDIT, CLUSTERS, REVOKED};
use tether_store::{Store, StoreError};
use tether_transport::tls::{HubClientVerifier, RevocationList};
use tether_transport::{certs, Limits};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: DataDir,
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
    pub admin_fingerprints: HashSet<String>,
    pub join_slots: Arc<Semaphore>,
    /// Open join connections by source (see `admission`).
    pub(crate) join_sources: crate::admission::JoinSources,
    pub works: crate::works::WorkIndex,
    /// Placement, overrides and rollout decisions per work (see `controller`).
    pub decisions: crate::controller::Decisions,
    /// Singleton deliveries not yet answered (see `singleton`).
    pub singleton_in_flight: crate::singleton::InFlight,
    /// When this hub process started: it cannot know what happened before, so no cluster is
    /// treated as unreachable for longer than this (a restart must not trigger failover).
    pub started_ms: u64,
    /// Wakes the decision loop (status arrived, health changed, rollout paused...).
    pub decisions_wake: tokio::sync::Notify,
    /// Group commit for hot-path durable writes (delivery acks, status).
    pub committer: crate::committer::Committer,
    /// Status entries each cluster may have stored (see `budget`).
    pub status_budget: crate::budget::Budgets,
    /// Best-effort audit events from hot paths (handshake rejections); bounded, batched.
    audit_queue: mpsc::Sender<AuditEvent>,
    /// Health transitions not yet stored (see `apply_transitions`).
    pending_health: Mutex<BTreeMap<String, Transition>>,
    health_dirty: tokio::sync::Notify,
    /// Clusters whose agent last reported its store failing (for `/metrics`).
    store_unavailable: Mutex<std::collections::BTreeSet<String>>,
}

fn store_transitions(
    tx: &tether_store::WriteTx,
    transitions: &BTreeMap<String, Transition>,
) -> Result<(), StoreError> {
    for t in transitions.values() {
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
async fn persist_health(state: Arc<HubState>) {
    loop {
        state.health_dirty.notified().await;
        let batch = state.take_pending_health();
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = state
            .committer
            .write(move |tx| store_transitions(tx, &batch))
            .await
        {
            tracing::error!(error = %e, "could not persist cluster health");
        }
        state.refresh_state_gauges();
    }
}

impl HubState {
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
        self.decisions_wake.notify_one();
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

    fn take_pending_health(&self) -> BTreeMap<String, Transition> {
        std::mem::take(
            &mut *self
                .pending_health
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    fn refresh_state_gauges(&self) {
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
    ) -> crate::scope::Scope {
        let works = self.works.snapshot();
        let decisions = self.decisions.snapshot();
        crate::scope::of(
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

/// A hub running in this process (used by `tether-hub serve`, tests and the simulator).
pub struct RunningHub {
    pub quic_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<HubState>,
    endpoint: quinn::Endpoint,
    tasks: JoinSet<()>,
    /// What each long-lived task is, to name the one that stopped.
    task_names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

fn read(path: std::path::PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (did you run `tether-hub init --data-dir {}`?)",
            path.display(),
            path.parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    })
}

pub async fn start(cfg: HubConfig) -> anyhow::Result<RunningHub> {
    let dir = cfg.data_dir.clone();
    let ca_pem = read(dir.ca_cert())?;
    let ca =
        CertificateAuthority::load(&ca_pem, &read(dir.ca_key())?).context("loading the hub CA")?;
    let chain = certs::certs_from_pem(&read(dir.hub_cert())?, "hub certificate")?;
    let key = certs::key_from_pem(&read(dir.hub_key())?, "hub key")?;
    // Only `init` creates a database: an empty hub would answer 401 to every admin and send
    // every agent of the fleet away for good.
    let store = Arc::new(
        Store::open_existing(dir.database())
            .context("opening the hub database (recovery: docs/recovery.md)")?,
    );
    if let Some(n) = crate::status::retire_legacy_log(&store).context("retiring the status log")? {
        tracing::warn!(
            entries = n,
            "dropped the global status log of an older hub version (display history only; the newest status of every cluster and work is kept)"
        );
    }

    let now = now_ms();
    let (revoked, clusters, admins) = store.read(|tx| {
        Ok::<_, StoreError>((tx.list(&REVOKED)?, tx.list(&CLUSTERS)?, tx.list(&ADMINS)?))
    })?;
    if let Some(taken) = crate::backup::take_restore_mark(&store, now_ms())? {
        tracing::warn!(
            taken_at = %crate::util::rfc3339(taken),
            "this database was restored from a backup: works applied, clusters joined or revoked, and statuses after that time are unknown to this hub; agents keep works it does not know (logged as they connect), and clusters that joined later must join again (docs/recovery.md)"
        );
    }
    if admins.is_empty() {
        anyhow::bail!(
            "{} holds no admin credential: it is not the database `tether-hub init` made (restore it from a backup)",
            dir.database().display()
        );
    }
    let revoked = Arc::new(RevocationList::new(revoked.into_iter().map(|(k, _)| k)));
    let mut health = HealthTracker::new(cfg.health);
    for (name, c) in &clusters {
        if c.state != ClusterState::Denied {
            health.track(name, c.state, c.last_seen_ms, now);
        }
    }
    let metrics = Arc::new(Metrics::new());
    metrics.set_certificate_expiry(&crate::pki::check_certificates(&dir, &admins, now)?);
    let (audit_tx, audit_rx) = mpsc::channel(1024);

    let reject_metrics = metrics.clone();
    let reject_audit = audit_tx.clone();
    // At most one log line and audit row per reason a second; the counter has every one. A
    // flood of bad certificates must not become a flood of fsynced rows.
    let reject_gate: Mutex<BTreeMap<&'static str, (u64, u64)>> = Mutex::new(BTreeMap::new());
    let on_reject: tether_transport::tls::RejectHook = Arc::new(move |reason| {
        reject_metrics.reject(reason);
        let now = now_ms();
        let suppressed = {
            let mut gate = reject_gate.lock().unwrap_or_else(|p| p.into_inner());
            let (last, held_back) = gate.entry(reason).or_insert((0, 0));
            if now.saturating_sub(*last) < 1000 {
                *held_back += 1;
                return;
            }
            *last = now;
            std::mem::take(held_back)
        };
        tracing::warn!(
            reason,
            suppressed,
            "TLS handshake rejected: client certificate refused"
        );
        let _ = reject_audit.try_send(AuditEvent {
            at_ms: now,
            kind: "handshake_rejected".into(),
            cluster: None,
            actor: "hub".into(),
            detail: if suppressed > 0 {
                format!("client certificate refused: {reason} (and {suppressed} more since the last such event)")
            } else {
                format!("client certificate refused: {reason}")
            },
        });
    });
    let ca_der = certs::certs_from_pem(&ca_pem, "CA certificate")?
        .into_iter()
        .next()
        .context("CA certificate file is empty")?;
    let verifier = Arc::new(HubClientVerifier::new(ca_der, revoked.clone(), on_reject)?);
    let quic_tls = tether_transport::tls::server_config(
        chain.clone(),
        key.clone_key(),
        verifier.clone(),
        &[ALPN_SESSION, ALPN_JOIN],
    )?;
    let admin_tls = tether_transport::tls::server_config(chain, key, verifier, &[b"http/1.1"])?;
    let reset_secret = load_or_create_reset_secret(&dir.reset_secret())?;
    let endpoint = tether_transport::quic::server_endpoint(cfg.listen, quic_tls, &reset_secret)?;
    let quic_addr = endpoint.local_addr()?;
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding the admin API on {}", cfg.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;

    let works = crate::works::WorkIndex::load(&store).context("loading works")?;
    let committer = crate::committer::Committer::start(store.clone());
    let state = Arc::new(HubState {
        registry: Registry::new(store.clone(), ca, revoked, cfg.cert_validity),
        store,
        health: Mutex::new(health),
        sessions: Sessions::new(),
        metrics,
        admin_fingerprints: admins.into_iter().map(|(k, _)| k).collect(),
        join_slots: Arc::new(Semaphore::new(cfg.max_join_connections)),
        join_sources: Default::default(),
        works,
        decisions: Default::default(),
        singleton_in_flight: Default::default(),
        decisions_wake: tokio::sync::Notify::new(),
        store_unavailable: Mutex::new(Default::default()),
        started_ms: now,
        committer,
        status_budget: crate::budget::Budgets::new(crate::budget::STATUS_ENTRIES),
        audit_queue: audit_tx,
        pending_health: Mutex::new(BTreeMap::new()),
        health_dirty: tokio::sync::Notify::new(),
        cfg,
    });
    state.refresh_state_gauges();

    let mut tasks = JoinSet::new();
    let mut task_names = std::collections::HashMap::new();
    let mut name = |h: tokio::task::AbortHandle, n: &'static str| task_names.insert(h.id(), n);
    name(
        tasks.spawn(crate::server::accept_loop(endpoint.clone(), state.clone())),
        "agent accept loop",
    );
    name(
        tasks.spawn(crate::admin::serve(
            admin_listener,
            Arc::new(admin_tls),
            state.clone(),
        )),
        "admin API",
    );
    name(tasks.spawn(tick_loop(state.clone())), "health tick");
    // Decide once before accepting sessions' plans, so nothing is sent undecided.
    if let Err(e) = crate::controller::decide_all(&state) {
        tracing::error!(error = %e, "initial decision pass failed");
    }
    name(
        tasks.spawn(crate::controller::run(state.clone())),
        "controller",
    );
    name(
        tasks.spawn(audit_writer(state.store.clone(), audit_rx)),
        "audit writer",
    );
    name(
        tasks.spawn(persist_health(state.clone())),
        "health persister",
    );
    tracing::info!(%quic_addr, %admin_addr, clusters = clusters.len(), "hub started");
    Ok(RunningHub {
        quic_addr,
        admin_addr,
        state,
        endpoint,
        tasks,
        task_names,
    })
}

/// The stateless-reset secret of this data directory, created on first start (data directories
/// initialised before it existed get one then). Losing it only costs one slow reconnect.
fn load_or_create_reset_secret(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    if !path.exists() {
        let secret: [u8; 32] = rand::random();
        match crate::util::write_private(path, hex::encode(secret).as_bytes()) {
            Ok(()) => return Ok(secret),
            // Another process created it first: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
        }
    }
    // 64 hex digits and a newline at most; anything much larger is not ours to read whole.
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= 128,
        "{} is {len} bytes, not a 64-hex-digit secret; delete it to make a new one",
        path.display()
    );
    let text = read(path.to_path_buf())?;
    let bytes = hex::decode(text.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .with_context(|| {
            format!(
                "{} is not 64 hex digits; delete it to make a new one (agents then reconnect after their idle timeout once)",
                path.display()
            )
        })?;
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&bytes);
    Ok(secret)
}

impl RunningHub {
    /// Stop accepting, close every session, and release the database.
    pub async fn shutdown(mut self) {
        self.state
            .sessions
            .close_all(close_code::SHUTDOWN, "hub shutting down");
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"hub shutting down");
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // What the persister had not stored yet (the sessions just closed, among others).
        let pending = self.state.take_pending_health();
        if !pending.is_empty() {
            if let Err(e) = self.state.store.write(|tx| store_transitions(tx, &pending)) {
                tracing::error!(error = %e, "could not persist cluster health at shutdown");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // Release the database before returning, so the same process can start a hub on it
        // again: wait for session tasks to drop their references, then for the writer thread.
        let mut writer_stopped = self.state.committer.stopped();
        let released = tokio::time::timeout(Duration::from_secs(5), async {
            while Arc::strong_count(&self.state) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if released.is_err() {
            tracing::warn!("hub state still referenced 5s after shutdown");
        }
        drop(self.state);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer_stopped.wait_for(|s| *s)).await;
        tracing::info!("hub stopped");
    }

    /// Run until the process receives Ctrl-C / SIGTERM, or until a long-lived task stops: each
    /// runs for the life of the hub, so one that returns or panics leaves a hub that looks up
    /// but does not work (no decisions, no health). That is fatal: the hub shuts down and the
    /// error names the task, for the supervisor (systemd, Kubernetes) to restart it.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let stopped = tokio::select! {
            _ = wait_for_signal() => None,
            Some(r) = self.tasks.join_next_with_id() => Some(r),
        };
        let Some(r) = stopped else {
            tracing::info!("signal received, shutting down");
            self.shutdown().await;
            return Ok(());
        };
        let (id, how) = match r {
            Ok((id, ())) => (id, "returned".to_string()),
            Err(e) if e.is_panic() => (e.id(), format!("panicked: {e}")),
            Err(e) => (e.id(), format!("was cancelled: {e}")),
        };
        let task = self.task_names.get(&id).copied().unwrap_or("a hub task");
        tracing::error!(task, how = %how, "a long-lived hub task stopped; shutting down");
        self.shutdown().await;
        anyhow::bail!("the hub's {task} {how}; the hub stopped (restart it)")
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Re-evaluate health often enough that state changes show within a second, and persist
/// `last_seen` of live clusters now and then (not on every heartbeat: that would be one fsync
/// per heartbeat per cluster).
async fn tick_loop(state: Arc<HubState>) {
    let period = (state.cfg.health.heartbeat_interval / 2)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let flush_every = Duration::from_secs(30);
    let mut last_flush = std::time::Instant::now();
    loop {
        interval.tick().await;
        let now = now_ms();
        let transitions = state
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick(now);
        state.apply_transitions(transitions);
        if last_flush.elapsed() >= flush_every {
            last_flush = std::time::Instant::now();
            // Through the committer, off this loop: the tick must not wait for an fsync.
            tokio::spawn(flush_last_seen(state.clone()));
        }
    }
}

async fn flush_last_seen(state: Arc<HubState>) {
    let seen: Vec<(String, u64)> = {
        let h = state.health.lock().unwrap_or_else(|p| p.into_inner());
        state
            .sessions
            .names()
            .into_iter()
            .filter_map(|n| h.last_heartbeat(&n).map(|t| (n, t)))
            .collect()
    };
    if seen.is_empty() {
        return;
    }
    let r = state
        .committer
        .write(move |tx| {
            for (name, at) in &seen {
                if let Some(mut rec) = tx.get(&CLUSTERS, name)? {
                    rec.last_seen_ms = Some(*at);
                    tx.put(&CLUSTERS, name, &rec)?;
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "could not persist last-seen times");
    }
}

/// Writes queued audit events in batches: one fsync for many events.
async fn audit_writer(store: Arc<Store>, mut rx: mpsc::Receiver<AuditEvent>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let events = std::mem::take(&mut batch);
        let store = store.clone();
        let r = tokio::task::spawn_blocking(move || {
            store.write(|tx| {
                for ev in &events {
                    tx.append(&AUDIT, ev)?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::error!("could not write audit events");
        }
    }
}
