//! A local fleet: one hub and any number of agents in this process.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_agent::executor::AnyExecutor;
use tether_agent::{AgentError, JoinOptions, RunOptions, Shutdown};
use tether_hub::api::{ClusterView, CreateTokenRequest};
use tether_hub::config::{CtlConfig, DataDir, StoreLocation};
use tether_hub::util::now_ms;
use tether_hub::AdminClient;
use tether_hub::{init, InitOptions};
use tether_hub::{HubConfig, RunningHub};
use tether_protocol::Labels;
use tokio::task::JoinHandle;

/// A hub data directory that has been initialised, and how to reach a hub serving it.
pub struct LocalHub {
    pub cfg: HubConfig,
    pub ca_sha256: String,
    pub hub: Option<RunningHub>,
}

impl LocalHub {
    /// Initialise `dir` (unless it already is) and start a hub on it.
    pub async fn start(dir: &Path, mut cfg: HubConfig) -> anyhow::Result<Self> {
        cfg.data_dir = DataDir::new(dir);
        // Under TETHER_TEST_STORE=postgres every new hub gets a database of its own; a hub
        // started again on the same directory finds it named there.
        let named = dir.join("test-store-url");
        if cfg.store == StoreLocation::Embedded {
            if let Ok(url) = std::fs::read_to_string(&named) {
                cfg.store = StoreLocation::Postgres(url);
            } else if !DataDir::new(dir).ca_cert().exists() {
                if let Some(url) = crate::pg::test_store()? {
                    std::fs::create_dir_all(dir)?;
                    std::fs::write(&named, &url)?;
                    cfg.store = StoreLocation::Postgres(url);
                }
            }
        }
        let data = DataDir::new(dir);
        let ca_sha256 = if data.ca_cert().exists() {
            let pem = std::fs::read_to_string(data.ca_cert())?;
            let der = tether_transport::certs::certs_from_pem(&pem, "CA")?;
            tether_transport::certs::fingerprint(&der[0])
        } else {
            init(
                &InitOptions {
                    data_dir: data,
                    hub_name: "localhost".into(),
                    sans: vec![],
                    admin_listen: cfg.admin_listen,
                    store: cfg.store.clone(),
                },
                now_ms(),
            )?
            .ca_sha256
        };
        let hub = tether_hub::start(cfg.clone()).await?;
        // Pin the ports actually bound so that a restart reuses them.
        cfg.listen = hub.quic_addr;
        cfg.admin_listen = hub.admin_addr;
        Ok(Self {
            cfg,
            ca_sha256,
            hub: Some(hub),
        })
    }

    pub fn running(&self) -> &RunningHub {
        self.hub.as_ref().expect("hub is running")
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.cfg.listen
    }

    /// The admin client configuration, with the actually bound admin port.
    pub fn ctl_config(&self) -> anyhow::Result<CtlConfig> {
        let mut cfg = CtlConfig::load(&self.cfg.data_dir.ctl_config())?;
        cfg.admin_address = self.cfg.admin_listen.to_string();
        Ok(cfg)
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient> {
        AdminClient::new(&self.ctl_config()?)
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.hub.take() {
            h.shutdown().await;
        }
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        // The old endpoint's UDP socket is released once its connections drained; with many
        // agents that can take a moment, so retry the bind for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tether_hub::start(self.cfg.clone()).await {
                Ok(h) => {
                    self.hub = Some(h);
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline && format!("{e:#}").contains("in use") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn token(
        &self,
        uses: u32,
        auto_approve: bool,
        labels: Labels,
    ) -> anyhow::Result<String> {
        let created = self
            .admin()?
            .create_token(&CreateTokenRequest {
                ttl_secs: 3600,
                uses,
                auto_approve,
                labels,
                allowed_labels: Vec::new(),
            })
            .await?;
        Ok(created.token)
    }
}

/// An agent running as a task of this process.
pub struct LocalAgent {
    pub name: String,
    pub data_dir: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    pub task: JoinHandle<Result<(), AgentError>>,
}

#[derive(Clone)]
pub struct AgentSpec {
    pub name: String,
    pub data_dir: PathBuf,
    pub hub: String,
    pub token: String,
    pub ca_sha256: String,
    pub labels: Labels,
    pub executor: Arc<AnyExecutor>,
    pub reconcile_interval: Duration,
}

impl LocalAgent {
    /// Join (if not yet joined) and run, like `tether-agent run` with join flags.
    pub fn spawn(spec: AgentSpec) -> Self {
        let (stop, shutdown) = Shutdown::new();
        let name = spec.name.clone();
        let data_dir = spec.data_dir.clone();
        let task = tokio::spawn(run_agent(spec, shutdown));
        Self {
            name,
            data_dir,
            stop,
            task,
        }
    }

    /// Ask the agent to stop and wait for it.
    pub async fn stop(self) -> Result<(), AgentError> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(Err(AgentError::Interrupted))
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

async fn run_agent(spec: AgentSpec, shutdown: Shutdown) -> Result<(), AgentError> {
    let join = JoinOptions {
        hubs: vec![spec.hub.clone()],
        token: spec.token.clone(),
        ca_sha256: spec.ca_sha256.clone(),
        name: spec.name.clone(),
        labels: spec.labels.clone(),
        data_dir: spec.data_dir.clone(),
        poll_interval: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(1),
    };
    tether_agent::join(&join, shutdown.clone()).await?;
    let mut run = RunOptions::new(&spec.data_dir);
    run.hubs_override = vec![spec.hub];
    run.backoff_base = Duration::from_millis(100);
    run.backoff_cap = Duration::from_secs(1);
    run.reconcile_interval = spec.reconcile_interval;
    tether_agent::run(&run, spec.executor, shutdown).await
}

/// One series of the hub's Prometheus text (`name` with its labels, if any); 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Poll the admin API until `pred` holds for the cluster list, or time out.
pub async fn wait_for(
    admin: &AdminClient,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&[ClusterView]) -> bool,
) -> anyhow::Result<Vec<ClusterView>> {
    let start = Instant::now();
    loop {
        let clusters = admin.clusters().await.context("listing clusters")?;
        if pred(&clusters) {
            return Ok(clusters);
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}; clusters: {clusters:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// All of `names` are registered and in `state`.
pub fn all_in_state<'a>(
    names: &'a [String],
    state: &'a str,
) -> impl Fn(&[ClusterView]) -> bool + 'a {
    move |clusters| {
        names.iter().all(|n| {
            clusters
                .iter()
                .any(|c| &c.name == n && c.state.as_str() == state)
        })
    }
}
