//! Fleet-scale benchmarks, each next to a baseline measured in the same run.

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Which benchmarks: propagation, ingest, idle, sessions (comma-separated) or all.
    #[arg(long, default_value = "all")]
    pub only: String,
}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
