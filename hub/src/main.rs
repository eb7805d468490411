//! `tether-hub`: initialise a hub data directory, or serve.

#![forbid(unsafe_code)]

// Static musl builds (cross/): mimalloc, as musl's malloc collapses under contention.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tether_hub::config::DataDir;
use tether_hub::init::{init, InitOptions};
use tether_hub::util::{now_ms, parse_duration};
use tether_hub::HubConfig;

#[derive(Parser)]
#[command(
    name = "tether-hub",
    version,
    about = "Tether hub: the cloud side of a Tether fleet.",
    long_about = "Tether hub: the cloud side of a Tether fleet.\n\nAgents dial the hub over QUIC with mutual TLS; the hub never dials an agent.\nStart with `tether-hub init`, then `tether-hub serve`, then manage clusters with `tetherctl`."
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the hub CA, serving certificate, admin credential and database in a new directory.
    ///
    /// Prints the CA fingerprint that agents pin with `--ca-sha256`. Refuses to touch a directory
    /// that is already initialised.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// DNS name (or IP) agents use to reach the hub; goes into the serving certificate.
        #[arg(long)]
        hub_name: String,
        /// Extra names or IPs for the serving certificate (repeatable). Loopback names are
        /// always included.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Admin API address to write into tetherctl.yaml (must match `serve --admin-listen`).
        #[arg(long, default_value = "127.0.0.1:7444")]
        admin_listen: SocketAddr,
    },
    /// Run the hub: the agent listener (QUIC/UDP) and the admin API (HTTPS/TCP).
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        /// UDP address for agent sessions.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// TCP address for the admin API and /metrics. Keep it private.
        #[arg(long, default_value = "127.0.0.1:7444")]
        admin_listen: SocketAddr,
        /// Heartbeat period agents are asked to use; Unknown after 3 missed. Each idle
        /// heartbeat is one small datagram and its ACK (~70 B): 15s is ~17 KB per agent-hour.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        heartbeat_interval: Duration,
        /// A cluster without a session for this long is Offline.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        offline_grace: Duration,
        /// Lifetime of the client certificates the hub issues.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        cert_validity: Duration,
        /// Largest frame accepted from an agent, in bytes.
        #[arg(long, default_value_t = tether_protocol::DEFAULT_MAX_FRAME)]
        max_frame: usize,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.cmd {
        Cmd::Init {
            data_dir,
            hub_name,
            sans,
            admin_listen,
        } => {
            let report = init(
                &InitOptions {
                    data_dir: DataDir::new(&data_dir),
                    hub_name: hub_name.clone(),
                    sans,
                    admin_listen,
                },
                now_ms(),
            )?;
            println!("Initialised hub data directory {}", data_dir.display());
            println!("CA fingerprint (agents pin this with --ca-sha256):");
            println!("  {}", report.ca_sha256);
            println!(
                "Admin credential for tetherctl: {}",
                report.ctl_config.display()
            );
            println!();
            println!("Next:");
            println!("  tether-hub serve --data-dir {}", data_dir.display());
            println!("  export TETHER_CONFIG={}", report.ctl_config.display());
            println!("  tetherctl token create --ttl 24h");
            println!(
                "  tether-agent run --hub {hub_name}:7443 --token <TOKEN> --ca-sha256 {} --name <CLUSTER> --data-dir <DIR>",
                report.ca_sha256
            );
            Ok(())
        }
        Cmd::Serve {
            data_dir,
            listen,
            admin_listen,
            heartbeat_interval,
            offline_grace,
            cert_validity,
            max_frame,
        } => {
            if heartbeat_interval.is_zero()
                || offline_grace.is_zero()
                || cert_validity < Duration::from_secs(60)
            {
                anyhow::bail!("--heartbeat-interval and --offline-grace must be positive and --cert-validity at least 1m");
            }
            let mut cfg = HubConfig::new(&data_dir);
            cfg.listen = listen;
            cfg.admin_listen = admin_listen;
            cfg.health.heartbeat_interval = heartbeat_interval;
            cfg.health.offline_grace = offline_grace;
            cfg.cert_validity = cert_validity;
            cfg.limits.max_frame = max_frame;
            let hub = tether_hub::start(cfg).await.context("starting the hub")?;
            println!(
                "hub listening: agents on udp/{}, admin API on https://{}",
                hub.quic_addr, hub.admin_addr
            );
            hub.run_until_signal().await
        }
    }
}
