//! Fleet-scale benchmarks (`tether-sim bench`), each next to a baseline measured in the same
//! run so that the ratio means something on a noisy machine. Numbers, not timed tests. Each
//! benchmark's method is in the header of its file.
//!
//! Two kinds of agents: real ones (`tether_agent`, `memory` executor, a redb store each) and
//! protocol-level ones (`lite.rs`: same protocol and TLS stack, state in memory) for the fleet
//! sizes where 10k agent stores fsyncing on the same two cores would be the figure.

mod bare;
mod controller;
mod flood;
mod harness;
mod idle;
mod ingest;
mod ingest_pg;
mod patch;
mod procs;
mod propagation;
mod sessions;
mod storm;

pub use flood::FloodResult;
pub use harness::Pct;
pub use idle::Idle;
pub use ingest::Ingest;
pub use ingest_pg::IngestPg;
pub use patch::Patch;
pub use procs::{server_main, swarm_main};
pub use propagation::Propagation;
pub use sessions::Sessions;
pub use storm::Storm;

use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Which benchmarks, comma-separated: controller, propagation, lite-propagation, ingest,
    /// ingest-pg (needs Debian's postgresql), patch, idle, sessions, storm, flood, or all.
    #[arg(long, default_value = "all")]
    pub only: String,
    /// Fleet sizes for the controller benchmark (decision work per change, 100 works).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,30000")]
    pub controller: Vec<usize>,
    /// Fleet sizes for the propagation benchmark.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub propagation: Vec<usize>,
    /// Fleet sizes for the propagation benchmark with protocol-level agents (`lite.rs`), which
    /// keeps the agents' own stores and fsyncs out of the hub's figure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub lite_propagation: Vec<usize>,
    /// Sessions to hold for the sessions benchmark (protocol-level agents in another process).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub sessions: Vec<usize>,
    /// Agents and measuring window (seconds) of the idle benchmark.
    #[arg(long, default_value_t = 10)]
    pub idle_agents: usize,
    #[arg(long, default_value_t = 120)]
    pub idle_window_s: u64,
    /// Heartbeat interval the hub asks for in the idle benchmark (the hub's
    /// `--heartbeat-interval`); default: the hub's default.
    #[arg(long)]
    pub idle_heartbeat_s: Option<u64>,
    /// In the idle benchmark, give every agent a singleton of its own (failover mode
    /// Singleton), so that its heartbeats are the confirmed kind that fencing needs.
    #[arg(long)]
    pub idle_singletons: bool,
    /// Seconds per side of the ingest benchmark.
    #[arg(long, default_value_t = 5)]
    pub ingest_s: u64,
    /// Fleet sizes for the reconnect-storm benchmark (hub process killed and restarted under N
    /// protocol-level agents).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub storm: Vec<usize>,
    /// Also run each storm once more with the hub's stateless-reset secret deleted before the
    /// restart, to show what the secret is worth.
    #[arg(long)]
    pub storm_control: bool,
    /// Honest handshakes, and Initials per second of the hostile flood, in the flood benchmark.
    #[arg(long, default_value_t = 200)]
    pub flood_attempts: usize,
    #[arg(long, default_value_t = 1000)]
    pub flood_rate: u32,
    /// Directory of plain manifests for the patch benchmark (read as `tetherctl apply -f DIR`);
    /// a synthetic install of 400 Deployments when not given.
    #[arg(long)]
    pub patch_input: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench.json")]
    pub out: PathBuf,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub machine: String,
    pub propagation: Vec<Propagation>,
    pub lite_propagation: Vec<Propagation>,
    pub controller: Vec<tether_hub::parts::ControllerCost>,
    pub ingest: Option<Ingest>,
    pub ingest_pg: Option<IngestPg>,
    pub patch: Option<Patch>,
    pub idle: Option<Idle>,
    pub sessions: Vec<Sessions>,
    pub storm: Vec<Storm>,
    pub flood: Option<FloodResult>,
}

/// The benchmarks `--only` picks, in this order; each saves the results so far when done.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let all = args.only == "all";
    let want = |n: &str| all || args.only.split(',').any(|s| s.trim() == n);
    let mut r = Results {
        machine: harness::machine(),
        ..Default::default()
    };
    if want("controller") {
        controller::run(&args, &mut r).await?;
    }
    if want("ingest") {
        ingest::run(&args, &mut r).await?;
    }
    if want("ingest-pg") {
        ingest_pg::run(&args, &mut r).await?;
    }
    if want("patch") {
        patch::run(&args, &mut r).await?;
    }
    if want("propagation") {
        propagation::run(&args, &mut r).await?;
    }
    if want("lite-propagation") {
        propagation::run_lite(&args, &mut r).await?;
    }
    if want("idle") {
        idle::run(&args, &mut r).await?;
    }
    if want("sessions") {
        sessions::run(&args, &mut r).await?;
    }
    if want("storm") {
        storm::run(&args, &mut r).await?;
    }
    if want("flood") {
        flood::run(&args, &mut r).await?;
    }
    println!("results in {}", args.out.display());
    Ok(())
}
