//! `idle`: bytes on the wire per agent per hour with nothing changing, counted by the relay,
//! vs a bare quinn mTLS connection with the same keep-alive through the same relay.

use super::bare::{bare_connect, bare_server};
use super::harness::{bench_hub_config, save, singleton, spawn_agent, wait_ready, work};
use super::{BenchArgs, Results};
use crate::fleet::LocalHub;
use crate::relay::{LinkProfile, Relay};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use tether_agent::executor::memory::MemoryExecutor;
use tether_protocol::Labels;

#[derive(Debug, Serialize)]
pub struct Idle {
    pub agents: usize,
    pub window_s: f64,
    pub heartbeat_interval_s: f64,
    /// Every agent held a singleton (confirmed heartbeats).
    pub singletons: bool,
    pub bytes_per_agent_hour: f64,
    pub baseline_bare_quic_bytes_per_conn_hour: f64,
}

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    let i = idle(
        args.idle_agents,
        args.idle_window_s,
        args.idle_heartbeat_s,
        args.idle_singletons,
    )
    .await?;
    println!(
        "idle: {:.0} bytes per agent per hour (heartbeat every {:.0} s{}) vs bare QUIC keep-alive {:.0} bytes/h",
        i.bytes_per_agent_hour,
        i.heartbeat_interval_s,
        if i.singletons { ", each agent holding a singleton" } else { "" },
        i.baseline_bare_quic_bytes_per_conn_hour
    );
    r.idle = Some(i);
    save(&args.out, r)
}

type Agent = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

async fn idle(
    n: usize,
    window_s: u64,
    heartbeat_s: Option<u64>,
    singletons: bool,
) -> anyhow::Result<Idle> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let mut cfg = bench_hub_config(&dir.join("hub"));
    if let Some(s) = heartbeat_s {
        cfg.health.heartbeat_interval = Duration::from_secs(s.max(1));
    }
    let hb = cfg.health.heartbeat_interval;
    let mut hub = LocalHub::start(&dir.join("hub"), cfg).await?;
    let (relays, agents) = start_agents(&hub, n, dir, singletons).await?;
    // Let the delivery, the status and a renewal-free steady state settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bare = bare_server(&tether_hub::config::DataDir::new(dir.join("hub")))?;
    let bare_relay = Relay::start(bare.server.local_addr()?, LinkProfile::default(), 999).await?;
    let (_bep, _bconn) = bare_connect(&bare.client_cfg, bare_relay.front).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a0 = total(&relays);
    let b0 = total(std::slice::from_ref(&bare_relay));
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(window_s)).await;
    let el = t.elapsed().as_secs_f64();
    let a1 = total(&relays);
    let b1 = total(std::slice::from_ref(&bare_relay));
    for (stop, task) in agents {
        let _ = stop.send(true);
        let _ = task.await;
    }
    hub.stop().await;
    Ok(Idle {
        agents: n,
        window_s: el,
        heartbeat_interval_s: hb.as_secs_f64(),
        singletons,
        bytes_per_agent_hour: (a1 - a0) as f64 / n as f64 * 3600.0 / el,
        baseline_bare_quic_bytes_per_conn_hour: (b1 - b0) as f64 * 3600.0 / el,
    })
}

/// `n` agents, each behind its own relay (which counts its bytes), Ready and holding the
/// `bench` work and, with `singletons`, a singleton each.
async fn start_agents(
    hub: &LocalHub,
    n: usize,
    dir: &Path,
    singletons: bool,
) -> anyhow::Result<(Vec<Relay>, Vec<Agent>)> {
    let tok = hub.token(u32::try_from(n)?, true, Labels::new()).await?;
    let mut relays = Vec::new();
    let mut agents = Vec::new();
    for i in 0..n {
        let relay = Relay::start(hub.quic_addr(), LinkProfile::default(), i as u64).await?;
        let (stop, task) = spawn_agent(
            &format!("idle{i:03}"),
            &dir.join("agents"),
            &format!("localhost:{}", relay.front.port()),
            &tok,
            &hub.ca_sha256,
            MemoryExecutor::new(),
            Duration::from_secs(30),
        );
        relays.push(relay);
        agents.push((stop, task));
    }
    wait_ready(hub, n, Duration::from_secs(120)).await?;
    hub.admin()?.apply_work(&work("idle")?).await?;
    if singletons {
        for i in 0..n {
            hub.admin()?
                .apply_work(&singleton(&format!("idle{i:03}"))?)
                .await?;
        }
    }
    Ok((relays, agents))
}

/// Bytes both ways through `relays` so far.
fn total(relays: &[Relay]) -> u64 {
    relays
        .iter()
        .map(|r| {
            let c = r.counters.snapshot();
            c.bytes_up + c.bytes_down
        })
        .sum()
}
