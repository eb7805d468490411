//! `propagation`: one work change to N real agents (one process, loopback, no relay): time
//! until the hub recorded every delivery, until every simulated cluster held the new objects,
//! and until the hub had every Applied status; p50/p99/max. Baseline: a raw QUIC
//! request/response round trip (one stream per request, like the hub's) over the same
//! TLS/QUIC settings.
//!
//! `lite-propagation`: the same with N protocol-level agents.
//!
//! Everything runs in this process on one wall clock: the hub's delivery record
//! (`delivered_at_ms`, written when the WorkAck is committed), the agent's status
//! (`observed_at_ms`, when the apply finished) and the hub's status log (`received_at_ms`,
//! when the Applied status was committed) give millisecond timestamps without polling.

use super::bare::{bare_server, fan_out, quic_rtt, FanOut};
use super::harness::{
    bench_hub_config, connect_limit, init_hub_dir, pct, provision_lite, save, spawn_agent,
    wait_all_applied, wait_ready, wait_sessions, work, Pct, LITE_CONNECTS_PER_S,
};
use super::{BenchArgs, Results};
use crate::fleet::LocalHub;
use crate::lite::{LiteFleet, LiteIdentity};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use tether_agent::executor::memory::MemoryExecutor;
use tether_protocol::Labels;

#[derive(Debug, Serialize)]
pub struct Propagation {
    pub agents: usize,
    pub join_s: f64,
    /// From the apply call until the hub committed the agent's WorkAck (`delivered_at_ms`).
    pub delivered: Pct,
    /// Until the agent finished applying it (the status's `observed_at_ms`; same clock).
    pub cluster_applied: Pct,
    /// Until the hub committed the agent's Applied status (status log `received_at_ms`).
    pub hub_applied: Pct,
    /// Baseline: raw QUIC request/response round trip.
    pub baseline_quic_rtt: Pct,
    /// Baseline for protocol-level agents: the same two exchanges to as many bare quinn
    /// connections at once (`bare::fan_out`).
    pub baseline_fan_out: Option<FanOut>,
}

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    for &n in &args.propagation {
        let p = propagation(n).await?;
        println!(
            "propagation to {n} agents: delivered p50 {:.0} ms p99 {:.0} ms; cluster applied p50 {:.0} ms p99 {:.0} ms; hub has Applied p50 {:.0} ms p99 {:.0} ms; raw QUIC RTT p50 {:.2} ms p99 {:.2} ms",
            p.delivered.p50_ms, p.delivered.p99_ms, p.cluster_applied.p50_ms, p.cluster_applied.p99_ms,
            p.hub_applied.p50_ms, p.hub_applied.p99_ms, p.baseline_quic_rtt.p50_ms, p.baseline_quic_rtt.p99_ms
        );
        r.propagation.push(p);
        save(&args.out, r)?;
    }
    Ok(())
}

pub(super) async fn run_lite(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    for &n in &args.lite_propagation {
        let p = lite_propagation(n).await?;
        println!(
            "propagation to {n} protocol-level agents: delivered p50 {:.0} ms p99 {:.0} ms; agent received p50 {:.0} ms p99 {:.0} ms; hub has Applied p50 {:.0} ms p99 {:.0} ms; raw QUIC RTT p50 {:.2} ms p99 {:.2} ms",
            p.delivered.p50_ms, p.delivered.p99_ms, p.cluster_applied.p50_ms, p.cluster_applied.p99_ms,
            p.hub_applied.p50_ms, p.hub_applied.p99_ms, p.baseline_quic_rtt.p50_ms, p.baseline_quic_rtt.p99_ms
        );
        if let Some(f) = &p.baseline_fan_out {
            println!(
                "  bare quinn fan-out, the same two exchanges to {n} connections at once: delivered p50 {:.0} ms p99 {:.0} ms, statuses read p50 {:.0} ms p99 {:.0} ms; hub / floor at p99: delivered {:.1}x, Applied {:.1}x",
                f.delivered.p50_ms, f.delivered.p99_ms, f.reported.p50_ms, f.reported.p99_ms,
                p.delivered.p99_ms / f.delivered.p99_ms.max(0.001),
                p.hub_applied.p99_ms / f.reported.p99_ms.max(0.001)
            );
        }
        r.lite_propagation.push(p);
        save(&args.out, r)?;
    }
    Ok(())
}

