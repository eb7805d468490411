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
use tether_hub::config::{DataDir, StoreLocation};
use tether_hub::util::{now_ms, parse_duration};
use tether_hub::HubConfig;
use tether_hub::{init, InitOptions};

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

/// Where the hub's tables live.
#[derive(clap::Args)]
struct StoreArg {
    /// `embedded` (hub.redb in --data-dir), or a PostgreSQL URL (postgres://user@host:5432/db)
    /// for a database that outlives this machine. The data directory holds the hub's keys
    /// either way. Prefer TETHER_STORE to the command line for a URL with a password, which
    /// `ps` would show.
    ///
    /// TLS to PostgreSQL is set in the URL, as with libpq:
    /// `?sslmode=require&sslrootcert=/path/ca.pem` connects only over TLS, to a server whose
    /// certificate that CA signed for the URL's host. Every encrypted connection is verified so
    /// (without sslrootcert, against the system's CA certificates). The default,
    /// sslmode=prefer, verifies the same way when the server offers TLS, but uses plain text
    /// when it offers none, which an attacker on the path can fake: use require.
    /// sslmode=disable is plain text; sslcert= and sslkey= add a client certificate.
    #[arg(long, env = "TETHER_STORE", default_value = "embedded", value_parser = StoreLocation::parse, hide_env_values = true)]
    store: StoreLocation,
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
        #[command(flatten)]
        store: StoreArg,
    },
    /// Run the hub: the agent listener (QUIC/UDP) and the admin API (HTTPS/TCP).
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        store: StoreArg,
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
        /// With a PostgreSQL store: every hub started on the same database serves, and the
        /// one holding the lease decides; this is how long the lease (and each replica's
        /// liveness) lasts unrenewed, so how soon another replica decides after the holder
        /// died, and how long a replica cut off from the database keeps its agents.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        lease_ttl: Duration,
    },
    /// Write a consistent snapshot of the hub database to a new file, while the hub serves
    /// (through its admin API, with the credential in DATA_DIR/tetherctl.yaml) or while it is
    /// stopped (directly). Run it on the hub's machine; copy the file somewhere safe.
    Backup {
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file to create (never overwritten).
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Replace the hub database with a backup. The hub must be stopped; the database it
    /// replaces is kept beside it as hub.redb.replaced-<ms>. See docs/recovery.md for what a
    /// restored hub does not know.
    Restore {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        store: StoreArg,
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
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain: what an operator (or systemd's journal)
            // needs, without a backtrace.
            eprintln!("tether-hub: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init {
            data_dir,
            hub_name,
            sans,
            admin_listen,
            store,
        } => {
            let serve_store = match &store.store {
                StoreLocation::Embedded => String::new(),
                StoreLocation::Postgres(_) => " --store $TETHER_STORE".to_string(),
            };
            let report = init(
                &InitOptions {
                    data_dir: DataDir::new(&data_dir),
                    hub_name: hub_name.clone(),
                    sans,
                    admin_listen,
                    store: store.store,
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
            println!(
                "  tether-hub serve --data-dir {}{serve_store}",
                data_dir.display()
            );
            println!("  export TETHER_CONFIG={}", report.ctl_config.display());
            println!("  tetherctl token create --ttl 24h");
            println!(
                "  tether-agent run --hub {hub_name}:7443 --token <TOKEN> --ca-sha256 {} --name <CLUSTER> --data-dir <DIR>",
                report.ca_sha256
            );
            Ok(())
        }
        Cmd::Backup { store, .. } | Cmd::Restore { store, .. }
            if store.store != StoreLocation::Embedded =>
        {
            anyhow::bail!("this hub's tables are in PostgreSQL: back them up and restore them with PostgreSQL's tools (pg_basebackup or continuous archiving, pg_dump/pg_restore, or your provider's snapshots), and the data directory's keys with your secrets (docs/ha.md)")
        }
        Cmd::Backup { data_dir, to, .. } => backup(&DataDir::new(&data_dir), &to).await,
        Cmd::Restore { data_dir, from, .. } => {
            let data = DataDir::new(&data_dir);
            let r = tether_hub::backup::restore(&data.database(), &from, now_ms())?;
            println!(
                "restored {} from the backup taken at {} ({} clusters, {} works)",
                data.database().display(),
                tether_hub::util::rfc3339(r.taken_at_ms),
                r.clusters,
                r.works
            );
            println!(
                "carried over from the replaced database: {} revoked certificates, {} denials",
                r.revocations_kept, r.denials_kept
            );
            if let Some(old) = r.replaced {
                println!("the database it replaced is kept as {}", old.display());
            }
            println!(
                "start the hub with `tether-hub serve --data-dir {}`",
                data_dir.display()
            );
            Ok(())
        }
        Cmd::Serve {
            data_dir,
            store,
            listen,
            admin_listen,
            heartbeat_interval,
            offline_grace,
            cert_validity,
            max_frame,
            lease_ttl,
        } => {
            if heartbeat_interval.is_zero()
                || offline_grace.is_zero()
                || cert_validity < Duration::from_secs(60)
            {
                anyhow::bail!("--heartbeat-interval and --offline-grace must be positive and --cert-validity at least 1m");
            }
            let mut cfg = HubConfig::new(&data_dir);
            cfg.store = store.store;
            cfg.listen = listen;
            cfg.admin_listen = admin_listen;
            cfg.health.heartbeat_interval = heartbeat_interval;
            cfg.health.offline_grace = offline_grace;
            cfg.cert_validity = cert_validity;
            cfg.limits.max_frame = max_frame;
            anyhow::ensure!(
                lease_ttl >= Duration::from_secs(1),
                "--lease-ttl must be at least 1s"
            );
            cfg.lease_ttl = lease_ttl;
            let hub = tether_hub::start(cfg).await.context("starting the hub")?;
            println!(
                "hub listening: agents on udp/{}, admin API on https://{}",
                hub.quic_addr, hub.admin_addr
            );
            hub.run_until_signal().await
        }
    }
}

/// Through the serving hub when there is one, else directly on the (unlocked) database.
async fn backup(data: &DataDir, to: &std::path::Path) -> anyhow::Result<()> {
    let to = std::path::absolute(to).with_context(|| format!("resolving {}", to.display()))?;
    anyhow::ensure!(
        !to.exists(),
        "{} exists; a backup never overwrites a file",
        to.display()
    );
    let info = match tether_store::Store::open_existing(data.database()) {
        Err(tether_store::StoreError::Locked { .. }) => {
            let cfg = tether_hub::config::CtlConfig::load(&data.ctl_config())?;
            let client = tether_hub::AdminClient::new(&cfg)?;
            client
                .backup(&to.display().to_string())
                .await
                .context("asking the serving hub for a backup")?
        }
        Ok(store) => tether_hub::backup::write_backup(&store, &to, now_ms())
            .with_context(|| format!("writing {}", to.display()))?,
        Err(e) => return Err(e).context("opening the hub database"),
    };
    println!(
        "backup written to {} ({} tables, {} rows, {} bytes)",
        info.path, info.tables, info.rows, info.bytes
    );
    Ok(())
}
