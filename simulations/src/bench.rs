//! Fleet-scale benchmarks (`tether-sim bench`), each next to a baseline measured in the same
//! run so that the ratio means something on a noisy machine. Numbers, not timed tests.
//!
//! Two kinds of agents: real ones (`tether_agent`, `memory` executor, a redb store each) and
//! protocol-level ones (`lite.rs`: same protocol and TLS stack, state in memory) for the fleet
//! sizes where 10k agent stores fsyncing on the same two cores would be the figure.
//!
//! - `propagation`: one work change to N real agents (one process, loopback, no relay): time
//!   until the hub recorded every delivery, until every simulated cluster held the new objects,
//!   and until the hub had every Applied status; p50/p99/max. Baseline: a raw QUIC
//!   request/response round trip (one stream per request, like the hub's) over the same
//!   TLS/QUIC settings.
//! - `lite-propagation`: the same with N protocol-level agents.
//! - `ingest`: status entries per second committed durably through the hub's group committer
//!   and `status::ingest` (no network) vs raw redb commits of the same entries, and vs the same
//!   data model written straight to the store with perfect batching.
//! - `idle`: bytes on the wire per agent per hour with nothing changing, counted by the relay,
//!   vs a bare quinn mTLS connection with the same keep-alive through the same relay.
//! - `sessions`: hub RSS per held session (hub and protocol-level agents in separate processes,
//!   heartbeats flowing) vs a bare quinn mTLS server holding the same number of connections.
//! - `flood`: honest session handshakes (connect, mTLS, Hello) while a flood of QUIC Initials
//!   that never complete runs from another address (`flood.rs`): share that succeed and their
//!   latency. Baseline: the same handshakes without the flood.
//! - `storm`: SIGKILL of the hub process under N protocol-level agents and a new process on the
//!   same port and data directory: time until every session is back and Ready. Baseline: the
//!   handshake capacity of a bare quinn mTLS server.

use crate::fleet::{metric, LocalHub};
use crate::lite::{LiteFleet, LiteIdentity};
use crate::relay::{LinkProfile, Relay};
use anyhow::Context;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::AnyExecutor;
use tether_agent::{JoinOptions, RunOptions, Shutdown};
use tether_hub::HubConfig;
use tether_protocol::Labels;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Which benchmarks, comma-separated: propagation, ingest, idle, sessions, storm, flood, or
    /// all.
    #[arg(long, default_value = "all")]
    pub only: String,
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
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench.json")]
    pub out: PathBuf,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub machine: String,
    pub propagation: Vec<Propagation>,
    pub lite_propagation: Vec<Propagation>,
    pub ingest: Option<Ingest>,
    pub idle: Option<Idle>,
    pub sessions: Vec<Sessions>,
    pub storm: Vec<Storm>,
    pub flood: Option<FloodResult>,
}

#[derive(Debug, Serialize)]
pub struct FloodResult {
    pub attempts: usize,
    pub flood_initials_per_s: f64,
    pub succeeded: usize,
    pub handshake: Pct,
    pub baseline_succeeded: usize,
    pub baseline_handshake: Pct,
    pub retries_sent: f64,
}

