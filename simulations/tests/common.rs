//! Shared set-up for the end-to-end tests: a hub with fast health timings on loopback.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tether_agent::executor::dir::DirExecutor;
use tether_agent::executor::AnyExecutor;
use tether_hub::HubConfig;
use tether_protocol::Labels;
use tether_sim::fleet::{AgentSpec, LocalAgent, LocalHub};

pub const HEARTBEAT: Duration = Duration::from_millis(200);
pub const OFFLINE_GRACE: Duration = Duration::from_secs(2);
pub const WAIT: Duration = Duration::from_secs(20);

pub fn fast_config(dir: &Path) -> HubConfig {
    let mut cfg = HubConfig::new(dir);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg.health.heartbeat_interval = HEARTBEAT;
    cfg.health.offline_grace = OFFLINE_GRACE;
    cfg
}

pub async fn hub(dir: &Path) -> LocalHub {
    LocalHub::start(&dir.join("hub"), fast_config(&dir.join("hub")))
        .await
        .unwrap()
}

pub async fn hub_with(dir: &Path, tweak: impl FnOnce(&mut HubConfig)) -> LocalHub {
    let mut cfg = fast_config(&dir.join("hub"));
    tweak(&mut cfg);
    LocalHub::start(&dir.join("hub"), cfg).await.unwrap()
}

pub fn spec(hub: &LocalHub, dir: &Path, name: &str, token: &str) -> AgentSpec {
    AgentSpec {
        name: name.to_string(),
        data_dir: dir.join("agents").join(name),
        hub: format!("localhost:{}", hub.quic_addr().port()),
        token: token.to_string(),
        ca_sha256: hub.ca_sha256.clone(),
        labels: Labels::from([("site".to_string(), name.to_string())]),
        executor: Arc::new(AnyExecutor::Dir(
            DirExecutor::new(manifests_dir(dir, name)).unwrap(),
        )),
        reconcile_interval: Duration::from_millis(500),
    }
}

/// Where the dir executor of agent `name` writes its manifests.
pub fn manifests_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join("manifests").join(name)
}

pub fn agent(hub: &LocalHub, dir: &Path, name: &str, token: &str) -> LocalAgent {
    LocalAgent::spawn(spec(hub, dir, name, token))
}

pub fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A `kind: Work` of ConfigMaps (one per `keys` entry) for `targets`.
pub fn config_work(
    name: &str,
    targets: tether_protocol::work::Targets,
    keys: &[&str],
    value: &str,
) -> tether_protocol::work::WorkDocument {
    use tether_protocol::work::*;
    WorkDocument {
        api_version: WORK_API_VERSION.into(),
        kind: WORK_KIND.into(),
        metadata: WorkMetadata {
            name: name.into(),
            labels: Labels::new(),
            annotations: Labels::new(),
        },
        spec: WorkSpec {
            targets,
            source: None,
            manifests: keys
                .iter()
                .map(|k| {
                    serde_json::json!({
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": format!("{name}-{k}"), "namespace": "default"},
                        "data": {"value": value},
                    })
                })
                .collect(),
            force_conflicts: false,
            placement: None,
            overrides: vec![],
            rollout: None,
            failover: None,
        },
    }
}

pub fn everywhere() -> tether_protocol::work::Targets {
    tether_protocol::work::Targets {
        clusters: vec![],
        selector: Some(Default::default()),
    }
}

pub fn only(clusters: &[&str]) -> tether_protocol::work::Targets {
    tether_protocol::work::Targets {
        clusters: names(clusters),
        selector: None,
    }
}

