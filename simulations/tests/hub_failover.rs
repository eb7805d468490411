//! Two hub processes on one PostgreSQL database (Debian's server, started by the test on
//! loopback), each with its own copy of the data directory's keys: one serves, the other waits
//! as a standby. SIGKILL the serving one: the standby takes the lease, the agent (given both
//! addresses) moves to it, and what was acknowledged before the kill is all there.

mod common;

use common::built_binary;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether_sim::pg::{available_or_skip, TestServer};

const LEASE_TTL: &str = "2s";

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Hub {
    child: Child,
    admin: String,
    quic: u16,
}

fn serve(bin: &Path, data: &Path, url: &str, log: &Path) -> Hub {
    let admin = format!("127.0.0.1:{}", free_tcp());
    serve_on(bin, data, url, log, free_udp(), &admin)
}

fn serve_on(bin: &Path, data: &Path, url: &str, log: &Path, quic: u16, admin: &str) -> Hub {
    let admin = admin.to_string();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(bin)
        .args([
            "serve",
            "--lease-ttl",
            LEASE_TTL,
            "--heartbeat-interval",
            "500ms",
        ])
        .args(["--offline-grace", "30s"])
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            &format!("127.0.0.1:{quic}"),
            "--admin-listen",
            &admin,
        ])
        .env("TETHER_STORE", url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Hub { child, admin, quic }
}

struct Ctl {
    bin: PathBuf,
    config: PathBuf,
}