#[derive(Debug, Serialize)]
pub struct Storm {
    pub agents: usize,
    /// From SIGKILL of the hub process until the new process listens (store open, bind).
    pub hub_back_s: f64,
    /// From SIGKILL until every agent has a new session and the hub counts it Ready.
    pub all_ready_s: f64,
    /// Sessions re-established per second after the new process listened.
    pub handshakes_per_s: f64,
    /// The same storm with the stateless-reset secret deleted before the restart (`--storm-control`).
    pub control_all_ready_s: Option<f64>,
    /// Baseline: handshake capacity of a bare quinn mTLS server with the hub's certificates and
    /// transport settings (n handshakes, 64 in flight).
    pub baseline_bare_handshakes_per_s: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pct {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub n: usize,
}

fn pct(mut v: Vec<f64>) -> Pct {
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
}

#[derive(Debug, Serialize)]
pub struct Ingest {
    pub writers: usize,
    pub entries_per_batch: usize,
    pub hub_entries_per_s: f64,
    pub raw_redb_entries_per_s: f64,
    pub raw_commit_entries: usize,
    pub ratio: f64,
    /// The hub's data model (`status::ingest`) straight on its store, WRITERS batches per commit.
    pub model_redb_entries_per_s: f64,
    pub ratio_to_model: f64,
}

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

#[derive(Debug, Serialize)]
pub struct Sessions {
    pub n: usize,
    pub hub_rss_before_mib: f64,
    pub hub_rss_after_mib: f64,
    pub hub_kib_per_session: f64,
    pub bare_kib_per_conn: f64,
    pub ratio: f64,
    pub connect_all_s: f64,
    /// Hub RSS started empty, and with the `n` clusters registered but not connected.
    pub hub_rss_empty_mib: f64,
    pub hub_rss_registered_mib: f64,
    /// Heartbeats the hub counted while the sessions were held (all should be flowing).
    pub heartbeats_per_s: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let all = args.only == "all";
    let want = |n: &str| all || args.only.split(',').any(|s| s.trim() == n);
    let mut r = Results {
        machine: machine(),
        ..Default::default()
    };
    if want("ingest") {
        let i = ingest(args.ingest_s).await?;
        println!(
            "ingest: hub {:.0} status entries/s durable vs raw redb {:.0}/s ({} entries per commit): {:.2}x; vs the same data model without the group committer {:.0}/s: {:.2}x",
            i.hub_entries_per_s, i.raw_redb_entries_per_s, i.raw_commit_entries, i.ratio,
            i.model_redb_entries_per_s, i.ratio_to_model
        );
        r.ingest = Some(i);
        save(&args.out, &r)?;
    }
    if want("propagation") {
        for &n in &args.propagation {
            let p = propagation(n).await?;
            println!(
                "propagation to {n} agents: delivered p50 {:.0} ms p99 {:.0} ms; cluster applied p50 {:.0} ms p99 {:.0} ms; hub has Applied p50 {:.0} ms p99 {:.0} ms; raw QUIC RTT p50 {:.2} ms p99 {:.2} ms",
                p.delivered.p50_ms, p.delivered.p99_ms, p.cluster_applied.p50_ms, p.cluster_applied.p99_ms,
                p.hub_applied.p50_ms, p.hub_applied.p99_ms, p.baseline_quic_rtt.p50_ms, p.baseline_quic_rtt.p99_ms
            );
            r.propagation.push(p);
            save(&args.out, &r)?;
        }
    }
    if want("lite-propagation") {
        for &n in &args.lite_propagation {
            let p = lite_propagation(n).await?;
            println!(
                "propagation to {n} protocol-level agents: delivered p50 {:.0} ms p99 {:.0} ms; agent received p50 {:.0} ms p99 {:.0} ms; hub has Applied p50 {:.0} ms p99 {:.0} ms; raw QUIC RTT p50 {:.2} ms p99 {:.2} ms",
                p.delivered.p50_ms, p.delivered.p99_ms, p.cluster_applied.p50_ms, p.cluster_applied.p99_ms,
                p.hub_applied.p50_ms, p.hub_applied.p99_ms, p.baseline_quic_rtt.p50_ms, p.baseline_quic_rtt.p99_ms
            );
            r.lite_propagation.push(p);
            save(&args.out, &r)?;
        }
    }
    if want("idle") {
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
        save(&args.out, &r)?;
    }
    if want("sessions") {
        for &n in &args.sessions {
            let s = sessions(n).await?;
            println!(
                "sessions {n}: hub {:.1} KiB per session ({:.0} -> {:.0} MiB) vs bare quinn mTLS {:.1} KiB per connection: {:.2}x; all connected in {:.1}s",
                s.hub_kib_per_session, s.hub_rss_before_mib, s.hub_rss_after_mib, s.bare_kib_per_conn, s.ratio, s.connect_all_s
            );
            r.sessions.push(s);
            save(&args.out, &r)?;
        }
    }
    if want("storm") {
        for &n in &args.storm {
            let st = storm(n, args.storm_control).await?;
            println!(
                "reconnect storm {n}: hub process killed; new process listening after {:.1}s; all back and Ready {:.1}s after the kill ({:.0} sessions/s){}; bare quinn mTLS {:.0} handshakes/s",
                st.hub_back_s, st.all_ready_s, st.handshakes_per_s,
                st.control_all_ready_s.map(|c| format!("; without the reset secret {c:.1}s")).unwrap_or_default(),
                st.baseline_bare_handshakes_per_s
            );
            r.storm.push(st);
            save(&args.out, &r)?;
        }
    }
    if want("flood") {
        let f = flood(args.flood_attempts, args.flood_rate).await?;
        println!(
            "flood: {}/{} honest handshakes succeeded ({:.1}%) during {:.0} Initials/s, p50 {:.1} ms p99 {:.1} ms ({:.0} Retry packets sent); without the flood {}/{} , p50 {:.1} ms p99 {:.1} ms",
            f.succeeded, f.attempts, 100.0 * f.succeeded as f64 / f.attempts.max(1) as f64,
            f.flood_initials_per_s, f.handshake.p50_ms, f.handshake.p99_ms, f.retries_sent,
            f.baseline_succeeded, f.attempts, f.baseline_handshake.p50_ms, f.baseline_handshake.p99_ms
        );
        r.flood = Some(f);
        save(&args.out, &r)?;
    }
    println!("results in {}", args.out.display());
    Ok(())
}

// ------------------------------------------------------------------ handshake flood

/// `attempts` honest session handshakes, one after another, each on a fresh endpoint (an agent
/// reconnecting): how many got a HelloAck within 10 s, and how long each took.
async fn honest_handshakes(
    addr: std::net::SocketAddr,
    tls: &rustls::ClientConfig,
    attempts: usize,
) -> anyhow::Result<(usize, Vec<f64>)> {
    let limits = tether_transport::Limits {
        read_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let hello = tether_protocol::Message::Hello(tether_protocol::Hello {
        protocol_version: tether_protocol::PROTOCOL_VERSION,
        agent_version: "bench".into(),
    });
    let mut ok = 0;
    let mut took = Vec::with_capacity(attempts);
    for _ in 0..attempts {
        let ep = tether_transport::quic::client_endpoint(addr)?;
        let cfg = tether_transport::quic::client_config(tls.clone())?;
        let t = Instant::now();
        let attempt = tokio::time::timeout(Duration::from_secs(10), async {
            let conn = ep.connect_with(cfg, addr, "localhost").ok()?.await.ok()?;
            let answer = tether_transport::framed::request(&conn, &hello, limits).await;
            conn.close(0u32.into(), b"bench");
            matches!(answer, Ok(tether_protocol::Message::HelloAck(_))).then_some(())
        })
        .await;
        if matches!(attempt, Ok(Some(()))) {
            ok += 1;
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok((ok, took))
}

async fn flood(attempts: usize, rate: u32) -> anyhow::Result<FloodResult> {
    let tmp = tempfile::tempdir()?;
    let hub_dir = tmp.path().join("hub");
    init_hub_dir(&hub_dir)?;
    let id = crate::lite::provision(&hub_dir, "fl", 1)?
        .pop()
        .context("no identity provisioned")?;
    let hub = LocalHub::start(&hub_dir, bench_hub_config(&hub_dir)).await?;
    let ca_pem = std::fs::read_to_string(hub.cfg.data_dir.ca_cert())?;
    let cert = Arc::new(tether_transport::tls::SwappableClientCert::new(
        &id.cert_pem,
        &id.key_pem,
    )?);
    let tls =
        tether_transport::tls::session_client_config(&ca_pem, cert, tether_protocol::ALPN_SESSION)?;
    let addr = hub.quic_addr();
    let (baseline_succeeded, baseline) = honest_handshakes(addr, &tls, attempts).await?;
    let flood = crate::flood::Flood::start(addr, "127.0.0.2".parse()?, rate)?;
    // Let the flood fill whatever it can fill before the honest agents come.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    let sent_before = flood.sent();
    let (succeeded, took) = honest_handshakes(addr, &tls, attempts).await?;
    let flood_initials_per_s = (flood.sent() - sent_before) as f64 / t.elapsed().as_secs_f64();
    drop(flood);
    let retries_sent = metric(
        &hub.admin()?.get_text("/metrics").await?,
        "tether_hub_handshakes_rejected_total{reason=\"retry_sent\"}",
    );
    let mut hub = hub;
    hub.stop().await;
    Ok(FloodResult {
        attempts,
        flood_initials_per_s,
        succeeded,
        handshake: pct(took),
        baseline_succeeded,
        baseline_handshake: pct(baseline),
        retries_sent,
    })
}

// ------------------------------------------------------------------ reconnect storm

/// Kill -9 the hub process under `n` connected protocol-level agents and start a new one on the
/// same data directory and port; time until every agent is back (session open, Ready).
async fn storm(n: usize, control: bool) -> anyhow::Result<Storm> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let hub_dir = dir.join("hub");
    init_hub_dir(&hub_dir)?;
    provision_lite(&dir, "st", n).await?;
    let mut hub = HubProc::spawn(&dir, None)?;
    let (swarm, _sout) = spawn_lite_swarm(&dir, n, hub.quic)?;
    wait_sessions(
        &hub.admin()?,
        n,
        connect_limit(n),
        Duration::from_millis(500),
    )
    .await?;

    let (hub_back_s, all_ready_s) = kill_and_restart(&dir, &mut hub, n, false).await?;
    let control_all_ready_s = if control {
        Some(kill_and_restart(&dir, &mut hub, n, true).await?.1)
    } else {
        None
    };
    drop(swarm);
    drop(hub);

    // Baseline in the same run: the handshake capacity of a bare quinn mTLS server with the
    // hub's certificates and settings, n handshakes with 64 in flight. (All n at once through
    // a few client sockets mostly measures dropped Initial packets and 1 s retransmit timers.)
    let bare = bare_server(&tether_hub::config::DataDir::new(&hub_dir))?;
    let t = Instant::now();
    let held = bare_swarm(&bare.client_cfg, bare.server.local_addr()?, n, 64).await?;
    let bare_s = t.elapsed().as_secs_f64();
    drop(held);
    Ok(Storm {
        agents: n,
        hub_back_s,
        all_ready_s,
        handshakes_per_s: n as f64 / (all_ready_s - hub_back_s).max(1e-9),
        control_all_ready_s,
        baseline_bare_handshakes_per_s: n as f64 / bare_s.max(1e-9),
    })
}

/// SIGKILL the hub process, start a new one on the same addresses, and return (seconds until
/// it listens, seconds until every session is back and Ready), both from the kill.
async fn kill_and_restart(
    dir: &Path,
    hub: &mut HubProc,
    n: usize,
    forget_reset_secret: bool,
) -> anyhow::Result<(f64, f64)> {
    let addrs = (hub.quic, hub.admin_addr);
    let started = Instant::now();
    hub.kill();
    if forget_reset_secret {
        let _ =
            std::fs::remove_file(tether_hub::config::DataDir::new(dir.join("hub")).reset_secret());
    }
    *hub = HubProc::spawn(dir, Some(addrs))?;
    let back = started.elapsed().as_secs_f64();
    // The restarted hub loads every cluster's last state; only live sessions count as back.
    wait_sessions(
        &hub.admin()?,
        n,
        Duration::from_secs(600),
        Duration::from_millis(100),
    )
    .await?;
    Ok((back, started.elapsed().as_secs_f64()))
}

/// A hub in its own process (`tether-sim bench-server --mode hub`).
struct HubProc {
    proc: Proc,
    quic: std::net::SocketAddr,
    admin_addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl HubProc {
    fn spawn(
        dir: &Path,
        addrs: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    ) -> anyhow::Result<Self> {
        let d = dir.to_str().context("temp dir is not UTF-8")?;
        let mut args = vec!["bench-server", "--mode", "hub", "--dir", d];
        let pinned = addrs.map(|(q, a)| (q.to_string(), a.to_string()));
        if let Some((q, a)) = &pinned {
            args.extend(["--listen", q.as_str(), "--admin-listen", a.as_str()]);
        }
        let (proc, mut out) = spawn_self(&args)?;
        let info: serde_json::Value = serde_json::from_str(&read_line(&mut out)?)?;
        let field = |k: &str| -> anyhow::Result<std::net::SocketAddr> {
            Ok(info[k]
                .as_str()
                .with_context(|| format!("bench-server printed no {k}"))?
                .parse()?)
        };
        Ok(Self {
            quic: field("quic")?,
            admin_addr: field("admin")?,
            proc,
            dir: dir.to_path_buf(),
        })
    }

    fn admin(&self) -> anyhow::Result<tether_hub::AdminClient> {
        let mut ctl = tether_hub::config::CtlConfig::load(
            &tether_hub::config::DataDir::new(self.dir.join("hub")).ctl_config(),
        )?;
        ctl.admin_address = self.admin_addr.to_string();
        tether_hub::AdminClient::new(&ctl)
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// SIGKILL: no close frames, no flush; the OS releases the socket and the database lock.
    fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

fn init_hub_dir(hub_dir: &Path) -> anyhow::Result<()> {
    tether_hub::init(
        &tether_hub::InitOptions {
            data_dir: tether_hub::config::DataDir::new(hub_dir),
            hub_name: "localhost".into(),
            sans: vec![],
            admin_listen: "127.0.0.1:0".parse()?,
        },
        tether_hub::util::now_ms(),
    )?;
    Ok(())
}

/// Register `n` lite identities with the (stopped) hub in `dir/hub`; saved in `dir/ids.jsonl`.
async fn provision_lite(dir: &Path, prefix: &str, n: usize) -> anyhow::Result<Vec<LiteIdentity>> {
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
const LITE_CONNECTS_PER_S: usize = 400;

fn connect_limit(n: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(10 * n as u64)
}

fn spawn_lite_swarm(
    dir: &Path,
    n: usize,
    quic: std::net::SocketAddr,
) -> anyhow::Result<(Proc, BufReader<std::process::ChildStdout>)> {
    spawn_self(&[
        "bench-swarm",
        "--mode",
        "lite",
        "--n",
        &n.to_string(),
        "--quic",
        &quic.to_string(),
        "--dir",
        dir.to_str().context("temp dir is not UTF-8")?,
    ])
}

/// Live sessions and clusters Ready, from the hub's metrics (cheap at 100k, unlike listing).
async fn hub_counts(admin: &tether_hub::AdminClient) -> anyhow::Result<(usize, usize)> {
    let text = admin.get_text("/metrics").await?;
    Ok((
        metric(&text, "tether_hub_live_sessions") as usize,
        metric(&text, "tether_hub_clusters{state=\"Ready\"}") as usize,
    ))
}

async fn hub_counter(admin: &tether_hub::AdminClient, name: &str) -> f64 {
    admin
        .get_text("/metrics")
        .await
        .map_or(0.0, |text| metric(&text, name))
}

/// Poll (every `poll`) until `n` sessions are live and Ready; seconds it took.
async fn wait_sessions(
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

fn save(path: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn machine() -> String {
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

fn rss_kib(pid: Option<u32>) -> u64 {
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

// ------------------------------------------------------------------ helpers

fn bench_hub_config(dir: &Path) -> HubConfig {
    let mut cfg = HubConfig::new(dir);
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.admin_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

/// Start one agent (join, then run) as a task of this process.
#[allow(clippy::too_many_arguments)]
fn spawn_agent(
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

async fn wait_ready(hub: &LocalHub, n: usize, limit: Duration) -> anyhow::Result<f64> {
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

fn work(value: &str) -> anyhow::Result<tether_protocol::work::WorkDocument> {
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
fn singleton(cluster: &str) -> anyhow::Result<tether_protocol::work::WorkDocument> {
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

// ------------------------------------------------------------------ bare QUIC (baselines)

struct Bare {
    server: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
}

/// A bare quinn mTLS server using the hub's own certificates and transport settings, echoing
/// one frame per stream.
fn bare_server(data: &tether_hub::config::DataDir) -> anyhow::Result<Bare> {
    use tether_transport::{certs, quic, tls};
    let ca_pem = std::fs::read_to_string(data.ca_cert())?;
    let chain = certs::certs_from_pem(&std::fs::read_to_string(data.hub_cert())?, "hub cert")?;
    let key = certs::key_from_pem(&std::fs::read_to_string(data.hub_key())?, "hub key")?;
    let ca = certs::certs_from_pem(&ca_pem, "CA")?
        .into_iter()
        .next()
        .context("no CA certificate")?;
    let verifier = Arc::new(tls::HubClientVerifier::new(
        ca,
        Arc::new(tls::RevocationList::new(Vec::<String>::new())),
        Arc::new(|_| {}),
    )?);
    let server_tls = tls::server_config(chain, key, verifier, &[b"bench"])?;
    let server = quic::server_endpoint("127.0.0.1:0".parse()?, server_tls, &rand::random())?;
    let cert = Arc::new(tls::SwappableClientCert::new(
        &std::fs::read_to_string(data.admin_cert())?,
        &std::fs::read_to_string(data.admin_key())?,
    )?);
    let client_tls = tls::session_client_config(&ca_pem, cert, b"bench")?;
    let client_cfg = quic::client_config(client_tls)?;
    let ep = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                // Hold the connection; echo whatever comes on each stream.
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(buf) = recv.read_to_end(64 * 1024).await {
                            let _ = send.write_all(&buf).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        }
                    });
                }
            });
        }
    });
    Ok(Bare { server, client_cfg })
}

async fn bare_connect(
    cfg: &quinn::ClientConfig,
    addr: std::net::SocketAddr,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let ep = tether_transport::quic::client_endpoint(addr)?;
    let conn = ep.connect_with(cfg.clone(), addr, "localhost")?.await?;
    Ok((ep, conn))
}

/// `n` bare mTLS connections, at most `in_flight` handshakes at a time, over shared client
/// endpoints (as the lite swarm does). Returns the endpoints and connections to hold.
async fn bare_swarm(
    cfg: &quinn::ClientConfig,
    addr: std::net::SocketAddr,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<(Vec<quinn::Endpoint>, Vec<quinn::Connection>)> {
    let n_eps = n.div_ceil(crate::lite::AGENTS_PER_ENDPOINT).max(1);
    let eps = (0..n_eps)
        .map(|_| tether_transport::quic::client_endpoint(addr))
        .collect::<Result<Vec<_>, _>>()?;
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (ep, cfg, sem) = (eps[i % n_eps].clone(), cfg.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            // Retried like an agent would: a handshake can time out under a herd.
            let mut last = None;
            for _ in 0..5 {
                match ep.connect_with(cfg.clone(), addr, "localhost")?.await {
                    Ok(c) => return Ok(c),
                    Err(e) => last = Some(e),
                }
            }
            Err(anyhow::anyhow!("bare handshake failed: {last:?}"))
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        conns.push(r??);
    }
    Ok((eps, conns))
}

async fn quic_rtt(bare: &Bare, rounds: usize) -> anyhow::Result<Pct> {
    let addr = bare.server.local_addr()?;
    let (_ep, conn) = bare_connect(&bare.client_cfg, addr).await?;
    let payload = vec![7u8; 256];
    let mut v = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&payload).await?;
        send.finish()?;
        let back = recv.read_to_end(64 * 1024).await?;
        anyhow::ensure!(back.len() == payload.len(), "echo mismatch");
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(pct(v))
}

// ------------------------------------------------------------------ propagation

async fn propagation(n: usize) -> anyhow::Result<Propagation> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let mut hub = LocalHub::start(&dir.join("hub"), bench_hub_config(&dir.join("hub"))).await?;
    let tok = hub.token(u32::try_from(n)?, true, Labels::new()).await?;
    let addr = format!("localhost:{}", hub.quic_addr().port());
    let started = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let cluster = MemoryExecutor::new();
        let (stop, task) = spawn_agent(
            &format!("p{i:05}"),
            &dir.join("agents"),
            &addr,
            &tok,
            &hub.ca_sha256,
            cluster.clone(),
            Duration::from_secs(30),
        );
        agents.push((format!("p{i:05}"), cluster, stop, task));
        // Pace the joins a little: a thundering herd of CSRs only measures the join path.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let limit = Duration::from_secs(120) + Duration::from_millis(200 * n as u64);
    wait_ready(&hub, n, limit).await?;
    let join_s = started.elapsed().as_secs_f64();
    let admin = hub.admin()?;
    // Warm-up generation, then the measured change.
    admin.apply_work(&work("warm")?).await?;
    wait_all_applied(&admin, n, 1).await?;
    // Everything runs in this process on one wall clock: the hub's delivery record
    // (`delivered_at_ms`, written when the WorkAck is committed), the agent's status
    // (`observed_at_ms`, when the apply finished) and the hub's status log (`received_at_ms`,
    // when the Applied status was committed) give millisecond timestamps without polling.
    let t0 = tether_hub::util::now_ms();
    let r = admin.apply_work(&work("measured")?).await?;
    let g = r.generation;
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
    let mut delivered_t = Vec::with_capacity(n);
    let mut cluster_t = Vec::with_capacity(n);
    let mut applied_t = Vec::with_capacity(n);
    let since = |ms: u64| ms.saturating_sub(t0) as f64;
    for (name, _, _, _) in &agents {
        let key = tether_store::hub::cluster_work_key(name, "bench");
        let row = hub
            .running()
            .state
            .store
            .read(|tx| tx.get(&tether_store::hub::CLUSTER_WORKS, &key))?;
        if let Some(row) = row {
            if row.delivered.as_ref().is_some_and(|h| h.generation == g) {
                if let Some(at) = row.delivered_at_ms {
                    delivered_t.push(since(at));
                }
            }
            if let Some(s) = row.status.filter(|s| s.generation == g) {
                cluster_t.push(since(s.observed_at_ms));
            }
        }
        if let Ok(log) = admin.status_log(name).await {
            if let Some(e) = log.iter().find(|e| e.generation == g) {
                applied_t.push(since(e.received_at_ms));
            }
        }
    }
    let bare = bare_server(&tether_hub::config::DataDir::new(dir.join("hub")))?;
    let baseline = quic_rtt(&bare, 500).await?;
    for (_, _, stop, task) in agents {
        let _ = stop.send(true);
        let _ = task.await;
    }
    hub.stop().await;
    Ok(Propagation {
        agents: n,
        join_s,
        delivered: pct(delivered_t),
        cluster_applied: pct(cluster_t),
        hub_applied: pct(applied_t),
        baseline_quic_rtt: baseline,
    })
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
    admin.apply_work(&work("warm")?).await?;
    wait_all_applied(&admin, n, 1).await?;
    let t0 = tether_hub::util::now_ms();
    let g = admin.apply_work(&work("measured")?).await?.generation;
    wait_all_applied(&admin, n, g).await?;
    let since = |ms: u64| ms.saturating_sub(t0) as f64;
    let store = hub.running().state.store.clone();
    let mut delivered_t = Vec::with_capacity(n);
    for id in &ids {
        let key = tether_store::hub::cluster_work_key(&id.name, "bench");
        if let Some(row) = store.read(|tx| tx.get(&tether_store::hub::CLUSTER_WORKS, &key))? {
            if row.delivered.as_ref().is_some_and(|h| h.generation == g) {
                if let Some(at) = row.delivered_at_ms {
                    delivered_t.push(since(at));
                }
            }
        }
    }
    let received_t: Vec<f64> = fleet
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
    let log = store.read(|tx| tx.list(&tether_store::hub::STATUS_HISTORY))?;
    let mut first = std::collections::HashMap::new();
    for (_, e) in log {
        if e.status.work == "bench" && e.status.generation == g {
            first.entry(e.cluster).or_insert(e.received_at_ms);
        }
    }
    let applied_t: Vec<f64> = first.values().map(|&at| since(at)).collect();
    let bare = bare_server(&hub.cfg.data_dir)?;
    let baseline = quic_rtt(&bare, 500).await?;
    fleet.stop().await;
    hub.stop().await;
    anyhow::ensure!(
        delivered_t.len() == n && received_t.len() == n && applied_t.len() == n,
        "incomplete: delivered {} received {} applied {} of {n}",
        delivered_t.len(),
        received_t.len(),
        applied_t.len()
    );
    Ok(Propagation {
        agents: n,
        join_s,
        delivered: pct(delivered_t),
        cluster_applied: pct(received_t),
        hub_applied: pct(applied_t),
        baseline_quic_rtt: baseline,
    })
}

async fn wait_all_applied(admin: &tether_hub::AdminClient, n: usize, g: u64) -> anyhow::Result<()> {
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

// ------------------------------------------------------------------ ingest

async fn ingest(secs: u64) -> anyhow::Result<Ingest> {
    use tether_protocol::{StatusBatch, StatusEntry, WorkPhase, WorkStatus};
    const WRITERS: usize = 64;
    const BATCH: usize = 4;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let mut hub = LocalHub::start(&dir.join("hub"), bench_hub_config(&dir.join("hub"))).await?;
    let status = |seq: u64| StatusEntry {
        seq,
        status: WorkStatus {
            work: format!("w{}", seq % 8),
            generation: seq,
            hash: "0".repeat(64),
            phase: WorkPhase::Applied,
            conditions: vec![],
            resources: vec![],
            message: String::new(),
            observed_at_ms: 0,
        },
    };
    // The works the writers report on, as if the hub had selected them for every writer.
    let works: std::collections::BTreeSet<String> = (0..8).map(|w| format!("w{w}")).collect();
    let selected = tether_hub::parts::Scope {
        known: works.clone(),
        selected: works,
    };
    let committer = hub.running().state.committer.clone();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let committer = committer.clone();
        let selected = selected.clone();
        tasks.push(tokio::spawn(async move {
            let cluster = format!("c{w:03}");
            let mut seq = 0u64;
            let mut stored = 0usize;
            while Instant::now() < until {
                let entries: Vec<StatusEntry> =
                    (1..=BATCH as u64).map(|k| status(seq + k)).collect();
                let batch = StatusBatch {
                    from_seq: seq + 1,
                    to_seq: seq + BATCH as u64,
                    entries,
                };
                seq += BATCH as u64;
                let name = cluster.clone();
                let selected = selected.clone();
                match committer
                    .write(move |tx| tether_hub::parts::ingest(tx, &name, &batch, &selected, 0))
                    .await
                {
                    Ok(i) => stored += i.stored,
                    Err(_) => break,
                }
            }
            stored
        }));
    }
    let t = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    let hub_rate = total as f64 / t.elapsed().as_secs_f64();
    hub.stop().await;

    // Raw redb: the same encoded entries, Durability::Immediate, one commit per WRITERS *
    // BATCH entries (the most the group commit can merge with WRITERS writers).
    let raw_commit = WRITERS * BATCH;
    let db = redb::Database::create(dir.join("raw.redb"))?;
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
    let encoded: Vec<Vec<u8>> = (0..raw_commit as u64)
        .map(|s| tether_protocol::codec::encode(&status(s)))
        .collect::<Result<_, _>>()?;
    let raw_rate = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut key = 0u64;
        while t.elapsed() < Duration::from_secs(secs) {
            let mut tx = db.begin_write()?;
            tx.set_durability(redb::Durability::Immediate)?;
            {
                let mut tbl = tx.open_table(table)?;
                for e in &encoded {
                    tbl.insert(key, e.as_slice())?;
                    key += 1;
                }
            }
            tx.commit()?;
        }
        Ok(key as f64 / t.elapsed().as_secs_f64())
    })
    .await??;
    // Second baseline: the hub's own data model (`status::ingest`: cursor, per-work row,
    // log append) on its own store, WRITERS batches per fsynced commit, one thread, no
    // committer and no async hand-off. What separates the hub from this is the group-commit
    // path; what separates this from raw redb is the data model.
    let store = tether_store::Store::open(dir.join("model.redb"))?;
    let model_rate = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut seq = 0u64;
        let mut stored = 0usize;
        while t.elapsed() < Duration::from_secs(secs) {
            store.write(|tx| {
                for w in 0..WRITERS {
                    let batch = StatusBatch {
                        from_seq: seq + 1,
                        to_seq: seq + BATCH as u64,
                        entries: (1..=BATCH as u64).map(|k| status(seq + k)).collect(),
                    };
                    let cluster = format!("c{w:03}");
                    stored += tether_hub::parts::ingest(tx, &cluster, &batch, &selected, 0)?.stored;
                }
                Ok::<_, tether_store::StoreError>(())
            })?;
            seq += BATCH as u64;
        }
        Ok(stored as f64 / t.elapsed().as_secs_f64())
    })
    .await??;
    Ok(Ingest {
        writers: WRITERS,
        entries_per_batch: BATCH,
        hub_entries_per_s: hub_rate,
        raw_redb_entries_per_s: raw_rate,
        raw_commit_entries: raw_commit,
        ratio: hub_rate / raw_rate,
        model_redb_entries_per_s: model_rate,
        ratio_to_model: hub_rate / model_rate,
    })
}

// ------------------------------------------------------------------ idle

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
    wait_ready(&hub, n, Duration::from_secs(120)).await?;
    hub.admin()?.apply_work(&work("idle")?).await?;
    if singletons {
        for i in 0..n {
            hub.admin()?
                .apply_work(&singleton(&format!("idle{i:03}"))?)
                .await?;
        }
    }
    // Let the delivery, the status and a renewal-free steady state settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bare = bare_server(&tether_hub::config::DataDir::new(dir.join("hub")))?;
    let bare_relay = Relay::start(bare.server.local_addr()?, LinkProfile::default(), 999).await?;
    let (_bep, _bconn) = bare_connect(&bare.client_cfg, bare_relay.front).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = |rs: &[Relay]| -> u64 {
        rs.iter()
            .map(|r| {
                let c = r.counters.snapshot();
                c.bytes_up + c.bytes_down
            })
            .sum()
    };
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

// ------------------------------------------------------------------ sessions (two processes)

/// `tether-sim bench-server`: a hub or a bare quinn server in its own process, so that its RSS
/// is its own. Prints one JSON line, then runs until stdin closes.
pub async fn server_main(
    mode: &str,
    dir: &Path,
    listen: Option<std::net::SocketAddr>,
    admin_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let mut line = serde_json::Map::new();
    let _keep;
    match mode {
        "hub" => {
            let mut cfg = bench_hub_config(&dir.join("hub"));
            if let Some(a) = listen {
                cfg.listen = a;
            }
            if let Some(a) = admin_listen {
                cfg.admin_listen = a;
            }
            let hub = LocalHub::start(&dir.join("hub"), cfg).await?;
            line.insert("quic".into(), hub.quic_addr().to_string().into());
            line.insert("admin".into(), hub.cfg.admin_listen.to_string().into());
            line.insert("ca_sha256".into(), hub.ca_sha256.clone().into());
            _keep = Keep::Hub(Box::new(hub));
        }
        "bare" => {
            let data = tether_hub::config::DataDir::new(dir.join("hub"));
            if !data.ca_cert().exists() {
                tether_hub::init(
                    &tether_hub::InitOptions {
                        data_dir: data.clone(),
                        hub_name: "localhost".into(),
                        sans: vec![],
                        admin_listen: "127.0.0.1:0".parse()?,
                    },
                    tether_hub::util::now_ms(),
                )?;
            }
            let bare = bare_server(&data)?;
            line.insert("quic".into(), bare.server.local_addr()?.to_string().into());
            _keep = Keep::Bare(bare);
        }
        other => anyhow::bail!("unknown mode {other:?}"),
    }
    println!("{}", serde_json::Value::Object(line));
    std::io::stdout().flush()?;
    wait_stdin_closed().await;
    Ok(())
}

enum Keep {
    Hub(#[allow(dead_code)] Box<LocalHub>),
    Bare(#[allow(dead_code)] Bare),
}

async fn wait_stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin()
            .read_line(&mut s)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            s.clear();
        }
    })
    .await;
}

/// `tether-sim bench-swarm`: N protocol-level agents (`lite`, identities from `DIR/ids.jsonl`)
/// or N bare mTLS connections (`bare`) in their own process. Prints `STARTED` once every agent
/// is started or every bare connection is up, then runs until stdin closes.
pub async fn swarm_main(mode: &str, n: usize, quic: &str, dir: &Path) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = quic.parse().context("--quic must be IP:PORT")?;
    let data = tether_hub::config::DataDir::new(dir.join("hub"));
    let mut fleet = None;
    let mut bare = None;
    match mode {
        "lite" => {
            let ids = crate::lite::load_identities(&dir.join("ids.jsonl"))?;
            anyhow::ensure!(
                ids.len() >= n,
                "only {} identities for {n} agents",
                ids.len()
            );
            let ca = std::fs::read_to_string(data.ca_cert())?;
            fleet = Some(LiteFleet::start(&ids[..n], &ca, addr, LITE_CONNECTS_PER_S).await?);
        }
        "bare" => {
            use tether_transport::{quic, tls};
            let cert = Arc::new(tls::SwappableClientCert::new(
                &std::fs::read_to_string(data.admin_cert())?,
                &std::fs::read_to_string(data.admin_key())?,
            )?);
            let cfg = quic::client_config(tls::session_client_config(
                &std::fs::read_to_string(data.ca_cert())?,
                cert,
                b"bench",
            )?)?;
            bare = Some(bare_swarm(&cfg, addr, n, 64).await?);
        }
        other => anyhow::bail!("unknown mode {other:?}"),
    }
    println!("STARTED");
    std::io::stdout().flush()?;
    wait_stdin_closed().await;
    if let Some(f) = fleet {
        if let Some(e) = f.stats.last_failure() {
            eprintln!("lite swarm: last session failure: {e}");
        }
        f.stop().await;
    }
    drop(bare);
    Ok(())
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_self(args: &[&str]) -> anyhow::Result<(Proc, BufReader<std::process::ChildStdout>)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a benchmark child process")?;
    let out = BufReader::new(child.stdout.take().context("child stdout")?);
    Ok((Proc { child }, out))
}

