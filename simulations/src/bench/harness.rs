//! What the benchmarks share: percentiles, the machine line, saving results, and starting and
//! waiting for hubs and agents in this process.

use super::Results;
use crate::fleet::{metric, LocalHub};
use crate::lite::LiteIdentity;
use anyhow::Context;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::AnyExecutor;
use tether_agent::{JoinOptions, RunOptions, Shutdown};
use tether_hub::HubConfig;
use tether_protocol::Labels;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pct {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub n: usize,
}

pub(super) fn pct(mut v: Vec<f64>) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    Pct {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: v[v.len() - 1],
        n: v.len(),
    }
}

/// Written after every benchmark, so that a long run that fails late keeps what it measured.
pub(super) fn save(path: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("writing {}", path.display()))
}

pub(super) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(String::new(), |kb| {
            format!(", {} GiB RAM", kb / 1024 / 1024)
        });
    format!(
        "{cpus} CPUs{mem}, {} build",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )
}

pub(super) fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system, every thread) process `pid` has used so far.
pub(super) fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after its last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), the 12th and 13th after the name.
    let ticks: f64 = fields
        .get(11..13)
        .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
        .iter()
        .map(|f| f.parse::<f64>())
        .sum::<Result<f64, _>>()?;
    Ok(ticks / clock_ticks_per_s())
}

/// `getconf CLK_TCK`: the unit of /proc's CPU times (100 on Linux unless built otherwise).
fn clock_ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub(super) fn bench_hub_config(dir: &Path) -> HubConfig {
    let mut cfg = HubConfig::new(dir);
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.admin_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

pub(super) fn init_hub_dir(hub_dir: &Path) -> anyhow::Result<()> {
    tether_hub::init(
        &tether_hub::InitOptions {
            data_dir: tether_hub::config::DataDir::new(hub_dir),
            hub_name: "localhost".into(),
            sans: vec![],
            admin_listen: "127.0.0.1:0".parse()?,
            store: Default::default(),
        },
        tether_hub::util::now_ms(),
    )?;
    Ok(())
}

/// Register `n` lite identities with the (stopped) hub in `dir/hub`; saved in `dir/ids.jsonl`.
pub(super) async fn provision_lite(
    dir: &Path,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<LiteIdentity>> {
    let (d, p) = (dir.to_path_buf(), prefix.to_string());
    let t = Instant::now();
    let ids = tokio::task::spawn_blocking(move || {
        let ids = crate::lite::provision(&d.join("hub"), &p, n)?;
        crate::lite::save_identities(&d.join("ids.jsonl"), &ids)?;
        Ok::<_, anyhow::Error>(ids)
    })
    .await??;
    tracing::info!(
        n,
        secs = t.elapsed().as_secs_f64(),
        "lite identities provisioned"
    );
    Ok(ids)
}

/// Connections per second the lite swarm opens at start: about what two shared cores finish,
/// so the figure is the hub's steady state rather than a handshake queue.
pub(super) const LITE_CONNECTS_PER_S: usize = 400;

pub(super) fn connect_limit(n: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(10 * n as u64)
}

/// Live sessions and clusters Ready, from the hub's metrics (cheap at 100k, unlike listing).
pub(super) async fn hub_counts(admin: &tether_hub::AdminClient) -> anyhow::Result<(usize, usize)> {
    let text = admin.get_text("/metrics").await?;
    Ok((
        metric(&text, "tether_hub_live_sessions") as usize,
        metric(&text, "tether_hub_clusters{state=\"Ready\"}") as usize,
    ))
}

pub(super) async fn hub_counter(admin: &tether_hub::AdminClient, name: &str) -> f64 {
    admin
        .get_text("/metrics")
        .await
        .map_or(0.0, |text| metric(&text, name))
}

/// Poll (every `poll`) until `n` sessions are live and Ready; seconds it took.
pub(super) async fn wait_sessions(
    admin: &tether_hub::AdminClient,
    n: usize,
    limit: Duration,
    poll: Duration,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    loop {
        let (live, ready) = hub_counts(admin).await.unwrap_or((0, 0));
        if live >= n && ready >= n {
            return Ok(t.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            t.elapsed() < limit,
            "only {live} sessions ({ready} Ready) of {n} after {limit:?}"
        );
        tokio::time::sleep(poll).await;
    }
}

/// Start one agent (join, then run) as a task of this process.
pub(super) fn spawn_agent(
    name: &str,
    dir: &Path,
    hub: &str,
    token: &str,
    ca_sha256: &str,
    cluster: MemoryExecutor,
    reconcile: Duration,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, shutdown) = Shutdown::new();
    let join = JoinOptions {
        hubs: vec![hub.to_string()],
        token: token.to_string(),
        ca_sha256: ca_sha256.to_string(),
        name: name.to_string(),
        labels: Labels::new(),
        data_dir: dir.join(name),
        poll_interval: Duration::from_millis(500),
        backoff_cap: Duration::from_secs(5),
    };
    let mut run = RunOptions::new(dir.join(name));
    run.hubs_override = vec![hub.to_string()];
    run.backoff_cap = Duration::from_secs(5);
    run.reconcile_interval = reconcile;
    let exec = Arc::new(AnyExecutor::Memory(cluster));
    let task = tokio::spawn(async move {
        if let Err(e) = tether_agent::join(&join, shutdown.clone()).await {
            tracing::warn!(error = %e, "bench agent could not join");
            return;
        }
        if let Err(e) = tether_agent::run(&run, exec, shutdown).await {
            tracing::warn!(error = %e, "bench agent stopped");
        }
    });
    (stop, task)
}

pub(super) async fn wait_ready(hub: &LocalHub, n: usize, limit: Duration) -> anyhow::Result<f64> {
    let admin = hub.admin()?;
    let start = Instant::now();
    loop {
        let ready = admin
            .clusters()
            .await
            .map(|c| {
                c.iter()
                    .filter(|c| c.state == tether_store::hub::ClusterState::Ready)
                    .count()
            })
            .unwrap_or(0);
        if ready >= n {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > limit {
            anyhow::bail!("only {ready} of {n} agents Ready after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Until the hub counts generation `g` (or a later one) of the `bench` work applied on `n`
/// clusters.
pub(super) async fn wait_all_applied(
    admin: &tether_hub::AdminClient,
    n: usize,
    g: u64,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(d) = admin.work("bench").await {
            if d.summary.generation >= g && d.summary.applied >= n {
                return Ok(());
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "warm-up generation not applied everywhere in 300s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `bench` work on every cluster: one ConfigMap holding `value`.
pub(super) fn work(value: &str) -> anyhow::Result<tether_protocol::work::WorkDocument> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": tether_protocol::work::WORK_API_VERSION,
        "kind": tether_protocol::work::WORK_KIND,
        "metadata": {"name": "bench"},
        "spec": {
            "targets": {"selector": {}},
            "manifests": [{
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "bench", "namespace": "default"},
                "data": {"value": value},
            }],
        },
    }))?)
}

/// A singleton placed on `cluster` alone, with a fence deadline far above the heartbeat.
pub(super) fn singleton(cluster: &str) -> anyhow::Result<tether_protocol::work::WorkDocument> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": tether_protocol::work::WORK_API_VERSION,
        "kind": tether_protocol::work::WORK_KIND,
        "metadata": {"name": format!("single-{cluster}")},
        "spec": {
            "placement": {"clusters": [cluster]},
            "failover": {"mode": "Singleton", "fenceAfterSeconds": 300, "clockSkewSeconds": 10},
            "manifests": [{
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "single", "namespace": "default"},
                "data": {"leader": "true"},
            }],
        },
    }))?)
}
