//! Hub replicas on one PostgreSQL database (Debian's server, started by the test on loopback),
//! each with its own copy of the data directory's keys, all serving at once: agents spread
//! over them, a work applied through any reaches every agent, SIGKILL of the leader moves its
//! agents and its decisions to the others, and a revocation through one replica cuts a
//! session held by another. Then the database's own failover.

mod common;

use common::built_binary;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether_sim::pg::{available_or_skip, TestServer};

/// The replicas' `--lease-ttl`: 4 s by default, so that a CI machine starved of CPU (this
/// binary runs a PostgreSQL failover test beside it) does not make replicas miss their
/// renewals and stop; docs/benchmarks.md measures with `REPLICA_LEASE_TTL=2s`.
fn lease_ttl() -> String {
    std::env::var("REPLICA_LEASE_TTL").unwrap_or_else(|_| "4s".into())
}

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
    // Appended to: a replica restarted on its ports keeps one log.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(bin)
        .args([
            "serve",
            "--lease-ttl",
            &lease_ttl(),
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
        let (ok, stdout, _) = self.run(server, args);
        ok.then_some(stdout)
    }

    /// Exit status, stdout and stderr of `tetherctl` against `server`.
    fn run(&self, server: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .env("TETHER_CONFIG", &self.config)
            .env("TETHER_SERVER", server)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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

/// How many agents: with 8 names over 3 addresses, all on one replica is a 1-in-2,000 chance.
const AGENTS: usize = 8;

/// `cluster=NAME` fields of `session opened` lines in a hub log, in order (ANSI colours off or
/// on).
fn sessions_opened(log: &str) -> Vec<String> {
    let plain = strip_ansi(log);
    plain
        .lines()
        .filter(|l| l.contains("session opened"))
        .filter_map(|l| {
            let at = l.find("cluster=")? + "cluster=".len();
            Some(l[at..].split_whitespace().next()?.to_string())
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn three_replicas_serve_every_agent_and_survive_kills() {
    if !available_or_skip("three_replicas_serve_every_agent_and_survive_kills") {
        return;
    }
    let hub_bin = built_binary("tether-hub", "tether-hub");
    let ctl_bin = built_binary("tether-hub", "tetherctl");
    let agent_bin = built_binary("tether-agent", "tether-agent");
    let server = TestServer::start().unwrap();
    let url = server.create_db("ha").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data: Vec<PathBuf> = (0..3).map(|i| d.join(format!("hub-{i}"))).collect();
    let out = Command::new(&hub_bin)
        .args(["init", "--hub-name", "localhost", "--data-dir"])
        .arg(&data[0])
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
    // Every replica's machine gets a copy of the keys.
    copy_dir(&data[0], &data[1]);
    copy_dir(&data[0], &data[2]);
    let ctl = Ctl {
        bin: ctl_bin,
        config: data[0].join("tetherctl.yaml"),
    };
    let log = |i: usize| d.join(format!("hub-{i}.log"));
    let mut hubs: Vec<Hub> = Vec::new();
    let starting = Instant::now();
    for (i, dir) in data.iter().enumerate() {
        let hub = serve(&hub_bin, dir, &url, &log(i));
        // Every replica serves admins at once; the first one started holds the lease.
        ctl.until(
            &hub.admin,
            &["clusters", "list"],
            Duration::from_secs(30),
            |_| true,
        );
        hubs.push(hub);
    }

    eprintln!("3 replicas serving after {:?}", starting.elapsed());
    let token = ctl
        .at(
            &hubs[1].admin,
            &[
                "token",
                "create",
                "--ttl",
                "1h",
                "--uses",
                &AGENTS.to_string(),
                "--auto-approve",
            ],
        )
        .unwrap();
    let token = token.lines().last().unwrap().trim().to_string();
    let names: Vec<String> = (0..AGENTS).map(|i| format!("edge-{i}")).collect();
    let mut agents: Vec<Child> = names
        .iter()
        .map(|name| {
            let agent_log = std::fs::File::create(d.join(format!("{name}.log"))).unwrap();
            let mut cmd = Command::new(&agent_bin);
            cmd.arg("run").arg("--data-dir").arg(d.join(name));
            for h in &hubs {
                cmd.args(["--hub", &format!("localhost:{}", h.quic)]);
            }
            cmd.args(["--ca-sha256", &ca, "--name", name])
                .args(["--backoff-cap", "1s", "--hub-timeout", "3s"])
                .arg(format!(
                    "--executor=dir:{}",
                    d.join(name).join("applied").display()
                ))
                .args(["--reconcile-interval", "500ms"])
                .env("TETHER_TOKEN", &token)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(agent_log.try_clone().unwrap())
                .stderr(agent_log)
                .spawn()
                .unwrap()
        })
        .collect();
    let all_ready = |out: &str| {
        names.iter().all(|n| {
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(n.as_str()) && l.contains("Ready"))
        })
    };
    // Any replica shows every cluster, wherever its session is.
    let joining = Instant::now();
    for h in &hubs {
        ctl.until(
            &h.admin,
            &["clusters", "list"],
            Duration::from_secs(60),
            all_ready,
        );
    }
    eprintln!(
        "{AGENTS} agents joined and Ready on every replica after {:?}",
        joining.elapsed()
    );
    // One replica says it holds the lease; each sees three alive (`/metrics`).
    let metrics = |admin: &str| -> String {
        let mut cfg = tether_hub::config::CtlConfig::load(&ctl.config).unwrap();
        cfg.admin_address = admin.to_string();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tether_hub::AdminClient::new(&cfg)
                    .unwrap()
                    .get_text("/metrics")
                    .await
                    .unwrap()
            })
    };
    // Each replica reads the liveness rows every third of the lease: the last one started may
    // not have been seen yet.
    let seen = Instant::now();
    loop {
        let scraped: Vec<String> = hubs.iter().map(|h| metrics(&h.admin)).collect();
        let leaders = scraped
            .iter()
            .filter(|m| m.lines().any(|l| l == "tether_hub_lease_holder 1"))
            .count();
        let all_three = scraped
            .iter()
            .all(|m| m.lines().any(|l| l == "tether_hub_replicas_live 3"));
        if leaders == 1 && all_three {
            break;
        }
        assert!(
            leaders <= 1 && seen.elapsed() < Duration::from_secs(20),
            "one lease holder ({leaders}) and every replica seeing three ({all_three})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let holder_of = |name: &str, from: &[usize]| -> Option<usize> {
        (0..3).rev().find(|&i| {
            let text = std::fs::read_to_string(log(i)).unwrap_or_default();
            sessions_opened(&text[from[i].min(text.len())..])
                .iter()
                .any(|c| c == name)
        })
    };
    let start_of_logs = [0usize; 3];
    let held: Vec<usize> = names
        .iter()
        .map(|n| holder_of(n, &start_of_logs).expect("every agent has a session"))
        .collect();
    let spread: std::collections::BTreeSet<usize> = held.iter().copied().collect();
    eprintln!("sessions by replica: {held:?}");
    assert!(
        spread.len() >= 2,
        "agents spread over the replicas: {held:?}"
    );

    let work = d.join("work.yaml");
    let targets = names.join(", ");
    let write_work = |value: &str| {
        std::fs::write(
            &work,
            format!(
                "apiVersion: tether.dev/v1alpha1\nkind: Work\nmetadata: {{name: web}}\nspec:\n  targets: {{clusters: [{targets}]}}\n  manifests:\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {{name: web, namespace: default}}\n    data: {{value: \"{value}\"}}\n"
            ),
        )
        .unwrap()
    };
    let everywhere = |value: &str, limit: Duration| -> Duration {
        let start = Instant::now();
        loop {
            let done = names.iter().all(|n| {
                std::fs::read_to_string(d.join(n).join("applied").join("tether-web.yaml"))
                    .is_ok_and(|t| t.contains(&format!("value: \"{value}\"")))
            });
            if done {
                return start.elapsed();
            }
            if start.elapsed() >= limit {
                let missing: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        !std::fs::read_to_string(d.join(n).join("applied").join("tether-web.yaml"))
                            .is_ok_and(|t| t.contains(&format!("value: \"{value}\"")))
                    })
                    .collect();
                for i in 0..3 {
                    let t = std::fs::read_to_string(log(i)).unwrap_or_default();
                    let tail: Vec<&str> = t.lines().rev().take(40).collect();
                    eprintln!("--- hub-{i}.log (last 40 lines, newest first)");
                    for l in tail {
                        eprintln!("{}", strip_ansi(l));
                    }
                }
                for n in &missing {
                    let t = std::fs::read_to_string(d.join(format!("{n}.log"))).unwrap_or_default();
                    let tail: Vec<&str> = t.lines().rev().take(20).collect();
                    eprintln!("--- {n}.log (last 20 lines, newest first)");
                    for l in tail {
                        eprintln!("{}", strip_ansi(l));
                    }
                }
                panic!("{value:?} not on every agent in {limit:?}: missing on {missing:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Applied through a replica that does not decide: the leader hears of it from the change
    // feed, and every replica delivers its decisions to the agents it holds.
    write_work("one");
    ctl.at(&hubs[2].admin, &["apply", "-f", work.to_str().unwrap()])
        .expect("apply through a follower");
    let took = everywhere("one", Duration::from_secs(60));
    eprintln!("applied through a follower, on all {AGENTS} agents after {took:?}");

    // A singleton is applied, with a warning: its break-before-make is one process's. (For a
    // cluster that is not registered: the warning is the point, not a delivery.)
    let singleton = d.join("singleton.yaml");
    std::fs::write(
        &singleton,
        "apiVersion: tether.dev/v1alpha1\nkind: Work\nmetadata: {name: leader-job}\nspec:\n  targets: {clusters: [elsewhere]}\n  failover: {mode: Singleton}\n  manifests:\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: leader-job, namespace: default}\n",
    )
    .unwrap();
    let (ok, _, stderr) = ctl.run(
        &hubs[1].admin,
        &["apply", "-f", singleton.to_str().unwrap()],
    );
    assert!(ok && stderr.contains("3 replicas"), "{stderr}");
    ctl.at(&hubs[1].admin, &["delete", "work", "leader-job"])
        .expect("delete the singleton");

    // SIGKILL the leader: another replica takes the lease, the agents it held move.
    let lens: Vec<usize> = (0..3)
        .map(|i| std::fs::read_to_string(log(i)).unwrap_or_default().len())
        .collect();
    hubs[0].child.kill().unwrap();
    hubs[0].child.wait().unwrap();
    let killed = Instant::now();
    write_work("two");
    ctl.until(
        &hubs[1].admin,
        &["apply", "-f", work.to_str().unwrap()],
        Duration::from_secs(10),
        |_| true,
    );
    everywhere("two", Duration::from_secs(60));
    let moved: Vec<&String> = names
        .iter()
        .zip(&held)
        .filter(|(_, &h)| h == 0)
        .map(|(n, _)| n)
        .collect();
    loop {
        let elsewhere = moved
            .iter()
            .all(|n| holder_of(n, &lens).is_some_and(|h| h != 0));
        if elsewhere {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "agents of the killed replica did not move"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ctl.until(
        &hubs[2].admin,
        &["clusters", "list"],
        Duration::from_secs(60),
        all_ready,
    );
    let first_move = killed.elapsed();
    eprintln!(
        "leader killed: {} agent(s) moved, all Ready and the new generation on every agent after {first_move:?}",
        moved.len(),
    );
    let took_over =
        (1..3).any(|i| std::fs::read_to_string(log(i)).is_ok_and(|t| t.contains("took the lease")));
    assert!(took_over, "another replica took the lease");

    // A revocation made through one replica cuts the session wherever it is.
    let denied = &names[0];
    let holder = if held[0] == 0 {
        holder_of(denied, &lens).expect("edge-0 moved")
    } else {
        held[0]
    };
    let other = if holder == 1 { 2 } else { 1 };
    ctl.at(&hubs[other].admin, &["clusters", "deny", denied])
        .expect("deny through another replica");
    let start = Instant::now();
    loop {
        if let Some(status) = agents[0].try_wait().unwrap() {
            assert_eq!(
                status.code(),
                Some(3),
                "a denied agent stops with exit code 3"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the denied agent's session on replica {holder} was not cut"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Nothing acknowledged was lost across the kill: every other agent reports generation 2
    // applied, through whichever replica holds it.
    let described = ctl
        .at(
            &format!("{},{}", hubs[1].admin, hubs[2].admin),
            &["describe", "work", "web"],
        )
        .unwrap();
    assert!(
        described.contains("generation 2")
            && described.contains(&format!("{} applied", AGENTS - 1)),
        "{described}"
    );

    // For the distribution in docs/benchmarks.md (REPLICA_KILLS=10): bring the dead replica
    // back on its ports, kill whichever replica holds the lease now, and time until every
    // agent it held has a session on a survivor and a generation applied through a survivor
    // is on every agent.
    let kills: usize = std::env::var("REPLICA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let live_names: Vec<String> = names[1..].to_vec();
    let mut dead = 0usize;
    let mut started: Vec<usize> = vec![0; 3];
    let mut times = vec![first_move.as_secs_f64()];
    for round in 1..kills {
        started[dead] = std::fs::read_to_string(log(dead)).map_or(0, |t| t.len());
        let (quic, admin) = (hubs[dead].quic, hubs[dead].admin.clone());
        hubs[dead] = serve_on(&hub_bin, &data[dead], &url, &log(dead), quic, &admin);
        ctl.until(
            &admin,
            &["clusters", "list"],
            Duration::from_secs(30),
            |_| true,
        );
        std::thread::sleep(Duration::from_secs(1));
        let since = |i: usize| {
            let t = std::fs::read_to_string(log(i)).unwrap_or_default();
            strip_ansi(&t[started[i].min(t.len())..])
        };
        let leader = (0..3)
            .filter(|&i| i != dead)
            .find(|&i| since(i).contains("took the lease"))
            .expect("a survivor holds the lease");
        let open = open_sessions(&since(leader));
        let lens: Vec<usize> = (0..3)
            .map(|i| std::fs::read_to_string(log(i)).map_or(0, |t| t.len()))
            .collect();
        hubs[leader].child.kill().unwrap();
        hubs[leader].child.wait().unwrap();
        let killed = Instant::now();
        let value = format!("round-{round}");
        write_work(&value);
        let survivor = (0..3).find(|&i| i != leader).unwrap_or(0);
        ctl.until(
            &hubs[survivor].admin,
            &["apply", "-f", work.to_str().unwrap()],
            Duration::from_secs(10),
            |_| true,
        );
        let start = Instant::now();
        loop {
            let applied = live_names.iter().all(|n| {
                std::fs::read_to_string(d.join(n).join("applied").join("tether-web.yaml"))
                    .is_ok_and(|t| t.contains(&format!("value: \"{value}\"")))
            });
            let moved = open
                .iter()
                .all(|n| holder_of(n, &lens).is_some_and(|h| h != leader));
            if applied && moved {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "round {round}");
            std::thread::sleep(Duration::from_millis(50));
        }
        times.push(killed.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: killed leader {leader} holding {} agent(s); moved and {value} everywhere after {:?}",
            open.len(),
            killed.elapsed()
        );
        dead = leader;
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "leader kills: {}; agents moved and the next generation everywhere after min {:.1} / median {:.1} / max {:.1} s",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    for a in agents.iter_mut() {
        let _ = a.kill();
        let _ = a.wait();
    }
    for (i, h) in hubs.iter_mut().enumerate() {
        if i != dead {
            let _ = h.child.kill();
            let _ = h.child.wait();
        }
    }
}

/// Clusters with a session open at the end of `log`: opened and not closed since.
fn open_sessions(log: &str) -> Vec<String> {
    let mut open: std::collections::BTreeMap<String, i32> = Default::default();
    for l in strip_ansi(log).lines() {
        let delta = if l.contains("session opened") {
            1
        } else if l.contains("session closed") {
            -1
        } else {
            continue;
        };
        if let Some(at) = l.find("cluster=") {
            if let Some(c) = l[at + "cluster=".len()..].split_whitespace().next() {
                *open.entry(c.to_string()).or_default() += delta;
            }
        }
    }
    open.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, _)| c)
        .collect()
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