fn read_line(r: &mut BufReader<std::process::ChildStdout>) -> anyhow::Result<String> {
    let mut s = String::new();
    r.read_line(&mut s)?;
    anyhow::ensure!(!s.is_empty(), "child exited early");
    Ok(s.trim().to_string())
}

async fn sessions(n: usize) -> anyhow::Result<Sessions> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let d = dir.to_str().context("temp dir is not UTF-8")?.to_string();

    // Bare quinn mTLS server first (it also initialises the certificates the hub reuses).
    let bare_kib = {
        let (server, mut out) = spawn_self(&["bench-server", "--mode", "bare", "--dir", &d])?;
        let info: serde_json::Value = serde_json::from_str(&read_line(&mut out)?)?;
        let quic = info["quic"]
            .as_str()
            .context("no quic address")?
            .to_string();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = rss_kib(Some(server.child.id()));
        let (swarm, mut sout) = spawn_self(&[
            "bench-swarm",
            "--mode",
            "bare",
            "--n",
            &n.to_string(),
            "--quic",
            &quic,
            "--dir",
            &d,
        ])?;
        let line = tokio::task::spawn_blocking(move || read_line(&mut sout)).await??;
        anyhow::ensure!(line == "STARTED", "bare swarm said {line:?}");
        tokio::time::sleep(Duration::from_secs(20)).await;
        let after = rss_kib(Some(server.child.id()));
        drop(swarm);
        drop(server);
        (after.saturating_sub(before)) as f64 / n as f64
    };

    // The hub empty, then with n clusters registered, then with n sessions held.
    let empty = {
        let hub = HubProc::spawn(&dir, None)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss_kib(Some(hub.pid()))
    };
    provision_lite(&dir, "s", n).await?;
    let hub = HubProc::spawn(&dir, None)?;
    let admin = hub.admin()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(Some(hub.pid()));
    let t = Instant::now();
    let (swarm, _sout) = spawn_lite_swarm(&dir, n, hub.quic)?;
    wait_sessions(&admin, n, connect_limit(n), Duration::from_millis(500)).await?;
    let connect_all_s = t.elapsed().as_secs_f64();
    // Heartbeats flowing for a while (default interval 10 s); every session must stay up.
    let hb0 = hub_counter(&admin, "tether_hub_heartbeats_total").await;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let hb1 = hub_counter(&admin, "tether_hub_heartbeats_total").await;
    let heartbeats_per_s = (hb1 - hb0) / window.elapsed().as_secs_f64();
    let (live, ready) = hub_counts(&admin).await?;
    let after = rss_kib(Some(hub.pid()));
    drop(swarm);
    drop(hub);
    anyhow::ensure!(
        live >= n && ready >= n,
        "sessions did not hold: {live} live, {ready} Ready of {n} after 20 s"
    );
    let hub_kib = (after.saturating_sub(before)) as f64 / n as f64;
    Ok(Sessions {
        n,
        hub_rss_before_mib: before as f64 / 1024.0,
        hub_rss_after_mib: after as f64 / 1024.0,
        hub_kib_per_session: hub_kib,
        bare_kib_per_conn: bare_kib,
        ratio: if bare_kib > 0.0 {
            hub_kib / bare_kib
        } else {
            0.0
        },
        connect_all_s,
        hub_rss_empty_mib: empty as f64 / 1024.0,
        hub_rss_registered_mib: before as f64 / 1024.0,
        heartbeats_per_s,
    })
}