type RealAgent = (
    String,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

/// Milliseconds from `t0` to each agent's delivery, applied status and stored status.
#[derive(Default)]
struct Timings {
    delivered: Vec<f64>,
    cluster: Vec<f64>,
    applied: Vec<f64>,
}

async fn propagation(n: usize) -> anyhow::Result<Propagation> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let mut hub = LocalHub::start(&dir.join("hub"), bench_hub_config(&dir.join("hub"))).await?;
    let tok = hub.token(u32::try_from(n)?, true, Labels::new()).await?;
    let started = Instant::now();
    let agents = start_agents(&hub, &tok, n, &dir.join("agents")).await;
    let limit = Duration::from_secs(120) + Duration::from_millis(200 * n as u64);
    wait_ready(&hub, n, limit).await?;
    let join_s = started.elapsed().as_secs_f64();
    let admin = hub.admin()?;
    // Warm-up generation, then the measured change.
    admin.apply_work(&work("warm")?).await?;
    wait_all_applied(&admin, n, 1).await?;
    let t0 = tether_hub::util::now_ms();
    let g = admin.apply_work(&work("measured")?).await?.generation;
    wait_reported(&admin, n, g).await;
    let t = real_timings(&hub, &admin, &agents, g, t0).await?;
    let bare = bare_server(&tether_hub::config::DataDir::new(dir.join("hub")))?;
    let baseline = quic_rtt(&bare, 500).await?;
    for (_, stop, task) in agents {
        let _ = stop.send(true);
        let _ = task.await;
    }
    hub.stop().await;
    Ok(Propagation {
        agents: n,
        join_s,
        delivered: pct(t.delivered),
        cluster_applied: pct(t.cluster),
        hub_applied: pct(t.applied),
        baseline_quic_rtt: baseline,
        baseline_fan_out: None,
    })
}

async fn start_agents(hub: &LocalHub, tok: &str, n: usize, dir: &Path) -> Vec<RealAgent> {
    let addr = format!("localhost:{}", hub.quic_addr().port());
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let (stop, task) = spawn_agent(
            &format!("p{i:05}"),
            dir,
            &addr,
            tok,
            &hub.ca_sha256,
            MemoryExecutor::new(),
            Duration::from_secs(30),
        );
        agents.push((format!("p{i:05}"), stop, task));
        // Pace the joins a little: a thundering herd of CSRs only measures the join path.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    agents
}

