//! The simulated fleet before the timeline starts: the hub, one relay per agent link, the
//! agents (joined and Ready), and the liveness and partition state the sampler compares the
//! hub's view against.

use crate::fleet::LocalHub;
use crate::relay::{LinkProfile, Relay};
use crate::scenario::{Plan, Scenario};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::AnyExecutor;
use tether_agent::{AgentError, JoinOptions, RunOptions, Shutdown};
use tether_hub::api::CreateTokenRequest;
use tether_hub::AdminClient;
use tether_hub::HubConfig;
use tether_protocol::Labels;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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

pub(super) struct Join {
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

    pub(super) fn spawn(&mut self, j: &Join) {
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

    pub(super) fn alive(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Like kill -9 as far as the network and the store can tell: the task is dropped at its
    /// current await point and nothing it had not committed survives. (Its background reconciler
    /// is told to stop too, so that the store is released for the restart.)
    pub(super) async fn kill(&mut self) {
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
    pub(super) async fn stop(&mut self) -> Option<String> {
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
    pub(super) async fn wait_store_released(&self) {
        let path = self.data_dir.join("agent.redb");
        let start = Instant::now();
        while path.exists() && start.elapsed() < Duration::from_secs(10) {
            if tether_store::Store::open(&path).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(super) fn set_partitioned(&self, on: bool) {
        for r in &self.relays {
            r.set_partitioned(on);
        }
    }
}

/// What the timeline did to the fleet, as opposed to what the hub reports: the sampler counts
/// an agent as reachable only if it is alive, not partitioned, and the hub is up.
#[derive(Default)]
pub(super) struct World {
    pub(super) hub_up: bool,
    pub(super) alive: Vec<bool>,
    pub(super) partitioned: Vec<bool>,
}

/// The fleet, joined and Ready, at the moment the timeline may start.
pub(super) struct Started {
    pub(super) hub: LocalHub,
    pub(super) admin: AdminClient,
    pub(super) join: Join,
    pub(super) agents: Vec<SimAgent>,
    pub(super) world: Arc<Mutex<World>>,
    pub(super) join_s: f64,
}

/// Start the hub and the agents in `dir`, each agent behind its own relays, and wait until
/// every agent is Ready.
pub(super) async fn start(scenario: &Scenario, plan: &Plan, dir: &Path) -> anyhow::Result<Started> {
    let (hub, admin, join) = start_hub(scenario, plan, dir).await?;
    let mut agents = link_agents(scenario, plan, &hub, dir).await?;
    let world = Arc::new(Mutex::new(World {
        hub_up: true,
        alive: vec![true; plan.agents],
        partitioned: vec![false; plan.agents],
    }));
    let join_started = Instant::now();
    for a in agents.iter_mut() {
        a.spawn(&join);
    }
    wait_joined(&admin, plan.agents, join_started).await?;
    Ok(Started {
        hub,
        admin,
        join,
        agents,
        world,
        join_s: join_started.elapsed().as_secs_f64(),
    })
}

async fn start_hub(
    scenario: &Scenario,
    plan: &Plan,
    dir: &Path,
) -> anyhow::Result<(LocalHub, AdminClient, Join)> {
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
    Ok((hub, admin, join))
}

/// One relay per agent link (two with a second hub address), seeded per link so that a seed
/// replays the same losses on the same link.
async fn link_agents(
    scenario: &Scenario,
    plan: &Plan,
    hub: &LocalHub,
    dir: &Path,
) -> anyhow::Result<Vec<SimAgent>> {
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
    Ok(agents)
}

/// Everyone joined and Ready before the timeline starts, or the run is not worth checking.
async fn wait_joined(admin: &AdminClient, agents: usize, started: Instant) -> anyhow::Result<()> {
    let join_limit = Duration::from_secs(60) + Duration::from_millis(100 * agents as u64);
    loop {
        let clusters = admin.clusters().await.unwrap_or_default();
        let ready = clusters
            .iter()
            .filter(|c| c.state == tether_store::hub::ClusterState::Ready)
            .count();
        if ready == agents {
            return Ok(());
        }
        if started.elapsed() > join_limit {
            anyhow::bail!(
                "only {ready} of {agents} agents joined and became Ready within {join_limit:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
