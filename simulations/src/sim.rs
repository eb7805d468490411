//! `tether-sim run`: a real hub and real agents (memory executor) in this process, one
//! fault-injecting relay per agent link, a scripted timeline of faults and works, then invariants.

use crate::fleet::LocalHub;
use crate::relay::{LinkProfile, Relay};
use crate::scenario::{ActionKind, Plan, Scenario};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::AnyExecutor;
use tether_agent::{AgentError, JoinOptions, RunOptions, Shutdown};
use tether_hub::api::CreateTokenRequest;
use tether_hub::AdminClient;
use tether_hub::HubConfig;
use tether_protocol::work::WorkDocument;
use tether_protocol::Labels;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: Option<u64>,
    pub short: bool,
    /// Where `report.json` and the plots go; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// Print progress to stderr.
    pub verbose: bool,
}

// ------------------------------------------------------------------ agents

/// One simulated edge cluster: its agent task (restartable) and its cluster (kept across
/// agent restarts, as a real cluster outlives its agent).
pub struct SimAgent {
    pub name: String,
    pub labels: Labels,
    pub data_dir: PathBuf,
    pub profile: LinkProfile,
    pub cluster: MemoryExecutor,
    pub relays: Vec<Relay>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

struct Join {
    token: String,
    ca_sha256: String,
    reconcile: Duration,
}

impl SimAgent {
    fn hubs(&self) -> Vec<String> {
        self.relays
            .iter()
            .map(|r| format!("localhost:{}", r.front.port()))
            .collect()
    }

    fn spawn(&mut self, j: &Join) {
        let (stop, shutdown) = Shutdown::new();
        let join = JoinOptions {
            hubs: self.hubs(),
            token: j.token.clone(),
            ca_sha256: j.ca_sha256.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            data_dir: self.data_dir.clone(),
            poll_interval: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(1),
        };
        let mut run = RunOptions::new(&self.data_dir);
        run.hubs_override = self.hubs();
        run.backoff_base = Duration::from_millis(100);
        run.backoff_cap = Duration::from_secs(1);
        run.reconcile_interval = j.reconcile;
        let executor = Arc::new(AnyExecutor::Memory(self.cluster.clone()));
        self.task = Some(tokio::spawn(async move {
            tether_agent::join(&join, shutdown.clone()).await?;
            tether_agent::run(&run, executor, shutdown).await
        }));
        self.stop = Some(stop);
    }

    fn alive(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Like kill -9 as far as the network and the store can tell: the task is dropped at its
    /// current await point and nothing it had not committed survives. (Its background reconciler
    /// is told to stop too, so that the store is released for the restart.)
    async fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.wait_store_released().await;
    }

    /// Graceful stop (end of run), so that the store can be inspected.
    async fn stop(&mut self) -> Option<String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        let r = match self.task.take() {
            Some(t) => match tokio::time::timeout(Duration::from_secs(15), t).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(e))) => Some(format!("agent ended with error: {e}")),
                Ok(Err(e)) => Some(format!("agent task failed: {e}")),
                Err(_) => Some("agent did not stop within 15s".into()),
            },
            None => None,
        };
        self.wait_store_released().await;
        r
    }

    /// In one process redb refuses a second open of the same file: wait until the last task
    /// holding the old handle (a reconciler pass, a blocking commit) has let go.
    async fn wait_store_released(&self) {
        let path = self.data_dir.join("agent.redb");
        let start = Instant::now();
        while path.exists() && start.elapsed() < Duration::from_secs(10) {
            if tether_store::Store::open(&path).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn set_partitioned(&self, on: bool) {
        for r in &self.relays {
            r.set_partitioned(on);
        }
    }
}

// ------------------------------------------------------------------ world and samples

#[derive(Default)]
struct World {
    hub_up: bool,
    alive: Vec<bool>,
    partitioned: Vec<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkSample {
    pub generation: u64,
    pub targeted: usize,
    pub delivered: usize,
    pub applied: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub hub_up: bool,
    /// Agents the hub reports Ready.
    pub ready: usize,
    /// Agents alive with a working link and the hub up: the most that could be Ready.
    pub reachable: usize,
    /// Agents Ready and at the latest generation of every work that targets them.
    pub converged: usize,
    pub works: BTreeMap<String, WorkSample>,
    /// Progressive rollouts: (clusters updating now, admission peak reported by the hub).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<String, (usize, usize)>,
    #[serde(skip)]
    pub converged_agents: Vec<bool>,
}

async fn sample(
    admin: &AdminClient,
    names: &[String],
    world: &Mutex<World>,
    t0: Instant,
    rollout_works: &[String],
) -> Sample {
    let t_s = t0.elapsed().as_secs_f64();
    let (hub_up, reachable) = {
        let w = world.lock().unwrap_or_else(|p| p.into_inner());
        let r = if w.hub_up {
            (0..w.alive.len())
                .filter(|i| w.alive[*i] && !w.partitioned[*i])
                .count()
        } else {
            0
        };
        (w.hub_up, r)
    };
    let mut s = Sample {
        t_s,
        hub_up,
        ready: 0,
        reachable,
        converged: 0,
        works: BTreeMap::new(),
        rollouts: BTreeMap::new(),
        converged_agents: vec![false; names.len()],
    };
    if !hub_up {
        return s;
    }
    for w in rollout_works {
        if let Ok(r) = admin.rollout(w).await {
            s.rollouts
                .insert(w.clone(), (r.in_flight, r.admission_peak));
        }
    }
    let Ok(clusters) = admin.clusters().await else {
        return s;
    };
    let ready: BTreeMap<&str, bool> = clusters
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.state == tether_store::hub::ClusterState::Ready,
            )
        })
        .collect();
    s.ready = ready.values().filter(|r| **r).count();
    let mut ok: Vec<bool> = names
        .iter()
        .map(|n| ready.get(n.as_str()).copied().unwrap_or(false))
        .collect();
    let Ok(works) = admin.works().await else {
        return s;
    };
    for w in works.iter().filter(|w| !w.deleted) {
        s.works.insert(
            w.name.clone(),
            WorkSample {
                generation: w.generation,
                targeted: w.targeted,
                delivered: w.delivered,
                applied: w.applied,
            },
        );
        let Ok(detail) = admin.work(&w.name).await else {
            return s;
        };
        for (i, n) in names.iter().enumerate() {
            if let Some(c) = detail.clusters.iter().find(|c| &c.cluster == n) {
                if c.targeted && c.applied_generation != Some(w.generation) {
                    ok[i] = false;
                }
            }
        }
    }
    s.converged = ok.iter().filter(|b| **b).count();
    s.converged_agents = ok;
    s
}