/// Wait until every targeted cluster reports `generation` applied (and `expect` clusters are
/// targeted).
pub async fn wait_applied(
    admin: &tether_hub::AdminClient,
    work: &str,
    generation: u64,
    expect: usize,
) -> tether_hub::api::WorkDetail {
    let start = std::time::Instant::now();
    loop {
        if let Ok(d) = admin.work(work).await {
            let s = &d.summary;
            if s.generation == generation && s.targeted == expect && s.applied == expect {
                return d;
            }
            if start.elapsed() > WAIT {
                panic!("work {work} did not reach generation {generation} on {expect} clusters: {d:#?}");
            }
        } else if start.elapsed() > WAIT {
            panic!("work {work} not found");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Poll until the future `f` makes holds, or panic after `WAIT`.
pub async fn eventually_async<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < WAIT, "timed out");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Poll until `f` holds or panic after `WAIT`.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        if start.elapsed() > WAIT {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The hub's status history of one cluster has no duplicates and no gaps: sequence numbers
/// strictly increase, and (after the agent stopped) they end at what the agent had acknowledged
/// with nothing left in its outbox.
pub async fn assert_status_history_exact(
    admin: &tether_hub::AdminClient,
    cluster: &str,
    agent_data_dir: &Path,
) {
    let log = admin.status_log(cluster).await.unwrap();
    assert!(!log.is_empty(), "{cluster}: no status history");
    for pair in log.windows(2) {
        assert!(
            pair[1].seq > pair[0].seq,
            "{cluster}: status seq {} after {} (duplicate or reordering)",
            pair[1].seq,
            pair[0].seq
        );
    }
    let store = tether_store::Store::open(agent_data_dir.join("agent.redb")).unwrap();
    let (meta, depth) = store
        .read(|tx| {
            Ok::<_, tether_store::StoreError>((
                tx.get(
                    &tether_store::agent::OUTBOX_META,
                    tether_store::agent::CURRENT,
                )?
                .unwrap_or_default(),
                tx.seq_len(&tether_store::agent::OUTBOX)?,
            ))
        })
        .unwrap();
    assert_eq!(depth, 0, "{cluster}: outbox not drained");
    assert_eq!(
        meta.acked_through,
        meta.next_seq - 1,
        "{cluster}: not everything acknowledged"
    );
    // Every sequence number the agent ever assigned was either stored by the hub or superseded
    // by a newer status of the same work before it was sent; the last one is always stored.
    assert_eq!(
        log.last().unwrap().seq,
        meta.acked_through,
        "{cluster}: newest status missing"
    );
}

/// A real `tether-agent` process (so it can be killed with SIGKILL).
pub struct AgentProcess {
    pub child: std::process::Child,
}

pub fn agent_binary() -> std::path::PathBuf {
    built_binary("tether-agent", "tether-agent")
}

/// Build (if needed) and locate a debug binary of the workspace.
pub fn built_binary(package: &str, bin: &str) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-q", "-p", package, "--bin", bin])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building {bin}");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join(bin)
}

impl AgentProcess {
    pub fn spawn(bin: &Path, hub: &LocalHub, dir: &Path, name: &str, token: &str) -> Self {
        Self::spawn_under(&[], bin, hub, dir, name, token)
    }

    /// Run the agent through `wrapper` (e.g. `faketime -f -30m`).
    pub fn spawn_under(
        wrapper: &[&str],
        bin: &Path,
        hub: &LocalHub,
        dir: &Path,
        name: &str,
        token: &str,
    ) -> Self {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = std::process::Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        let child = cmd
            .args(["run", "--data-dir"])
            .arg(dir.join("agents").join(name))
            .args(["--hub", &format!("localhost:{}", hub.quic_addr().port())])
            .args([
                "--token",
                token,
                "--ca-sha256",
                &hub.ca_sha256,
                "--name",
                name,
            ])
            .arg(format!(
                "--executor=dir:{}",
                manifests_dir(dir, name).display()
            ))
            .args(["--reconcile-interval", "500ms", "--backoff-cap", "1s"])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a wrapper (faketime forks the agent) must not leave the
            // agent running when the test ends.
            .process_group(0)
            .spawn()
            .expect("spawning tether-agent");
        Self { child }
    }

    /// The exit status once the process ends, or `None` if it still runs after `limit`.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("waiting for tether-agent") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGKILL: no cleanup, no flush, exactly like a power cut of the process.
    pub fn kill9(self) {
        drop(self);
    }

    fn kill_group(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// An agent with an in-memory executor (the returned handle shows what it applied).
pub fn memory_agent(
    hub: &LocalHub,
    dir: &Path,
    name: &str,
    token: &str,
) -> (LocalAgent, tether_agent::executor::memory::MemoryExecutor) {
    let mem = tether_agent::executor::memory::MemoryExecutor::new();
    let mut s = spec(hub, dir, name, token);
    s.executor = Arc::new(AnyExecutor::Memory(mem.clone()));
    (LocalAgent::spawn(s), mem)
}

/// Respawn an agent on its existing data directory and simulated cluster.
pub fn memory_agent_again(
    hub: &LocalHub,
    dir: &Path,
    name: &str,
    token: &str,
    mem: &tether_agent::executor::memory::MemoryExecutor,
) -> LocalAgent {
    let mut s = spec(hub, dir, name, token);
    s.executor = Arc::new(AnyExecutor::Memory(mem.clone()));
    LocalAgent::spawn(s)
}

/// A work document from JSON (the same shape users write in YAML).
pub fn work_from(v: serde_json::Value) -> tether_protocol::work::WorkDocument {
    serde_json::from_value(v).expect("test work document")
}

/// The real `tetherctl` binary with a config file.
pub struct Ctl {
    pub bin: std::path::PathBuf,
    pub config: std::path::PathBuf,
}

impl Ctl {
    /// `tetherctl` configured for `hub` (its config written to `dir/tetherctl.yaml`).
    pub fn for_hub(dir: &Path, hub: &LocalHub) -> Self {
        let config = dir.join("tetherctl.yaml");
        std::fs::write(&config, hub.ctl_config().unwrap().to_yaml()).unwrap();
        Ctl {
            bin: built_binary("tether-hub", "tetherctl"),
            config,
        }
    }

    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.bin);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("TETHER_SERVER").env_remove("TETHER_CONFIG");
        c
    }

    /// Run off the runtime (the binary talks to a hub served by this test's runtime).
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || c.output().expect("running tetherctl"))
            .await
            .unwrap()
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "tetherctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run, expecting failure; what it wrote on stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "tetherctl {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}
