//! `tether-agent`: the edge side of a Tether fleet. Dials out only.

#![forbid(unsafe_code)]

// Static musl builds (cross/): mimalloc, as musl's malloc collapses under contention.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tether_agent::executor::dir::DirExecutor;
use tether_agent::executor::kube::KubeExecutor;
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::AnyExecutor;
use tether_agent::policy::{Enforcing, Policy};
use tether_agent::{AgentError, JoinOptions, RunOptions, Shutdown};
use tether_protocol::names::parse_label;
use tether_store::agent::{CURRENT, IDENTITY, PENDING_JOIN};
use tether_store::StoreError;

#[derive(Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "Tether edge agent: joins a hub and keeps one outbound QUIC session with mutual TLS.",
    long_about = "Tether edge agent: joins a hub and keeps one outbound QUIC session with mutual TLS.\n\nThe agent only dials out; the hub never connects to it. First `join` (or `run` with join flags),\nthen `run`.\n\nExit codes: 1 other errors; 2 configuration (flags, not joined); 3 the hub cut this cluster off on\npurpose (denied, detached, revoked): do not restart blindly; 4 the agent database (DATA_DIR/agent.redb)\nis damaged beyond repair: move it away, have `tetherctl clusters detach NAME` run on the hub, join\nagain; 130 interrupted. A full disk is waited out (retried with backoff), not an exit."
)]
struct Cli {
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

#[derive(Args, Clone)]
struct JoinFlags {
    /// Hub address HOST:PORT (repeatable). Every address of every name is used: each agent
    /// prefers its own (rendezvous hashing of its name), so agents spread over hub replicas,
    /// and moves to its next choice when one fails. Names are resolved again on every round.
    #[arg(long = "hub")]
    hubs: Vec<String>,
    /// Bootstrap token from `tetherctl token create`.
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// SHA-256 fingerprint of the hub CA, as printed by `tether-hub init`.
    #[arg(long)]
    ca_sha256: Option<String>,
    /// Cluster name (lowercase letters, digits and '-').
    #[arg(long)]
    name: Option<String>,
    /// Label to request for this cluster (repeatable, k=v).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Request to join a hub and wait until an administrator (or an auto-approve token) decides.
    Join {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        join: JoinFlags,
    },
    /// Keep a session with the hub (joining first if join flags are given and not yet joined).
    Run {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        join: JoinFlags,
        /// Longest wait between reconnect attempts (exponential backoff with full jitter).
        #[arg(long, default_value = "60s", value_parser = parse_secs)]
        backoff_cap: Duration,
        /// How works are applied: `kube` (server-side apply to the cluster from the in-cluster
        /// config or KUBECONFIG), `dir:PATH` (write each work as PATH/tether-<work>.yaml, e.g. k3s's
        /// auto-deploy folder /var/lib/rancher/k3s/server/manifests) or `memory` (testing).
        #[arg(long, default_value = "kube", value_parser = parse_executor)]
        executor: ExecutorChoice,
        /// Enforce the desired state this often even when nothing changed (repairs drift).
        #[arg(long, default_value = "30s", value_parser = parse_secs)]
        reconcile_interval: Duration,
        /// This cluster's consent policy (YAML): which namespaces, kinds and privileges the
        /// hub may use here. Without it a safe default holds: no cluster-admin or anonymous
        /// bindings, no admission webhooks, nothing in kube-system, no privileged or
        /// host-level pods. The hub cannot change it; refusals show in `describe work`.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Deletion circuit breaker: the largest share (percent) of the objects this agent
        /// manages that it deletes within 10 minutes; a removal or prune beyond it is held and
        /// reported until confirmed with `confirm-removal`. At least 10 objects are always
        /// allowed; 100 turns the breaker off.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
        deletion_breaker: u8,
        /// Take confirmations of held deletions on this cluster only (`confirm-removal`),
        /// refusing those an operator sends through the hub (`tetherctl works confirm-removal`).
        #[arg(long)]
        local_confirmations_only: bool,
        /// How long a request or heartbeat may go unanswered before the session counts as
        /// lost and the agent moves to the next hub address. Lower it to move off a dead hub
        /// replica sooner; on a lossy link a lower value costs needless reconnects.
        #[arg(long, default_value = "10s", value_parser = parse_secs)]
        hub_timeout: Duration,
    },
    /// Let one held removal or prune of WORK through the deletion circuit breaker (works
    /// while the agent runs; used once).
    ConfirmRemoval {
        #[arg(long)]
        data_dir: PathBuf,
        work: String,
    },
    /// Wipe this agent's identity (key, certificate, pending join). The hub keeps its record
    /// until an administrator detaches the cluster. What the hub delivered keeps running
    /// unless --remove-objects is given.
    Leave {
        #[arg(long)]
        data_dir: PathBuf,
        /// First remove every work this agent manages, as a removal from the hub would
        /// (objects Tether created are deleted, ones it adopted are released). Stop the agent
        /// first. If a removal fails the identity is kept, so the command can be retried.
        #[arg(long)]
        remove_objects: bool,
        /// With --remove-objects: where the works were applied (as for `run`).
        #[arg(long, default_value = "kube", value_parser = parse_executor)]
        executor: ExecutorChoice,
    },
    /// Show this agent's identity, and its session while it runs (from `status.json`, which
    /// the running agent writes: it holds the database's lock).
    Status {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Clone, Debug)]
enum ExecutorChoice {
    Kube,
    Dir(PathBuf),
    Memory,
}

fn parse_executor(s: &str) -> Result<ExecutorChoice, String> {
    match s {
        "kube" => Ok(ExecutorChoice::Kube),
        "memory" => Ok(ExecutorChoice::Memory),
        _ => match s.strip_prefix("dir:") {
            Some(p) if !p.is_empty() => Ok(ExecutorChoice::Dir(PathBuf::from(p))),
            _ => Err(format!(
                "unknown executor {s:?}: use `kube`, `dir:PATH` or `memory`"
            )),
        },
    }
}

async fn build_executor(choice: &ExecutorChoice) -> Result<AnyExecutor, AgentError> {
    Ok(match choice {
        ExecutorChoice::Memory => AnyExecutor::Memory(MemoryExecutor::new()),
        ExecutorChoice::Dir(p) => {
            AnyExecutor::Dir(DirExecutor::new(p).map_err(|e| AgentError::Config(e.to_string()))?)
        }
        ExecutorChoice::Kube => AnyExecutor::Kube(KubeExecutor::connect().await.map_err(|e| {
            AgentError::Config(format!(
                "--executor kube: {e} (or pick another executor: --executor dir:PATH)"
            ))
        })?),
    })
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1000)
    };
    num.parse::<u64>()
        .map(|n| Duration::from_millis(n * mult))
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 30s, 5m"))
}

