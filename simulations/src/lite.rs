//! Protocol-level agents ("lite agents") for fleet-scale benchmarks.
//!
//! 10k real agents in one process on two cores measure their redb stores and fsyncs, not the
//! hub. A lite agent speaks the same session protocol over the same QUIC + mTLS stack, with a
//! certificate that the hub's own registry issued through a real (auto-approved) join, but keeps
//! its state in memory: `Hello`, `Inventory` of what it holds, heartbeats at the interval the hub
//! asks for, a `WorkAck` for every `WorkUpdate`/`WorkRemove`, and one status per change,
//! numbered and re-sent until the hub acknowledges it (so the hub's exactly-once cursor is
//! exercised, and a gap would show in its metrics). It is a load generator for the hub: nothing
//! is applied, nothing survives the process, and it must never be mistaken for an agent.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_protocol::{
    Condition, Facts, Heartbeat, HeldWork, Hello, Inventory, Message, StatusBatch, StatusEntry,
    WorkAck, WorkPhase, WorkStatus, ALPN_SESSION, PROTOCOL_VERSION,
};
use tether_transport::backoff::Backoff;
use tether_transport::framed::{read_frame, request, send_last};
use tether_transport::{quic, tls, Limits};
use tokio::sync::{watch, Notify};

/// What a lite agent needs to open a session: its name and the hub-issued certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiteIdentity {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Register `n` clusters named `{prefix}{i:06}` with the (stopped) hub whose data directory is
/// `hub_dir`, through its real registry: one auto-approving token, then a join request per
/// cluster with a fresh P-256 key and CSR, signed by the hub CA. Offline, because joining 100k
/// agents over the network would measure the join path, which is not what the session and
/// storm benchmarks are about.
pub fn provision(hub_dir: &Path, prefix: &str, n: usize) -> anyhow::Result<Vec<LiteIdentity>> {
    use tether_hub::parts::{Registry, TokenSpec};
    let data = tether_hub::config::DataDir::new(hub_dir);
    let ca = tether_hub::parts::pki::CertificateAuthority::load(
        &std::fs::read_to_string(data.ca_cert()).context("reading the hub CA")?,
        &std::fs::read_to_string(data.ca_key()).context("reading the hub CA key")?,
    )?;
    let store = Arc::new(tether_store::Store::open(data.database())?);
    let registry = Registry::new(
        store,
        ca,
        Arc::new(tls::RevocationList::new(Vec::<String>::new())),
        Duration::from_secs(30 * 86_400),
    );
    let now = tether_hub::util::now_ms();
    let token = registry.create_token(
        &TokenSpec {
            ttl: Duration::from_secs(3600),
            uses: u32::try_from(n).context("too many agents")?,
            auto_approve: true,
            labels: Default::default(),
            allowed_labels: Vec::new(),
        },
        "bench",
        now,
    )?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}{i:06}");
        let (key_pem, csr_pem) = tether_agent::join::key_and_csr(&name)?;
        let status = registry.submit_join(
            &tether_protocol::JoinRequest {
                token: token.token.clone(),
                name: name.clone(),
                labels: Default::default(),
                facts: facts(&name),
                csr_pem,
                request_secret: format!("{:064x}", i),
            },
            "bench",
            now,
        )?;
        match status {
            tether_protocol::JoinStatus::Approved { cert_pem, .. } => out.push(LiteIdentity {
                name,
                cert_pem,
                key_pem,
            }),
            other => anyhow::bail!("join of {name} was not approved: {other:?}"),
        }
    }
    Ok(out)
}

