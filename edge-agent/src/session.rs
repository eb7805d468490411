//! The long-lived authenticated session: dial out, heartbeat, renew the certificate in place,
//! reconnect with backoff and jitter, and stop for good when the hub cuts this cluster off.

use crate::dial::{classify_connection_error, connect, hello, transport_error};
use crate::error::store_retryable;
use crate::executor::Executor;
use crate::hubs::{HubTargets, Target};
use crate::reconcile::{Reconciler, Signals};
use crate::supervise::{panic_text, supervise, HEALTHY_RUN};
use crate::{
    blocking, desired, facts, open_store_waiting, outbox, renewal, status_file, AgentError,
    Shutdown,
};
use quinn::Connection;
use rand::Rng;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_protocol::{
    close_code, Condition, ErrorCode, Facts, Heartbeat, Message, RenewRequest, ALPN_SESSION,
};
use tether_store::agent::{Identity, CURRENT, IDENTITY};
use tether_store::{Store, StoreError};
use tether_transport::backoff::Backoff;
use tether_transport::beat;
use tether_transport::framed::{read_frame, request, send_last};
use tether_transport::tls::{session_client_config, SwappableClientCert};
use tether_transport::{certs, Limits, TransportError};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub data_dir: PathBuf,
    /// Hub addresses to use instead of the ones stored at join time.
    pub hubs_override: Vec<String>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How often the desired state is enforced even when nothing was delivered (drift repair).
    pub reconcile_interval: Duration,
    /// Share of managed objects the agent deletes within its window before it holds a
    /// removal or prune for confirmation (see `breaker`).
    pub deletion_breaker: crate::breaker::Breaker,
    /// Refuse the hub's `ConfirmRemoval`: held deletions are let through on the cluster only.
    pub local_confirmations_only: bool,
    /// How long a request or heartbeat may go unanswered before the session counts as lost
    /// (and the agent moves to the next hub address).
    pub hub_timeout: Duration,
}

impl RunOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            hubs_override: Vec::new(),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            reconcile_interval: Duration::from_secs(30),
            deletion_breaker: crate::breaker::Breaker::default(),
            local_confirmations_only: false,
            hub_timeout: Limits::default().read_timeout,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// From now until a wall-clock deadline (zero if it passed).
fn until_ms(deadline_ms: u64) -> Duration {
    Duration::from_millis(deadline_ms.saturating_sub(now_ms()))
}

pub(crate) fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The identity in use, with its renewal deadline.
struct Current {
    identity: Identity,
    serial_hex: String,
    not_after_ms: u64,
    renew_at_ms: u64,
}

impl Current {
    fn new(identity: Identity) -> Result<Self, AgentError> {
        let info = certs::inspect_pem(&identity.cert_pem)
            .map_err(|e| AgentError::Protocol(format!("stored certificate: {e}")))?;
        let fraction = rand::rng().random_range(renewal::FRACTION_RANGE);
        let not_before_ms = (info.not_before.max(0) as u64) * 1000;
        let not_after_ms = (info.not_after.max(0) as u64) * 1000;
        Ok(Self {
            renew_at_ms: renewal::due_ms(not_before_ms, not_after_ms, fraction),
            not_after_ms,
            serial_hex: info.serial_hex,
            identity,
        })
    }
}

struct Agent {
    store: Arc<Store>,
    signals: Signals,
    cert: Arc<SwappableClientCert>,
    quic: quinn::ClientConfig,
    current: Current,
    limits: Limits,
    /// Renewals failed in a row (reset by a success): the retry backs off on it.
    renew_failures: u32,
    status: StatusReporter,
}

/// Writes `status.json` off the runtime, newest report last even if two writes overlap.
struct StatusReporter {
    data_dir: PathBuf,
    seq: u64,
    written: Arc<std::sync::Mutex<u64>>,
}