// ------------------------------------------------------------------ report

#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: String,
    /// `passed`, `failed` or `not_checked`.
    pub result: String,
    pub detail: String,
}

impl Invariant {
    fn new(name: &str, failures: Vec<String>, ok_detail: String) -> Self {
        Self {
            name: name.into(),
            result: if failures.is_empty() {
                "passed"
            } else {
                "failed"
            }
            .into(),
            detail: if failures.is_empty() {
                ok_detail
            } else {
                let n = failures.len();
                let mut f = failures;
                f.truncate(10);
                format!("{n} failure(s): {}", f.join("; "))
            },
        }
    }
    pub fn failed(&self) -> bool {
        self.result == "failed"
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub planned_s: f64,
    pub t_s: f64,
    pub action: String,
    pub agents: usize,
    pub heal: bool,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealRecord {
    pub t_s: f64,
    pub action: String,
    pub agents: usize,
    /// Seconds until every affected agent was Ready and at the latest generation; `None` if it
    /// never happened within the run.
    pub converge_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LinkTotals {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub packets_up: u64,
    pub packets_down: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub short: bool,
    pub scale: f64,
    pub agents: usize,
    pub duration_s: f64,
    pub join_s: f64,
    /// Seconds from the end of the timeline until the whole fleet converged (`None` = never).
    pub final_converge_s: Option<f64>,
    pub passed: bool,
    pub invariants: Vec<Invariant>,
    pub heals: Vec<HealRecord>,
    pub events: Vec<EventRecord>,
    pub works: BTreeMap<String, u64>,
    pub status_entries: usize,
    pub status_gaps_total: u64,
    pub status_duplicates_dropped: u64,
    pub hub_restarts: usize,
    pub links: LinkTotals,
    pub plan: Plan,
    pub samples: Vec<Sample>,
}

// ------------------------------------------------------------------ the run

struct Run {
    plan: Plan,
    scenario: Scenario,
    hub: LocalHub,
    agents: Vec<SimAgent>,
    join: Join,
    world: Arc<Mutex<World>>,
    admin: AdminClient,
    /// Applies per work so far (the value of generation n is `"<work>-v<n>"`).
    applied: BTreeMap<String, (u64, usize, Labels)>,
    gaps: u64,
    duplicates: u64,
    hub_restarts: usize,
    t0: Instant,
    events: Vec<EventRecord>,
    verbose: bool,
}

pub fn work_document(
    name: &str,
    objects: usize,
    value: &str,
    labels: &Labels,
    policy: Option<&serde_json::Value>,
) -> anyhow::Result<WorkDocument> {
    let manifests: Vec<serde_json::Value> = (0..objects)
        .map(|k| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": format!("{name}-{k}"), "namespace": "default"},
                "data": {"value": value},
            })
        })
        .collect();
    let mut spec = serde_json::json!({
        "targets": {"selector": {"matchLabels": labels}},
        "manifests": manifests,
    });
    if let (Some(extra), Some(obj)) = (policy.and_then(|p| p.as_object()), spec.as_object_mut()) {
        if extra.contains_key("placement") {
            obj.remove("targets");
        }
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": tether_protocol::work::WORK_API_VERSION,
        "kind": tether_protocol::work::WORK_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

/// Progressive rollouts' maxConcurrency (counts only) and singleton works, from the policies.
fn policy_limits(s: &Scenario) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut conc = BTreeMap::new();
    let mut singletons = Vec::new();
    for (work, p) in &s.policies {
        if p.pointer("/rollout/strategy").and_then(|v| v.as_str()) == Some("Progressive") {
            if let Some(n) = p
                .pointer("/rollout/maxConcurrency")
                .and_then(|v| v.as_u64())
            {
                conc.insert(work.clone(), n as usize);
            }
        }
        if p.pointer("/failover/mode").and_then(|v| v.as_str()) == Some("Singleton") {
            singletons.push(work.clone());
        }
    }
    (conc, singletons)
}

impl Run {
    fn log(&self, msg: impl AsRef<str>) {
        if self.verbose {
            eprintln!(
                "[{:7.2}s] {}",
                self.t0.elapsed().as_secs_f64(),
                msg.as_ref()
            );
        }
    }

