//! `tether-sim`: run a local Tether fleet.

#![forbid(unsafe_code)]

// The allocator of the shipped (static musl) hub and agent, so that memory figures match them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run a scenario (docs/simulations.md): a real hub and agents behind fault-injecting
    /// relays, a timeline of faults and works, then invariants. Exits 1 if any invariant fails.
    Run {
        /// Scenario files (TOML); each is run in turn.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Seed of the fault schedule (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Run every given seed from --seed to --seed + seeds - 1.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// The short form (CI): times scaled by the scenario's `[short]` table.
        #[arg(long)]
        short: bool,
        /// Directory for report.json and the SVG plots (one sub-directory per scenario and seed).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print each step as it happens.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Fleet-scale benchmarks, each next to a baseline measured in the same run.
    Bench(tether_sim::bench::BenchArgs),
    /// (internal) Server side of the sessions benchmark, in its own process.
    #[command(hide = true)]
    BenchServer {
        #[arg(long)]
        mode: String,
        #[arg(long)]
        dir: PathBuf,
        /// Pin the QUIC address (a restarted hub keeps its port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
    },
    /// (internal) Client side of the sessions benchmark, in its own process.
    #[command(hide = true)]
    BenchSwarm {
        #[arg(long)]
        mode: String,
        #[arg(long)]
        n: usize,
        #[arg(long)]
        quic: String,
        #[arg(long)]
        dir: PathBuf,
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
        Cmd::Run {
            scenarios,
            seed,
            seeds,
            short,
            out,
            verbose,
        } => run_scenarios(scenarios, seed, seeds, short, out, verbose).await,
        Cmd::Bench(args) => tether_sim::bench::run(args).await,
        Cmd::BenchServer {
            mode,
            dir,
            listen,
            admin_listen,
        } => tether_sim::bench::server_main(&mode, &dir, listen, admin_listen).await,
        Cmd::BenchSwarm { mode, n, quic, dir } => {
            tether_sim::bench::swarm_main(&mode, n, &quic, &dir).await
        }
    }
}

async fn run_scenarios(
    files: Vec<PathBuf>,
    seed: Option<u64>,
    seeds: u64,
    short: bool,
    out: Option<PathBuf>,
    verbose: bool,
) -> anyhow::Result<()> {
    if seeds == 0 || seeds > 1000 {
        anyhow::bail!("--seeds must be between 1 and 1000");
    }
    // Parse everything first: a typo in the last file should not cost the runs before it.
    let scenarios = files
        .iter()
        .map(|f| tether_sim::scenario::Scenario::load(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut runs = 0;
    for s in scenarios {
        for k in 0..seeds {
            let seed = seed.unwrap_or(s.seed).wrapping_add(k);
            let dir = out.as_ref().map(|o| {
                o.join(format!(
                    "{}-seed{seed}{}",
                    s.name,
                    if short { "-short" } else { "" }
                ))
            });
            let t = Instant::now();
            let report = tether_sim::sim::run(
                s.clone(),
                tether_sim::sim::RunConfig {
                    seed: Some(seed),
                    short,
                    out: dir.clone(),
                    verbose,
                },
            )
            .await
            .with_context(|| format!("scenario {} seed {seed}", s.name))?;
            println!("{}", tether_sim::sim::summary(&report));
            println!(
                "({:.1}s wall{})",
                t.elapsed().as_secs_f64(),
                dir.map(|d| format!(", report in {}", d.display()))
                    .unwrap_or_default()
            );
            println!();
            runs += 1;
            if !report.passed {
                failed.push(format!("{} seed {seed}", s.name));
            }
        }
    }
    println!(
        "{runs} run(s) in {:.1}s, {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if !failed.is_empty() {
        eprintln!("invariants failed: {}", failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
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
            c.state.as_str(),
            c.facts.arch,
            c.connected,
            labels.join(",")
        );
    }

    // Deliver a Work to every agent and wait until each reports it applied.
    let example = include_str!("../../docs/examples/hello-work.yaml");
    let applied_at = Instant::now();
    for doc in tether_hub::parse_work_documents(example)? {
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
            c.phase.map_or("-", |p| p.as_str()),
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
