//! Assembles a running hub: store, registry, health, QUIC listener, admin API, background tick.

use crate::fleet::health::HealthTracker;
use crate::fleet::sessions::Sessions;
use crate::identity::pki::CertificateAuthority;
use crate::identity::registry::Registry;
use crate::metrics::Metrics;
use crate::util::now_ms;
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_protocol::{close_code, ALPN_JOIN, ALPN_SESSION};
use tether_store::hub::{AuditEvent, ClusterState, ADMINS, AUDIT, CLUSTERS, REVOKED};
use tether_store::{Store, StoreError};
use tether_transport::certs;
use tether_transport::tls::{HubClientVerifier, RevocationList};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::state::{persist_health, store_transitions, HubConfig, HubState};

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

/// redb reuses freed pages but never shrinks its file: without this a hub whose large works
/// were deleted keeps their size on disk for good. Start is the one moment nothing else uses
/// the database; a failure costs only the space.
fn compact_at_start(store: &Store) {
    let started = std::time::Instant::now();
    match store.compact() {
        Ok((before, after)) if after < before => tracing::info!(
            before_bytes = before,
            after_bytes = after,
            took = ?started.elapsed(),
            "compacted the hub database"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not compact the hub database; serving anyway"),
    }
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
    let store = Arc::new(cfg.store.open(&dir, false).with_context(|| {
        format!(
            "opening the hub database {} (recovery: docs/recovery.md)",
            cfg.store.describe(&dir)
        )
    })?);
    if store.is_embedded() {
        compact_at_start(&store);
    }
    // On a shared database this process is one replica among several: it serves at once,
    // names the changes it writes (so that it can skip them in the feed), and says it is alive
    // before anything else, so that no leader takes its clusters for orphans.
    let replica = if store.is_embedded() {
        None
    } else {
        let replica = Arc::new(crate::fleet::replica::Replica::new(crate::lease::holder(
            &dir,
        )));
        store.set_origin(&replica.name)?;
        let (s, name, ttl) = (store.clone(), replica.name.clone(), cfg.lease_ttl);
        tokio::task::spawn_blocking(move || s.beat_replica(&name, ttl))
            .await?
            .context("announcing this replica in the database")?;
        tracing::info!(replica = %replica.name, "serving as one replica of a shared database");
        Some(replica)
    };
    if let Some(n) =
        crate::ingest::status::retire_legacy_log(&store).context("retiring the status log")?
    {
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
            cfg.store.describe(&dir)
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
    metrics.set_certificate_expiry(&crate::identity::pki::check_certificates(
        &dir, &admins, now,
    )?);
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
    let committer = crate::ingest::committer::Committer::start(store.clone());
    let state = Arc::new(HubState {
        registry: Registry::new(store.clone(), ca, revoked, cfg.cert_validity),
        store,
        health: Mutex::new(health),
        sessions: Sessions::new(),
        metrics,
        admins: crate::identity::admins::Admins::new(admins),
        join_slots: Arc::new(Semaphore::new(cfg.max_join_connections)),
        join_sources: Default::default(),
        works,
        decisions: Default::default(),
        singleton_in_flight: Default::default(),
        changes: Default::default(),
        store_unavailable: Mutex::new(Default::default()),
        git: crate::works::git::GitCache::new(dir.git_cache()),
        source_checks: Mutex::new(BTreeMap::new()),
        patches: Default::default(),
        filer: Default::default(),
        replica: replica.clone(),
        started_ms: now,
        committer,
        status_budget: crate::limits::budget::Budgets::new(crate::limits::budget::STATUS_ENTRIES),
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
        tasks.spawn(crate::net::server::accept_loop(
            endpoint.clone(),
            state.clone(),
        )),
        "agent accept loop",
    );
    name(
        tasks.spawn(crate::admin::server::serve(
            admin_listener,
            Arc::new(admin_tls),
            state.clone(),
        )),
        "admin API",
    );
    name(tasks.spawn(tick_loop(state.clone())), "health tick");
    // Sessions accepted before the controller's first pass plan nothing: a work without a
    // decision is left as the agent holds it.
    match &replica {
        None => {
            name(
                tasks.spawn(crate::controller::run(state.clone())),
                "controller",
            );
            name(
                tasks.spawn(crate::controller::git_sync::run(state.clone())),
                "git source sync",
            );
        }
        Some(r) => {
            name(
                tasks.spawn(crate::replicas::leader::run(state.clone(), r.clone())),
                "leadership (lease, controller, git sync)",
            );
            name(
                tasks.spawn(crate::replicas::feed::run(state.clone(), r.clone())),
                "change feed",
            );
            name(
                tasks.spawn(crate::replicas::leader::liveness(state.clone(), r.clone())),
                "replica liveness",
            );
        }
    }
    name(
        tasks.spawn(audit_writer(state.store.clone(), audit_rx)),
        "audit writer",
    );
    name(
        tasks.spawn(persist_health(state.clone())),
        "health persister",
    );
    name(
        tasks.spawn(crate::ingest::history::run(
            state.committer.clone(),
            state.filer.clone(),
        )),
        "status history filer",
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
            let replica = self.state.replica.clone();
            if let Err(e) = self
                .state
                .store
                .write(|tx| store_transitions(tx, &pending, replica.as_deref()))
            {
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
        // Hand over now rather than when the lease expires: another replica decides at once,
        // and the leader adopts this one's clusters without waiting for its beat to expire.
        if let Some(replica) = self.state.replica.clone() {
            let lease = replica
                .lease
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let store = self.state.store.clone();
            let released = tokio::task::spawn_blocking(move || {
                if let Some(lease) = lease {
                    store.release_lease(&lease)?;
                }
                store.drop_replica(&replica.name)
            })
            .await;
            if let Ok(Err(e)) = released {
                tracing::warn!(error = %e, "could not hand over the lease or this replica's liveness; other replicas notice when they expire");
            }
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
    // One statement reads every record on PostgreSQL, instead of one each.
    let reads = state.reads_for(|| {
        seen.iter()
            .map(|(name, _)| (CLUSTERS.name(), name.clone()))
            .collect()
    });
    let r = state
        .committer
        .write_reading(reads, move |tx| {
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