/// Until the hub has generation `g` applied everywhere; after 300 s the figures are taken
/// anyway, with whoever reported.
async fn wait_reported(admin: &tether_hub::AdminClient, n: usize, g: u64) {
    let start = Instant::now();
    loop {
        if let Ok(d) = admin.work("bench").await {
            if d.summary.generation == g && d.summary.applied >= n {
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            tracing::warn!("not every agent reported the change within 300 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn real_timings(
    hub: &LocalHub,
    admin: &tether_hub::AdminClient,
    agents: &[RealAgent],
    g: u64,
    t0: u64,
) -> anyhow::Result<Timings> {
    let mut t = Timings::default();
    let since = |ms: u64| ms.saturating_sub(t0) as f64;
    for (name, _, _) in agents {
        let key = tether_store::hub::cluster_work_key(name, "bench");
        let row = hub
            .running()
            .state
            .store
            .read(|tx| tx.get(&tether_store::hub::CLUSTER_WORKS, &key))?;
        if let Some(row) = row {
            if row.delivered.as_ref().is_some_and(|h| h.generation == g) {
                if let Some(at) = row.delivered_at_ms {
                    t.delivered.push(since(at));
                }
            }
            if let Some(s) = row.status.filter(|s| s.generation == g) {
                t.cluster.push(since(s.observed_at_ms));
            }
        }
        if let Ok(log) = admin.status_log(name).await {
            if let Some(e) = log.iter().find(|e| e.generation == g) {
                t.applied.push(since(e.received_at_ms));
            }
        }
    }
    Ok(t)
}

/// Propagation to `n` protocol-level agents (`lite.rs`) in this process: the hub's share of
/// the work without `n` agent stores fsyncing on the same disk.
async fn lite_propagation(n: usize) -> anyhow::Result<Propagation> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    init_hub_dir(&dir.join("hub"))?;
    let ids = provision_lite(dir, "lp", n).await?;
    let mut hub = LocalHub::start(&dir.join("hub"), bench_hub_config(&dir.join("hub"))).await?;
    let ca = std::fs::read_to_string(hub.cfg.data_dir.ca_cert())?;
    let started = Instant::now();
    let fleet = LiteFleet::start(&ids, &ca, hub.quic_addr(), LITE_CONNECTS_PER_S).await?;
    let admin = hub.admin()?;
    wait_sessions(&admin, n, connect_limit(n), Duration::from_millis(500)).await?;
    let join_s = started.elapsed().as_secs_f64();
    // Waiting on the agents' memory: polling `describe work` (10k rows) every 100 ms took
    // most of a core from the hub it measured.
    admin.apply_work(&work("warm")?).await?;
    wait_fleet_reported(&fleet, 1).await?;
    wait_all_applied(&admin, n, 1).await?;
    let t0 = tether_hub::util::now_ms();
    let g = admin.apply_work(&work("measured")?).await?.generation;
    wait_fleet_reported(&fleet, g).await?;
    wait_all_applied(&admin, n, g).await?;
    let t = lite_timings(&hub, &ids, &fleet, g, t0)?;
    let bare = bare_server(&hub.cfg.data_dir)?;
    let baseline = quic_rtt(&bare, 500).await?;
    fleet.stop().await;
    hub.stop().await;
    // After the hub and the fleet are gone, so that the floor has the machine to itself as
    // the propagation had.
    let floor = fan_out(&hub.cfg.data_dir, n).await?;
    anyhow::ensure!(
        t.delivered.len() == n && t.cluster.len() == n && t.applied.len() == n,
        "incomplete: delivered {} received {} applied {} of {n}",
        t.delivered.len(),
        t.cluster.len(),
        t.applied.len()
    );
    Ok(Propagation {
        agents: n,
        join_s,
        delivered: pct(t.delivered),
        cluster_applied: pct(t.cluster),
        hub_applied: pct(t.applied),
        baseline_quic_rtt: baseline,
        baseline_fan_out: Some(floor),
    })
}

/// Until every lite agent has generation `g` of the bench work and no unacknowledged status.
async fn wait_fleet_reported(fleet: &LiteFleet, g: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    while !fleet.all_reported("bench", g) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "generation {g} not reported by every agent in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// As `real_timings`, with "cluster" the moment the lite agent received the delivery.
fn lite_timings(
    hub: &LocalHub,
    ids: &[LiteIdentity],
    fleet: &LiteFleet,
    g: u64,
    t0: u64,
) -> anyhow::Result<Timings> {
    let since = |ms: u64| ms.saturating_sub(t0) as f64;
    let store = hub.running().state.store.clone();
    let mut delivered = Vec::with_capacity(ids.len());
    for id in ids {
        let key = tether_store::hub::cluster_work_key(&id.name, "bench");
        if let Some(row) = store.read(|tx| tx.get(&tether_store::hub::CLUSTER_WORKS, &key))? {
            if row.delivered.as_ref().is_some_and(|h| h.generation == g) {
                if let Some(at) = row.delivered_at_ms {
                    delivered.push(since(at));
                }
            }
        }
    }
    let cluster = fleet
        .agents
        .iter()
        .filter_map(|a| {
            a.received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get("bench")
                .filter(|(gen, _)| *gen == g)
                .map(|(_, at)| since(*at))
        })
        .collect();
    // One pass over every cluster's status history, oldest first within each cluster.
    let log = store.read(tether_hub::parts::all_history)?;
    let mut first = std::collections::HashMap::new();
    for e in log {
        if e.status.work == "bench" && e.status.generation == g {
            first.entry(e.cluster).or_insert(e.received_at_ms);
        }
    }
    let applied = first.values().map(|&at| since(at)).collect();
    Ok(Timings {
        delivered,
        cluster,
        applied,
    })
}
