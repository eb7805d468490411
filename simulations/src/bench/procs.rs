//! Benchmarks whose figure must be one process's own (RSS per session, a SIGKILLed hub) run
//! this binary again: the parent side (`HubProc`, `spawn_self`, `spawn_lite_swarm`) and the
//! child side (`tether-sim bench-server`, `tether-sim bench-swarm`). A child prints one line
//! when ready and runs until its stdin closes, so that it never outlives the benchmark.

use super::bare::{bare_server, bare_swarm, Bare};
use super::harness::{bench_hub_config, LITE_CONNECTS_PER_S};
use crate::fleet::LocalHub;
use crate::lite::LiteFleet;
use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// A hub in its own process (`tether-sim bench-server --mode hub`).
pub(super) struct HubProc {
    proc: Proc,
    pub(super) quic: std::net::SocketAddr,
    pub(super) admin_addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl HubProc {
    /// `addrs`: the (QUIC, admin) addresses to listen on again, as a restarted hub would.
    pub(super) fn spawn(
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

    pub(super) fn admin(&self) -> anyhow::Result<tether_hub::AdminClient> {
        let mut ctl = tether_hub::config::CtlConfig::load(
            &tether_hub::config::DataDir::new(self.dir.join("hub")).ctl_config(),
        )?;
        ctl.admin_address = self.admin_addr.to_string();
        tether_hub::AdminClient::new(&ctl)
    }

    pub(super) fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// SIGKILL: no close frames, no flush; the OS releases the socket and the database lock.
    pub(super) fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

pub(super) struct Proc {
    pub(super) child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn spawn_self(
    args: &[&str],
) -> anyhow::Result<(Proc, BufReader<std::process::ChildStdout>)> {
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

pub(super) fn read_line(r: &mut BufReader<std::process::ChildStdout>) -> anyhow::Result<String> {
    let mut s = String::new();
    r.read_line(&mut s)?;
    anyhow::ensure!(!s.is_empty(), "child exited early");
    Ok(s.trim().to_string())
}

/// `n` protocol-level agents in their own process, with the identities `provision_lite` saved
/// in `dir`.
pub(super) fn spawn_lite_swarm(
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
                        store: Default::default(),
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
