//! `tether-sim`: run a local Tether fleet.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_agent::executor::dir::DirExecutor;
use tether_agent::executor::AnyExecutor;
use tether_hub::HubConfig;
use tether_protocol::Labels;
use tether_sim::fleet::{all_in_state, wait_for, AgentSpec, LocalAgent, LocalHub};

#[derive(Parser)]
#[command(
    name = "tether-sim",
    version,
    about = "Run Tether fleets on one machine."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local hub and N agents (in this process, over loopback QUIC with mutual TLS),
    /// join them with an auto-approve token, and show them Ready. Runs until Ctrl-C; the printed
    /// TETHER_CONFIG lets you use `tetherctl` against it meanwhile.
    Demo {
        /// Where the hub and agents keep their state. Reused if it exists.
        #[arg(long, default_value = "tether-demo")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        agents: usize,
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:7444")]
        admin_listen: SocketAddr,
        /// Exit once every agent is Ready instead of running until Ctrl-C.
        #[arg(long)]
        exit_when_ready: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Demo {
            data_dir,
            agents,
            listen,
            admin_listen,
            exit_when_ready,
        } => demo(data_dir, agents, listen, admin_listen, exit_when_ready).await,
    }
}

async fn demo(
    dir: PathBuf,
    agents: usize,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    exit_when_ready: bool,
) -> anyhow::Result<()> {
    if agents == 0 || agents > 1000 {
        anyhow::bail!("--agents must be between 1 and 1000");
    }
    let started = Instant::now();
    let mut cfg = HubConfig::new(dir.join("hub"));
    cfg.listen = listen;
    cfg.admin_listen = admin_listen;
    cfg.health.heartbeat_interval = Duration::from_secs(2);
    let mut hub = LocalHub::start(&dir.join("hub"), cfg)
        .await
        .context("starting the hub")?;
    println!(
        "hub up: agents on udp/{}, admin API on https://{}",
        hub.quic_addr(),
        hub.cfg.admin_listen
    );
    println!("CA fingerprint: {}", hub.ca_sha256);
    let token = hub
        .token(
            agents as u32,
            true,
            Labels::from([("env".to_string(), "demo".to_string())]),
        )
        .await?;
    let names: Vec<String> = (1..=agents).map(|i| format!("store-{i:03}")).collect();
    let fleet: Vec<LocalAgent> = names
        .iter()
        .map(|name| {
            let manifests = dir.join("agents").join(name).join("manifests");
            let executor = DirExecutor::new(&manifests)
                .with_context(|| format!("preparing {}", manifests.display()))?;
            Ok(LocalAgent::spawn(AgentSpec {
                name: name.clone(),
                data_dir: dir.join("agents").join(name),
                hub: format!("localhost:{}", hub.quic_addr().port()),
                token: token.clone(),
                ca_sha256: hub.ca_sha256.clone(),
                labels: Labels::new(),
                executor: Arc::new(AnyExecutor::Dir(executor)),
                reconcile_interval: Duration::from_secs(10),
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let admin = hub.admin()?;
    let clusters = wait_for(
        &admin,
        Duration::from_secs(60),
        "all agents Ready",
        all_in_state(&names, "Ready"),
    )
    .await?;
    println!(
        "{} agents joined and Ready in {:.2?}:",
        agents,
        started.elapsed()
    );
    println!(
        "{:<12} {:<8} {:<8} {:<10} LABELS",
        "NAME", "STATE", "ARCH", "CONNECTED"
    );
    for c in clusters.iter().filter(|c| names.contains(&c.name)) {
        let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<12} {:<8} {:<8} {:<10} {}",
            c.name,
            c.state,
            c.facts.arch,
            c.connected,
            labels.join(",")
        );
    }

    // Deliver a Work to every agent and wait until each reports it applied.
    let example = include_str!("../../docs/examples/hello-work.yaml");
    let applied_at = Instant::now();
    for doc in tether_hub::ctl::parse_work_documents(example)? {
        admin.apply_work(&doc).await?;
    }
    let detail = loop {
        let d = admin.work("hello").await?;
        if d.summary.applied == agents && d.summary.targeted == agents {
            break d;
        }
        if applied_at.elapsed() > Duration::from_secs(60) {
            anyhow::bail!(
                "work hello not applied everywhere within 60s: {:?}",
                d.summary
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!();
    println!(
        "work/hello (generation {}) delivered and applied on {} agents in {:.2?}:",
        detail.summary.generation,
        detail.summary.applied,
        applied_at.elapsed()
    );
    for c in &detail.clusters {
        println!(
            "  {:<12} {:<8} {}",
            c.cluster,
            c.phase.as_deref().unwrap_or("-"),
            dir.join("agents")
                .join(&c.cluster)
                .join("manifests")
                .join("tether-hello.yaml")
                .display()
        );
    }
    if !exit_when_ready {
        println!();
        println!(
            "Try: export TETHER_CONFIG={}",
            dir.join("hub").join("tetherctl.yaml").display()
        );
        println!("     cargo run -q -p tether-hub --bin tetherctl -- clusters list");
        println!("     cargo run -q -p tether-hub --bin tetherctl -- describe work hello");
        println!("Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    for a in fleet {
        if let Err(e) = a.stop().await {
            eprintln!("agent stopped with error: {e}");
        }
    }
    hub.stop().await;
    Ok(())
}