fn join_options(
    data_dir: &std::path::Path,
    f: &JoinFlags,
    backoff_cap: Duration,
) -> Result<JoinOptions, AgentError> {
    let missing = |flag: &str| AgentError::Config(format!("{flag} is required to join"));
    if f.hubs.is_empty() {
        return Err(missing("--hub"));
    }
    Ok(JoinOptions {
        hubs: f.hubs.clone(),
        token: f.token.clone().ok_or_else(|| missing("--token"))?,
        ca_sha256: f.ca_sha256.clone().ok_or_else(|| missing("--ca-sha256"))?,
        name: f.name.clone().ok_or_else(|| missing("--name"))?,
        labels: f.labels.iter().cloned().collect(),
        data_dir: data_dir.to_path_buf(),
        poll_interval: Duration::from_secs(2),
        backoff_cap,
    })
}

fn has_join_flags(f: &JoinFlags) -> bool {
    !f.hubs.is_empty() || f.token.is_some() || f.ca_sha256.is_some() || f.name.is_some()
}

fn shutdown_on_signal() -> Shutdown {
    let (tx, rx) = Shutdown::new();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received, shutting down");
        let _ = tx.send(true);
    });
    rx
}

async fn real_main(cli: Cli) -> Result<(), AgentError> {
    match cli.cmd {
        Cmd::Join { data_dir, join } => {
            let opts = join_options(&data_dir, &join, Duration::from_secs(60))?;
            let id = tether_agent::join(&opts, shutdown_on_signal()).await?;
            println!(
                "joined as cluster {}; start the session with `tether-agent run --data-dir {}`",
                id.name,
                data_dir.display()
            );
            Ok(())
        }
        Cmd::Run {
            data_dir,
            join,
            backoff_cap,
            executor,
            reconcile_interval,
            policy,
            deletion_breaker,
            local_confirmations_only,
            hub_timeout,
        } => {
            if hub_timeout < Duration::from_secs(1) {
                return Err(AgentError::Config(format!(
                    "--hub-timeout {hub_timeout:?} is too short: a heartbeat needs a round trip; use 1s or more"
                )));
            }
            let shutdown = shutdown_on_signal();
            let policy = match &policy {
                Some(p) => Policy::load(p).map_err(|e| AgentError::Config(e.to_string()))?,
                None => Policy::default(),
            };
            let executor = Arc::new(Enforcing::new(build_executor(&executor).await?, policy));
            let store = tether_agent::open_store_waiting(
                &data_dir,
                Duration::from_millis(500),
                shutdown.clone(),
            )
            .await?;
            let joined = store.read(|tx| tx.get(&IDENTITY, CURRENT))?.is_some();
            drop(store);
            if !joined && has_join_flags(&join) {
                tether_agent::join(
                    &join_options(&data_dir, &join, backoff_cap)?,
                    shutdown.clone(),
                )
                .await?;
            }
            let mut opts = RunOptions::new(&data_dir);
            opts.backoff_cap = backoff_cap;
            opts.reconcile_interval = reconcile_interval;
            opts.deletion_breaker =
                tether_agent::breaker::Breaker::new(f64::from(deletion_breaker) / 100.0);
            opts.local_confirmations_only = local_confirmations_only;
            opts.hub_timeout = hub_timeout;
            if joined {
                opts.hubs_override = join.hubs.clone();
                if !join.labels.is_empty() {
                    // Labels are the hub's record once a cluster is approved; an agent that
                    // could relabel itself could draw works meant for other clusters.
                    tracing::warn!(
                        "--label is used only when joining and is ignored for a joined cluster; \
                         change its labels on the hub: tetherctl clusters label NAME key=value key-"
                    );
                }
            }
            tether_agent::run(&opts, executor, shutdown).await
        }
        Cmd::Leave {
            data_dir,
            remove_objects,
            executor,
        } => {
            let left = if remove_objects {
                let executor = build_executor(&executor).await?;
                tether_agent::leave::leave(&data_dir, Some(&executor)).await?
            } else {
                tether_agent::leave::leave::<AnyExecutor>(&data_dir, None).await?
            };
            if remove_objects {
                println!(
                    "removed {} work(s): {}",
                    left.removed.len(),
                    left.removed.join(", ")
                );
            }
            match left.cluster {
                Some(n) => println!("identity of cluster {n} wiped; ask a hub administrator to run `tetherctl clusters detach {n}`"),
                None => println!("no identity stored in {}", data_dir.display()),
            }
            Ok(())
        }
        Cmd::ConfirmRemoval { data_dir, work } => {
            tether_protocol::names::validate_work_name(&work)
                .map_err(|e| AgentError::Config(format!("work name {work:?}: {e}")))?;
            let p = tether_agent::breaker::confirm(&data_dir, &work)
                .map_err(|e| AgentError::Io(format!("writing the confirmation: {e}")))?;
            println!(
                "removal of work {work} confirmed ({}); the agent lets it through on its next pass",
                p.display()
            );
            Ok(())
        }
        Cmd::Status { data_dir } => {
            use tether_agent::status_file;
            let store = match tether_agent::open_store(&data_dir) {
                Ok(store) => store,
                // The running agent holds the database's lock; it reports through a file.
                Err(AgentError::Store(StoreError::Locked { .. })) => {
                    let s = status_file::read(&data_dir).map_err(|e| {
                        AgentError::Io(format!("the agent is running and holds its database; {e}"))
                    })?;
                    println!("{}", status_file::describe(&s));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if let Ok(last) = status_file::read(&data_dir) {
                println!("last run:\n{}\n", status_file::describe(&last));
            }
            match store.read(|tx| tx.get(&IDENTITY, CURRENT))? {
                Some(id) => {
                    let info = tether_transport::certs::inspect_pem(&id.cert_pem).map_err(|e| AgentError::Protocol(e.to_string()))?;
                    println!("cluster: {}\nhubs: {}\ncertificate serial: {}\ncertificate not after (unix): {}", id.name, id.hubs.join(", "), info.serial_hex, info.not_after);
                }
                None => match store.read(|tx| tx.get(&PENDING_JOIN, CURRENT))? {
                    Some(p) => println!("join pending for cluster {} (run `tether-agent join` again to keep waiting)", p.name),
                    None => println!("not joined"),
                },
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match real_main(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-agent: {e}");
            ExitCode::from(e.exit_code().clamp(1, 255) as u8)
        }
    }
}