impl Ctl {
    /// `tetherctl` against one hub's admin address; `None` while it does not answer.
    fn at(&self, server: &str, args: &[&str]) -> Option<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("TETHER_CONFIG", &self.config)
            .env("TETHER_SERVER", server)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn until(
        &self,
        server: &str,
        args: &[&str],
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(out) = self.at(server, args) {
                if ok(&out) {
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < limit,
                "{args:?} at {server}: not within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_standby_hub_takes_over_when_the_serving_one_dies() {
    if !available_or_skip("a_standby_hub_takes_over_when_the_serving_one_dies") {
        return;
    }
    let hub_bin = built_binary("tether-hub", "tether-hub");
    let ctl_bin = built_binary("tether-hub", "tetherctl");
    let agent_bin = built_binary("tether-agent", "tether-agent");
    let server = TestServer::start().unwrap();
    let url = server.create_db("ha").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (data_a, data_b) = (d.join("hub-a"), d.join("hub-b"));
    let out = Command::new(&hub_bin)
        .args(["init", "--hub-name", "localhost", "--data-dir"])
        .arg(&data_a)
        .env("TETHER_STORE", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ca = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.trim().len() == 64)
        .unwrap()
        .trim()
        .to_string();
    // The standby's machine gets a copy of the keys (and the reset secret, once made).
    copy_dir(&data_a, &data_b);
    let ctl = Ctl {
        bin: ctl_bin,
        config: data_a.join("tetherctl.yaml"),
    };

    let mut a = serve(&hub_bin, &data_a, &url, &d.join("a.log"));
    ctl.until(
        &a.admin,
        &["clusters", "list"],
        Duration::from_secs(30),
        |_| true,
    );
    let mut b = serve(&hub_bin, &data_b, &url, &d.join("b.log"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        ctl.at(&b.admin, &["clusters", "list"]).is_none(),
        "a standby serves nothing"
    );

    let token = ctl
        .at(
            &a.admin,
            &[
                "token",
                "create",
                "--ttl",
                "1h",
                "--uses",
                "1",
                "--auto-approve",
            ],
        )
        .unwrap();
    let token = token.lines().last().unwrap().trim().to_string();
    let manifests = d.join("manifests");
    let agent_log = std::fs::File::create(d.join("agent.log")).unwrap();
    let mut agent = Command::new(&agent_bin)
        .arg("run")
        .arg("--data-dir")
        .arg(d.join("agent"))
        .args(["--hub", &format!("localhost:{}", a.quic)])
        .args(["--hub", &format!("localhost:{}", b.quic)])
        .args([
            "--ca-sha256",
            &ca,
            "--name",
            "edge-1",
            "--backoff-cap",
            "1s",
        ])
        .arg(format!("--executor=dir:{}", manifests.display()))
        .args(["--reconcile-interval", "500ms"])
        .env("TETHER_TOKEN", &token)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(agent_log.try_clone().unwrap())
        .stderr(agent_log)
        .spawn()
        .unwrap();
    let ready = |out: &str| {
        out.lines()
            .any(|l| l.contains("edge-1") && l.contains("Ready"))
    };
    ctl.until(
        &a.admin,
        &["clusters", "list"],
        Duration::from_secs(30),
        ready,
    );
    let work = d.join("work.yaml");
    let write_work = |value: &str| {
        std::fs::write(
            &work,
            format!(
                "apiVersion: tether.dev/v1alpha1\nkind: Work\nmetadata: {{name: web}}\nspec:\n  targets: {{clusters: [edge-1]}}\n  manifests:\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {{name: web, namespace: default}}\n    data: {{value: \"{value}\"}}\n"
            ),
        )
        .unwrap()
    };
    write_work("before");
    ctl.at(&a.admin, &["apply", "-f", work.to_str().unwrap()])
        .expect("apply through the serving hub");
    let delivered = manifests.join("tether-web.yaml");
    let applied = |value: &str| {
        std::fs::read_to_string(&delivered)
            .is_ok_and(|t| t.contains(&format!("value: \"{value}\"")))
    };
    let start = Instant::now();
    while !applied("before") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not delivered through a"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The serving hub dies without a word: its lease must expire before b may serve. Then
    // (FAILOVER_KILLS > 1, for the distribution in docs/benchmarks.md) the dead one comes back
    // on its old ports as the standby and the serving one is killed in turn.
    let kills: usize = std::env::var("FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let (mut serving_times, mut ready_times) = (Vec::new(), Vec::new());
    let mut dead_data = data_a.clone();
    let mut live_data = data_b.clone();
    for i in 0..kills {
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        let killed = Instant::now();
        let list = ["clusters", "list"];
        ctl.until(&b.admin, &list, Duration::from_secs(30), |_| true);
        serving_times.push(killed.elapsed().as_secs_f64());
        ctl.until(&b.admin, &list, Duration::from_secs(60), ready);
        ready_times.push(killed.elapsed().as_secs_f64());
        if i + 1 < kills {
            let log = d.join(format!("restart-{i}.log"));
            let restarted = serve_on(&hub_bin, &dead_data, &url, &log, a.quic, &a.admin);
            std::mem::swap(&mut a, &mut b);
            b = restarted;
            std::mem::swap(&mut dead_data, &mut live_data);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let (lo, mid, hi) = (v[0], v[v.len() / 2], v[v.len() - 1]);
        format!("min {lo:.1} / median {mid:.1} / max {hi:.1} s")
    };
    eprintln!(
        "failover over {kills} kills (lease {LEASE_TTL}): standby serving {}; agent Ready on it {}",
        stats(&mut serving_times),
        stats(&mut ready_times)
    );
    // What a acknowledged is b's to serve: the work is there at its generation. Given both
    // admin addresses, tetherctl finds the one that serves.
    let both = format!("{},{}", a.admin, b.admin);
    let described = ctl.at(&both, &["describe", "work", "web"]).unwrap();
    assert!(described.contains("edge-1"), "{described}");
    write_work("after");
    ctl.at(&b.admin, &["apply", "-f", work.to_str().unwrap()])
        .expect("apply through the new serving hub");
    let start = Instant::now();
    while !applied("after") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not delivered through b"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let b_log = std::fs::read_to_string(d.join("b.log")).unwrap();
    assert!(b_log.contains("standby"), "{b_log}");
    assert!(b_log.contains("took the serving lease"), "{b_log}");
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = b.child.kill();
    let _ = b.child.wait();
}

/// The database's primary dies: its synchronous standby is promoted, the hub (given both
/// PostgreSQL hosts, `target_session_attrs=read-write`) reconnects to it on its own, and
/// nothing the hub acknowledged before the failure is missing: the work, its delivery, and
/// every status entry the agent was told was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_postgres_standby_loses_nothing_acknowledged() {
    use common::*;
    use tether_sim::fleet::{all_in_state, wait_for};
    if !available_or_skip("a_promoted_postgres_standby_loses_nothing_acknowledged") {
        return;
    }
    init_logs();
    let (primary, standby) = tokio::task::spawn_blocking(|| {
        let primary = TestServer::start().unwrap();
        // Created before the base backup, so the standby has it too.
        primary.create_db("hub").unwrap();
        let standby = primary.standby().unwrap();
        primary.make_synchronous().unwrap();
        (primary, standby)
    })
    .await
    .unwrap();
    let url = format!(
        "postgres://tether@127.0.0.1:{},127.0.0.1:{}/hub?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub_with(d, |cfg| {
        cfg.store = tether_hub::config::StoreLocation::Postgres(url.clone());
        // Longer than a promotion takes here, so the serving hub keeps its lease across it.
        cfg.lease_ttl = Duration::from_secs(30);
    })
    .await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Default::default()).await.unwrap();
    let a = agent(&hub, d, "a", &token);
    wait_for(&admin, WAIT, "Ready", all_in_state(&names(&["a"]), "Ready"))
        .await
        .unwrap();
    admin
        .apply_work(&config_work("web", everywhere(), &["one", "two"], "v1"))
        .await
        .unwrap();
    wait_applied(&admin, "web", 1, 1).await;

    let _servers = tokio::task::spawn_blocking(move || {
        primary.kill().unwrap();
        standby.promote().unwrap();
        (primary, standby)
    })
    .await
    .unwrap();
    // The hub answers admins again once it reaches the new primary; what it held is there.
    let start = Instant::now();
    let applied = loop {
        match admin
            .apply_work(&config_work("web", everywhere(), &["one", "two"], "v2"))
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(60), "{e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(applied.generation, 2, "generation 1 survived the failover");
    wait_applied(&admin, "web", 2, 1).await;
    a.stop().await.unwrap();
    assert_status_history_exact(&admin, "a", &d.join("agents").join("a")).await;
}