impl Agent {
    fn report(&mut self, session: status_file::Session) {
        self.status.seq += 1;
        let seq = self.status.seq;
        let status = status_file::AgentStatus {
            pid: std::process::id(),
            cluster: self.current.identity.name.clone(),
            hubs: self.current.identity.hubs.clone(),
            cert_serial: self.current.serial_hex.clone(),
            cert_not_after_ms: self.current.not_after_ms,
            session,
            updated_at_ms: now_ms(),
        };
        let (dir, written) = (self.status.data_dir.clone(), self.status.written.clone());
        tokio::task::spawn_blocking(move || {
            let mut last = written.lock().unwrap_or_else(|p| p.into_inner());
            if *last > seq {
                return;
            }
            *last = seq;
            if let Err(e) = status_file::write(&dir, &status) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot write the status file for `tether-agent status`");
            }
        });
    }
}

enum End {
    Shutdown,
    Lost(AgentError),
    /// A session task (deliveries, status, datagrams) panicked: reconnect, on a backoff that a
    /// fresh session does not reset, so a panic on every session cannot become a tight loop.
    TaskPanicked(String),
}

/// The session tasks' name in supervision logs and heartbeat conditions.
const SESSION_TASK: &str = "session";

/// Enforce the stored desired state and keep a session with the hub until shutdown or until the
/// hub cuts this cluster off. The reconciler starts first and never waits for the network.
pub async fn run<E: Executor>(
    opts: &RunOptions,
    executor: Arc<E>,
    mut shutdown: Shutdown,
) -> Result<(), AgentError> {
    let store = match open_store_waiting(&opts.data_dir, opts.backoff_base, shutdown.clone()).await
    {
        Ok(s) => Arc::new(s),
        Err(AgentError::Interrupted) => return Ok(()),
        Err(e) => return Err(e),
    };
    // The file never shrinks by itself: give back what removed works used, before anything
    // else holds a transaction. A failure (a full disk) costs only the space.
    let s = store.clone();
    match tokio::task::spawn_blocking(move || s.compact()).await {
        Ok(Ok((before, after))) if after < before => {
            tracing::info!(
                before_bytes = before,
                after_bytes = after,
                "compacted the agent database"
            )
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "could not compact the agent database"),
        _ => {}
    }
    let identity = store
        .read(|tx| tx.get(&IDENTITY, CURRENT))?
        .ok_or(AgentError::NotJoined)?;
    let hubs = if opts.hubs_override.is_empty() {
        identity.hubs.clone()
    } else {
        opts.hubs_override.clone()
    };
    let mut targets = HubTargets::new(hubs, &identity.name)?;
    let cert = Arc::new(SwappableClientCert::new(
        &identity.cert_pem,
        &identity.key_pem,
    )?);
    let tls = session_client_config(&identity.ca_pem, cert.clone(), ALPN_SESSION)?;
    let quic = tether_transport::quic::client_config(tls)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    // Before the reconciler starts: an early return must not leave it running with the store.
    let current = Current::new(identity)?;
    let signals = Signals {
        local_confirmations_only: opts.local_confirmations_only,
        ..Signals::default()
    };
    tracing::info!(executor = %executor.describe(), interval = ?opts.reconcile_interval, "reconciler starting");
    // Its own stop signal, not the caller's: `run` also ends on a fatal error, and must then
    // wait until the reconciler let go of the store (a caller may open it right away).
    let (stop_reconciler, reconciler_stop) = Shutdown::new();
    let reconciler = {
        let (store, signals, interval, stop, breaker) = (
            store.clone(),
            signals.clone(),
            opts.reconcile_interval,
            reconciler_stop.clone(),
            opts.deletion_breaker.clone(),
        );
        tokio::spawn(supervise(
            crate::reconcile::TASK,
            signals.tasks.clone(),
            reconciler_stop,
            move || {
                Reconciler::new(store.clone(), executor.clone(), signals.clone(), interval)
                    .with_breaker(breaker.clone())
                    .run(stop.clone())
            },
        ))
    };
    // Should `run` itself be dropped (its caller cancelled), the reconciler goes with it.
    let _reconciler_guard = crate::supervise::AbortOnDrop(reconciler.abort_handle());
    let mut agent = Agent {
        store,
        signals,
        cert,
        quic,
        current,
        limits: Limits {
            read_timeout: opts.hub_timeout,
            ..Limits::default()
        },
        renew_failures: 0,
        status: StatusReporter {
            data_dir: opts.data_dir.clone(),
            seq: 0,
            written: Arc::default(),
        },
    };
    let mut backoff = Backoff::new(opts.backoff_base, opts.backoff_cap);
    tracing::info!(cluster = %agent.current.identity.name, cert_expires = %rfc3339(agent.current.not_after_ms), "agent starting");
    let mut tasks = tokio::task::JoinSet::new();
    let result = sessions(
        &mut agent,
        &mut targets,
        &mut backoff,
        &mut shutdown,
        &mut tasks,
    )
    .await;
    // Release the store before returning: a caller may open it right away (tests, `leave`).
    tasks.shutdown().await;
    let _ = stop_reconciler.send(true);
    let _ = reconciler.await;
    // A store read or write already on the blocking pool cannot be aborted and holds a
    // clone of the handle: wait for it, so the database lock is free when `run` returns.
    let store = Arc::downgrade(&agent.store);
    drop(agent);
    let released_by = tokio::time::Instant::now() + STORE_RELEASE_WAIT;
    while store.strong_count() > 0 && tokio::time::Instant::now() < released_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if store.strong_count() > 0 {
        tracing::warn!(
            "a store operation still runs after shutdown; the database stays locked until it ends"
        );
    }
    result
}

