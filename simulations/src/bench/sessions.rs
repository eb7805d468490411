//! `sessions`: hub RSS per held session (hub and protocol-level agents in separate processes,
//! heartbeats flowing) vs a bare quinn mTLS server holding the same number of connections.

use super::harness::{
    connect_limit, cpu_s, hub_counter, hub_counts, provision_lite, rss_kib, save, wait_sessions,
};
use super::procs::{read_line, spawn_lite_swarm, spawn_self, HubProc};
use super::{BenchArgs, Results};
use anyhow::Context;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

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
    /// CPU seconds per 1,000 held sessions per hour, from the CPU time the process used while
    /// the sessions were held and idle (heartbeats and keep-alives only): the hub, and the
    /// bare quinn server with the same connections (keep-alives only).
    pub hub_cpu_s_per_1000_per_h: f64,
    pub bare_cpu_s_per_1000_per_h: f64,
}

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    for &n in &args.sessions {
        let s = sessions(n).await?;
        println!(
            "sessions {n}: hub {:.1} KiB per session ({:.0} -> {:.0} MiB) vs bare quinn mTLS {:.1} KiB per connection: {:.2}x; all connected in {:.1}s",
            s.hub_kib_per_session, s.hub_rss_before_mib, s.hub_rss_after_mib, s.bare_kib_per_conn, s.ratio, s.connect_all_s
        );
        println!(
            "sessions {n}: idle CPU per 1,000 sessions per hour: hub {:.1} s ({:.0} heartbeats/s) vs bare quinn {:.1} s",
            s.hub_cpu_s_per_1000_per_h, s.heartbeats_per_s, s.bare_cpu_s_per_1000_per_h
        );
        r.sessions.push(s);
        save(&args.out, r)?;
    }
    Ok(())
}

async fn sessions(n: usize) -> anyhow::Result<Sessions> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    // Bare quinn mTLS server first (it also initialises the certificates the hub reuses).
    let (bare_kib, bare_cpu) = bare_kib_per_conn(&dir, n).await?;

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
    let cpu0 = cpu_s(hub.pid())?;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let cpu = per_1000_per_hour(cpu_s(hub.pid())? - cpu0, n, window.elapsed());
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
        hub_cpu_s_per_1000_per_h: cpu,
        bare_cpu_s_per_1000_per_h: bare_cpu,
    })
}

fn per_1000_per_hour(cpu_s: f64, n: usize, window: Duration) -> f64 {
    cpu_s * (1000.0 / n as f64) * (3600.0 / window.as_secs_f64())
}

/// RSS growth of a bare quinn mTLS server process per connection, `n` connections held from
/// another process for 20 s, and its CPU per 1,000 connections per hour meanwhile.
async fn bare_kib_per_conn(dir: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    let d = dir.to_str().context("temp dir is not UTF-8")?.to_string();
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
    let cpu0 = cpu_s(server.child.id())?;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let cpu = per_1000_per_hour(cpu_s(server.child.id())? - cpu0, n, window.elapsed());
    let after = rss_kib(Some(server.child.id()));
    drop(swarm);
    drop(server);
    Ok(((after.saturating_sub(before)) as f64 / n as f64, cpu))
}