pub fn save_identities(path: &Path, ids: &[LiteIdentity]) -> anyhow::Result<()> {
    let mut text = String::new();
    for id in ids {
        text.push_str(&serde_json::to_string(id)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn load_identities(path: &Path) -> anyhow::Result<Vec<LiteIdentity>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("bad identity line"))
        .collect()
}

fn facts(name: &str) -> Facts {
    Facts {
        arch: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        cpus: 2,
        memory_bytes: 4 << 30,
        agent_version: "lite".into(),
        hostname: name.into(),
        kubernetes_version: None,
        node_count: None,
    }
}

/// Counters over the whole lite fleet.
#[derive(Debug, Default)]
pub struct LiteStats {
    /// Sessions currently past Hello and Inventory.
    pub up: AtomicUsize,
    pub handshakes: AtomicU64,
    pub heartbeats: AtomicU64,
    pub updates: AtomicU64,
    pub session_failures: AtomicU64,
    pub last_failure: Mutex<Option<String>>,
}

impl LiteStats {
    pub fn last_failure(&self) -> Option<String> {
        LiteAgent::lock(&self.last_failure).clone()
    }
}

/// One lite agent's memory: what it holds and its unacknowledged statuses.
pub struct LiteAgent {
    pub name: String,
    client: quinn::ClientConfig,
    held: Mutex<BTreeMap<String, HeldWork>>,
    outbox: Mutex<Outbox>,
    status_wake: Notify,
    /// Work -> (generation, wall-clock ms when its update arrived).
    pub received: Mutex<BTreeMap<String, (u64, u64)>>,
}

#[derive(Default)]
struct Outbox {
    acked_through: u64,
    next_seq: u64,
    /// Newest status per work; older ones were superseded and fall inside the sent range.
    pending: BTreeMap<String, StatusEntry>,
}

/// Bound per agent: one pending status per work, and this many works.
const MAX_WORKS: usize = 1024;

impl LiteAgent {
    fn new(id: &LiteIdentity, ca_pem: &str) -> anyhow::Result<Self> {
        let cert = Arc::new(tls::SwappableClientCert::new(&id.cert_pem, &id.key_pem)?);
        let client = quic::client_config(tls::session_client_config(ca_pem, cert, ALPN_SESSION)?)?;
        Ok(Self {
            name: id.name.clone(),
            client,
            held: Mutex::new(BTreeMap::new()),
            outbox: Mutex::new(Outbox {
                next_seq: 1,
                ..Default::default()
            }),
            status_wake: Notify::new(),
            received: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, work: &str, generation: u64, hash: &str, phase: WorkPhase) {
        let mut ob = Self::lock(&self.outbox);
        let seq = ob.next_seq;
        ob.next_seq += 1;
        ob.pending.insert(
            work.to_string(),
            StatusEntry {
                seq,
                status: WorkStatus {
                    work: work.to_string(),
                    generation,
                    hash: hash.to_string(),
                    phase,
                    conditions: Vec::new(),
                    resources: Vec::new(),
                    message: String::new(),
                    observed_at_ms: tether_hub::util::now_ms(),
                },
            },
        );
        drop(ob);
        self.status_wake.notify_one();
    }

    fn batch(&self) -> Option<StatusBatch> {
        let ob = Self::lock(&self.outbox);
        let to = ob.next_seq - 1;
        if to <= ob.acked_through {
            return None;
        }
        let mut entries: Vec<StatusEntry> = ob.pending.values().cloned().collect();
        entries.sort_by_key(|e| e.seq);
        Some(StatusBatch {
            from_seq: ob.acked_through + 1,
            to_seq: to,
            entries,
        })
    }

    fn acked(&self, through: u64) {
        let mut ob = Self::lock(&self.outbox);
        if through > ob.acked_through {
            ob.acked_through = through;
            ob.pending.retain(|_, e| e.seq > through);
        }
    }

    fn outbox_depth(&self) -> u64 {
        Self::lock(&self.outbox).pending.len() as u64
    }
}

/// A running lite fleet: one task per agent over a few shared client endpoints.
pub struct LiteFleet {
    pub agents: Vec<Arc<LiteAgent>>,
    pub stats: Arc<LiteStats>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    _endpoints: Vec<quinn::Endpoint>,
}

/// Agents per client endpoint (UDP socket). A real agent has its own; sharing keeps 100k
/// agents under the file-descriptor limit and spreads them over a few endpoint drivers.
pub const AGENTS_PER_ENDPOINT: usize = 500;

impl LiteFleet {
    /// Start one lite agent per identity against `hub`, opening at most `connects_per_s` new
    /// sessions per second at start (0: all at once).
    pub async fn start(
        ids: &[LiteIdentity],
        ca_pem: &str,
        hub: SocketAddr,
        connects_per_s: usize,
    ) -> anyhow::Result<Self> {
        let stats = Arc::new(LiteStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let n_eps = ids.len().div_ceil(AGENTS_PER_ENDPOINT).max(1);
        let endpoints = (0..n_eps)
            .map(|_| quic::client_endpoint(hub))
            .collect::<Result<Vec<_>, _>>()?;
        let mut agents = Vec::with_capacity(ids.len());
        let mut tasks = tokio::task::JoinSet::new();
        let started = tokio::time::Instant::now();
        for (i, id) in ids.iter().enumerate() {
            let agent = Arc::new(LiteAgent::new(id, ca_pem)?);
            agents.push(agent.clone());
            tasks.spawn(run_agent(
                agent,
                endpoints[i % n_eps].clone(),
                hub,
                stats.clone(),
                stop_rx.clone(),
            ));
            if connects_per_s > 0 {
                let due = started + Duration::from_secs_f64((i + 1) as f64 / connects_per_s as f64);
                tokio::time::sleep_until(due).await;
            }
        }
        Ok(Self {
            agents,
            stats,
            stop,
            tasks,
            _endpoints: endpoints,
        })
    }

    /// Whether every agent received generation `g` of `work` and the hub acknowledged every
    /// status it queued (the hub acknowledges only after committing). Reads agent memory only,
    /// so a benchmark can wait on it without loading the hub it measures.
    pub fn all_reported(&self, work: &str, g: u64) -> bool {
        self.agents.iter().all(|a| {
            let got = LiteAgent::lock(&a.received)
                .get(work)
                .is_some_and(|(gen, _)| *gen >= g);
            got && a.outbox_depth() == 0
        })
    }

    pub fn up(&self) -> usize {
        self.stats.up.load(Ordering::Relaxed)
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn run_agent(
    agent: Arc<LiteAgent>,
    endpoint: quinn::Endpoint,
    hub: SocketAddr,
    stats: Arc<LiteStats>,
    mut stop: watch::Receiver<bool>,
) {
    // The real agent's reconnect policy and defaults (jittered exponential backoff, capped).
    let defaults = tether_agent::RunOptions::new(std::path::PathBuf::new());
    let mut backoff = Backoff::new(defaults.backoff_base, defaults.backoff_cap);
    loop {
        let r = tokio::select! {
            r = session(&agent, &endpoint, hub, &stats, &mut backoff) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(e) = r {
            stats.session_failures.fetch_add(1, Ordering::Relaxed);
            *LiteAgent::lock(&stats.last_failure) = Some(format!("{}: {e:#}", agent.name));
        }
        let delay = backoff.next_delay(rand::random());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

struct UpGuard<'a>(&'a AtomicUsize);

impl Drop for UpGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn session(
    agent: &LiteAgent,
    endpoint: &quinn::Endpoint,
    hub: SocketAddr,
    stats: &LiteStats,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let limits = Limits::default();
    let connecting = endpoint.connect_with(agent.client.clone(), hub, "localhost")?;
    let conn = tokio::time::timeout(tether_agent::dial::CONNECT_TIMEOUT, connecting)
        .await
        .context("handshake timed out")??;
    stats.handshakes.fetch_add(1, Ordering::Relaxed);
    let hello = Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "lite".into(),
        patches: false,
        confirmations: false,
    });
    let ack = match request(&conn, &hello, limits).await? {
        Message::HelloAck(a) => a,
        other => anyhow::bail!("expected HelloAck, got {}", other.kind()),
    };
    let held = LiteAgent::lock(&agent.held).clone();
    match request(
        &conn,
        &Message::Inventory(Inventory { works: held }),
        limits,
    )
    .await?
    {
        Message::InventoryAck(_) => {}
        other => anyhow::bail!("expected InventoryAck, got {}", other.kind()),
    }
    backoff.reset();
    stats.up.fetch_add(1, Ordering::Relaxed);
    let _up = UpGuard(&stats.up);
    let beat = Duration::from_millis(ack.heartbeat_interval_ms.max(100));
    let heartbeats = async {
        // As the real agent: facts once on a stream heartbeat, then datagram beats (they never
        // change here) if the hub takes them.
        let mut facts_sent = false;
        loop {
            tokio::time::sleep(beat).await;
            if facts_sent && ack.datagram_heartbeats {
                tether_transport::beat::send(&conn, None, limits.read_timeout).await?;
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let hb = Message::Heartbeat(Heartbeat {
                facts: facts(&agent.name),
                conditions: vec![Condition {
                    kind: "AgentReady".into(),
                    status: "True".into(),
                    reason: "SessionUp".into(),
                    message: String::new(),
                }],
                sent_at_ms: tether_hub::util::now_ms(),
                cluster: Some(agent.name.clone()),
                outbox_depth: agent.outbox_depth(),
            });
            match request(&conn, &hb, limits).await? {
                Message::HeartbeatAck(_) => {
                    stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    facts_sent = true;
                }
                other => anyhow::bail!("expected HeartbeatAck, got {}", other.kind()),
            }
        }
    };
    let statuses = async {
        loop {
            match agent.batch() {
                Some(batch) => match request(&conn, &Message::StatusBatch(batch), limits).await? {
                    Message::StatusAck(a) => agent.acked(a.through_seq),
                    other => anyhow::bail!("expected StatusAck, got {}", other.kind()),
                },
                None => agent.status_wake.notified().await,
            }
        }
    };
    let deliveries = async {
        loop {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let reply = match read_frame(&mut recv, limits).await? {
                Message::WorkUpdate(u) => {
                    stats.updates.fetch_add(1, Ordering::Relaxed);
                    let h = HeldWork {
                        generation: u.generation,
                        hash: u.hash.clone(),
                        fenced: false,
                    };
                    let mut held = LiteAgent::lock(&agent.held);
                    if held.len() >= MAX_WORKS && !held.contains_key(&u.name) {
                        anyhow::bail!("more than {MAX_WORKS} works");
                    }
                    held.insert(u.name.clone(), h.clone());
                    drop(held);
                    LiteAgent::lock(&agent.received)
                        .insert(u.name.clone(), (u.generation, tether_hub::util::now_ms()));
                    agent.record(&u.name, u.generation, &u.hash, WorkPhase::Applied);
                    Message::WorkAck(WorkAck {
                        name: u.name,
                        held: Some(h),
                    })
                }
                Message::WorkRemove(r) => {
                    let old = LiteAgent::lock(&agent.held).remove(&r.name);
                    if let Some(old) = old {
                        let phase = if r.orphan {
                            WorkPhase::Orphaned
                        } else {
                            WorkPhase::Removed
                        };
                        agent.record(&r.name, old.generation, &old.hash, phase);
                    }
                    Message::WorkAck(WorkAck {
                        name: r.name,
                        held: None,
                    })
                }
                other => anyhow::bail!("a hub sent {}", other.kind()),
            };
            send_last(&mut send, &reply, limits).await?;
        }
    };
    tokio::select! {
        r = heartbeats => r,
        r = statuses => r,
        r = deliveries => r,
    }
}