/// Longest `run` waits at its end for store operations in flight on the blocking pool.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(10);

async fn sessions(
    agent: &mut Agent,
    targets: &mut HubTargets,
    backoff: &mut Backoff,
    shutdown: &mut Shutdown,
    tasks: &mut tokio::task::JoinSet<AgentError>,
) -> Result<(), AgentError> {
    let mut panic_backoff = Backoff::new(
        crate::supervise::RESTART_BASE,
        crate::supervise::RESTART_CAP,
    );
    loop {
        if now_ms() >= agent.current.not_after_ms {
            return Err(AgentError::CertificateExpired(rfc3339(
                agent.current.not_after_ms,
            )));
        }
        let target = targets.next().await;
        let addr = target
            .as_ref()
            .map_or_else(|_| "(no address resolved)".to_string(), |t| t.to_string());
        let started = std::time::Instant::now();
        let outcome = match target {
            Ok(t) => session(agent, &t, backoff, shutdown, tasks).await,
            Err(e) => Err(e),
        };
        tasks.shutdown().await;
        if started.elapsed() >= HEALTHY_RUN {
            panic_backoff.reset();
            agent.signals.tasks.healthy(SESSION_TASK);
        }
        match outcome {
            Ok(End::Shutdown) => return Ok(()),
            Ok(End::TaskPanicked(why)) => {
                let delay = backoff
                    .next_delay(rand::rng().random())
                    .max(panic_backoff.next_delay(rand::rng().random()));
                tracing::error!(hub = %addr, reason = %why, "a session task failed; reconnecting in {delay:?}");
                agent.signals.tasks.failed(SESSION_TASK, why);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
            }
            Ok(End::Lost(e)) | Err(e) if !e.is_fatal() => {
                agent.report(status_file::Session::Disconnected {
                    since_ms: now_ms(),
                    last_error: e.to_string(),
                });
                let delay = backoff.next_delay(rand::rng().random());
                tracing::warn!(hub = %addr, error = %e, "no session with the hub; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
            }
            Ok(End::Lost(e)) | Err(e) => {
                agent.report(status_file::Session::Disconnected {
                    since_ms: now_ms(),
                    last_error: format!("stopped: {e}"),
                });
                tracing::error!(error = %e, "stopping");
                return Err(e);
            }
        }
    }
}

async fn session(
    agent: &mut Agent,
    target: &Target,
    backoff: &mut Backoff,
    shutdown: &mut Shutdown,
    tasks: &mut tokio::task::JoinSet<AgentError>,
) -> Result<End, AgentError> {
    let addr = target.to_string();
    let addr = addr.as_str();
    let (_endpoint, conn) = tokio::select! {
        r = connect(target, agent.quic.clone()) => r?,
        _ = shutdown.wait() => return Ok(End::Shutdown),
    };
    let hello_sent = std::time::Instant::now();
    let ack = hello(&conn, agent.limits).await?;
    // The hub acknowledged a message sent at `hello_sent` (and records it as a heartbeat).
    agent.signals.contact(hello_sent);
    note_hub_time(&agent.signals, ack.hub_time_ms);
    backoff.reset();
    let name = agent.current.identity.name.clone();
    tracing::info!(cluster = %name, hub = %addr, hub_version = %ack.hub_version, "session established");
    agent.report(status_file::Session::Connected {
        hub: addr.to_string(),
        since_ms: now_ms(),
    });
    send_inventory(agent, &conn).await?;
    // A store error counts as holding one: a confirmation costs a packet, a missed one could
    // make a singleton fence while its session is fine.
    let store = agent.store.clone();
    let fencing = blocking(move || store.read(desired::holds_fencing_work)).await;
    agent
        .signals
        .holds_fencing
        .store(!matches!(fencing, Ok(Ok(false))), Ordering::Relaxed);
    // Answers the hub's nudges and collects its heartbeat confirmations. It never ends by
    // itself: the connection's end is classified (fatal or not) by the `conn.closed()` branch.
    let (acks, acked) = beat::ack_channel();
    let datagrams = conn.clone();
    tasks.spawn(async move {
        beat::agent_datagrams(datagrams, acks).await;
        std::future::pending::<AgentError>().await
    });
    let mut confirmations = beat::Confirmations::new(acked);
    let mut datagram_beats = ack.datagram_heartbeats;
    // Facts and conditions the hub acknowledged on a stream heartbeat of this session: while
    // they hold, a datagram beat says the rest. A datagram carries neither, so a change of
    // either (the store failing or recovering) must go on a stream.
    let mut reported: Option<(Facts, Vec<Condition>)> = None;
    tasks.spawn(serve_deliveries(
        conn.clone(),
        agent.store.clone(),
        agent.signals.clone(),
        agent.limits,
    ));
    tasks.spawn(pump_status(
        conn.clone(),
        agent.store.clone(),
        agent.signals.clone(),
        agent.limits,
    ));
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(ack.heartbeat_interval_ms.max(100)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One timer for the whole session, reset when the renewal deadline moves: a timer made
    // anew on every turn of the loop would lose every race against a heartbeat tick that is
    // already due, and renewal would starve whenever a heartbeat takes longer than its period.
    let renewal = tokio::time::sleep(until_ms(agent.current.renew_at_ms));
    tokio::pin!(renewal);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if agent.store.failure().is_some() {
                    // Nothing else may touch a failing store for a while (no deliveries, a
                    // long reconcile interval): this read is what reopens it once it can be.
                    let _ = agent.store.read(outbox::depth);
                }
                if agent.store.failure().is_none() && agent.signals.refused_for_store.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the agent database works again; reconnecting so that the hub sends the deliveries it refused");
                    conn.close(close_code::NORMAL.into(), b"store recovered; reconnecting to resync");
                    return Ok(End::Lost(AgentError::Io("reconnecting after the store recovered".into())));
                }
                let report = (current_facts(&agent.signals), conditions(&agent.store, &agent.signals));
                // Contact counts from when the acknowledged heartbeat was *sent*: the hub saw it
                // no earlier, so the agent's fence deadline never trails the hub's view.
                let sent = std::time::Instant::now();
                if !datagram_beats || reported.as_ref() != Some(&report) {
                    let depth = agent.store.read(outbox::depth).unwrap_or(0);
                    match send_heartbeat(&conn, &name, depth, report.clone(), agent.limits).await {
                        Ok(hub_time_ms) => note_hub_time(&agent.signals, hub_time_ms),
                        Err(e) => return Ok(End::Lost(e)),
                    }
                    agent.signals.contact(sent);
                    reported = Some(report);
                    continue;
                }
                let confirm = agent.signals.holds_fencing.load(Ordering::Relaxed);
                match beat::send(&conn, confirm.then_some(&mut confirmations), agent.limits.read_timeout).await {
                    Ok(Some(confirmed)) => agent.signals.contact(confirmed),
                    Ok(None) => {}
                    Err(beat::BeatError::Unsupported) => {
                        tracing::warn!("the hub offered datagram heartbeats but refuses datagrams; using stream heartbeats");
                        datagram_beats = false;
                    }
                    Err(e) => {
                        // A beat can be what notices a deny or detach first: the close says why,
                        // and a denied agent must stop, not reconnect into a refused handshake.
                        let why = conn
                            .close_reason()
                            .as_ref()
                            .and_then(classify_connection_error);
                        return Ok(End::Lost(
                            why.unwrap_or_else(|| AgentError::Io(format!("heartbeat: {e}"))),
                        ));
                    }
                }
            }
            _ = agent.signals.fenced.notified() => {
                conn.close(close_code::NORMAL.into(), b"singleton fenced; reconnecting to report it");
                return Ok(End::Lost(AgentError::Io("reconnecting after fencing a singleton".into())));
            }
            Some(ended) = tasks.join_next() => {
                let e = match ended {
                    Ok(e) => e,
                    Err(join) => {
                        let why = if join.is_panic() {
                            format!("a session task panicked: {}", panic_text(&*join.into_panic()))
                        } else {
                            format!("a session task was cancelled: {join}")
                        };
                        conn.close(close_code::PROTOCOL_ERROR.into(), b"agent task failed");
                        return Ok(End::TaskPanicked(why));
                    }
                };
                if e.is_fatal() {
                    return Err(e);
                }
                conn.close(close_code::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                return Ok(End::Lost(e));
            }
            _ = &mut renewal => {
                match renew(agent, &conn).await {
                    Ok(()) => agent.renew_failures = 0,
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => {
                        let left = agent.current.not_after_ms.saturating_sub(now_ms());
                        let unit: f64 = rand::rng().random();
                        let wait = renewal::retry_in(agent.renew_failures, left, unit);
                        agent.renew_failures = agent.renew_failures.saturating_add(1);
                        agent.current.renew_at_ms = now_ms() + wait.as_millis() as u64;
                        tracing::warn!(error = %e, failures = agent.renew_failures, "certificate renewal failed; retrying in {wait:?}");
                    }
                }
                renewal.as_mut().reset(tokio::time::Instant::now() + until_ms(agent.current.renew_at_ms));
            }
            reason = conn.closed() => {
                return match classify_connection_error(&reason) {
                    Some(fatal) => Err(fatal),
                    None => Ok(End::Lost(AgentError::Io(format!("session lost: {reason}")))),
                };
            }
            _ = shutdown.wait() => {
                conn.close(close_code::NORMAL.into(), b"agent shutting down");
                return Ok(End::Shutdown);
            }
        }
    }
}

