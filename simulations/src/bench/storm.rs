//! `storm`: SIGKILL of the hub process under N protocol-level agents and a new process on the
//! same port and data directory: time until every session is back and Ready. Baseline: the
//! handshake capacity of a bare quinn mTLS server.

use super::bare::{bare_server, bare_swarm};
use super::harness::{connect_limit, init_hub_dir, provision_lite, save, wait_sessions};
use super::procs::{spawn_lite_swarm, HubProc};
use super::{BenchArgs, Results};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

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

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    for &n in &args.storm {
        let st = storm(n, args.storm_control).await?;
        println!(
            "reconnect storm {n}: hub process killed; new process listening after {:.1}s; all back and Ready {:.1}s after the kill ({:.0} sessions/s){}; bare quinn mTLS {:.0} handshakes/s",
            st.hub_back_s, st.all_ready_s, st.handshakes_per_s,
            st.control_all_ready_s.map(|c| format!("; without the reset secret {c:.1}s")).unwrap_or_default(),
            st.baseline_bare_handshakes_per_s
        );
        r.storm.push(st);
        save(&args.out, r)?;
    }
    Ok(())
}

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