    fn now_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Links of agent `i` drop everything while it is partitioned or dead.
    fn sync_link(&self, i: usize) {
        let (alive, part) = {
            let w = self.world();
            (w.alive[i], w.partitioned[i])
        };
        self.agents[i].set_partitioned(part || !alive);
    }

    fn read_hub_counters(&mut self) {
        if let Some(h) = &self.hub.hub {
            self.gaps += h.state.metrics.status_gaps.get();
            self.duplicates += h.state.metrics.status_duplicates.get();
        }
    }

    /// Stop the hub as abruptly as this process allows: its close frames never reach anyone.
    async fn hub_down(&mut self) {
        for a in &self.agents {
            a.set_partitioned(true);
        }
        self.read_hub_counters();
        self.hub.stop().await;
        self.world().hub_up = false;
        for i in 0..self.agents.len() {
            self.sync_link(i);
        }
    }

    async fn hub_up(&mut self) -> anyhow::Result<()> {
        self.hub.restart().await.context("restarting the hub")?;
        self.hub_restarts += 1;
        self.world().hub_up = true;
        Ok(())
    }

    async fn apply(&mut self, work: &str, objects: usize, target: &Labels) -> String {
        if !self.world().hub_up {
            // Nobody can apply to a hub that is down; the timeline moves on.
            return "skipped: the hub is down".into();
        }
        let n = self.applied.get(work).map_or(0, |a| a.1) + 1;
        let value = format!("{work}-v{n}");
        let doc = match work_document(
            work,
            objects,
            &value,
            target,
            self.scenario.policies.get(work),
        ) {
            Ok(d) => d,
            Err(e) => return format!("could not build work: {e}"),
        };
        let start = Instant::now();
        loop {
            match self.admin.apply_work(&doc).await {
                Ok(r) => {
                    self.applied
                        .insert(work.to_string(), (r.generation, n, target.clone()));
                    return format!("generation {} ({:?})", r.generation, r.outcome);
                }
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    return format!("apply failed for 10s: {e:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Wait until the hub recorded the latest generation of `work` delivered to all of `agents`.
    async fn wait_delivered(&self, work: &str, agents: &[usize]) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(d) = self.admin.work(work).await {
                let g = d.summary.generation;
                if agents.iter().all(|i| {
                    d.clusters.iter().any(|c| {
                        c.cluster == self.agents[*i].name && c.delivered_generation == Some(g)
                    })
                }) {
                    return format!(
                        "killed {:.0} ms after delivery of {work} generation {g} was recorded",
                        start.elapsed().as_millis()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        format!("{work} not delivered within 30s; killed anyway")
    }

    async fn execute(&mut self, kind: &ActionKind) -> anyhow::Result<String> {
        Ok(match kind {
            ActionKind::Partition { agents, on } => {
                for &i in agents {
                    self.world().partitioned[i] = *on;
                    self.sync_link(i);
                }
                String::new()
            }
            ActionKind::SetProfile { agents, profile } => {
                for &i in agents {
                    let p = match profile {
                        Some(p) => self.scenario.profiles.get(p).cloned().unwrap_or_default(),
                        None => self.agents[i].profile.clone(),
                    };
                    for r in &self.agents[i].relays {
                        r.set_profile(p.clone());
                    }
                }
                String::new()
            }
            ActionKind::HubStop => {
                self.hub_down().await;
                String::new()
            }
            ActionKind::HubStart => {
                if !self.world().hub_up {
                    self.hub_up().await?;
                }
                String::new()
            }
            ActionKind::HubMove => {
                let old = self.hub.quic_addr();
                if self.world().hub_up {
                    self.hub_down().await;
                }
                let port = std::net::UdpSocket::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                self.hub.cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                self.hub_up().await?;
                let new = self.hub.quic_addr();
                for a in &self.agents {
                    if let Some(r) = a.relays.get(1) {
                        r.set_target(new);
                    }
                }
                format!("hub moved from {old} to {new}; address 1 now leads nowhere")
            }
            ActionKind::AgentKill {
                agents,
                after_delivery,
            } => {
                let note = match after_delivery {
                    Some(w) => self.wait_delivered(w, agents).await,
                    None => String::new(),
                };
                for &i in agents {
                    self.agents[i].set_partitioned(true);
                    self.world().alive[i] = false;
                    self.agents[i].kill().await;
                }
                note
            }
            ActionKind::AgentStart { agents } => {
                for &i in agents {
                    if !self.agents[i].alive() {
                        self.agents[i].wait_store_released().await;
                        self.agents[i].spawn(&self.join);
                    }
                    self.world().alive[i] = true;
                    self.sync_link(i);
                }
                String::new()
            }
            ActionKind::Apply {
                work,
                objects,
                target_labels,
            } => self.apply(work, *objects, target_labels).await,
        })
    }

    /// Heal everything still broken at the end of the timeline.
    async fn heal_all(&mut self) -> anyhow::Result<()> {
        if !self.world().hub_up {
            self.hub_up().await?;
        }
        for i in 0..self.agents.len() {
            self.world().partitioned[i] = false;
            if !self.agents[i].alive() {
                self.agents[i].wait_store_released().await;
                self.agents[i].spawn(&self.join);
            }
            self.world().alive[i] = true;
            self.sync_link(i);
        }
        Ok(())
    }
}

/// Run a scenario. Returns the report; `report.passed` says whether every invariant held.
pub async fn run(scenario: Scenario, cfg: RunConfig) -> anyhow::Result<Report> {
    let plan = scenario.plan(cfg.seed, cfg.short);
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = tmp.path();
    let mut hcfg = HubConfig::new(dir.join("hub"));
    hcfg.listen = "127.0.0.1:0".parse()?;
    hcfg.admin_listen = "127.0.0.1:0".parse()?;
    hcfg.health.heartbeat_interval = Duration::from_millis(scenario.fleet.heartbeat_ms);
    hcfg.health.offline_grace = Duration::from_millis(scenario.fleet.offline_grace_ms);
    let hub = LocalHub::start(&dir.join("hub"), hcfg)
        .await
        .context("starting the hub")?;
    let admin = hub.admin()?;
    let token = admin
        .create_token(&CreateTokenRequest {
            ttl_secs: 3600,
            uses: plan.agents as u32,
            auto_approve: true,
            labels: Labels::new(),
            allowed_labels: Vec::new(),
        })
        .await
        .context("creating a join token")?
        .token;
    let join = Join {
        token,
        ca_sha256: hub.ca_sha256.clone(),
        reconcile: Duration::from_millis(scenario.fleet.reconcile_ms),
    };

    // One relay per agent link (two with a second hub address), seeded per link.
    let mut agents = Vec::with_capacity(plan.agents);
    for (i, pa) in plan.fleet.iter().enumerate() {
        let profile = pa
            .profile
            .as_ref()
            .and_then(|p| scenario.profiles.get(p).cloned())
            .unwrap_or_default();
        let mut relays = Vec::new();
        for link in 0..scenario.fleet.hub_addresses {
            let seed = plan
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((i * 2 + link) as u64 + 1);
            relays.push(Relay::start(hub.quic_addr(), profile.clone(), seed).await?);
        }
        agents.push(SimAgent {
            name: pa.name.clone(),
            labels: pa.labels.clone(),
            data_dir: dir.join("agents").join(&pa.name),
            profile,
            cluster: MemoryExecutor::new(),
            relays,
            stop: None,
            task: None,
        });
    }
    let world = Arc::new(Mutex::new(World {
        hub_up: true,
        alive: vec![true; plan.agents],
        partitioned: vec![false; plan.agents],
    }));
    let join_started = Instant::now();
    for a in agents.iter_mut() {
        a.spawn(&join);
    }
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    // Everyone joined and Ready before the timeline starts.
    let join_limit = Duration::from_secs(60) + Duration::from_millis(100 * plan.agents as u64);
    loop {
        let clusters = admin.clusters().await.unwrap_or_default();
        let ready = clusters
            .iter()
            .filter(|c| c.state == tether_store::hub::ClusterState::Ready)
            .count();
        if ready == plan.agents {
            break;
        }
        if join_started.elapsed() > join_limit {
            anyhow::bail!(
                "only {ready} of {} agents joined and became Ready within {join_limit:?}",
                plan.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let join_s = join_started.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut run = Run {
        plan: plan.clone(),
        scenario,
        hub,
        agents,
        join,
        world: world.clone(),
        admin: admin.clone(),
        applied: BTreeMap::new(),
        gaps: 0,
        duplicates: 0,
        hub_restarts: 0,
        t0,
        events: Vec::new(),
        verbose: cfg.verbose,
    };
    run.log(format!(
        "{} agents joined in {join_s:.1}s; timeline of {:.0}s starts",
        plan.agents, plan.duration_s
    ));

    // Sampler: four times a second, what the hub reports.
    let (conc_limits, singletons) = policy_limits(&run.scenario);
    let rollout_works: Vec<String> = conc_limits.keys().cloned().collect();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (admin, names, world, samples, rollout_works) = (
            admin.clone(),
            names.clone(),
            world.clone(),
            samples.clone(),
            rollout_works.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let s = sample(&admin, &names, &world, t0, &rollout_works).await;
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            }
        })
    };
    // Singleton monitor: every 10 ms, how many simulated clusters hold each singleton's objects
    // (the clusters themselves, not the hub's view).
    let double_active = Arc::new(Mutex::new(Vec::<String>::new()));
    let monitor = {
        let clusters: Vec<(String, MemoryExecutor)> = run
            .agents
            .iter()
            .map(|a| (a.name.clone(), a.cluster.clone()))
            .collect();
        let (singletons, double_active) = (singletons.clone(), double_active.clone());
        tokio::spawn(async move {
            loop {
                for w in &singletons {
                    let prefix = format!("{w}-");
                    let holders: Vec<&str> = clusters
                        .iter()
                        .filter(|(_, c)| c.objects().keys().any(|r| r.name.starts_with(&prefix)))
                        .map(|(n, _)| n.as_str())
                        .collect();
                    if holders.len() > 1 {
                        let mut d = double_active.lock().unwrap_or_else(|p| p.into_inner());
                        if d.len() < 20 {
                            d.push(format!(
                                "{w} active on {} at {:.2}s",
                                holders.join(", "),
                                t0.elapsed().as_secs_f64()
                            ));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let actions = plan.actions.clone();
    for a in &actions {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(a.at_s)).await;
        let t_s = run.now_s();
        let label = action_label(&a.kind);
        let count = action_agents(&a.kind, plan.agents);
        let note = run.execute(&a.kind).await?;
        run.log(format!("{label} ({count} agents) {note}"));
        run.events.push(EventRecord {
            planned_s: a.at_s,
            t_s,
            action: label,
            agents: count,
            heal: a.heal,
            note,
        });
    }
    tokio::time::sleep_until(t0 + plan.duration()).await;
    let end_s = run.now_s();
    run.heal_all().await?;
    run.log("timeline over; every fault healed, waiting for convergence");

    // Converged: every agent Ready and at the latest generation of each work targeting it.
    let settle = Duration::from_secs_f64(plan.settle_s);
    let settle_start = Instant::now();
    let mut final_converge_s = None;
    let mut last = None;
    while settle_start.elapsed() < settle {
        let s = sample(&admin, &names, &world, t0, &rollout_works).await;
        let works_ok = run.applied.iter().all(|(w, (g, _, _))| {
            s.works.get(w).is_some_and(|ws| {
                ws.generation == *g && ws.applied == ws.targeted && ws.delivered == ws.targeted
            })
        });
        if s.converged == plan.agents && works_ok {
            final_converge_s = Some(s.t_s - end_s);
            last = Some(s);
            break;
        }
        last = Some(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampler.abort();
    let _ = sampler.await;
    monitor.abort();
    let _ = monitor.await;
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(s) = last.clone() {
        samples.push(s);
    }
    run.log(match final_converge_s {
        Some(s) => format!("converged {s:.2}s after the end of the timeline"),
        None => format!("NOT converged within {:.0}s", plan.settle_s),
    });

    let mut invariants = Vec::new();
    // 1. Convergence.
    let mut failures = Vec::new();
    if final_converge_s.is_none() {
        if let Some(s) = &last {
            for (i, ok) in s.converged_agents.iter().enumerate() {
                if !ok {
                    failures.push(format!("{} not Ready at the latest generation", names[i]));
                }
            }
            for (w, (g, _, _)) in &run.applied {
                match s.works.get(w) {
                    Some(ws) if ws.generation != *g => failures.push(format!(
                        "{w}: hub at generation {} but {} applies were made",
                        ws.generation, g
                    )),
                    Some(ws) if ws.applied != ws.targeted || ws.delivered != ws.targeted => {
                        failures.push(format!(
                            "{w} generation {}: {} targeted, {} delivered, {} applied",
                            ws.generation, ws.targeted, ws.delivered, ws.applied
                        ))
                    }
                    None => failures.push(format!("{w}: unknown to the hub")),
                    _ => {}
                }
            }
        }
        if failures.is_empty() {
            failures.push(format!("not converged within {:.0}s", plan.settle_s));
        }
    }
    invariants.push(Invariant::new(
        "converged",
        failures,
        format!(
            "all {} agents Ready and at the latest generation {:.2}s after the last fault",
            plan.agents,
            final_converge_s.unwrap_or_default()
        ),
    ));

    // 2. The clusters themselves hold the latest content (memory executors). For works with a
    // placement policy the hub's final choice says who should hold them; nobody else may.
    let mut placed: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for w in run
        .applied
        .keys()
        .filter(|w| run.scenario.policies.contains_key(*w))
    {
        if let Ok(d) = admin.work(w).await {
            placed.insert(
                w.clone(),
                d.clusters
                    .iter()
                    .filter(|c| c.targeted)
                    .map(|c| c.cluster.clone())
                    .collect(),
            );
        }
    }
    let mut failures = Vec::new();
    for a in &run.agents {
        let objects = a.cluster.objects();
        for (w, (_, n, target)) in &run.applied {
            let should_hold = match placed.get(w) {
                Some(set) => set.contains(&a.name),
                None => target.iter().all(|(k, v)| a.labels.get(k) == Some(v)),
            };
            if !should_hold {
                let prefix = format!("{w}-");
                if placed.contains_key(w) && objects.keys().any(|r| r.name.starts_with(&prefix)) {
                    failures.push(format!("{}: holds {w} but is not placed there", a.name));
                }
                continue;
            }
            let want = format!("{w}-v{n}");
            let have: Vec<&serde_json::Value> = objects
                .iter()
                .filter(|(r, _)| r.name.starts_with(&format!("{w}-")))
                .map(|(_, v)| v)
                .collect();
            if have.is_empty()
                || have
                    .iter()
                    .any(|v| v.pointer("/data/value").and_then(|x| x.as_str()) != Some(&want))
            {
                failures.push(format!("{}: {w} objects are not at {want}", a.name));
            }
        }
    }
    invariants.push(Invariant::new(
        "cluster_content",
        failures,
        "every simulated cluster holds the latest content of its works".into(),
    ));

    // Stop the agents gracefully so that their stores can be read.
    let mut stop_errors = Vec::new();
    for a in run.agents.iter_mut() {
        if let Some(e) = a.stop().await {
            stop_errors.push(format!("{}: {e}", a.name));
        }
    }
    run.read_hub_counters();

    // 3. Status history: strictly increasing per cluster, newest acknowledged status stored,
    //    nothing stored that the agent never assigned, no gap counted.
    let mut failures = Vec::new();
    let mut status_entries = 0;
    for a in &run.agents {
        let log = match admin.status_log(&a.name).await {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{}: status log unreadable: {e:#}", a.name));
                continue;
            }
        };
        status_entries += log.len();
        for pair in log.windows(2) {
            if pair[1].seq <= pair[0].seq {
                failures.push(format!(
                    "{}: seq {} after {} (duplicate or reordered)",
                    a.name, pair[1].seq, pair[0].seq
                ));
            }
        }
        match read_outbox(&a.data_dir) {
            Ok((acked, next, depth)) => {
                let last = log.last().map_or(0, |e| e.seq);
                if last != acked {
                    failures.push(format!(
                        "{}: agent had status acknowledged through {acked}, hub's newest is {last}",
                        a.name
                    ));
                }
                if log.iter().any(|e| e.seq >= next) {
                    failures.push(format!(
                        "{}: hub holds a seq the agent never assigned",
                        a.name
                    ));
                }
                if depth > 0 && final_converge_s.is_some() {
                    // Durable and will be sent: not a loss. Reported, not failed.
                    stop_errors.push(format!("{}: {depth} status entries still queued", a.name));
                }
            }
            Err(e) => failures.push(format!("{}: agent store unreadable: {e:#}", a.name)),
        }
    }
    if run.gaps > 0 {
        failures.push(format!(
            "tether_hub_status_gaps_total summed over hub lifetimes = {}",
            run.gaps
        ));
    }
    invariants.push(Invariant::new(
        "status_exactly_once",
        failures,
        format!(
            "{status_entries} status entries, strictly increasing per cluster, newest acknowledged one stored everywhere, 0 gaps"
        ),
    ));

    // 4. Acknowledged implies durably held: the hub never records a delivery the agent's
    //    store does not hold.
    let mut failures = Vec::new();
    for w in run.applied.keys() {
        let Ok(detail) = admin.work(w).await else {
            failures.push(format!("{w}: unknown to the hub"));
            continue;
        };
        for c in &detail.clusters {
            let Some(delivered) = c.delivered_generation else {
                continue;
            };
            let Some(a) = run.agents.iter().find(|a| a.name == c.cluster) else {
                continue;
            };
            match read_desired(&a.data_dir, w) {
                Ok(Some(g)) if g >= delivered => {}
                Ok(held) => failures.push(format!(
                    "{}: hub recorded {w} generation {delivered} delivered, agent store holds {held:?}",
                    a.name
                )),
                Err(e) => failures.push(format!("{}: store unreadable: {e:#}", a.name)),
            }
        }
    }
    invariants.push(Invariant::new(
        "acked_implies_held",
        failures,
        "every delivery the hub recorded is in the agent's store".into(),
    ));

    // 5. Time to converge after each heal.
    let heals = heal_times(&run.events, &run.plan, &samples, end_s, final_converge_s);
    if let Some(max) = run.scenario.max_converge_s {
        let failures = heals
            .iter()
            .filter(|h| h.converge_s.is_none_or(|c| c > max))
            .map(|h| format!("{} at {:.1}s: {:?}", h.action, h.t_s, h.converge_s))
            .collect();
        invariants.push(Invariant::new(
            "converge_after_heal",
            failures,
            format!("every heal converged within {max}s"),
        ));
    }
    if conc_limits.is_empty() {
        invariants.push(Invariant {
            name: "rollout_max_concurrency".into(),
            result: "not_checked".into(),
            detail: "no progressive rollout in this scenario".into(),
        });
    } else {
        let mut failures = Vec::new();
        let mut details = Vec::new();
        for (w, limit) in &conc_limits {
            let peak = samples
                .iter()
                .filter_map(|s| s.rollouts.get(w))
                .map(|r| r.1)
                .max()
                .unwrap_or(0);
            let seen = samples
                .iter()
                .filter_map(|s| s.rollouts.get(w))
                .map(|r| r.0)
                .max()
                .unwrap_or(0);
            if peak > *limit {
                failures.push(format!(
                    "{w}: {peak} slots in use at an admission, maxConcurrency {limit}"
                ));
            }
            details.push(format!(
                "{w}: admission peak {peak}, most updating at a sample {seen}, limit {limit}"
            ));
        }
        invariants.push(Invariant::new(
            "rollout_max_concurrency",
            failures,
            details.join("; "),
        ));
    }
    if singletons.is_empty() {
        invariants.push(Invariant {
            name: "singleton_never_twice".into(),
            result: "not_checked".into(),
            detail: "no singleton in this scenario".into(),
        });
    } else {
        let failures = double_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        invariants.push(Invariant::new(
            "singleton_never_twice",
            failures,
            format!(
                "{} never held by two simulated clusters (checked every 10 ms)",
                singletons.join(", ")
            ),
        ));
    }

    let mut links = LinkTotals::default();
    for a in &run.agents {
        for r in &a.relays {
            let c = r.counters.snapshot();
            links.bytes_up += c.bytes_up;
            links.bytes_down += c.bytes_down;
            links.packets_up += c.packets_up;
            links.packets_down += c.packets_down;
            links.dropped += c.dropped;
            links.duplicated += c.duplicated;
            links.reordered += c.reordered;
        }
    }
    for e in stop_errors {
        run.log(e);
    }
    run.hub.stop().await;
    let passed = !invariants.iter().any(Invariant::failed);
    let report = Report {
        scenario: plan.name.clone(),
        seed: plan.seed,
        short: cfg.short,
        scale: plan.scale,
        agents: plan.agents,
        duration_s: plan.duration_s,
        join_s,
        final_converge_s,
        passed,
        invariants,
        heals,
        events: run.events,
        works: run
            .applied
            .iter()
            .map(|(w, (g, _, _))| (w.clone(), *g))
            .collect(),
        status_entries,
        status_gaps_total: run.gaps,
        status_duplicates_dropped: run.duplicates,
        hub_restarts: run.hub_restarts,
        links,
        plan,
        samples,
    };
    if let Some(out) = &cfg.out {
        write_outputs(&report, out)?;
    }
    Ok(report)
}

fn action_label(k: &ActionKind) -> String {
    match k {
        ActionKind::Partition { on: true, .. } => "partition".into(),
        ActionKind::Partition { on: false, .. } => "link up".into(),
        ActionKind::SetProfile {
            profile: Some(p), ..
        } => format!("profile {p}"),
        ActionKind::SetProfile { profile: None, .. } => "profile restored".into(),
        ActionKind::HubStop => "hub kill".into(),
        ActionKind::HubStart => "hub start".into(),
        ActionKind::HubMove => "hub move".into(),
        ActionKind::AgentKill { .. } => "agent kill".into(),
        ActionKind::AgentStart { .. } => "agent start".into(),
        ActionKind::Apply { work, .. } => format!("apply {work}"),
    }
}

fn action_agents(k: &ActionKind, all: usize) -> usize {
    match k {
        ActionKind::Partition { agents, .. }
        | ActionKind::SetProfile { agents, .. }
        | ActionKind::AgentKill { agents, .. }
        | ActionKind::AgentStart { agents } => agents.len(),
        _ => all,
    }
}

fn heal_times(
    events: &[EventRecord],
    plan: &Plan,
    samples: &[Sample],
    end_s: f64,
    final_converge_s: Option<f64>,
) -> Vec<HealRecord> {
    let mut out = Vec::new();
    for (e, a) in events.iter().zip(&plan.actions).filter(|(e, _)| e.heal) {
        let affected: Vec<usize> = match &a.kind {
            ActionKind::Partition { agents, .. }
            | ActionKind::SetProfile { agents, .. }
            | ActionKind::AgentStart { agents } => agents.clone(),
            _ => (0..plan.agents).collect(),
        };
        let converge_s = samples
            .iter()
            .filter(|s| s.t_s >= e.t_s && s.hub_up)
            .find(|s| {
                affected
                    .iter()
                    .all(|i| s.converged_agents.get(*i).copied().unwrap_or(false))
            })
            .map(|s| s.t_s - e.t_s);
        out.push(HealRecord {
            t_s: e.t_s,
            action: e.action.clone(),
            agents: affected.len(),
            converge_s,
        });
    }
    out.push(HealRecord {
        t_s: end_s,
        action: "end of timeline (heal all)".into(),
        agents: plan.agents,
        converge_s: final_converge_s,
    });
    out
}

fn read_outbox(dir: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let store = tether_store::Store::open(dir.join("agent.redb"))?;
    let (meta, depth) = store.read(|tx| {
        Ok::<_, tether_store::StoreError>((
            tx.get(
                &tether_store::agent::OUTBOX_META,
                tether_store::agent::CURRENT,
            )?
            .unwrap_or_default(),
            tx.seq_len(&tether_store::agent::OUTBOX)?,
        ))
    })?;
    Ok((meta.acked_through, meta.next_seq, depth))
}

fn read_desired(dir: &Path, work: &str) -> anyhow::Result<Option<u64>> {
    let store = tether_store::Store::open(dir.join("agent.redb"))?;
    Ok(store
        .read(|tx| tx.get(&tether_store::agent::DESIRED, work))?
        .map(|d| d.generation))
}

fn write_outputs(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out.join("report.json"), json)?;
    std::fs::write(out.join("online.svg"), crate::plot::online(report))?;
    std::fs::write(
        out.join("convergence.svg"),
        crate::plot::convergence(report),
    )?;
    Ok(())
}

/// The short text summary printed after a run.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "scenario {} seed {}{}: {} agents, {:.0}s timeline, {} events, {} hub restarts",
        r.scenario,
        r.seed,
        if r.short { " (short)" } else { "" },
        r.agents,
        r.duration_s,
        r.events.len(),
        r.hub_restarts
    );
    let _ = writeln!(
        s,
        "links: {} datagrams relayed, {} dropped, {} duplicated, {} reordered",
        r.links.packets_up + r.links.packets_down,
        r.links.dropped,
        r.links.duplicated,
        r.links.reordered
    );
    let ttc: Vec<f64> = r.heals.iter().filter_map(|h| h.converge_s).collect();
    let never = r.heals.iter().filter(|h| h.converge_s.is_none()).count();
    if !ttc.is_empty() {
        let max = ttc.iter().cloned().fold(0.0, f64::max);
        let mean = ttc.iter().sum::<f64>() / ttc.len() as f64;
        let _ = writeln!(
            s,
            "time to converge after {} heals: mean {mean:.2}s, max {max:.2}s{}",
            ttc.len(),
            if never > 0 {
                format!(", {never} never converged")
            } else {
                String::new()
            }
        );
    }
    for i in &r.invariants {
        let _ = writeln!(
            s,
            "  {:<12} {:<22} {}",
            i.result.to_uppercase(),
            i.name,
            i.detail
        );
    }
    let _ = write!(s, "{}", if r.passed { "PASS" } else { "FAIL" });
    s
}