/// The agent's own conditions, for every stream heartbeat: the hub stores them with the
/// cluster, where `describe` and the metrics show them.
pub fn conditions(store: &Store, signals: &Signals) -> Vec<Condition> {
    let failing = signals.tasks.failing();
    let mut out = vec![if failing.is_empty() {
        Condition {
            kind: "AgentReady".into(),
            status: "True".into(),
            reason: "SessionUp".into(),
            message: String::new(),
        }
    } else {
        Condition {
            kind: "AgentReady".into(),
            status: "False".into(),
            reason: "TaskFailed".into(),
            message: failing
                .iter()
                .map(|(task, why)| format!("{task}: {why}; restarted"))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }];
    if let Some(offset) = *signals
        .clock_offset_ms
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    {
        if offset.unsigned_abs() > CLOCK_SKEW_REPORTED.as_millis() as u64 {
            out.push(Condition {
                kind: "ClockSkew".into(),
                status: "True".into(),
                reason: "ClockOff".into(),
                message: format!(
                    "this host's clock is about {}s {} the hub's; certificates tolerate {}s",
                    // Whole tens of seconds: jitter must not change the condition each beat.
                    offset.unsigned_abs() / 10_000 * 10,
                    if offset < 0 { "behind" } else { "ahead of" },
                    crate::clock::MAX_CLOCK_SKEW.as_secs()
                ),
            });
        }
    }
    let held = signals
        .held_deletions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !held.is_empty() {
        out.push(Condition {
            kind: crate::reconcile::DELETION_BREAKER.into(),
            status: "True".into(),
            reason: "Held".into(),
            message: held
                .iter()
                .map(|(work, why)| format!("work {work}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    drop(held);
    if let Some(f) = store.failure() {
        out.push(Condition {
            kind: STORE_CONDITION.into(),
            status: "True".into(),
            reason: "StoreFailing".into(),
            message: f.error,
        });
    }
    out
}

/// An offset from the hub's clock above this is reported (`ClockSkew`): well beyond network
/// delay, and a warning long before certificates stop verifying.
pub const CLOCK_SKEW_REPORTED: std::time::Duration = std::time::Duration::from_secs(30);

/// Record this host's clock offset from the hub's (`hub_time_ms` 0: an older hub, unknown).
pub fn note_hub_time(signals: &Signals, hub_time_ms: u64) {
    if hub_time_ms == 0 {
        return;
    }
    let offset = now_ms() as i64 - hub_time_ms as i64;
    *signals
        .clock_offset_ms
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(offset);
}

/// Condition type present (status True) while the agent's database fails; the hub counts it.
pub const STORE_CONDITION: &str = tether_protocol::STORE_UNAVAILABLE;

/// Host facts, with the cluster's as the executor last read them.
fn current_facts(signals: &Signals) -> Facts {
    let (kubernetes_version, node_count) = signals
        .cluster_facts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut facts = facts::collect();
    facts.kubernetes_version = kubernetes_version;
    facts.node_count = node_count;
    facts
}

async fn send_heartbeat(
    conn: &Connection,
    name: &str,
    outbox_depth: u64,
    (facts, conditions): (Facts, Vec<Condition>),
    limits: Limits,
) -> Result<u64, AgentError> {
    let hb = Message::Heartbeat(Heartbeat {
        facts,
        conditions,
        sent_at_ms: now_ms(),
        cluster: Some(name.to_string()),
        outbox_depth,
    });
    match request(conn, &hb, limits).await {
        Ok(Message::HeartbeatAck(ack)) => Ok(ack.hub_time_ms),
        Ok(other) => Err(AgentError::Protocol(format!(
            "expected HeartbeatAck, got {}",
            other.kind()
        ))),
        Err(e) => Err(transport_error(conn, e)),
    }
}

/// Renew over the live session with a fresh key; persist, then swap, so the running session is
/// untouched and the next handshake uses the new certificate.
async fn renew(agent: &mut Agent, conn: &Connection) -> Result<(), AgentError> {
    let (key_pem, csr_pem) = crate::join::key_and_csr(&agent.current.identity.name)?;
    let cert_pem = match request(
        conn,
        &Message::RenewRequest(RenewRequest { csr_pem }),
        agent.limits,
    )
    .await
    {
        Ok(Message::RenewResponse(r)) => r.cert_pem,
        Ok(other) => {
            return Err(AgentError::Protocol(format!(
                "expected RenewResponse, got {}",
                other.kind()
            )))
        }
        Err(e) => return Err(transport_error(conn, e)),
    };
    crate::clock::check_issued(
        "renewed",
        &agent.current.identity.name,
        &agent.current.identity.ca_pem,
        &cert_pem,
        &key_pem,
        crate::clock::now_s(),
    )?;
    let info = certs::inspect_pem(&cert_pem)
        .map_err(|e| AgentError::Protocol(format!("renewed certificate: {e}")))?;
    let mut identity = agent.current.identity.clone();
    identity.key_pem = key_pem;
    identity.cert_pem = cert_pem;
    agent
        .store
        .write(|tx| tx.put(&IDENTITY, CURRENT, &identity))?;
    agent.cert.swap(&identity.cert_pem, &identity.key_pem)?;
    agent.current = Current::new(identity)?;
    tracing::info!(serial = %info.serial_hex, valid_until = %rfc3339(agent.current.not_after_ms), next_renewal = %rfc3339(agent.current.renew_at_ms), "certificate renewed");
    Ok(())
}

/// Tell the hub what we hold so it sends only the difference.
async fn send_inventory(agent: &Agent, conn: &Connection) -> Result<(), AgentError> {
    let store = agent.store.clone();
    let inventory = blocking(move || store.read(desired::inventory)).await??;
    let held = inventory.works.len();
    match request(conn, &Message::Inventory(inventory), agent.limits).await {
        Ok(Message::InventoryAck(ack)) => {
            tracing::info!(
                held,
                pending_changes = ack.pending_changes,
                "inventory sent"
            );
            Ok(())
        }
        Ok(other) => Err(AgentError::Protocol(format!(
            "expected InventoryAck, got {}",
            other.kind()
        ))),
        Err(e) => Err(transport_error(conn, e)),
    }
}

/// Accept work updates and removals the hub pushes; acknowledge each after committing it.
async fn serve_deliveries(
    conn: Connection,
    store: Arc<Store>,
    signals: Signals,
    limits: Limits,
) -> AgentError {
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                return classify_connection_error(&e)
                    .unwrap_or_else(|| AgentError::Io(format!("session lost: {e}")))
            }
        };
        let msg = match read_frame(&mut recv, limits).await {
            Ok(m) => m,
            Err(e) => return transport_error(&conn, e),
        };
        let kind = msg.kind();
        let store = store.clone();
        let outcome = match msg {
            Message::WorkUpdate(u) => {
                tracing::debug!(work = %u.name, generation = u.generation, full = u.bundle.is_some(), "work update");
                if u.fence_after_ms.is_some() {
                    // Before it is stored: from the next heartbeat on, contact is confirmed.
                    signals.holds_fencing.store(true, Ordering::Relaxed);
                }
                let since_contact = signals.since_contact(std::time::Instant::now());
                blocking(move || desired::accept_update(&store, u, since_contact)).await
            }
            Message::WorkRemove(r) => {
                tracing::debug!(work = %r.name, orphan = r.orphan, "work removal");
                blocking(move || desired::accept_removal(&store, r)).await
            }
            Message::ConfirmRemoval(c) => {
                let reply = confirm_removal(&store, &signals, c).await;
                let _ = send_last(&mut send, &reply, limits).await;
                continue;
            }
            other => {
                let reply = Message::error(
                    ErrorCode::UnexpectedMessage,
                    format!("an agent does not accept {} from the hub", other.kind()),
                );
                let _ = send_last(&mut send, &reply, limits).await;
                continue;
            }
        };
        let reply = match outcome {
            Ok(Ok(ack)) => {
                signals.desired_changed.notify_one();
                if ack.held.as_ref().is_some_and(|h| h.fenced) {
                    tracing::warn!(work = %ack.name, "a singleton arrived after contact with the hub had lapsed; stored fenced, reconnecting to report it");
                    signals.fenced.notify_one();
                }
                Message::WorkAck(ack)
            }
            Ok(Err(e)) => {
                if matches!(e, desired::DeliveryError::Agent(AgentError::Store(_))) {
                    signals.refused_for_store.store(true, Ordering::Relaxed);
                }
                tracing::warn!(error = %e, code = ?e.code(), "refused a {kind} from the hub");
                e.reply()
            }
            Err(e) => return e,
        };
        let _ = send_last(&mut send, &reply, limits).await;
    }
}

/// A store error in a session task: wait it out if it may pass (the store reopens itself),
/// otherwise end the session with it.
async fn store_trouble(e: StoreError, backoff: &mut Backoff, what: &str) -> Option<AgentError> {
    if !(store_retryable(&e) || matches!(e, StoreError::Damaged { .. })) {
        return Some(e.into());
    }
    let delay = backoff.next_delay(rand::rng().random());
    tracing::warn!(error = %e, "{what}: the agent database fails; retrying in {delay:?}");
    tokio::time::sleep(delay).await;
    None
}

/// Send outbox batches while connected; forget entries only once the hub acknowledged them.
async fn pump_status(
    conn: Connection,
    store: Arc<Store>,
    signals: Signals,
    limits: Limits,
) -> AgentError {
    let mut resend = outbox::Resend::default();
    let mut store_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let reader = store.clone();
        let batch = match blocking(move || reader.read(outbox::next_batch)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => match store_trouble(e, &mut store_backoff, "reading the outbox").await {
                Some(fatal) => return fatal,
                None => continue,
            },
            Err(e) => return e,
        };
        let Some(batch) = batch else {
            // Nothing to send: wait for news (or re-check now and then, in case a wake-up raced).
            tokio::select! {
                _ = signals.outbox_changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        };
        let (from, to, n) = (batch.from_seq, batch.to_seq, batch.entries.len());
        let through = match request(&conn, &Message::StatusBatch(batch), limits).await {
            Ok(Message::StatusAck(ack)) => ack.through_seq,
            Ok(other) => {
                return AgentError::Protocol(format!("expected StatusAck, got {}", other.kind()))
            }
            Err(TransportError::Peer(e))
                if e.code == ErrorCode::Busy && conn.close_reason().is_none() =>
            {
                let unit: f64 = rand::rng().random();
                let delay = resend.busy(&e.message, unit);
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(e) => return transport_error(&conn, e),
        };
        tracing::debug!(from, to, entries = n, through, "status batch acknowledged");
        let acked = loop {
            let writer = store.clone();
            match blocking(move || writer.write(|tx| outbox::acknowledge(tx, through))).await {
                Ok(Ok(acked)) => break acked,
                Ok(Err(e)) => {
                    if let Some(fatal) =
                        store_trouble(e, &mut store_backoff, "recording a status acknowledgement")
                            .await
                    {
                        return fatal;
                    }
                }
                Err(e) => return e,
            }
        };
        store_backoff.reset();
        let unit: f64 = rand::rng().random();
        if let Some(delay) = resend.after_ack(to, through, acked, unit) {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The hub relays an operator's confirmation of a held deletion: recorded as the local
/// `confirm-removal` would record it, unless this agent's owner keeps that decision local.
async fn confirm_removal(
    store: &Arc<Store>,
    signals: &Signals,
    c: tether_protocol::ConfirmRemoval,
) -> Message {
    if signals.local_confirmations_only {
        tracing::warn!(work = %c.work, actor = %c.actor, "refused a removal confirmation from the hub: this agent takes them on the cluster only");
        return Message::error(
            ErrorCode::Unauthorized,
            format!(
                "this agent takes removal confirmations on the cluster only (--local-confirmations-only); run `tether-agent confirm-removal --data-dir DIR {}` there",
                c.work
            ),
        );
    }
    if let Err(e) = tether_protocol::names::validate_work_name(&c.work) {
        return Message::error(ErrorCode::BadRequest, format!("work name: {e}"));
    }
    let was_held = signals
        .held_deletions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&c.work);
    let dir = store
        .path()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let work = c.work.clone();
    match blocking(move || {
        crate::breaker::confirm(&dir, &work).map_err(|e| AgentError::Io(e.to_string()))
    })
    .await
    {
        Ok(Ok(_)) => {
            tracing::warn!(work = %c.work, actor = %c.actor, was_held, "removal confirmed through the hub; the breaker lets it through on the next pass");
            signals.desired_changed.notify_one();
            Message::RemovalConfirmed(tether_protocol::RemovalConfirmed {
                work: c.work,
                was_held,
            })
        }
        Ok(Err(e)) | Err(e) => Message::error(
            ErrorCode::Internal,
            format!("recording the confirmation: {e}"),
        ),
    }
}
